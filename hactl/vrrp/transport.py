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

import asyncio
import errno
import socket
import struct
from ipaddress import IPv4Address, ip_address

from hactl.errors import NotSupported
from hactl.vrrp.model import Family, IPAddress
from hactl.vrrp.socket import Channel, Inbound, OnReceive

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


class _UdpChannel:
    ipv4_datagrams = False

    def __init__(self, source: IPAddress, port: int, on_receive: OnReceive) -> None:
        self._loop = asyncio.get_running_loop()
        self._source = source
        self._port = port
        self._on_receive = on_receive
        v4 = isinstance(source, IPv4Address)
        sock = socket.socket(socket.AF_INET if v4 else socket.AF_INET6, socket.SOCK_DGRAM)
        self._sock = sock
        try:
            sock.setblocking(False)
            if v4:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
            sock.bind((str(source), port))
            self._loop.add_reader(sock.fileno(), self._readable)
        except BaseException:
            sock.close()
            raise

    def _readable(self) -> None:
        while True:
            try:
                data, ancdata, _flags, addr = self._sock.recvmsg(65535, socket.CMSG_SPACE(4) * 2)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # ECONNREFUSED from an earlier send to a stopped peer
            ttl = -1
            for level, kind, value in ancdata:
                if (level, kind) in (
                    (socket.IPPROTO_IP, socket.IP_TTL),
                    (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT),
                ) and len(value) >= 4:
                    ttl = struct.unpack("i", value[:4])[0]
            src = ip_address(str(addr[0]).split("%", 1)[0])
            self._on_receive(
                Inbound(data=data, src=src, dst=self._source, ttl=ttl, ipv4_datagram=False)
            )

    def send(self, data: bytes, dst: IPAddress, *, ttl: int) -> None:
        self._sock.sendto(data, (str(dst), self._port))

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
