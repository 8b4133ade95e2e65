"""Codec tests: keepalived 2.2.7 captures (spec §3) both ways, truncation, checks, fuzz."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hactl.errors import VrrpDecodeError
from hactl.vrrp.model import AuthType
from hactl.vrrp.packet import (
    Advertisement,
    AhParams,
    DropReason,
    ReceivePolicy,
    decode,
    decode_ipv4,
    encode,
    encode_ipv4,
    internet_checksum,
    peek_vrid,
)


def frame(dump: str) -> bytes:
    """tcpdump -xx text (offsets stripped) -> bytes."""
    return bytes.fromhex("".join(line.split(":", 1)[1] for line in dump.strip().splitlines()))


VIPS4 = (IPv4Address("10.200.0.100"), IPv4Address("10.200.0.101"))
SRC4 = IPv4Address("10.200.0.1")
MCAST4 = IPv4Address("224.0.0.18")

# spec §3.1
V2_PLAIN = frame("""
0x0000:  0100 5e00 0012 0200 0000 0001 0800 45c0
0x0010:  002c 0001 0000 ff70 cfc5 0ac8 0001 e000
0x0020:  0012 2133 6402 0001 6470 0ac8 0064 0ac8
0x0030:  0065 0000 0000 0000 0000
""")
# spec §3.2
V3_IPV4 = frame("""
0x0000:  0100 5e00 0012 0200 0000 0001 0800 45c0
0x0010:  0024 0001 0000 ff70 cfcd 0ac8 0001 e000
0x0020:  0012 3133 6402 0064 68b1 0ac8 0064 0ac8
0x0030:  0065
""")
# spec §3.3
V3_IPV6 = frame("""
0x0000:  3333 0000 0012 0200 0000 0001 86dd 6c08
0x0010:  9ed9 0028 70ff fe80 0000 0000 0000 0000
0x0020:  00ff fe00 0001 ff02 0000 0000 0000 0000
0x0030:  0000 0000 0012 3133 6402 0064 6e63 fe80
0x0040:  0000 0000 0000 0000 0000 0001 0051 fd00
0x0050:  0200 0000 0000 0000 0000 0000 0100
""")
# spec §3.4
V2_PASS = frame("""
0x0000:  0100 5e00 0012 0200 0000 0001 0800 45c0
0x0010:  002c 0001 0000 ff70 cfc5 0ac8 0001 e000
0x0020:  0012 2133 6402 0101 f5f1 0ac8 0064 0ac8
0x0030:  0065 7365 6372 6574 3132
""")
# spec §3.5
V2_AH = frame("""
0x0000:  0100 5e00 0012 0200 0000 0001 0800 45c0
0x0010:  0044 0001 0000 ff33 cfea 0ac8 0001 e000
0x0020:  0012 7004 0000 0ac8 0001 0000 0001 3f89
0x0030:  9a4b 9c33 8b3c f62b 2d46 2133 6402 0201
0x0040:  6270 0ac8 0064 0ac8 0065 0000 0000 0000
0x0050:  0000
""")

IPV4_CASES = [
    # (name, ip datagram, advertisement, ah params)
    (
        "v2",
        V2_PLAIN[14:],
        Advertisement(
            version=2,
            vrid=51,
            priority=100,
            adver_int_cs=100,
            addresses=VIPS4,
            auth_data=b"\0" * 8,
        ),
        None,
    ),
    (
        "v3",
        V3_IPV4[14:],
        Advertisement(version=3, vrid=51, priority=100, adver_int_cs=100, addresses=VIPS4),
        None,
    ),
    (
        "v2-pass",
        V2_PASS[14:],
        Advertisement(
            version=2,
            vrid=51,
            priority=100,
            adver_int_cs=100,
            addresses=VIPS4,
            auth_type=AuthType.PASS,
            auth_data=b"secret12",
        ),
        None,
    ),
    (
        "v2-ah",
        V2_AH[14:],
        Advertisement(
            version=2,
            vrid=51,
            priority=100,
            adver_int_cs=100,
            addresses=VIPS4,
            auth_type=AuthType.AH,
            auth_data=b"\0" * 8,
        ),
        AhParams(key=b"secret12", seq=1),
    ),
]


@pytest.mark.parametrize(
    ("name", "datagram", "adv", "ah"), IPV4_CASES, ids=[c[0] for c in IPV4_CASES]
)
def test_ipv4_capture_decodes_and_reencodes(
    name: str, datagram: bytes, adv: Advertisement, ah: AhParams | None
) -> None:
    policy = ReceivePolicy(
        version=adv.version,
        adver_int_cs=100,
        auth_type=adv.auth_type,
        auth_key=b"secret12" if adv.auth_type else b"",
        addresses=frozenset(VIPS4),
    )
    received = decode_ipv4(datagram, policy=policy)
    assert received.advertisement == adv
    assert (received.src, received.dst, received.ttl) == (SRC4, MCAST4, 255)
    assert received.ah_seq == (1 if ah else None)
    assert encode_ipv4(adv, src=SRC4, dst=MCAST4, ident=1, ah=ah) == datagram


def test_ipv6_capture_both_ways() -> None:
    src, dst = IPv6Address("fe80::ff:fe00:1"), IPv6Address("ff02::12")
    message = V3_IPV6[54:]
    adv = Advertisement(
        version=3,
        vrid=51,
        priority=100,
        adver_int_cs=100,
        addresses=(IPv6Address("fe80::1:51"), IPv6Address("fd00:200::100")),
    )
    assert decode(message, src=src, dst=dst, ttl=255) == adv
    assert encode(adv, src=src, dst=dst) == message
    # the checksum covers the IPv6 pseudo-header: 0x6b92 without it (spec §3.3)
    assert internet_checksum(message[:6] + b"\0\0" + message[8:]) == 0x6B92


def test_known_checksums_from_spec() -> None:
    prio0 = Advertisement(version=2, vrid=51, priority=0, adver_int_cs=100, addresses=VIPS4)
    assert encode(prio0, src=SRC4, dst=MCAST4)[6:8] == b"\xc8\x70"
    one_vip = Advertisement(version=3, vrid=51, priority=100, adver_int_cs=100, addresses=VIPS4[:1])
    # unicast v3: the pseudo-header uses the peer as destination (spec §3.2)
    unicast = encode(one_vip, src=SRC4, dst=IPv4Address("10.200.0.2"))
    assert unicast == bytes.fromhex("31336401 0064 492c 0ac80064")
    v2_one = Advertisement(version=2, vrid=51, priority=100, adver_int_cs=100, addresses=VIPS4[:1])
    assert encode(v2_one, src=SRC4, dst=MCAST4) == bytes.fromhex(
        "21336401 0001 6f9e 0ac80064 0000000000000000"
    )


def test_v3_without_pseudo_header_is_rejected() -> None:
    message = bytearray(V3_IPV4[34:])
    message[6:8] = b"\x54\x0d"  # the checksum a no-pseudo-header peer would send
    with pytest.raises(VrrpDecodeError) as err:
        decode(bytes(message), src=SRC4, dst=MCAST4, ttl=255)
    assert err.value.reason is DropReason.CHECKSUM


def test_v3_rsvd_bits_are_ignored_on_receive() -> None:
    message = bytearray(V3_IPV4[34:])
    message[4] |= 0xF0
    # the checksum must still be right for the modified bytes
    message[6:8] = b"\0\0"
    pseudo = SRC4.packed + MCAST4.packed + struct.pack("!xBH", 112, len(message))
    message[6:8] = struct.pack("!H", internet_checksum(pseudo + bytes(message)))
    adv = decode(bytes(message), src=SRC4, dst=MCAST4, ttl=255)
    assert adv.adver_int_cs == 100


@pytest.mark.parametrize("datagram", [c[1] for c in IPV4_CASES], ids=[c[0] for c in IPV4_CASES])
def test_every_truncation_is_rejected(datagram: bytes) -> None:
    for cut in range(len(datagram)):
        with pytest.raises(VrrpDecodeError):
            decode_ipv4(datagram[:cut])


def test_message_truncation_and_trailing_bytes() -> None:
    message = V2_PLAIN[34:]
    for cut in range(len(message)):
        with pytest.raises(VrrpDecodeError) as err:
            decode(message[:cut], src=SRC4, dst=MCAST4, ttl=255)
        assert err.value.reason in (DropReason.TRUNCATED, DropReason.LENGTH)
    with pytest.raises(VrrpDecodeError) as err:
        decode(message + b"\0", src=SRC4, dst=MCAST4, ttl=255)
    assert err.value.reason is DropReason.LENGTH


def test_ip_tot_len_mismatch() -> None:
    datagram = bytearray(V2_PLAIN[14:])
    datagram += b"\0\0"  # two bytes past the IP total length
    with pytest.raises(VrrpDecodeError) as err:
        decode_ipv4(bytes(datagram))
    assert err.value.reason is DropReason.LENGTH


def _v2(**overrides: object) -> bytes:
    fields: dict[str, object] = {
        "version": 2,
        "vrid": 51,
        "priority": 100,
        "adver_int_cs": 100,
        "addresses": VIPS4,
    }
    fields.update(overrides)
    return encode_ipv4(Advertisement(**fields), src=SRC4, dst=MCAST4, ident=1)  # type: ignore[arg-type]


def _with_ttl(datagram: bytes, ttl: int) -> bytes:
    return datagram[:8] + bytes([ttl]) + datagram[9:]


POLICY_V2 = ReceivePolicy(version=2, adver_int_cs=100, addresses=frozenset(VIPS4))

REJECTIONS = [
    ("ttl", _with_ttl(_v2(), 64), POLICY_V2, DropReason.TTL),
    ("version", V3_IPV4[14:], POLICY_V2, DropReason.VERSION),
    ("auth-mismatch", V2_PASS[14:], POLICY_V2, DropReason.AUTH_TYPE_MISMATCH),
    (
        "password",
        V2_PASS[14:],
        ReceivePolicy(
            version=2, auth_type=AuthType.PASS, auth_key=b"other", addresses=frozenset(VIPS4)
        ),
        DropReason.AUTH_PASSWORD,
    ),
    (
        "ah-missing",
        V2_PLAIN[14:],
        ReceivePolicy(version=2, auth_type=AuthType.AH, auth_key=b"secret12"),
        DropReason.AH_MISMATCH,
    ),
    ("ah-unexpected", V2_AH[14:], POLICY_V2, DropReason.AH_MISMATCH),
    (
        "ah-icv",
        V2_AH[14:],
        ReceivePolicy(version=2, auth_type=AuthType.AH, auth_key=b"secret13"),
        DropReason.AH_ICV,
    ),
    ("interval", _v2(adver_int_cs=200), POLICY_V2, DropReason.INTERVAL),
    ("count", _v2(addresses=VIPS4[:1]), POLICY_V2, DropReason.ADDRESS_COUNT),
    (
        "vip-list",
        _v2(addresses=(VIPS4[0], IPv4Address("10.200.0.102"))),
        POLICY_V2,
        DropReason.ADDRESS_LIST,
    ),
    ("cast", V2_PLAIN[14:], ReceivePolicy(version=2, unicast=True), DropReason.CAST),
]


@pytest.mark.parametrize(
    ("name", "datagram", "policy", "reason"), REJECTIONS, ids=[r[0] for r in REJECTIONS]
)
def test_receive_checks(
    name: str, datagram: bytes, policy: ReceivePolicy, reason: DropReason
) -> None:
    with pytest.raises(VrrpDecodeError) as err:
        decode_ipv4(datagram, policy=policy)
    assert err.value.reason is reason


def test_check_order_ttl_before_version() -> None:
    # keepalived checks TTL (3) before version (4): a v3 packet with TTL 64 is a TTL error
    with pytest.raises(VrrpDecodeError) as err:
        decode_ipv4(_with_ttl(V3_IPV4[14:], 64), policy=POLICY_V2)
    assert err.value.reason is DropReason.TTL


def test_unicast_ignores_ttl_and_checks_peers() -> None:
    peer = IPv4Address("10.200.0.2")
    datagram = encode_ipv4(
        Advertisement(version=3, vrid=51, priority=100, adver_int_cs=100, addresses=VIPS4),
        src=peer,
        dst=SRC4,
        ident=1,
        ttl=5,
    )
    ok = ReceivePolicy(version=3, unicast=True, addresses=frozenset(VIPS4))
    assert decode_ipv4(datagram, policy=ok).ttl == 5
    strict = ReceivePolicy(
        version=3, unicast=True, unicast_peers=((IPv4Address("10.200.0.3"), 0, 255),)
    )
    with pytest.raises(VrrpDecodeError) as err:
        decode_ipv4(datagram, policy=strict)
    assert err.value.reason is DropReason.UNICAST_SOURCE


def test_old_unicast_checksum_is_accepted_in_unicast_mode() -> None:
    adv = Advertisement(version=3, vrid=51, priority=100, adver_int_cs=100, addresses=VIPS4[:1])
    legacy = encode(adv, src=SRC4, dst=MCAST4)  # keepalived <= 1.3.6 unicast checksum
    peer = IPv4Address("10.200.0.2")
    unicast = ReceivePolicy(version=3, unicast=True)
    assert decode(legacy, src=SRC4, dst=peer, ttl=255, policy=unicast) == adv
    with pytest.raises(VrrpDecodeError):
        decode(legacy, src=SRC4, dst=peer, ttl=255)


def test_peek_vrid() -> None:
    assert peek_vrid(V2_PLAIN[34:]) == 51
    assert peek_vrid(b"\x21") is None


def test_encode_rejects_what_the_wire_cannot_carry() -> None:
    with pytest.raises(ValueError):
        encode(
            Advertisement(version=2, vrid=1, priority=1, adver_int_cs=150, addresses=()),
            src=SRC4,
            dst=MCAST4,
        )
    with pytest.raises(ValueError):
        encode(
            Advertisement(version=3, vrid=1, priority=1, adver_int_cs=100, addresses=VIPS4),
            src=IPv6Address("fe80::1"),
            dst=IPv6Address("ff02::12"),
        )


ipv4s = st.builds(IPv4Address, st.integers(0, 2**32 - 1))
ipv6s = st.builds(IPv6Address, st.integers(0, 2**128 - 1))


@st.composite
def advert_and_addresses(draw: st.DrawFn) -> tuple[Advertisement, object, object]:
    version = draw(st.sampled_from([2, 3]))
    v6 = version == 3 and draw(st.booleans())
    addr = ipv6s if v6 else ipv4s
    addresses = tuple(draw(st.lists(addr, max_size=20)))
    if version == 2:
        auth_type = draw(st.sampled_from(list(AuthType)))
        auth_data = draw(st.binary(min_size=8, max_size=8))
        interval = draw(st.integers(1, 255)) * 100
    else:
        auth_type, auth_data, interval = AuthType.NONE, b"", draw(st.integers(0, 4095))
    adv = Advertisement(
        version=version,
        vrid=draw(st.integers(0, 255)),
        priority=draw(st.integers(0, 255)),
        adver_int_cs=interval,
        addresses=addresses,
        auth_type=auth_type,
        auth_data=auth_data,
    )
    return adv, draw(addr), draw(addr)


# Properties about values, not speed: on a loaded machine (CI, other suites on the same
# CPUs) one example can take longer than hypothesis' default 200 ms deadline, which would
# fail the test for a reason it does not check. The examples and their number stay.
UNTIMED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@UNTIMED
@given(advert_and_addresses())
def test_round_trip(case: tuple[Advertisement, object, object]) -> None:
    adv, src, dst = case
    assert isinstance(src, IPv4Address | IPv6Address) and isinstance(dst, IPv4Address | IPv6Address)
    message = encode(adv, src=src, dst=dst)
    assert decode(message, src=src, dst=dst, ttl=255) == adv


@settings(UNTIMED, max_examples=500)
@given(st.binary(max_size=120), st.sampled_from(["10.0.0.1", "fe80::1"]), st.integers(0, 255))
def test_fuzz_decode_raises_only_decode_errors(data: bytes, src: str, ttl: int) -> None:
    source = ip_address(src)
    dst = MCAST4 if source.version == 4 else IPv6Address("ff02::12")
    policies = [None, POLICY_V2, ReceivePolicy(version=3, unicast=True)]
    for policy in policies:
        try:
            decode(data, src=source, dst=dst, ttl=ttl, policy=policy)
        except VrrpDecodeError as exc:
            assert isinstance(exc.reason, DropReason)
        if source.version == 4:
            try:
                decode_ipv4(data, policy=policy)
            except VrrpDecodeError as exc:
                assert isinstance(exc.reason, DropReason)


@settings(UNTIMED, max_examples=300)
@given(st.integers(34 - 14, len(V2_AH) - 1 - 14), st.integers(1, 255))
def test_fuzz_mutated_captures(position: int, xor: int) -> None:
    datagram = bytearray(V2_AH[14:])
    datagram[position] ^= xor
    policy = ReceivePolicy(
        version=2, auth_type=AuthType.AH, auth_key=b"secret12", addresses=frozenset(VIPS4)
    )
    # any single-byte change after the IP header is caught: the ICV covers the AH header
    # (sequence number included) and the VRRP message
    with pytest.raises(VrrpDecodeError):
        decode_ipv4(bytes(datagram), policy=policy)
