#!/usr/bin/env bash
# Runs every test layer of netguard: unit, kernel (network namespaces) and Docker.
# As root, on a fresh Debian machine: installs what is missing, starts dockerd when it is
# not running, then builds and tests. With CI=true, privileged tests fail (never skip)
# when a prerequisite is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: run as root (the kernel and Docker layers need it)" >&2
  exit 2
fi

scripts/install-deps.sh
scripts/ensure-docker.sh

export CARGO_TERM_COLOR=never
echo "== format and lints"
cargo fmt --check
cargo fmt --check --manifest-path fuzz/Cargo.toml
cargo clippy --all-targets --locked -- -D warnings

echo "== tests (unit, kernel in network namespaces, real dockerd)"
cargo test --locked --all-targets --no-fail-fast 2>&1 | tee /tmp/netguard-test.log

# Bounded: the randomized soak's self-test (one injected fault per invariant, each must be
# reported), then the soak itself, 40 steps or 3 minutes (whichever comes first), against a
# dockerd of its own in a network namespace (docs/reliability.md, "Soak"). A random seed
# each run unless NETGUARD_SOAK_SEED is set; the seed is printed first, and a failure prints
# the command that replays it.
echo "== soak (self-test, then 40 steps, at most 3 min)"
scripts/soak.sh --self-test --log target/soak/self-test.jsonl
scripts/soak.sh ${NETGUARD_SOAK_SEED:+--seed "$NETGUARD_SOAK_SEED"} --steps 40 --minutes 3 \
  --log target/soak/ci.jsonl

# Bounded: every fuzz target 20 s from the committed seeds, after replaying the inputs that
# once crashed one (fuzz/regressions/). The long recorded runs are in docs/reliability.md.
echo "== fuzz (20 s per target)"
scripts/fuzz.sh --time "${NETGUARD_FUZZ_SECS:-20}"
