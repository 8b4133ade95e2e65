# Shell helpers shared by the setup scripts (sourced, not executed).

# as_root CMD...: run CMD as root (directly, or through non-interactive sudo).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else return 1
    fi
}

# install_debs TAG PACKAGE...: install the Debian packages that are not installed yet.
# Returns non-zero (after saying why) when they are needed but cannot be installed.
install_debs() {
    local tag="$1"; shift
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "[$tag] apt-get not found; cannot install ${missing[*]}" >&2; return 1
    fi
    echo "[$tag] installing Debian packages: ${missing[*]}" >&2
    if ! { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
           as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
               --no-install-recommends "${missing[@]}" >/dev/null; }; then
        echo "[$tag] could not install ${missing[*]} (needs root or sudo)" >&2; return 1
    fi
}
