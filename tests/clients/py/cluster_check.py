"""redis-py's plain client (redis.Redis, not RedisCluster) against redis-proxy in cluster mode: keys over many
slots, multi-key commands the proxy splits by slot, and pipelines, as if the proxy were one server. Asserts
results, not just the absence of errors.

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

    # Keys left for the Rust side to find on their primaries.
    check(r.mset({f"{p}:kept:{i}": i for i in range(300)}) is True, "MSET kept keys")
    r.close()
    print(f"ok redis-py {redis.__version__} plain client RESP{PROTOCOL}, cluster mode, in {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    main()
