#!/usr/bin/env bash
# bench/allocations.sh - allocator system calls (brk, mmap, munmap) of the proxy while clients GET large values.
#
# Usage:  bench/allocations.sh [PROXY_BIN...]   (default target/release/redis-proxy; SIZES="100000 1048576"
#                                                N=2000 CLIENTS=10 BASE_PORT=7610)
#
# Starts one redis-server (:BASE_PORT+1) and, for each PROXY_BIN in turn, the proxy (:BASE_PORT+2) in front of it;
# stores one value of each size, then counts with `strace -f -c` the allocator calls the proxy makes while
# `redis-benchmark -t get -c CLIENTS -n N -d SIZE` reads it through the proxy, and prints them with the GETs per
# second. Servers and proxies are started with bench/lib.sh: everything binds to 127.0.0.1; the processes started here
# are stopped at exit, by PID.
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
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
install_if_missing redis-server redis-benchmark:redis-tools redis-cli:redis-tools strace

PORT_HINT="choose another BASE_PORT"
port_free_or_die "$P_REDIS" "$P_PROXY"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-allocations.XXXXXX")
BENCH_WORK=$WORK BENCH_WORK_REMOVE=1

start_redis "$P_REDIS"
proxy_config "$WORK/proxy.json" "$P_PROXY" "$P_REDIS"

printf '%-40s %9s %7s %7s %7s %10s\n' build size brk mmap munmap "GET/s"
for bin in "${BINS[@]}"; do
    start_proxy "$bin" "$WORK/proxy.json" "$P_PROXY"
    proxy=$LAST_PID
    for size in $SIZES; do
        # redis-benchmark's GET reads the key its SET wrote.
        redis-benchmark -p "$P_PROXY" -t set -n 1 -c 1 -d "$size" >/dev/null
        strace -f -c -e trace=brk,mmap,munmap -o "$WORK/strace.txt" -p "$proxy" 2>/dev/null &
        tracer=$!
        STARTED+=("$tracer") # stopped at exit like the servers, if this run stops early
        sleep 0.5
        rps=$(redis-benchmark -p "$P_PROXY" -t get -n "$N" -c "$CLIENTS" -d "$size" -q | sed -n 's/.*: \([0-9.]*\) requests per second.*/\1/p')
        stop_pid "$tracer" INT
        count() { awk -v name="$1" '$NF == name { print $4 }' "$WORK/strace.txt" | head -1; }
        printf '%-40s %9s %7s %7s %7s %10s\n' "$(basename "$bin")" "$size" "$(count brk || true)" \
            "$(count mmap || true)" "$(count munmap || true)" "$rps"
    done
    stop_pid "$proxy"
done
