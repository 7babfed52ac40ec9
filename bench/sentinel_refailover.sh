#!/usr/bin/env bash
# bench/sentinel_refailover.sh - how often Sentinel itself counts the master it has just promoted as down, and
# fails over again, at a given down-after-milliseconds. No proxy: three sentinels (quorum 2) watch a master and two
# replicas on 127.0.0.1; each round SIGKILLs the master, restarts it once all three sentinels name the new one (as
# the Sentinel end-to-end test does), and reads the sentinels' logs.
#
# Usage:  bench/sentinel_refailover.sh [DOWN_AFTER_MS] [ROUNDS]     # defaults: 1000 ms, 20 rounds (about 30 s each)
#
# Why: with 1000 ms the test saw `+sdown` of the new master 1.00-1.03 s after `+switch-master` (Sentinel reconnects
# a link at most once a second, and a master reset to its new address keeps the link's last reconnect time; the
# other sentinels' answers that the old master was down still count for 5 s, so one such sentinel fails over again).
# BASE_PORT=7600 (ports +0..+2 servers, +10..+12 sentinels); refuses to run when one is taken.
set -euo pipefail
export LC_ALL=C
down_after=${1:-1000}
rounds=${2:-20}
base=${BASE_PORT:-7600}
command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install redis-server" >&2; exit 2; }
ports=("$base" $((base + 1)) $((base + 2)) $((base + 10)) $((base + 11)) $((base + 12)))
for port in "${ports[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "port $port is taken" >&2; exit 2; fi
done
work=$(mktemp -d /tmp/sentinel-refailover.XXXXXX)
pids=()
stop_all() {
    [ ${#pids[@]} -gt 0 ] && kill -9 "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT
master=$base
server() { # port [replicaof args]
    redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no --daemonize no --loglevel warning \
        --dir "$work" --repl-diskless-sync-delay 0 "${@:2}" >/dev/null 2>&1 &
    pids+=($!)
}
named() { redis-cli -p "$1" sentinel get-master-addr-by-name mymaster 2>/dev/null | tail -1; }
# Waits up to $1 tenths of a second for the command after it to succeed.
wait_for() {
    local tenths=$1
    shift
    for _ in $(seq "$tenths"); do "$@" && return 0; sleep 0.1; done
    return 1
}
# Each sentinel knows the two others and both replicas (from the master's INFO, taken every 10 s), and both
# replicas are in sync: else Sentinel finds no replica to promote.
ready() {
    local s
    [ "$(redis-cli -p "$master" info replication 2>/dev/null | grep -c 'state=online')" = 2 ] || return 1
    for s in 10 11 12; do
        [ "$(redis-cli -p $((base + s)) sentinel sentinels mymaster 2>/dev/null | grep -c '^name$')" = 2 ] || return 1
        [ "$(redis-cli -p $((base + s)) sentinel replicas mymaster 2>/dev/null | grep -c '^name$')" = 2 ] || return 1
    done
}
all_switched() {
    local a b c
    a=$(named $((base + 10))) b=$(named $((base + 11))) c=$(named $((base + 12)))
    [ -n "$a" ] && [ "$a" != "$master" ] && [ "$a" = "$b" ] && [ "$b" = "$c" ]
}
spurious=0
again=0
for round in $(seq "$rounds"); do
    server "$master"
    master_pid=${pids[0]}
    server $((base + 1)) --replicaof 127.0.0.1 "$master"
    server $((base + 2)) --replicaof 127.0.0.1 "$master"
    for s in 10 11 12; do
        dir=$work/sentinel-$s
        rm -rf "$dir" && mkdir -p "$dir"
        printf 'port %s\nbind 127.0.0.1\ndaemonize no\nlogfile %s/log\ndir %s\nsentinel resolve-hostnames yes\n' \
            $((base + s)) "$dir" "$dir" >"$dir/conf"
        printf 'sentinel monitor mymaster 127.0.0.1 %s 2\nsentinel down-after-milliseconds mymaster %s\n' \
            "$master" "$down_after" >>"$dir/conf"
        printf 'sentinel failover-timeout mymaster 5000\nsentinel parallel-syncs mymaster 2\n' >>"$dir/conf"
        redis-server "$dir/conf" --sentinel >/dev/null 2>&1 &
        pids+=($!)
    done
    wait_for 300 ready || { echo "round $round: the sentinels did not find each other and the replicas" >&2; exit 1; }
    sleep "0.$((RANDOM % 10))"
    kill -9 "$master_pid"
    wait "$master_pid" 2>/dev/null || true
    if ! wait_for 300 all_switched; then
        echo "round $round: the sentinels did not agree on a new master within 30 s; their logs:" >&2
        tail -n 30 "$work"/sentinel-*/log >&2
        exit 1
    fi
    new=$(named $((base + 10)))
    server "$master"
    sleep $((down_after / 1000 + 6))
    for s in 10 11 12; do
        log=$work/sentinel-$s/log
        if grep -q "+sdown master mymaster 127.0.0.1 $new\$" "$log"; then
            spurious=$((spurious + 1))
            echo "round $round: sentinel :$((base + s)) counted the new master :$new down"
            grep -E '(\+|-)sdown master|switch-master' "$log" | sed 's/^/    /'
        fi
    done
    if grep -qh "+switch-master mymaster 127.0.0.1 $new " "$work"/sentinel-*/log; then
        again=$((again + 1))
        echo "round $round: Sentinel failed over again, from :$new"
    fi
    stop_all
done
echo "down-after-milliseconds $down_after: $rounds rounds, $spurious sentinel(s) counted the new master down," \
    "$again round(s) failed over again"
