"""The `Director` port: everything the control API reads from and asks of the running daemon.

The daemon (composition root) implements it; tests use `hactl.api.testing.FakeDirector`.
The port is deliberately narrow: the drain lifecycle, the override state file and peer
propagation live in `hactl.api` (`operations.py`) on top of these primitives, so the daemon
only has to (1) report state, (2) fold one override into its desired IPVS state, (3) expire
persistence templates of one real server, and (4) reload.

Contract for implementers:
* read methods return snapshots (frozen values), never live objects;
* `set_override` is idempotent and takes effect through the daemon's normal reconcile path
  (desired = config + health + overrides; `plan(desired, actual)`), so a reload or a health
  flap never undoes it; it raises `UnknownServer` for a server not in the running config;
* no method raises anything else for bad input: bugs may raise, and the API turns them into
  a 500 JSON error without a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from hactl.api.model import (
    DaemonInfo,
    Override,
    ReloadResult,
    RsKey,
    VirtualServerStatus,
    VrrpInstanceStatus,
)
from hactl.ipvs.model import ConnStatus, IpvsTimeouts, ServiceKey, ServiceStatus
from hactl.sync.model import SyncStats

__all__ = ["Director", "UnknownServer"]


class UnknownServer(LookupError):
    """No such virtual server, or no such real server in it (API: 404)."""


class Director(Protocol):
    # ---- read side -----------------------------------------------------------------------

    def info(self) -> DaemonInfo:
        """Version, config path and load time, backend, router id."""
        ...

    def vrrp_instances(self) -> Sequence[VrrpInstanceStatus]:
        """Every VRRP instance, in configuration order."""
        ...

    def virtual_servers(self) -> Sequence[VirtualServerStatus]:
        """Every virtual server with its real servers (health, weights, connections, checks,
        override), in configuration order. Connection counts come from the IPVS backend."""
        ...

    async def ipvs_services(self) -> Sequence[ServiceStatus]:
        """The IPVS table as the backend reports it (what `ipvsadm -Ln` prints)."""
        ...

    async def ipvs_connections(self) -> Sequence[ConnStatus]:
        """The connection table, templates included (what `ipvsadm -Lnc` prints)."""
        ...

    def ipvs_timeouts(self) -> IpvsTimeouts:
        """tcp / tcpfin / udp timeouts (`ipvsadm -L --timeout`)."""
        ...

    def sync_stats(self) -> SyncStats | None:
        """Connection-sync counters; None when no sync daemon is configured."""
        ...

    # ---- command side --------------------------------------------------------------------

    async def set_override(self, vs: ServiceKey, rs: RsKey, override: Override | None) -> None:
        """Apply (or with None, clear) an operator override and reconcile IPVS.

        Raises:
            UnknownServer: `vs` / `rs` are not in the running configuration.
        """
        ...

    async def expire_templates(self, vs: ServiceKey, rs: RsKey) -> int:
        """Expire the persistence templates pointing at `rs` in `vs`; returns how many.

        Raises:
            UnknownServer: as for `set_override`.
        """
        ...

    async def reload(self, *, dry_run: bool) -> ReloadResult:
        """Re-read the configuration. Invalid: `ok=False` with diagnostics, nothing changed.
        Valid: the keyed diff as `changes`, applied unless `dry_run`."""
        ...
