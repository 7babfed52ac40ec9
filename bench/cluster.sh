#!/usr/bin/env bash
# bench/cluster.sh - redis-proxy in cluster mode against redis-benchmark --cluster, on one Redis Cluster of
# 3 primaries and 3 replicas, interleaved, over loopback. The goal: the proxy at least 0.8 of --cluster.
#
# Usage:  bench/cluster.sh                  # REPS=3 N=100000: about 2 minutes
#         REPS=1 N=50000 bench/cluster.sh   # a quick look
#         DIRECT_ONLY=1 bench/cluster.sh    # the cluster alone, no proxy (to check the set-up)
#
# What it does:
#   1. cargo build --release --bins (SKIP_BUILD=1 to skip);
#   2. starts, on 127.0.0.1 (refusing to run if a port is taken):
#        6 redis-servers :BASE_PORT+1..+6, cluster bus :BASE_PORT+101..+106, --cluster-enabled yes, no
#        persistence, joined with `redis-cli --cluster create --cluster-replicas 1` (3 primaries, 3 replicas);
#        ready when every node says cluster_state:ok and every replica's link is up
#        redis-proxy :BASE_PORT+10, the mio runtime, "cluster": {"seeds": [the 6 nodes], "refresh_period": 5000}
#        and, to compare the proxy's CPU per request with standalone mode, a plain redis-server :BASE_PORT+7 with
#        redis-proxy :BASE_PORT+11 in front of it ("servers": [that one]); and a one-node cluster :BASE_PORT+8 (bus
#        :BASE_PORT+108, every slot added with CLUSTER ADDSLOTSRANGE) with redis-proxy :BASE_PORT+12 in front of it,
#        in cluster mode: the cluster path's own cost, without the fan-out to three primaries
#      with redis-benchmark on CPU CLI_CPU (0) and every server and the proxy on CPU SRV_CPU (1) (PIN=none: no
#      pinning), as bench/run.sh does, so the proxy's CPU cost shows up as lost throughput;
#   3. runs, targets interleaved (direct proxy direct proxy ...) over REPS repetitions, keys random over
#      RANDOM_KEYS (-r) so that they spread over the slots:
#        c50_P1    -t set,get -c 50 -P 1
#        c50_P16   -t set,get -c 50 -P 16
#      direct = `redis-benchmark --cluster` against the cluster (it learns the slots and sends each client's keys
#      to their node); proxy = plain redis-benchmark against the proxy; standalone = the same against the
#      standalone proxy; onenode = the same against the one-node cluster's proxy;
#   4. prints the median requests/s of each, the median over repetitions of proxy/direct in the same repetition,
#      the proxy's CPU per request (utime+stime from /proc/PID/stat over its runs) in cluster mode and in
#      standalone mode, and their ratio (the goal: at most 1.10); and the one-node cluster's, and its ratio;
#   5. sends MGET_ROUNDS (20) MGETs of 100 random keys through the proxy and prints how many reads each primary
#      made to serve one (`total_reads_processed`, bench/mget_reads.py): 1 means the proxy wrote each primary's
#      parts (one MGET per slot) in one write.
#
#   With SYSCALLS=1 (needs `perf` and tracepoint access: root, or kernel.perf_event_paranoid <= -1), the system
#   calls each proxy made per request in its runs are counted too (`perf stat` on its write, read and poll calls).
#
# Knobs (environment): REPS=3 N=100000 RANDOM_KEYS=100000 BASE_PORT=7600 PIN=split|none CLI_CPU=0 SRV_CPU=1
#   NODE_TIMEOUT=5000 (cluster-node-timeout, ms: long enough that a busy node is not failed over mid-run)
#   RUN_TIMEOUT=60 BUDGET=300 (seconds of measurement, then the rest is skipped) SKIP_BUILD=0 DIRECT_ONLY=0
#   PROXY_BIN (default: target/release/redis-proxy, or under CARGO_TARGET_DIR) WORKDIR (default: a new
#   /tmp/redis-proxy-cluster-bench.XXXXXX, kept: logs, configs, raw CSV).
#
# Installs redis-server and redis-tools with apt-get when missing and run as root. Everything is started with
# bench/lib.sh: it binds to 127.0.0.1, and every process started here is stopped at exit, by PID.
set -euo pipefail
export LC_ALL=C

REPS=${REPS:-3}
N=${N:-100000}
RANDOM_KEYS=${RANDOM_KEYS:-100000}
BASE_PORT=${BASE_PORT:-7600}
PIN=${PIN:-split}
CLI_CPU=${CLI_CPU:-0}
SRV_CPU=${SRV_CPU:-1}
NODE_TIMEOUT=${NODE_TIMEOUT:-5000}
RUN_TIMEOUT=${RUN_TIMEOUT:-60}
BUDGET=${BUDGET:-300}
SKIP_BUILD=${SKIP_BUILD:-0}
DIRECT_ONLY=${DIRECT_ONLY:-0}
SYSCALLS=${SYSCALLS:-0}
for knob in REPS N RANDOM_KEYS BASE_PORT NODE_TIMEOUT RUN_TIMEOUT BUDGET; do
    [[ ${!knob} =~ ^[0-9]+$ ]] && [ "${!knob}" -gt 0 ] || { echo "$knob must be a positive number" >&2; exit 2; }
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
T0=$SECONDS
log() { printf '[%4ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }

install_if_missing redis-server redis-benchmark:redis-tools redis-cli:redis-tools taskset:util-linux timeout:coreutils
SYSCALL_EVENTS=syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait
if [ "$SYSCALLS" = 1 ]; then
    command -v perf >/dev/null || die "SYSCALLS=1 needs perf (apt-get install linux-perf)"
    perf stat -e "$SYSCALL_EVENTS" true >/dev/null 2>&1 || die "SYSCALLS=1: perf cannot count system calls here"
fi

# ---------------------------------------------------------------- build
PROXY_BIN=${PROXY_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/redis-proxy}
if [ "$DIRECT_ONLY" != 1 ]; then
    if [ "$SKIP_BUILD" != 1 ]; then
        log "cargo build --release --bins"
        (cd "$ROOT" && cargo build --release --bins --quiet) || die "build failed"
    fi
    [ -x "$PROXY_BIN" ] || die "$PROXY_BIN not built"
fi

# ---------------------------------------------------------------- arrangement
if [ "$PIN" = split ] && [ "$(nproc)" -ge 2 ]; then
    CLI_PIN=(taskset -c "$CLI_CPU"); SRV_PIN=(taskset -c "$SRV_CPU")
    ARRANGEMENT="redis-benchmark on CPU $CLI_CPU; the 6 nodes and the proxy on CPU $SRV_CPU"
else
    PIN=none; CLI_PIN=(); SRV_PIN=()
    ARRANGEMENT="no pinning ($(nproc) CPUs)"
fi
ulimit -n 16384 2>/dev/null || ulimit -n 4096 2>/dev/null || true
HZ=$(getconf CLK_TCK)
W=${WORKDIR:-$(mktemp -d /tmp/redis-proxy-cluster-bench.XXXXXX)}
mkdir -p "$W/raw"
BENCH_WORK=$W
bench_on_exit() { ((BENCH_STOPPED)) && log "stopped the $BENCH_STOPPED processes started here; logs and raw CSV in $W"; }

NODES=() BUSES=()
for i in 1 2 3 4 5 6; do NODES+=($((BASE_PORT + i))); BUSES+=($((BASE_PORT + 100 + i))); done
P_PROXY=$((BASE_PORT + 10)) P_SOLO=$((BASE_PORT + 7)) P_SOLO_PROXY=$((BASE_PORT + 11))
P_ONE=$((BASE_PORT + 8)) P_ONE_BUS=$((BASE_PORT + 108)) P_ONE_PROXY=$((BASE_PORT + 12))
PORT_HINT="set BASE_PORT to move every port"
port_free_or_die "${NODES[@]}" "${BUSES[@]}" "$P_PROXY" "$P_SOLO" "$P_SOLO_PROXY" "$P_ONE" "$P_ONE_BUS" "$P_ONE_PROXY"

# ---------------------------------------------------------------- the cluster
ticks() { # utime+stime of a process, in clock ticks
    local stat fields
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo NA; return; }
    read -ra fields <<<"${stat##*) }"
    echo $((fields[11] + fields[12]))
}
started_at=$(date +%s%N)
for i in "${!NODES[@]}"; do
    start_redis "${NODES[i]}" --cluster-enabled yes --cluster-config-file "$W/nodes-${NODES[i]}.conf" \
        --cluster-port "${BUSES[i]}" --cluster-node-timeout "$NODE_TIMEOUT"
done
addresses=()
for port in "${NODES[@]}"; do addresses+=("127.0.0.1:$port"); done
timeout 60 redis-cli --cluster create "${addresses[@]}" --cluster-replicas 1 --cluster-yes >"$W/create.log" 2>&1 ||
    die "redis-cli --cluster create failed (see $W/create.log)"
cluster_ready() { # every node: cluster_state:ok; every replica: master_link_status:up
    local port info
    for port in "${NODES[@]}"; do
        cli "$port" cluster info | grep -q '^cluster_state:ok' || return 1
        info=$(cli "$port" info replication)
        if grep -q '^role:slave' <<<"$info"; then grep -q '^master_link_status:up' <<<"$info" || return 1; fi
    done
}
wait_for 30 cluster_ready || die "the cluster was not ready within 30 s (see $W/create.log and $W/redis-*.log)"
PRIMARIES=()
for port in "${NODES[@]}"; do
    cli "$port" info replication | grep -q '^role:master' && PRIMARIES+=("$port")
done
[ "${#PRIMARIES[@]}" = 3 ] || die "expected 3 primaries, found ${PRIMARIES[*]}"
log "cluster ready in $((($(date +%s%N) - started_at) / 1000000)) ms: primaries ${PRIMARIES[*]}, nodes ${NODES[*]}"

TARGETS="direct:${PRIMARIES[0]}:"
if [ "$DIRECT_ONLY" != 1 ]; then
    cluster_config() { # FILE LISTEN_PORT: the proxy in front of the 6 nodes, in cluster mode
        local seeds=() port
        for port in "${NODES[@]}"; do seeds+=("{\"host\": \"127.0.0.1\", \"port\": $port}"); done
        local IFS=,
        printf '{ "cluster": {"seeds": [%s], "refresh_period": 5000}, "listen_port": %s, "bind_address": "127.0.0.1" }\n' \
            "${seeds[*]}" "$2" >"$1"
    }
    cluster_config "$W/redis-proxy.json" "$P_PROXY"
    start_proxy "$PROXY_BIN" "$W/redis-proxy.json" "$P_PROXY"
    PROXY_PID=$LAST_PID
    log "redis-proxy :$P_PROXY (pid $PROXY_PID), cluster mode"
    TARGETS+=" proxy:$P_PROXY:$PROXY_PID"
    start_redis "$P_SOLO"
    printf '{ "servers": [{"host": "127.0.0.1", "port": %s}], "listen_port": %s, "bind_address": "127.0.0.1" }\n' \
        "$P_SOLO" "$P_SOLO_PROXY" >"$W/redis-proxy-standalone.json"
    start_proxy "$PROXY_BIN" "$W/redis-proxy-standalone.json" "$P_SOLO_PROXY"
    log "redis-proxy :$P_SOLO_PROXY (pid $LAST_PID), standalone mode in front of :$P_SOLO"
    TARGETS+=" standalone:$P_SOLO_PROXY:$LAST_PID"
    # A cluster of one node holding every slot: the proxy's cluster path without the fan-out to three primaries
    # (its cost beside standalone mode is the engine's; the rest of cluster/solo is the topology's).
    start_redis "$P_ONE" --cluster-enabled yes --cluster-config-file "$W/nodes-$P_ONE.conf" --cluster-port "$P_ONE_BUS"
    cli "$P_ONE" cluster addslotsrange 0 16383 >/dev/null || die "CLUSTER ADDSLOTSRANGE on :$P_ONE failed"
    one_ready() { cli "$P_ONE" cluster info | grep -q '^cluster_state:ok'; }
    wait_for 30 one_ready || die "the one-node cluster :$P_ONE was not ready within 30 s"
    printf '{ "cluster": {"seeds": [{"host": "127.0.0.1", "port": %s}]}, "listen_port": %s, "bind_address": "127.0.0.1" }\n' \
        "$P_ONE" "$P_ONE_PROXY" >"$W/redis-proxy-one-node.json"
    start_proxy "$PROXY_BIN" "$W/redis-proxy-one-node.json" "$P_ONE_PROXY"
    log "redis-proxy :$P_ONE_PROXY (pid $LAST_PID), cluster mode in front of the one-node cluster :$P_ONE"
    TARGETS+=" onenode:$P_ONE_PROXY:$LAST_PID"
fi

# ---------------------------------------------------------------- runs
bench() { # out label port args...
    local out=$1 label=$2 port=$3; shift 3
    local mode=()
    [ "$label" = direct ] && mode=(--cluster)
    timeout "$RUN_TIMEOUT" "${CLI_PIN[@]}" redis-benchmark "${mode[@]}" -h 127.0.0.1 -p "$port" "$@" --csv \
        >"$out" 2>"$out.err"
}
log "warm-up"
for target in $TARGETS; do
    IFS=: read -r label port _ <<<"$target"
    bench "$W/raw/warmup_$label.csv" "$label" "$port" -t set,get -n 20000 -c 50 -r "$RANDOM_KEYS" ||
        log "warm-up of $label failed (see $W/raw/warmup_$label.csv.err)"
done

WORKLOADS=("c50_P1|-t set,get -c 50 -P 1" "c50_P16|-t set,get -c 50 -P 16")
RESULTS=$W/results.tsv
printf 'rep\tworkload\ttarget\ttest\trps\tproxy_us\tsyscalls\twrites\n' >"$RESULTS"
MEAS_T0=$SECONDS skipped=0 failed=0
for rep in $(seq "$REPS"); do
    for workload in "${WORKLOADS[@]}"; do
        IFS='|' read -r name args <<<"$workload"
        read -ra bench_args <<<"$args"
        for target in $TARGETS; do
            IFS=: read -r label port pid <<<"$target"
            if ((SECONDS - MEAS_T0 > BUDGET)); then skipped=$((skipped + 1)); continue; fi
            out=$W/raw/r${rep}_${name}_${label}.csv
            t0=NA
            [ -n "$pid" ] && t0=$(ticks "$pid")
            perf_pid=
            if [ "$SYSCALLS" = 1 ] && [ -n "$pid" ]; then
                perf stat -x, -e "$SYSCALL_EVENTS" -p "$pid" -o "$out.perf" &
                perf_pid=$!
            fi
            rc=0
            bench "$out" "$label" "$port" -n "$N" -r "$RANDOM_KEYS" "${bench_args[@]}" || rc=$?
            calls="NA NA"
            if [ -n "$perf_pid" ]; then # system calls per request, all and writes, SET and GET runs together
                kill -INT "$perf_pid" 2>/dev/null || true
                wait "$perf_pid" 2>/dev/null || true
                calls=$(awk -F, -v n=$((2 * N)) '$3 ~ /syscalls/ { all += $1 } $3 ~ /writev|sendto/ { writes += $1 }
                    END { if (all > 0) printf "%.3f %.3f", all / n, writes / n; else print "NA NA" }' "$out.perf")
            fi
            us=NA
            if [ -n "$pid" ] && [ "$t0" != NA ]; then
                t1=$(ticks "$pid")
                if [ "$t1" != NA ]; then # CPU per request, SET and GET runs together
                    us=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v n=$((2 * N)) 'BEGIN { printf "%.2f", 1e6 * t / hz / n }')
                fi
            fi
            # A run that failed, printed no GET line, or met an error reply does not count.
            if [ "$rc" != 0 ] || ! grep -q '^"GET"' "$out" || grep -qi 'error' "$out.err"; then
                failed=$((failed + 1))
                log "rep $rep $name $label failed (rc $rc; see $out and $out.err)"
                continue
            fi
            # redis-benchmark 7 --csv: "test","rps","avg_latency_ms",...
            tr -d '"\r' <"$out" | awk -F, -v rep="$rep" -v w="$name" -v t="$label" -v us="$us" -v calls="${calls% *}" \
                -v writes="${calls#* }" '
                $1 == "test" { for (k = 1; k <= NF; k++) col[$k] = k; next }
                $1 == "SET" || $1 == "GET" {
                    printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", rep, w, t, $1, $(col["rps"]), us, calls, writes }' \
                >>"$RESULTS"
        done
    done
    log "repetition $rep/$REPS done"
done
((skipped)) && log "WARNING: BUDGET=${BUDGET}s exceeded: $skipped runs skipped"
MGET_READS=
if [ "$DIRECT_ONLY" != 1 ]; then
    MGET_READS=$(python3 "$ROOT/bench/mget_reads.py" "$P_PROXY" "${MGET_ROUNDS:-20}" "${PRIMARIES[@]}") ||
        log "the MGET read count failed"
fi

# ---------------------------------------------------------------- report
{
echo "== redis-proxy cluster-mode benchmark  $(date -u +%Y-%m-%dT%H:%MZ)  commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "   $(nproc) CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), Linux $(uname -r)"
echo "   $(redis-server --version | cut -d' ' -f1-3), $(redis-benchmark --version | head -1); 3 primaries + 3 replicas"
echo "   $ARRANGEMENT; reps=$REPS (interleaved), n=$N, -r $RANDOM_KEYS; loopback"
echo
awk -F'\t' -v reps="$REPS" '
function med(s,   a, n, i, j, t) {
    n = split(s, a, " "); if (n == 0) return ""
    for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j > 0 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
NR == 1 { next }
{
    k = $2 SUBSEP $4
    if (!(k in seen)) { seen[k] = 1; order[++no] = k }
    RPS[k, $3] = RPS[k, $3] " " $5; BY[$1, $2, $3, $4] = $5
    if ($6 != "NA") US[k, $3] = US[k, $3] " " $6
    if ($7 != "NA") CALLS[k, $3] = CALLS[k, $3] " " $7
    if ($8 != "NA") WRITES[k, $3] = WRITES[k, $3] " " $8
}
END {
    printf "%-8s %-4s %12s %12s %13s %9s %13s %12s %12s %9s\n", "workload", "test", "direct req/s", "proxy req/s",
        "proxy/direct", "proxy us", "standalone us", "cluster/solo", "one-node us", "one/solo"
    for (i = 1; i <= no; i++) {
        split(order[i], f, SUBSEP); w = f[1]; test = f[2]
        ratios = ""
        for (r = 1; r <= reps; r++)
            if ((r, w, "proxy", test) in BY && (r, w, "direct", test) in BY && BY[r, w, "direct", test] > 0)
                ratios = ratios " " BY[r, w, "proxy", test] / BY[r, w, "direct", test]
        d = med(RPS[order[i], "direct"]); p = med(RPS[order[i], "proxy"]); q = med(ratios)
        u = med(US[order[i], "proxy"]); s = med(US[order[i], "standalone"]); o = med(US[order[i], "onenode"])
        printf "%-8s %-4s %12s %12s %13s %9s %13s %12s %12s %9s\n", w, test, (d == "") ? "-" : sprintf("%.0f", d),
            (p == "") ? "-" : sprintf("%.0f", p), (q == "") ? "-" : sprintf("%.2f", q),
            (u == "") ? "-" : sprintf("%.2f", u), (s == "") ? "-" : sprintf("%.2f", s),
            (u == "" || s == "" || s == 0) ? "-" : sprintf("%.2f", u / s),
            (o == "") ? "-" : sprintf("%.2f", o), (o == "" || s == "" || s == 0) ? "-" : sprintf("%.2f", o / s)
    }
    for (i = 1; i <= no; i++) {
        c = med(CALLS[order[i], "proxy"]); split(order[i], f, SUBSEP)
        if (c == "" || f[2] != "GET") continue
        if (!said++) printf "\nproxy system calls per request (writev, send, recv, epoll_wait; SET and GET runs together), median, all (writes):\n"
        printf "  %-8s  cluster %.3f (%.3f)  standalone %.3f (%.3f)  one-node %.3f (%.3f)\n", f[1],
            c, med(WRITES[order[i], "proxy"]), med(CALLS[order[i], "standalone"]), med(WRITES[order[i], "standalone"]),
            med(CALLS[order[i], "onenode"]), med(WRITES[order[i], "onenode"])
    }
}' "$RESULTS"
echo
echo "   direct = redis-benchmark --cluster against the nodes; proxy = redis-benchmark against redis-proxy (mio)."
echo "   proxy/direct = median over repetitions of the ratio in the same repetition (the goal: >= 0.8)."
echo "   proxy us = proxy process CPU (user+system, 1/${HZ} s ticks) per request (SET and GET runs together), median;"
echo "   standalone us = the same for the standalone proxy in front of one plain redis-server; cluster/solo = their"
echo "   ratio (the goal: <= 1.10); one-node us = the proxy in cluster mode in front of a cluster of one node that"
echo "   holds every slot: its cluster path without the fan-out to three primaries; one/solo = its ratio to standalone."
if [ -n "$MGET_READS" ]; then
    echo
    echo "   MGET of 100 random keys through the proxy, ${MGET_ROUNDS:-20} rounds: reads per primary to serve one"
    echo "   (total_reads_processed; 1 = the primary's parts came in one write), median and largest:"
    while read -r port median largest; do echo "     :$port  median $median  largest $largest"; done <<<"$MGET_READS"
fi
echo "   failed runs: $failed; skipped over budget: $skipped; measurement $((SECONDS - MEAS_T0)) s; raw: $W/raw/"
} | tee "$W/report.txt"
((failed == 0)) || exit 1
