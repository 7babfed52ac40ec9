#!/usr/bin/env python3
"""How many times each primary reads from its sockets to serve one MGET of 100 random keys sent to a proxy in
cluster mode: `total_reads_processed` of `INFO stats`, read on one held connection per primary before and after
each MGET (the INFO after is one read of its own, subtracted). One read per primary means the proxy wrote the
MGET's parts for that primary (one MGET per slot) in one write. Background reads (a replica's REPLCONF ACK each
second, the proxy's probes) can add one now and then, so the figure is the median over the rounds, with the
largest seen.

Usage: mget_reads.py PROXY_PORT ROUNDS PRIMARY_PORT...   (prints one line per primary: port median max)
"""
import random
import socket
import statistics
import sys


def connect(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock, sock.makefile("rb")


def command(*args):
    return b"".join([b"*%d\r\n" % len(args)] + [b"$%d\r\n%s\r\n" % (len(a), a) for a in args])


def reads_processed(conn):
    sock, reader = conn
    sock.sendall(command(b"INFO", b"stats"))
    header = reader.readline()
    text = reader.read(int(header[1:]) + 2).decode()
    field = next(line for line in text.split("\r\n") if line.startswith("total_reads_processed:"))
    return int(field.split(":")[1])


def mget(conn, keys):
    sock, reader = conn
    sock.sendall(command(b"MGET", *keys))
    header = reader.readline()
    if not header.startswith(b"*%d" % len(keys)):
        sys.exit("MGET through the proxy answered %r" % header)
    for _ in keys:
        length = int(reader.readline()[1:])
        if length >= 0:
            reader.read(length + 2)


def main():
    proxy_port, rounds, primaries = int(sys.argv[1]), int(sys.argv[2]), [int(p) for p in sys.argv[3:]]
    rng = random.Random(7)
    proxy = connect(proxy_port)
    nodes = {port: connect(port) for port in primaries}
    mget(proxy, [b"warm:%d" % i for i in range(100)])
    seen = {port: [] for port in primaries}
    for _ in range(rounds):
        keys = [b"key:%d" % rng.randrange(10**9) for _ in range(100)]
        before = {port: reads_processed(conn) for port, conn in nodes.items()}
        mget(proxy, keys)
        for port, conn in nodes.items():
            seen[port].append(reads_processed(conn) - before[port] - 1)
    for port in primaries:
        print(port, statistics.median(seen[port]), max(seen[port]))


main()
