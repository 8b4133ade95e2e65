#!/usr/bin/env bash
# Sets up everything hactl needs on a fresh Debian machine with Python >= 3.11:
# Debian packages (when root, or via sudo), a virtual environment in .venv, and hactl
# installed into it in editable mode. Safe to run again; it only installs what is missing.
# Usage: tools/setup.sh [runtime|test|bench]   (sourced or executed)
# bench: what the scripts in bench/ run against (wrk, nginx and haproxy for the data plane,
# keepalived for the configuration and VRRP peers) and hactl with the `fast` extra.
set -euo pipefail
HACTL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
profile="${1:-test}"

say() { printf '[setup] %s\n' "$*" >&2; }
. "$HACTL_ROOT/tools/lib/debs.sh"

# Debian packages: iproute2 always; for the test suite also the reference peers and tools.
debs=(iproute2 python3-venv)
if [ "$profile" = test ]; then
    debs+=(keepalived tshark nftables procps chromium)
fi
if [ "$profile" = bench ]; then
    debs+=(wrk nginx haproxy keepalived nftables)
fi
install_debs setup "${debs[@]}" || say "tests that need the missing packages will skip"
if [ "$profile" = test ]; then
    # What tools/kernel-vm.sh needs to boot Debian's kernel (with IPVS) for tests/kernel.
    bash "$HACTL_ROOT/tools/kernel-vm-setup.sh" || say "kernel tests will skip"
fi

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "hactl needs Python >= 3.11; $("$PY" --version 2>&1) found"; exit 1
fi
venv="$HACTL_ROOT/.venv"
if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    "$PY" -m venv "$venv"
fi
stamp="$venv/.hactl-$profile-$(cksum < "$HACTL_ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
    say "installing hactl ($profile) into the virtual environment"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
    extra=""
    [ "$profile" = test ] && extra="[test]"
    [ "$profile" = bench ] && extra="[fast]"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$HACTL_ROOT$extra"
    touch "$stamp"
fi
