#!/usr/bin/env bash
# bench/chaos.sh - the chaos soak (tests/examples/chaos.rs) for each runtime: a master, two replicas and the proxy
# on 127.0.0.1, clients writing sequenced keys with WAIT, and a seeded random driver killing, stopping and busying
# the servers one fault at a time. Exits non-zero if any run saw a false failover or lost a write confirmed by WAIT.
#
# Usage:  bench/chaos.sh [SECONDS] [mio|tokio|both] [SEED]     # defaults: 60 s, both runtimes, a seed from the clock
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh # the servers and the proxy are started by tests/examples/chaos.rs (the tests crate's helpers)
seconds=${1:-60}
which=${2:-both}
seed=${3:-}
case "$which" in
    both) runtimes=(mio tokio) ;;
    mio | tokio) runtimes=("$which") ;;
    *) echo "usage: bench/chaos.sh [SECONDS] [mio|tokio|both] [SEED]" >&2; exit 2 ;;
esac
install_if_missing redis-server
cargo build -q --release -p redis-proxy-tests --example chaos
status=0
for runtime in "${runtimes[@]}"; do
    # shellcheck disable=SC2086 # an empty SEED is no argument
    cargo run -q --release -p redis-proxy-tests --example chaos -- "$seconds" "$runtime" $seed || status=1
done
exit "$status"
