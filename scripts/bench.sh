#!/usr/bin/env bash
# netguard's benchmark (issue 6): packet-path cost, reconcile, plan, event → enforced.
# As root: sudo scripts/bench.sh [--full] [--only 3,2,5,1] [--no-write]
# Default sizes take a few minutes; --full runs the full sizes and repetitions.
# Writes the generated section of BENCHMARKS.md and docs/bench.svg.
# Everything runs in network namespaces named ngb<pid>-*, removed on exit (also on failure).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "scripts/bench.sh: run as root (network namespaces, nftables)" >&2
  exit 2
fi

scripts/install-deps.sh

export NGB_PREFIX="ngb$$"
cleanup() {
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$NGB_PREFIX-" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns delete "$ns" 2>/dev/null || true
  done
}
trap cleanup EXIT INT TERM

export CARGO_TERM_COLOR=never
cargo build --release --locked --bin netguard --example bench
NETGUARD_BIN="$PWD/target/release/netguard" target/release/examples/bench "$@"
