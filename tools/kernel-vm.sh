#!/usr/bin/env bash
# kernel-vm.sh: run one command inside a throw-away VM booted from the distribution's stock kernel
# (Debian's linux-image-amd64 ships the ip_vs modules), so that hactl's kernel backend can be
# tested on hosts whose own kernel has no IPVS.
#
# The guest sees the host's / read-only over 9p (cache=loose, so Python starts fast) and a
# writable results directory at the same path as on the host. /tmp and /var are copy-on-write
# overlays kept in guest RAM; lo is brought up (a namespace without any address makes IPVS
# reject destinations with EINVAL). The guest has no network card: tests build their own
# topologies with network namespaces and veth pairs.
#
# Usage: tools/kernel-vm.sh [-o OUTDIR] [-m MEM] [-t TIMEOUT_S] [-k KERNEL] [-q] [-c] -- cmd [args...]
#   -o DIR   results directory shared read-write with the guest (default: a new temporary one)
#   -m MEM   guest memory (default 1G)
#   -t SEC   wall-clock limit for the whole VM run (default 900)
#   -k VER   kernel release under /lib/modules (default: the newest *-amd64)
#   -q       do not copy the guest console to stdout (it is always kept in DIR/console.log)
#   -c       only check the prerequisites and print the kernel release that would be booted
#
# Exit status: the command's own; 77 when a prerequisite is missing (nothing was started);
# 125 when the VM did not come up far enough to run the command; 124 when the command was
# started but did not finish within the limit.
#
# Installs nothing: tools/kernel-vm-setup.sh installs the packages it needs.
# Under TCG (software emulation) a boot takes about 8 s. KVM is used only when asked for with
# HACTL_VM_ACCEL=kvm, because nested paravirtual KVM hosts hang right after the real-mode setup.
set -euo pipefail

OUTD=""; MEM=${HACTL_VM_MEM:-1G}; TMO=${HACTL_VM_TIMEOUT:-900}; K=${HACTL_VM_KERNEL:-}
QUIET=0; CHECK_ONLY=0; ACCEL=${HACTL_VM_ACCEL:-tcg}
while getopts "o:m:t:k:qc" opt; do
    case $opt in
        o) OUTD=$OPTARG ;; m) MEM=$OPTARG ;; t) TMO=$OPTARG ;; k) K=$OPTARG ;;
        q) QUIET=1 ;; c) CHECK_ONLY=1 ;; *) exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
if [ "$CHECK_ONLY" = 0 ] && [ $# -eq 0 ]; then
    echo "usage: $0 [-o dir] [-m mem] [-t seconds] [-k release] [-q] -- command [args...]" >&2
    exit 2
fi

missing() { echo "kernel-vm: $* (tools/kernel-vm-setup.sh installs what is needed)" >&2; exit 77; }

command -v qemu-system-x86_64 >/dev/null || missing "qemu-system-x86_64 not found (package qemu-system-x86)"
command -v cpio >/dev/null || missing "cpio not found"
command -v modprobe >/dev/null || missing "modprobe not found (package kmod)"
[ -x /bin/busybox ] || missing "/bin/busybox not found (package busybox-static)"
if LC_ALL=C ldd /bin/busybox >/dev/null 2>&1; then
    missing "/bin/busybox is dynamically linked; the initramfs needs busybox-static"
fi
if [ -z "$K" ]; then
    K=$(ls /lib/modules 2>/dev/null | grep -E -- '-amd64$' | sort -V | tail -n 1 || true)
fi
[ -n "$K" ] || missing "no distribution kernel under /lib/modules (package linux-image-amd64)"
[ -r "/boot/vmlinuz-$K" ] || missing "/boot/vmlinuz-$K is missing or unreadable"
ls "/lib/modules/$K/kernel/net/netfilter/ipvs/"ip_vs.ko* >/dev/null 2>&1 ||
    missing "kernel $K has no ip_vs module"
if [ "$CHECK_ONLY" = 1 ]; then
    echo "$K"
    exit 0
fi

if [ -z "$OUTD" ]; then
    OUTD=$(mktemp -d -t hactl-kernel-vm.XXXXXX)
fi
mkdir -p "$OUTD"
OUTD=$(realpath "$OUTD")
rm -f "$OUTD/vm-rc" "$OUTD/vm-started" "$OUTD/vm-cmd.sh" "$OUTD/console.log"

# --------------------------------------------------------------------------------------------
# The initramfs: busybox plus the virtio/9p modules, in dependency order. Cached per kernel
# release and per version of this script (its checksum), so editing the init rebuilds it.
read -r -d '' GUEST_INIT <<'INIT' || true
#!/bin/sh
mount -t proc proc /proc
mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do insmod "/modules/$m"; done
if ! mount -t 9p -o trans=virtio,version=9p2000.L,cache=loose,msize=512000,ro hostroot /newroot; then
    echo "kernel-vm: mounting the host root over 9p failed"
    poweroff -f
fi
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mount -t tmpfs run /newroot/run
cp /stage2.sh /newroot/run/stage2.sh
CMDLINE=$(cat /proc/cmdline)
umount /proc
exec switch_root /newroot /bin/bash /run/stage2.sh $CMDLINE
INIT

read -r -d '' GUEST_STAGE2 <<'STAGE2' || true
#!/bin/bash
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp
for arg in "$@"; do
    case $arg in hactl_vmout=*) VMOUT=${arg#hactl_vmout=} ;; esac
done
mount -t proc proc /proc
mkdir -p /run/lock /run/netns /run/ovl
ip link set lo up
modprobe overlay
for d in /tmp /var; do
    mkdir -p "/run/ovl$d/u" "/run/ovl$d/w"
    mount -t overlay ovl -o "lowerdir=$d,upperdir=/run/ovl$d/u,workdir=/run/ovl$d/w" "$d"
done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 out "$VMOUT"
cat /proc/uptime > "$VMOUT/vm-started"
bash "$VMOUT/vm-cmd.sh"
rc=$?
echo "$rc" > "$VMOUT/vm-rc"
echo "kernel-vm: command exited with status $rc"
sync
echo o > /proc/sysrq-trigger
sleep 10
STAGE2

CACHE=${HACTL_VM_CACHE:-/var/tmp/hactl-kernel-vm}
SUM=$(printf '%s\n%s\n' "$GUEST_INIT" "$GUEST_STAGE2" | cksum | cut -d' ' -f1)
INITRD="$CACHE/initrd-$K-$SUM.gz"
if [ ! -s "$INITRD" ]; then
    mkdir -p "$CACHE"
    W=$(mktemp -d)
    trap 'rm -rf "$W"' EXIT
    mkdir -p "$W"/{bin,proc,sys,dev,newroot,modules}
    cp /bin/busybox "$W/bin/busybox"
    for a in sh mount umount insmod switch_root mkdir cat cp poweroff; do ln -s busybox "$W/bin/$a"; done
    for f in $(for m in virtio_pci 9pnet_virtio 9p; do
                   modprobe -S "$K" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
               done | awk '!seen[$0]++'); do
        b=$(basename "$f"); b=${b%.xz}; b=${b%.zst}; b=${b%.gz}
        case $f in
            *.ko) cp "$f" "$W/modules/$b" ;;
            *.xz) xz -dc "$f" > "$W/modules/$b" ;;
            *.zst) zstd -qdc "$f" > "$W/modules/$b" ;;
            *.gz) gzip -dc "$f" > "$W/modules/$b" ;;
        esac
        echo "$b" >> "$W/modules/order"
    done
    printf '%s\n' "$GUEST_INIT" > "$W/init"
    printf '%s\n' "$GUEST_STAGE2" > "$W/stage2.sh"
    chmod +x "$W/init" "$W/stage2.sh"
    (cd "$W" && find . | cpio -o -H newc --quiet | gzip -1) > "$INITRD.tmp.$$"
    mv "$INITRD.tmp.$$" "$INITRD"
fi

# The command, run from the caller's working directory (the same path exists in the guest).
{
    printf 'cd %q || exit 99\n' "$PWD"
    printf 'exec'
    printf ' %q' "$@"
    echo
} > "$OUTD/vm-cmd.sh"

SMP=$(nproc)
[ "$SMP" -gt 4 ] && SMP=4
if [ "$ACCEL" = tcg ]; then
    ACCEL_OPTS=(-accel tcg,thread=multi -cpu qemu64)   # qemu64 is the fastest model under TCG
else
    ACCEL_OPTS=(-accel "$ACCEL" -cpu host)
fi
# qemu re-opens its stdout: a plain file redirect would be overwritten from offset 0, so the
# console always goes through a pipe.
console_sink() { if [ "$QUIET" = 1 ]; then cat > "$OUTD/console.log"; else tee "$OUTD/console.log"; fi; }
timeout --kill-after=10 "$TMO" qemu-system-x86_64 "${ACCEL_OPTS[@]}" -smp "$SMP" -m "$MEM" \
    -nodefaults -no-user-config -display none -serial stdio -no-reboot \
    -kernel "/boot/vmlinuz-$K" -initrd "$INITRD" \
    -append "console=ttyS0 quiet panic=-1 hactl_vmout=$OUTD" \
    -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
    -fsdev local,id=out,path="$OUTD",security_model=none \
    -device virtio-9p-pci,fsdev=out,mount_tag=out </dev/null 2>&1 | console_sink || true

if [ -s "$OUTD/vm-rc" ]; then
    exit "$(cat "$OUTD/vm-rc")"
fi
if [ -e "$OUTD/vm-started" ]; then
    echo "kernel-vm: the command did not finish within ${TMO}s" >&2
    exit 124
fi
echo "kernel-vm: the VM did not come up (console in $OUTD/console.log)" >&2
exit 125
