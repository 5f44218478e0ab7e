#!/usr/bin/env bash
# netguard's main job on this host with policy.example.toml: validate the policy, show what
# would change against the live kernel and Docker, then apply it. As root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/run-example.sh: run as root" >&2; exit 2; }
scripts/install-deps.sh
scripts/ensure-docker.sh
cargo build --release --locked
ng=target/release/netguard
$ng -c policy.example.toml check
rc=0; $ng -c policy.example.toml diff || rc=$?
[ "$rc" -le 1 ] || exit "$rc"
$ng -c policy.example.toml apply
$ng -c policy.example.toml status
echo "netguard is enforcing policy.example.toml; 'target/release/netguard uninstall' removes its tables"
