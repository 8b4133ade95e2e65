#!/usr/bin/env bash
# kernel-vm-setup.sh: install what tools/kernel-vm.sh needs to boot a kernel with IPVS under
# qemu (Debian/Ubuntu, as root or with sudo). Safe to run again: it installs only what is
# missing. About 40 packages and 90 MB to download on a fresh machine.
set -euo pipefail

debs=(qemu-system-x86 linux-image-amd64 busybox-static ipvsadm cpio kmod iproute2 tcpdump
      xz-utils zstd)

. "$(dirname "${BASH_SOURCE[0]}")/lib/debs.sh"
install_debs kernel-vm-setup "${debs[@]}"
