#!/usr/bin/env python3
"""Writes the hand-made seed files of fuzz/corpus/<target>/seed-*. Run from anywhere; rewrites the seeds only."""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    with open(os.path.join(HERE, "corpus", target, "seed-" + name), "wb") as f:
        f.write(data)


def bulk(b):
    return b"$%d\r\n%s\r\n" % (len(b), b)


def mb(*args):
    return b"*%d\r\n" % len(args) + b"".join(bulk(a) for a in args)


def scanner_input(payload, sizes=()):
    """The scanner targets' format: a count byte, that many chunk sizes (each byte + 1), then the payload."""
    return bytes([len(sizes)]) + bytes(s - 1 for s in sizes) + payload


REQUESTS = {
    "get": mb(b"GET", b"k"),
    "pipeline": mb(b"SET", b"k", b"v") + mb(b"GET", b"k") + mb(b"INCR", b"n") + mb(b"PING"),
    "inline": b"PING\r\nset a \"b c\" 'd e'\r\nget  a\n\r\n",
    "inline-escapes": b'set k "\\x41\\n\\t\\"q\\"" \'it\\\'s\'\r\n',
    "unbalanced-quotes": b'set k "abc\r\n',
    "binary-value": mb(b"SET", b"k", bytes(range(256))),
    "big-bulk-header": b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$536870912\r\nabc",
    "too-big-bulk": b"*1\r\n$536870913\r\n",
    "huge-multibulk": b"*2147483648\r\n",
    "empty-and-negative": b"*0\r\n*-1\r\n\r\n" + mb(b"PING"),
    "leading-zeros": b"*02\r\n$03\r\nGET\r\n$-0\r\n\r\n",
    "expected-bulk": b"*1\r\n:1\r\n",
    "missing-terminator": b"*1\r\n$3\r\nGETxx",
    "garbage": bytes([0x00, 0xFF, 0x2A, 0x0D, 0x24, 0x0A, 0x80, 0x7F]) * 4,
    "long-inline": b"a" * 100 + b"\r\n",
    "crlf-split": b"*1\r\r\n$4\r\nPING\r\n",
}
for name, payload in REQUESTS.items():
    write("resp_request", name, scanner_input(payload))
write("resp_request", "pipeline-chunked", scanner_input(REQUESTS["pipeline"], (1, 3, 7)))
write("resp_request", "big-bulk-chunked", scanner_input(REQUESTS["big-bulk-header"], (5, 2)))

REPLIES = {
    "simple": b"+OK\r\n-ERR wrong\r\n:1000\r\n$-1\r\n*-1\r\n$0\r\n\r\n",
    "nested": b"*2\r\n*2\r\n:1\r\n$3\r\nabc\r\n*0\r\n",
    "resp3": b"%2\r\n+a\r\n:1\r\n+b\r\n~1\r\n,1.5\r\n_\r\n#t\r\n(3492890328409238509324850943850943825024385\r\n"
    b"!21\r\nSYNTAX invalid syntax\r\n=15\r\ntxt:Some string\r\n",
    "push": b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n",
    "attribute": b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*1\r\n:1\r\n",
    "info": bulk(b"# Replication\r\nrole:master\r\nconnected_slaves:0\r\nmaster_repl_offset:0\r\n"),
    "deep": b"*1\r\n" * 200 + b":1\r\n",
    "big-bulk-header": b"$536870912\r\nabc",
    "unknown-type": b"?what\r\n",
    "bad-length": b"$abc\r\n*x\r\n",
    "garbage": bytes([0x2A, 0x31, 0x0D, 0x0A, 0xFF, 0x00, 0x24]) * 3,
    "long-line": b"+" + b"x" * 100 + b"\r\n",
}
for name, payload in REPLIES.items():
    write("resp_reply", name, scanner_input(payload))
write("resp_reply", "resp3-chunked", scanner_input(REPLIES["resp3"], (1, 2, 3, 11)))

# engine_client_bytes: a Setup (7 bytes), then operations (see Op::decode in engine/src/fuzzing/input.rs).
COMMANDS = ["PING", "GET", "SET", "MGET", "DEL", "INCR", "MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH", "SELECT",
            "SUBSCRIBE", "UNSUBSCRIBE", "PSUBSCRIBE", "MONITOR", "BLPOP", "QUIT", "RESET", "HELLO", "AUTH", "CLIENT",
            "INFO", "REPLICAOF", "CONFIG", "PUBLISH", "ECHO", "EVAL", "WAIT", "SHUTDOWN", "FLUSHALL", "NOSUCHCOMMAND"]
ARGS = ["k", "0", "1", "2", "ch", "SETNAME", "TRACKING", "on", "off", "NO", "ONE", "3", "v", "SET"]


def setup(servers=1, reads_to_slaves=False, pool=1, pipeline=7, clients=5, hold_max=9, small=False):
    return bytes([servers - 1, int(reads_to_slaves), pool - 1, pipeline - 1, clients - 1, hold_max, int(small)])


ACCEPT, TIMEOUT = b"\x00", b"\x07"


def client_bytes(c, data):
    return bytes([1, c, len(data)]) + data


def command(c, name, *args, inline=False):
    return bytes([2, c, COMMANDS.index(name), len(args)] + [ARGS.index(a) for a in args] + [int(inline)])


def advance(ms):
    return bytes([6, ms & 0xFF, ms >> 8])


def connected(b=0):
    return bytes([8, b])


def answer(b, count=1, flavor=6):
    return bytes([12, b, count - 1, flavor])


def backend_bytes(b, data):
    return bytes([11, b, len(data)]) + data


# One server: the probe connects, answers PING and INFO (role:master), so the master is adopted.
MASTER_UP = TIMEOUT + connected() + answer(0, 2)
write("engine_client_bytes", "get-set", setup() + MASTER_UP + ACCEPT + command(0, "SET", "k", "v")
      + command(0, "GET", "k", inline=True) + connected() + answer(1, 2) + ACCEPT + command(1, "INCR", "k")
      + answer(1, 1, 2))
write("engine_client_bytes", "pipeline-before-master", setup() + ACCEPT + client_bytes(0, mb(b"GET", b"a") * 3)
      + MASTER_UP + connected() + answer(1, 3))
write("engine_client_bytes", "protocol-error-in-flight", setup() + MASTER_UP + ACCEPT + command(0, "GET", "k")
      + client_bytes(0, b"*1\r\n:1\r\n") + connected() + answer(1))
write("engine_client_bytes", "protocol-error-held", setup() + ACCEPT + command(0, "GET", "k")
      + client_bytes(0, b"set k \"v\r\n") + MASTER_UP)
write("engine_client_bytes", "multi-exec", setup() + MASTER_UP + ACCEPT + command(0, "MULTI") + command(0, "SET", "k", "v")
      + command(0, "EXEC") + connected() + answer(1, 3) + answer(1))
write("engine_client_bytes", "subscribe", setup() + MASTER_UP + ACCEPT + command(0, "SUBSCRIBE", "ch") + connected()
      + answer(1) + answer(1, 1, 3) + bytes([4, 0]) + answer(1, 1, 3) + command(0, "UNSUBSCRIBE", "ch")
      + answer(1) + bytes([5, 0]))
write("engine_client_bytes", "select-quit", setup() + MASTER_UP + ACCEPT + command(0, "SELECT", "1") + command(0, "GET", "k")
      + command(0, "QUIT") + client_bytes(0, b"garbage\x00") + connected() + answer(1, 2) + answer(1))
write("engine_client_bytes", "failover", setup(servers=2) + TIMEOUT + connected(0) + connected(0) + answer(0, 2)
      + answer(0, 2) + ACCEPT + command(0, "SET", "k", "v") + connected() + advance(400) + TIMEOUT
      + answer(0, 4) + answer(0, 4) + command(0, "GET", "k") + connected() + answer(0, 2))
write("engine_client_bytes", "reads-to-slaves", setup(servers=3, reads_to_slaves=True, pool=2) + TIMEOUT
      + connected() * 3 + answer(0, 2) + answer(0, 2) + answer(0, 2) + ACCEPT + ACCEPT + command(0, "GET", "k")
      + command(1, "SET", "k", "v") + command(0, "MGET", "k", "0") + connected() * 3 + answer(0, 2) + answer(1, 2)
      + answer(2, 2))
write("engine_client_bytes", "bad-replies", setup() + MASTER_UP + ACCEPT + command(0, "GET", "k") + connected()
      + backend_bytes(1, b"?bad\r\n") + command(0, "GET", "k") + connected() + backend_bytes(0, b"+OK\r\n+extra\r\n"))
write("engine_client_bytes", "max-clients-and-stale", setup(clients=1) + ACCEPT + ACCEPT + bytes([13, 0, 0])
      + bytes([3, 0]) + bytes([13, 0, 3]) + bytes([9, 0]) + bytes([13, 0, 1]))
write("engine_client_bytes", "backpressure", setup(pipeline=2) + MASTER_UP + ACCEPT + client_bytes(0, mb(b"GET", b"k") * 5)
      + connected() + answer(1, 2) + bytes([4, 0]) + answer(1, 3) + bytes([5, 0]))

# engine_admin: the same setup and operations, plus (see Op::decode_with_admin) PROXY ADD/REMOVE/FAILOVER from an
# admin client, reloads, SCAN and numbered ECHO.
def admin_add(server):
    return bytes([14, server])


def admin_remove(server):
    return bytes([15, server])


def admin_failover(server=0x80):
    return bytes([16, server])


def reload(mask, rotate=0, flip_mode=False):
    return bytes([17, mask, rotate, int(flip_mode)])


def scan(c, cursor):
    """cursor: 0 starts an iteration, 2 continues the client's last cursor."""
    return bytes([18, c, cursor])


def echo(c):
    return bytes([20, c])


# Three servers in readsToSlaves: every probe (opened at the start) connects and answers PING and INFO, so server 0
# is adopted as the master with servers 1 and 2 as its readable replicas.
THREE_UP = connected() * 3 + answer(0, 2, 1) + answer(1, 2, 1) + answer(2, 2, 1)
# A client's SCAN 0 goes to server 1 (round robin), a second SCAN 0 to server 2, answered with a cursor each, so
# the client's last cursor is server 2's.
CURSOR_ON_LAST = scan(0, 0) + connected() + answer(3, 1, 1) + scan(0, 0) + connected() + answer(4, 1, 1)
# The crash this target was made for: the cursor of the last server listed is continued after the server before
# it was removed; with positions for ids, that id pointed past the end of the server list and the engine panicked.
write("engine_admin", "scan-after-remove-of-an-earlier-server", setup(servers=3, reads_to_slaves=True) + THREE_UP
      + ACCEPT + CURSOR_ON_LAST + admin_remove(1) + scan(0, 2) + answer(4, 1, 1) + echo(0) + answer(4, 1, 1))
write("engine_admin", "scan-after-remove-of-its-server", setup(servers=3, reads_to_slaves=True) + THREE_UP
      + ACCEPT + CURSOR_ON_LAST + admin_remove(2) + scan(0, 2) + connected() + answer(3, 1, 1) + scan(0, 2)
      + answer(3, 1, 1))
write("engine_admin", "scan-after-reload-without-its-server", setup(servers=3, reads_to_slaves=True) + THREE_UP
      + ACCEPT + CURSOR_ON_LAST + reload(0b0011) + scan(0, 2) + answer(3, 1, 1) + reload(0b1011, 1) + TIMEOUT
      + connected() + scan(0, 0) + answer(5, 2, 1))
write("engine_admin", "add-remove-readd-and-failover", setup(servers=2, reads_to_slaves=True)
      + connected() * 2 + answer(0, 2, 1) + answer(1, 2, 1) + ACCEPT + echo(0) + admin_add(2) + connected()
      + answer(2, 2, 1) + echo(0) + admin_remove(2) + admin_add(2) + admin_failover(1) + advance(50) + TIMEOUT
      + answer(0, 4, 1) + answer(1, 4, 1) + echo(0) + command(0, "MULTI") + command(0, "SET", "k", "v")
      + command(0, "EXEC") + command(0, "WAIT", "1", "0") + reload(0b0101, 1, True) + TIMEOUT)


# engine_sentinel: the setup, one byte for the sentinels (count - 1 in its low bits), then the admin target's
# operations and (see Op::decode_with_sentinels) what the sentinels say, their events, their outages and the
# PROXY commands Sentinel mode keeps.
def sentinel_setup(sentinels=1, servers=0, reads_to_slaves=True, lost_after=1):
    """lost_after: 0, 1 or 2 for a majority_lost_after of 150, 400 or 1000 ms."""
    return setup(servers=servers + 1, reads_to_slaves=reads_to_slaves) + bytes([(sentinels - 1) | lost_after << 2])


def sentinel_says(sentinel, master, listed, healthy, alias=False, promote=True):
    """sentinel: an index, or ALL; master: a universe index, or None (it does not know the name)."""
    return bytes([22, sentinel, 4 if master is None else master, listed | healthy << 4, int(alias) | 2 * int(promote)])


ALL = 0x80


def sentinel_push(sentinel, kind=0):
    return bytes([24, sentinel, kind])


def sentinel_toggle(sentinel):
    return bytes([25, sentinel])


def admin_query(which):
    return bytes([26, which])


# One sentinel names server 0 and lists servers 1 and 2: its answers come, the servers it names are probed and
# answer (server 0 reports role:master), so the engine routes to server 0 and reads to 1 and 2. Backends: 0 and 1
# are the sentinel's (questions, subscription), 2 to 4 the probes of servers 0 to 2.
ONE_SENTINEL_UP = (TIMEOUT + connected() * 2 + answer(0, 2, 6) + answer(1, 2, 6) + connected() * 3
                   + answer(2, 2, 1) + answer(3, 2, 1) + answer(4, 2, 1))
# The case this target was made for: a SCAN cursor of server 1 (backend 5), then the sentinels drop server 1 from
# their replicas; the next round's answer reaches the engine and the client continues its cursor.
write("engine_sentinel", "sentinels-drop-the-scan-cursors-server", sentinel_setup() + ONE_SENTINEL_UP + ACCEPT
      + scan(0, 0) + connected() + answer(5, 1, 1) + sentinel_says(ALL, 0, 0b0100, 0b0100) + advance(150)
      + answer(0, 2, 6) + scan(0, 2) + connected() + echo(0) + connected() + answer(6, 1, 1) + answer(7, 1, 1)
      + scan(0, 2) + answer(6, 1, 1) + echo(0) + answer(7, 1, 1))
# Three sentinels: two name server 1 (promoted) and publish +switch-master while a client writes, runs a
# transaction and WAITs; the third lags, then stops, then comes back naming server 1 under another address.
write("engine_sentinel", "switch-master-with-traffic", sentinel_setup(sentinels=3, lost_after=2) + TIMEOUT
      + connected() * 6 + answer(0, 2, 6) + answer(2, 2, 6) + answer(4, 2, 6) + answer(1, 2, 6) + connected() * 3
      + answer(6, 2, 1) + answer(7, 2, 1) + answer(8, 2, 1) + ACCEPT + command(0, "SET", "k", "v") + connected()
      + answer(9, 1, 6) + command(0, "MULTI") + command(0, "SET", "k", "v") + echo(0) + sentinel_says(0, 1, 0b0101, 0b0101)
      + sentinel_says(1, 1, 0b0101, 0b0001) + sentinel_push(0) + answer(0, 2, 6) + answer(2, 2, 6) + answer(4, 2, 6)
      + command(0, "EXEC") + command(0, "WAIT", "1", "0") + answer(7, 4, 1) + TIMEOUT + connected() * 2
      + command(0, "SET", "k", "v") + echo(0) + connected() + answer(9, 3, 6) + sentinel_toggle(2) + advance(300)
      + TIMEOUT + sentinel_toggle(2) + sentinel_says(2, 1, 0b0001, 0b0001, alias=True) + TIMEOUT + connected() * 4
      + answer(0, 2, 6) + answer(2, 2, 6) + answer(4, 2, 6) + echo(0) + TIMEOUT)
# Answers that name nothing usable: errors, wrong shapes, ports out of range, RESP3 nulls and maps, bytes that
# are no reply; events of the wrong shape; the admin commands Sentinel mode refuses and those it keeps, reloads.
# Backends: 0 and 1 probe the configured servers 0 and 1, 2 and 3 are sentinel 0's, 4 and 5 sentinel 1's.
MALFORMED = b"".join(answer(2, 2, 7 + 8 * v) + answer(4, 2, 7 + 8 * (6 - v)) + advance(100) for v in range(7))
write("engine_sentinel", "malformed-answers-and-admin", sentinel_setup(sentinels=2, servers=2) + TIMEOUT
      + connected() * 6 + answer(0, 2, 3) + answer(1, 2, 3) + answer(3, 2, 6) + answer(5, 2, 6) + MALFORMED
      + answer(2, 2, 6) + answer(4, 2, 3) + ACCEPT + command(0, "GET", "k") + sentinel_push(0, 4) + sentinel_push(1, 5)
      + sentinel_push(0, 3) + admin_add(3) + admin_remove(1) + admin_failover() + admin_query(0) + admin_query(1)
      + admin_query(2) + reload(0b1010, 1, True) + answer(2, 2, 63) + sentinel_says(ALL, None, 0, 0) + TIMEOUT
      + echo(0) + advance(1500) + TIMEOUT)


# engine_cluster: the setup (its first byte: the number of seeds - 1), then operations (see Op::decode_with_cluster):
# the base operations, what the cluster's nodes say, bounced requests, commands with keys and numbered ECHO.
CLUSTER_COMMANDS = ["GET", "SET", "INCR", "MGET", "MSET", "DEL", "EXISTS", "TOUCH", "UNLINK", "RENAME", "MSETNX", "EVAL",
                    "DBSIZE", "PING", "SCAN", "FLUSHALL", "MULTI", "CLUSTER"]
CLUSTER_KEYS = ["{a}1", "{a}2", "{b}1", "k", "x", "y", "{a}n", "foo"]


def cluster_setup(seeds=1, pool=1, pipeline=7, clients=5, hold_max=9):
    return setup(servers=seeds, pool=pool, pipeline=pipeline, clients=clients, hold_max=hold_max)


def cluster_says(primaries, style=0, epochs=1):
    """primaries: a mask of the 8 nodes 7000-7007; style bits: 0 minority (cluster_state:fail but for the first
    primary), 1 uneven ranges with gaps, 2 absurd epochs, 3 a failed node, 4 a node without address, 5 own line
    without host, 6 migration brackets, 7 a malformed line."""
    return bytes([14, primaries, style, epochs])


def cluster_raw(node, data):
    return bytes([15, node, len(data)]) + data


REDIRECT = {"MOVED": 0, "ASK": 1, "TRYAGAIN": 2, "CLUSTERDOWN": 3, "CROSSSLOT": 4, "ERR": 5, "MALFORMED": 6,
            "OTHER": 7}


def bounce(b, kind, target=0, count=1):
    """The next `count` requests on backend b bounced; target: the node (index) a redirection names, + 0x80 for
    its host spelt localhost."""
    return bytes([16, b, count - 1, REDIRECT[kind], target])


def keys(c, name, *names):
    return bytes([18, c, CLUSTER_COMMANDS.index(name), len(names)] + [CLUSTER_KEYS.index(k) for k in names])


def cecho(c):
    return bytes([20, c])


# The seed's probe (backend 0) connects, answers PING and INFO, then CLUSTER INFO and CLUSTER NODES: the map the
# model holds (by default node 7000 the only primary, 7001-7007 its replicas), whose nodes' probes are opened.
CLUSTER_UP = TIMEOUT + connected(0) + answer(0, 2) + TIMEOUT + answer(0, 2)


def answer_all(flavor=1, backends=12):
    """Answers up to 4 waiting requests on each of the first `backends` connected backends."""
    return b"".join(answer(b, 4, flavor) for b in range(backends))


def bounce_all(kind, target=0, backends=12):
    return b"".join(bounce(b, kind, target) for b in range(backends))


def connect_all(n=16):
    return connected() * n


REFRESH = advance(150) + TIMEOUT + answer_all(6)
# Three primaries (7000-7002), their replicas (7003-7007), every probe up.
THREE_PRIMARIES = cluster_says(0b111, epochs=2) + CLUSTER_UP + connect_all(8) + answer_all(6)
SPLIT_TRAFFIC = (keys(0, "MSET", "{a}1", "{b}1", "k") + keys(0, "MGET", "{a}1", "{b}1", "k", "{a}2") + cecho(0)
                 + keys(0, "DEL", "{a}1", "x") + keys(0, "EXISTS", "y", "x", "{a}n") + keys(0, "RENAME", "{a}1", "k")
                 + keys(0, "EVAL", "x", "y") + keys(0, "GET", "foo") + keys(0, "INCR", "{a}n") + cecho(0))
write("engine_cluster", "map-read-then-split-traffic", cluster_setup() + THREE_PRIMARIES + ACCEPT + SPLIT_TRAFFIC
      + connect_all(4) + answer_all(1) + answer_all(2) + TIMEOUT + answer_all(3))
write("engine_cluster", "moved-ask-tryagain-clusterdown", cluster_setup(seeds=2) + THREE_PRIMARIES + ACCEPT + ACCEPT
      + SPLIT_TRAFFIC + keys(1, "MGET", "{a}1", "{a}2", "{a}n") + connect_all(4) + bounce_all("MOVED", 5)
      + connect_all(4) + answer_all(6) + bounce_all("ASK", 0x83) + connect_all(4) + answer_all(6)
      + bounce_all("TRYAGAIN") + advance(10) + TIMEOUT + connect_all(4) + bounce_all("CLUSTERDOWN") + advance(20)
      + TIMEOUT + bounce_all("MALFORMED", 1) + bounce_all("CROSSSLOT") + answer_all(1) + REFRESH + answer_all(2)
      + advance(100) + TIMEOUT + answer_all(1))
write("engine_cluster", "maps-to-refuse-and-odd-lines", cluster_setup() + THREE_PRIMARIES + ACCEPT + cecho(0)
      + connect_all(2) + answer_all(1)
      + cluster_says(0b111, style=0b1, epochs=2) + REFRESH + REFRESH        # a minority's view
      + cluster_says(0b111, epochs=1) + REFRESH + REFRESH                   # older by epoch
      + cluster_says(0b111, style=0b100, epochs=3) + REFRESH + REFRESH      # absurd epochs
      + cluster_says(0b111, epochs=3) + REFRESH + cecho(0) + answer_all(1)  # older than absurd
      + cluster_says(0) + REFRESH                                           # no slot served
      + cluster_says(0b111, style=0b10000000, epochs=4) + REFRESH           # a malformed line
      + cluster_says(0b1101, style=0b01111010, epochs=5) + REFRESH + REFRESH + connect_all(4) + answer_all(6)
      + cluster_raw(0, b"garbage\nmore garbage") + cluster_raw(1, b"") + cluster_raw(2, bytes(range(0xF0, 0x100)))
      + REFRESH + REFRESH + REFRESH + SPLIT_TRAFFIC + connect_all(4) + answer_all(1) + REFRESH)
write("engine_cluster", "addresses-come-and-go", cluster_setup(seeds=3) + THREE_PRIMARIES + ACCEPT + SPLIT_TRAFFIC
      + connect_all(4) + answer_all(1) + cluster_says(0b11100000, epochs=9) + REFRESH + connect_all(8) + answer_all(6)
      + SPLIT_TRAFFIC + connect_all(8) + answer_all(1) + cluster_says(0b1001, epochs=20) + REFRESH + REFRESH
      + connect_all(8) + answer_all(6) + SPLIT_TRAFFIC + connect_all(8) + answer_all(1)
      + cluster_raw(3, b"n1 127.0.0.9:7100@1 myself,master - 0 0 99 connected 0-16383\n") + REFRESH + REFRESH
      + connect_all(4) + answer_all(6) + SPLIT_TRAFFIC + connect_all(4) + answer_all(1) + REFRESH)
write("engine_cluster", "refused-and-closed-mid-flight", cluster_setup() + THREE_PRIMARIES + ACCEPT + ACCEPT
      + SPLIT_TRAFFIC + keys(1, "MSET", "{a}1", "k", "x") + connected() + bytes([9, 0x80]) + bytes([9, 0])
      + answer_all(1, 9) + bytes([10, 8]) + bytes([10, 8]) + advance(30) + TIMEOUT + connect_all(2)
      + bytes([9, 0x81]) + bytes([3, 1]) + advance(50) + TIMEOUT + connect_all(4) + answer_all(1) + bytes([3, 0])
      + advance(600) + TIMEOUT)
write("engine_cluster", "no-seed-answers", cluster_setup(seeds=3) + TIMEOUT + ACCEPT + SPLIT_TRAFFIC + connect_all(3)
      + bytes([10, 0]) + bytes([9, 0x80]) + advance(1000) + TIMEOUT)
