#!/usr/bin/env bash
# Builds the Debian package with cargo-deb: target/debian/netguard_<version>_<arch>.deb.
# Installs cargo-deb (from crates.io) when it is missing. Release build by default.
#
#   scripts/build-deb.sh                      # release build, then the package
#   NETGUARD_DEB_PROFILE=dev NETGUARD_BIN=target/debug/netguard scripts/build-deb.sh
#                                             # package an existing build of that profile
#                                             # (the test suite does this: no second build)
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${NETGUARD_DEB_PROFILE:-release}
command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --version 3.8.0 --locked

args=(--locked --profile "$profile")
if [ -n "${NETGUARD_BIN:-}" ]; then
    bin=$NETGUARD_BIN
    args+=(--no-build --fast)
else
    cargo build --locked --profile "$profile" --bin netguard
    dir=$profile
    [ "$profile" = dev ] && dir=debug
    bin=${CARGO_TARGET_DIR:-target}/$dir/netguard
fi

# Generated from the binary and the repository, so they always describe this build.
assets=target/debian-assets
rm -rf "$assets"
mkdir -p "$assets"
sed 's#^ExecStart=/usr/local/bin/netguard #ExecStart=/usr/bin/netguard #' \
    systemd/netguard.service > "$assets/netguard.service"
grep -q '^ExecStart=/usr/bin/netguard ' "$assets/netguard.service" \
    || { echo "build-deb.sh: ExecStart of systemd/netguard.service not rewritten" >&2; exit 1; }
"$bin" man | gzip -9n > "$assets/netguard.1.gz"
"$bin" completions bash > "$assets/netguard.bash"
"$bin" completions zsh > "$assets/_netguard"
"$bin" completions fish > "$assets/netguard.fish"

cargo deb "${args[@]}"
ls -1 target/debian/*.deb
