#!/usr/bin/env bash
# bench/serve.sh - bench/lib.sh for a benchmark written in another language (bench/clients.py): starts the servers
# and proxies its arguments name, in order, prints a line "LABEL PORT PID" for each and then "ready", and stops
# them all (by PID, bench/lib.sh's EXIT trap) when its standard input closes: when the caller closes it, exits or
# dies. SIGTERM and SIGINT stop them too.
#
# Usage:  bench/serve.sh WORKDIR SPEC...      (logs in WORKDIR; PORT_HINT: what the refusal of a taken port says)
#   redis:PORT                 a redis-server (start_redis)                        LABEL redis-PORT
#   replica:PORT:MASTER_PORT   a replica of the server on MASTER_PORT (start_replica)  LABEL replica-PORT
#   proxy:LABEL:PORT:BINARY    BINARY with the config WORKDIR/LABEL.json, written by the caller, which must listen
#                              on PORT (start_proxy: ready once it forwards a SET)
# Every port is checked before anything starts: if one is taken it starts nothing and exits 1.
set -euo pipefail
export LC_ALL=C
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
[ $# -ge 2 ] || { echo "usage: bench/serve.sh WORKDIR SPEC..." >&2; exit 2; }
BENCH_WORK=$1
shift

ports=()
for spec in "$@"; do
    IFS=: read -r kind a b _ <<<"$spec"
    case $kind in
        redis | replica) ports+=("$a") ;;
        proxy) ports+=("$b") ;;
        *) die "unknown spec $spec (redis:PORT, replica:PORT:MASTER_PORT or proxy:LABEL:PORT:BINARY)" ;;
    esac
done
port_free_or_die "${ports[@]}"

for spec in "$@"; do
    case $spec in
        redis:*)
            IFS=: read -r _ port <<<"$spec"
            start_redis "$port"
            echo "redis-$port $port $LAST_PID" ;;
        replica:*)
            IFS=: read -r _ port master <<<"$spec"
            start_replica "$port" "$master"
            echo "replica-$port $port $LAST_PID" ;;
        proxy:*)
            IFS=: read -r _ label port binary <<<"$spec"
            start_proxy "$binary" "$BENCH_WORK/$label.json" "$port"
            echo "$label $port $LAST_PID" ;;
    esac
done
echo ready
read -r _ || true # until the caller closes our standard input (or writes a line)
