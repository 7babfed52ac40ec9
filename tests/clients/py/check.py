"""redis-py against redis-proxy: asserts results, not just the absence of errors.

Usage: python3 check.py PORT PROTOCOL   (PROTOCOL 2 or 3)
Runs the same checks with the sync client and the asyncio client. Exits 0 and prints "ok" when every check
passed; exits 1 with the failing check otherwise, 2 when redis-py is missing.
"""

import asyncio
import sys
import threading
import time

try:
    import redis
    import redis.asyncio
except ImportError:
    print("redis-py is not installed: pip install redis (the CI installs it in .ci/run)", file=sys.stderr)
    sys.exit(2)

PORT = int(sys.argv[1])
PROTOCOL = int(sys.argv[2])
# Fresh keys on every run, so that a rerun against the same server starts clean.
PREFIX = f"py{PROTOCOL}:{time.time_ns()}"


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def sync_checks():
    r = redis.Redis(port=PORT, protocol=PROTOCOL, decode_responses=True)
    p = f"{PREFIX}:sync"
    # HELLO answered in the protocol asked for.
    check(r.ping(), "PING")
    if PROTOCOL == 3:
        hello = r.execute_command("HELLO", "3")
        check(hello.get("proto") == 3 and hello.get("server") == "redis", f"HELLO 3 map: {hello}")
    r.client_setname("py-checker")
    check(r.client_getname() == "py-checker", "CLIENT GETNAME")

    # Pipelines, with and without a transaction.
    pipe = r.pipeline(transaction=False)
    for i in range(100):
        pipe.set(f"{p}:k{i}", i)
    for i in range(100):
        pipe.get(f"{p}:k{i}")
    results = pipe.execute()
    check(results[:100] == [True] * 100 and results[100:] == [str(i) for i in range(100)], "pipeline")
    check(r.pipeline().incr(f"{p}:n").incr(f"{p}:n").execute() == [1, 2], "MULTI pipeline")

    # WATCH with retry: two clients race to increment one counter through optimistic transactions.
    counter = f"{p}:watched"
    r.set(counter, 0)
    retries = [0]

    def incr_with_watch(times):
        client = redis.Redis(port=PORT, protocol=PROTOCOL, decode_responses=True)
        for _ in range(times):
            while True:
                with client.pipeline() as tx:
                    try:
                        tx.watch(counter)
                        value = int(tx.get(counter))
                        tx.multi()
                        tx.set(counter, value + 1)
                        tx.execute()
                        break
                    except redis.WatchError:
                        retries[0] += 1
        client.close()

    workers = [threading.Thread(target=incr_with_watch, args=(50,)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    check(int(r.get(counter)) == 200, f"WATCH/MULTI counter {r.get(counter)}")

    # Scripts.
    check(r.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", 1, f"{p}:lua", 5) == 5, "EVAL")
    script = r.register_script("return {KEYS[1], ARGV[1]}")
    check(script(keys=[f"{p}:a"], args=["b"]) == [f"{p}:a", "b"], "EVALSHA via register_script")

    # Blocking pop, released by a push from another client.
    queue = f"{p}:queue"
    threading.Timer(0.2, lambda: redis.Redis(port=PORT, protocol=PROTOCOL).rpush(queue, "job")).start()
    popped = r.blpop([queue], timeout=5)
    check(popped is not None and list(popped) == [queue, "job"], f"BLPOP {popped}")
    check(r.brpop([queue], timeout=0.1) is None, "BRPOP times out empty")

    # SCAN sees every key.
    found = set(r.scan_iter(match=f"{p}:k*", count=17))
    check(found == {f"{p}:k{i}" for i in range(100)}, f"SCAN found {len(found)}")

    # Pub/sub.
    sub = r.pubsub()
    sub.subscribe(f"{p}:chan")
    check(sub.get_message(timeout=2)["type"] == "subscribe", "subscribe confirmation")
    check(r.publish(f"{p}:chan", "hello") == 1, "PUBLISH reaches one subscriber")
    message = sub.get_message(timeout=2)
    check(message and message["data"] == "hello", f"message {message}")
    sub.close()

    # A big value and a hash in RESP3 (a map) or RESP2 (a flat array), both read as a dict.
    r.hset(f"{p}:h", mapping={"a": "1", "b": "2"})
    check(r.hgetall(f"{p}:h") == {"a": "1", "b": "2"}, "HGETALL")
    big = "x" * (1 << 20)
    r.set(f"{p}:big", big)
    check(r.get(f"{p}:big") == big, "1 MiB value")
    r.close()


async def async_checks():
    pool = redis.asyncio.BlockingConnectionPool(port=PORT, protocol=PROTOCOL, decode_responses=True, max_connections=20)
    r = redis.asyncio.Redis(connection_pool=pool)
    p = f"{PREFIX}:async"
    check(await r.ping(), "async PING")
    # Many coroutines at once over the client's pool.
    await asyncio.gather(*(r.set(f"{p}:k{i}", i) for i in range(200)))
    values = await asyncio.gather(*(r.get(f"{p}:k{i}") for i in range(200)))
    check(values == [str(i) for i in range(200)], "async concurrent GETs")
    async with r.pipeline(transaction=True) as tx:
        tx.incr(f"{p}:n").incr(f"{p}:n")
        check(await tx.execute() == [1, 2], "async MULTI")
    queue = f"{p}:queue"

    async def push_later():
        await asyncio.sleep(0.2)
        await r.rpush(queue, "job")

    pusher = asyncio.create_task(push_later())
    popped = await r.blpop([queue], timeout=5)
    check(popped is not None and list(popped) == [queue, "job"], f"async BLPOP {popped}")
    await pusher
    keys = [key async for key in r.scan_iter(match=f"{p}:k*", count=50)]
    check(len(set(keys)) == 200, f"async SCAN found {len(set(keys))}")
    await r.aclose()
    await pool.aclose()


def main():
    started = time.monotonic()
    sync_checks()
    asyncio.run(async_checks())
    print(f"ok redis-py {redis.__version__} RESP{PROTOCOL} in {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    main()
