#!/usr/bin/env python3
"""Client side of bench/memory.sh: drives redis-proxy and prints its VmRSS at each step.

Every step is bounded in count and time; sockets are closed before the next step.
"""

import argparse
import socket
import threading
import time


def status_mib(pid, field):
    """A kB field of /proc/PID/status (VmRSS, VmHWM), in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {field}")


def rss_mib(pid):
    return status_mib(pid, "VmRSS")


def hwm_mib(pid):
    """The peak VmRSS since the last reset_hwm (VmHWM)."""
    return status_mib(pid, "VmHWM")


def reset_hwm(pid):
    """Resets the process's VmHWM to its current VmRSS (Linux: 5 to /proc/PID/clear_refs)."""
    with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def report(pid, label, baseline=None):
    rss = rss_mib(pid)
    delta = f"  (+{rss - baseline:.1f} over baseline)" if baseline is not None else ""
    print(f"   {label:<58} {rss:8.1f}{delta}", flush=True)
    return rss


def settle(seconds=1.0):
    time.sleep(seconds)


def connect(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_reply_bytes(sock, want):
    """Reads exactly `want` bytes (the caller knows the reply's size)."""
    chunks, got = [], 0
    while got < want:
        chunk = sock.recv(min(4 << 20, want - got))
        if not chunk:
            raise RuntimeError("connection closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def command(*args):
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        arg = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def idle_clients(port, pid, count, baseline):
    socks = []
    deadline = time.time() + 120
    for _ in range(count):
        if time.time() > deadline:
            raise RuntimeError("opening connections took over 120 s")
        socks.append(connect(port))
    settle(2)
    report(pid, f"{count} idle clients connected", baseline)
    ping = command("PING")
    for sock in socks:
        sock.sendall(ping)
    for sock in socks:
        if read_reply_bytes(sock, 7) != b"+PONG\r\n":
            raise RuntimeError("bad PING reply")
    settle(1)
    report(pid, f"{count} idle clients after one PING each", baseline)
    get = command("GET", "memkey:small")
    for sock in socks:
        sock.sendall(get)
    for sock in socks:
        read_reply_bytes(sock, 5)  # $-1\r\n
    settle(1)
    report(pid, f"{count} idle clients after one forwarded GET each", baseline)
    for sock in socks:
        sock.close()
    settle(2)
    report(pid, f"after the {count} clients closed", baseline)


def big_value(port, pid, mib, baseline):
    size = mib << 20
    # Every byte value, at a position that is not a multiple of the period of anything the proxy does.
    value = (bytes(range(256)) * (size // 256 + 1))[:size]
    frame = command("SET", "memkey:big", value)
    peak = [0.0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sock = connect(port)
    reset_hwm(pid)
    sock.sendall(frame)
    del frame
    if read_reply_bytes(sock, 5) != b"+OK\r\n":
        raise RuntimeError("SET of the big value failed")
    print(f"   {'peak during SET of a %d MiB value' % mib:<58} {peak[0]:8.1f}  (+{peak[0] - baseline:.1f})")
    hwm = hwm_mib(pid)
    print(f"   {'VmHWM (exact peak) during the SET':<58} {hwm:8.1f}  (+{hwm - baseline:.1f})")
    report(pid, f"after the {mib} MiB SET (client still connected)", baseline)
    peak[0] = 0.0
    reset_hwm(pid)
    sock.sendall(command("GET", "memkey:big"))
    expected = f"${size}\r\n".encode() + value + b"\r\n"
    reply = read_reply_bytes(sock, len(expected))
    if reply != expected:
        at = next(i for i in range(len(expected)) if reply[i] != expected[i])
        raise RuntimeError(f"GET of the big value returned other bytes (first difference at byte {at})")
    del reply, expected, value
    print(f"   {'peak during GET of it (the value came back byte-exact)':<58} {peak[0]:8.1f}  (+{peak[0] - baseline:.1f})")
    hwm = hwm_mib(pid)
    print(f"   {'VmHWM (exact peak) during the GET':<58} {hwm:8.1f}  (+{hwm - baseline:.1f})")
    settle(1)
    report(pid, "after the GET (client still connected)", baseline)
    sock.close()
    done.set()
    sampler.join()
    settle(2)
    report(pid, "after that client left", baseline)


def slow_reader(port, pid, seconds, baseline):
    setter = connect(port)
    setter.sendall(command("SET", "memkey:mib", b"m" * (1 << 20)))
    read_reply_bytes(setter, 5)
    setter.close()
    sock = connect(port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.setblocking(False)
    get = command("GET", "memkey:mib") * 64
    sent, peak = 0, 0.0
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            sent += sock.send(get)
        except BlockingIOError:
            time.sleep(0.01)
        peak = max(peak, rss_mib(pid))
    requests = sent // len(command("GET", "memkey:mib"))
    print(f"   {'peak while a client pipelines GETs of 1 MiB, never reading':<58} {peak:8.1f}  (+{peak - baseline:.1f})"
          f"  [{requests} GETs sent in {seconds} s]")
    report(pid, "still connected, not reading", baseline)
    sock.close()
    settle(2)
    report(pid, "after that client left", baseline)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--big-mib", type=int, default=100)
    parser.add_argument("--slow-seconds", type=float, default=5)
    options = parser.parse_args()
    baseline = report(options.pid, "baseline (started, master adopted)")
    idle_clients(options.port, options.pid, options.clients, baseline)
    big_value(options.port, options.pid, options.big_mib, baseline)
    slow_reader(options.port, options.pid, options.slow_seconds, baseline)


if __name__ == "__main__":
    main()
