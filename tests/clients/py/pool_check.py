"""Many redis-py RESP3 clients through redis-proxy: they share its connections, and a failover keeps them.

Usage: python3 pool_check.py PORT CLIENTS
Opens CLIENTS clients (protocol 3, one connection each, as a thread of an application would hold), each doing
SET/GET, then prints "ready" and waits for a line on stdin (the test counts the master's connections and fails
the master over meanwhile). Then every client retries SET/GET until it succeeds (at most 30 s) and must still be
on the same socket: not reconnected. Prints "kept N, errors E" and exits 0; 1 on a failed check; 2 when redis-py
is missing.
"""

import sys
import time

try:
    import redis
except ImportError:
    print("redis-py is not installed: pip install redis (the CI installs it in .ci/run)", file=sys.stderr)
    sys.exit(2)

PORT = int(sys.argv[1])
CLIENTS = int(sys.argv[2])


def socket_of(client):
    return client.connection._sock


def set_get(client, i):
    key = f"pool-check:{i}"
    value = f"{i}:{time.time_ns()}"
    return client.set(key, value) and client.get(key) == value


def main():
    clients = [
        redis.Redis(port=PORT, protocol=3, single_connection_client=True, decode_responses=True, retry=None)
        for _ in range(CLIENTS)
    ]
    for i, client in enumerate(clients):
        client.client_setname(f"pool-check-{i}")
        assert set_get(client, i), f"client {i} SET/GET"
    sockets = [socket_of(client) for client in clients]
    print("ready", flush=True)
    sys.stdin.readline()

    errors = 0
    deadline = time.monotonic() + 30
    for i, client in enumerate(clients):
        while True:
            try:
                if set_get(client, i):
                    break
            except redis.ResponseError:
                # The proxy's error for a request that could not run: the connection stays.
                errors += 1
            if time.monotonic() > deadline:
                print(f"client {i} did not get through after the failover", file=sys.stderr)
                sys.exit(1)
            time.sleep(0.05)
        if socket_of(client) is not sockets[i]:
            print(f"client {i} was reconnected", file=sys.stderr)
            sys.exit(1)
        assert client.client_getname() == f"pool-check-{i}", f"client {i} kept its name"
    print(f"kept {len(clients)}, errors {errors}", flush=True)


if __name__ == "__main__":
    main()
