"""The IPVS port: what the rest of hactl may ask of an IPVS table, kernel or embedded.

Owns: the `IpvsBackend` Protocol. Implementations: `hactl.ipvs.userspace.UserspaceIpvs`
(the embedded engine) and the kernel adapter over netlink. Callers compute the desired
table, call `plan(desired, await backend.dump())` and `await backend.apply(ops)`.

Contract:
* `apply` is idempotent per operation: adding what exists and deleting what is missing
  succeed; any other refusal raises `hactl.errors.KernelError` (with the kernel's errno)
  and leaves the operations before it applied;
* snapshots are consistent per call and use the model's types only;
* `connections()` returns the table as `ipvsadm -Lnc` lists it (templates included).

Pure typing: imports only the model and the plan's operation types.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from hactl.ipvs.model import ConnStatus, IpvsSysctl, IpvsTable, IpvsTimeouts, ServiceStatus
from hactl.ipvs.plan import IpvsOp

__all__ = ["IpvsBackend"]


class IpvsBackend(Protocol):
    async def dump(self) -> IpvsTable:
        """The current services and destinations (destinations in add order)."""
        ...

    async def apply(self, ops: Sequence[IpvsOp]) -> None:
        """Apply `ops` in order (see the module contract for errors)."""
        ...

    async def services(self) -> tuple[ServiceStatus, ...]:
        """Services with counters, statistics and rates (`ipvsadm -Ln --stats/--rate`)."""
        ...

    async def connections(self) -> tuple[ConnStatus, ...]:
        """The connection table (`ipvsadm -Lnc`)."""
        ...

    async def get_timeouts(self) -> IpvsTimeouts:
        """`ipvsadm -l --timeout`."""
        ...

    async def set_timeouts(self, timeouts: IpvsTimeouts) -> None:
        """`ipvsadm --set tcp tcpfin udp` (0 leaves a value unchanged)."""
        ...

    async def get_sysctl(self) -> IpvsSysctl:
        """The /proc/sys/net/ipv4/vs tunables."""
        ...

    async def set_sysctl(self, sysctl: IpvsSysctl) -> None:
        """Write every tunable of `sysctl`."""
        ...
