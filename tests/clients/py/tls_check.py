"""redis-py over TLS (ssl=True) against redis-proxy's TLS listener: asserts results.

Usage: python3 tls_check.py PORT CA_FILE [CERT_FILE KEY_FILE]
Checks with the sync client (RESP2 and RESP3) and the asyncio client. Exits 0 and prints "ok" when every check
passed; exits 1 with the failing check otherwise, 2 when redis-py is missing.
"""

import asyncio
import sys
import time

try:
    import redis
    import redis.asyncio
except ImportError:
    print("redis-py is not installed: pip install redis (the CI installs it in .ci/run)", file=sys.stderr)
    sys.exit(2)

PORT = int(sys.argv[1])
CA = sys.argv[2]
CERT, KEY = (sys.argv[3], sys.argv[4]) if len(sys.argv) > 4 else (None, None)
PREFIX = f"pytls:{time.time_ns()}"
TLS = dict(host="127.0.0.1", port=PORT, ssl=True, ssl_ca_certs=CA, ssl_certfile=CERT, ssl_keyfile=KEY,
           socket_timeout=10)


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def sync_checks(protocol):
    r = redis.Redis(protocol=protocol, decode_responses=True, **TLS)
    p = f"{PREFIX}:{protocol}"
    check(r.ping(), "PING")
    check(r.set(f"{p}:k", "v1") is True, "SET")
    check(r.get(f"{p}:k") == "v1", "GET")
    pipe = r.pipeline(transaction=False)
    for i in range(100):
        pipe.incr(f"{p}:n")
    check(pipe.execute() == list(range(1, 101)), "pipelined INCR")
    with r.pipeline(transaction=True) as tx:
        tx.set(f"{p}:a", "1").incr(f"{p}:a")
        check(tx.execute() == [True, 2], "MULTI/EXEC")
    big = "x" * (1 << 20)
    check(r.set(f"{p}:big", big) and r.get(f"{p}:big") == big, "1 MiB value")
    r.close()


async def async_checks():
    r = redis.asyncio.Redis(decode_responses=True, **TLS)
    p = f"{PREFIX}:async"
    results = await asyncio.gather(*(r.set(f"{p}:{i}", str(i)) for i in range(50)))
    check(all(results), "asyncio SETs")
    values = await asyncio.gather(*(r.get(f"{p}:{i}") for i in range(50)))
    check(values == [str(i) for i in range(50)], f"asyncio GETs: {values}")
    await r.aclose()


try:
    sync_checks(2)
    sync_checks(3)
    asyncio.run(async_checks())
except Exception as error:  # noqa: BLE001 - any failure is reported with its check
    print(f"FAILED: {type(error).__name__}: {error}", file=sys.stderr)
    sys.exit(1)
print("ok")
