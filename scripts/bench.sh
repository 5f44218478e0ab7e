#!/usr/bin/env bash
# netguard's benchmark (issue 6): packet-path cost, reconcile, plan, event → enforced.
# As root: sudo scripts/bench.sh [--full] [--only 3,2,5,1,4,1d] [--no-write]
# Default sizes take about 4 minutes here; --full runs the full sizes and repetitions (about an hour).
# Writes the generated section of BENCHMARKS.md and docs/bench.svg.
# Everything runs in network namespaces named ngb<pid>-*, removed on exit (also on failure),
# except section 1d: Docker containers and a network named ngbench<pid>-* on the host's
# dockerd, and netguard's own host tables (it refuses when they already exist).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "scripts/bench.sh: run as root (network namespaces, nftables)" >&2
  exit 2
fi

scripts/install-deps.sh
# Section 1d needs the host's dockerd and the test image (skipped with --only without 1d).
if [[ " $* " != *" --only "* || " $* " == *1d* ]]; then
  scripts/ensure-docker.sh
fi

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
