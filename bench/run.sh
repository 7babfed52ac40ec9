#!/usr/bin/env bash
# bench/run.sh - the project's benchmark: redis-benchmark against direct Redis, twemproxy, redis-proxy and
# (when built) redis-proxy-tokio, interleaved, on one machine, over loopback.
#
# Usage:  bench/run.sh                      # REPS=3 N=200000: about 4 minutes
#         REPS=1 N=50000 bench/run.sh       # a quick look
#
# What it does:
#   1. cargo build --release --bins (SKIP_BUILD=1 to skip);
#   2. starts, on 127.0.0.1 ports BASE_PORT+1.. (refusing to run if one is taken):
#        redis master :+1, replicas :+2 :+3          redis-server, no persistence
#        twemproxy    :+11 (stats :+21)              nutcracker, one pool -> master
#        redis-proxy  :+12  allToMaster              target/release/redis-proxy, 3 servers
#        redis-proxy-tokio :+13 allToMaster          only if target/release/redis-proxy-tokio exists
#        redis-proxy  :+14  readsToSlaves            target/release/redis-proxy, 3 servers
#        baseline     :+19  allToMaster              only with BASELINE_BIN=another build of redis-proxy, beside
#                                                    this one in the c50_*, c500_P1, d100k and d1m workloads
#        redis-server :+4 TLS only (certificates made with openssl in WORKDIR/tls); redis-proxy :+15 (TLS
#        listener :+16) and redis-proxy-tokio :+17 (TLS :+18) with server_tls to it
#      with redis-benchmark on CPU CLI_CPU (0) and every server and proxy on CPU SRV_CPU (1) (PIN=none: no
#      pinning), so a proxy's CPU cost shows up as lost throughput next to Redis;
#   3. runs the workloads, targets interleaved (A B C A B C ...) over REPS repetitions:
#        c50_P1    -t set,get -n N       -c 50  -P 1
#        c50_P16   -t set,get -n N       -c 50  -P 16
#        c500_P1   -t set,get -n N       -c 500 -P 1
#        d100k     -t set,get -n N_LARGE -c 50  -P 1 -d 100000
#        d1m       -t set,get -n N_HUGE  -c 50  -P 1 -d 1048576   (1 MiB values: replies streamed through)
#        rts_get   -t get     -n N       -c 50  -P 1     direct, redis-proxy allToMaster, redis-proxy readsToSlaves
#        r3_P1     -3 -t set,get -n N    -c 50  -P 1     RESP3 (HELLO 3): direct and the redis-proxy runtimes
#        r3_P16    -3 -t set,get -n N    -c 50  -P 16    (twemproxy does not speak RESP3)
#        tls_P1    --tls -t set,get -n N -c 50 -P 1      TLS end to end: direct = a TLS-only redis-server
#        tls_P16   --tls -t set,get -n N -c 50 -P 16     (:+4); the proxies' TLS listeners in front of it,
#                                                        with server_tls to it (:+16, tokio :+18)
#   4. prints medians: requests/s, ratio to direct in the same repetition (median of the per-repetition
#      ratios), p50/p99 latency (redis-benchmark --csv), and each proxy's CPU per request (utime+stime delta
#      of its process from /proc/PID/stat over the run, divided by the requests of the run).
#
# Knobs (environment): REPS=3 N=200000 N_P16=$N N_LARGE=$N/20 N_HUGE=$N_LARGE/10 BASE_PORT=7400 PIN=split|none
#   CLI_CPU=0 SRV_CPU=1 RUN_TIMEOUT=60 BUDGET=900 (seconds of measurement, then the rest is skipped) SKIP_BUILD=0
#   FOREIGN_MAX=15 (% of a core used by other processes during a run before it is re-run once) WORKDIR
#   (default: a new /tmp/redis-proxy-bench.XXXXXX, kept: logs, configs, raw CSV) ONLY (a regular expression:
#   run only the workloads whose name matches, e.g. ONLY='^(c50_P1|c50_P16|tls_)'). BASELINE_BIN (an older build of
#   redis-proxy: a ratio to direct measured on another day is no baseline, that build's in the same run is).
#
# Installs redis-server, redis-tools and nutcracker with apt-get when missing and run as root.
# Servers and proxies are started with bench/lib.sh: everything binds to 127.0.0.1; every process started here is
# stopped at exit, by PID.
set -euo pipefail
export LC_ALL=C

REPS=${REPS:-3}
N=${N:-200000}
N_P16=${N_P16:-$N}
N_LARGE=${N_LARGE:-$(( N / 20 > 500 ? N / 20 : 500 ))}
N_HUGE=${N_HUGE:-$(( N_LARGE / 10 > 100 ? N_LARGE / 10 : 100 ))}
BASE_PORT=${BASE_PORT:-7400}
PIN=${PIN:-split}
CLI_CPU=${CLI_CPU:-0}
SRV_CPU=${SRV_CPU:-1}
RUN_TIMEOUT=${RUN_TIMEOUT:-60}
BUDGET=${BUDGET:-900}
SKIP_BUILD=${SKIP_BUILD:-0}
ONLY=${ONLY:-}
BASELINE_BIN=${BASELINE_BIN:-}
FOREIGN_MAX=${FOREIGN_MAX:-15}
for knob in REPS N N_P16 N_LARGE N_HUGE BASE_PORT RUN_TIMEOUT BUDGET FOREIGN_MAX; do
    [[ ${!knob} =~ ^[0-9]+$ ]] && [ "${!knob}" -gt 0 ] || { echo "$knob must be a positive number" >&2; exit 2; }
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
T0=$SECONDS
log() { printf '[%4ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }

# ---------------------------------------------------------------- packages
install_if_missing redis-server redis-benchmark:redis-tools redis-cli:redis-tools nutcracker taskset:util-linux \
    timeout:coreutils openssl

# ---------------------------------------------------------------- build
if [ "$SKIP_BUILD" != 1 ]; then
    log "cargo build --release --bins"
    (cd "$ROOT" && cargo build --release --bins --quiet) || die "build failed"
fi
PROXY_BIN=$ROOT/target/release/redis-proxy
TOKIO_BIN=$ROOT/target/release/redis-proxy-tokio
[ -x "$PROXY_BIN" ] || die "$PROXY_BIN not built"
[ -z "$BASELINE_BIN" ] || [ -x "$BASELINE_BIN" ] || die "BASELINE_BIN=$BASELINE_BIN is not an executable"

# ---------------------------------------------------------------- arrangement
if [ "$PIN" = split ] && [ "$(nproc)" -ge 2 ]; then
    CLI_PIN=(taskset -c "$CLI_CPU"); SRV_PIN=(taskset -c "$SRV_CPU")
    ARRANGEMENT="redis-benchmark on CPU $CLI_CPU; redis x3 and proxies on CPU $SRV_CPU"
else
    PIN=none; CLI_PIN=(); SRV_PIN=()
    ARRANGEMENT="no pinning ($(nproc) CPUs)"
fi
ulimit -n 16384 2>/dev/null || ulimit -n 4096 2>/dev/null || true
HZ=$(getconf CLK_TCK)
W=${WORKDIR:-$(mktemp -d /tmp/redis-proxy-bench.XXXXXX)}
mkdir -p "$W/raw"
BENCH_WORK=$W

P_MASTER=$((BASE_PORT + 1)) P_R1=$((BASE_PORT + 2)) P_R2=$((BASE_PORT + 3))
P_TWEM=$((BASE_PORT + 11)) P_TWEM_STATS=$((BASE_PORT + 21))
P_PROXY=$((BASE_PORT + 12)) P_TOKIO=$((BASE_PORT + 13)) P_RTS=$((BASE_PORT + 14)) P_BASELINE=$((BASE_PORT + 19))
P_TLS_REDIS=$((BASE_PORT + 4)) P_TLS_PROXY=$((BASE_PORT + 15)) P_TLS_PROXY_TLS=$((BASE_PORT + 16))
P_TLS_TOKIO=$((BASE_PORT + 17)) P_TLS_TOKIO_TLS=$((BASE_PORT + 18))

# ---------------------------------------------------------------- helpers (the others are in bench/lib.sh)
ticks() { # utime+stime of a process, in clock ticks
    local stat fields
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo NA; return; }
    read -ra fields <<<"${stat##*) }"
    echo $((fields[11] + fields[12]))
}
busy_jiffies() { # machine-wide user+nice+system+irq+softirq jiffies
    local cpu user nice system idle iowait irq softirq rest
    read -r cpu user nice system idle iowait irq softirq rest </proc/stat
    echo $((user + nice + system + irq + softirq))
}

# bench/lib.sh's EXIT trap stops them (proxies first: started last, then the replicas, then the master), then:
bench_on_exit() { ((BENCH_STOPPED)) && log "stopped the $BENCH_STOPPED processes started here; logs and raw CSV in $W"; }

# ---------------------------------------------------------------- start servers
PORT_HINT="set BASE_PORT to move every port"
port_free_or_die "$P_MASTER" "$P_R1" "$P_R2" "$P_TWEM" "$P_TWEM_STATS" "$P_PROXY" "$P_TOKIO" "$P_RTS" "$P_TLS_REDIS" \
    "$P_TLS_PROXY" "$P_TLS_PROXY_TLS" "$P_TLS_TOKIO" "$P_TLS_TOKIO_TLS" "$P_BASELINE"
start_redis "$P_MASTER"; MASTER_PID=$LAST_PID
start_replica "$P_R1" "$P_MASTER"
start_replica "$P_R2" "$P_MASTER"
log "redis master :$P_MASTER (pid $MASTER_PID), replicas :$P_R1 :$P_R2 in sync"

cat >"$W/nutcracker.yml" <<EOF
bench:
  listen: 127.0.0.1:$P_TWEM
  hash: fnv1a_64
  distribution: ketama
  redis: true
  auto_eject_hosts: false
  preconnect: true
  server_connections: 1
  timeout: 5000
  servers:
   - 127.0.0.1:$P_MASTER:1 master
EOF
nutcracker -t -c "$W/nutcracker.yml" >/dev/null 2>&1 || die "nutcracker rejects $W/nutcracker.yml"
start nutcracker nutcracker -c "$W/nutcracker.yml" -s "$P_TWEM_STATS" -a 127.0.0.1 -v 4; TWEM_PID=$LAST_PID
wait_for 10 set_ok "$P_TWEM" || die "twemproxy :$P_TWEM does not answer (see $W/nutcracker.log)"

start_mode_proxy() { # name binary port mode: a proxy in front of the three servers; sets LAST_PID
    proxy_config "$W/$1.json" "$3" "$P_MASTER $P_R1 $P_R2" "\"mode\": \"$4\", \"check_period\": 1000"
    start_proxy "$2" "$W/$1.json" "$3"
}
start_mode_proxy redis-proxy "$PROXY_BIN" "$P_PROXY" allToMaster; PROXY_PID=$LAST_PID
TOKIO_PID=
if [ -x "$TOKIO_BIN" ]; then
    start_mode_proxy redis-proxy-tokio "$TOKIO_BIN" "$P_TOKIO" allToMaster; TOKIO_PID=$LAST_PID
else
    log "no $TOKIO_BIN: redis-proxy-tokio skipped"
fi
start_mode_proxy redis-proxy-rts "$PROXY_BIN" "$P_RTS" readsToSlaves; RTS_PID=$LAST_PID
BASELINE_PID=
if [ -n "$BASELINE_BIN" ]; then
    start_mode_proxy baseline "$BASELINE_BIN" "$P_BASELINE" allToMaster; BASELINE_PID=$LAST_PID
    log "baseline $BASELINE_BIN :$P_BASELINE (pid $BASELINE_PID)"
fi
# readsToSlaves must really read from both replicas: GETs through it must show up in their command stats.
rts_spread() {
    local port
    for _ in $(seq 20); do cli "$P_RTS" get __bench_ready >/dev/null; done
    for port in "$P_R1" "$P_R2"; do cli "$port" info commandstats | grep -q '^cmdstat_get:' || return 1; done
}
wait_for 10 rts_spread || log "WARNING: readsToSlaves did not send GETs to both replicas within 10 s"
log "twemproxy :$P_TWEM (pid $TWEM_PID), redis-proxy :$P_PROXY (pid $PROXY_PID),${TOKIO_PID:+ redis-proxy-tokio :$P_TOKIO (pid $TOKIO_PID),} readsToSlaves :$P_RTS (pid $RTS_PID)"

# TLS: a CA and one certificate for 127.0.0.1 (P-256), a TLS-only redis-server, and a proxy of each runtime with
# a TLS listener in front of it and server_tls to it.
T=$W/tls
mkdir -p "$T"
{
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=bench CA" \
        -keyout "$T/ca.key" -out "$T/ca.crt" -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign &&
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$T/server.key" -out "$T/server.csr" &&
    printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' \
        >"$T/server.ext" &&
    openssl x509 -req -in "$T/server.csr" -CA "$T/ca.crt" -CAkey "$T/ca.key" -CAcreateserial -days 2 \
        -out "$T/server.crt" -extfile "$T/server.ext"
} >"$W/openssl.log" 2>&1 || die "openssl could not make the test certificates (see $W/openssl.log)"
TLS_ARGS=(--tls --cacert "$T/ca.crt")
start "redis-tls-$P_TLS_REDIS" redis-server --port 0 --tls-port "$P_TLS_REDIS" --tls-cert-file "$T/server.crt" \
    --tls-key-file "$T/server.key" --tls-ca-cert-file "$T/ca.crt" --tls-auth-clients no --bind 127.0.0.1 \
    --save '' --appendonly no --dir "$W"
TLS_REDIS_PID=$LAST_PID
tls_ping_ok() { [ "$(timeout 5 redis-cli "${TLS_ARGS[@]}" -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]; }
wait_for 10 tls_ping_ok "$P_TLS_REDIS" || die "TLS redis-server :$P_TLS_REDIS does not answer over TLS"
start_tls_proxy() { # name binary port tls_port; sets LAST_PID
    local tls="\"tls\": {\"port\": $4, \"cert_file\": \"$T/server.crt\", \"key_file\": \"$T/server.key\"}"
    proxy_config "$W/$1.json" "$3" "$P_TLS_REDIS" "$tls, \"server_tls\": {\"ca_file\": \"$T/ca.crt\"}"
    start_proxy "$2" "$W/$1.json" "$3"
    wait_for 5 tls_ping_ok "$4" || die "$1 does not answer on its TLS listener :$4 (see $W/$1.log)"
}
start_tls_proxy redis-proxy-tls "$PROXY_BIN" "$P_TLS_PROXY" "$P_TLS_PROXY_TLS"; TLS_PROXY_PID=$LAST_PID
TLS_TARGETS="direct:$P_TLS_REDIS: redis-proxy:$P_TLS_PROXY_TLS:$TLS_PROXY_PID"
if [ -n "$TOKIO_PID" ]; then
    start_tls_proxy redis-proxy-tokio-tls "$TOKIO_BIN" "$P_TLS_TOKIO" "$P_TLS_TOKIO_TLS"
    TLS_TARGETS+=" redis-proxy-tokio:$P_TLS_TOKIO_TLS:$LAST_PID"
fi
log "TLS: redis-server :$P_TLS_REDIS (pid $TLS_REDIS_PID), proxies' TLS listeners :$P_TLS_PROXY_TLS${TOKIO_PID:+ :$P_TLS_TOKIO_TLS}"

# ---------------------------------------------------------------- workloads
# name|redis-benchmark arguments|requests per test|targets (label:port:pid, space separated)
MAIN_TARGETS="direct:$P_MASTER: twemproxy:$P_TWEM:$TWEM_PID redis-proxy:$P_PROXY:$PROXY_PID"
[ -n "$TOKIO_PID" ] && MAIN_TARGETS+=" redis-proxy-tokio:$P_TOKIO:$TOKIO_PID"
[ -n "$BASELINE_PID" ] && MAIN_TARGETS+=" baseline:$P_BASELINE:$BASELINE_PID"
RTS_TARGETS="direct:$P_MASTER: redis-proxy:$P_PROXY:$PROXY_PID redis-proxy-rts:$P_RTS:$RTS_PID"
RESP3_TARGETS="direct:$P_MASTER: redis-proxy:$P_PROXY:$PROXY_PID"
[ -n "$TOKIO_PID" ] && RESP3_TARGETS+=" redis-proxy-tokio:$P_TOKIO:$TOKIO_PID"
WORKLOADS=(
    "c50_P1|-t set,get -c 50 -P 1|$N|$MAIN_TARGETS"
    "c50_P16|-t set,get -c 50 -P 16|$N_P16|$MAIN_TARGETS"
    "c500_P1|-t set,get -c 500 -P 1|$N|$MAIN_TARGETS"
    "d100k|-t set,get -c 50 -P 1 -d 100000|$N_LARGE|$MAIN_TARGETS"
    "d1m|-t set,get -c 50 -P 1 -d 1048576|$N_HUGE|$MAIN_TARGETS"
    "rts_get|-t get -c 50 -P 1|$N|$RTS_TARGETS"
    "r3_P1|-3 -t set,get -c 50 -P 1|$N|$RESP3_TARGETS"
    "r3_P16|-3 -t set,get -c 50 -P 16|$N_P16|$RESP3_TARGETS"
    "tls_P1|${TLS_ARGS[*]} -t set,get -c 50 -P 1|$N|$TLS_TARGETS"
    "tls_P16|${TLS_ARGS[*]} -t set,get -c 50 -P 16|$N_P16|$TLS_TARGETS"
)

log "warm-up"
for target in $MAIN_TARGETS "redis-proxy-rts:$P_RTS:$RTS_PID"; do
    IFS=: read -r _ port _ <<<"$target"
    timeout "$RUN_TIMEOUT" "${CLI_PIN[@]}" redis-benchmark -h 127.0.0.1 -p "$port" -t set,get -n 20000 -c 50 -q \
        >/dev/null 2>&1 || log "warm-up on :$port failed"
done

RESULTS=$W/results.tsv RUNS=$W/runs.tsv
printf 'rep\tworkload\ttarget\ttest\trps\tp50_ms\tp99_ms\n' >"$RESULTS"
printf 'rep\tworkload\ttarget\trequests\trc\twall_ms\tproxy_ticks\tforeign_ticks\n' >"$RUNS"

our_ticks() { # CPU ticks of every process started here
    local pid t sum=0
    for pid in "${STARTED[@]}"; do t=$(ticks "$pid"); [ "$t" != NA ] && sum=$((sum + t)); done
    echo "$sum"
}
child_ticks() { # CPU ticks of this script's finished children (redis-benchmark, via timeout)
    local stat fields
    stat=$(cat "/proc/$$/stat")
    read -ra fields <<<"${stat##*) }"
    echo $((fields[13] + fields[14]))
}
run_once() { # out port pid n args...: one redis-benchmark run; sets RC WALL_MS PROXY_TICKS FOREIGN
    local out=$1 port=$2 pid=$3 n=$4; shift 4
    local p0=NA p1=NA b0 o0 c0 started
    [ -n "$pid" ] && p0=$(ticks "$pid")
    b0=$(busy_jiffies); o0=$(our_ticks); c0=$(child_ticks)
    started=$(date +%s%N)
    RC=0
    timeout "$RUN_TIMEOUT" "${CLI_PIN[@]}" redis-benchmark -h 127.0.0.1 -p "$port" -n "$n" "$@" --csv \
        >"$out" 2>"$out.err" || RC=$?
    WALL_MS=$((($(date +%s%N) - started) / 1000000))
    [ -n "$pid" ] && p1=$(ticks "$pid")
    if [ "$RC" = 0 ] && ! grep -q '^"GET"' "$out"; then RC=1; fi
    PROXY_TICKS=NA
    if [ "$p0" != NA ] && [ "$p1" != NA ]; then PROXY_TICKS=$((p1 - p0)); fi
    # Busy CPU of the whole machine minus our servers and proxies minus the client: someone else's work.
    FOREIGN=$(($(busy_jiffies) - b0 - ($(our_ticks) - o0) - ($(child_ticks) - c0)))
}

MEAS_T0=$SECONDS skipped=0 reruns=0
for rep in $(seq "$REPS"); do
    for workload in "${WORKLOADS[@]}"; do
        IFS='|' read -r name args n targets <<<"$workload"
        [[ -n $ONLY && ! $name =~ $ONLY ]] && continue
        read -ra bench_args <<<"$args"
        tests=1
        [[ $args == *set,get* ]] && tests=2
        if [ "$tests" = 1 ]; then
            # GET-only: the key d100k and d1m left holds a large value; make it the 3-byte value the SET runs write.
            cli "$P_MASTER" set key:__rand_int__ xxx >/dev/null && cli "$P_MASTER" wait 2 2000 >/dev/null ||
                log "could not reset key:__rand_int__ before $name"
        fi
        for target in $targets; do
            IFS=: read -r label port pid <<<"$target"
            if ((SECONDS - MEAS_T0 > BUDGET)); then skipped=$((skipped + 1)); continue; fi
            out=$W/raw/r${rep}_${name}_${label}.csv
            for attempt in 1 2; do
                run_once "$out" "$port" "$pid" "$((n))" "${bench_args[@]}"
                limit=$((WALL_MS * HZ * FOREIGN_MAX / 100000))
                ((limit < 8)) && limit=8
                ((FOREIGN <= limit)) && break
                if ((attempt == 1)); then
                    log "rep $rep $name $label: other processes used $FOREIGN ticks in ${WALL_MS} ms; re-running once"
                    reruns=$((reruns + 1))
                    sleep 2
                fi
            done
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$name" "$label" "$((n * tests))" "$RC" "$WALL_MS" \
                "$PROXY_TICKS" "$FOREIGN" >>"$RUNS"
            # redis-benchmark 7 --csv: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",...
            tr -d '"\r' <"$out" | awk -F, -v rep="$rep" -v w="$name" -v t="$label" '
                $1 == "test" { for (k = 1; k <= NF; k++) col[$k] = k; next }
                $1 == "SET" || $1 == "GET" {
                    printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", rep, w, t, $1, $(col["rps"]),
                        $(col["p50_latency_ms"]), $(col["p99_latency_ms"]) }' >>"$RESULTS"
            [ "$RC" = 0 ] || log "rep $rep $name $label failed (rc $RC, see $out.err)"
        done
    done
    log "repetition $rep/$REPS done"
done
((skipped)) && log "WARNING: BUDGET=${BUDGET}s exceeded: $skipped runs skipped"

# ---------------------------------------------------------------- report
{
echo "== redis-proxy benchmark  $(date -u +%Y-%m-%dT%H:%MZ)  commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "   $(nproc) CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), Linux $(uname -r)"
echo "   $(redis-server --version | cut -d' ' -f1-3), $(redis-benchmark --version | head -1), $(nutcracker --version 2>&1 | head -1)"
echo "   $ARRANGEMENT; reps=$REPS (interleaved), n=$N, n_P16=$N_P16, n_large=$N_LARGE, n_huge=$N_HUGE; loopback"
echo
awk -F'\t' -v hz="$HZ" -v reps="$REPS" '
function med(s,   a, n, i, j, t) {
    n = split(s, a, " "); if (n == 0) return ""
    for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j > 0 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
function spread(s,   a, n, i, lo, hi, m) {
    n = split(s, a, " "); if (n < 2) return ""; lo = hi = a[1] + 0
    for (i = 2; i <= n; i++) { if (a[i] + 0 < lo) lo = a[i] + 0; if (a[i] + 0 > hi) hi = a[i] + 0 }
    m = med(s); return (m > 0) ? sprintf("%.0f%%", 100 * (hi - lo) / m) : "" }
FNR == 1 { next }
FILENAME ~ /results.tsv$/ {
    k = $2 SUBSEP $3 SUBSEP $4
    if (!(k in seen)) { seen[k] = 1; order[++no] = k }
    RPS[k] = RPS[k] " " $5; P50[k] = P50[k] " " $6; P99[k] = P99[k] " " $7; BY[$1, $2, $3, $4] = $5; next }
FILENAME ~ /runs.tsv$/ && $5 == 0 && $7 != "NA" && $4 > 0 {
    k = $2 SUBSEP $3; US[k] = US[k] " " (1e6 * $7 / hz / $4); FOREIGN += $8; WALL += $6 / 1000; next }
END {
    printf "%-8s %-4s %-18s %10s %6s %8s %7s %7s %9s\n", "workload", "test", "target", "req/s", "spread", "x direct", "p50 ms", "p99 ms", "proxy us"
    for (i = 1; i <= no; i++) {
        split(order[i], f, SUBSEP); w = f[1]; t = f[2]; test = f[3]
        # ratio to direct per repetition, then the median
        ratios = ""
        for (r = 1; r <= reps; r++)
            if ((r, w, t, test) in BY && (r, w, "direct", test) in BY && BY[r, w, "direct", test] > 0)
                ratios = ratios " " BY[r, w, t, test] / BY[r, w, "direct", test]
        us = med(US[w SUBSEP t])
        printf "%-8s %-4s %-18s %10.0f %6s %8s %7s %7s %9s\n", w, test, t, med(RPS[order[i]]), spread(RPS[order[i]]),
            (t == "direct") ? "1.00" : sprintf("%.2f", med(ratios)), med(P50[order[i]]), med(P99[order[i]]),
            (us == "") ? "-" : sprintf("%.2f", us)
        if (i < no) { split(order[i + 1], g, SUBSEP); if (g[1] != w) print "" }
    }
    if (WALL > 0) printf "\nother processes on the machine during the runs: %.0f%% of one core on average%s\n",
        100 * FOREIGN / hz / WALL, (100 * FOREIGN / hz / WALL > 10) ? "  <-- noisy: compare ratios, not absolute figures" : ""
}' "$RESULTS" "$RUNS"
echo
echo "   x direct = median over repetitions of (target req/s / direct req/s in the same repetition)."
echo "   proxy us = proxy process CPU (user+system, /proc/PID/stat, 1/${HZ} s ticks) per request, median."
[ -n "$BASELINE_BIN" ] && echo "   baseline = $BASELINE_BIN (allToMaster), beside this build in the same repetitions."
echo "   rts_get: direct = the master alone; redis-proxy-rts spreads GETs over the 2 replicas (readsToSlaves)."
echo "   tls_*: direct = a TLS-only redis-server; the proxies: client -TLS-> proxy -TLS-> that server."
echo "   re-runs for a busy machine: $reruns; skipped over budget: $skipped; measurement $((SECONDS - MEAS_T0)) s"
echo "   raw: $W/results.tsv $W/runs.tsv $W/raw/"
} | tee "$W/report.txt"
