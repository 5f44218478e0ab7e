#!/usr/bin/env bash
# Where the packet path's CPU goes: two "containers" (namespaces) on a bridge in a third
# namespace, iperf3 between them, and `perf record -a` (software cpu-clock: these VMs have no
# hardware counters) for each setup: none, br_netfilter only, Docker-like (br_netfilter +
# conntrack + one ct-state rule), netguard alone, and a Docker host (br_netfilter + Docker's
# iptables rules) without netguard, with it, and with it but without the binding table.
# Prints the share of busy samples in br_netfilter, conntrack and nf_tables (rule evaluation,
# iptables-nft's matches included), and their sum. As root: sudo scripts/profile-packet-path.sh [seconds]
# PROFILE_COMMS=iperf3,ksoftirqd/0,ksoftirqd/1 counts only the samples of those commands (the
# packet path runs in the iperf3 processes' system calls and in softirq), so that other work on
# the machine (builds, a fuzzer) does not dilute the shares; the default counts every sample.
# The setup dh+ng-edges is dh+netguard with every edge closed (host, egress, ingress = "deny",
# one line open at each): the edges must not cost container-to-container traffic anything.
# PROFILE_LOAD=crr replaces the bulk transfer by short connections: a client in one namespace
# opens TCP connections to a server in the other in a loop (connect, 64-byte request, 64-byte
# answer, the server closes), as fast as it can for the same seconds; both are python3
# processes named ngcrr (use PROFILE_COMMS=ngcrr,ksoftirqd/0,ksoftirqd/1), and the rate shows
# as connections per second instead of Gbit/s.
# PROFILE_FAMILY=6 sends the load over IPv6 (fd78::1 to fd78::2) instead of IPv4: the path
# of the bridge table's IPv6 rules (`genuine_6`, the neighbour-discovery jump before it).
# The Docker-host setups still load Docker's IPv4 rules only (Docker 20.10 writes no IPv6
# rules without its experimental ip6tables switch), so over IPv6 compare the netguard setups
# with each other (dh+netguard against dh+ng-no-bind: the bridge table's share).
# PROFILE_SETUPS="A B ..." builds and profiles only the setups named: more rounds of the
# comparison at hand in the same time (scripts/profile-rounds.sh runs rounds of them).
# dh+ng-iif is dh+netguard with the two rules a genuine frame takes keyed on interface indexes
# by hand. The floor setups hold no rule of netguard's, only the hooks its design needs, on the
# Docker host: dh+inet-only (the stateful forward chain and its one rule), dh+pre-inet (and an
# empty bridge prerouting chain), dh+floor (and an empty postrouting chain), dh+bridge-empty
# (the two empty bridge chains alone).
# Namespaces are named ngpp<pid>-*, removed on exit (also on failure).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-4}"
P="ngpp$$"
H="$P-host"; A="$P-a"; B="$P-b"
NG="${NETGUARD_BIN:-target/release/netguard}"
WORK="$(mktemp -d)"
cleanup() {
  for ns in "$A" "$B" "$H"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns delete "$ns" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
command -v perf >/dev/null || { echo "needs perf (linux-perf)" >&2; exit 2; }
[ -x "$NG" ] || cargo build --release --locked --bin netguard

for ns in "$H" "$A" "$B"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n "$H" link add br0 type bridge
ip -n "$H" link set br0 up
i=1
for ns in "$A" "$B"; do
  ip -n "$H" link add "v$i" type veth peer name eth0 netns "$ns"
  ip -n "$H" link set "v$i" master br0 up
  # Fixed MACs, so that the inventory can bind them as Docker's endpoints do.
  ip -n "$ns" link set eth0 address "02:78:00:00:00:0$i"
  ip -n "$ns" addr add "10.78.0.$i/24" dev eth0
  ip -n "$ns" addr add "fd78::$i/64" dev eth0 nodad
  ip -n "$ns" link set eth0 up
  i=$((i + 1))
done
FAMILY="${PROFILE_FAMILY:-4}"
case "$FAMILY" in
  4) SERVER=10.78.0.2 ;;
  6) SERVER=fd78::2 ;;
  *) echo "PROFILE_FAMILY is 4 or 6, not $FAMILY" >&2; exit 2 ;;
esac
LOAD="${PROFILE_LOAD:-bulk}"
case "$LOAD" in
  bulk) ip netns exec "$B" iperf3 -s -D -p 5201 >/dev/null ;;
  crr)
    # Short connections on the allowed port; the server closes first, so the TIME_WAIT
    # entries stay on its side and the client's ports do not run out.
    cat >"$WORK/crr.py" <<'PY'
import ctypes, json, socket, sys, time
ctypes.CDLL(None).prctl(15, b"ngcrr", 0, 0, 0)  # PR_SET_NAME: what PROFILE_COMMS names
if sys.argv[1] == "server":
    ls = socket.socket(socket.AF_INET6)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("::", 5201)); ls.listen(512)
    open(sys.argv[2], "w").close()
    while True:
        c, _ = ls.accept()
        c.recv(64); c.sendall(b"y" * 64); c.close()
else:
    end = time.monotonic() + float(sys.argv[2]); n = 0
    while time.monotonic() < end:
        c = socket.create_connection((sys.argv[3], 5201))
        c.sendall(b"x" * 64)
        while c.recv(4096): pass
        c.close(); n += 1
    print(json.dumps({"conns": n, "secs": float(sys.argv[2])}))
PY
    ip netns exec "$B" python3 "$WORK/crr.py" server "$WORK/crr.ready" >/dev/null 2>&1 &
    for _ in $(seq 50); do [ -e "$WORK/crr.ready" ] && break; sleep 0.1; done
    [ -e "$WORK/crr.ready" ] || { echo "crr server did not start" >&2; exit 2; } ;;
  *) echo "PROFILE_LOAD is bulk or crr, not $LOAD" >&2; exit 2 ;;
esac

cat >"$WORK/policy.toml" <<'POL'
[groups.client]
match = { label = { role = "client" } }
[groups.server]
match = { label = { role = "server" } }
[[allow]]
from = "client"
to = "server"
ports = ["5201/tcp"]
POL
cat >"$WORK/inv.toml" <<'INV'
[[container]]
name = "a"
id = "a"
image = "bench:1"
labels = { role = "client" }
[[container.endpoint]]
network = "lab"
bridge = "br0"
veth = "v1"
ipv4 = "10.78.0.1"
ipv6 = "fd78::1"
mac = "02:78:00:00:00:01"

[[container]]
name = "b"
id = "b"
image = "bench:1"
labels = { role = "server" }
[[container.endpoint]]
network = "lab"
bridge = "br0"
veth = "v2"
ipv4 = "10.78.0.2"
ipv6 = "fd78::2"
mac = "02:78:00:00:00:02"
INV

flags() { ip -n "$H" link set br0 type bridge nf_call_iptables "$1" nf_call_ip6tables "$1"; }
reset() {
  ip netns exec "$H" "$NG" -c "$WORK/policy.toml" --inventory "$WORK/inv.toml" uninstall >/dev/null 2>&1 || true
  ip netns exec "$H" nft delete table inet dockerlike 2>/dev/null || true
  ip netns exec "$H" nft delete table ip filter 2>/dev/null || true
  ip netns exec "$H" nft delete table ip nat 2>/dev/null || true
  flags 0
}
# Docker 20.10's filter and nat rules for one bridge network, as on a Docker host (the
# benchmark's Docker-host baseline too); iptables-nft, so `reset` can delete the tables.
sed 's#@SUBNET@#10.78.0.0/24#' scripts/docker-bridge.iptables >"$WORK/docker.iptables"
docker_host() {
  iptables-restore --version | grep -q nf_tables || { echo "needs iptables-restore of the nf_tables backend" >&2; exit 2; }
  flags 1
  ip netns exec "$H" iptables-restore "$WORK/docker.iptables"
}

run() {
  local name="$1"
  sleep 0.5
  local gbps
  if [ "$LOAD" = crr ]; then
    perf record -q -a -e cpu-clock -F 2000 -g -o "$WORK/$name.data" -- \
      ip netns exec "$A" python3 "$WORK/crr.py" client "$SECS" "$SERVER" >"$WORK/$name.json"
    gbps=$(python3 -c "import json,sys; j = json.load(open(sys.argv[1])); print('%.0f' % (j['conns'] / j['secs']))" "$WORK/$name.json")
  else
    perf record -q -a -e cpu-clock -F 2000 -g -o "$WORK/$name.data" -- \
      ip netns exec "$A" iperf3 -c "$SERVER" -p 5201 -t "$SECS" -J >"$WORK/$name.json" 2>/dev/null
    gbps=$(python3 -c "import json,sys; print('%.2f' % (json.load(open(sys.argv[1]))['end']['sum_received']['bits_per_second']/1e9))" "$WORK/$name.json")
  fi
  local comms=()
  [ -z "${PROFILE_COMMS:-}" ] || comms=(--comms "$PROFILE_COMMS")
  perf report -q -i "$WORK/$name.data" "${comms[@]}" --no-children --sort symbol --percent-limit 0 2>/dev/null \
    | awk -v name="$name" -v gbps="$gbps" -v unit="$([ "$LOAD" = crr ] && echo conn/s || echo Gbit/s)" '
      /%/ { p = $1; sub("%", "", p); s = $3;
            if (s ~ /safe_halt|^default_idle|cpuidle|^acpi_idle/) { idle += p; next }
            if (s ~ /^br_nf|^br_netfilter|nf_bridge/) brnf += p;
            else if (s ~ /_mt$|_mt_v[0-9]$|^nft_match|^nft_compat|^xt_|^ipt_/) nft += p;
            else if (s ~ /conntrack|^nf_ct_|^__nf_ct|^nf_confirm|^hash_conntrack|^tcp_packet|^nf_nat/) ct += p;
            else if (s ~ /^nft_|^nf_tables|^__nft|^nf_hook_slow|^expr_call/) nft += p;
            total += p }
      END { b = total / 100;
            printf "%-13s %6s %s  busy %5.1f %% of both cores; of that: br_netfilter %4.1f %%, conntrack %4.1f %%, nf_tables %4.1f %%, all three %4.1f %%\n", name, gbps, unit, total, brnf / b, ct / b, nft / b, (brnf + ct + nft) / b }'
  # PROFILE_TOP=N: the N hottest netfilter symbols of each run.
  if [ -n "${PROFILE_TOP:-}" ]; then
    perf report -q -i "$WORK/$name.data" --no-children --sort symbol --percent-limit 0 2>/dev/null \
      | awk '$3 ~ /^nft_|^nf_|^br_nf|conntrack|^__nft|^__nf/ { print "      " $1 " " $3 }' | head -"$PROFILE_TOP"
  fi
}

{ printf '[settings]\nanti_spoofing = false\n'; cat "$WORK/policy.toml"; } >"$WORK/nospoof.toml"
{ printf '[settings]\nhost = "deny"\negress = "deny"\ningress = "deny"\n'; cat "$WORK/policy.toml"
  printf '[[allow]]\nfrom = "client"\nto = "host"\nports = ["9100/tcp"]\n'
  printf '[[allow]]\nfrom = "client"\nto = ["203.0.113.0/24", "2001:db8::/32"]\nports = ["443/tcp"]\n'
  printf '[[allow]]\nfrom = "world"\nto = "server"\nports = ["443/tcp"]\n'; } >"$WORK/edges.toml"
apply() { ip netns exec "$H" "$NG" -c "$1" --inventory "$WORK/inv.toml" apply >/dev/null; }

if [ "$LOAD" = crr ]; then
  echo "short TCP connections (IPv$FAMILY) for $SECS s between two namespaces on one bridge; CPU samples (perf cpu-clock, all CPUs):"
else
  echo "iperf3 -t $SECS (IPv$FAMILY) between two namespaces on one bridge; CPU samples (perf cpu-clock, all CPUs):"
fi
# want NAME: whether PROFILE_SETUPS names the setup (all of them when it is unset), so that
# the setups not asked for are not even built.
want() { [ -z "${PROFILE_SETUPS:-}" ] || [[ " $PROFILE_SETUPS " == *" $1 "* ]]; }
# floor TEXT: a hand-written table set named `floor` (chains that hold no rule of netguard's).
floor() { ip netns exec "$H" nft -f - <<<"$1"; }
unfloor() {
  ip netns exec "$H" nft delete table bridge floor 2>/dev/null || true
  ip netns exec "$H" nft delete table inet floor 2>/dev/null || true
}
INET_FLOOR='table inet floor {
  chain forward { type filter hook forward priority -10; policy accept; ct state established,related accept; }
}'
PRE_FLOOR='table bridge floor {
  chain prerouting { type filter hook prerouting priority -200; policy accept; }
}'
POST_FLOOR='table bridge floor {
  chain postrouting { type filter hook postrouting priority -200; policy accept; }
}'

if want none; then reset; run none; fi
if want br_netfilter; then reset; flags 1; run br_netfilter; fi
if want docker-like; then
  reset; flags 1
  ip netns exec "$H" nft 'add table inet dockerlike; add chain inet dockerlike forward { type filter hook forward priority 0; policy accept; }; add rule inet dockerlike forward ct state established,related accept'
  run docker-like
fi
if want netguard; then reset; apply "$WORK/policy.toml"; run netguard; fi
# On a Docker host: netguard's own cost is the difference between the last three.
if want docker-host; then reset; docker_host; run docker-host; fi
if want dh+netguard; then reset; docker_host; apply "$WORK/policy.toml"; run "dh+netguard"; fi
if want dh+ng-edges; then reset; docker_host; apply "$WORK/edges.toml"; run "dh+ng-edges"; fi
# Issue 19's rejected alternative to the bridge postrouting check (tests/netns_mac.rs says
# why): the chain deleted by hand, no unknown-unicast flooding toward the two ports, a static
# sticky forwarding entry each. What it would have saved.
if want dh+ng-no-post; then
  reset; docker_host; apply "$WORK/policy.toml"
  ip netns exec "$H" nft delete chain bridge netguard postrouting
  i=1
  for v in v1 v2; do
    bridge -n "$H" link set dev "$v" flood off
    bridge -n "$H" fdb replace "02:78:00:00:00:0$i" dev "$v" master static sticky
    i=$((i + 1))
  done
  run "dh+ng-no-post"
  i=1
  for v in v1 v2; do
    bridge -n "$H" link set dev "$v" flood on
    bridge -n "$H" fdb del "02:78:00:00:00:0$i" dev "$v" master
    i=$((i + 1))
  done
fi
# The bridge table keyed on interface indexes instead of names (4-byte keys instead of 16):
# two rules put first by hand, so that a genuine frame takes them and nothing else.
if want dh+ng-iif; then
  reset; docker_host; apply "$WORK/policy.toml"
  i1=$(ip netns exec "$H" cat /sys/class/net/v1/ifindex)
  i2=$(ip netns exec "$H" cat /sys/class/net/v2/ifindex)
  ip netns exec "$H" nft -f - <<NFT
add set bridge netguard gi4 { type iface_index . ether_addr . ipv4_addr; }
add set bridge netguard bo4 { type iface_index . ipv4_addr; }
add element bridge netguard gi4 { $i1 . 02:78:00:00:00:01 . 10.78.0.1, $i2 . 02:78:00:00:00:02 . 10.78.0.2 }
add element bridge netguard bo4 { $i1 . 10.78.0.1, $i2 . 10.78.0.2 }
insert rule bridge netguard prerouting iif . ether saddr . ip saddr @gi4 accept
insert rule bridge netguard postrouting oif . ip daddr @bo4 accept
NFT
  run "dh+ng-iif"
fi
# The floor: the hooks netguard's design needs before any lookup, on the Docker host. The
# stateful forward chain with its one rule (dh+inet-only), plus an empty bridge prerouting
# chain (dh+pre-inet: what the MAC binding before learning needs at least), plus an empty
# postrouting chain (dh+floor: the delivery check's hook); the two bridge chains alone
# (dh+bridge-empty).
if want dh+inet-only; then reset; docker_host; floor "$INET_FLOOR"; run "dh+inet-only"; unfloor; fi
if want dh+pre-inet; then reset; docker_host; floor "$INET_FLOOR"; floor "$PRE_FLOOR"; run "dh+pre-inet"; unfloor; fi
if want dh+floor; then
  reset; docker_host; floor "$INET_FLOOR"; floor "$PRE_FLOOR"; floor "$POST_FLOOR"; run "dh+floor"; unfloor
fi
if want dh+bridge-empty; then reset; docker_host; floor "$PRE_FLOOR"; floor "$POST_FLOOR"; run "dh+bridge-empty"; unfloor; fi
# The same without the bridge table (address-to-veth binding), to see its share.
if want dh+ng-no-bind; then
  reset; docker_host; apply "$WORK/nospoof.toml"; run "dh+ng-no-bind"
  ip netns exec "$H" "$NG" -c "$WORK/nospoof.toml" --inventory "$WORK/inv.toml" uninstall >/dev/null 2>&1 || true
fi
reset
