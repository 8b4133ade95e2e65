"""`FakeDirector`: an in-memory `Director` for tests of the API, the CLI and the status page.

It behaves like the daemon at the port: overrides fold into the effective weight and IPVS
membership exactly as docs/operations.md describes (drain -> weight 0 and kept, disable ->
removed, weight N -> N while healthy, none -> health decides), `expire_templates` clears the
server's persistent connections, and the IPVS snapshots are derived from the same state, so
`hactl ipvs` shows what an operation did. Connection counts are set by the test
(`set_connections`), or fall by themselves one step per read with `decay_per_read`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from hactl.api.director import UnknownServer
from hactl.api.model import (
    CheckSummary,
    DaemonInfo,
    Health,
    Override,
    RealServerStatus,
    ReloadChange,
    ReloadResult,
    RsKey,
    VirtualServerStatus,
    VrrpInstanceStatus,
    format_rs,
    format_vs,
)
from hactl.api.overrides import fold_overrides
from hactl.ipvs.model import (
    ConnStatus,
    Destination,
    DestStatus,
    IpvsTimeouts,
    ServiceKey,
    ServiceStatus,
    Stats,
    VirtualService,
)
from hactl.sync.model import SyncStats

__all__ = ["FakeDirector", "FakeRealServer", "FakeVirtualServer"]


@dataclass(slots=True)
class FakeRealServer:
    addr: RsKey
    weight: int = 1
    health: Health = Health.UP
    active: int = 0
    inactive: int = 0
    persistent: int = 0
    override: Override | None = None
    checks: tuple[CheckSummary, ...] = ()
    stats: Stats = field(default_factory=Stats)


@dataclass(slots=True)
class FakeVirtualServer:
    key: ServiceKey
    real_servers: list[FakeRealServer]
    scheduler: str = "wlc"
    persistence_timeout: float | None = None
    stats: Stats = field(default_factory=Stats)


class FakeDirector:
    """Implements `hactl.api.director.Director` in memory."""

    def __init__(
        self,
        virtual_servers: Sequence[FakeVirtualServer] = (),
        *,
        vrrp: Sequence[VrrpInstanceStatus] = (),
        info: DaemonInfo | None = None,
        sync: SyncStats | None = None,
        connections: Sequence[ConnStatus] = (),
        reload_result: ReloadResult | None = None,
    ) -> None:
        self.vs = list(virtual_servers)
        self.vrrp = list(vrrp)
        self.sync = sync
        self.connections = list(connections)
        self.reload_result = reload_result or ReloadResult(ok=True, dry_run=False)
        self.info_value = info or DaemonInfo(
            version="0.0.0-test", config_path="/etc/hactl/hactl.conf",
            config_loaded_at=1_700_000_000.0, started_at=1_700_000_000.0, backend="embedded",
            router_id="lb1",
        )
        self.decay_per_read = 0
        self.calls: list[tuple[str, str, str, Override | None]] = []
        self.reloads: list[bool] = []
        self.expired: list[tuple[ServiceKey, RsKey]] = []

    # ---- test controls ----------------------------------------------------------------

    def server(self, vs: ServiceKey, rs: RsKey) -> FakeRealServer:
        for v in self.vs:
            if v.key == vs:
                for r in v.real_servers:
                    if r.addr == rs:
                        return r
                raise UnknownServer(f"no real server {format_rs(rs)} in {format_vs(vs)}")
        raise UnknownServer(f"no virtual server {format_vs(vs)}")

    def set_connections(
        self, vs: ServiceKey, rs: RsKey, *, active: int, inactive: int, persistent: int = 0
    ) -> None:
        server = self.server(vs, rs)
        server.active, server.inactive, server.persistent = active, inactive, persistent

    # ---- derived state ---------------------------------------------------------------

    @staticmethod
    def _effective(vs: ServiceKey, rs: FakeRealServer) -> tuple[bool, int]:
        """(in IPVS, weight): health (a down server is removed), then the daemon's rule for
        overrides (`fold_overrides`)."""
        health = (
            (Destination(addr=rs.addr[0], port=rs.addr[1], weight=rs.weight),)
            if rs.health is Health.UP else ()
        )
        overrides = {} if rs.override is None else {(vs, rs.addr): rs.override}
        folded = fold_overrides(vs, health, overrides)
        return (True, folded[0].weight) if folded else (False, 0)

    def _decay(self, rs: FakeRealServer) -> None:
        step = self.decay_per_read
        if step:
            rs.active = max(0, rs.active - step)
            rs.inactive = max(0, rs.inactive - step)
            rs.persistent = max(0, rs.persistent - step)

    # ---- Director: read side ---------------------------------------------------------

    def info(self) -> DaemonInfo:
        return self.info_value

    def vrrp_instances(self) -> Sequence[VrrpInstanceStatus]:
        return tuple(self.vrrp)

    def virtual_servers(self) -> Sequence[VirtualServerStatus]:
        out = []
        for v in self.vs:
            servers = []
            for r in v.real_servers:
                self._decay(r)
                in_ipvs, weight = self._effective(v.key, r)
                servers.append(RealServerStatus(
                    addr=r.addr[0], port=r.addr[1], health=r.health, configured_weight=r.weight,
                    effective_weight=weight, in_ipvs=in_ipvs, activeconns=r.active,
                    inactconns=r.inactive, persistconns=r.persistent, checks=r.checks,
                    override=r.override,
                ))
            out.append(VirtualServerStatus(
                key=v.key, scheduler=v.scheduler, quorum_up=True, sorry_active=False,
                real_servers=tuple(servers),
            ))
        return tuple(out)

    async def ipvs_services(self) -> Sequence[ServiceStatus]:
        out = []
        for v in self.vs:
            dests = []
            for r in v.real_servers:
                in_ipvs, weight = self._effective(v.key, r)
                if not in_ipvs:
                    continue
                dests.append(DestStatus(
                    dest=Destination(addr=r.addr[0], port=r.addr[1], weight=weight),
                    activeconns=r.active, inactconns=r.inactive, persistconns=r.persistent,
                    stats=r.stats,
                ))
            svc = VirtualService(
                key=v.key, scheduler=v.scheduler, persistence_timeout=v.persistence_timeout,
                destinations=tuple(d.dest for d in dests),
            )
            # Backends list destinations newest first, as the kernel does.
            out.append(ServiceStatus(service=svc, dests=tuple(reversed(dests)), stats=v.stats))
        return tuple(out)

    async def ipvs_connections(self) -> Sequence[ConnStatus]:
        return tuple(self.connections)

    def ipvs_timeouts(self) -> IpvsTimeouts:
        return IpvsTimeouts()

    def sync_stats(self) -> SyncStats | None:
        return self.sync

    # ---- Director: command side ------------------------------------------------------

    async def set_override(self, vs: ServiceKey, rs: RsKey, override: Override | None) -> None:
        server = self.server(vs, rs)
        server.override = override
        self.calls.append(("set_override", format_vs(vs), format_rs(rs), override))

    async def expire_templates(self, vs: ServiceKey, rs: RsKey) -> int:
        server = self.server(vs, rs)
        expired, server.persistent = server.persistent, 0
        self.expired.append((vs, rs))
        return expired

    async def reload(self, *, dry_run: bool) -> ReloadResult:
        self.reloads.append(dry_run)
        return dataclasses.replace(self.reload_result, dry_run=dry_run)


def sample_reload_plan() -> ReloadResult:
    """A plan with one added real server and one changed weight, for tests and demos."""
    return ReloadResult(
        ok=True, dry_run=False,
        changes=(
            ReloadChange(action="add", subject="real_server tcp:10.0.0.1:80 10.0.1.3:80",
                         detail="weight 1"),
            ReloadChange(action="change", subject="real_server tcp:10.0.0.1:80 10.0.1.2:80",
                         detail="weight 1 -> 2"),
        ),
    )


__all__ += ["sample_reload_plan"]
