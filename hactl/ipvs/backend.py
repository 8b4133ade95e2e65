"""The IPVS port: what the rest of hactl may ask of an IPVS table, kernel or embedded.

Owns: the `IpvsBackend` Protocol. Implementations: `hactl.ipvs.userspace.UserspaceIpvs`
(the embedded engine) and the kernel adapter over netlink. Callers compute the desired
table, call `plan(desired, await backend.dump())` and `await backend.apply(ops)`.

Also `KernelIpvsBackend`: what a table shared with the rest of the system (the kernel's)
offers beyond that, for keepalived's global settings: ownership of services (`adopt`), the
flushes, tunables written by name, and the kernel's own sync daemons. The daemon asks for
it with `isinstance` (the Protocol is runtime-checkable); the embedded engine lacks it.

Contract:
* `apply` is idempotent per operation: adding what exists and deleting what is missing
  succeed; any other refusal raises `hactl.errors.KernelError` (with the kernel's errno)
  and leaves the operations before it applied;
* snapshots are consistent per call and use the model's types only;
* `connections()` returns the table as `ipvsadm -Lnc` lists it (templates included).

Pure typing: imports only the model and the plan's operation types (and, for type checking
only, the sync daemon status type of the ipvsadm views).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from hactl.ipvs.model import (
    ConnStatus,
    IpvsSysctl,
    IpvsTable,
    IpvsTimeouts,
    ServiceKey,
    ServiceStatus,
)
from hactl.ipvs.plan import IpvsOp

if TYPE_CHECKING:
    from hactl.ipvs.ipvsadm import SyncDaemonStatus

__all__ = ["IpvsBackend", "KernelIpvsBackend"]


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


@runtime_checkable
class KernelIpvsBackend(IpvsBackend, Protocol):
    """An IPVS table shared with the system (the kernel's): implemented by `KernelIpvs`."""

    def adopt(self, keys: Iterable[ServiceKey]) -> None:
        """Declare services hactl is responsible for although this instance did not add
        them (left by a previous run): `dump()` returns them, so they are reconciled."""
        ...

    async def lvs_flush(self) -> None:
        """Empty the whole table, whoever added its services (keepalived `lvs_flush`)."""
        ...

    async def lvs_flush_on_stop(self, *, everything: bool = False) -> None:
        """Remove the services hactl owns (`everything`: the whole table)."""
        ...

    async def write_sysctl(self, sysctl: IpvsSysctl, *, names: Iterable[str] | None) -> None:
        """Write exactly the tunables `names` of `sysctl`, in order (keepalived's
        `ipvs_sysctl`); None: those that differ from the kernel's."""
        ...

    async def sync_daemons(self) -> tuple[SyncDaemonStatus, ...]:
        """The kernel's running sync daemons (`ipvsadm -L --daemon`)."""
        ...

    async def start_sync_daemon(self, daemon: SyncDaemonStatus) -> None:
        """Start the kernel's master or backup sync daemon; already running alike succeeds."""
        ...

    async def stop_sync_daemon(self, state: Literal["master", "backup"]) -> None:
        """Stop the kernel's master or backup sync daemon; stopping none succeeds."""
        ...
