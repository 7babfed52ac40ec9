#!/usr/bin/env python3
"""Generate engine/src/command/table.rs, the Redis command table, from a live redis-server.

How to rerun (from the workspace root; needs `redis-server` on PATH and Python 3.11+, standard library only):

    python3 tools/gen-command-table.py            # rewrites engine/src/command/table.rs
    python3 tools/gen-command-table.py --check    # exits 1 if the checked-in table differs from a fresh one

Then run `cargo test -p redis-proxy-engine` and `cargo test -p redis-proxy-tests --test command_table`.

What it does: starts its own `redis-server` on a free 127.0.0.1 port (never 6379; no persistence, in a temporary
directory), runs `COMMAND` (COMMAND INFO of every command, with subcommands) and `COMMAND DOCS` (for the
one-line summaries written as comments), stops the server by PID, and writes the table sorted by name so the
output is deterministic, plus a small hash index (FNV-1a, open addressing) that `lookup()` uses. The file
is passed through `rustfmt` so that `cargo fmt` leaves it unchanged.
Generation fails on a command flag that `CommandFlags` has no constant for (add it to FLAGS below and to
engine/src/command.rs first).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "engine" / "src" / "command" / "table.rs"

# Redis spelling (as COMMAND reports it) -> name of the associated const of `CommandFlags`.
# Must match engine/src/command.rs.
FLAGS = {
    "write": "WRITE",
    "readonly": "READONLY",
    "denyoom": "DENYOOM",
    "module": "MODULE",
    "admin": "ADMIN",
    "pubsub": "PUBSUB",
    "noscript": "NOSCRIPT",
    "blocking": "BLOCKING",
    "loading": "LOADING",
    "stale": "STALE",
    "skip_monitor": "SKIP_MONITOR",
    "skip_slowlog": "SKIP_SLOWLOG",
    "asking": "ASKING",
    "fast": "FAST",
    "no_auth": "NO_AUTH",
    "may_replicate": "MAY_REPLICATE",
    "sentinel": "SENTINEL",
    "only_sentinel": "ONLY_SENTINEL",
    "no_mandatory_keys": "NO_MANDATORY_KEYS",
    "protected": "PROTECTED",
    "module_no_cluster": "MODULE_NO_CLUSTER",
    "no_async_loading": "NO_ASYNC_LOADING",
    "no_multi": "NO_MULTI",
    "movablekeys": "MOVABLE_KEYS",
    "allow_busy": "ALLOW_BUSY",
}


class RespError(Exception):
    """An error reply (-ERR ...) from the server."""


class Resp:
    """A minimal blocking RESP2 client."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def call(self, *args: str):
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(out))
        reply = self._read()
        if isinstance(reply, RespError):
            raise reply
        return reply

    def _read(self):
        line = self.file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError(f"connection closed or bad line: {line!r}")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.file.read(n + 2)
            return data[:-2].decode()
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self._read() for _ in range(n)]
        raise ValueError(f"unexpected RESP type {line!r}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if port == 6379:
        return free_port()
    return port


def start_server(workdir: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "no", "--loglevel", "warning", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            conn = Resp(port)
            try:
                if conn.call("PING") == "PONG":
                    return proc, port
            finally:
                conn.close()
        except (OSError, ConnectionError, RespError):
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    stop_server(proc)
    sys.exit(f"redis-server on port {port} did not answer PING within 10 s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, 9)
    proc.wait()


def pairs(flat: list) -> dict:
    """RESP2 renders maps as flat [key, value, ...] arrays."""
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def collect_summaries(docs: list, out: dict[str, str]) -> None:
    for name, body in pairs(docs).items():
        body = pairs(body)
        out[name.lower()] = body.get("summary", "")
        if body.get("subcommands"):
            collect_summaries(body["subcommands"], out)


def parse_info(entry: list) -> dict:
    name, arity, flags, first, last, step = entry[:6]
    unknown = [f for f in flags if f not in FLAGS]
    if unknown:
        sys.exit(f"command {name!r} has flags {unknown} unknown to CommandFlags: add them to FLAGS in "
                 f"{Path(__file__).name} and as consts in engine/src/command.rs")
    subs = entry[9] if len(entry) > 9 and entry[9] else []
    return {
        "name": name.lower(),
        "arity": arity,
        "flags": sorted(flags, key=list(FLAGS).index),
        "first": first,
        "last": last,
        "step": step,
        "subcommands": sorted((parse_info(s) for s in subs), key=lambda c: c["name"].encode()),
    }


# Hash index for lookup(): must match `fnv1a` and `lookup` in engine/src/command.rs.
HASH_BITS = 10


def fnv1a(name: str) -> int:
    """32-bit FNV-1a of the (lowercase) name's bytes."""
    h = 0x811C9DC5
    for b in name.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def hash_slots(names: list[str]) -> tuple[list[int], int]:
    """Open-addressing table: slot fnv1a(name) >> (32 - HASH_BITS), linear probing; index + 1, 0 = empty."""
    size = 1 << HASH_BITS
    if len(names) > size // 2:
        sys.exit(f"{len(names)} commands overfill the hash index: raise HASH_BITS")
    slots = [0] * size
    max_probes = 0
    for index, name in enumerate(names):
        slot, probes = fnv1a(name) >> (32 - HASH_BITS), 1
        while slots[slot]:
            slot, probes = (slot + 1) % size, probes + 1
        slots[slot] = index + 1
        max_probes = max(max_probes, probes)
    return slots, max_probes


def rust_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_spec(cmd: dict, summaries: dict[str, str], indent: str) -> list[str]:
    if cmd["flags"]:
        expr = "F::" + FLAGS[cmd["flags"][0]] + "".join(f".union(F::{FLAGS[f]})" for f in cmd["flags"][1:])
    else:
        expr = "F::EMPTY"
    lines = []
    summary = " ".join(summaries.get(cmd["name"], "").split())
    if summary:
        lines.append(f"{indent}// {summary}")
    lines.append(f"{indent}CommandSpec {{")
    lines.append(f"{indent}    name: {rust_str(cmd['name'])},")
    lines.append(f"{indent}    arity: {cmd['arity']},")
    lines.append(f"{indent}    flags: {expr},")
    lines.append(f"{indent}    first_key: {cmd['first']},")
    lines.append(f"{indent}    last_key: {cmd['last']},")
    lines.append(f"{indent}    key_step: {cmd['step']},")
    if cmd["subcommands"]:
        lines.append(f"{indent}    subcommands: &[")
        for sub in cmd["subcommands"]:
            lines.extend(render_spec(sub, summaries, indent + "        "))
        lines.append(f"{indent}    ],")
    else:
        lines.append(f"{indent}    subcommands: &[],")
    lines.append(f"{indent}}},")
    return lines


def render(version: str, commands: list[dict], summaries: dict[str, str]) -> str:
    n_sub = sum(len(c["subcommands"]) for c in commands)
    out = [
        f"// @generated by `python3 tools/gen-command-table.py` from `COMMAND` of Redis {version}.",
        "// DO NOT EDIT: rerun the generator instead (see its header or the docs of `engine::command`).",
        f"// {len(commands)} commands, {n_sub} subcommands; sorted by name (byte order).",
        "",
        "use super::{CommandFlags as F, CommandSpec};",
        "",
        "/// The Redis version this table was generated from.",
        f"pub(super) const REDIS_VERSION: &str = {rust_str(version)};",
        "",
        "/// Every top-level command, sorted by name; subcommands nested and sorted likewise.",
        "pub(super) static COMMANDS: &[CommandSpec] = &[",
    ]
    for cmd in commands:
        out.extend(render_spec(cmd, summaries, "    "))
    out.append("];")
    slots, max_probes = hash_slots([c["name"] for c in commands])
    longest = max(len(c["name"]) for c in commands)
    longest_sub = max((len(s["name"]) - len(c["name"]) - 1 for c in commands for s in c["subcommands"]), default=0)
    out += [
        "",
        f"/// Open-addressing hash index of [`COMMANDS`] for `lookup()`: slot `fnv1a(name) >> (32 - {HASH_BITS})`,",
        "/// linear probing; each slot holds an index into `COMMANDS` plus one, 0 when empty.",
        f"/// Longest probe sequence for a present name: {max_probes}.",
        f"pub(super) const HASH_BITS: u32 = {HASH_BITS};",
        "",
        "/// The slots of the hash index (see [`HASH_BITS`]).",
        f"pub(super) static HASH_SLOTS: [u16; {1 << HASH_BITS}] = [" + ", ".join(map(str, slots)) + "];",
        "",
        "/// The longest name of a top-level command or (without its `container|` prefix) of a subcommand.",
        f"pub(super) const MAX_NAME_LEN: usize = {max(longest, longest_sub)};",
    ]
    return "\n".join(out) + "\n"


def generate() -> str:
    if shutil.which("redis-server") is None:
        sys.exit("redis-server not found on PATH: install it with `apt-get install redis-server redis-tools`")
    with tempfile.TemporaryDirectory(prefix="gen-command-table-") as workdir:
        proc, port = start_server(workdir)
        try:
            conn = Resp(port)
            server_info = conn.call("INFO", "server")
            version = next(line.split(":", 1)[1].strip() for line in server_info.splitlines()
                           if line.startswith("redis_version:"))
            commands = [parse_info(entry) for entry in conn.call("COMMAND")]
            summaries: dict[str, str] = {}
            collect_summaries(conn.call("COMMAND", "DOCS"), summaries)
            conn.close()
        finally:
            stop_server(proc)
    commands.sort(key=lambda c: c["name"].encode())
    names = [c["name"] for c in commands]
    bad = [n for n in names if not n.isascii()]
    if bad:
        sys.exit(f"non-ASCII command names (lookup lowercases ASCII only): {bad}")
    if len(set(names)) != len(names):
        sys.exit("duplicate command names in COMMAND reply")
    text = render(version, commands, summaries)
    rustfmt = shutil.which("rustfmt")
    if rustfmt is None:
        print("warning: rustfmt not found; output is not formatted", file=sys.stderr)
        return text
    fmt = subprocess.run([rustfmt, "--edition", "2021", "--emit", "stdout", "--quiet"],
                         input=text, capture_output=True, text=True, cwd=ROOT)
    if fmt.returncode != 0:
        sys.exit(f"rustfmt failed:\n{fmt.stderr}")
    return fmt.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the checked-in table, write nothing")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default: {OUTPUT.relative_to(ROOT)}")
    args = parser.parse_args()
    text = generate()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            sys.exit(f"{args.output} is out of date: rerun tools/gen-command-table.py")
        print(f"{args.output} is up to date")
        return
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
