"""Bit-exact hash primitives of the kernel's IPVS schedulers (spec/ipvs.md §6.8-§6.12).

Owns: `hash_32` (include/linux/hash.h, multiplicative hashing with GOLDEN_RATIO_32), the
kernel's `hsiphash` of one 32-bit word as built on 64-bit machines (SipHash-1-3 with the
64-bit key words, output truncated to 32 bits; lib/siphash.c), a general SipHash-c-d used to
check it against the published SipHash-2-4 vector, and the address fold the hashing
schedulers apply to IPv4/IPv6 addresses.

Invariant: every function returns exactly the integer the kernel computes on a little-endian
64-bit host (x86-64, arm64), the machines directors run on.
Pure integer arithmetic; imports nothing from hactl.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

__all__ = [
    "GOLDEN_RATIO_32",
    "MH_HASH1_KEY",
    "MH_HASH2_KEY",
    "fold_addr",
    "hash_32",
    "hsiphash_u32",
    "siphash",
]

GOLDEN_RATIO_32 = 0x61C88647  # include/linux/hash.h

# ip_vs_mh.c generate_hash_secret(): both 64-bit key words of each key hold the same constant.
MH_HASH1_KEY = 2654435761  # 0x9E3779B1
MH_HASH2_KEY = 2654446892  # 0x9E37A52C

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF

# "somepseudorandomlygeneratedbytes", the SipHash initialisation constants.
_C0 = 0x736F6D6570736575
_C1 = 0x646F72616E646F6D
_C2 = 0x6C7967656E657261
_C3 = 0x7465646279746573


def hash_32(val: int, bits: int) -> int:
    """`hash_32(val, bits)`: the top `bits` bits of `val * GOLDEN_RATIO_32` modulo 2^32."""
    return ((val * GOLDEN_RATIO_32) & _M32) >> (32 - bits)


def fold_addr(addr: IPv4Address | IPv6Address) -> int:
    """The 32-bit value the hashing schedulers feed to their hash (spec §6.8).

    IPv4: the address as a host-order integer. IPv6: the XOR of its four 32-bit words (the
    kernel XORs the network-order words, then converts the result to host order, which is the
    same as XORing the host-order words).
    """
    value = int(addr)
    if addr.version == 4:
        return value
    return (value ^ (value >> 32) ^ (value >> 64) ^ (value >> 96)) & _M32


def _rounds(v0: int, v1: int, v2: int, v3: int, n: int) -> tuple[int, int, int, int]:
    for _ in range(n):
        v0 = (v0 + v1) & _M64
        v1 = ((v1 << 13) | (v1 >> 51)) & _M64
        v1 ^= v0
        v0 = ((v0 << 32) | (v0 >> 32)) & _M64
        v2 = (v2 + v3) & _M64
        v3 = ((v3 << 16) | (v3 >> 48)) & _M64
        v3 ^= v2
        v0 = (v0 + v3) & _M64
        v3 = ((v3 << 21) | (v3 >> 43)) & _M64
        v3 ^= v0
        v2 = (v2 + v1) & _M64
        v1 = ((v1 << 17) | (v1 >> 47)) & _M64
        v1 ^= v2
        v2 = ((v2 << 32) | (v2 >> 32)) & _M64
    return v0, v1, v2, v3


def siphash(k0: int, k1: int, data: bytes, *, c_rounds: int = 2, d_rounds: int = 4) -> int:
    """SipHash-c-d of `data` with the 64-bit key words `k0`, `k1`; the full 64-bit result.

    The message is read as little-endian 64-bit words, the last one padded with the length in
    its top byte (the reference algorithm; the kernel's implementation is the same).
    """
    v0, v1, v2, v3 = _C0 ^ k0, _C1 ^ k1, _C2 ^ k0, _C3 ^ k1
    length = len(data)
    full = length - (length % 8)
    for i in range(0, full, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, c_rounds)
        v0 ^= m
    b = ((length & 0xFF) << 56) | int.from_bytes(data[full:], "little")
    v3 ^= b
    v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, c_rounds)
    v0 ^= b
    v2 ^= 0xFF
    v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, d_rounds)
    return v0 ^ v1 ^ v2 ^ v3


def hsiphash_u32(key: int, value: int) -> int:
    """The kernel's `hsiphash(&value, 4, key)` on a 64-bit little-endian host.

    On 64-bit kernels hsiphash is SipHash-1-3 keyed with the two `unsigned long` key words
    (ip_vs_mh.c sets both to `key`), and the result is truncated to 32 bits. The 4-byte
    message is the in-memory (little-endian) image of the u32, so the single padded word is
    `4 << 56 | value`. Unrolled for speed: this runs once per mh lookup.
    """
    b = 0x0400000000000000 | (value & _M32)
    v0 = _C0 ^ key
    v1 = _C1 ^ key
    v2 = _C2 ^ key
    v3 = _C3 ^ key ^ b
    # one compression round
    v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, 1)
    v0 ^= b
    v2 ^= 0xFF
    v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, 3)
    return (v0 ^ v1 ^ v2 ^ v3) & _M32
