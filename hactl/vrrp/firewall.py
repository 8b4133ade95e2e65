"""Accept mode and VMAC multicast reports as nftables rules: the `FirewallPort` and its
adapters.

What keepalived 2.2.7 installs (read in its sources and observed with `nft list ruleset` in a
namespace; spec §7 "accept / no_accept"), and what hactl installs the same way:

* Accept_Mode off (`no_accept`) on a router that is not the address owner: while it is
  MASTER its VIPs are in a set, and an input rule drops packets *to* them and an output
  rule drops packets *from* them (RFC 5798 §6.4.3: "MUST NOT accept packets addressed to
  the IPvX address(es) associated with the virtual router" unless owner or Accept_Mode).
  The addresses enter the set before the VIPs are added and leave it after they are
  removed, so there is no moment where the VIP answers. A backup holds no VIP, so there
  is nothing to drop there. IPv6 neighbour solicitations and advertisements stay allowed.
* `use_vmac`: IGMP reports that the kernel would send from the macvlan (with the virtual
  MAC as Ethernet source, also on a backup) are duplicated out of the base interface and
  dropped on the macvlan, so switches never learn the virtual MAC from a backup.
* The tables are created on first use and deleted when hactl leaves; starting deletes
  whatever a crashed run left.

hactl's tables are `ip hactl` and `ip6 hactl` (keepalived's are `ip keepalived` /
`ip6 keepalived`), chains `in` / `out` at priority `filter - 1`, like keepalived's default.

Adapters: `NftablesFirewall` (the `nft` command, one short-lived process per change, a few
milliseconds) and `InMemoryFirewall` (tests and the UDP development transport).

Must not import: hactl.vrrp.router, pyroute2, structlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Iterable
from ipaddress import IPv4Address
from typing import Protocol

from hactl.errors import KernelError, NotSupported
from hactl.vrrp.model import IPAddress

__all__ = ["TABLE", "FirewallPort", "InMemoryFirewall", "NftablesFirewall", "ruleset"]

TABLE = "hactl"

_ND = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept"


def ruleset(table: str = TABLE) -> str:
    """The nft script that creates hactl's two tables (empty sets, no VMACs)."""
    hook = "type filter hook {} priority filter - 1; policy accept;"
    return f"""\
table ip {table} {{
  set vips {{ type ipv4_addr; }}
  map vmacs {{ type iface_index : iface_index; }}
  chain in {{ {hook.format("input")}
    ip daddr @vips drop
  }}
  chain out {{ {hook.format("output")}
    ip protocol igmp meta oifkind "macvlan" dup to ip daddr device oif map @vmacs drop
    ip saddr @vips drop
  }}
}}
table ip6 {table} {{
  set vips {{ type ipv6_addr; }}
  chain in {{ {hook.format("input")}
    {_ND}
    ip6 daddr @vips drop
  }}
  chain out {{ {hook.format("output")}
    {_ND}
    ip6 saddr @vips drop
  }}
}}
"""


class FirewallPort(Protocol):
    """Drop rules for VIPs (accept mode off) and the VMAC multicast-report redirect.

    Contract: every call is idempotent (blocking a blocked address, unblocking one that is
    not blocked, resetting when nothing is installed all succeed); failures raise
    `KernelError`, a missing firewall tool `NotSupported`.
    """

    async def reset(self) -> None:
        """Delete whatever an earlier run left; nothing is installed afterwards."""
        ...

    async def block(self, addresses: tuple[IPAddress, ...]) -> None:
        """Drop packets to and from `addresses`."""
        ...

    async def unblock(self, addresses: tuple[IPAddress, ...]) -> None:
        """Stop dropping packets to and from `addresses`."""
        ...

    async def add_vmac(self, vmac: str, base: str) -> None:
        """Send the IGMP reports of macvlan `vmac` out of `base` instead."""
        ...

    async def remove_vmac(self, vmac: str) -> None: ...

    async def close(self) -> None:
        """Delete everything installed (leaving)."""
        ...


class InMemoryFirewall:
    """`FirewallPort` over two sets, with a call log for tests."""

    def __init__(self) -> None:
        self.blocked: set[IPAddress] = set()
        self.vmacs: dict[str, str] = {}
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.closed = False

    async def reset(self) -> None:
        self.calls.append(("reset", ()))
        self.blocked.clear()
        self.vmacs.clear()

    async def block(self, addresses: tuple[IPAddress, ...]) -> None:
        self.calls.append(("block", tuple(map(str, addresses))))
        self.blocked.update(addresses)

    async def unblock(self, addresses: tuple[IPAddress, ...]) -> None:
        self.calls.append(("unblock", tuple(map(str, addresses))))
        self.blocked.difference_update(addresses)

    async def add_vmac(self, vmac: str, base: str) -> None:
        self.calls.append(("add_vmac", (vmac, base)))
        self.vmacs[vmac] = base

    async def remove_vmac(self, vmac: str) -> None:
        self.calls.append(("remove_vmac", (vmac,)))
        self.vmacs.pop(vmac, None)

    async def close(self) -> None:
        self.calls.append(("close", ()))
        self.blocked.clear()
        self.vmacs.clear()
        self.closed = True


class NftablesFirewall:
    """`FirewallPort` through the `nft` command (Debian package nftables).

    It owns tables `ip <table>` and `ip6 <table>` entirely: it creates them on first use and
    remembers what it put in them, so an unblock of an address it never blocked issues
    nothing (nft 1.0.6 has no `destroy element`, and deleting a missing element fails).
    """

    def __init__(self, *, table: str = TABLE, nft: str = "nft", timeout: float = 5.0) -> None:
        self._table = table
        self._nft = nft
        self._timeout = timeout
        self._created = False
        self._blocked: set[IPAddress] = set()
        self._vmacs: dict[str, str] = {}

    async def _run(self, script: str) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                self._nft,
                "-f",
                "-",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            raise NotSupported(
                "nft", errno.ENOENT, f"{self._nft} not found (install nftables)"
            ) from None
        try:
            async with asyncio.timeout(self._timeout):
                _, stderr = await proc.communicate(script.encode())
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise KernelError("nft", errno.ETIMEDOUT, f"{self._nft} did not answer") from None
        if proc.returncode != 0:
            message = stderr.decode(errors="replace").strip().splitlines()
            raise KernelError("nft", errno.EIO, message[0] if message else "nft failed")

    def _drop_tables(self) -> str:
        # `add` then `delete`: succeeds whether or not the table exists
        return "".join(
            f"add table {family} {self._table}\ndelete table {family} {self._table}\n"
            for family in ("ip", "ip6")
        )

    def _ensure(self) -> str:
        """The script prefix that creates the tables when they are not there yet."""
        return "" if self._created else self._drop_tables() + ruleset(self._table)

    def _elements(self, verb: str, addresses: Iterable[IPAddress]) -> str:
        lines = []
        v4 = sorted(str(a) for a in addresses if isinstance(a, IPv4Address))
        v6 = sorted(str(a) for a in addresses if not isinstance(a, IPv4Address))
        for family, items in (("ip", v4), ("ip6", v6)):
            if items:
                lines.append(f"{verb} element {family} {self._table} vips {{ {', '.join(items)} }}")
        return "".join(line + "\n" for line in lines)

    async def reset(self) -> None:
        await self._run(self._drop_tables())
        self._created = False
        self._blocked.clear()
        self._vmacs.clear()

    async def block(self, addresses: tuple[IPAddress, ...]) -> None:
        new = [a for a in addresses if a not in self._blocked]
        if not new:
            return
        await self._run(self._ensure() + self._elements("add", new))
        self._created = True
        self._blocked.update(new)

    async def unblock(self, addresses: tuple[IPAddress, ...]) -> None:
        gone = [a for a in dict.fromkeys(addresses) if a in self._blocked]
        if not gone:
            return
        await self._run(self._elements("delete", gone))
        self._blocked.difference_update(gone)

    async def add_vmac(self, vmac: str, base: str) -> None:
        if self._vmacs.get(vmac) == base:
            return
        prefix = self._ensure()
        if vmac in self._vmacs:
            prefix += f'delete element ip {self._table} vmacs {{ "{vmac}" }}\n'
        await self._run(prefix + f'add element ip {self._table} vmacs {{ "{vmac}" : "{base}" }}\n')
        self._created = True
        self._vmacs[vmac] = base

    async def remove_vmac(self, vmac: str) -> None:
        if vmac not in self._vmacs:
            return
        del self._vmacs[vmac]
        # the kernel drops a map element whose interface is deleted only by index; delete it
        # by name while the interface still exists, and tolerate it being gone already
        with contextlib.suppress(KernelError):
            await self._run(f'delete element ip {self._table} vmacs {{ "{vmac}" }}\n')

    async def close(self) -> None:
        if not self._created:
            return
        await self._run(self._drop_tables())
        self._created = False
        self._blocked.clear()
        self._vmacs.clear()
