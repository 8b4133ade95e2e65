"""`AddressPort` over rtnetlink with pyroute2's AsyncIPRoute: the only pyroute2 importer
for addresses and links.

Rules:
* Idempotent: adding an address that is there (EEXIST) and removing one that is not
  (EADDRNOTAVAIL, ENOENT) are successes (STYLE §8.6, neutron).
* A missing link raises `LinkNotFound`; any other netlink failure `KernelError` with the
  operation name and errno.
* pyroute2 messages never leave this module: callers get ipaddress objects.
* One AsyncIPRoute socket per adapter, opened lazily in the running loop, closed by
  `close()`.

Must not import: structlog, hactl.vrrp.router (the port knows nothing of VRRP states).
"""

from __future__ import annotations

import errno
from ipaddress import IPv4Address, IPv6Address, ip_interface
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from hactl.errors import KernelError, LinkNotFound
from hactl.net.ports import Family, IPAddress, IPInterface, Route, Rule

__all__ = ["NetlinkAddressPort"]

_IDEMPOTENT_DEL = {errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH}
_FAMILY = {4: 2, 6: 10}  # AF_INET, AF_INET6


def _undecodable(op: str, err: Exception) -> KernelError:
    """A reply the netlink library failed to decode, as a kernel error callers already handle."""
    return KernelError(op, errno.EBADMSG, f"{op}: undecodable netlink reply ({err!r})")


class NetlinkAddressPort:
    """rtnetlink adapter; optionally bound to a network namespace by name."""

    def __init__(self, *, netns: str | None = None) -> None:
        self._netns = netns
        self._ipr: Any = None
        self._index: dict[str, int] = {}

    async def _route(self) -> Any:
        if self._ipr is None:
            ipr = AsyncIPRoute(netns=self._netns) if self._netns else AsyncIPRoute()
            await ipr.setup_endpoint()
            self._ipr = ipr
        return self._ipr

    async def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

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
        index = await self.link_index(interface)
        ipr = await self._route()
        try:
            await ipr.addr(
                "add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
            )
        except NetlinkError as err:
            if err.code != errno.EEXIST:
                raise KernelError(
                    "addr_add", err.code, f"{address} on {interface}: {err}"
                ) from None

    async def remove_address(self, interface: str, address: IPInterface) -> None:
        index = await self.link_index(interface)
        ipr = await self._route()
        try:
            await ipr.addr(
                "del", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
            )
        except NetlinkError as err:
            if err.code not in _IDEMPOTENT_DEL:
                raise KernelError(
                    "addr_del", err.code, f"{address} on {interface}: {err}"
                ) from None

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
            links = await ipr.link("get", index=index)
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
