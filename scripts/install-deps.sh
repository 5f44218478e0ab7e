#!/usr/bin/env bash
# Installs the system packages netguard's tests and main job need, only when missing.
set -euo pipefail
need=()
command -v nft >/dev/null || need+=(nftables)
[ -e /usr/lib/x86_64-linux-gnu/libnftables.so.1 ] || ls /usr/lib/*/libnftables.so.1 >/dev/null 2>&1 || need+=(libnftables1)
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v dockerd >/dev/null || need+=(docker.io)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx nc || need+=(busybox-static)
command -v nsenter >/dev/null || need+=(util-linux)   # tests/docker_edges.rs: its dockerds in netns
command -v conntrack >/dev/null || need+=(conntrack)
command -v prlimit >/dev/null || need+=(util-linux)   # tests/daemon_faults: descriptors exhausted
command -v iperf3 >/dev/null || need+=(iperf3)
command -v iptables-restore >/dev/null || need+=(iptables)   # the bench's Docker-host baseline
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v dot >/dev/null || need+=(graphviz)   # `graph --format svg`
command -v g++ >/dev/null || need+=(g++)   # libFuzzer, built by the fuzz targets (scripts/fuzz.sh)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The Debian package's builder (scripts/build-deb.sh, tests/deb_package.rs), from crates.io;
# pinned, because its behaviour for the test's dev-profile package may change.
if ! cargo-deb --version 2>/dev/null | grep -qx 'cargo-deb 3.8.0'; then
  echo "installing: cargo-deb 3.8.0"
  cargo install cargo-deb --version 3.8.0 --locked --force
fi
# The fuzz targets' builder and runner (scripts/fuzz.sh, run by scripts/test.sh).
if ! cargo fuzz --version 2>/dev/null | grep -qx 'cargo-fuzz 0.13.2'; then
  echo "installing: cargo-fuzz 0.13.2"
  cargo install cargo-fuzz --version 0.13.2 --locked --force
fi
