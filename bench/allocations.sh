#!/usr/bin/env bash
# bench/allocations.sh - allocator system calls (brk, mmap, munmap) of the proxy while clients GET large values.
#
# Usage:  bench/allocations.sh [PROXY_BIN...]   (default target/release/redis-proxy; SIZES="100000 1048576"
#                                                N=2000 CLIENTS=10 BASE_PORT=7610)
#
# Starts one redis-server (:BASE_PORT+1) and, for each PROXY_BIN in turn, the proxy (:BASE_PORT+2) in front of it;
# stores one value of each size, then counts with `strace -f -c` the allocator calls the proxy makes while
# `redis-benchmark -t get -c CLIENTS -n N -d SIZE` reads it through the proxy, and prints them with the GETs per
# second. Everything binds to 127.0.0.1; the processes started here are stopped at exit, by PID.
set -euo pipefail
export LC_ALL=C

SIZES=${SIZES:-100000 1048576}
N=${N:-2000}
CLIENTS=${CLIENTS:-10}
BASE_PORT=${BASE_PORT:-7610}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=("$ROOT/target/release/redis-proxy")
P_REDIS=$((BASE_PORT + 1)) P_PROXY=$((BASE_PORT + 2))
for tool in redis-server redis-benchmark redis-cli strace; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed (apt-get install redis-server strace)" >&2; exit 1; }
done

for port in "$P_REDIS" "$P_PROXY"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port is taken: choose another BASE_PORT" >&2
        exit 1
    fi
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-allocations.XXXXXX")
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

wait_port() { for _ in $(seq 100); do redis-cli -p "$1" PING >/dev/null 2>&1 && return 0; sleep 0.05; done; return 1; }

redis-server --port "$P_REDIS" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
wait_port "$P_REDIS"
echo "{\"servers\": [{\"host\": \"127.0.0.1\", \"port\": $P_REDIS}], \"listen_port\": $P_PROXY}" >"$WORK/proxy.json"

printf '%-40s %9s %7s %7s %7s %10s\n' build size brk mmap munmap "GET/s"
for bin in "${BINS[@]}"; do
    "$bin" "$WORK/proxy.json" 2>"$WORK/proxy.log" &
    proxy=$!
    PIDS+=("$proxy")
    wait_port "$P_PROXY"
    for size in $SIZES; do
        # redis-benchmark's GET reads the key its SET wrote.
        redis-benchmark -p "$P_PROXY" -t set -n 1 -c 1 -d "$size" >/dev/null
        strace -f -c -e trace=brk,mmap,munmap -o "$WORK/strace.txt" -p "$proxy" 2>/dev/null &
        tracer=$!
        sleep 0.5
        rps=$(redis-benchmark -p "$P_PROXY" -t get -n "$N" -c "$CLIENTS" -d "$size" -q | sed -n 's/.*: \([0-9.]*\) requests per second.*/\1/p')
        kill -INT "$tracer"
        wait "$tracer" 2>/dev/null || true
        count() { awk -v name="$1" '$NF == name { print $4 }' "$WORK/strace.txt" | head -1; }
        printf '%-40s %9s %7s %7s %7s %10s\n' "$(basename "$bin")" "$size" "$(count brk || true)" \
            "$(count mmap || true)" "$(count munmap || true)" "$rps"
    done
    kill "$proxy"
    wait "$proxy" 2>/dev/null || true
done
