#!/usr/bin/env bash
# bench/instructions.sh - instructions per round trip in the engine, counted by callgrind.
#
# Usage: bench/instructions.sh [MODE] [REQUESTS] [PIPELINE]
#   MODE      get (default) | set | mix   (see engine/examples/bench_engine.rs)
#   REQUESTS  round trips measured (default 200000)
#   PIPELINE  requests per client read (default 1)
#   RESP3=1   (environment) every client says HELLO 3 first, as redis-benchmark -3 does
#   CLUSTER=N (environment) the engine in cluster mode in front of a cluster of N primaries (keys spread over
#             the slots), to compare with standalone mode (the default, CLUSTER=0)
#   WORKER=1  (environment) a worker engine (`workers` above 1) following a deciding engine, standalone mode
#
# Builds the engine micro-benchmark (release profile, which keeps symbols), then runs it twice under
# `valgrind --tool=callgrind`, collecting only while the program is inside the named functions:
#   engine   Engine::handle_input + Engine::poll_action: the engine alone
#   harness  bench_engine::round_trips: engine plus the benchmark's own buffer appends and fake server
# Setup (config parsing, master adoption, accepting the clients) is outside both. Prints instructions per
# round trip for each, and the top functions of the engine run by self cost, with inlined code folded into
# the function it was inlined into. Instruction counts are repeatable where wall time is not.
set -euo pipefail
export LC_ALL=C

MODE=${1:-get}
REQUESTS=${2:-200000}
PIPELINE=${3:-1}
TOP=${TOP:-10}
case "$MODE" in get|set|mix) ;; *) echo "usage: $0 [get|set|mix] [REQUESTS] [PIPELINE]" >&2; exit 2;; esac
[[ $REQUESTS =~ ^[1-9][0-9]*$ ]] || { echo "REQUESTS must be a positive number" >&2; exit 2; }
[[ $PIPELINE =~ ^[1-9][0-9]*$ ]] || { echo "PIPELINE must be a positive number" >&2; exit 2; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh" # starts no server: install_if_missing, and the work directory removed at exit
install_if_missing valgrind callgrind_annotate:valgrind
cargo build --release --quiet -p redis-proxy-engine --example bench_engine
BIN=$ROOT/target/release/examples/bench_engine
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-instructions.XXXXXX")
BENCH_WORK=$WORK BENCH_WORK_REMOVE=1

# The example rounds REQUESTS up to whole turns of 50 clients x PIPELINE; it prints the exact count.
ARGS=(--mode "$MODE" --requests "$REQUESTS" --pipeline "$PIPELINE")
[ "${RESP3:-0}" = 1 ] && ARGS+=(--resp3)
CLUSTER=${CLUSTER:-0}
[[ $CLUSTER =~ ^[0-9]+$ ]] || { echo "CLUSTER must be a number of primaries" >&2; exit 2; }
[ "$CLUSTER" -gt 0 ] && ARGS+=(--cluster "$CLUSTER")
[ "${WORKER:-0}" = 1 ] && ARGS+=(--worker)
TRIPS=$("$BIN" "${ARGS[@]}" | sed -n 's/.*round_trips=\([0-9]*\).*/\1/p')
[ -n "$TRIPS" ] && [ "$TRIPS" -gt 0 ] || { echo "bench_engine did not report its round trips" >&2; exit 1; }

collected() { # out-file toggle-pattern...
    local out=$1; shift
    local toggles=() pattern
    for pattern in "$@"; do toggles+=("--toggle-collect=$pattern"); done
    valgrind --tool=callgrind --callgrind-out-file="$out" "${toggles[@]}" "$BIN" "${ARGS[@]}" --quiet \
        >"$out.log" 2>&1 || { cat "$out.log" >&2; exit 1; }
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$out.log"
}
ENGINE_IR=$(collected "$WORK/engine.out" '*Engine::handle_input*' '*Engine::poll_action*')
HARNESS_IR=$(collected "$WORK/harness.out" '*bench_engine::round_trips*')

echo "== engine instructions per round trip: mode=$MODE${RESP3:+ resp3=$RESP3}$( ((CLUSTER > 0)) && echo " cluster=$CLUSTER")$( [ "${WORKER:-0}" = 1 ] && echo " worker=1") pipeline=$PIPELINE clients=50 round_trips=$TRIPS"
echo "   $(valgrind --version), $(rustc --version)"
awk -v e="$ENGINE_IR" -v h="$HARNESS_IR" -v n="$TRIPS" 'BEGIN {
    printf "   engine (handle_input + poll_action): %8.0f instructions per round trip\n", e / n
    printf "   with harness (buffer appends, fake server): %8.0f instructions per round trip\n", h / n }'
echo
echo "Top $TOP functions in the engine run (self instructions per round trip; inlined code folded into its caller):"
# callgrind_annotate lines: "  12,345 (1.23%)  file:function [object]"; inlined code shows the inlined file with
# the function it was inlined into, so summing by function name folds it in.
callgrind_annotate --auto=no --inclusive=no --threshold=100 "$WORK/engine.out" 2>/dev/null |
    awk -v n="$TRIPS" -v top="$TOP" '
    /^ *[0-9,]+ \([ 0-9.]+%\) +[^ ]/ && !/PROGRAM TOTALS/ {
        ir = $1; gsub(",", "", ir)
        line = $0; sub(/^ *[0-9,]+ \([ 0-9.]+%\) +/, "", line); sub(/ \[[^]]*\]$/, "", line)
        fn = line; if (match(fn, /^[^:]*[^:]:[^:]/)) fn = substr(fn, RLENGTH)   # drop "file:" (paths have no "::")
        self[fn] += ir; total += ir }
    END {
        for (f in self) printf "%d\t%s\n", self[f], f
    }' | sort -t"$(printf '\t')" -k1,1nr | head -n "$TOP" |
    awk -F'\t' -v n="$TRIPS" '{ printf "   %7.1f  %s\n", $1 / n, $2 }'
