"""The virtual MAC (keepalived `use_vmac`): the `VmacPort`, its in-memory fake, and the
address arithmetic.

keepalived 2.2.7 (spec §1.3, and observed in a namespace with `ip -d link`): a macvlan in
mode *private* on the instance's interface, named `vrrp.<VRID>` unless a name is given,
with MAC 00:00:5e:00:01:<VRID> (00:00:5e:00:02:<VRID> for IPv6, RFC 5798 §7.3), up from
start to stop in every state. The VIPs live on it and adverts and gratuitous ARPs leave
from it, so the segment sees the virtual router MAC the RFC asks for. For an IPv4
instance keepalived sets, on the macvlan, arp_ignore 1, accept_local 1, rp_filter 0,
promote_secondaries 1 and switches IPv6 off; on the base interface arp_ignore 1 and
arp_filter 1, so only the macvlan answers ARP for the VIPs (with the virtual MAC). The
macvlan is deleted at stop.

The kernel adapter is `hactl.net.macvlan.NetlinkVmacPort`.

Must not import: pyroute2, socket, asyncio, structlog.
"""

from __future__ import annotations

from typing import Protocol

from hactl.vrrp.model import Family

__all__ = ["InMemoryVmacPort", "VmacPort", "vmac_address"]


def vmac_address(vrid: int, family: Family) -> str:
    """The virtual router MAC (RFC 5798 §7.3): 00:00:5e:00:01:<VRID>, :02: for IPv6."""
    if not 1 <= vrid <= 255:
        raise ValueError(f"VRID {vrid} not in 1..255")
    return f"00:00:5e:00:{1 if family is Family.INET else 2:02x}:{vrid:02x}"


class VmacPort(Protocol):
    """Creates and deletes the macvlans.

    Contract: `add_vmac` is idempotent (a macvlan of that name on that base with that MAC is
    reused; an older macvlan of that name is replaced; a link of that name that is not a
    macvlan is never touched and raises `KernelError`); `remove_vmac` of a missing link
    succeeds. A missing base link raises `LinkNotFound`.
    """

    async def add_vmac(self, *, base: str, name: str, mac: str) -> None:
        """Create macvlan `name` on `base` (mode private, address `mac`), set keepalived's
        sysctls, bring it up."""
        ...

    async def remove_vmac(self, *, base: str, name: str) -> None:
        """Delete macvlan `name`; restore `base`'s ARP settings after its last macvlan."""
        ...


class InMemoryVmacPort:
    """`VmacPort` over a dict; with `addresses` (an `InMemoryAddressPort`) the macvlan also
    appears there as a link, so VIPs can be added to it."""

    def __init__(self, addresses: object | None = None) -> None:
        self.vmacs: dict[str, tuple[str, str]] = {}
        self.calls: list[tuple[str, str]] = []
        self._addresses = addresses

    def _links(self) -> dict[str, list[object]] | None:
        links = getattr(self._addresses, "links", None)
        return links if isinstance(links, dict) else None

    async def add_vmac(self, *, base: str, name: str, mac: str) -> None:
        self.calls.append(("add", name))
        self.vmacs[name] = (base, mac)
        links = self._links()
        if links is not None:
            links.setdefault(name, [])
            up = getattr(self._addresses, "up", None)
            if isinstance(up, dict):
                up[name] = True

    async def remove_vmac(self, *, base: str, name: str) -> None:
        self.calls.append(("remove", name))
        self.vmacs.pop(name, None)
        links = self._links()
        if links is not None:
            links.pop(name, None)
