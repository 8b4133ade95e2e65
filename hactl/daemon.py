"""The composition root: one director built from one configuration, run under one TaskGroup.

`Director` wires the parts (STYLE §8.4) and holds no protocol decision of its own:

    config --derive--> checks specs ----> CheckRunner ----(DesiredChanged)----+
                       IPVS table -------------------------------------------+--> reconciler
                       VRRP slice -----> VrrpService --(master state)--> ha_suspend, sync role
                       sync settings --> SyncService <--(SyncConnNeeded)-- engine timers
    reconciler: desired_table(derived, health views, overrides)
                -> plan(desired, dump()) -> backend.apply(ops) -> data plane listeners

* The reconciler is the only writer of the IPVS table. Every change (health, reload,
  operator override) marks it dirty; it recomputes the whole desired table and applies the
  plan, serialized, so a reload, a restart and a health flap take the same path. It only
  ever touches services this director manages (the kernel may hold others).
* Embedded backend: `IpvsEngine` behind `UserspaceIpvs`, `EngineFlowTable` and the
  `DataPlane`; the engine's timers run at `next_deadline()`, its `SyncConnNeeded` effects go
  to the sync service (when this director is the sync master).
* VRRP: raw sockets and netlink when running as root; otherwise the unprivileged UDP
  development transport for unicast instances, with VIPs kept in memory (loudly warned).
  The VRRP master state drives `ha_suspend` (checks run only while master) and the sync role.
* Kernel backend (`KernelIpvsBackend`, docs/kernel-backend.md): keepalived's global settings
  act on the kernel's table: `lvs_flush` empties it at start, the `ipvs_sysctl` tunables
  named are written (only those) and `lvs_timeouts` set, the configured services are adopted
  (left by a previous run, they are reconciled, not only re-added), and `lvs_sync_daemon`
  runs the kernel's own sync daemon: backup from start, master while the followed VRRP
  instance is MASTER (`KernelSyncDaemons`), stopped at stop.
* Shutdown (`shutdown_trigger` returns): sync flushed and stopped, VRRP leaves (priority-0
  advert, VIPs removed), checks stop (omega scripts), then listeners closed and the managed
  IPVS services removed (the whole kernel table with `lvs_flush_on_stop` ALL). Reverse order
  of start; every step is attempted and logged.
* Reload (`reload()`): a configuration with errors changes nothing; a valid one is derived
  and applied by key: checks keep health state for kept servers, the table changes by plan
  only, listeners of kept services keep their sockets and connections, and VRRP routers
  take their new settings in place (`VrrpService.apply`: no transition, VIPs follow).

Only this module (and `cli.py` through it) constructs pyroute2-backed adapters.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import gc
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from hactl import __version__
from hactl.api.director import UnknownServer
from hactl.api.metrics import LatencyRecorder
from hactl.api.model import (
    CheckSummary,
    DaemonInfo,
    Health,
    Override,
    RealServerStatus,
    ReloadResult,
    RsKey,
    VirtualServerStatus,
    VrrpInstanceStatus,
    format_rs,
    format_vs,
)
from hactl.checks import (
    CheckEvent,
    CheckKey,
    CheckRunner,
    DesiredChanged,
    ProbeResult,
    RealServerKey,
    ScriptExecutor,
)
from hactl.clock import Clock
from hactl.config import Config, Loaded
from hactl.config.keywords import FlushOnStop
from hactl.derive import Derived, derive, desired_table, reload_changes, service_label
from hactl.errors import ConfigErrors, HactlError, NotSupported
from hactl.ipvs.backend import IpvsBackend, KernelIpvsBackend
from hactl.ipvs.dataplane import DataPlane, DataPlaneSettings, ServiceOptions, tune_collector
from hactl.ipvs.engine import EngineOptions, IpvsEngine
from hactl.ipvs.events import SyncConnNeeded
from hactl.ipvs.flows import EngineFlowTable
from hactl.ipvs.model import (
    AF_INET,
    AF_INET6,
    IP_VS_CONN_F_TEMPLATE,
    ConnStatus,
    IpvsSysctl,
    IpvsTable,
    IpvsTimeouts,
    ServiceKey,
    ServiceStatus,
)
from hactl.ipvs.plan import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    EditDest,
    EditService,
    IpvsOp,
    plan,
)
from hactl.ipvs.procfs import render_sysctl
from hactl.ipvs.userspace import UserspaceIpvs
from hactl.net.ports import AddressPort, IPInterface, NeighbourPort
from hactl.sync import SyncRole, SyncService
from hactl.sync.kernel import KernelSyncDaemons, KernelSyncProbe
from hactl.sync.model import SyncStats
from hactl.vrrp.events import VrrpState
from hactl.vrrp.firewall import FirewallPort
from hactl.vrrp.socket import ChannelFactory
from hactl.vrrp.vmac import VmacPort

__all__ = [
    "ApiDirector",
    "ApiSettings",
    "BackendKind",
    "Director",
    "EmbeddedIpvs",
    "VrrpPorts",
    "api_settings",
    "default_vrrp_ports",
    "kernel_ipvs_present",
    "open_backend",
    "raw_vrrp_possible",
    "resolve_backend",
    "run",
    "run_command",
    "sd_notify",
]

_log = structlog.get_logger("hactl.daemon")

# How often a kernel backend's counters are read for the API (connection counts for drains
# and status; the embedded engine is read directly, always current).
_IPVS_STATUS_INTERVAL = 0.5
# Engine events other than connection expiry (sync decisions) are collected this often.
_ENGINE_EVENT_INTERVAL = 0.2
# Bounds of the stop: the steps share one budget, and each still gets a minimum, so every
# step is attempted and the whole stop stays under 5 s (sync flush, priority-0 advert and
# omega scripts normally take milliseconds; scripts are cut at 1 s by their runners).
_STOP_BUDGET = 3.0
_STEP_MIN = 0.4


class BackendKind(enum.StrEnum):
    """Where the IPVS table lives (`hactl run --backend`)."""

    EMBEDDED = "embedded"
    KERNEL = "kernel"
    AUTO = "auto"


class _Shutdown(Exception):
    """Raised by the shutdown task to end the director's TaskGroup."""


@dataclass(slots=True)
class EmbeddedIpvs:
    """The embedded engine and its adapters (one engine shared by all three)."""

    engine: IpvsEngine
    flows: EngineFlowTable
    backend: UserspaceIpvs

    @classmethod
    def create(cls, derived: Derived, *, clock: Clock, rng: random.Random) -> EmbeddedIpvs:
        engine = IpvsEngine(rng=rng, sysctl=derived.sysctl, timeouts=derived.timeouts,
                            options=EngineOptions(report_expiry=True))
        return cls(engine, EngineFlowTable(engine), UserspaceIpvs(engine, clock))


@dataclass(slots=True, kw_only=True)
class VrrpPorts:
    """What the VRRP service needs from the system (see `hactl.vrrp.service.VrrpService`)."""

    addresses: AddressPort
    neighbours: NeighbourPort
    channels: ChannelFactory
    transport: str  # "raw" or "udp-dev": logged, and the dev transport is warned about
    close: Callable[[], Coroutine[Any, Any, None]] | None = None
    firewall: FirewallPort | None = None  # no_accept drop rules, VMAC IGMP redirect
    vmacs: VmacPort | None = None  # use_vmac macvlans


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings:
    """Where and how the control API listens (`hactl run --api ...`, docs/api.md).

    `unix_path` and `tcp` may both be set; `token` is required with `tcp`. `state_path`
    keeps the operator overrides across restarts (None: in memory only, for tests).
    `peer_api` is the other director's API (override propagation, `PeerLink`).
    """

    unix_path: Path | None = None
    tcp: tuple[str, int] | None = None
    token: str | None = None
    state_path: Path | None = None
    peer_api: str | None = None
    peer_token: str | None = None
    drain_poll_interval: float = 1.0
    # False for the default socket (no --api given): a director that cannot listen there
    # (another hactl owns it) still balances and fails over, and logs `api.unavailable`.
    required: bool = True


def sd_notify(message: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send one sd_notify(3) datagram to $NOTIFY_SOCKET (Type=notify services).

    A path, or an abstract socket when it starts with '@'. Returns False when no socket is
    set (not run by systemd); a failure to send is logged, never raised: the service
    manager's timeout is the judge of a lost READY=1.
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), target)
    except OSError as exc:
        _log.warning("daemon.notify_failed", message=message.split("\n", 1)[0],
                     error=str(exc))
        return False
    return True


def _reloading_message() -> str:
    # systemd.service(5) Type=notify-reload and sd_notify(3): RELOADING=1 carries the
    # CLOCK_MONOTONIC time in microseconds, so the manager can order it against READY=1.
    return f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


@dataclass(slots=True)
class _CheckRecord:
    """What the API reports about one checker: its last result and the metric counters."""

    kind: str
    last: ProbeResult | None = None
    at: float | None = None
    results: Counter[str] = field(default_factory=Counter)
    latency: LatencyRecorder = field(default_factory=LatencyRecorder)

    def summary(self) -> CheckSummary:
        last = self.last
        return CheckSummary(
            kind=self.kind, ok=None if last is None else last.ok,
            detail="" if last is None else last.detail,
            latency=None if last is None else last.elapsed, at=self.at,
            results=dict(self.results), histogram=self.latency.snapshot(),
        )


class _ObservedRunner(CheckRunner):
    """The check runner, with every probe result also recorded for the API and metrics.

    The runner feeds results to its cores in batches (`_feed_results`); this looks at each
    batch on its way in. Results of servers a reload removed are forgotten with them.
    """

    def __init__(self, *args: Any, wall: Callable[[], float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: dict[CheckKey, _CheckRecord] = {}
        self._wall = wall

    def _feed_results(self, now: float) -> None:
        if self._results:
            at = self._wall()
            for _slot, check, result in self._results:
                record = self.records.get(check)
                if record is None:
                    record = self.records[check] = _CheckRecord(kind=check.kind.value)
                record.last = result
                record.at = at
                record.results["success" if result.ok else "failure"] += 1
                record.latency.observe(result.elapsed)
        super()._feed_results(now)

    def forget(self, live: set[CheckKey]) -> None:
        for check in [c for c in self.records if c not in live]:
            del self.records[check]


class Director:
    """One running director.

    Args:
        config: the configuration to run.
        clock: the loop clock (tests may pass another `Clock`).
        backend: the IPVS backend; None builds the embedded engine.
        vrrp_ports: the VRRP transport and address ports; required when the configuration
            has VRRP instances (`hactl.daemon.default_vrrp_ports` picks them).
        sync_probe: finds kernel sync daemons (None: the netlink probe).
        dataplane_settings: embedded data-plane settings.
        rng: randomness for the engine and check warmup.
        api: serve the control API (None: no API, no override state file).
        config_path: the configuration file, as reported by the API.
        freeze_heap: once started and after each reload, move the long-lived objects
            (configuration model, tables, check state) out of the collector's generations
            (gc.freeze): with 10,000 real servers a full collection over them pauses the
            loop for hundreds of milliseconds, enough to delay adverts and checks. `hactl
            run` sets it; tests sharing one process leave it off.
    """

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock,
        backend: IpvsBackend | None = None,
        vrrp_ports: VrrpPorts | None = None,
        sync_probe: KernelSyncProbe | None = None,
        dataplane_settings: DataPlaneSettings | None = None,
        rng: random.Random | None = None,
        api: ApiSettings | None = None,
        config_path: str = "",
        freeze_heap: bool = False,
    ) -> None:
        self.config = config
        self._freeze_heap = freeze_heap
        self.derived = derive(config)
        self.config_path = config_path
        self.config_loaded_at = time.time()
        self.started_at = time.time()
        self._api_settings = api
        self.api: ApiDirector | None = None
        self._clock = clock
        self._rng = rng or random.Random()
        self.embedded: EmbeddedIpvs | None = None
        if backend is None:
            self.embedded = EmbeddedIpvs.create(self.derived, clock=clock, rng=self._rng)
            backend = self.embedded.backend
        self.backend: IpvsBackend = backend
        # The kernel's table (shared with the system): keepalived's global IPVS settings.
        self.kernel = backend if isinstance(backend, KernelIpvsBackend) else None
        # The kernel's own sync daemon (lvs_sync_daemon with the kernel backend).
        self.kernel_sync: KernelSyncDaemons | None = None
        self._backend_ready = False
        self._vrrp_ports = vrrp_ports
        self._sync_probe = sync_probe
        self._dp_settings = dataplane_settings
        self.dataplane: DataPlane | None = None
        # With VRRP, this director starts as backup: ha_suspend servers wait for mastership.
        self._master = self.derived.vrrp is None
        user = config.global_defs.script_user
        scripts = ScriptExecutor.from_config(None if user is None else user.user,
                                             None if user is None else user.group)
        self.runner = _ObservedRunner(self.derived.checks, emit=self._on_check_event,
                                      rng=self._rng, scripts=scripts, master=self._master,
                                      wall=time.time)
        self.vrrp: Any = None  # hactl.vrrp.service.VrrpService, imported when configured
        self.sync: SyncService | None = None
        # Operator overrides (drain, disable, weight), folded in by `desired_table`.
        self.overrides: dict[tuple[ServiceKey, RsKey], Override] = {}
        # `expire_quiescent_template` forced on by a drain with --expire-templates.
        self._expire_quiescent = False
        self._ipvs_status: tuple[ServiceStatus, ...] = ()
        self._kernel_timeouts: IpvsTimeouts | None = None  # the kernel's, last read
        self._vrrp_changed = asyncio.Event()
        self.vrrp_since: dict[str, float] = {}
        self.last_reload_error: str | None = None
        self._loader: Callable[[], Loaded] | None = None
        self._managed: set[ServiceKey] = set()
        self._dirty = asyncio.Event()
        self._reconciled = asyncio.Event()
        self._generation = 0
        self._applied_generation = -1
        self._vrrp_stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopped_steps: set[str] = set()
        self._stop_deadline: float | None = None
        self.started = asyncio.Event()
        self.sync_events_dropped = 0
        self._check_wiring(self.derived)
        if self.derived.sync is not None and self.kernel is not None:
            self.kernel_sync = KernelSyncDaemons(self.derived.sync, self.kernel)

    # ------------------------------------------------------------------ wiring checks

    def _check_wiring(self, derived: Derived) -> None:
        """Refuse what cannot run; warn about what runs partly (never skip silently)."""
        if derived.vrrp is not None and self._vrrp_ports is None:
            raise _refuse("vrrp", "VRRP instances are configured but no VRRP transport is "
                          "available")
        if derived.proxy_protocol and self.embedded is None:
            _log.warning("config.not_applied", where="virtual_server",
                         detail="proxy_protocol needs the embedded engine: the kernel "
                         "backend forwards packets unchanged")
        if derived.sync is not None:
            if self.embedded is None and self.kernel is None:
                raise _refuse(
                    "sync", "lvs_sync_daemon with a backend other than the embedded engine needs "
                    "the kernel's own sync daemon, which only the kernel backend offers; use "
                    "--backend embedded or remove lvs_sync_daemon")
            if self.kernel is not None and derived.sync.auth_key is not None:
                _log.warning("config.not_applied", where="global_defs",
                             detail="sync_auth_key is not applied: the kernel's sync daemon "
                             "neither sends nor checks it")
            names = {i.name for i in derived.vrrp.instances} if derived.vrrp else set()
            if derived.sync.instance not in names:
                raise _refuse("sync", f"lvs_sync_daemon follows VRRP instance "
                              f"{derived.sync.instance!r}, which is not configured")

    def _log_derived(self, derived: Derived) -> None:
        for warning in derived.warnings:
            _log.warning("config.not_applied", where=warning.where, detail=warning.message)

    # ------------------------------------------------------------------ run

    async def run(self, *, shutdown_trigger: Callable[[], Awaitable[Any]],
                  reload_trigger: Callable[[], Awaitable[Any]] | None = None,
                  loader: Callable[[], Loaded] | None = None) -> None:
        """Run until `shutdown_trigger` returns, then stop cleanly (module docstring).

        Args:
            shutdown_trigger: awaited once; its return starts the graceful stop.
            reload_trigger: awaited repeatedly; each return reloads with `loader`.
            loader: loads the configuration again (raises ConfigErrors / OSError).
        """
        self._log_derived(self.derived)
        self._loader = loader
        if self._api_settings is not None:
            # Before the first reconcile: a drained server must not come back for a moment
            # at start (docs/api.md).
            self.api = ApiDirector(self, self._api_settings)
        try:
            await self._setup_backend()
            if self.embedded is not None:
                self.dataplane = DataPlane(self.embedded.flows, self._dp_settings)
            async with asyncio.TaskGroup() as tg:
                self._spawn(tg, "reconciler", self._reconcile_loop())
                self._spawn(tg, "checks", self.runner.run())
                if self.embedded is not None:
                    self._spawn(tg, "engine", self._engine_loop())
                if self.embedded is None:
                    self._spawn(tg, "ipvs-status", self._ipvs_status_loop())
                if self.derived.vrrp is not None:
                    self._start_vrrp(tg)
                    self._spawn(tg, "roles", self._role_loop())
                if self.derived.sync is not None and self.embedded is not None:
                    self._start_sync(tg)
                if reload_trigger is not None and loader is not None:
                    self._spawn(tg, "reload", self._reload_loop(reload_trigger, loader))
                tg.create_task(self._until(shutdown_trigger), name="shutdown")
                self.mark_dirty()
                tg.create_task(self._announce_started(tg), name="started")
        except* _Shutdown:
            pass
        finally:
            await self._cleanup()

    def _spawn(self, tg: asyncio.TaskGroup, name: str,
               coro: Coroutine[Any, Any, None]) -> None:
        self._tasks[name] = tg.create_task(_named(name, coro), name=name)

    async def _announce_started(self, tg: asyncio.TaskGroup) -> None:
        await self.wait_reconciled()
        if self.api is not None:
            await self.api.start(tg)
        self.started.set()
        if self._freeze_heap:
            gc.freeze()  # see `freeze_heap` in the class docstring
            if self.dataplane is not None:
                tune_collector()  # per-connection garbage (hactl.ipvs.dataplane)
        sd_notify(f"READY=1\nSTATUS=serving {len(self.derived.table.services)} virtual "
                  f"services\nMAINPID={os.getpid()}")
        _log.info("daemon.started", services=len(self.derived.table.services),
                  vrrp_instances=len(self.derived.vrrp.instances) if self.derived.vrrp else 0,
                  sync=self.derived.sync is not None)

    async def _setup_backend(self) -> None:
        if self.embedded is not None:
            return  # the engine was built with the tunables
        kernel = self.kernel
        d = self.derived
        if kernel is None:
            # Another table behind the port: every tunable, as the engine would have them.
            if d.sysctl != await self.backend.get_sysctl():
                await self.backend.set_sysctl(d.sysctl)
            if d.timeouts is not None:
                await self.backend.set_timeouts(d.timeouts)
            self._backend_ready = True
            return
        # keepalived's order: flush, tunables, timeouts; then the services (first reconcile).
        if d.lvs_flush:
            await kernel.lvs_flush()
            _log.info("ipvs.flushed", reason="lvs_flush")
        self._backend_ready = True
        if d.sysctl_names:
            # Only the tunables the configuration names: the others stay as the system has
            # them (keepalived's ipvs_sysctl), not reset to hactl's defaults.
            await kernel.write_sysctl(self.wanted_sysctl(), names=d.sysctl_names)
        if d.kernel_timeouts is not None:
            await kernel.set_timeouts(d.kernel_timeouts)
        if self.kernel_sync is not None:
            # keepalived starts the backup daemon at start; VRRP makes it master later.
            await self.kernel_sync.set_role(SyncRole.BACKUP)

    async def _until(self, trigger: Callable[[], Awaitable[Any]]) -> None:
        await trigger()
        sd_notify("STOPPING=1")
        _log.info("daemon.stopping")
        await self._stop_services()
        raise _Shutdown

    # ------------------------------------------------------------------ reconciler

    def mark_dirty(self) -> None:
        """Ask the reconciler to recompute the desired table."""
        self._generation += 1
        self._reconciled.clear()
        self._dirty.set()

    async def wait_reconciled(self) -> None:
        """Return once every change asked for so far has been applied."""
        while self._applied_generation < self._generation:
            await self._reconciled.wait()

    def desired(self) -> IpvsTable:
        return desired_table(self.derived, self.runner.views(), self.overrides)

    async def _reconcile_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            generation = self._generation
            try:
                await self._reconcile()
            except HactlError as exc:
                # A refused operation (kernel errno) is logged; the next change retries the
                # whole plan, which starts from what the backend really holds.
                _log.error("ipvs.reconcile_failed", error=str(exc))
            self._applied_generation = max(self._applied_generation, generation)
            if self._applied_generation >= self._generation:
                self._reconciled.set()

    async def _reconcile(self) -> None:
        desired = self.desired()
        wanted = {svc.key for svc in desired.services}
        if self.kernel is not None:
            # Configured services are hactl's even when a previous run (or an operator) added
            # them: their stale destinations are removed now, not after the next change.
            self.kernel.adopt(wanted)
        actual = await self.backend.dump()
        # Only services this director manages: the kernel may hold other people's.
        mine = self._managed | wanted
        actual = IpvsTable(tuple(s for s in actual.services if s.key in mine))
        ops = plan(desired, actual)
        if ops:
            # Until the apply completes, both old and new services count as ours: a stop
            # in the middle of it still removes whatever was installed.
            self._managed = mine
            await self.backend.apply(ops)
            for op in ops:
                _log_op(op, self.derived.labels)
        self._managed = wanted
        if self.dataplane is not None:
            options = {key: ServiceOptions(proxy_protocol=2)
                       for key in self.derived.proxy_protocol}
            self.dataplane.apply(desired.services, options)

    def set_override(self, vs: ServiceKey, rs: RsKey, override: Override | None) -> None:
        """An operator override of one destination (None removes it); the reconciler folds
        it in (`hactl.api.overrides.fold_overrides`)."""
        if override is None:
            self.overrides.pop((vs, rs), None)
        else:
            self.overrides[(vs, rs)] = override
        self.mark_dirty()

    def ipvs_status(self) -> tuple[ServiceStatus, ...]:
        """The IPVS table with counters: the engine's own, or the kernel's last reading."""
        if self.embedded is not None:
            return self.embedded.engine.services()
        return self._ipvs_status

    async def refresh_ipvs_status(self) -> None:
        if self.embedded is None:
            self._ipvs_status = await self.backend.services()
            if self.kernel is not None:
                # What the kernel really uses: lvs_timeouts may leave some as they were.
                self._kernel_timeouts = await self.kernel.get_timeouts()

    def kernel_timeouts(self) -> IpvsTimeouts | None:
        """The kernel's timeouts as last read (None: not read yet, or no kernel backend)."""
        return self._kernel_timeouts

    async def _ipvs_status_loop(self) -> None:
        while True:
            try:
                await self.refresh_ipvs_status()
            except (HactlError, OSError) as exc:
                _log.warning("ipvs.status_failed", error=str(exc))
            await asyncio.sleep(_IPVS_STATUS_INTERVAL)

    def wanted_sysctl(self, derived: Derived | None = None) -> IpvsSysctl:
        """The configured tunables, with `expire_quiescent_template` on once a drain asked
        to expire templates (it stays on until restart: docs/operations.md)."""
        sysctl = (derived or self.derived).sysctl
        if self._expire_quiescent and not sysctl.expire_quiescent_template:
            sysctl = replace(sysctl, expire_quiescent_template=1)
        return sysctl

    async def enable_expire_quiescent(self) -> None:
        if self._expire_quiescent or self.derived.sysctl.expire_quiescent_template:
            return
        self._expire_quiescent = True
        _log.warning("ipvs.expire_quiescent_template_enabled",
                     detail="a drain asked to expire persistence templates: templates of "
                     "every quiesced (weight 0) server are now expired on their next use, "
                     "until hactl restarts")
        if self.embedded is not None:
            self.embedded.engine.set_sysctl(self.wanted_sysctl())
        elif self.kernel is not None:
            await self.kernel.write_sysctl(self.wanted_sysctl(),
                                           names=("expire_quiescent_template",))
        else:
            await self.backend.set_sysctl(self.wanted_sysctl())

    def _on_check_event(self, event: CheckEvent) -> None:
        if isinstance(event, DesiredChanged):
            self.mark_dirty()

    # ------------------------------------------------------------------ engine

    async def _engine_loop(self) -> None:
        """Run the engine's timers at their deadline and hand its sync decisions on."""
        assert self.embedded is not None
        flows = self.embedded.flows
        clock = self._clock
        while True:
            now = clock.now()
            deadline = flows.next_deadline()
            if deadline is not None and now >= deadline:
                flows.handle_timer(now=now)
                if self.dataplane is not None:
                    self.dataplane.reap()
            self._forward_engine_events()
            deadline = flows.next_deadline()
            wake = now + _ENGINE_EVENT_INTERVAL
            if deadline is not None:
                wake = max(min(wake, deadline), now)
            await clock.sleep_until(wake)

    def _forward_engine_events(self) -> None:
        assert self.embedded is not None
        entries = [e.conn for e in self.embedded.flows.pop_engine_events()
                   if isinstance(e, SyncConnNeeded)]
        if not entries:
            return
        if self.sync is not None:
            self.sync.submit(entries)
        else:
            self.sync_events_dropped += len(entries)

    # ------------------------------------------------------------------ VRRP and roles

    def _start_vrrp(self, tg: asyncio.TaskGroup) -> None:
        from hactl.vrrp.notify import Notifier
        from hactl.vrrp.service import VrrpService

        ports = self._vrrp_ports
        assert ports is not None and self.derived.vrrp is not None
        log = structlog.get_logger("hactl.vrrp")
        notifier = Notifier(
            user=self.derived.vrrp.script_user,
            on_error=lambda what, err: log.warning("vrrp.notify_failed", what=what,
                                                    error=str(err)),
        )
        self.vrrp = VrrpService(self.derived.vrrp, addresses=ports.addresses,
                                neighbours=ports.neighbours, channels=ports.channels,
                                clock=self._clock, notifier=notifier,
                                on_state_changed=self._on_vrrp_state,
                                firewall=ports.firewall, vmacs=ports.vmacs)
        _log.info("vrrp.transport", transport=ports.transport)
        if ports.transport != "raw":
            _log.warning("vrrp.dev_transport", transport=ports.transport,
                         detail="unprivileged UDP development transport: adverts go over UDP "
                         "to the unicast peers and VIPs are kept in memory, not on interfaces")
        self._spawn(tg, "vrrp", self.vrrp.run(shutdown_trigger=self._vrrp_stop.wait))

    @property
    def master(self) -> bool:
        """Whether this director is VRRP master for some instance (True without VRRP)."""
        return self._master

    def vrrp_states(self) -> dict[str, VrrpState]:
        """The state of each VRRP instance by name (empty before VRRP runs)."""
        if self.vrrp is None:
            return {}
        return {name: r.state for name, r in self.vrrp.routers.items()}

    def _on_vrrp_state(self, instance: str, state: VrrpState) -> None:
        self.vrrp_since[instance] = time.time()
        self._vrrp_changed.set()

    async def _role_loop(self) -> None:
        """Follow VRRP: ha_suspend (checks while master) and the sync daemon's role, on each
        state change the VRRP service reports."""
        last_master: bool | None = None if self._master else False
        last_role: SyncRole | None = None
        while True:
            self._vrrp_changed.clear()
            states = self.vrrp_states()
            master = any(s is VrrpState.MASTER for s in states.values())
            if master != last_master:
                self._master = master
                self.runner.set_master(master, now=self._clock.now())
                _log.info("daemon.master_changed", master=master)
                last_master = master
            if self.sync is not None and self.derived.sync is not None:
                state = states.get(self.derived.sync.instance)
                role = SyncRole.MASTER if state is VrrpState.MASTER else SyncRole.BACKUP
                if role != last_role:
                    self.sync.set_role(role)
                    assert self.embedded is not None
                    self.embedded.engine.set_sync_state(master=role is SyncRole.MASTER,
                                                        backup=role is SyncRole.BACKUP)
                    last_role = role
            if self.kernel_sync is not None and self.derived.sync is not None:
                await self._follow_kernel_sync(states.get(self.derived.sync.instance))
            await self._vrrp_changed.wait()
            if self._vrrp_stop.is_set():
                # VRRP is leaving because the director stops: sync and checks stop on
                # their own; following the routers down would only restart work.
                return

    async def _follow_kernel_sync(self, state: VrrpState | None) -> None:
        """The kernel's sync daemon follows the instance (keepalived ipvs_syncd_master /
        ipvs_syncd_backup). A refusal is logged: VRRP and the table go on without sync, and
        the next transition tries again."""
        assert self.kernel_sync is not None
        role = SyncRole.MASTER if state is VrrpState.MASTER else SyncRole.BACKUP
        if role is self.kernel_sync.role:
            return
        try:
            await self.kernel_sync.set_role(role)
        except (HactlError, OSError) as exc:
            _log.error("sync.kernel_daemon_failed", role=role.name.lower(), error=str(exc))

    def _start_sync(self, tg: asyncio.TaskGroup) -> None:
        assert self.derived.sync is not None and self.embedded is not None
        self.sync = SyncService(self.derived.sync, sink=self.embedded.engine,
                                clock=self._clock, kernel=self._sync_probe,
                                role=SyncRole.BACKUP)
        self._spawn(tg, "sync", self.sync.run())

    # ------------------------------------------------------------------ reload

    async def _reload_loop(self, trigger: Callable[[], Awaitable[Any]],
                           loader: Callable[[], Loaded]) -> None:
        while True:
            await trigger()
            _log.info("config.reload_requested")
            try:
                loaded = loader()
            except ConfigErrors as exc:
                for diag in exc.diagnostics:
                    _log.error("config.error", diagnostic=str(diag))
                _log.error("config.reload_rejected", errors=len(exc.errors),
                           detail="the running configuration is kept unchanged")
                continue
            except OSError as exc:
                _log.error("config.reload_rejected", error=str(exc),
                           detail="the running configuration is kept unchanged")
                continue
            for diag in loaded.warnings:
                _log.warning("config.warning", diagnostic=str(diag))
            await self.reload(loaded.config)

    def reload_plan(self, config: Config) -> ReloadResult:
        """What `reload(config)` would change, without changing anything (dry run)."""
        try:
            new = derive(config)
            self._check_reload(new)
        except (ValueError, HactlError) as exc:
            return ReloadResult(ok=False, dry_run=True, diagnostics=(str(exc),))
        return ReloadResult(ok=True, dry_run=True, changes=reload_changes(self.derived, new))

    async def reload(self, config: Config) -> bool:
        """Apply a new, valid configuration by key (module docstring). False: refused, with
        the reason in `last_reload_error`."""
        sd_notify(_reloading_message())
        try:
            return await self._reload(config)
        finally:
            sd_notify("READY=1")

    async def _reload(self, config: Config) -> bool:
        self.last_reload_error = None
        try:
            new = derive(config)
            self._check_reload(new)
        except (ValueError, HactlError) as exc:
            self.last_reload_error = str(exc)
            _log.error("config.reload_rejected", error=str(exc),
                       detail="the running configuration is kept unchanged")
            return False
        old = self.derived
        self._log_derived(new)
        if new.vrrp != old.vrrp and self.vrrp is not None and new.vrrp is not None:
            # Applied in place by instance name: routers keep their state and timers, so a
            # reload causes no transition and no VIP move (unlike keepalived's reload, which
            # can drop a master to BACKUP); only added, removed or re-identified instances
            # start or leave (RFC 5798 §6.4.1 / §6.4.3).
            # First of the changes, and all or nothing: when it fails (e.g. an added
            # instance's interface has no address) the whole reload is refused.
            try:
                await self.vrrp.apply(new.vrrp, now=self._clock.now())
            except (HactlError, OSError) as exc:
                self.last_reload_error = str(exc)
                _log.error("config.reload_rejected", error=str(exc),
                           detail="the running configuration is kept unchanged")
                return False
        if new.sync != old.sync and self.sync is not None and new.sync is not None:
            self.sync.apply(new.sync, now=self._clock.now())
        if new.sync != old.sync and self.kernel_sync is not None and new.sync is not None:
            try:
                await self.kernel_sync.apply(new.sync)
            except (HactlError, OSError) as exc:
                _log.error("sync.kernel_daemon_failed", error=str(exc))
        if self.embedded is not None:
            engine = self.embedded.engine
            if new.sysctl != old.sysctl:
                engine.set_sysctl(self.wanted_sysctl(new))
            if new.timeouts is not None and new.timeouts != old.timeouts:
                engine.set_timeouts(new.timeouts)
        elif self.kernel is not None:
            try:
                await self._reload_kernel_tunables(old, new)
            except (HactlError, OSError) as exc:
                # The services still follow the new configuration; only the tunables did not.
                _log.error("ipvs.tunables_failed", error=str(exc))
        else:
            try:
                if new.sysctl != old.sysctl:
                    await self.backend.set_sysctl(self.wanted_sysctl(new))
                if new.timeouts is not None and new.timeouts != old.timeouts:
                    await self.backend.set_timeouts(new.timeouts)
            except (HactlError, OSError) as exc:
                # The services still follow the new configuration; only the tunables did not.
                _log.error("ipvs.tunables_failed", error=str(exc))
        before = {s.key for s in old.table.services}
        after = {s.key for s in new.table.services}
        self.config = config
        self.derived = new
        self.config_loaded_at = time.time()
        self.runner.apply(new.checks, now=self._clock.now())
        self.runner.forget({ck for spec in new.checks for rs in spec.real_servers
                            for ck in rs.check_keys(spec.key)})
        self.mark_dirty()
        await self.wait_reconciled()
        _log.info("config.reloaded", services_added=len(after - before),
                  services_removed=len(before - after),
                  services_kept=len(after & before))
        if self._freeze_heap:
            gc.freeze()
        return True

    async def _reload_kernel_tunables(self, old: Derived, new: Derived) -> None:
        """The tunables newly named or changed, and the timeouts when they changed. A tunable
        no longer named keeps its value (keepalived does not restore it either)."""
        assert self.kernel is not None
        was, now = self.wanted_sysctl(old), self.wanted_sysctl(new)
        names = [n for n in new.sysctl_names
                 if n not in old.sysctl_names or render_sysctl(was, n) != render_sysctl(now, n)]
        if names:
            await self.kernel.write_sysctl(now, names=names)
        if new.kernel_timeouts is not None and new.kernel_timeouts != old.kernel_timeouts:
            await self.kernel.set_timeouts(new.kernel_timeouts)

    def _check_reload(self, new: Derived) -> None:
        if (new.sync is None) != (self.derived.sync is None):
            raise _refuse("sync", "adding or removing lvs_sync_daemon needs a restart")
        if (new.vrrp is None) != (self.derived.vrrp is None):
            # the VRRP transport and its tasks are chosen at start
            raise _refuse("vrrp", "adding or removing every VRRP instance needs a restart")
        if new.sync is not None:
            names = {i.name for i in new.vrrp.instances} if new.vrrp else set()
            if new.sync.instance not in names:
                raise _refuse("sync", f"lvs_sync_daemon follows VRRP instance "
                              f"{new.sync.instance!r}, which is not configured")

    # ------------------------------------------------------------------ stop

    async def _stop_services(self) -> None:
        """Graceful part of the stop, in reverse order of start; every step attempted."""
        if self.api is not None:
            await self._step("api", self.api.stop)
        await self._step("sync", self._stop_sync)
        await self._step("vrrp", self._stop_vrrp)
        await self._step("checks", self._stop_checks)

    async def _step(self, name: str, step: Callable[[], Awaitable[None]]) -> None:
        if name in self._stopped_steps:
            return
        self._stopped_steps.add(name)
        loop = asyncio.get_running_loop()
        if self._stop_deadline is None:
            self._stop_deadline = loop.time() + _STOP_BUDGET
        limit = max(self._stop_deadline - loop.time(), _STEP_MIN)
        try:
            async with asyncio.timeout(limit):
                await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log.error("daemon.stop_step_failed", step=name, error=repr(exc))
        else:
            _log.info("daemon.stopped_step", step=name)

    async def _stop_sync(self) -> None:
        if self.kernel_sync is not None:
            await self.kernel_sync.stop()
        task = self._tasks.get("sync")
        if self.sync is None or task is None or task.done():
            return
        # Leaving MASTER flushes the partial datagrams (SyncService._leave_master).
        self.sync.set_role(SyncRole.NONE)
        with contextlib.suppress(HactlError):
            await self.sync.wait_role(SyncRole.NONE)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _stop_vrrp(self) -> None:
        task = self._tasks.get("vrrp")
        self._vrrp_stop.set()
        try:
            if task is not None and not task.done():
                await asyncio.shield(task)
        finally:
            # The ports' sockets are released even when the service itself failed.
            ports = self._vrrp_ports
            if ports is not None and ports.close is not None:
                await ports.close()

    async def _stop_checks(self) -> None:
        task = self._tasks.get("checks")
        self.runner.stop()
        if task is not None and not task.done():
            await asyncio.shield(task)

    async def _cleanup(self) -> None:
        """Whatever path ended the run: release sockets and the managed IPVS services."""
        await self._stop_services()  # no-ops when the graceful stop already ran them
        await self._step("listeners", self._close_dataplane)
        await self._step("ipvs", self._remove_services)
        _log.info("daemon.stopped")

    async def _close_dataplane(self) -> None:
        if self.dataplane is not None:
            self.dataplane.close()

    async def _remove_services(self) -> None:
        if (self.kernel is not None and self._backend_ready
                and self.derived.lvs_flush_on_stop is FlushOnStop.ALL):
            # keepalived's lvs_flush_on_stop without VS: the whole table, whoever added it.
            await self.kernel.lvs_flush()
            _log.info("ipvs.flushed", reason="lvs_flush_on_stop")
            self._managed = set()
            return
        if not self._managed:
            return
        actual = await self.backend.dump()
        mine = IpvsTable(tuple(s for s in actual.services if s.key in self._managed))
        ops = plan(IpvsTable(), mine)
        await self.backend.apply(ops)
        for op in ops:
            _log_op(op, self.derived.labels)
        self._managed = set()


class ApiDirector:
    """The running director behind the control API (`hactl.api.director.Director`), with
    the API's own parts: the override store, `Operations`, the `ApiServer`, the `PeerLink`.

    Read methods return snapshots built from the director's live parts (configuration,
    check cores, VRRP routers, the IPVS backend); commands go through the director's
    reconciler, so an override takes the same path as a health change or a reload.
    """

    def __init__(self, director: Director, settings: ApiSettings) -> None:
        from hactl.api.operations import Operations
        from hactl.api.overrides import OverrideStore, load_state
        from hactl.api.server import ApiServer
        from hactl.clock import LoopClock

        self._director = director
        self._settings = settings
        origin = director.config.global_defs.router_id or socket.gethostname()
        if settings.state_path is not None:
            # /var/lib/hactl normally comes from systemd (StateDirectory=); made for manual runs.
            settings.state_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            store = load_state(settings.state_path, origin=origin)
        else:
            store = OverrideStore(origin)
        director.overrides.update(store.active())
        self._link: Any = None
        publish: Callable[[bytes], None] | None = None
        if settings.peer_api is not None:
            from hactl.api.peer import PeerLink

            self._link = PeerLink(lambda: self.operations.full_message(),
                                  address=settings.peer_api, token=settings.peer_token,
                                  clock=LoopClock())
            publish = self._link.publish
        self.operations = Operations(self, store, clock=LoopClock(), wall=time.time,
                                     state_path=settings.state_path, publish=publish,
                                     poll_interval=settings.drain_poll_interval)
        self.server = ApiServer(self.operations, unix_path=settings.unix_path,
                                tcp=settings.tcp, token=settings.token,
                                poll_interval=settings.drain_poll_interval)
        self._peer_task: asyncio.Task[None] | None = None
        self._started = False

    async def start(self, tg: asyncio.TaskGroup) -> None:
        """Listen, resume the drains the state file shows running, start peer delivery."""
        try:
            await self.server.start()
        except OSError as exc:
            if self._settings.required:
                raise
            _log.error("api.unavailable", error=str(exc),
                       detail="running without the control API; pass --api to choose "
                       "another address")
        else:
            self._started = True
        await self.operations.resume()
        if self._link is not None:
            self._peer_task = tg.create_task(self._link.run(), name="api-peer")

    async def stop(self) -> None:
        """Drains stop first (their overrides stay in the state file), then the listener."""
        try:
            await self.operations.aclose()
            if self._peer_task is not None:
                self._peer_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._peer_task
        finally:
            if self._started:
                self._started = False
                await self.server.stop()

    # ---- read side -----------------------------------------------------------------------

    def info(self) -> DaemonInfo:
        d = self._director
        return DaemonInfo(
            version=__version__, config_path=d.config_path, config_loaded_at=d.config_loaded_at,
            started_at=d.started_at, backend="embedded" if d.embedded is not None else "kernel",
            router_id=d.config.global_defs.router_id or socket.gethostname(),
        )

    def vrrp_instances(self) -> Sequence[VrrpInstanceStatus]:
        d = self._director
        if d.derived.vrrp is None:
            return ()
        from hactl.vrrp.model import Family

        routers = d.vrrp.routers if d.vrrp is not None else {}
        out = []
        for inst in d.derived.vrrp.instances:
            router = routers.get(inst.name)
            st = router.status() if router is not None else None
            out.append(VrrpInstanceStatus(
                name=inst.name, interface=inst.interface, vrid=inst.vrid,
                family=AF_INET6 if inst.family is Family.INET6 else AF_INET,
                state=st.state.name if st is not None else "INIT",
                priority=inst.priority,
                effective_priority=st.effective_priority if st is not None else inst.priority,
                master_address=st.master_address if st is not None else None,
                last_advert_source=st.last_advert_source if st is not None else None,
                transitions=st.transitions if st is not None else 0,
                split_brain=st.split_brain if st is not None else 0,
                adverts_sent=st.adverts_sent if st is not None else 0,
                adverts_received=st.adverts_received if st is not None else 0,
                adverts_dropped=dict(st.drops) if st is not None else {},
                vips=tuple(str(v) for v in inst.vips),
                state_since=d.vrrp_since.get(inst.name),
            ))
        return tuple(out)

    def virtual_servers(self) -> Sequence[VirtualServerStatus]:
        d = self._director
        derived = d.derived
        health_key = {key: hk for hk, keys in derived.members.items() for key in keys}
        views = d.runner.views()
        status = {st.service.key: st for st in d.ipvs_status()}
        records: dict[RealServerKey, list[CheckSummary]] = {}
        for check, record in d.runner.records.items():
            records.setdefault(check.rs, []).append(record.summary())
        out = []
        for svc in derived.table.services:
            hk = health_key.get(svc.key, svc.key)
            view = views.get(hk)
            st = status.get(svc.key)
            installed = {ds.dest.key: ds for ds in st.dests} if st is not None else {}
            try:
                core = d.runner.core(hk)
            except KeyError:
                core = None
            servers = []
            for dest in svc.destinations:
                rkey = RealServerKey(hk, dest.addr, dest.port)
                checks = tuple(records.get(rkey, ()))
                up: bool | None
                try:
                    up = core.tracker(rkey).up if core is not None else None
                except KeyError:
                    up = None
                health = Health.UNKNOWN if up is None else Health.UP if up else Health.DOWN
                ds = installed.get(dest.key)
                servers.append(RealServerStatus(
                    addr=dest.addr, port=dest.port, health=health,
                    configured_weight=dest.weight,
                    effective_weight=ds.dest.weight if ds is not None else 0,
                    in_ipvs=ds is not None,
                    activeconns=ds.activeconns if ds is not None else 0,
                    inactconns=ds.inactconns if ds is not None else 0,
                    persistconns=ds.persistconns if ds is not None else 0,
                    checks=checks, override=d.overrides.get((svc.key, dest.key)),
                ))
            out.append(VirtualServerStatus(
                key=svc.key, scheduler=svc.scheduler,
                quorum_up=view.quorum_up if view is not None else True,
                sorry_active=view.sorry_active if view is not None else False,
                real_servers=tuple(servers), name=derived.labels.get(svc.key, ""),
            ))
        return tuple(out)

    async def ipvs_services(self) -> Sequence[ServiceStatus]:
        d = self._director
        managed = {s.key for s in d.derived.table.services}
        return tuple(st for st in await d.backend.services() if st.service.key in managed)

    async def ipvs_connections(self) -> Sequence[ConnStatus]:
        return await self._director.backend.connections()

    def ipvs_timeouts(self) -> IpvsTimeouts:
        d = self._director
        if d.embedded is not None:
            return d.embedded.engine.timeouts()
        return d.kernel_timeouts() or d.derived.timeouts or IpvsTimeouts()

    def sync_stats(self) -> SyncStats | None:
        sync = self._director.sync
        return sync.stats() if sync is not None else None

    # ---- command side --------------------------------------------------------------------

    def _require(self, vs: ServiceKey, rs: RsKey) -> None:
        for svc in self._director.derived.table.services:
            if svc.key == vs:
                if any(dest.key == rs for dest in svc.destinations):
                    return
                raise UnknownServer(f"no real server {format_rs(rs)} in {format_vs(vs)}")
        raise UnknownServer(f"no virtual server {format_vs(vs)}")

    async def set_override(self, vs: ServiceKey, rs: RsKey, override: Override | None) -> None:
        self._require(vs, rs)
        d = self._director
        d.set_override(vs, rs, override)
        await d.wait_reconciled()
        await d.refresh_ipvs_status()

    async def expire_templates(self, vs: ServiceKey, rs: RsKey) -> int:
        """Persistence templates of `rs` stop routing their clients to it.

        Neither backend can delete one template; both honour `expire_quiescent_template`,
        which expires a template of a weight-0 server when its client comes back. A drain
        quiesces first, so turning it on expires exactly this server's templates (and those
        of any other quiesced server: logged, docs/operations.md). Returns how many of
        `rs`'s templates there were.
        """
        self._require(vs, rs)
        d = self._director
        await d.enable_expire_quiescent()
        count = 0
        for conn in await d.backend.connections():
            if not conn.flags & IP_VS_CONN_F_TEMPLATE or (conn.daddr, conn.dport) != rs:
                continue
            if (conn.fwmark == vs.fwmark if vs.fwmark else conn.vaddr == vs.addr):
                count += 1
        return count

    async def reload(self, *, dry_run: bool) -> ReloadResult:
        from hactl.config.report import render_text

        d = self._director
        loader = d._loader
        if loader is None:
            return ReloadResult(ok=False, dry_run=dry_run,
                                diagnostics=("this daemon has no configuration file to re-read",))
        try:
            loaded = loader()
        except ConfigErrors as exc:
            lines = render_text(exc.diagnostics, with_summary=False).splitlines()
            return ReloadResult(ok=False, dry_run=dry_run,
                                diagnostics=tuple(str(diag) for diag in exc.diagnostics)
                                or tuple(lines))
        except OSError as exc:
            return ReloadResult(ok=False, dry_run=dry_run,
                                diagnostics=(f"cannot read the configuration: {exc}",))
        plan_ = d.reload_plan(loaded.config)
        if dry_run or not plan_.ok:
            return replace(plan_, dry_run=dry_run)
        for diag in loaded.warnings:
            _log.warning("config.warning", diagnostic=str(diag))
        if not await d.reload(loaded.config):
            return ReloadResult(ok=False, dry_run=False,
                                diagnostics=(d.last_reload_error or "reload refused",))
        return replace(plan_, dry_run=False)


async def _named(name: str, coro: Coroutine[Any, Any, None]) -> None:
    """Run a director task; an expected failure (no socket, a refused setup) is logged with
    the task's name and carries it as a note, so the one-line error says where it failed."""
    try:
        await coro
    except (HactlError, OSError) as exc:
        _log.error("daemon.task_failed", task=name, error=str(exc))
        exc.add_note(name)
        raise


def _refuse(op: str, message: str) -> NotSupported:
    return NotSupported(op, errno.EOPNOTSUPP, message)


def _log_op(op: IpvsOp, labels: Mapping[ServiceKey, str]) -> None:
    if isinstance(op, AddService | EditService):
        name = "ipvs.service_added" if isinstance(op, AddService) else "ipvs.service_changed"
        _log.info(name, vs=service_label(op.service.key), scheduler=op.service.scheduler)
    elif isinstance(op, DelService):
        _log.info("ipvs.service_removed", vs=service_label(op.key))
    elif isinstance(op, AddDest | EditDest):
        name = "ipvs.dest_added" if isinstance(op, AddDest) else "ipvs.dest_changed"
        _log.info(name, vs=service_label(op.service), rs=f"{op.dest.addr}:{op.dest.port}",
                  weight=op.dest.weight, fwd=op.dest.fwd.ipvsadm_name)
    elif isinstance(op, DelDest):
        _log.info("ipvs.dest_removed", vs=service_label(op.service), rs=f"{op.addr}:{op.port}")


# ---------------------------------------------------------------------- production wiring


async def kernel_ipvs_present() -> bool:
    """Whether the kernel's IPVS generic netlink family is usable here."""
    from hactl.ipvs.kernel import kernel_ipvs_available

    return await kernel_ipvs_available()


async def resolve_backend(kind: BackendKind) -> tuple[BackendKind, str]:
    """`--backend auto` -> kernel when its IPVS netlink family is present, else embedded;
    returns the kind and why (logged as `daemon.backend`)."""
    if kind is not BackendKind.AUTO:
        return kind, "--backend"
    if await kernel_ipvs_present():
        return BackendKind.KERNEL, "the kernel's IPVS netlink family is present"
    return BackendKind.EMBEDDED, "the kernel's IPVS netlink family is absent"


async def open_backend(kind: BackendKind) -> IpvsBackend | None:
    """The backend for a resolved kind (None: the embedded engine, built by the Director)."""
    if kind is BackendKind.KERNEL:
        from hactl.ipvs.kernel import KernelIpvs

        return await KernelIpvs.open()
    return None


def _interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def raw_vrrp_possible(derived: Derived) -> bool:
    """Root, and every VRRP interface exists: raw sockets and netlink for VRRP."""
    if derived.vrrp is None:
        return False
    interfaces = {i.interface for i in derived.vrrp.instances}
    return os.geteuid() == 0 and all(_interface_exists(name) for name in interfaces)


def default_vrrp_ports(derived: Derived) -> VrrpPorts | None:
    """Raw sockets and netlink when root and every VRRP interface exists; otherwise the UDP
    development transport, for unicast instances only.

    Raises:
        NotSupported: not root and some instance is multicast or has no unicast_src_ip.
    """
    if derived.vrrp is None:
        return None
    if raw_vrrp_possible(derived):
        from hactl.net.macvlan import NetlinkVmacPort
        from hactl.net.netlink import NetlinkAddressPort
        from hactl.vrrp.announce import PacketAnnouncer
        from hactl.vrrp.firewall import NftablesFirewall
        from hactl.vrrp.socket import RawChannelFactory

        netlink = NetlinkAddressPort()
        announcer = PacketAnnouncer()
        vmacs = NetlinkVmacPort()

        async def close() -> None:
            announcer.close()
            await netlink.close()
            await vmacs.close()

        return VrrpPorts(addresses=netlink, neighbours=announcer,
                         channels=RawChannelFactory(), transport="raw", close=close,
                         firewall=NftablesFirewall(), vmacs=vmacs)
    bad = [i.name for i in derived.vrrp.instances
           if not i.unicast_peers or i.unicast_src_ip is None]
    if bad:
        raise NotSupported("vrrp", errno.EPERM, f"VRRP instances {', '.join(bad)} need raw sockets "
                           "(run as root, on existing interfaces), or unicast_src_ip and "
                           "unicast_peer for the unprivileged development transport")
    from hactl.testing.fakes import InMemoryAddressPort, RecordingNeighbourPort
    from hactl.vrrp.firewall import InMemoryFirewall
    from hactl.vrrp.transport import UdpChannelFactory
    from hactl.vrrp.vmac import InMemoryVmacPort

    links: dict[str, tuple[IPInterface, ...]] = {i.interface: () for i in derived.vrrp.instances}
    addresses = InMemoryAddressPort(dict(links))
    return VrrpPorts(addresses=addresses,
                     neighbours=RecordingNeighbourPort(), channels=UdpChannelFactory(),
                     transport="udp-dev", firewall=InMemoryFirewall(),
                     vmacs=InMemoryVmacPort(addresses))


async def run(
    config: Config,
    *,
    clock: Clock,
    backend: IpvsBackend | None,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    reload_trigger: Callable[[], Awaitable[Any]] | None = None,
    loader: Callable[[], Loaded] | None = None,
    vrrp_ports: VrrpPorts | None = None,
    dataplane_settings: DataPlaneSettings | None = None,
    api: ApiSettings | None = None,
    config_path: str = "",
) -> None:
    """Run a director for `config` until `shutdown_trigger` returns (STYLE §8.4).

    `backend` None runs the embedded engine and data plane. `vrrp_ports` None picks
    `default_vrrp_ports`. `api` serves the control API. Raises `NotSupported` for a
    configuration this build cannot run.
    """
    derived = derive(config)
    ports = vrrp_ports if vrrp_ports is not None else default_vrrp_ports(derived)
    director = Director(config, clock=clock, backend=backend, vrrp_ports=ports,
                        dataplane_settings=dataplane_settings, api=api,
                        config_path=config_path, freeze_heap=True)
    await director.run(shutdown_trigger=shutdown_trigger, reload_trigger=reload_trigger,
                       loader=loader)


# ---------------------------------------------------------------------- `hactl run`


def run_command(args: Any) -> int:
    """`hactl run`: load, log, run in the foreground until SIGTERM/SIGINT; SIGHUP reloads.

    Exit status: 0 clean stop, 1 configuration errors or a configuration this build cannot
    run, 2 unreadable file or unusable option.
    """
    import sys
    from pathlib import Path

    from hactl import config as hconfig
    from hactl import logging as hlogging
    from hactl.cli import default_config_path
    from hactl.config.report import render_text

    try:
        hlogging.configure(args.log_format, levels=args.log_level)
    except ValueError as exc:
        print(f"hactl run: {exc}", file=sys.stderr)
        return 2
    path = Path(args.file) if args.file else default_config_path()

    def load() -> Loaded:
        return hconfig.load(path, config_id=args.config_id)

    try:
        loaded = load()
    except ConfigErrors as exc:
        sys.stderr.write(render_text(exc.diagnostics, with_summary=True))
        return 1
    except OSError as exc:
        print(f"hactl run: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for diag in loaded.warnings:
        _log.warning("config.warning", diagnostic=str(diag))
    try:
        api = api_settings(args)
    except (OSError, ValueError) as exc:
        print(f"hactl run: {exc}", file=sys.stderr)
        return 2
    pid_file = Path(args.pid_file) if args.pid_file else None
    if pid_file is not None:
        pid_file.write_text(f"{os.getpid()}\n")
    def body() -> None:
        kind, why = asyncio.run(resolve_backend(BackendKind(args.backend)))
        # pyroute2's asyncio netlink sockets do not work on uvloop (it refuses AF_NETLINK
        # endpoints): uvloop only when nothing here speaks netlink.
        netlink = kind is BackendKind.KERNEL or raw_vrrp_possible(derive(loaded.config))
        factory, loop_name = _loop_factory(netlink=netlink)
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_serve(loaded.config, load, kind, why, str(path), loop_name, api))

    try:
        failures = _run_to_failures(body)
    finally:
        if pid_file is not None:
            with contextlib.suppress(OSError):
                pid_file.unlink()
    for failure in failures:
        where = "/".join(getattr(failure, "__notes__", ()))
        _log.error("daemon.failed", error=str(failure), type=type(failure).__name__,
                   task=where or None)
        print(f"hactl run: {where + ': ' if where else ''}{failure}", file=sys.stderr)
    return 1 if failures else 0


def _run_to_failures(body: Callable[[], None]) -> list[BaseException]:
    """Run `body`; the expected failures (refused setup, no socket, bad value) as a list,
    unwrapped from task groups. Anything else (a bug) propagates with its traceback."""
    try:
        body()
    except (HactlError, OSError, ValueError) as exc:
        return [exc]
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if all(isinstance(e, HactlError | OSError | ValueError) for e in leaves):
            return leaves
        raise
    return []


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out


def _loop_factory(*, netlink: bool) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None,
                                              str]:
    """uvloop when installed (`hactl[fast]`: faster data plane) and no netlink is needed,
    else asyncio's own loop."""
    if netlink:
        return None, "asyncio"
    try:
        import uvloop
    except ImportError:
        return None, "asyncio"
    return uvloop.new_event_loop, "uvloop"


def api_settings(args: Any) -> ApiSettings | None:
    """`--api` (repeatable: a unix socket path, tcp:HOST:PORT or http://HOST:PORT; 'none'
    for no API), `--api-token-file`, `--state-file`, `--peer-api`, `--peer-token-file`.

    Raises:
        ValueError: a malformed address, two of a kind, or TCP without a token.
        OSError: a token file cannot be read.
    """
    given = getattr(args, "api", None)
    addresses = list(given or ["/run/hactl/api.sock"])
    if addresses == ["none"]:
        return None
    unix: Path | None = None
    tcp: tuple[str, int] | None = None
    for address in addresses:
        if address.startswith(("tcp:", "http://")):
            rest = address.removeprefix("tcp:").removeprefix("http://").rstrip("/")
            host, sep, port = rest.rpartition(":")
            if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError(f"--api {address}: expected tcp:HOST:PORT or http://HOST:PORT")
            if tcp is not None:
                raise ValueError("--api: at most one TCP address")
            tcp = (host.strip("[]") or "127.0.0.1", int(port))
        elif address.startswith(("https://", "none")):
            raise ValueError(f"--api {address}: not supported (put TLS in a reverse proxy)")
        else:
            if unix is not None:
                raise ValueError("--api: at most one unix socket")
            unix = Path(address)
    token = _read_token(getattr(args, "api_token_file", None))
    if tcp is not None and not token:
        raise ValueError("--api on TCP needs --api-token-file (mutating calls require a token)")
    state = getattr(args, "state_file", None)
    return ApiSettings(
        unix_path=unix, tcp=tcp, token=token, state_path=Path(state) if state else None,
        peer_api=getattr(args, "peer_api", None),
        peer_token=_read_token(getattr(args, "peer_token_file", None)),
        required=bool(given),
    )


def _read_token(path: str | None) -> str | None:
    if not path:
        return None
    return Path(path).read_text(encoding="utf-8").strip() or None


async def _serve(config: Config, load: Callable[[], Loaded], kind: BackendKind, why: str,
                 path: str, loop_name: str, api: ApiSettings | None = None) -> None:
    import signal

    from hactl.clock import LoopClock

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    hup = asyncio.Event()

    def on_stop(signame: str) -> None:
        if stop.is_set():
            _log.warning("daemon.signal_ignored", signal=signame, detail="already stopping")
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, on_stop, "SIGTERM")
    loop.add_signal_handler(signal.SIGINT, on_stop, "SIGINT")
    loop.add_signal_handler(signal.SIGHUP, hup.set)

    async def reload_trigger() -> None:
        await hup.wait()
        hup.clear()

    _log.info("daemon.backend", backend=kind.value, reason=why, config=path, pid=os.getpid(),
              loop=loop_name)
    backend = await open_backend(kind)
    try:
        await run(config, clock=LoopClock(), backend=backend, shutdown_trigger=stop.wait,
                  reload_trigger=reload_trigger, loader=load, api=api,
                  config_path=str(path))
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()
