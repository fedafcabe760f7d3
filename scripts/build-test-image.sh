#!/usr/bin/env bash
# Build the lavamq QEMU test image from Debian packages, without installing them:
#   images/vmlinuz              Debian cloud kernel (linux-image-cloud-amd64's versioned dependency)
#   images/initramfs.cpio.gz    busybox-static + scripts/initramfs/init + the virtio modules
#   images/SHA256SUMS           checksums of both
# The packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x`
# into images/cache/. Re-running is cheap: nothing is rebuilt when the kernel
# version, the busybox version and the init script are unchanged.
#
# Environment: IMAGES_DIR (default <repo>/images), KERNEL_META (default
# linux-image-cloud-amd64), FORCE=1 rebuilds.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${IMAGES_DIR:-$ROOT/images}"
CACHE="$OUT/cache"
KERNEL_META="${KERNEL_META:-linux-image-cloud-amd64}"
INIT="$ROOT/scripts/initramfs/init"
# Load order matters: insmod does not resolve dependencies.
MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net"

log() { printf 'build-test-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in apt-get apt-cache dpkg-deb cpio gzip sha256sum; do
    command -v "$tool" >/dev/null || die "'$tool' is missing (needed to build the test image)"
done

mkdir -p "$CACHE"

# The meta package only depends on the versioned kernel package; take that name.
resolve_kernel() {
    apt-cache depends "$KERNEL_META" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}
kernel_pkg="$(resolve_kernel)"
if [ -z "$kernel_pkg" ] && [ "$(id -u)" = 0 ]; then
    log "apt lists do not know $KERNEL_META: running apt-get update"
    apt-get update -qq >&2 || true
    kernel_pkg="$(resolve_kernel)"
fi
[ -n "$kernel_pkg" ] || die "cannot resolve the kernel package behind $KERNEL_META (run apt-get update?)"
kernel_ver="$(apt-cache policy "$kernel_pkg" | awk '/Candidate:/ {print $2}')"
busybox_ver="$(apt-cache policy busybox-static | awk '/Candidate:/ {print $2}')"
[ -n "$busybox_ver" ] && [ "$busybox_ver" != "(none)" ] || die "busybox-static is not known to apt"

stamp="$kernel_pkg=$kernel_ver busybox-static=$busybox_ver init=$(sha256sum "$INIT" | cut -d' ' -f1) modules=$MODULES"
if [ "${FORCE:-0}" != 1 ] && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initramfs.cpio.gz" ] \
    && [ -f "$OUT/.stamp" ] && [ "$(cat "$OUT/.stamp")" = "$stamp" ]; then
    log "up to date ($kernel_pkg $kernel_ver, busybox $busybox_ver)"
    exit 0
fi

fetch() {  # fetch PACKAGE -> path of the .deb in the cache
    local pkg="$1" deb
    deb="$(find "$CACHE" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n1)"
    local want_ver="$2"
    if [ -z "$deb" ] || [ "$(dpkg-deb -f "$deb" Version)" != "$want_ver" ]; then
        rm -f "$CACHE/${pkg}"_*.deb
        log "downloading $pkg $want_ver"
        # _apt cannot write into root-owned dirs; download in a world-writable temp dir.
        local tmp
        tmp="$(mktemp -d)"
        chmod 777 "$tmp"
        (cd "$tmp" && apt-get download -q "$pkg=$want_ver" >&2) || die "apt-get download $pkg failed"
        mv "$tmp"/*.deb "$CACHE/"
        rmdir "$tmp"
        deb="$(find "$CACHE" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n1)"
    fi
    printf '%s\n' "$deb"
}

kernel_deb="$(fetch "$kernel_pkg" "$kernel_ver")"
busybox_deb="$(fetch busybox-static "$busybox_ver")"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$kernel_deb" "$work/kernel"
dpkg-deb -x "$busybox_deb" "$work/busybox"

vmlinuz="$(find "$work/kernel/boot" -name 'vmlinuz-*' | head -n1)"
[ -n "$vmlinuz" ] || die "no vmlinuz in $kernel_deb"
moddir="$(find "$work/kernel/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n1)"
[ -n "$moddir" ] || die "no modules in $kernel_deb"

root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/profile.d,etc/lavamq/rc.d,proc,sys,dev,tmp,root,run,lib/modules/lavamq}
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
install -m 0755 "$INIT" "$root/init"

: > "$root/lib/modules/lavamq/load-order"
for mod in $MODULES; do
    src="$(find "$moddir" -name "$mod.ko" -o -name "$mod.ko.xz" -o -name "$mod.ko.zst" | head -n1)"
    [ -n "$src" ] || die "module $mod not found in $kernel_pkg"
    case "$src" in
        *.ko.xz) xz -dc "$src" > "$root/lib/modules/lavamq/$mod.ko" ;;
        *.ko.zst) zstd -dc "$src" > "$root/lib/modules/lavamq/$mod.ko" ;;
        *) cp "$src" "$root/lib/modules/lavamq/$mod.ko" ;;
    esac
    echo "$mod" >> "$root/lib/modules/lavamq/load-order"
done
printf '%s\n' "$(basename "$moddir")" > "$root/lib/modules/lavamq/kernel-release"

# /dev/console lets the kernel give /init a stdout before devtmpfs is mounted
# (mknod needs root; without it /init still logs to /dev/ttyS0 once mounted).
mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true
(cd "$root" && find . -print0 | LC_ALL=C sort -z \
    | cpio --null -o -H newc --owner=0:0 --quiet) > "$work/initramfs.cpio"
gzip -9 -n < "$work/initramfs.cpio" > "$work/initramfs.cpio.gz"

cp "$vmlinuz" "$OUT/vmlinuz.new"
cp "$work/initramfs.cpio.gz" "$OUT/initramfs.cpio.gz.new"
mv "$OUT/vmlinuz.new" "$OUT/vmlinuz"
mv "$OUT/initramfs.cpio.gz.new" "$OUT/initramfs.cpio.gz"
(cd "$OUT" && sha256sum vmlinuz initramfs.cpio.gz > SHA256SUMS)
printf '%s\n' "$stamp" > "$OUT/.stamp"
log "built $OUT/vmlinuz ($kernel_pkg $kernel_ver) and $OUT/initramfs.cpio.gz (busybox $busybox_ver)"
