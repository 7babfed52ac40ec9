"""redis-py's plain client (redis.Redis, not RedisCluster) against redis-proxy in cluster mode: keys over many
slots, multi-key commands the proxy splits by slot, pipelines, a transaction, SCAN, pub/sub and sharded pub/sub,
as if the proxy were one server; then redis-py's RedisCluster pointed at the proxy, which sees one node holding every slot.
Asserts results, not just the absence of errors.

Usage: python3 cluster_check.py PORT PROTOCOL PREFIX   (PROTOCOL 2 or 3)
Leaves PREFIX:kept:0..299 holding 0..299, for the Rust test to find on the primaries. Exits 0 and prints "ok"
when every check passed; exits 1 with the failing check otherwise, 2 when redis-py is missing.
"""

import sys
import time

try:
    import redis
except ImportError:
    print("redis-py is not installed: pip install redis (the CI installs it in .ci/run)", file=sys.stderr)
    sys.exit(2)

PORT = int(sys.argv[1])
PROTOCOL = int(sys.argv[2])
PREFIX = sys.argv[3]


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def main():
    started = time.monotonic()
    r = redis.Redis(port=PORT, protocol=PROTOCOL, decode_responses=True, socket_timeout=10)
    p = PREFIX
    check(r.ping(), "PING")

    # One key at a time, 500 keys: about 500 different slots on all three primaries.
    for i in range(500):
        check(r.set(f"{p}:k{i}", i) is True, f"SET {p}:k{i}")
    for i in range(500):
        check(r.get(f"{p}:k{i}") == str(i), f"GET {p}:k{i}")
    check(r.incr(f"{p}:k7") == 8, "INCR")

    # MGET over many slots, in the client's order, with missing keys.
    values = {f"{p}:k{i}": str(i) for i in range(500)}
    values[f"{p}:k7"] = "8"
    keys = [f"{p}:k{i}" for i in range(499, 0, -3)] + [f"{p}:missing", f"{p}:k1", f"{p}:k7"]
    want = [values.get(k) for k in keys]
    got = r.mget(keys)
    check(got == want, f"MGET of {len(keys)} keys: {got[:5]}...")

    # MSET of a dict over many slots, read back with MGET.
    mapping = {f"{p}:m{i}": f"v{i}" for i in range(200)}
    check(r.mset(mapping) is True, "MSET")
    check(r.mget(list(mapping)) == list(mapping.values()), "MGET after MSET")

    # A pipeline (no transaction) over many slots: replies in order.
    pipe = r.pipeline(transaction=False)
    for i in range(300):
        pipe.incrby(f"{p}:n{i % 50}", i)
    for i in range(50):
        pipe.get(f"{p}:n{i}")
    pipe.mget([f"{p}:n{i}" for i in range(50)])
    results = pipe.execute()
    totals = [sum(j for j in range(300) if j % 50 == i) for i in range(50)]
    running = {}
    expect_incr = []
    for i in range(300):
        running[i % 50] = running.get(i % 50, 0) + i
        expect_incr.append(running[i % 50])
    check(results[:300] == expect_incr, "pipelined INCRBY replies in order")
    check(results[300:350] == [str(t) for t in totals], "pipelined GETs")
    check(results[350] == [str(t) for t in totals], "pipelined MGET")

    # Counts summed over slots.
    check(r.exists(*[f"{p}:m{i}" for i in range(100)], f"{p}:missing") == 100, "EXISTS")
    check(r.touch(*[f"{p}:m{i}" for i in range(100)]) == 100, "TOUCH")
    check(r.delete(*[f"{p}:m{i}" for i in range(50)], f"{p}:missing") == 50, "DEL")
    check(r.unlink(*[f"{p}:m{i}" for i in range(50, 100)]) == 50, "UNLINK")
    check(r.exists(*[f"{p}:m{i}" for i in range(200)]) == 100, "EXISTS after DEL and UNLINK")

    # Hash tags keep a multi-key command in one slot; across slots it is refused as Redis Cluster does.
    check(r.msetnx({f"{{{p}}}:a": "1", f"{{{p}}}:b": "2"}) is True, "MSETNX with a hash tag")
    check(r.rename(f"{{{p}}}:a", f"{{{p}}}:c") is True, "RENAME with a hash tag")
    try:
        r.msetnx({f"{p}:x1": "1", f"{p}:x2": "2", f"{p}:x3": "3"})
        raise AssertionError("MSETNX across slots was not refused")
    except redis.exceptions.ClusterCrossSlotError:
        pass  # redis-py raises this class for a -CROSSSLOT reply (and drops the word from the message)

    # A transaction (redis-py's pipeline with transaction=True: MULTI ... EXEC), its keys in one slot.
    tx = r.pipeline(transaction=True)
    tx.set(f"{{{p}tx}}:a", 1).incr(f"{{{p}tx}}:a").get(f"{{{p}tx}}:a")
    check(tx.execute() == [True, 2, "2"], "MULTI/EXEC through a transactional pipeline")

    # SCAN over the whole cluster: every key once at least, with the client's own cursor handling.
    scanned = set(r.scan_iter(match=f"{p}:k*", count=50))
    check({f"{p}:k{i}" for i in range(500)} <= scanned, f"scan_iter found {len(scanned)} of the 500 keys")

    # Publish/subscribe: a subscriber on the proxy hears a PUBLISH sent through the proxy.
    sub = r.pubsub()
    sub.subscribe(f"{p}:channel")
    check(sub.get_message(timeout=5)["type"] == "subscribe", "SUBSCRIBE confirmed")
    deadline = time.monotonic() + 5
    heard = None
    while heard is None and time.monotonic() < deadline:
        r.publish(f"{p}:channel", "hello")
        heard = sub.get_message(timeout=0.5)
    check(heard is not None and heard["data"] == "hello", f"the PUBLISH was heard: {heard}")
    sub.close()

    # Sharded publish/subscribe: shard channels on several primaries, through one client connection. The
    # confirmations count the client's shard channels over every primary, as one Redis connection would.
    shard = r.pubsub()
    channels = [f"{p}:shard{i}" for i in range(6)]
    for n, channel in enumerate(channels, start=1):
        shard.ssubscribe(channel)
        confirmed = shard.get_sharded_message(timeout=5)
        check(confirmed is not None and confirmed["type"] == "ssubscribe", f"SSUBSCRIBE {channel}: {confirmed}")
        check(confirmed["data"] == n, f"SSUBSCRIBE {channel} counted {confirmed['data']}, not {n}")
    for channel in channels:
        check(r.spublish(channel, f"to {channel}") == 1, f"SPUBLISH {channel} reached its subscriber")
    heard = []
    deadline = time.monotonic() + 5
    while len(heard) < len(channels) and time.monotonic() < deadline:
        message = shard.get_sharded_message(timeout=0.5)
        if message is not None:
            heard.append((message["type"], message["channel"], message["data"]))
    want = [("smessage", c, f"to {c}") for c in channels]
    check(sorted(heard) == sorted(want), f"each shard channel's message heard once: {heard}")
    shard.sunsubscribe(channels[0])
    left = shard.get_sharded_message(timeout=5)
    check(left is not None and left["type"] == "sunsubscribe" and left["data"] == 5, f"SUNSUBSCRIBE: {left}")
    check(r.spublish(channels[0], "gone") == 0, "nobody follows a channel left")
    shard.close()

    # Keys left for the Rust side to find on their primaries.
    check(r.mset({f"{p}:kept:{i}": i for i in range(300)}) is True, "MSET kept keys")
    r.close()

    # A cluster-aware client pointed at the proxy sees one node holding every slot, and works through it.
    rc = redis.cluster.RedisCluster(host="127.0.0.1", port=PORT, protocol=PROTOCOL, decode_responses=True)
    nodes = rc.get_nodes()
    check([n.port for n in nodes] == [PORT], f"RedisCluster sees the proxy alone: {[n.name for n in nodes]}")
    check(rc.set(f"{p}:rc", "x") is True and rc.get(f"{p}:rc") == "x", "RedisCluster SET/GET through the proxy")
    # (RedisCluster itself refuses a cross-slot MGET before sending it; its non-atomic one splits by slot.)
    check(rc.mget_nonatomic([f"{p}:k1", f"{p}:k2"]) == ["1", "2"], "RedisCluster MGET through the proxy")
    rc.close()
    print(f"ok redis-py {redis.__version__} plain client RESP{PROTOCOL}, cluster mode, in {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    main()
