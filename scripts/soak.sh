#!/usr/bin/env bash
# The randomized soak (docs/reliability.md, "Soak"): builds the netguard binary of this tree
# and the soak driver (examples/soak.rs), then runs it as root. Everything it does happens in
# a network namespace of its own with a dockerd of its own; the machine's dockerd and tables
# are never touched. Arguments go to the driver:
#   scripts/soak.sh [--seed N] [--minutes M (30)] [--steps S] [--log FILE.jsonl]
# Exit 0 no violation, 1 violations, 2 could not run (a missing prerequisite, also under
# CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "scripts/soak.sh: run as root (it runs a dockerd and netguard in a network namespace)" >&2
  exit 2
fi
cargo build --locked --bin netguard --example soak
target="${CARGO_TARGET_DIR:-target}"
NETGUARD_BIN="$target/debug/netguard" exec "$target/debug/examples/soak" "$@"
