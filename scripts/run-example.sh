#!/usr/bin/env bash
# netguard's main job, as a demonstration on this Docker host (as root):
#   1. starts the containers of policy.example.toml's web shop (web, api, db, cache,
#      monitoring, and one container in no group) from the local busybox image, on two demo
#      networks;
#   2. shows `netguard diff`: what the first rollout will cut;
#   3. applies the policy;
#   4. runs `netguard verify`, which sends real packets between the containers and prints
#      the who-can-reach-whom matrix as measured, compared with the policy.
# `scripts/run-example.sh --down` removes it all (containers, networks, image tags, and
# netguard's tables with `netguard uninstall`).
#
# It touches nothing else on the host: every container, network and image tag it makes is
# named `ngdemo-…` (or tagged `…-ngdemo`), and the policy it applies is policy.example.toml
# with its networks renamed to the demo's (`shop-*` → `ngdemo-shop-*`), so the host's own
# networks stay unmanaged. It refuses to run where netguard's tables already exist (they
# would be someone's real policy).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/run-example.sh: run as root" >&2; exit 2; }

P=ngdemo
FRONT=$P-shop-front
BACK=$P-shop-back
IMAGE=netguard-busybox:test
PG_IMAGE=postgres-$P:16      # matches the example's  image = "postgres*"
REDIS_IMAGE=redis:7-$P       # matches the example's  image = "redis:7*"
DIR=target/$P
POLICY=$DIR/policy.toml
MARK=$DIR/installed          # this script applied netguard's tables
# NETGUARD_BIN: an already built binary (no release build).
ng=${NETGUARD_BIN:-target/release/netguard}

down() {
    local ids
    ids=$(docker ps -aq --filter "name=^$P-" 2>/dev/null || true)
    # shellcheck disable=SC2086 # one id per word
    [ -z "$ids" ] || docker rm -f $ids >/dev/null
    for n in "$FRONT" "$BACK"; do
        docker network rm "$n" >/dev/null 2>&1 || true
    done
    for i in "$PG_IMAGE" "$REDIS_IMAGE"; do
        docker rmi "$i" >/dev/null 2>&1 || true
    done
    if [ -e "$MARK" ] && [ -x "$ng" ]; then
        "$ng" -c "$POLICY" uninstall
    fi
    rm -rf "$DIR"
}

if [ "${1:-}" = "--down" ]; then
    down
    echo "demo removed: no $P-* containers or networks, netguard's tables gone"
    exit 0
fi
[ $# -eq 0 ] || { echo "usage: scripts/run-example.sh [--down]" >&2; exit 2; }

scripts/install-deps.sh
scripts/ensure-docker.sh
[ -n "${NETGUARD_BIN:-}" ] || cargo build --release --locked
$ng -c policy.example.toml check

if nft list table inet netguard >/dev/null 2>&1 && [ ! -e "$MARK" ]; then
    echo "netguard's tables already exist on this host (a real policy?): the demo would replace them." >&2
    echo "Remove them first with 'netguard uninstall' if they are not needed." >&2
    exit 2
fi

# A rerun starts from scratch.
down
mkdir -p "$DIR"
sed 's/"shop-/"'"$P"'-shop-/g' policy.example.toml > "$POLICY"
$ng -c "$POLICY" check

docker network create "$FRONT" >/dev/null
docker network create "$BACK" >/dev/null
docker tag "$IMAGE" "$PG_IMAGE"
docker tag "$IMAGE" "$REDIS_IMAGE"
run() { # NAME NETWORK IMAGE [docker run options...]
    local name=$1 net=$2 image=$3
    shift 3
    docker run -d --name "$P-$name" --network "$net" "$@" "$image" sleep 86400 >/dev/null
}
run web "$FRONT" "$IMAGE" --label role=web
run api "$FRONT" "$IMAGE" --label com.docker.compose.service=api
run monitoring "$FRONT" "$IMAGE" --label prometheus.io/server=true
run nogroup "$FRONT" "$IMAGE"
run db "$BACK" "$PG_IMAGE"
run cache "$BACK" "$REDIS_IMAGE"
docker network connect "$BACK" "$P-api"
docker network connect "$BACK" "$P-monitoring"

echo
echo "== Demo containers, from $IMAGE:"
echo "   $FRONT: $P-web (web), $P-api (api), $P-monitoring (monitoring), $P-nogroup (no group)"
echo "   $BACK:  $P-api, $P-db (db), $P-cache (cache), $P-monitoring"
echo
echo "== netguard diff: what the rollout changes"
rc=0; $ng -c "$POLICY" diff || rc=$?
[ "$rc" -le 1 ] || exit "$rc"
echo
echo "== netguard apply"
touch "$MARK"
$ng -c "$POLICY" apply
echo
echo "== netguard verify: real packets between the containers, compared with the policy"
rc=0; $ng -c "$POLICY" verify --sample 0 || rc=$?
echo
if [ "$rc" = 0 ]; then
    echo "netguard is enforcing $POLICY (policy.example.toml on the demo networks): every probe matched."
else
    echo "verify exited $rc: the kernel does not do what the policy says (see above)."
fi
echo "Try: $ng -c $POLICY explain $P-web $P-db 5432/tcp"
echo "Remove it all: scripts/run-example.sh --down"
exit "$rc"
