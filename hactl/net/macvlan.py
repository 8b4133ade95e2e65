"""`VmacPort` over rtnetlink (pyroute2 AsyncIPRoute) and /proc/sys: the macvlans behind
keepalived's `use_vmac` (see `hactl.vrrp.vmac` for what is created and why).

Rules:
* Idempotent as the port says: a matching macvlan is reused, a stale macvlan of the same
  name is replaced, a link of that name that is not a macvlan is never deleted
  (`KernelError` EEXIST), deleting a missing link succeeds.
* Sysctls are written under /proc/sys, so they apply to the network namespace of this
  process; `netns` (for tests) moves only the netlink socket, and then sysctls are skipped.
* The base interface's arp_ignore / arp_filter are saved before the first macvlan on it
  changes them and restored after its last one is deleted (keepalived 2.2.7 leaves them
  set; restoring is kinder to a host that runs hactl once).

Must not import: structlog, hactl.vrrp.router.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from hactl.errors import KernelError, LinkNotFound
from hactl.net.netlink import LazyIPRoute

__all__ = ["NetlinkVmacPort"]

_SYSCTL = Path("/proc/sys/net")
# keepalived's settings on the macvlan of an IPv4 instance (vrrp_if_config.c)
_ON_VMAC = (
    ("ipv4", "arp_ignore", "1"),
    ("ipv4", "accept_local", "1"),
    ("ipv4", "rp_filter", "0"),
    ("ipv4", "promote_secondaries", "1"),
    ("ipv6", "disable_ipv6", "1"),  # no link-local address, so nothing leaves with the VMAC
)
_ON_BASE = (("ipv4", "arp_ignore", "1"), ("ipv4", "arp_filter", "1"))


class NetlinkVmacPort:
    """Creates and deletes the VMAC macvlans; `sysctl_root` None skips sysctls."""

    def __init__(self, *, netns: str | None = None, sysctl_root: Path | None = _SYSCTL) -> None:
        self._sysctl_root = None if netns else sysctl_root
        self._ipr = LazyIPRoute(netns)
        self._saved: dict[str, dict[tuple[str, str], str]] = {}  # base -> original values
        self._users: dict[str, set[str]] = {}  # base -> macvlans hactl made on it

    async def _route(self) -> Any:
        return await self._ipr.get()

    async def close(self) -> None:
        self._ipr.close()

    async def _index(self, name: str) -> int | None:
        ipr = await self._route()
        try:
            found = await ipr.link_lookup(ifname=name)
        except NetlinkError as err:
            raise KernelError("link_lookup", err.code, str(err)) from None
        return int(found[0]) if found else None

    async def _link(self, index: int) -> Any:
        ipr = await self._route()
        try:
            (link,) = await ipr.link("get", index=index)
        except NetlinkError as err:
            raise KernelError("link_get", err.code, str(err)) from None
        return link

    def _sysctl(self, family: str, interface: str, key: str, value: str | None = None) -> str:
        """Read (and with `value`, write) one per-interface sysctl; '' when absent."""
        if self._sysctl_root is None:
            return ""
        path = self._sysctl_root / family / "conf" / interface / key
        try:
            old = path.read_text().strip()
            if value is not None and old != value:
                path.write_text(value)
        except OSError as err:
            if value is None:
                return ""
            raise KernelError("sysctl", err.errno or errno.EIO, f"{path}: {err}") from None
        return old

    async def add_vmac(self, *, base: str, name: str, mac: str) -> None:
        base_index = await self._index(base)
        if base_index is None:
            raise LinkNotFound("link_lookup", errno.ENODEV, f"no link named {base}")
        ipr = await self._route()
        index = await self._index(name)
        if index is not None:
            link = await self._link(index)
            kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
            if kind != "macvlan":
                raise KernelError(
                    "vmac_add", errno.EEXIST, f"{name} exists and is not a macvlan ({kind})"
                )
            if str(link.get("address")).lower() != mac or link.get("link") != base_index:
                # a macvlan of ours from another configuration: replace it, as keepalived does
                await self._delete(index)
                index = None
        if index is None:
            try:
                await ipr.link(
                    "add",
                    ifname=name,
                    kind="macvlan",
                    link=base_index,
                    macvlan_mode="private",
                    address=mac,
                )
            except NetlinkError as err:
                raise KernelError("vmac_add", err.code, f"{name} on {base}: {err}") from None
            index = await self._index(name)
            if index is None:
                raise KernelError("vmac_add", errno.ENODEV, f"{name} vanished after creation")
        for family, key, value in _ON_VMAC:
            self._sysctl(family, name, key, value)
        if base not in self._saved:
            self._saved[base] = {
                (family, key): self._sysctl(family, base, key) for family, key, _ in _ON_BASE
            }
        for family, key, value in _ON_BASE:
            self._sysctl(family, base, key, value)
        self._users.setdefault(base, set()).add(name)
        try:
            await ipr.link("set", index=index, state="up")
        except NetlinkError as err:
            raise KernelError("vmac_up", err.code, f"{name}: {err}") from None

    async def _delete(self, index: int) -> None:
        ipr = await self._route()
        try:
            await ipr.link("del", index=index)
        except NetlinkError as err:
            if err.code not in (errno.ENODEV, errno.ENOENT):
                raise KernelError("vmac_del", err.code, str(err)) from None

    async def remove_vmac(self, *, base: str, name: str) -> None:
        index = await self._index(name)
        if index is not None:
            link = await self._link(index)
            if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "macvlan":
                raise KernelError("vmac_del", errno.EPERM, f"{name} is not a macvlan")
            await self._delete(index)
        users = self._users.get(base)
        if users is not None:
            users.discard(name)
            if not users:
                del self._users[base]
                for (family, key), value in self._saved.pop(base, {}).items():
                    if value:
                        self._sysctl(family, base, key, value)
