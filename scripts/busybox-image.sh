#!/bin/sh
# Builds the local test image `netguard-busybox:test` (or $1) from busybox-static.
# No registry is reachable on the test machines, so the image is a `docker import` of a
# tarball holding one static busybox plus a symlink for every applet it provides.
# Idempotent: does nothing when the image already exists.
set -eu

IMAGE="${1:-netguard-busybox:test}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "image $IMAGE already present"
    exit 0
fi

BUSYBOX=""
for cand in /bin/busybox /usr/bin/busybox; do
    # Only the static build works in an image with no libc.
    if [ -x "$cand" ] && ! ldd "$cand" >/dev/null 2>&1; then
        BUSYBOX="$cand"
        break
    fi
done
if [ -z "$BUSYBOX" ]; then
    echo "error: no static busybox found (apt-get install busybox-static)" >&2
    exit 1
fi

WORK="$(mktemp -d /tmp/netguard-busybox.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/root/bin" "$WORK/root/tmp" "$WORK/root/etc" "$WORK/root/var/www"
cp "$BUSYBOX" "$WORK/root/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] && continue
    ln -sf busybox "$WORK/root/bin/$applet"
done
# ping needs a passwd/group for nothing, but some applets look names up; keep them minimal.
echo 'root:x:0:0:root:/:/bin/sh' >"$WORK/root/etc/passwd"
echo 'root:x:0:' >"$WORK/root/etc/group"
tar -C "$WORK/root" -cf "$WORK/rootfs.tar" .
docker import \
    --change 'ENV PATH=/bin' \
    --change 'CMD ["/bin/sh"]' \
    "$WORK/rootfs.tar" "$IMAGE" >/dev/null
echo "imported $IMAGE"
