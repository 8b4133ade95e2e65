"""Unprivileged development transport: VRRP messages in UDP datagrams (an hactl extension).

The datagram payload is exactly the VRRP message a raw socket would carry (same codec,
same checksums, the v3 pseudo-header computed over the UDP datagram's real addresses), so
several hactl processes on one machine exercise the codec and the router unchanged
(spec §11.2). Only unicast instances are carried: each process binds its
`unicast_src_ip` (distinct 127.0.0.x addresses on loopback need no privileges) on one UDP
port, and sends to each `unicast_peer` on that port. TTL / hop limit 255 is set on send
and read back with IP_RECVTTL / IPV6_RECVHOPLIMIT.

Not for production: anyone who can send UDP to the port can take part in elections.

Must not import: hactl.vrrp.router, pyroute2, structlog.
"""

from __future__ import annotations

import errno
import socket
import struct
from ipaddress import IPv4Address

from hactl.errors import NotSupported
from hactl.vrrp.model import Family, IPAddress
from hactl.vrrp.socket import Channel, Inbound, OnReceive, RecvmsgChannel

__all__ = ["DEFAULT_UDP_PORT", "UdpChannelFactory"]

DEFAULT_UDP_PORT = 11112  # 112 is VRRP's protocol number; not an IANA assignment
IP_RECVTTL = 12  # missing from Python 3.11's socket module (spec §11.2)


class UdpChannelFactory:
    """Channels over UDP on `port`; each channel binds the instance's source address."""

    def __init__(self, *, port: int = DEFAULT_UDP_PORT) -> None:
        self.port = port

    def open(
        self,
        *,
        interface: str,
        ifindex: int,
        family: Family,
        source: IPAddress,
        multicast: bool,
        ah: bool,
        on_receive: OnReceive,
    ) -> Channel:
        if multicast:
            raise NotSupported(
                "udp_transport",
                errno.EOPNOTSUPP,
                "the UDP development transport carries unicast instances only "
                "(configure unicast_src_ip and unicast_peer)",
            )
        if ah:
            raise NotSupported("udp_transport", errno.EOPNOTSUPP, "AH needs the raw IPv4 transport")
        return _UdpChannel(source, self.port, on_receive)


class _UdpChannel(RecvmsgChannel):
    _cmsg_space = socket.CMSG_SPACE(4) * 2

    def __init__(self, source: IPAddress, port: int, on_receive: OnReceive) -> None:
        self._source = source
        self._port = port
        family = socket.AF_INET if isinstance(source, IPv4Address) else socket.AF_INET6
        super().__init__(socket.socket(family, socket.SOCK_DGRAM), on_receive)

    def _configure(self, sock: socket.socket) -> None:
        if isinstance(self._source, IPv4Address):
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        sock.bind((str(self._source), self._port))

    def _inbound(
        self, data: bytes, ancdata: list[tuple[int, int, bytes]], src: IPAddress
    ) -> Inbound:
        ttl = -1
        for level, kind, value in ancdata:
            if (level, kind) in (
                (socket.IPPROTO_IP, socket.IP_TTL),
                (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT),
            ) and len(value) >= 4:
                ttl = struct.unpack("i", value[:4])[0]
        return Inbound(data=data, src=src, dst=self._source, ttl=ttl, ipv4_datagram=False)

    def send(self, data: bytes, dst: IPAddress, *, ttl: int) -> None:
        self._sock.sendto(data, (str(dst), self._port))
