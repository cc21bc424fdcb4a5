#!/bin/sh
# Build the harness's Debian 12 guest from Debian packages only:
#   mmdebstrap -> rootfs dir -> ext4 (mkfs.ext4 -d, no loop mounts) -> qcow2,
# plus the cloud kernel and a tiny busybox initramfs for direct kernel boot.
# Usage: build.sh OUTDIR [MIRROR]. Skips the build when OUTDIR/manifest.json
# was made from the same inputs (their hash is recorded in it).
set -eu
out=$(mkdir -p "${1:?usage: build.sh OUTDIR [MIRROR]}" && cd "$1" && pwd)
mirror=${2:-http://deb.debian.org/debian}
here=$(cd "$(dirname "$0")" && pwd)
suite=bookworm

inputs_hash=$(cd "$here" && find . -type f ! -name '*~' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
if [ -f "$out/manifest.json" ] && grep -q "\"inputs_hash\": \"$inputs_hash\"" "$out/manifest.json"; then
    echo "debian image in $out is up to date (inputs $inputs_hash)"
    exit 0
fi
for tool in mmdebstrap mkfs.ext4 qemu-img cpio modprobe; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing; run scripts/setup-host first" >&2; exit 1; }
done

mkdir -p "$out"
work=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
root=$work/root
packages=$(grep -v '^#' "$here/packages" | grep -v '^$' | paste -sd, -)

mmdebstrap --variant=minbase --include="$packages" \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook="sync-in '$here/rootfs' /" \
    --customize-hook='chroot "$1" passwd -d root' \
    --customize-hook='rm -f "$1"/boot/initrd.img*' \
    --customize-hook='chroot "$1" dpkg-query -W -f "\${Package}=\${Version}\n" > "$1/etc/harness/packages.lock"' \
    "$suite" "$root" "$mirror"

kver=$(ls "$root/lib/modules")
# Initramfs: busybox plus virtio_pci/virtio_blk and their dependencies, in
# load order (ext4 is built into the cloud kernel).
init=$work/initramfs
mkdir -p "$init/bin" "$init/modules" "$init/dev" "$init/proc" "$init/sys"
cp "$root/bin/busybox" "$init/bin/busybox"
cp "$here/initramfs-init" "$init/init"
modprobe --dirname="$root" --set-version="$kver" --show-depends -a virtio_pci virtio_blk |
    awk '$1 == "insmod" && !seen[$2]++ {print $2}' | while read -r ko; do
        cp "$ko" "$init/modules/"
        basename "$ko" >> "$init/modules.load"
    done
(cd "$init" && find . | cpio -o -H newc --quiet | gzip -9) > "$work/initrd.img"
cp "$root/boot/vmlinuz-$kver" "$work/vmlinuz"

size_mb=$(( $(du -sm "$root" | cut -f1) + 512 ))
mkfs.ext4 -q -L harness-root -d "$root" "$work/rootfs.raw" "${size_mb}M"
qemu-img convert -O qcow2 "$work/rootfs.raw" "$work/disk.qcow2"
rm -f "$work/rootfs.raw"
chmod 0444 "$work/disk.qcow2"
cp "$root/etc/harness/packages.lock" "$work/packages.lock"

disk_sha=$(sha256sum "$work/disk.qcow2" | cut -d' ' -f1)
kernel_sha=$(sha256sum "$work/vmlinuz" | cut -d' ' -f1)
initrd_sha=$(sha256sum "$work/initrd.img" | cut -d' ' -f1)
cat > "$work/manifest.json" <<JSON
{
  "schema": 1,
  "guest_os": "linux",
  "distro": "debian-12",
  "arch": "x86_64",
  "boot": "kernel",
  "disk": "disk.qcow2",
  "kernel": "vmlinuz",
  "initrd": "initrd.img",
  "cmdline": "console=ttyS0,115200 root=/dev/vda rw net.ifnames=0 quiet loglevel=4 mitigations=off tsc=reliable no_timer_check",
  "kernel_release": "$kver",
  "disk_sha256": "$disk_sha",
  "kernel_sha256": "$kernel_sha",
  "initrd_sha256": "$initrd_sha",
  "inputs_hash": "$inputs_hash",
  "mirror": "$mirror",
  "built_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
JSON
rm -f "$out/disk.qcow2"
mv "$work/disk.qcow2" "$work/vmlinuz" "$work/initrd.img" "$work/packages.lock" "$out/"
mv "$work/manifest.json" "$out/manifest.json"
echo "debian image built in $out (kernel $kver, disk sha256 $disk_sha)"
