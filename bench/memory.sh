#!/usr/bin/env bash
# bench/memory.sh - redis-proxy's resident memory (VmRSS) with many idle clients, a huge value, and a client
# that never reads its replies.
#
# Usage:  bench/memory.sh            (CLIENTS=10000 BIG_MIB=100 SLOW_SECONDS=5 BASE_PORT=7500 SKIP_BUILD=0
#                                     PROXY_BIN=target/release/redis-proxy, e.g. an older build to compare)
#
# Starts one redis-server (:BASE_PORT+1) and PROXY_BIN (:BASE_PORT+2, default limits), then
# drives it from bench/memory_clients.py and prints the proxy's VmRSS (from /proc/PID/status) at each step:
#   baseline; CLIENTS idle connections open; after one PING each; after they close;
#   during and after a SET of a BIG_MIB MiB value and a GET of it (sampled, and the exact peak: VmHWM, reset
#   before each), checking that the value comes back byte-exact;
#   during and after a client that pipelines GETs of a 1 MiB value for SLOW_SECONDS without reading.
# Everything binds to 127.0.0.1; the processes started here are stopped at exit, by PID.
set -euo pipefail
export LC_ALL=C

CLIENTS=${CLIENTS:-10000}
BIG_MIB=${BIG_MIB:-100}
SLOW_SECONDS=${SLOW_SECONDS:-5}
BASE_PORT=${BASE_PORT:-7500}
SKIP_BUILD=${SKIP_BUILD:-0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROXY_BIN=${PROXY_BIN:-$ROOT/target/release/redis-proxy}
P_REDIS=$((BASE_PORT + 1)) P_PROXY=$((BASE_PORT + 2))

command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is not installed" >&2; exit 1; }
# The proxy and the client script each hold CLIENTS sockets.
ulimit -n $((CLIENTS + 1024)) 2>/dev/null || { echo "cannot raise ulimit -n to $((CLIENTS + 1024))" >&2; exit 1; }

if [ "$SKIP_BUILD" != 1 ]; then
    (cd "$ROOT" && cargo build --release --quiet -p redis-proxy-mio) || { echo "build failed" >&2; exit 1; }
fi
W=$(mktemp -d /tmp/redis-proxy-memory.XXXXXX)
PIDS=()
cleanup() {
    local status=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    echo "logs in $W" >&2
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$P_REDIS" "$P_PROXY"; do
    if port_open "$port"; then echo "127.0.0.1:$port is in use; set BASE_PORT" >&2; exit 1; fi
done
wait_for() { local tries=$(($1 * 10)); shift; while ((tries-- > 0)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }

redis-server --port "$P_REDIS" --bind 127.0.0.1 --save '' --appendonly no --dir "$W" >"$W/redis.log" 2>&1 &
PIDS+=($!)
wait_for 10 sh -c "[ \"\$(redis-cli -p $P_REDIS ping)\" = PONG ]" || { echo "redis did not start" >&2; exit 1; }
cat >"$W/proxy.json" <<EOF
{ "servers": [ {"host": "127.0.0.1", "port": $P_REDIS} ], "listen_port": $P_PROXY, "bind_address": "127.0.0.1",
  "check_period": 1000, "max_clients": $((CLIENTS + 100)) }
EOF
"$PROXY_BIN" "$W/proxy.json" >"$W/proxy.log" 2>&1 &
PROXY_PID=$!
PIDS=("$PROXY_PID" "${PIDS[@]}")
wait_for 15 sh -c "[ \"\$(redis-cli -p $P_PROXY set __ready 1)\" = OK ]" || { echo "proxy did not start" >&2; exit 1; }

echo "== redis-proxy memory  $(date -u +%Y-%m-%dT%H:%MZ)  commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "   VmRSS of redis-proxy (pid $PROXY_PID) in MiB; $(nproc) CPU, Linux $(uname -r), $(python3 --version)"
python3 "$ROOT/bench/memory_clients.py" --port "$P_PROXY" --pid "$PROXY_PID" --clients "$CLIENTS" \
    --big-mib "$BIG_MIB" --slow-seconds "$SLOW_SECONDS"
kill -0 "$PROXY_PID" 2>/dev/null || { echo "the proxy died (see $W/proxy.log)" >&2; exit 1; }
