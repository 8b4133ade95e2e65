"""Narrow ports for kernel networking, in hactl domain types.

`AddressPort` adds and removes addresses on links and answers the few link questions
VRRP needs; `NeighbourPort` sends gratuitous ARP / unsolicited neighbour advertisements.
Implementations: `hactl.net.netlink.NetlinkAddressPort` (pyroute2), the packet-socket
announcer in `hactl.vrrp.announce`, and the fakes in `hactl.testing.fakes`.

Contract: add-when-present and remove-when-absent succeed (idempotent); a missing link
raises `LinkNotFound`; other kernel failures raise `KernelError`.

Must not import: pyroute2, socket, asyncio, any other hactl package.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import Protocol, runtime_checkable

__all__ = [
    "AddressPort",
    "Family",
    "IPAddress",
    "IPInterface",
    "IPNetwork",
    "LinkCache",
    "NeighbourPort",
    "Route",
    "Rule",
]

IPAddress = IPv4Address | IPv6Address
IPInterface = IPv4Interface | IPv6Interface
IPNetwork = IPv4Network | IPv6Network


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """A route hactl installs (keepalived `virtual_routes`); `interface` None: kernel picks."""

    destination: IPNetwork
    gateway: IPAddress | None = None
    interface: str | None = None
    source: IPAddress | None = None
    table: int | None = None
    metric: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """A policy routing rule (keepalived `virtual_rules`)."""

    table: int
    source: IPNetwork | None = None
    destination: IPNetwork | None = None
    priority: int | None = None
    family: int = 4


class Family(enum.IntEnum):
    """An address family (IP version number)."""

    INET = 4
    INET6 = 6


class AddressPort(Protocol):
    async def add_address(self, interface: str, address: IPInterface) -> None:
        """Install `address` on `interface`; present already is success."""
        ...

    async def remove_address(self, interface: str, address: IPInterface) -> None:
        """Remove `address` from `interface`; absent already is success."""
        ...

    async def list_addresses(self, interface: str) -> tuple[IPInterface, ...]:
        """Every address on `interface`, in kernel order (the primary one first per family)."""
        ...

    async def primary_address(self, interface: str, family: Family) -> IPAddress | None:
        """The first IPv4 address, or the IPv6 link-local address, of `interface`."""
        ...

    async def link_index(self, interface: str) -> int: ...

    async def link_is_up(self, interface: str) -> bool: ...

    async def add_route(self, route: Route) -> None:
        """Install `route`; present already is success."""
        ...

    async def remove_route(self, route: Route) -> None:
        """Remove `route`; absent already is success."""
        ...

    async def add_rule(self, rule: Rule) -> None: ...

    async def remove_rule(self, rule: Rule) -> None: ...


class NeighbourPort(Protocol):
    async def announce(
        self, interface: str, addresses: tuple[IPInterface, ...], *, repeat: int, interval: float
    ) -> None:
        """Send `repeat` gratuitous ARPs (IPv4) / unsolicited NAs (IPv6) per address."""
        ...


@runtime_checkable
class LinkCache(Protocol):
    """An adapter that keeps state per link *name* (a looked-up index, a socket bound to
    the link). Optional for `AddressPort` and `NeighbourPort` implementations: one that
    caches nothing need not have it. A caller that deletes or recreates a link under the
    same name (a `use_vmac` macvlan) calls `forget_link`, so the next use looks the link
    up again instead of reaching for the old, deleted one."""

    def forget_link(self, interface: str) -> None:
        """Drop whatever is cached for `interface`."""
        ...
