#!/usr/bin/env bash
# bench/compare_builds.sh - two builds of redis-proxy side by side in front of one master (and its two replicas),
# interleaved with direct Redis in every repetition, pinned as bench/run.sh pins (redis-benchmark on CPU 0, the
# servers and both proxies on CPU 1). For telling a change in the proxy from a change in the machine: a ratio to
# direct Redis measured on another day is no baseline, the same ratio for the older build in the same run is.
#
# Usage:  bench/compare_builds.sh BASELINE_BIN [CURRENT_BIN]     # CURRENT_BIN: target/release/redis-proxy
#         e.g. git worktree add /tmp/base 1af7538 && (cd /tmp/base && cargo build --release --bins) &&
#              bench/compare_builds.sh /tmp/base/target/release/redis-proxy
#
# Workloads: -t set,get -n N with -c 50 -P 1, -c 50 -P 16 and -c 500 -P 1. Prints, per workload, the median over
# the repetitions of each build's ratio to direct Redis and of current / baseline, SET / GET.
# Knobs: REPS=7 N=200000 BASE_PORT=7900 (ports +0..+2 servers, +10 baseline, +11 current).
set -euo pipefail
export LC_ALL=C
[ $# -ge 1 ] || { echo "usage: bench/compare_builds.sh BASELINE_BIN [CURRENT_BIN]" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
baseline_bin=$1
current_bin=${2:-$root/target/release/redis-proxy}
reps=${REPS:-7}
n=${N:-200000}
base=${BASE_PORT:-7900}
for bin in "$baseline_bin" "$current_bin"; do [ -x "$bin" ] || { echo "$bin is not an executable" >&2; exit 2; }; done
for tool in redis-server redis-benchmark redis-cli taskset python3; do
    command -v "$tool" >/dev/null || { echo "$tool not found (apt-get install redis-server redis-tools util-linux python3)" >&2; exit 2; }
done
for port in "$base" $((base + 1)) $((base + 2)) $((base + 10)) $((base + 11)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "port $port is taken" >&2; exit 2; fi
done
work=$(mktemp -d /tmp/compare-builds.XXXXXX)
pids=()
trap 'kill -9 "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
for port in "$base" $((base + 1)) $((base + 2)); do
    args=(--port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no --loglevel warning --dir "$work")
    [ "$port" = "$base" ] || args+=(--replicaof 127.0.0.1 "$base")
    taskset -c 1 redis-server "${args[@]}" >/dev/null 2>&1 &
    pids+=($!)
done
start_proxy() { # name binary port
    printf '{ "servers": [ {"host": "127.0.0.1", "port": %s}, {"host": "127.0.0.1", "port": %s},
  {"host": "127.0.0.1", "port": %s} ], "mode": "allToMaster", "listen_port": %s, "bind_address": "127.0.0.1",
  "check_period": 1000 }\n' "$base" $((base + 1)) $((base + 2)) "$3" >"$work/$1.json"
    taskset -c 1 "$2" "$work/$1.json" >"$work/$1.log" 2>&1 &
    pids+=($!)
}
start_proxy baseline "$baseline_bin" $((base + 10))
start_proxy current "$current_bin" $((base + 11))
set_ok() { [ "$(timeout 5 redis-cli -h 127.0.0.1 -p "$1" set __compare_ready 1 2>/dev/null)" = OK ]; }
for port in "$base" $((base + 10)) $((base + 11)); do
    for _ in $(seq 150); do set_ok "$port" && break; sleep 0.1; done
    set_ok "$port" || { echo "nothing on :$port forwards a SET (logs in $work)" >&2; exit 1; }
done
echo "baseline $baseline_bin, current $current_bin; REPS=$reps N=$n; $(nproc) CPUs, Linux $(uname -r)"
results=$work/results
for workload in "c50_P1:-c 50 -P 1" "c50_P16:-c 50 -P 16" "c500_P1:-c 500 -P 1"; do
    name=${workload%%:*}
    read -ra args <<<"${workload#*:}"
    for rep in $(seq "$reps"); do
        for target in "direct:$base" "baseline:$((base + 10))" "current:$((base + 11))"; do
            csv=$(taskset -c 0 timeout 120 redis-benchmark -h 127.0.0.1 -p "${target#*:}" -t set,get -n "$n" \
                "${args[@]}" --csv 2>/dev/null) || true
            set_rps=$(grep '^"SET"' <<<"$csv" | cut -d, -f2 | tr -d '"')
            get_rps=$(grep '^"GET"' <<<"$csv" | cut -d, -f2 | tr -d '"')
            echo "$name $rep ${target%%:*} ${set_rps:-0} ${get_rps:-0}" >>"$results"
        done
    done
done
python3 - "$results" <<'EOF'
import collections, statistics, sys
runs = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    name, rep, target, set_rps, get_rps = line.split()
    runs[(name, rep)][target] = (float(set_rps), float(get_rps))
print(f"{'workload':<9} {'baseline/direct':>16} {'current/direct':>15} {'current/baseline':>17} {'direct req/s':>17}")
for name in dict.fromkeys(n for n, _ in runs):
    reps = [r for (n, _), r in runs.items() if n == name and all(r.get(t, (0, 0))[0] > 0 for t in ("direct", "baseline", "current"))]
    def ratio(a, b):
        return "/".join(f"{statistics.median(r[a][i] / r[b][i] for r in reps):.2f}" for i in (0, 1))
    direct = "/".join(f"{statistics.median(r['direct'][i] for r in reps):.0f}" for i in (0, 1))
    print(f"{name:<9} {ratio('baseline', 'direct'):>16} {ratio('current', 'direct'):>15} {ratio('current', 'baseline'):>17} {direct:>17}   ({len(reps)} reps)")
EOF
