"""The embedded engine's data plane: carries real client traffic for the virtual services.

`DataPlane` is the shell that owns listeners (TCP, `hactl.ipvs.tcpproxy`) and relays (UDP,
`hactl.ipvs.udprelay`) for the services of the table, and feeds every socket event of every
proxied flow to a `FlowTable` (`hactl.ipvs.flows`), whose answers decide where traffic goes.
It does four things: listen/accept, ask the table, move bytes, and carry out the table's
"this flow must go" by closing sockets. It holds no scheduling decision of its own.

* `apply(services)` reconciles listeners with the table by `ServiceKey`: new services get a
  listener, removed ones lose theirs, kept ones keep their socket and their connections.
* A tick (every `tick_interval` seconds) runs the table's due timers, closes the flows the
  table ended (`pop_closed_flows`), and aborts connects to real servers past their timeout.
* fwmark services cannot be served by a proxy (the mark is set by a netfilter rule on
  packets the proxy never sees); they are refused with a warning. DR and TUN services are
  forwarded as a proxy does (NAT-like), with a one-time warning per service.

Invariants: no task or coroutine per connection; no exception out of a socket callback; the
socket of a service that stays in the table is never closed by `apply`; `close()` closes every
socket the data plane opened and reports every open flow CLOSED.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import structlog

from hactl.ipvs.flows import FlowTable
from hactl.ipvs.model import FwdMethod, IpProto, ServiceKey, VirtualService
from hactl.ipvs.splicepool import SplicePool, splice_supported
from hactl.ipvs.tcpproxy import (
    KeepaliveSettings,
    Outcome,
    OutcomeLog,
    ProxyContext,
    ServiceOptions,
    TcpListener,
    errno_name,
)
from hactl.ipvs.udprelay import UdpRelay

_T = TypeVar("_T")

__all__ = [
    "GC_YOUNG_THRESHOLD",
    "DataPlane",
    "DataPlaneSettings",
    "DataPlaneStats",
    "KeepaliveSettings",
    "Outcome",
    "ServiceOptions",
    "loop_runner",
    "tune_collector",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class DataPlaneSettings:
    """Process-wide data-plane settings.

    Args:
        max_connections: concurrent proxied flows (TCP connections plus UDP client entries);
            a new client beyond it is reset and counted as `refused_limit`.
        connect_timeout: seconds to wait for a real server to accept (per-service override
            in `ServiceOptions`); then the client is reset (`connect_timeout`).
        backlog: listen() backlog (the kernel caps it at net.core.somaxconn).
        keepalive: TCP keepalive for both legs; None = the system's defaults.
        splice: use zero-copy splice for bulk transfers when the system supports it.
        pipe_size / max_idle_pipes / max_pipes: the shared splice pool.
        event_interval: data events of one direction are reported to the table at most this
            often (bytes are summed; rounded to whole ticks); FIN/RST/CLOSE always flush first.
        tick_interval: period of the timer/expiry/connect-timeout tick.
    """

    max_connections: int = 50_000
    connect_timeout: float = 5.0
    backlog: int = 4096
    keepalive: KeepaliveSettings | None = None
    splice: bool = True
    pipe_size: int = 1024 * 1024
    max_idle_pipes: int = 64
    max_pipes: int = 1024
    event_interval: float = 1.0
    tick_interval: float = 0.25

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if not self.connect_timeout > 0 or not self.tick_interval > 0:
            raise ValueError("connect_timeout and tick_interval must be positive")
        if self.event_interval < 0:
            raise ValueError("event_interval must not be negative")


@dataclass(frozen=True, slots=True, kw_only=True)
class DataPlaneStats:
    """A snapshot of the data plane's counters (cumulative unless noted)."""

    listeners: int  # current TCP listeners
    relays: int  # current UDP relays
    active: int  # current proxied flows (TCP connections + UDP client entries)
    accepted: int
    established: int
    completed: int
    bytes_up: int
    bytes_down: int
    bytes_spliced: int
    udp_datagrams_up: int
    udp_datagrams_down: int
    udp_flows_opened: int
    udp_flows_closed: int
    open_pipes: int  # current
    outcomes: Mapping[str, int] = field(default_factory=dict)


class DataPlane:
    """Listeners and relays for a table's services, driven by socket callbacks.

    Args:
        table: the connection table (`EngineFlowTable` in production).
        settings: see `DataPlaneSettings`.
        logger: a structlog logger; `dataplane.*` events are logged on it.

    Create it inside the running loop (it captures `asyncio.get_running_loop()`), then call
    `apply()` whenever the table's services change, and `close()` at shutdown.
    """

    def __init__(
        self,
        table: FlowTable,
        settings: DataPlaneSettings | None = None,
        *,
        logger: Any = None,
    ) -> None:
        self.settings = settings = settings or DataPlaneSettings()
        self._loop = asyncio.get_running_loop()
        self._logger = logger if logger is not None else structlog.get_logger("hactl.dataplane")
        system = KeepaliveSettings.from_system()
        pool = None
        if settings.splice and splice_supported():
            pool = SplicePool(
                pipe_size=settings.pipe_size,
                max_idle=settings.max_idle_pipes,
                max_pipes=settings.max_pipes,
            )
        self._ctx = ProxyContext(
            loop=self._loop,
            table=table,
            log=OutcomeLog(self._logger),
            keepalive=settings.keepalive or system,
            system_keepalive=system,
            splice_pool=pool,
            max_connections=settings.max_connections,
            connect_timeout=settings.connect_timeout,
            event_ticks=round(settings.event_interval / settings.tick_interval),
        )
        self._table = table
        self._listeners: dict[ServiceKey, TcpListener] = {}
        self._relays: dict[ServiceKey, UdpRelay] = {}
        self._warned: set[tuple[ServiceKey, str]] = set()
        self._closed = False
        self._tick_handle: asyncio.TimerHandle | None = self._loop.call_later(
            settings.tick_interval, self._tick
        )

    # -- reconciliation -------------------------------------------------------------------
    def apply(
        self,
        services: Iterable[VirtualService],
        options: Mapping[ServiceKey, ServiceOptions] | None = None,
    ) -> None:
        """Make the listeners match `services` (the table's current virtual services).

        New address services get a listener (TCP) or relay (UDP); services no longer listed
        lose theirs, without touching connections already accepted (the table decides their
        fate, as the kernel does for a deleted service's connections). A listener whose
        options changed keeps its socket and applies the new options to new connections.
        A service whose socket cannot be bound (EADDRINUSE...) is logged
        (`dataplane.listen_failed`) and retried on the next `apply`. Afterwards, flows the
        table ended (a destination removed with expire_nodest_conn 1) are closed.
        """
        if self._closed:
            raise RuntimeError("DataPlane.apply() after close()")
        options = options or {}
        wanted: dict[ServiceKey, VirtualService] = {}
        for svc in services:
            if svc.key.is_fwmark or svc.key.addr is None:
                self._warn_once(
                    svc.key,
                    Outcome.FWMARK_UNSUPPORTED,
                    detail="fwmark services need the kernel IPVS backend; "
                    "the embedded data plane cannot see packet marks",
                )
                continue
            if svc.key.protocol not in (IpProto.TCP, IpProto.UDP):
                self._warn_once(
                    svc.key,
                    Outcome.PROTOCOL_UNSUPPORTED,
                    detail=f"{svc.key.protocol.name} is not proxied",
                )
                continue
            wanted[svc.key] = svc
            for dest in svc.destinations:
                if dest.fwd in (FwdMethod.DROUTE, FwdMethod.TUNNEL):
                    self._warn_once(
                        svc.key,
                        Outcome.FORWARDING_METHOD,
                        method=dest.fwd.ipvsadm_name,
                        detail="forwarded by the embedded proxy like NAT: real "
                        "servers see connections from this director",
                    )
                    break
        for key in [k for k in self._listeners if k not in wanted]:
            self._listeners.pop(key).close()
        for key in [k for k in self._relays if k not in wanted]:
            self._relays.pop(key).close()
        for key in wanted:
            opts = options.get(key, ServiceOptions())
            existing = self._listeners.get(key) or self._relays.get(key)
            if existing is not None:
                existing.options = opts
                continue
            try:
                if key.protocol == IpProto.TCP:
                    self._listeners[key] = TcpListener(
                        self._ctx, key, opts, backlog=self.settings.backlog
                    )
                else:
                    self._relays[key] = UdpRelay(self._ctx, key, opts)
            except OSError as exc:
                self._ctx.log(
                    Outcome.LISTEN_FAILED,
                    vs=_vs_label(key),
                    error=errno_name(exc),
                )
        self.reap()

    def _warn_once(self, key: ServiceKey, outcome: Outcome, **context: object) -> None:
        if (key, outcome.value) in self._warned:
            return
        self._warned.add((key, outcome.value))
        self._ctx.log(outcome, None, vs=_vs_label(key), **context)

    # -- table-driven closing -------------------------------------------------------------
    def reap(self) -> int:
        """Close the sockets of every flow the table has ended; returns how many."""
        closed = self._table.pop_closed_flows()
        connections = self._ctx.connections
        for item in closed:
            owner = connections.get(item.flow)
            if owner is not None:
                owner.close_by_table(item.reason.value)
        return len(closed)

    def _tick(self) -> None:
        now = self._loop.time()
        self._ctx.epoch += 1
        try:
            deadline = self._table.next_deadline()
            if deadline is not None and deadline <= now:
                self._table.handle_timer(now=now)
            self.reap()
            self._ctx.report_unreported(now)
            self._ctx.expire_connects(now)
        finally:
            if not self._closed:
                self._tick_handle = self._loop.call_later(self.settings.tick_interval, self._tick)

    # -- introspection --------------------------------------------------------------------
    @property
    def services(self) -> frozenset[ServiceKey]:
        """Keys of the services that currently have a listener or relay."""
        return frozenset(self._listeners) | frozenset(self._relays)

    def stats(self) -> DataPlaneStats:
        """A snapshot of every counter; `outcomes` is keyed by `Outcome` value."""
        ctx = self._ctx
        c = ctx.counters
        pool = ctx.splice_pool
        return DataPlaneStats(
            listeners=len(self._listeners),
            relays=len(self._relays),
            active=len(ctx.connections),
            accepted=c.accepted,
            established=c.established,
            completed=c.completed,
            bytes_up=c.bytes_up,
            bytes_down=c.bytes_down,
            bytes_spliced=c.bytes_spliced,
            udp_datagrams_up=c.udp_datagrams_up,
            udp_datagrams_down=c.udp_datagrams_down,
            udp_flows_opened=c.udp_flows_opened,
            udp_flows_closed=c.udp_flows_closed,
            open_pipes=pool.open_pipes if pool is not None else 0,
            outcomes={o.value: n for o, n in ctx.log.counts.items()},
        )

    # -- shutdown -------------------------------------------------------------------------
    def close(self) -> None:
        """Close every listener, relay and proxied connection (connections are reset)."""
        if self._closed:
            return
        self._closed = True
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        for listener in self._listeners.values():
            listener.close()
        self._listeners.clear()
        for relay in self._relays.values():
            relay.close()
        self._relays.clear()
        for owner in list(self._ctx.connections.values()):
            owner.abort()
        self._ctx.poller.close()
        if self._ctx.splice_pool is not None:
            self._ctx.splice_pool.close()

    async def __aenter__(self) -> DataPlane:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


def loop_runner() -> tuple[Callable[[Coroutine[Any, Any, _T]], _T], str]:
    """The runner for the process's event loop, and its name.

    `uvloop.run` when uvloop is installed (the optional dependency `hactl[fast]`: 1.3 to 1.8
    times the new connections per second in prototypes), else `asyncio.run`. The data plane
    itself works the same on both.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run, "asyncio"
    return uvloop.run, "uvloop"


# The cyclic collector's young-generation threshold for a process that runs the data plane.
# Every proxied connection leaves its engine entry in the table for minutes (TIME_WAIT),
# and the sockets, pumps and flows of the connections in flight are alive at any moment:
# with CPython's default of 700 net allocations a young collection ran every 160 or so new
# connections and re-walked all of those, about 2 us per connection. At 10,000 it is 0.7 us,
# the young collections pause for at most 3-4 ms and the middle ones for about 13 ms (the
# default's full collections already took 16 ms within 15 s at full load, and grow with the
# table). Many long-running servers raise it likewise; the older generations keep theirs.
GC_YOUNG_THRESHOLD: Final = 10_000


def tune_collector() -> None:
    """Raise the collector's young-generation threshold to `GC_YOUNG_THRESHOLD` (process-wide:
    for the process entry point that runs the data plane, after `gc.freeze()`). A threshold
    already higher, or 0 (collection off), is left as it is."""
    young, middle, old = gc.get_threshold()
    if 0 < young < GC_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _vs_label(key: ServiceKey) -> str:
    if key.is_fwmark:
        return f"FWM {key.fwmark}"
    return f"{key.protocol.name} {key.addr}:{key.port}"
