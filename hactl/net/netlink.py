"""`AddressPort` over rtnetlink with pyroute2's AsyncIPRoute: the only pyroute2 importer
for addresses and links.

Rules:
* Idempotent: adding an address that is there (EEXIST) and removing one that is not
  (EADDRNOTAVAIL, ENOENT) are successes (STYLE §8.6, neutron).
* A missing link raises `LinkNotFound`; any other netlink failure `KernelError` with the
  operation name and errno.
* pyroute2 messages never leave this module: callers get ipaddress objects.
* One AsyncIPRoute socket per adapter, opened lazily in the running loop, closed by
  `close()` (`LazyIPRoute`, which the VMAC adapter in `macvlan.py` holds too).
* Adding and removing addresses, the step between a VRRP takeover and the VIP answering,
  go over a second, plain rtnetlink socket (`_AddressRequests`): one request and its
  acknowledgement, encoded here, about 30 us against pyroute2's 0.5 ms (its message
  machinery), the same messages pyroute2 sends (IFA_LOCAL + IFA_ADDRESS for IPv4,
  IFA_ADDRESS for IPv6, scope global, create + exclusive on add).
* Link indexes are cached by name; `forget_link` drops the entry when the caller knows the
  link was deleted or recreated (a `use_vmac` macvlan), so the next lookup is fresh.

Must not import: structlog, hactl.vrrp.router (the port knows nothing of VRRP states).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from ipaddress import IPv4Address, IPv6Address, ip_interface
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netns import create_socket

from hactl.errors import KernelError, LinkNotFound
from hactl.net.ports import Family, IPAddress, IPInterface, Route, Rule

__all__ = ["LazyIPRoute", "NetlinkAddressPort"]

_IDEMPOTENT_DEL = {errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH}
_FAMILY = {4: 2, 6: 10}  # AF_INET, AF_INET6


# rtnetlink constants (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h)
_NLMSG_ERROR = 2
_RTM_NEWADDR, _RTM_DELADDR = 20, 21
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_RTM_GETLINK = 18
_GETLINK = (_RTM_GETLINK, _NLM_F_REQUEST)  # a link "get" without NLM_F_ACK (see _get_link)
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_ACK_TIMEOUT = 5.0


def address_request(msg_type: int, flags: int, seq: int, index: int, address: IPInterface) -> bytes:
    """One RTM_NEWADDR / RTM_DELADDR request for `address` on link `index`."""
    ip = address.ip
    packed = ip.packed
    family = socket.AF_INET if isinstance(ip, IPv4Address) else socket.AF_INET6
    attr = struct.pack("=HH", 4 + len(packed), _IFA_ADDRESS) + packed
    if family == socket.AF_INET:
        attr += struct.pack("=HH", 4 + len(packed), _IFA_LOCAL) + packed
    body = struct.pack("=BBBBI", family, address.network.prefixlen, 0, 0, index) + attr
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def ack_errno(data: bytes, seq: int) -> int | None:
    """The errno (0: success) the acknowledgement for `seq` in `data` carries, or None when
    `data` holds no acknowledgement for it."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, msg_type, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        if msg_seq == seq and msg_type == _NLMSG_ERROR and length >= _NLMSGHDR.size + 4:
            return -int(struct.unpack_from("=i", data, offset + _NLMSGHDR.size)[0])
        offset += (length + 3) & ~3
    return None


class _AddressRequests:
    """Address requests over a plain non-blocking rtnetlink socket, one at a time.

    The kernel handles an rtnetlink request inside `send`, so its acknowledgement is
    normally already queued when `send` returns; otherwise the loop waits for it.
    """

    def __init__(self, netns: str | None) -> None:
        self._sock = create_socket(netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.setblocking(False)
        self._sock.bind((0, 0))
        self._seq = 0
        self._lock = asyncio.Lock()

    async def request(self, msg_type: int, flags: int, index: int, address: IPInterface) -> int:
        """Send one request and return the errno of its acknowledgement (0: success)."""
        async with self._lock:
            self._seq = self._seq % 0x7FFFFFFF + 1
            seq = self._seq
            self._sock.send(
                address_request(msg_type, flags | _NLM_F_REQUEST | _NLM_F_ACK, seq, index, address)
            )
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(_ACK_TIMEOUT):
                while True:
                    # reads at once when the ACK is queued, else waits for the socket
                    code = ack_errno(await loop.sock_recv(self._sock, 65536), seq)
                    if code is not None:
                        return code
                    # an answer to an earlier request that timed out: skip it

    def close(self) -> None:
        self._sock.close()


def _undecodable(op: str, err: Exception) -> KernelError:
    """A reply the netlink library failed to decode, as a kernel error callers already handle."""
    return KernelError(op, errno.EBADMSG, f"{op}: undecodable netlink reply ({err!r})")


class LazyIPRoute:
    """One AsyncIPRoute socket, in `netns` if given, opened in the running loop on first
    use; `close` ends it, and the next use opens a new one."""

    def __init__(self, netns: str | None) -> None:
        self._netns = netns
        self._ipr: Any = None

    async def get(self) -> Any:
        if self._ipr is None:
            ipr = AsyncIPRoute(netns=self._netns) if self._netns else AsyncIPRoute()
            await ipr.setup_endpoint()
            self._ipr = ipr
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None


class NetlinkAddressPort:
    """rtnetlink adapter; optionally bound to a network namespace by name."""

    def __init__(self, *, netns: str | None = None) -> None:
        self._netns = netns
        self._ipr = LazyIPRoute(netns)
        self._requests: _AddressRequests | None = None
        self._index: dict[str, int] = {}

    async def _route(self) -> Any:
        return await self._ipr.get()

    async def close(self) -> None:
        self._ipr.close()
        if self._requests is not None:
            self._requests.close()
            self._requests = None

    def forget_link(self, interface: str) -> None:
        """`interface` was deleted or recreated: look its index up afresh next time."""
        self._index.pop(interface, None)

    async def _address(
        self, op: str, msg_type: int, flags: int, interface: str, address: IPInterface
    ) -> int:
        if self._requests is None:
            self._requests = _AddressRequests(self._netns)
        requests = self._requests
        try:
            code = await requests.request(
                msg_type, flags, await self.link_index(interface), address
            )
            if code == errno.ENODEV:
                # the cached index belongs to a link that is gone; the name may be a new link
                self.forget_link(interface)
                index = await self.link_index(interface)
                code = await requests.request(msg_type, flags, index, address)
        except TimeoutError:
            raise KernelError(op, errno.ETIMEDOUT, f"{address} on {interface}: no answer") from None
        return code

    async def link_index(self, interface: str) -> int:
        cached = self._index.get(interface)
        if cached is not None:
            return cached
        ipr = await self._route()
        try:
            found = await ipr.link_lookup(ifname=interface)
        except NetlinkError as err:
            raise KernelError("link_lookup", err.code, str(err)) from None
        except Exception as err:  # pyroute2 could not decode a link message
            raise _undecodable("link_lookup", err) from None
        if not found:
            raise LinkNotFound("link_lookup", errno.ENODEV, f"no link named {interface}")
        self._index[interface] = int(found[0])
        return int(found[0])

    async def add_address(self, interface: str, address: IPInterface) -> None:
        code = await self._address(
            "addr_add", _RTM_NEWADDR, _NLM_F_CREATE | _NLM_F_EXCL, interface, address
        )
        if code not in (0, errno.EEXIST):
            raise KernelError(
                "addr_add", code, f"{address} on {interface}: {errno.errorcode.get(code, code)}"
            )

    async def remove_address(self, interface: str, address: IPInterface) -> None:
        code = await self._address("addr_del", _RTM_DELADDR, 0, interface, address)
        if code != 0 and code not in _IDEMPOTENT_DEL:
            raise KernelError(
                "addr_del", code, f"{address} on {interface}: {errno.errorcode.get(code, code)}"
            )

    async def list_addresses(self, interface: str) -> tuple[IPInterface, ...]:
        index = await self.link_index(interface)
        ipr = await self._route()
        found: list[IPInterface] = []
        try:
            async for msg in await ipr.addr("dump", index=index):
                found.append(ip_interface(f"{msg.get('address')}/{msg.get('prefixlen')}"))
        except NetlinkError as err:
            raise KernelError("addr_dump", err.code, str(err)) from None
        return tuple(found)

    async def primary_address(self, interface: str, family: Family) -> IPAddress | None:
        for addr in await self.list_addresses(interface):
            ip = addr.ip
            if family is Family.INET and isinstance(ip, IPv4Address):
                return ip
            if family is Family.INET6 and isinstance(ip, IPv6Address) and ip.is_link_local:
                return ip
        return None

    async def _get_link(self, interface: str) -> Any | None:
        """The kernel's link message for `interface`, or None if the answer holds none."""
        index = await self.link_index(interface)
        ipr = await self._route()
        try:
            # Not `ipr.link("get", ...)`: that asks for an acknowledgement too (NLM_F_ACK),
            # and pyroute2 (0.9) ends the request at the link message, before the ACK's own
            # datagram arrives; it then lands in the socket's queue for unsolicited messages,
            # which nothing here reads. VRRP polls tracked links every 0.2 s, so the idle
            # daemon kept one stray ACK per poll forever (about 1.5 KiB of RSS each: a 36-byte
            # `bytes` cut from a 256 KiB receive buffer). A plain request gets the link
            # message or an error, and nothing after it.
            links = await ipr.link(_GETLINK, index=index)
        except NetlinkError as err:
            raise KernelError("link_get", err.code, str(err)) from None
        except Exception as err:  # pyroute2 could not decode a link message
            raise _undecodable("link_get", err) from None
        for link in links:
            return link
        return None

    async def link_is_up(self, interface: str) -> bool:
        link = await self._get_link(interface)
        return link is not None and bool(link.get("state") == "up")

    async def link_mac(self, interface: str) -> bytes:
        link = await self._get_link(interface)
        if link is None:
            raise LinkNotFound("link_get", errno.ENODEV, interface)
        mac = link.get("address") or "00:00:00:00:00:00"
        return bytes.fromhex(str(mac).replace(":", ""))

    async def _route_args(self, route: Route) -> dict[str, Any]:
        args: dict[str, Any] = {"dst": str(route.destination)}
        if route.gateway is not None:
            args["gateway"] = str(route.gateway)
        if route.interface is not None:
            args["oif"] = await self.link_index(route.interface)
        if route.source is not None:
            args["prefsrc"] = str(route.source)
        if route.table is not None:
            args["table"] = route.table
        if route.metric is not None:
            args["priority"] = route.metric
        return args

    async def add_route(self, route: Route) -> None:
        ipr = await self._route()
        try:
            await ipr.route("add", **await self._route_args(route))
        except NetlinkError as err:
            if err.code != errno.EEXIST:
                raise KernelError("route_add", err.code, f"{route.destination}: {err}") from None

    async def remove_route(self, route: Route) -> None:
        ipr = await self._route()
        try:
            await ipr.route("del", **await self._route_args(route))
        except NetlinkError as err:
            if err.code not in _IDEMPOTENT_DEL:
                raise KernelError("route_del", err.code, f"{route.destination}: {err}") from None

    @staticmethod
    def _rule_args(rule: Rule) -> dict[str, Any]:
        args: dict[str, Any] = {"table": rule.table, "family": _FAMILY[rule.family]}
        if rule.priority is not None:
            args["priority"] = rule.priority
        if rule.source is not None:
            args["src"] = str(rule.source.network_address)
            args["src_len"] = rule.source.prefixlen
        if rule.destination is not None:
            args["dst"] = str(rule.destination.network_address)
            args["dst_len"] = rule.destination.prefixlen
        return args

    async def add_rule(self, rule: Rule) -> None:
        ipr = await self._route()
        try:
            await ipr.rule("add", **self._rule_args(rule))
        except NetlinkError as err:
            if err.code != errno.EEXIST:
                raise KernelError("rule_add", err.code, str(err)) from None

    async def remove_rule(self, rule: Rule) -> None:
        ipr = await self._route()
        try:
            await ipr.rule("del", **self._rule_args(rule))
        except NetlinkError as err:
            if err.code not in _IDEMPOTENT_DEL:
                raise KernelError("rule_del", err.code, str(err)) from None
