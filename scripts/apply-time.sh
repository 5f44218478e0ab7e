#!/usr/bin/env bash
# How long `netguard apply` takes for a policy of N allow lines (the packet-path bench's
# shape: ⌈√N⌉ groups, one container each), into a fresh network namespace.
# As root: sudo scripts/apply-time.sh [--distinct] N [NETGUARD_BIN ...]
#   --distinct  every line gets its own port list (one port set per line: the worst case);
#               by default every line has the same list, 5201/tcp and 7000/tcp.
# Several binaries (e.g. an older build) are timed back to back on the same files.
# Namespaces are named ngat<pid>, removed on exit (also on failure).
set -euo pipefail
cd "$(dirname "$0")/.."
distinct=0
if [ "${1:-}" = --distinct ]; then distinct=1; shift; fi
N="${1:?usage: scripts/apply-time.sh [--distinct] N [NETGUARD_BIN ...]}"
shift
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=(target/release/netguard)
NS="ngat$$"
WORK="$(mktemp -d)"
cleanup() { ip netns delete "$NS" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM

k=$(awk -v n="$N" 'BEGIN { k = int(sqrt(n)); if (k * k < n) k++; if (k < 2) k = 2; print k }')
{
  for ((g = 0; g < k; g++)); do
    printf '[groups.g%d]\nmatch = { label = { role = "g%d" } }\n' "$g" "$g"
  done
  for ((r = 0; r < N; r++)); do
    port=7000
    [ "$distinct" = 1 ] && port=$((7000 + r % 58000))
    printf '[[allow]]\nfrom = "g%d"\nto = "g%d"\nports = ["5201/tcp", "%d/tcp"]\n' \
      $((r % k)) $(((r / k) % k)) "$port"
  done
} >"$WORK/policy.toml"
for ((g = 0; g < k; g++)); do
  printf '[[container]]\nname = "s%d"\nlabels = { role = "g%d" }\n[[container.endpoint]]\nnetwork = "lab"\nbridge = "br0"\nveth = "vs%d"\nipv4 = "10.77.%d.%d"\n' \
    "$g" "$g" "$g" $((g / 250)) $((g % 250 + 1))
done >"$WORK/inventory.toml"

for bin in "${BINS[@]}"; do
  ip netns add "$NS"
  start=$(date +%s%N)
  ip netns exec "$NS" "$bin" -c "$WORK/policy.toml" --inventory "$WORK/inventory.toml" apply >/dev/null 2>"$WORK/err" \
    || { cat "$WORK/err" >&2; exit 1; }
  end=$(date +%s%N)
  sets=$(ip netns exec "$NS" nft list sets inet | grep -c $'^\tset ' || true)
  ip netns delete "$NS"
  printf '%s: %d allow lines (%s port lists): %.2f s, %d named sets in inet netguard\n' \
    "$bin" "$N" "$([ "$distinct" = 1 ] && echo distinct || echo shared)" \
    "$(awk -v a="$start" -v b="$end" 'BEGIN { print (b - a) / 1e9 }')" "$sets"
done
