#!/usr/bin/env bash
# Sets up everything hactl needs on a fresh Debian machine with Python >= 3.11:
# Debian packages (when root, or via sudo), a virtual environment in .venv, and hactl
# installed into it in editable mode. Safe to run again; it only installs what is missing.
# Usage: tools/setup.sh [runtime|test]   (sourced or executed)
set -euo pipefail
HACTL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
profile="${1:-test}"

say() { printf '[setup] %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else return 1
    fi
}

# Debian packages: iproute2 always; for the test suite also the reference peers and tools.
debs=(iproute2 python3-venv)
if [ "$profile" = test ]; then
    debs+=(keepalived tshark nftables procps)
fi
missing=()
for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian packages: ${missing[*]}"
    if ! { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
           as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
               "${missing[@]}" >/dev/null; }; then
        say "could not install ${missing[*]} (not root and no sudo?); tests that need them will skip"
    fi
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
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$HACTL_ROOT$extra"
    touch "$stamp"
fi
