#!/bin/sh
# Makes a working Docker engine and the test image available, as root. Idempotent.
#
# The CI machines may report "no docker engine", but the docker.io package from apt works
# when dockerd is started by hand (docs/architecture.md section 8), so this script does exactly that.
# Steps: install docker.io and busybox-static if missing (one apt-get update), start dockerd
# in the background when it is not answering (log: /tmp/netguard-dockerd.log), wait up to
# 60 s for `docker info`, then build `netguard-busybox:test` with scripts/busybox-image.sh.
set -eu

HERE="$(cd "$(dirname "$0")" && pwd)"
LOG=/tmp/netguard-dockerd.log
TIMEOUT=60

if [ "$(id -u)" != 0 ]; then
    echo "error: ensure-docker.sh must run as root" >&2
    exit 1
fi

missing=""
command -v dockerd >/dev/null 2>&1 || missing="$missing docker.io"
command -v docker >/dev/null 2>&1 || missing="$missing docker.io"
if ! dpkg -s busybox-static >/dev/null 2>&1; then
    missing="$missing busybox-static"
fi
if [ -n "$missing" ]; then
    echo "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    apt-get install -y -qq --no-install-recommends $missing
fi

if docker info >/dev/null 2>&1; then
    echo "dockerd already running"
else
    echo "starting dockerd (log: $LOG)"
    # setsid: detach from this shell's process group so the test harness cannot kill it
    # by accident; defaults otherwise (Docker 20.10 has no --ip6tables).
    setsid dockerd >>"$LOG" 2>&1 </dev/null &
    waited=0
    until docker info >/dev/null 2>&1; do
        if [ "$waited" -ge "$TIMEOUT" ]; then
            echo "error: dockerd did not answer within ${TIMEOUT}s; last log lines:" >&2
            tail -n 30 "$LOG" >&2 || true
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "dockerd up after ${waited}s"
fi

sh "$HERE/busybox-image.sh" netguard-busybox:test
