#!/usr/bin/env bash
# Several rounds of scripts/profile-packet-path.sh, bulk and short connections alternating,
# and what each setup adds to the Docker host: the mean, standard deviation and standard error
# over the rounds of (setup's share - docker-host's share) in the same round, for nf_tables
# alone (the only part netguard's rules change) and for br_netfilter + conntrack + nf_tables.
# A single run cannot resolve a point; the paired difference over eight rounds can (its
# standard error is 0.1-0.3 points for nf_tables here).
# Bulk runs whose "busy" is under 45 % of both cores are left out of the means (about one in
# six: the two iperf3 processes then share a core and every share comes out 2-3 points higher).
# As root: sudo scripts/profile-rounds.sh [rounds] [seconds]
# PROFILE_SETUPS names the setups (docker-host is added; default below); PROFILE_LOADS="bulk"
# or "crr" runs one load; PROFILE_FAMILY as in profile-packet-path.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-8}"
SECS="${2:-5}"
SETUPS="${PROFILE_SETUPS:-dh+netguard dh+floor}"
LOADS="${PROFILE_LOADS:-crr bulk}"
OUT="$(mktemp)"
trap 'rm -f "$OUT"' EXIT
for r in $(seq "$ROUNDS"); do
  for load in $LOADS; do
    case "$load" in
      crr) comms=ngcrr,ksoftirqd/0,ksoftirqd/1 ;;
      bulk) comms=iperf3,ksoftirqd/0,ksoftirqd/1 ;;
      *) echo "PROFILE_LOADS holds bulk and crr, not $load" >&2; exit 2 ;;
    esac
    echo "## round $r $load $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)" | tee -a "$OUT"
    PROFILE_LOAD="$load" PROFILE_COMMS="$comms" PROFILE_SETUPS="docker-host $SETUPS" \
      bash scripts/profile-packet-path.sh "$SECS" | grep -v '^short\|^iperf3' | tee -a "$OUT"
  done
done
python3 - "$OUT" <<'PY'
import re, statistics as st, sys
data, cur = {}, None
for line in open(sys.argv[1]):
    m = re.match(r"## round (\d+) (\w+)", line)
    if m:
        cur = (int(m[1]), m[2])
        continue
    m = re.match(r"(\S+)\s.*busy\s+([\d.]+) %.*nf_tables\s+([\d.]+) %, all three\s+([\d.]+)", line)
    if m and cur:
        data.setdefault(cur, {})[m[1]] = (float(m[2]), float(m[3]), float(m[4]))
def fmt(x):
    if not x:
        return "no kept round"
    if len(x) == 1:
        return f"{x[0]:+.2f} (one round)"
    sd = st.stdev(x)
    return f"{st.mean(x):+.2f} (sd {sd:.2f}, se {sd / len(x) ** 0.5:.2f}, n {len(x)})"
print("\nadded to docker-host, points of busy CPU (mean of the paired rounds):")
for load in sorted({l for _, l in data}):
    rounds = [v for (_, l), v in sorted(data.items()) if l == load and "docker-host" in v]
    for s in sorted({s for v in rounds for s in v} - {"docker-host"}):
        nft, all3 = [], []
        for v in rounds:
            if s not in v or (load == "bulk" and min(v[s][0], v["docker-host"][0]) < 45):
                continue
            nft.append(v[s][1] - v["docker-host"][1])
            all3.append(v[s][2] - v["docker-host"][2])
        print(f"  {load:4s} {s:16s} nf_tables {fmt(nft)}; all three {fmt(all3)}")
PY
