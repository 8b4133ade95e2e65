"""The kernel hash primitives the hashing schedulers use (spec/ipvs.md §6.8-§6.11)."""

from __future__ import annotations

from ipaddress import ip_address

from hypothesis import given
from hypothesis import strategies as st

from hactl.ipvs.hashing import (
    GOLDEN_RATIO_32,
    MH_HASH1_KEY,
    MH_HASH2_KEY,
    fold_addr,
    hash_32,
    hsiphash_u32,
    siphash,
)


def test_hash_32_is_the_top_bits_of_the_golden_ratio_product() -> None:
    assert GOLDEN_RATIO_32 == 0x61C88647
    assert hash_32(0, 8) == 0
    assert hash_32(1, 8) == 0x61
    assert hash_32(1, 32) == 0x61C88647
    # 0x0A000001 * 0x61C88647 = 0x27C88647 (mod 2^32), worked by hand in test_schedulers
    assert hash_32(0x0A000001, 8) == 0x27
    assert hash_32(0x0A000001, 10) == 0x27C88647 >> 22
    assert hash_32(0xFFFFFFFF, 8) == ((0xFFFFFFFF * 0x61C88647) & 0xFFFFFFFF) >> 24


def test_fold_addr() -> None:
    assert fold_addr(ip_address("10.0.0.1")) == 0x0A000001
    assert fold_addr(ip_address("2001:db8::1")) == 0x20010DB9
    assert fold_addr(ip_address("2001:db8:1:2:3:4:5:6")) == (
        0x20010DB8 ^ 0x00010002 ^ 0x00030004 ^ 0x00050006
    )


def test_siphash_2_4_reference_vector() -> None:
    # The SipHash paper's test vector: key 00..0f, message 00..0e.
    k0 = int.from_bytes(bytes(range(8)), "little")
    k1 = int.from_bytes(bytes(range(8, 16)), "little")
    assert siphash(k0, k1, bytes(range(15))) == 0xA129CA6149BE45E5
    assert siphash(k0, k1, b"") == 0x726FDB47DD0E0E31  # first entry of the reference table


def test_hsiphash_vectors_of_the_spec() -> None:
    # §6.10: H(key, v) for the two Maglev keys
    assert hsiphash_u32(MH_HASH1_KEY, 0) == 0x1D5A77C2
    assert hsiphash_u32(MH_HASH2_KEY, 0) == 0xF882433F
    assert hsiphash_u32(MH_HASH1_KEY, 0x0A000001) == 0x03080CE4
    assert hsiphash_u32(MH_HASH1_KEY, 0x0A000051) == 0x439C0CBE
    # dest 10.0.1.1:80 => offset 1011, skip 1586 with M = 4093; client 192.168.0.10 => 2524
    v = 80 + 0x0A000101
    assert hsiphash_u32(MH_HASH1_KEY, v) % 4093 == 1011
    assert hsiphash_u32(MH_HASH2_KEY, v) % 4092 + 1 == 1586
    assert hsiphash_u32(MH_HASH1_KEY, 0xC0A8000A) % 4093 == 2524


@given(key=st.integers(0, 2**64 - 1), value=st.integers(0, 2**32 - 1))
def test_hsiphash_is_siphash_1_3_of_the_le32_truncated(key: int, value: int) -> None:
    expected = siphash(key, key, value.to_bytes(4, "little"), c_rounds=1, d_rounds=3)
    assert hsiphash_u32(key, value) == expected & 0xFFFFFFFF
