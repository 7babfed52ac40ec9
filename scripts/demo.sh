#!/usr/bin/env bash
# Runs redis-proxy for real in front of three local redis-servers it starts itself: a master on 127.0.0.1:7001
# and replicas on 7002 and 7003, the proxy on 127.0.0.1:7000. Try `redis-cli -p 7000`, kill the master
# (`redis-cli -p 7001 shutdown nosave`) and watch the proxy fail over. Ctrl-C stops everything it started.
# `scripts/demo.sh cluster` starts a Redis Cluster instead (3 primaries on 7001-7003, a replica each on
# 7004-7006) and the proxy in cluster mode in front of it.
#
# Usage: scripts/demo.sh [readsToSlaves|cluster]       (env: DEMO_PORT=7000, RUNTIME=mio|tokio)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-allToMaster}
base=${DEMO_PORT:-7000}
runtime=${RUNTIME:-mio}
binary=redis-proxy
[ "$runtime" = tokio ] && binary=redis-proxy-tokio

if ! command -v redis-server >/dev/null; then
    echo "redis-server is missing: apt-get install redis-server redis-tools" >&2
    exit 1
fi
nodes=3
[ "$mode" = cluster ] && nodes=6
for port in $(seq "$base" $((base + nodes))); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "127.0.0.1:$port is in use; set DEMO_PORT to another base port" >&2
        exit 1
    fi
done

cargo build --release --bins
work=$(mktemp -d /tmp/redis-proxy-demo.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

start_redis() { # port [replicaof-port | --cluster-enabled yes ...]
    local args=(--port "$1" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" --dbfilename "dump-$1.rdb"
        --logfile "$work/redis-$1.log")
    if [ "${2:-}" = --cluster-enabled ]; then
        args+=("${@:2}")
    elif [ $# -gt 1 ]; then
        args+=(--replicaof 127.0.0.1 "$2")
    fi
    redis-server "${args[@]}" &
    pids+=($!)
}

if [ "$mode" = cluster ]; then
    addresses=()
    for port in $(seq $((base + 1)) $((base + 6))); do
        start_redis "$port" --cluster-enabled yes --cluster-config-file "$work/nodes-$port.conf" \
            --cluster-node-timeout 2000
        addresses+=("127.0.0.1:$port")
    done
    sleep 0.5
    redis-cli --cluster create "${addresses[@]}" --cluster-replicas 1 --cluster-yes >"$work/create.log"
    cat >"$work/config.json" <<JSON
{ "cluster": { "seeds": [ {"host": "127.0.0.1", "port": $((base + 1))} ] },
  "listen_port": $base, "bind_address": "127.0.0.1" }
JSON
    echo "redis-proxy ($runtime) on 127.0.0.1:$base in front of a Redis Cluster on $((base + 1))-$((base + 6)); Ctrl-C to stop"
    RUST_LOG=${RUST_LOG:-info} "target/release/$binary" "$work/config.json" &
    pids+=($!)
    wait "${pids[-1]}"
    exit
fi

start_redis $((base + 1))
start_redis $((base + 2)) $((base + 1))
start_redis $((base + 3)) $((base + 1))
sleep 0.5

cat >"$work/config.json" <<JSON
{
  "servers": [
    {"host": "127.0.0.1", "port": $((base + 1))},
    {"host": "127.0.0.1", "port": $((base + 2))},
    {"host": "127.0.0.1", "port": $((base + 3))}
  ],
  "listen_port": $base, "bind_address": "127.0.0.1", "mode": "$mode", "check_period": 1000
}
JSON
echo "redis-proxy ($runtime) on 127.0.0.1:$base, master 127.0.0.1:$((base + 1)), replicas $((base + 2)) and $((base + 3)); Ctrl-C to stop"
RUST_LOG=${RUST_LOG:-info} "target/release/$binary" "$work/config.json" &
pids+=($!)
wait "${pids[-1]}"
