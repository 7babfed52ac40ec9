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
# BASE_PORT=7600 (ports +0..+2 servers, +10..+12 sentinels); refuses to run when one is taken. The servers and
# sentinels are started with bench/lib.sh (start_redis, start_replica, start_sentinel: the configuration of
# tests/src/sentinel.rs, with this down-after-milliseconds) and stopped by PID.
set -euo pipefail
export LC_ALL=C
down_after=${1:-1000}
rounds=${2:-20}
base=${BASE_PORT:-7600}
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
install_if_missing redis-server redis-cli:redis-tools
master=$base
sentinels=($((base + 10)) $((base + 11)) $((base + 12)))
PORT_TAKEN_STATUS=2
port_free_or_die "$master" $((base + 1)) $((base + 2)) "${sentinels[@]}"
BENCH_WORK=$(mktemp -d /tmp/sentinel-refailover.XXXXXX) BENCH_WORK_REMOVE=1

named() { cli "$1" sentinel get-master-addr-by-name mymaster 2>/dev/null | tail -1; }
# Each sentinel knows the two others and both replicas (from the master's INFO, taken every 10 s), and both
# replicas are in sync: else Sentinel finds no replica to promote.
ready() {
    local s
    [ "$(cli "$master" info replication 2>/dev/null | grep -c 'state=online')" = 2 ] || return 1
    for s in "${sentinels[@]}"; do
        [ "$(cli "$s" sentinel sentinels mymaster 2>/dev/null | grep -c '^name$')" = 2 ] || return 1
        [ "$(cli "$s" sentinel replicas mymaster 2>/dev/null | grep -c '^name$')" = 2 ] || return 1
    done
}
all_switched() {
    local a b c
    a=$(named "${sentinels[0]}") b=$(named "${sentinels[1]}") c=$(named "${sentinels[2]}")
    [ -n "$a" ] && [ "$a" != "$master" ] && [ "$a" = "$b" ] && [ "$b" = "$c" ]
}
spurious=0
again=0
for round in $(seq "$rounds"); do
    start_redis "$master"
    master_pid=$LAST_PID
    start_replica $((base + 1)) "$master"
    start_replica $((base + 2)) "$master"
    for s in "${sentinels[@]}"; do start_sentinel "$s" "$master" "$down_after"; done
    wait_for 30 ready || { log "round $round: the sentinels did not find each other and the replicas"; exit 1; }
    sleep "0.$((RANDOM % 10))"
    stop_pid "$master_pid" KILL
    if ! wait_for 30 all_switched; then
        log "round $round: the sentinels did not agree on a new master within 30 s; their logs:"
        for s in "${sentinels[@]}"; do tail -n 30 "$(sentinel_log "$s")" >&2; done
        exit 1
    fi
    new=$(named "${sentinels[0]}")
    start_redis "$master"
    sleep $((down_after / 1000 + 6))
    for s in "${sentinels[@]}"; do
        if grep -q "+sdown master mymaster 127.0.0.1 $new\$" "$(sentinel_log "$s")"; then
            spurious=$((spurious + 1))
            echo "round $round: sentinel :$s counted the new master :$new down"
            grep -E '(\+|-)sdown master|switch-master' "$(sentinel_log "$s")" | sed 's/^/    /'
        fi
    done
    if grep -qh "+switch-master mymaster 127.0.0.1 $new " "$BENCH_WORK"/sentinel-*/sentinel.log; then
        again=$((again + 1))
        echo "round $round: Sentinel failed over again, from :$new"
    fi
    stop_all KILL
done
echo "down-after-milliseconds $down_after: $rounds rounds, $spurious sentinel(s) counted the new master down," \
    "$again round(s) failed over again"
