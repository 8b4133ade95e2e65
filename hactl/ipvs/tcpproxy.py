"""The TCP half of the data plane: listeners on VIP:port and the proxied connections.

Shape (the result of measured prototypes, see docs/dataplane.md): raw non-blocking sockets
and callbacks, no task, coroutine or stream per connection. Listening sockets are plain
`loop.add_reader` readers; every proxied socket sits, edge-triggered, in the data plane's
own epoll set (`Poller`), whose descriptor is itself one loop reader. Each connection is two
`_Pump`s, client->server ("up") and server->client ("down"). A pump copies through one shared
buffer with `recv_into`/`send`, and switches to zero-copy `os.splice` through a pipe borrowed
from the shared `SplicePool` once it sees bulk reads (a full buffer). Keepalive and
TCP_NODELAY are set on the listening socket, from which Linux copies them to every accepted
socket, and on each socket towards a real server.

Invariants:
* bounded buffering: a pump holds at most one read's worth of bytes (in a bytes object or in
  its pipe); while it holds any, it does not read its source (backpressure; the source's
  input edges are out of the epoll set meanwhile) and resumes by itself once its
  destination has taken them;
* a socket leaves the epoll set (`Poller.forget`) before it is closed; a closed connection is
  removed from `ProxyContext.connections` and its flow gets exactly one `FlowEvent.CLOSED`;
* socket errors never escape a callback: each becomes a counted, logged outcome
  (`dataplane.*` events, see `Outcome`), and the connection is closed or reset;
* a reset from one side is propagated to the other as a reset (SO_LINGER 0 then close);
  a FIN is propagated as `shutdown(SHUT_WR)` (half-close).

Imports sockets and asyncio's loop API only; decisions about where traffic goes belong to the
`FlowTable`, never to this module.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import enum
import errno
import functools
import ipaddress
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from hactl.ipvs.flows import Flow, FlowEvent, FlowTable
from hactl.ipvs.model import IPAddress, IpProto, ServiceKey
from hactl.ipvs.splicepool import SPLICE_FLAGS, SplicePool

__all__ = [
    "BUFFER_SIZE",
    "Counters",
    "FlowOwner",
    "KeepaliveSettings",
    "Outcome",
    "OutcomeLog",
    "Poller",
    "ProxyContext",
    "ServiceOptions",
    "TcpConnection",
    "TcpListener",
    "listening_socket",
    "parse_addr",
    "proxy_v2_header",
]

BUFFER_SIZE: Final = 65536  # one read; also the most a pump buffers in user space
ACCEPT_BATCH: Final = 64  # accepts per readiness callback, so one busy VIP cannot starve others
ACCEPT_PAUSE: Final = 0.1  # seconds a listener rests after EMFILE/ENFILE/ENOBUFS/ENOMEM

IP_FREEBIND: Final = getattr(socket, "IP_FREEBIND", 15)
IPV6_FREEBIND: Final = 78  # linux/in6.h (Linux >= 4.15); IP_FREEBIND is the fallback
_LINGER_RESET: Final = struct.pack("ii", 1, 0)  # SO_LINGER {on, 0 s}: close() sends RST
_RESET_ERRNOS: Final = frozenset(
    {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH}
)


class Outcome(enum.StrEnum):
    """Every way a connection or a listener can end up; each is a counter and a log event.

    The log event name is `dataplane.<value>`; both are stable API.
    """

    REFUSED_LIMIT = "refused_limit"  # beyond max_connections: accepted and reset
    NO_DESTINATION = "no_destination"  # the table had no real server: accepted and reset
    ACCEPT_FAILED = "accept_failed"  # accept() itself failed (EMFILE...); the listener rests
    CONNECT_FAILED = "connect_failed"  # the real server refused or was unreachable
    CONNECT_TIMEOUT = "connect_timeout"  # the real server did not answer in time
    CLIENT_RESET = "client_reset"
    SERVER_RESET = "server_reset"
    CLIENT_HALF_CLOSE = "client_half_close"  # client FIN, propagated as SHUT_WR
    SERVER_HALF_CLOSE = "server_half_close"  # server FIN, propagated as SHUT_WR
    CLOSED_BY_TABLE = "closed_by_table"  # the table ended the flow (expiry, dest removed)
    LISTEN_FAILED = "listen_failed"
    FORWARDING_METHOD = "forwarding_method"  # DR/TUN forwarded as a proxy (one-time warning)
    FWMARK_UNSUPPORTED = "fwmark_unsupported"
    PROTOCOL_UNSUPPORTED = "protocol_unsupported"
    UDP_SEND_FAILED = "udp_send_failed"
    UDP_RECV_FAILED = "udp_recv_failed"


# Outcomes that are a normal part of traffic: counted, logged at debug level only.
_QUIET: Final = frozenset({Outcome.CLIENT_HALF_CLOSE, Outcome.SERVER_HALF_CLOSE})


class OutcomeLog:
    """Counts outcomes and logs them with structlog, at most `burst` lines per name per second.

    A flood (10,000 refused connections) must stay visible without drowning the log: the
    first `burst` events of a name in each second are logged; the next logged line of that
    name carries `suppressed=<count>`.
    """

    __slots__ = ("_logger", "_window", "burst", "counts")

    def __init__(self, logger: Any, *, burst: int = 10) -> None:
        self._logger = logger
        self.burst = burst
        self.counts: dict[Outcome, int] = dict.fromkeys(Outcome, 0)
        self._window: dict[Outcome, list[float]] = {}

    def __call__(
        self, outcome: Outcome, source: FlowOwner | None = None, **context: object
    ) -> None:
        """Count `outcome`; log it unless its per-second budget is spent.

        `source` (a connection or relay entry) supplies the vs/rs/client context, built
        only when the line is actually logged.
        """
        self.counts[outcome] += 1
        now = time.monotonic()
        window = self._window.get(outcome)
        if window is None:
            window = self._window[outcome] = [now, 0.0, 0.0]  # [start, logged, suppressed]
        if now - window[0] >= 1.0:
            window[0], window[1] = now, 0.0
        if window[1] >= self.burst:
            window[2] += 1
            return
        window[1] += 1
        if window[2]:
            context["suppressed"] = int(window[2])
            window[2] = 0.0
        if source is not None:
            context.update(source.log_context())
        name = "dataplane." + outcome.value
        if outcome in _QUIET:
            self._logger.debug(name, **context)
        elif outcome in (Outcome.CLIENT_RESET, Outcome.CLOSED_BY_TABLE):
            self._logger.info(name, **context)
        else:
            self._logger.warning(name, **context)

    def quiet(self, outcome: Outcome, source: FlowOwner) -> None:
        """`self(outcome, source)`, for outcomes of every connection (the half-closes).

        The same count and budget; the usual case, a budget already spent in this second,
        costs no context dict (a call of `self` builds one for its keywords).
        """
        window = self._window.get(outcome)
        if window is not None and window[1] >= self.burst and time.monotonic() - window[0] < 1.0:
            self.counts[outcome] += 1
            window[2] += 1
            return
        self(outcome, source)


@dataclass(slots=True)
class Counters:
    """Mutable traffic counters of one data plane (outcome counts live in `OutcomeLog`)."""

    accepted: int = 0
    established: int = 0
    completed: int = 0  # closed after a FIN in both directions
    bytes_up: int = 0  # client -> real server payload
    bytes_down: int = 0  # real server -> client payload
    bytes_spliced: int = 0  # part of the above that moved by splice
    udp_datagrams_up: int = 0
    udp_datagrams_down: int = 0
    udp_flows_opened: int = 0
    udp_flows_closed: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class KeepaliveSettings:
    """TCP keepalive applied to both legs of every proxied connection (seconds / probes).

    `from_system()` reads the Linux defaults (net.ipv4.tcp_keepalive_time, _intvl, _probes);
    values equal to the system's are not set per socket, so those sockets keep following the
    sysctls as unconfigured sockets do.
    """

    enabled: bool = True
    time: int = 7200
    interval: int = 75
    probes: int = 9

    @classmethod
    def from_system(cls, root: Path = Path("/proc/sys/net/ipv4")) -> KeepaliveSettings:
        """The system's defaults, or the kernel's compiled-in ones where a file is unreadable."""
        values: dict[str, int] = {}
        for name, sysctl in (("time", "time"), ("interval", "intvl"), ("probes", "probes")):
            try:
                values[name] = int((root / f"tcp_keepalive_{sysctl}").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
        return cls(**values)  # type: ignore[arg-type]

    def options(self, system: KeepaliveSettings) -> tuple[tuple[int, int, int], ...]:
        """(level, option, value) of SO_KEEPALIVE and of every value that differs from the
        system's; nothing when disabled."""
        if not self.enabled:
            return ()
        opts = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
        if self.time != system.time:
            opts.append((socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, self.time))
        if self.interval != system.interval:
            opts.append((socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, self.interval))
        if self.probes != system.probes:
            opts.append((socket.IPPROTO_TCP, socket.TCP_KEEPCNT, self.probes))
        return tuple(opts)

    def apply(self, sock: _socket.socket, system: KeepaliveSettings) -> None:
        """Set SO_KEEPALIVE and every value that differs from the system's."""
        for level, option, value in self.options(system):
            sock.setsockopt(level, option, value)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceOptions:
    """Per virtual service data-plane settings (hactl extensions to the keepalived model).

    `proxy_protocol` 2 sends a PROXY protocol v2 header to the real server before any client
    byte (configuration keyword `proxy_protocol v2`); 0 sends nothing. `connect_timeout` None
    means the data plane's default.
    """

    proxy_protocol: int = 0
    connect_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.proxy_protocol not in (0, 2):
            raise ValueError(f"proxy_protocol must be 0 or 2, not {self.proxy_protocol}")
        if self.connect_timeout is not None and not self.connect_timeout > 0:
            raise ValueError("connect_timeout must be positive")


_PP2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2_header(
    protocol: IpProto, client: tuple[IPAddress, int], vip: tuple[IPAddress, int]
) -> bytes:
    """The PROXY protocol v2 header (PROXY command) for a proxied flow.

    Source = the client, destination = the virtual address the client connected to. The
    address family is the client's; a mixed-family pair (never produced by a listener) is
    refused with ValueError.
    """
    caddr, cport = client
    vaddr, vport = vip
    if caddr.version != vaddr.version:
        raise ValueError("PROXY v2: client and virtual address families differ")
    transport = 0x1 if protocol == IpProto.TCP else 0x2  # STREAM / DGRAM
    family = 0x10 if caddr.version == 4 else 0x20  # AF_INET / AF_INET6
    body = caddr.packed + vaddr.packed + struct.pack("!HH", cport, vport)
    return _PP2_SIGNATURE + struct.pack("!BBH", 0x21, family | transport, len(body)) + body


@functools.lru_cache(maxsize=65536)
def parse_addr(text: str) -> IPAddress:
    """The address of a socket address string (scope id dropped), cached for hot paths."""
    return ipaddress.ip_address(text.partition("%")[0])


def errno_name(exc: OSError) -> str:
    """The errno symbol of a socket error for the outcome log ("ECONNREFUSED"), else its text."""
    return errno.errorcode.get(exc.errno or 0, str(exc))


def _sockaddr(addr: tuple[IPAddress, int]) -> tuple[str, int]:
    return (str(addr[0]), addr[1])


def _reset_close(sock: _socket.socket) -> None:
    """Close `sock` with an RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


class FlowOwner(Protocol):
    """What owns the sockets of one flow: a TCP connection or a UDP relay entry."""

    def close_by_table(self, reason: str) -> None:
        """The table ended the flow: close its sockets (a reset, for TCP)."""
        ...

    def abort(self) -> None:
        """Close its sockets at shutdown (a reset, for TCP), without logging."""
        ...

    def log_context(self) -> dict[str, object]:
        """vs / rs / client of the flow, for log lines."""
        ...


class Reporter(Protocol):
    """A direction (or UDP flow) holding data not yet reported to the table."""

    queued: bool

    def report_due(self, now: float) -> bool:
        """Report if the event interval has passed; True when bytes are still held."""
        ...


class ProxyContext:
    """What every listener and connection of one data plane shares.

    Owns the connection registry (`connections`, keyed by flow), the counters and outcome
    log, the copy buffer (single-threaded: one loop), the splice pool and the queue of
    pending connect deadlines.
    """

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        table: FlowTable,
        log: OutcomeLog,
        keepalive: KeepaliveSettings,
        system_keepalive: KeepaliveSettings,
        splice_pool: SplicePool | None,
        max_connections: int,
        connect_timeout: float,
        event_ticks: int,
    ) -> None:
        self.loop = loop
        self.table = table
        self.log = log
        self.counters = Counters()
        self.keepalive = keepalive
        self.system_keepalive = system_keepalive
        # Set on every socket towards a real server (the client leg inherits the listener's).
        self.server_options: tuple[tuple[int, int, int], ...] = (
            (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
            *keepalive.options(system_keepalive),
        )
        self.splice_pool = splice_pool
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        # Data events of one direction are reported at most once per `event_ticks` ticks;
        # `epoch` counts ticks, so the hot path compares integers instead of reading a clock.
        self.event_ticks = event_ticks
        self.epoch = 0
        self.connections: dict[Flow, FlowOwner] = {}
        self.buf = bytearray(BUFFER_SIZE)
        self.mv = memoryview(self.buf)
        # Connections waiting for their real server, with their deadlines, in insertion
        # order; a connection leaves as soon as its connect ends, so a closed connection is
        # not kept alive until its deadline.
        self.connecting: dict[TcpConnection, float] = {}
        self.unreported: list[Reporter] = []
        # (id of the address object, port) -> (that object, family, sockaddr). Keyed by
        # identity: hashing an ipaddress object runs Python code, and the table hands out the
        # same address object for every flow to a destination. The entry holds the object,
        # so its id cannot be reused while the entry exists.
        self.targets: dict[tuple[int, int], tuple[IPAddress, int, tuple[str, int]]] = {}
        self.poller = Poller(loop)
        self.log_quiet = log.quiet

    def target(self, dest: tuple[IPAddress, int]) -> tuple[int, tuple[str, int]]:
        """The address family and the connect() address of a flow's destination."""
        addr, port = dest
        found = self.targets.get((id(addr), port))
        if found is None or found[0] is not addr:
            if len(self.targets) > 4096:
                self.targets.clear()
            family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
            found = self.targets[id(addr), port] = (addr, family, _sockaddr(dest))
        return found[1], found[2]

    def sockaddr(self, dest: tuple[IPAddress, int]) -> tuple[str, int]:
        """The connect() address of a flow's destination (cached)."""
        return self.target(dest)[1]

    def report_unreported(self, now: float) -> None:
        """Tick: report the data of directions that went quiet while holding bytes."""
        waiting, self.unreported = self.unreported, []
        for item in waiting:
            item.queued = False
            if item.report_due(now):
                item.queued = True
                self.unreported.append(item)

    def expire_connects(self, now: float) -> None:
        """Abort connections still connecting whose deadline has passed (checked on ticks)."""
        # Deadlines are inserted in time order per timeout value; a per-service timeout can
        # put a later deadline before an earlier one, which only delays that abort to a tick.
        # One pass over the front of the dict (each `next(iter())` would rescan the slots of
        # entries already removed).
        due = []
        for conn, deadline in self.connecting.items():
            if deadline > now:
                break
            due.append(conn)
        for conn in due:
            del self.connecting[conn]
            if conn.state is _CONNECTING:
                conn.connect_timed_out(now)


class _State(enum.Enum):
    CONNECTING = 1
    OPEN = 2
    CLOSED = 3


# Module globals read faster than enum members (a class attribute through the enum's
# metaclass), and the hot path tests states and names events several times per connection.
_CONNECTING: Final = _State.CONNECTING
_OPEN: Final = _State.OPEN
_CLOSED: Final = _State.CLOSED
_ACCEPTED: Final = FlowEvent.ACCEPTED
_BACKEND_ESTABLISHED: Final = FlowEvent.BACKEND_ESTABLISHED
_FLOW_CLOSED: Final = FlowEvent.CLOSED
_CLIENT_DATA: Final = FlowEvent.CLIENT_DATA
_SERVER_DATA: Final = FlowEvent.SERVER_DATA
_CLIENT_FIN: Final = FlowEvent.CLIENT_FIN
_SERVER_FIN: Final = FlowEvent.SERVER_FIN
_CLIENT_HALF_CLOSE: Final = Outcome.CLIENT_HALF_CLOSE
_SERVER_HALF_CLOSE: Final = Outcome.SERVER_HALF_CLOSE


_EV_IN: Final = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_EV_OUT: Final = select.EPOLLOUT
_EV_HANGUP: Final = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_EV_ANY: Final = _EV_IN | _EV_OUT
_STREAM_NONBLOCK: Final = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
_EINPROGRESS: Final = errno.EINPROGRESS
_REGISTER: Final = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
# A socket whose reader is stalled by backpressure: output edges only (errors and hangups
# are always reported), so data arriving meanwhile wakes nobody.
_PAUSED: Final = select.EPOLLOUT | select.EPOLLET
READ_BUDGET: Final = 8  # reads per readiness edge before yielding to other connections


class Poller:
    """One edge-triggered epoll set for every proxied socket, driven from the event loop.

    Each socket is registered once, for input and output, edge-triggered, when it is created,
    and leaves the set when it is closed (with level-triggered loop readers a connection cost
    a dozen epoll_ctl calls; HAProxy needs three). The only change while a connection lives
    is for backpressure: a pump whose destination is full takes its source's input out of the
    set (`pause_input`) until it has flushed (`resume_input`), so a bulk sender filling our
    receive buffer does not wake the loop for every segment it queues. Request/response
    traffic never stalls, so it never pays those two calls. The set's own descriptor is one
    `loop.add_reader`, so this works on any asyncio loop, uvloop included.

    Edge-triggered rules the pumps follow: a readable edge is drained until EAGAIN (or the
    per-edge budget, after which the pump is continued on the ready list), and a pump that
    stopped reading for backpressure reads again by itself once it has flushed. Events still
    pending in a batch for a descriptor closed during that batch are dropped: the number may
    already belong to a new socket.
    """

    __slots__ = ("_ep", "_loop", "_ready", "_ready_armed", "closed", "owners")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ep = select.epoll()
        self.owners: dict[int, TcpConnection] = {}
        self.closed: set[int] = set()
        self._ready: list[_Pump] = []
        self._ready_armed = False
        loop.add_reader(self._ep.fileno(), self._on_events)

    def register(self, fd: int, owner: TcpConnection) -> None:
        self._ep.register(fd, _REGISTER)
        self.owners[fd] = owner

    def pause_input(self, fd: int) -> None:
        """Stop input edges of `fd` (its reader is stalled); output edges still come."""
        try:  # noqa: SIM105 - hot path: try/except costs less than contextlib.suppress
            self._ep.modify(fd, _PAUSED)
        except OSError:
            pass  # not registered any more: the connection is closing

    def resume_input(self, fd: int) -> None:
        """Input edges of `fd` again; the caller reads at once (data may be waiting)."""
        try:  # noqa: SIM105
            self._ep.modify(fd, _REGISTER)
        except OSError:
            pass

    def forget(self, fd: int) -> None:
        """`fd` is about to be closed (closing removes it from the epoll set)."""
        if self.owners.pop(fd, None) is not None:
            self.closed.add(fd)

    def continue_later(self, pump: _Pump) -> None:
        self._ready.append(pump)
        if not self._ready_armed:
            self._ready_armed = True
            self._loop.call_soon(self._run_ready)

    def _run_ready(self) -> None:
        self._ready_armed = False
        ready, self._ready = self._ready, []
        for pump in ready:
            if pump.reading and pump.conn.state is _OPEN:
                pump.on_readable()

    def _on_events(self) -> None:
        closed = self.closed
        closed.clear()
        owners = self.owners
        for fd, events in self._ep.poll(0, 1024):
            if fd in closed:
                continue
            owner = owners.get(fd)
            if owner is not None:
                owner.on_event(fd, events)

    def close(self) -> None:
        self._loop.remove_reader(self._ep.fileno())
        self._ep.close()


class _Pump:
    """One direction of a proxied connection: read `src`, write `dst`."""

    __slots__ = (
        "conn",
        "ctx",
        "data_event",
        "dfd",
        "dst",
        "eof",
        "fin_event",
        "next_epoch",
        "paused",
        "pending",
        "pipe",
        "piped",
        "queued",
        "reading",
        "sfd",
        "shut",
        "splice",
        "src",
        "unreported",
        "up",
    )

    def __init__(
        self,
        conn: TcpConnection,
        ctx: ProxyContext,
        src: _socket.socket,
        dst: _socket.socket,
        sfd: int,
        dfd: int,
        up: bool,
    ):
        self.conn = conn
        self.ctx = ctx
        self.src = src
        self.dst = dst
        self.sfd = sfd
        self.dfd = dfd
        self.up = up
        if up:
            self.data_event = _CLIENT_DATA
            self.fin_event = _CLIENT_FIN
        else:
            self.data_event = _SERVER_DATA
            self.fin_event = _SERVER_FIN
        self.pending: bytes | None = None
        self.pipe: tuple[int, int] | None = None
        self.piped = 0
        self.splice = False
        # `reading`: the pump wants its source's data (open, not stalled, not at EOF).
        self.reading = False
        self.paused = False  # `src`'s input edges are out of the epoll set (backpressure)
        self.eof = False
        self.shut = False
        self.unreported = 0
        self.queued = False
        # The first data report waits for the next tick: a short connection's bytes then ride
        # on its FINs instead of costing the table extra packets.
        self.next_epoch = ctx.epoch + 1

    # -- accounting ---------------------------------------------------------------------
    def _account(self, n: int) -> None:
        ctx = self.ctx
        if self.up:
            ctx.counters.bytes_up += n
        else:
            ctx.counters.bytes_down += n
        self.unreported += n
        if ctx.epoch >= self.next_epoch:
            # Data events are coalesced: at most one per event interval per direction, with
            # the bytes since the last one; FINs carry the rest, RST/CLOSE flush first, and
            # the tick reports what an idle direction still holds (`report_due`).
            ctx.table.flow_event(
                self.conn.flow, self.data_event, self.unreported, now=ctx.loop.time()
            )
            self.unreported = 0
            self.next_epoch = ctx.epoch + ctx.event_ticks
        elif not self.queued:
            self.queued = True
            ctx.unreported.append(self)

    def report_due(self, now: float) -> bool:
        """Tick: report held bytes once the interval has passed; True = still holding."""
        if not self.unreported or self.conn.state is _CLOSED:
            return False
        ctx = self.ctx
        if ctx.epoch < self.next_epoch:
            return True
        ctx.table.flow_event(self.conn.flow, self.data_event, self.unreported, now=now)
        self.unreported = 0
        self.next_epoch = ctx.epoch + ctx.event_ticks
        return False

    def flush_report(self, now: float) -> None:
        if self.unreported:
            ctx = self.ctx
            ctx.table.flow_event(self.conn.flow, self.data_event, self.unreported, now=now)
            self.unreported = 0

    # -- readiness ------------------------------------------------------------------------
    def on_readable(self, hangup: int = _EV_HANGUP) -> None:
        """Drain `src` (edge-triggered) until EAGAIN, EOF, backpressure or the budget.

        `hangup` 0 says the readiness edge carried no RDHUP/HUP/ERR bit: then a short read
        means the socket is drained (data arriving later raises a new edge) and the extra
        recv that would only say EAGAIN is skipped. Otherwise a FIN may wait behind the
        data of the same edge, and the pump reads on until EOF or EAGAIN.
        """
        if not self.reading:
            return
        ctx = self.ctx
        buf, mv, src, dst = ctx.buf, ctx.mv, self.src, self.dst
        for _ in range(READ_BUDGET):
            if self.splice:
                if not self._splice_once():
                    return
                continue
            try:
                n = src.recv_into(buf)
            except BlockingIOError:
                return
            except OSError as exc:
                self.conn.source_failed(self, exc)
                return
            if n == 0:
                self._on_eof()
                return
            try:
                sent = dst.send(mv[:n])
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self.conn.destination_failed(self, exc)
                return
            self._account(n)
            if sent < n:
                self.pending = bytes(mv[sent:n])
                self._stall()
                return
            if n < BUFFER_SIZE:
                if not hangup:
                    return  # a short read, no FIN seen: drained
            elif ctx.splice_pool is not None:
                self.splice = True  # a full read: bulk transfer, go zero-copy from now on
        ctx.poller.continue_later(self)

    def _splice_once(self) -> bool:
        """One splice through a pooled pipe; True = keep reading."""
        ctx = self.ctx
        pool = ctx.splice_pool
        assert pool is not None
        pipe = pool.acquire()
        if pipe is None:  # pool exhausted: copy from now on
            self.splice = False
            return True
        try:
            n = os.splice(self.sfd, pipe[1], pool.pipe_size, flags=SPLICE_FLAGS)
        except BlockingIOError:
            pool.release(pipe)
            return False
        except OSError as exc:
            pool.release(pipe)
            self.conn.source_failed(self, exc)
            return False
        if n == 0:
            pool.release(pipe)
            self._on_eof()
            return False
        try:
            m = os.splice(pipe[0], self.dfd, n, flags=SPLICE_FLAGS)
        except BlockingIOError:
            m = 0
        except OSError as exc:
            pool.discard(pipe)
            self.conn.destination_failed(self, exc)
            return False
        ctx.counters.bytes_spliced += n
        self._account(n)
        if m < n:
            self.pipe = pipe
            self.piped = n - m
            self._stall()
            return False
        pool.release(pipe)
        return True

    def on_writable(self) -> None:
        """`dst` has room again (an output edge): flush what is held, then read again."""
        if self.pipe is None and self.pending is None:
            return
        try:
            if self.pipe is not None:
                self.piped -= os.splice(self.pipe[0], self.dfd, self.piped, flags=SPLICE_FLAGS)
                if self.piped:
                    return
                pool = self.ctx.splice_pool
                assert pool is not None
                pool.release(self.pipe)
                self.pipe = None
            elif self.pending is not None:
                sent = self.dst.send(self.pending)
                if sent < len(self.pending):
                    self.pending = self.pending[sent:]
                    return
                self.pending = None
        except BlockingIOError:
            return
        except OSError as exc:
            self.conn.destination_failed(self, exc)
            return
        if self.eof:
            self.shutdown_destination()
        else:
            self.reading = True
            if self.paused:
                self.paused = False
                self.ctx.poller.resume_input(self.sfd)
            self.on_readable()  # the input edge may have come and gone while stalled

    def _stall(self) -> None:
        """Backpressure: `dst` is full. Stop reading `src` until `on_writable` has flushed."""
        self.reading = False
        self.paused = True
        self.ctx.poller.pause_input(self.sfd)

    def _on_eof(self) -> None:
        self.eof = True
        self.reading = False
        conn = self.conn
        ctx = conn.ctx
        now = ctx.loop.time()
        # The bytes not yet reported ride on the FIN, as they would in the FIN's segment.
        ctx.table.flow_event(conn.flow, self.fin_event, self.unreported, now=now)
        self.unreported = 0
        ctx.log_quiet(_CLIENT_HALF_CLOSE if self.up else _SERVER_HALF_CLOSE, conn)
        if self.pending is None and self.pipe is None:  # holds nothing
            self.shutdown_destination()

    def shutdown_destination(self) -> None:
        """Propagate the FIN: no more bytes will be written to `dst`."""
        self.shut = True
        conn = self.conn
        other = conn.down if self.up else conn.up
        if other.shut:
            conn.maybe_finish()  # both directions done: close() sends this FIN itself
            return
        try:  # noqa: SIM105 - hot path: try/except costs less than contextlib.suppress
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer is already gone; its own read reports how

    def release_pipe(self) -> None:
        if self.pipe is not None:
            pool = self.ctx.splice_pool
            assert pool is not None
            pool.discard(self.pipe)
            self.pipe = None
        self.pending = None


class TcpConnection:
    """One proxied client: the accepted socket, the socket to the real server, two pumps."""

    __slots__ = (
        "cfd",
        "client",
        "ctx",
        "down",
        "early",
        "flow",
        "opts",
        "server",
        "state",
        "target",
        "up",
    )

    def __init__(
        self, ctx: ProxyContext, flow: Flow, client: _socket.socket, cfd: int, opts: ServiceOptions
    ) -> None:
        self.ctx = ctx
        self.flow = flow
        self.client = client
        self.cfd = cfd
        self.opts = opts
        self.state = _CONNECTING
        self.early = 0  # readiness seen on the client socket while connecting
        family, self.target = ctx.target(flow.dest)
        # The C socket type, not socket.socket: proxied sockets need none of the Python
        # wrapper (makefile, dup, ResourceWarning), and skipping its __init__/close is
        # measurable per connection.
        self.server = server = _socket.socket(family, _STREAM_NONBLOCK)
        sfd = server.fileno()
        self.up = _Pump(self, ctx, client, server, cfd, sfd, True)
        self.down = _Pump(self, ctx, server, client, sfd, cfd, False)

    def log_context(self) -> dict[str, object]:
        flow = self.flow
        return {
            "vs": f"{flow.vip[0]}:{flow.vip[1]}",
            "rs": f"{flow.dest[0]}:{flow.dest[1]}",
            "client": f"{flow.client[0]}:{flow.client[1]}",
        }

    def on_event(self, fd: int, events: int) -> None:
        """Readiness edges of either socket, from the `Poller`."""
        if fd == self.cfd:
            if self.state is not _OPEN:
                self.early |= events  # the client is read once the real server has accepted
                return
            if events & _EV_IN:
                self.up.on_readable(events & _EV_HANGUP)
            # (most output edges find nothing held: the call is skipped then)
            down = self.down
            if (
                events & _EV_OUT
                and self.state is _OPEN
                and (down.pending is not None or down.pipe is not None)
            ):
                down.on_writable()
            return
        if self.state is _CONNECTING:
            self._on_connect_ready(events)  # output edge, or error/hangup: connect failed
            return
        up = self.up
        if events & _EV_OUT and (up.pending is not None or up.pipe is not None):
            up.on_writable()
        if events & _EV_IN and self.state is _OPEN:
            self.down.on_readable(events & _EV_HANGUP)

    # -- connecting ---------------------------------------------------------------------
    def connect(self, now: float) -> None:
        """Start the non-blocking connect to the real server (the flow is open)."""
        ctx = self.ctx
        server = self.server
        poller = ctx.poller
        try:
            for level, option, value in ctx.server_options:
                server.setsockopt(level, option, value)
            poller.register(self.cfd, self)
            poller.register(self.down.sfd, self)
            err = server.connect_ex(self.target)
        except OSError as exc:
            err = exc.errno or errno.EINVAL
        if err == _EINPROGRESS:
            ctx.connecting[self] = now + (self.opts.connect_timeout or ctx.connect_timeout)
        elif err == 0:
            self.early = _EV_IN  # connected at once: read both sides until EAGAIN
            self._established(now)
        else:
            self._connect_failed(err, now)

    def _on_connect_ready(self, events: int) -> None:
        now = self.ctx.loop.time()
        if events & (select.EPOLLERR | select.EPOLLHUP):
            err = self.server.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            self._connect_failed(err or errno.ECONNRESET, now)
        else:  # an output edge without error: connected (no SO_ERROR round trip needed)
            self._established(now, events)

    def _established(self, now: float, server_events: int = _EV_IN) -> None:
        ctx = self.ctx
        self.state = _OPEN
        ctx.connecting.pop(self, None)
        ctx.counters.established += 1
        flow = self.flow
        ctx.table.flow_event(flow, _BACKEND_ESTABLISHED, now=now)
        up, down = self.up, self.down
        if self.opts.proxy_protocol == 2:
            header = proxy_v2_header(flow.protocol, flow.client, flow.vip)
            try:
                sent = self.server.send(header)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self.destination_failed(up, exc)
                return
            if sent < len(header):
                up.pending = header[sent:]  # flushed on the next output edge, then read
        # Act on the input edges that came while connecting (and only on those: later data
        # raises new edges).
        # Each edge's hangup bits say whether a FIN may wait behind the data: without one, a
        # short read means drained (saves the recv that would only say EAGAIN: the client's
        # request usually came while connecting).
        down.reading = True
        if server_events & _EV_IN:
            down.on_readable(server_events & _EV_HANGUP)
        if self.state is _OPEN and up.pending is None:
            up.reading = True
            early = self.early
            if early & _EV_IN:
                up.on_readable(early & _EV_HANGUP)

    def _connect_failed(self, err: int, now: float) -> None:
        ctx = self.ctx
        self.ctx.table.flow_event(self.flow, FlowEvent.SERVER_RST, now=now)
        ctx.log(Outcome.CONNECT_FAILED, self, error=errno.errorcode.get(err, str(err)))
        self._close(reset_client=True, reset_server=False, now=now)

    def connect_timed_out(self, now: float) -> None:
        self.ctx.log(Outcome.CONNECT_TIMEOUT, self)
        self._close(reset_client=True, reset_server=False, now=now)

    # -- failures and closing -------------------------------------------------------------
    def source_failed(self, pump: _Pump, exc: OSError) -> None:
        """Reading `pump.src` failed: that side reset (or died); reset the other side."""
        self._side_failed(from_client=pump.up, exc=exc)

    def destination_failed(self, pump: _Pump, exc: OSError) -> None:
        """Writing `pump.dst` failed: that side reset (or died); reset the other side."""
        self._side_failed(from_client=not pump.up, exc=exc)

    def _side_failed(self, *, from_client: bool, exc: OSError) -> None:
        ctx = self.ctx
        now = ctx.loop.time()
        self.up.flush_report(now)
        self.down.flush_report(now)
        event = FlowEvent.CLIENT_RST if from_client else FlowEvent.SERVER_RST
        ctx.table.flow_event(self.flow, event, now=now)
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        if exc.errno not in _RESET_ERRNOS:
            code = f"{code}: {exc.strerror}"
        ctx.log(Outcome.CLIENT_RESET if from_client else Outcome.SERVER_RESET, self, error=code)
        self._close(reset_client=not from_client, reset_server=from_client, now=now)

    def maybe_finish(self) -> None:
        """Close once both directions have carried their FIN."""
        if self.up.shut and self.down.shut and self.state is _OPEN:
            self.ctx.counters.completed += 1
            self._close(reset_client=False, reset_server=False, now=self.ctx.loop.time())

    def close_by_table(self, reason: str) -> None:
        """The table ended the flow (expiry, destination removed): reset both sides."""
        if self.state is _CLOSED:
            return
        self.ctx.log(Outcome.CLOSED_BY_TABLE, self, reason=reason)
        self._close(reset_client=True, reset_server=True, now=self.ctx.loop.time())

    def abort(self) -> None:
        """Reset both sides without logging (data-plane shutdown)."""
        self._close(reset_client=True, reset_server=True, now=self.ctx.loop.time())

    def _close(self, *, reset_client: bool, reset_server: bool, now: float) -> None:
        state = self.state
        if state is _CLOSED:
            return
        self.state = _CLOSED
        ctx = self.ctx
        if state is _CONNECTING:
            ctx.connecting.pop(self, None)
        up, down = self.up, self.down
        up.reading = down.reading = False
        if up.pipe is not None or up.pending is not None:
            up.release_pipe()
        if down.pipe is not None or down.pending is not None:
            down.release_pipe()
        poller = ctx.poller
        poller.forget(self.cfd)
        poller.forget(down.sfd)
        if reset_client:
            _reset_close(self.client)
        else:
            self.client.close()
        if reset_server:
            _reset_close(self.server)
        else:
            self.server.close()
        if up.unreported:
            up.flush_report(now)
        if down.unreported:
            down.flush_report(now)
        ctx.table.flow_event(self.flow, _FLOW_CLOSED, now=now)
        ctx.connections.pop(self.flow, None)
        # Each pump refers back to its connection: break that cycle, so reference counting
        # frees the connection now rather than the cyclic collector later (a pump still on
        # a ready or unreported list is not reading and holds nothing to report).
        up.conn = down.conn = _DETACHED


# What a pump of a closed connection refers to instead (see `TcpConnection._close`): a
# connection in no registry, whose only attribute is its state, CLOSED.
_DETACHED: Final = object.__new__(TcpConnection)
_DETACHED.state = _CLOSED


class TcpListener:
    """The listening socket of one TCP virtual service (VIP:port), and its accept loop.

    Bound with IP_FREEBIND (IPV6_FREEBIND for IPv6), so it can be set up before VRRP puts
    the VIP on an interface, as an IPVS service can; SO_REUSEADDR so a restart does not wait
    for TIME_WAIT; keepalive and TCP_NODELAY set here are inherited by accepted sockets.
    """

    def __init__(
        self,
        ctx: ProxyContext,
        key: ServiceKey,
        options: ServiceOptions,
        *,
        backlog: int,
    ) -> None:
        if key.addr is None or key.protocol != IpProto.TCP:
            raise ValueError(f"not a TCP address service: {key}")
        self.ctx = ctx
        self.key = key
        self.options = options
        self.vip: tuple[IPAddress, int] = (key.addr, key.port)
        self._paused: asyncio.TimerHandle | None = None
        self.sock = listening_socket(key.addr, key.port, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ctx.keepalive.apply(self.sock, ctx.system_keepalive)
            self.sock.listen(backlog)
        except OSError:
            self.sock.close()
            raise
        self.fd = self.sock.fileno()
        self.family = socket.AF_INET if key.addr.version == 4 else socket.AF_INET6
        ctx.loop.add_reader(self.fd, self._on_readable)

    def close(self) -> None:
        """Stop accepting; connections already accepted are not touched."""
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        else:
            self.ctx.loop.remove_reader(self.fd)
        self.sock.close()

    def _resume(self) -> None:
        self._paused = None
        self.ctx.loop.add_reader(self.fd, self._on_readable)

    def _on_readable(self) -> None:
        ctx = self.ctx
        table = ctx.table
        connections = ctx.connections
        # socket._accept() + socket(fileno=) is what socket.accept() does, minus converting
        # family and type to enums on every call (measurable at tens of thousands per second).
        accept: Callable[[], tuple[int, Any]] = self.sock._accept  # type: ignore[attr-defined]
        family = self.family
        for _ in range(ACCEPT_BATCH):
            try:
                fd, addr = accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                ctx.log(
                    Outcome.ACCEPT_FAILED,
                    vs=f"{self.vip[0]}:{self.vip[1]}",
                    error=errno_name(exc),
                )
                ctx.loop.remove_reader(self.fd)
                self._paused = ctx.loop.call_later(ACCEPT_PAUSE, self._resume)
                return
            client = _socket.socket(family, socket.SOCK_STREAM, 0, fd)
            ctx.counters.accepted += 1
            if len(connections) >= ctx.max_connections:
                _reset_close(client)
                ctx.log(
                    Outcome.REFUSED_LIMIT,
                    vs=f"{self.vip[0]}:{self.vip[1]}",
                    limit=ctx.max_connections,
                )
                continue
            client.setblocking(False)
            caddr = (parse_addr(addr[0]), addr[1])
            now = ctx.loop.time()
            flow = table.open_flow(self.key, caddr, now=now)
            if flow is None:
                _reset_close(client)
                ctx.log(
                    Outcome.NO_DESTINATION,
                    vs=f"{self.vip[0]}:{self.vip[1]}",
                    client=f"{addr[0]}:{addr[1]}",
                )
                continue
            table.flow_event(flow, _ACCEPTED, now=now)
            try:
                conn = TcpConnection(ctx, flow, client, fd, self.options)
            except OSError as exc:  # no socket for the real server (EMFILE...)
                table.flow_event(flow, _FLOW_CLOSED, now=now)
                _reset_close(client)
                ctx.log(
                    Outcome.CONNECT_FAILED,
                    vs=f"{self.vip[0]}:{self.vip[1]}",
                    error=errno_name(exc),
                )
                continue
            connections[flow] = conn
            conn.connect(now)


def listening_socket(addr: IPAddress, port: int, kind: int) -> socket.socket:
    """A non-blocking socket of `kind` bound to addr:port with SO_REUSEADDR and FREEBIND."""
    family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    sock = socket.socket(family, kind | socket.SOCK_NONBLOCK)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
            except OSError:  # kernels before 4.15: IP_FREEBIND also covers IPv6 sockets
                sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((str(addr), port))
    except OSError:
        sock.close()
        raise
    return sock
