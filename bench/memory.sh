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
# Servers and proxy are started with bench/lib.sh: everything binds to 127.0.0.1; the processes started here are
# stopped at exit, by PID.
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
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

install_if_missing redis-server redis-cli:redis-tools python3
# The proxy and the client script each hold CLIENTS sockets.
ulimit -n $((CLIENTS + 1024)) 2>/dev/null || { echo "cannot raise ulimit -n to $((CLIENTS + 1024))" >&2; exit 1; }

if [ "$SKIP_BUILD" != 1 ]; then
    (cd "$ROOT" && cargo build --release --quiet -p redis-proxy-mio) || { echo "build failed" >&2; exit 1; }
fi
W=$(mktemp -d /tmp/redis-proxy-memory.XXXXXX)
BENCH_WORK=$W
bench_on_exit() { echo "logs in $W" >&2; }

port_free_or_die "$P_REDIS" "$P_PROXY"
start_redis "$P_REDIS"
proxy_config "$W/proxy.json" "$P_PROXY" "$P_REDIS" "\"check_period\": 1000, \"max_clients\": $((CLIENTS + 100))"
start_proxy "$PROXY_BIN" "$W/proxy.json" "$P_PROXY"
PROXY_PID=$LAST_PID

echo "== redis-proxy memory  $(date -u +%Y-%m-%dT%H:%MZ)  commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "   VmRSS of redis-proxy (pid $PROXY_PID) in MiB; $(nproc) CPU, Linux $(uname -r), $(python3 --version)"
python3 "$ROOT/bench/memory_clients.py" --port "$P_PROXY" --pid "$PROXY_PID" --clients "$CLIENTS" \
    --big-mib "$BIG_MIB" --slow-seconds "$SLOW_SECONDS"
kill -0 "$PROXY_PID" 2>/dev/null || { echo "the proxy died (see $W/proxy.log)" >&2; exit 1; }
