"""Gratuitous ARP and unsolicited neighbour advertisements: a `NeighbourPort` over AF_PACKET.

Frames are built as keepalived sends them (spec §6.3 "Gratuitous ARP"):
* GARP: Ethernet broadcast, ARP *request* (op 1), sender = target = the VIP, sender MAC =
  the interface MAC, target MAC ff:ff:ff:ff:ff:ff.
* Unsolicited NA: from the VIP itself to ff02::1 (Ethernet 33:33:00:00:00:01), hop limit
  255, Override flag, target = the VIP, option 2 (target link-layer address) = the MAC.

`frame_garp` / `frame_unsolicited_na` are pure and unit-tested; `PacketAnnouncer` owns one
non-blocking AF_PACKET socket per interface and paces repeats with `interval` without
blocking the loop. A socket is bound to the link's index: `forget_link` (a `LinkCache`)
drops it when the link is deleted or recreated under the same name.

Must not import: hactl.vrrp.router, pyroute2, structlog.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from ipaddress import IPv4Address, IPv6Address

from hactl.vrrp.model import IPInterface
from hactl.vrrp.packet import internet_checksum

__all__ = ["PacketAnnouncer", "frame_garp", "frame_unsolicited_na"]

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
BROADCAST = b"\xff" * 6
ALL_NODES = IPv6Address("ff02::1")
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"


def frame_garp(mac: bytes, vip: IPv4Address) -> bytes:
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, vip.packed, BROADCAST, vip.packed)
    return BROADCAST + mac + struct.pack("!H", ETH_P_ARP) + arp


def frame_unsolicited_na(mac: bytes, vip: IPv6Address, *, router: bool = False) -> bytes:
    flags = 0x20000000 | (0x80000000 if router else 0)  # O (override), R when forwarding
    body = struct.pack("!BBHI16s", 136, 0, 0, flags, vip.packed) + struct.pack("!BB6s", 2, 1, mac)
    pseudo = vip.packed + ALL_NODES.packed + struct.pack("!I3xB", len(body), 58)
    csum = internet_checksum(pseudo + body)
    body = body[:2] + struct.pack("!H", csum) + body[4:]
    ipv6 = struct.pack("!IHBB16s16s", 0x60000000, len(body), 58, 255, vip.packed, ALL_NODES.packed)
    return ALL_NODES_MAC + mac + struct.pack("!H", ETH_P_IPV6) + ipv6 + body


class PacketAnnouncer:
    """Sends GARPs / NAs on the named interfaces (needs CAP_NET_RAW)."""

    def __init__(self) -> None:
        self._socks: dict[str, tuple[socket.socket, bytes]] = {}

    def _socket(self, interface: str) -> tuple[socket.socket, bytes]:
        found = self._socks.get(interface)
        if found is None:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            sock.setblocking(False)
            sock.bind((interface, 0))
            mac = bytes(sock.getsockname()[4])[:6]
            found = self._socks[interface] = (sock, mac)
        return found

    async def announce(
        self, interface: str, addresses: tuple[IPInterface, ...], *, repeat: int, interval: float
    ) -> None:
        sock, mac = self._socket(interface)
        frames = [
            frame_garp(mac, a.ip)
            if isinstance(a.ip, IPv4Address)
            else frame_unsolicited_na(mac, a.ip)
            for a in addresses
        ]
        for round_ in range(repeat):
            for frame in frames:
                try:
                    sock.send(frame)
                except BlockingIOError:
                    await asyncio.sleep(0.001)
                    sock.send(frame)
                if interval > 0:
                    await asyncio.sleep(interval)
            if round_ + 1 < repeat and interval <= 0:
                await asyncio.sleep(0)

    def forget_link(self, interface: str) -> None:
        """`interface` was deleted or recreated: the socket bound to it (by index) is
        closed, and the next announcement binds to the link that now has the name."""
        found = self._socks.pop(interface, None)
        if found is not None:
            found[0].close()

    def close(self) -> None:
        for sock, _ in self._socks.values():
            sock.close()
        self._socks.clear()
