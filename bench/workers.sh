#!/usr/bin/env bash
# bench/workers.sh - proxies with different `workers`, interleaved: throughput, the proxy process's CPU per
# request (user + system, from /proc) and its voluntary context switches per request (its threads sleeping in the
# poller, summed over /proc/PID/task) for `redis-benchmark -c 50` SET and GET at -P 1 and -P 16, in front of one
# redis-server. Prints one line per run, then the medians per row.
#
# VARIANTS lists what runs, as PROXY:WORKERS, PROXY one of
#   mio               redis-proxy
#   tokio             redis-proxy-tokio (each worker on a current-thread runtime of its own)
#   tokio-multi       the multi_thread example of redis-proxy-tokio (every worker a task of one multi-thread runtime)
#
# Usage: [VARIANTS="mio:1 mio:2"] [REPS=3] [N=200000] [BASE_PORT=7800] bench/workers.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
REPS=${REPS:-3}
N=${N:-200000}
BASE_PORT=${BASE_PORT:-7800}
install_if_missing redis-server redis-benchmark:redis-tools
VARIANTS=${VARIANTS:-mio:1 mio:2}
cargo build --release --quiet -p redis-proxy-mio -p redis-proxy-tokio --bins --example multi_thread
binary_of() {
    case $1 in
        mio) echo "$ROOT/target/release/redis-proxy" ;;
        tokio) echo "$ROOT/target/release/redis-proxy-tokio" ;;
        tokio-multi) echo "$ROOT/target/release/examples/multi_thread" ;;
        *) die "unknown proxy $1 in VARIANTS (mio, tokio or tokio-multi)" ;;
    esac
}
BENCH_WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-workers.XXXXXX")
BENCH_WORK_REMOVE=1
redis_port=$((BASE_PORT + 1)) proxy_port=$BASE_PORT
port_free_or_die "$redis_port" "$proxy_port"
start_redis "$redis_port"
tick=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
sleeps() { cat "/proc/$1"/task/*/status | awk '/^voluntary_ctxt_switches/ { n += $2 } END { print n }'; }
results=$BENCH_WORK/results
for rep in $(seq 1 "$REPS"); do
    for variant in $VARIANTS; do
        proxy=${variant%:*} workers=${variant#*:}
        name="$proxy-$workers"
        proxy_config "$BENCH_WORK/$name.json" "$proxy_port" "$redis_port" "\"workers\": $workers"
        start_proxy "$(binary_of "$proxy")" "$BENCH_WORK/$name.json" "$proxy_port"
        pid=$LAST_PID
        for pipeline in 1 16; do
            for test in set get; do
                before=$(cpu_ticks "$pid") slept=$(sleeps "$pid")
                rps=$(redis-benchmark -p "$proxy_port" -c 50 -n "$N" -t "$test" -P "$pipeline" -q 2>/dev/null |
                    grep -o '[0-9.]* requests per second' | cut -d' ' -f1)
                after=$(cpu_ticks "$pid")
                switches=$(awk -v s=$(($(sleeps "$pid") - slept)) -v n="$N" 'BEGIN { printf "%.3f", s / n }')
                us=$(awk -v t=$((after - before)) -v k="$tick" -v n="$N" 'BEGIN { printf "%.2f", t / k * 1e6 / n }')
                echo "rep=$rep $variant P=$pipeline $test rps=$rps cpu_us_per_request=$us sleeps_per_request=$switches" |
                    tee -a "$results"
            done
        done
        stop_pid "$pid"
    done
done
echo
echo "medians over $REPS repetitions (requests/s, proxy CPU µs per request, voluntary context switches per request):"
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for pipeline in 1 16; do
    for test in set get; do
        for variant in $VARIANTS; do
            rows=$(grep " $variant P=$pipeline $test " "$results")
            rps=$(sed 's/.*rps=\([0-9.]*\).*/\1/' <<<"$rows" | median)
            us=$(sed 's/.*cpu_us_per_request=\([0-9.]*\).*/\1/' <<<"$rows" | median)
            switches=$(sed 's/.*sleeps_per_request=\([0-9.]*\).*/\1/' <<<"$rows" | median)
            printf "  -P %-2s %s %-13s %10.0f req/s  %5.2f us  %5.3f sleeps\n" "$pipeline" "$test" "$variant:" "$rps" \
                "$us" "$switches"
        done
    done
done
