"""Raw IP protocol 112 (and 51 for AH) sockets for VRRP: the only raw socket code.

A `Channel` carries VRRP for one (interface, family). The service hands it bytes to send
and gets `Inbound` records back through a callback run by the event loop's reader (the
sockets are non-blocking; nothing here blocks the loop).

IPv4 (spec §11.1): one socket per protocol with IP_HDRINCL, so hactl builds the IPv4 header
itself exactly as keepalived does (TOS 0xC0, TTL 255, its own IP ID; AH needs a non-zero ID).
Received datagrams include the IPv4 header, whose TTL the codec checks. Multicast is joined
with an `ip_mreqn` naming the ifindex (INADDR_ANY fails in a bare namespace);
IP_MULTICAST_ALL is off and multicast loop is off.

IPv6: the kernel computes and verifies the checksum (IPV6_CHECKSUM 6); the hop limit and
the destination come from IPV6_HOPLIMIT / IPV6_PKTINFO control messages; the source is
chosen with IPV6_PKTINFO on send.

Must not import: hactl.vrrp.router, pyroute2, structlog.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Protocol

from hactl.vrrp.model import Family, IPAddress
from hactl.vrrp.packet import IPPROTO_AH, IPPROTO_VRRP, MCAST_GROUP4, MCAST_GROUP6

__all__ = [
    "Channel",
    "ChannelFactory",
    "Inbound",
    "OnReceive",
    "RawChannelFactory",
]

# Missing from Python 3.11's socket module (spec §11.1).
IP_MULTICAST_ALL = 49
IPV6_MULTICAST_ALL = 29
_RECV_SIZE = 65535
_CMSG_SPACE = socket.CMSG_SPACE(64) * 2
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")
_TIMESTAMP_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)
_MAX_RECEIVE_AGE = 1.0


def kernel_receive_time(
    ancdata: list[tuple[int, int, bytes]], loop: asyncio.AbstractEventLoop
) -> float | None:
    """The kernel's SO_TIMESTAMPNS receive time (wall clock) moved to the loop's monotonic
    clock through its age; None without one, or when the wall clock jumped meanwhile."""
    for level, kind, value in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(value)
            age = time.time() - (int(sec) + int(nsec) * 1e-9)
            if 0.0 <= age < _MAX_RECEIVE_AGE:
                return loop.time() - age
    return None


@dataclass(frozen=True, slots=True)
class Inbound:
    """One received datagram. `ipv4_datagram`: `data` starts with the IPv4 header."""

    data: bytes
    src: IPAddress
    dst: IPAddress
    ttl: int
    ipv4_datagram: bool
    # when the kernel received it, on the loop's clock (None: not known); the down timer
    # runs from here, not from when a busy loop got round to reading it
    received_at: float | None = None


OnReceive = Callable[[Inbound], None]


class Channel(Protocol):
    @property
    def ipv4_datagrams(self) -> bool:
        """True: `send` takes (and `Inbound` carries) whole IPv4 datagrams."""
        ...

    def send(self, data: bytes, dst: IPAddress, *, ttl: int) -> None:
        """Send one datagram; raises OSError on failure (the caller logs and counts)."""
        ...

    def close(self) -> None: ...


class ChannelFactory(Protocol):
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
    ) -> Channel: ...


class RawChannelFactory:
    """The real transport: raw sockets bound to the interface (needs CAP_NET_RAW)."""

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
        if family is Family.INET:
            return _RawIpv4Channel(interface, ifindex, multicast, ah, on_receive)
        return _RawIpv6Channel(interface, ifindex, source, multicast, on_receive)


def _bind_device(sock: socket.socket, interface: str) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())


class _RawIpv4Channel:
    ipv4_datagrams = True

    def __init__(
        self, interface: str, ifindex: int, multicast: bool, ah: bool, on_receive: OnReceive
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_receive = on_receive
        self._socks: dict[int, socket.socket] = {}
        try:
            for proto in (IPPROTO_VRRP, IPPROTO_AH) if ah else (IPPROTO_VRRP,):
                sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
                self._socks[proto] = sock
                sock.setblocking(False)
                _bind_device(sock, interface)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
                sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                mreqn_if = struct.pack("4s4si", b"\0" * 4, b"\0" * 4, ifindex)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn_if)
                if multicast:
                    mreqn = struct.pack("4s4si", MCAST_GROUP4.packed, b"\0" * 4, ifindex)
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
                self._loop.add_reader(sock.fileno(), self._readable, sock)
        except BaseException:
            self.close()
            raise

    def _readable(self, sock: socket.socket) -> None:
        while True:
            try:
                data, ancdata, _flags, _addr = sock.recvmsg(_RECV_SIZE, _TIMESTAMP_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. ENETDOWN while the link flaps: nothing to deliver
            if len(data) < 20:
                continue
            self._on_receive(
                Inbound(
                    data=data,
                    src=IPv4Address(data[12:16]),
                    dst=IPv4Address(data[16:20]),
                    ttl=data[8],
                    ipv4_datagram=True,
                    received_at=kernel_receive_time(ancdata, self._loop),
                )
            )

    def send(self, data: bytes, dst: IPAddress, *, ttl: int) -> None:
        sock = self._socks[data[9]] if data[9] in self._socks else self._socks[IPPROTO_VRRP]
        sock.sendto(data, (str(dst), 0))

    def close(self) -> None:
        for sock in self._socks.values():
            if sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
                sock.close()
        self._socks.clear()


class RecvmsgChannel:
    """A channel over one non-blocking datagram socket, read with recvmsg by the loop's reader.

    Subclasses set the socket options in `_configure` (the socket is closed if that fails)
    and build each `Inbound` from the datagram, its control messages and its source in
    `_inbound`.
    """

    ipv4_datagrams = False
    _cmsg_space = _CMSG_SPACE

    def __init__(self, sock: socket.socket, on_receive: OnReceive) -> None:
        self._sock = sock
        self._on_receive = on_receive
        try:
            self._loop = asyncio.get_running_loop()
            sock.setblocking(False)
            self._configure(sock)
            self._loop.add_reader(sock.fileno(), self._readable)
        except BaseException:
            sock.close()
            raise

    def _configure(self, sock: socket.socket) -> None:
        raise NotImplementedError

    def _inbound(
        self, data: bytes, ancdata: list[tuple[int, int, bytes]], src: IPAddress
    ) -> Inbound:
        raise NotImplementedError

    def _readable(self) -> None:
        while True:
            try:
                data, ancdata, _flags, addr = self._sock.recvmsg(_RECV_SIZE, self._cmsg_space)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # e.g. ENETDOWN while the link flaps, or ECONNREFUSED from an earlier UDP
                # send to a stopped peer: nothing to deliver
                return
            src = ip_address(str(addr[0]).split("%", 1)[0])
            self._on_receive(self._inbound(data, ancdata, src))

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()


class _RawIpv6Channel(RecvmsgChannel):
    def __init__(
        self,
        interface: str,
        ifindex: int,
        source: IPAddress,
        multicast: bool,
        on_receive: OnReceive,
    ) -> None:
        self._interface = interface
        self._ifindex = ifindex
        self._source = source
        self._multicast = multicast
        super().__init__(socket.socket(socket.AF_INET6, socket.SOCK_RAW, IPPROTO_VRRP), on_receive)

    def _configure(self, sock: socket.socket) -> None:
        _bind_device(sock, self._interface)
        v6 = socket.IPPROTO_IPV6
        sock.setsockopt(v6, socket.IPV6_CHECKSUM, 6)
        sock.setsockopt(v6, socket.IPV6_MULTICAST_HOPS, 255)
        sock.setsockopt(v6, socket.IPV6_UNICAST_HOPS, 255)
        sock.setsockopt(v6, socket.IPV6_MULTICAST_IF, self._ifindex)
        sock.setsockopt(v6, socket.IPV6_MULTICAST_LOOP, 0)
        sock.setsockopt(v6, socket.IPV6_TCLASS, 0xC0)
        sock.setsockopt(v6, socket.IPV6_RECVHOPLIMIT, 1)
        sock.setsockopt(v6, socket.IPV6_RECVPKTINFO, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(v6, IPV6_MULTICAST_ALL, 0)
        if self._multicast:
            mreq = struct.pack("16sI", MCAST_GROUP6.packed, self._ifindex)
            sock.setsockopt(v6, socket.IPV6_JOIN_GROUP, mreq)

    def _inbound(
        self, data: bytes, ancdata: list[tuple[int, int, bytes]], src: IPAddress
    ) -> Inbound:
        hop_limit = -1
        dst: IPAddress = MCAST_GROUP6
        for level, kind, value in ancdata:
            if level != socket.IPPROTO_IPV6:
                continue
            if kind == socket.IPV6_HOPLIMIT and len(value) >= 4:
                hop_limit = struct.unpack("i", value[:4])[0]
            elif kind == socket.IPV6_PKTINFO and len(value) >= 16:
                dst = IPv6Address(value[:16])
        return Inbound(
            data=data,
            src=src,
            dst=dst,
            ttl=hop_limit,
            ipv4_datagram=False,
            received_at=kernel_receive_time(ancdata, self._loop),
        )

    def send(self, data: bytes, dst: IPAddress, *, ttl: int) -> None:
        pktinfo = struct.pack("16sI", self._source.packed, self._ifindex)
        cmsgs = [
            (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, pktinfo),
            (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, struct.pack("i", ttl)),
        ]
        self._sock.sendmsg([data], cmsgs, 0, (str(dst), 0, 0, self._ifindex))
