"""GARP and unsolicited NA frames as keepalived sends them (spec §6.3)."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

from hactl.vrrp.announce import frame_garp, frame_unsolicited_na
from hactl.vrrp.packet import internet_checksum

MAC = bytes.fromhex("020000000001")


def test_garp_is_a_broadcast_request_for_the_vip() -> None:
    frame = frame_garp(MAC, IPv4Address("10.200.0.100"))
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == MAC and frame[12:14] == b"\x08\x06"
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = struct.unpack("!HHBBH6s4s6s4s", frame[14:])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)
    # "Request who-has 10.200.0.100 (ff:ff:ff:ff:ff:ff) tell 10.200.0.100"
    assert sha == MAC and tha == b"\xff" * 6
    assert spa == tpa == IPv4Address("10.200.0.100").packed
    assert len(frame) == 42


def test_unsolicited_na() -> None:
    vip = IPv6Address("fd00:200::100")
    frame = frame_unsolicited_na(MAC, vip)
    assert frame[:6] == bytes.fromhex("333300000001") and frame[12:14] == b"\x86\xdd"
    ipv6 = frame[14:54]
    payload_len, next_header, hop_limit = struct.unpack("!HBB", ipv6[4:8])
    assert (next_header, hop_limit) == (58, 255)
    assert ipv6[8:24] == vip.packed and ipv6[24:40] == IPv6Address("ff02::1").packed
    icmp = frame[54:]
    assert len(icmp) == payload_len == 32
    assert icmp[0] == 136 and icmp[4] & 0x20 and not icmp[4] & 0x80  # Override, not Router
    assert icmp[8:24] == vip.packed and icmp[24:26] == b"\x02\x01" and icmp[26:32] == MAC
    pseudo = ipv6[8:40] + struct.pack("!I3xB", len(icmp), 58)
    assert internet_checksum(pseudo + icmp) == 0  # a valid checksum sums to zero
    assert frame_unsolicited_na(MAC, vip, router=True)[54 + 4] & 0x80
