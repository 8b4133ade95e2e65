"""Callback-driven TCP_CHECK and plain HTTP_GET probes: no coroutine, Task or Future per probe.

`CheckRunner` starts these instead of `run_probe` tasks for the two checker kinds that
dominate large pools. A `FastProbe` is a small state machine driven by callbacks from a
`Poller`:

    TCP_CHECK: start -> connect_ex --EINPROGRESS--> watch --EPOLLOUT--> done
                                                              '-EPOLLERR--> SO_ERROR, fail
    HTTP_GET:  start -> connect_ex, send the request at once --sent--> watch --EPOLLIN--> read
                                      |-- EAGAIN (connect under way) --> EPOLLOUT --> send
                                      '-- error (refused ...) --> fail
               read: recv until EAGAIN, parse (bounded buffer), judge --> next url or done

The request does not wait for an EPOLLOUT report (HAProxy sends the same way): on loopback
and most LANs the handshake is over when connect() returns, so the connected edge and the
answer usually come in one report, one callback per probe instead of two. An HTTP_GET
socket also holds the handshake's final ACK back for the request (`_connect`): one packet
less, and the server is woken once, with its request already there.

Every connection ends with a reset, never a FIN (as `probes._abort` explains): a socket
whose exchange went to its end (connected, and for HTTP_GET an answer parsed and judged) is
kept for the next probe, its connection dissolved by connect(2) to an AF_UNSPEC address
(tcp_disconnect, which resets an established connection); every other socket is closed with
SO_LINGER 0. The result goes to the `done` callback exactly once per `start()`, unless the
probe is cancelled first (then never). A probe object belongs to one check and is started
again for each of its probes (one in flight per check, always): what does not change
between probes (the `ProbePlan`, the `done` callback) is built once, not per probe.

Why callbacks: awaiting `loop.sock_connect` costs a coroutine, a Task, a Future, a timeout
context and several loop iterations per probe; at 10,000 checks a second that was over half
of the checker's CPU.

Why a `Poller` rather than `loop.add_writer`/`add_reader` and `loop.call_at` per probe (the
first version of this module did that): in a profile, the loop's per-fd bookkeeping (a
Handle per registration, selector key lookups, an epoll_ctl to add and another to remove, a
TimerHandle per deadline) was the largest Python cost left (docs/checks.md, Scale). The
Poller owns one epoll set that the loop watches as a single readable fd:

* A socket is registered once, for EPOLLOUT and EPOLLIN, edge-triggered: the edge that
  says "connected" and the one that says "the answer is here" come from the same
  registration, so no epoll_ctl is needed between sending and reading (edge-triggered means
  each report must be read until EAGAIN, which `_on_readable` does). EPOLLERR spares the
  SO_ERROR query on success, and one `poll` delivers a batch of ready probes.
* Sockets are reused. A socket whose exchange went to its end is dissolved (a reset) and kept
  idle, still in the epoll set, up to `IDLE_SOCKETS` per address family and checker kind; the next
  probe of that kind of a check without socket options (bindto, bind_port, bind_if, fwmark)
  connects it again. Per probe that saves socket(), close(), SO_LINGER and the epoll_ctl, and the
  kernel's allocation and release of a socket and its file: the costliest steps after the TCP
  exchange itself (docs/checks.md, Scale). The kernel polls a socket afresh for every epoll
  report, so an event is always about the socket's current connection; the dissolved connection's
  own error and hang-up are reported while the socket is idle, to nobody. Sockets that failed in
  any way are closed, not kept.
* Deadlines sit in a timer wheel behind one loop timer: slots of `DEADLINE_GRAIN` seconds,
  a list of probes per slot, a small heap of slot numbers. Adding a deadline is an append
  (no tuple, nothing for the garbage collector to promote); entries of probes that finished
  stay behind and are skipped when their slot comes up. A probe expires at the end of its
  deadline's slot, at most `DEADLINE_GRAIN` late.
* Before it expires anything, the deadline timer reads every socket that is ready: an
  answer that arrived in time but is still queued behind a busy loop is not a timeout.

Linux only, like IPVS.

Semantics are those of `probes.run_probe` and must stay so (a differential test compares
both): the same request bytes (`probes._request`), the same response parser
(`wire.parse_http_status_body`), the same verdict (`probes._judge`), the same failure texts
(`probes._describe`, "timeout after ...", "HTTP response too large"). SSL_GET and every other
kind keep the coroutine path.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import heapq
import math
import os
import select
import socket
import time
from collections.abc import Callable

from hactl.checks.events import ProbeResult
from hactl.checks.model import CheckSpec, HttpGetCheck, TcpCheck
from hactl.checks.probes import _LINGER_ABORT, _describe, _judge, _request, open_socket
from hactl.checks.wire import IncompleteResponse, WireError, parse_http_status_body
from hactl.errors import StateError
from hactl.ipvs.model import IPAddress

__all__ = ["DEADLINE_GRAIN", "IDLE_SOCKETS", "FastProbe", "Poller", "ProbePlan", "supports"]

_RECV = 65536
_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR})
_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
_SOL_SOCKET = socket.SOL_SOCKET
_SO_LINGER = socket.SO_LINGER
_IPPROTO_TCP = socket.IPPROTO_TCP
# On a connecting socket, Linux takes TCP_DEFER_ACCEPT as "delay the handshake's final ACK"
# (tcp_rcv_synsent_state_process): it then rides on the request (see _connect).
_TCP_DEFER_ACCEPT = getattr(socket, "TCP_DEFER_ACCEPT", 9)

_OUT = select.EPOLLOUT
_IN = select.EPOLLIN
_TROUBLE = select.EPOLLERR | select.EPOLLHUP
# one registration for the whole exchange, the same for every socket, so that an idle socket
# can serve any probe (see the module docstring)
_EVENTS = select.EPOLLOUT | select.EPOLLIN | select.EPOLLET
# connect(2) to a struct sockaddr whose family is AF_UNSPEC dissolves a TCP association
# (tcp_disconnect: a reset, as SO_LINGER 0 on close) and leaves the socket ready to connect
# again; 16 zero bytes are such an address for both families
_UNSPEC = bytes(16)
# idle sockets a poller keeps per address family and kind (TCP_CHECK, HTTP_GET); a burst that
# needed more closes the rest
IDLE_SOCKETS = 256
# what a probe waits for
_CONNECTING, _SENDING, _READING = 0, 1, 2
# how many ready sockets one poll takes; more wait for the loop's next turn
_BATCH = 256
# Deadline timer wheel slot (seconds): a probe fails at most this long after its deadline.
DEADLINE_GRAIN = 0.005


def supports(spec: CheckSpec) -> bool:
    """Whether `spec` can run on the fast path (TCP_CHECK, and HTTP_GET without TLS)."""
    # exact types: SslGetCheck subclasses HttpGetCheck and needs the TLS coroutine path
    kind = type(spec)
    return kind is TcpCheck or kind is HttpGetCheck


class ProbePlan:
    """What does not change from one probe of a check to the next: the connect address
    (after `connect_ip`/`connect_port`), the request bytes of each url, the response
    bounds. Callers keep one per check and rebuild it when the check's spec changes.

    Args:
        spec: a spec for which `supports(spec)` is true.
        addr, port: the real server.
    """

    __slots__ = ("family", "head", "limit", "plain", "pool", "requests", "sockaddr", "spec",
                 "timeout")

    def __init__(self, spec: CheckSpec, addr: IPAddress, port: int) -> None:
        opts = spec.connect
        if opts.connect_ip is not None:
            addr = opts.connect_ip
        if opts.connect_port is not None:
            port = opts.connect_port
        self.spec = spec
        self.timeout = spec.timeout
        self.sockaddr = (str(addr), port)
        self.family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        # no socket option to apply (bindto, bind_port, bind_if, fwmark): the socket is
        # made directly, without open_socket's checks
        self.plain = not (opts.fwmark or opts.bind_if or opts.bindto is not None
                          or opts.bind_port)
        self.requests: tuple[bytes, ...] = ()
        self.head = False
        self.limit = 0
        if isinstance(spec, HttpGetCheck):
            self.requests = tuple(_request(addr, port, spec, url) for url in spec.urls)
            self.head = spec.method == "HEAD"
            self.limit = spec.max_body + 65536  # as run_probe: headers may add up to 64 KiB
        # the poller's idle sockets are kept apart by family and by kind: an HTTP_GET socket
        # carries TCP_DEFER_ACCEPT, which a TCP_CHECK must not inherit
        self.pool = _pool(self.family, bool(self.requests))


def _pool(family: int, http: bool) -> int:
    return family * 2 + http


def _disconnector() -> Callable[[int, bytes, int], int] | None:
    """libc's connect(), to dissolve a connection (Python's connect takes no AF_UNSPEC
    address); None where it cannot be had, and then sockets are not reused.

    No argtypes and no errno capture: they cost about a quarter of the call, and ctypes'
    default conversions (int to int, bytes to a pointer to their buffer) are the right ones
    for (fd, address, length). A failure only means "close the socket instead"."""
    try:
        connect = ctypes.CDLL(None).connect
    except (OSError, AttributeError):
        return None
    connect.restype = ctypes.c_int
    disconnect: Callable[[int, bytes, int], int] = connect
    return disconnect


class Poller:
    """The event source of fast probes: one epoll set and one deadline wheel, each behind a
    single loop callback.

    Args:
        loop: the running loop; it watches the epoll fd and runs the deadline timer.

    `close()` releases the epoll fd; probes still registered must be cancelled first.
    """

    __slots__ = ("_armed", "_disconnect", "_ep", "_epoch", "_fd", "_idle", "_loop", "_poll",
                 "_probes", "_slots", "_timer", "_wheel", "time")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # Idle sockets (connection dissolved, still in the epoll set), per pool (address
        # family and kind, `ProbePlan.pool`).
        self._idle: dict[int, list[socket.SocketType]] = {
            _pool(family, http): [] for family in (socket.AF_INET, socket.AF_INET6)
            for http in (False, True)
        }
        self._disconnect = _disconnector()
        # The loop's clock, read several times per probe: asyncio's is time.monotonic behind
        # a Python method, so take the C function directly (uvloop's own is kept).
        self.time: Callable[[], float] = (
            time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time
        )
        self._ep = select.epoll()
        self._poll = self._ep.poll
        self._fd = self._ep.fileno()
        self._probes: dict[int, FastProbe] = {}
        # epoch of the current dispatch: a probe registered during it (on a reused fd
        # number) is not the one its events are about
        self._epoch = 0
        # the deadline wheel: slot number -> probes whose deadline ends in it; the heap
        # holds each slot number once
        self._wheel: dict[int, list[FastProbe]] = {}
        self._slots: list[int] = []
        self._timer: asyncio.Handle | None = None
        self._armed = math.inf  # the slot the timer is armed for
        loop.add_reader(self._fd, self._on_ready)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._ep.closed:
            self._loop.remove_reader(self._fd)
            self._ep.close()
        self._disconnect = None  # a probe that finishes late closes its socket
        for idle in self._idle.values():
            for sock in idle:
                sock.close()  # no connection left to reset
            idle.clear()
        self._probes.clear()
        self._wheel.clear()
        self._slots.clear()

    # -- used by FastProbe ---------------------------------------------------------------------

    def watch(self, probe: FastProbe, fd: int) -> None:
        """Deliver the events of `fd`, a new socket, to `probe`."""
        probe.epoch = self._epoch
        self._ep.register(fd, _EVENTS)
        self._probes[fd] = probe

    def idle_socket(self, pool: int) -> socket.SocketType | None:
        """A socket of `pool` (`ProbePlan.pool`) whose connection was dissolved, still in the
        epoll set (hand it to `adopt` once connecting), or None."""
        idle = self._idle[pool]
        return idle.pop() if idle else None

    def adopt(self, probe: FastProbe, fd: int) -> None:
        """Deliver the events of `fd`, an idle socket connecting again, to `probe`. Its
        registration stays: the kernel polls a socket afresh for each report, so what an
        event says is about the new connection."""
        probe.epoch = self._epoch
        self._probes[fd] = probe

    def forget(self, fd: int) -> None:
        """`fd` is about to be closed (which takes it out of the epoll set) or kept idle."""
        self._probes.pop(fd, None)

    def keep(self, sock: socket.SocketType, fd: int, pool: int) -> bool:
        """Dissolve the connection of `sock` (a reset) and keep the socket for another probe
        of `pool`.

        Returns False when it is not kept (no room, or the kernel refused): the caller closes
        it as before."""
        idle = self._idle[pool]
        disconnect = self._disconnect
        if disconnect is None or len(idle) >= IDLE_SOCKETS or disconnect(fd, _UNSPEC, 16):
            return False
        idle.append(sock)
        return True

    def idle_count(self, family: int = socket.AF_INET) -> int:
        """How many idle sockets of `family` (of either kind) wait for a probe."""
        return len(self._idle[_pool(family, False)]) + len(self._idle[_pool(family, True)])

    def add_deadline(self, probe: FastProbe) -> None:
        slot = probe.wheel_slot = math.ceil(probe.deadline / DEADLINE_GRAIN)
        lane = self._wheel.get(slot)
        if lane is not None:
            lane.append(probe)
            return
        self._wheel[slot] = [probe]
        heapq.heappush(self._slots, slot)
        if slot < self._armed:
            self._arm(slot)

    # -- loop callbacks ----------------------------------------------------------------------

    def _on_ready(self) -> int:
        """Dispatch one batch of ready sockets; returns how many the poll reported."""
        self._epoch += 1
        epoch = self._epoch
        probes = self._probes
        ready = self._poll(0, _BATCH)
        for fd, events in ready:
            probe = probes.get(fd)
            if probe is not None and probe.epoch != epoch:
                probe.ready(events)
        return len(ready)

    def _arm(self, slot: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = slot
        self._timer = self._loop.call_at(slot * DEADLINE_GRAIN, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        self._armed = math.inf
        # Answers already queued are results, not timeouts: read them first. More than one
        # batch ready means a backlog (after a stall): read on at the next loop turn, and
        # expire only then (meanwhile no new deadline re-arms the timer).
        if self._on_ready() == _BATCH:
            self._armed = -math.inf
            self._timer = self._loop.call_soon(self._on_deadline)
            return
        now = self._loop.time()
        wheel, slots = self._wheel, self._slots
        while slots:
            slot = slots[0]
            lane = wheel[slot]
            end = slot * DEADLINE_GRAIN
            if end <= now:
                heapq.heappop(slots)
                del wheel[slot]
                for probe in lane:
                    # an entry is stale once its probe finished, or was started again
                    # (a later deadline, with an entry of its own); slot numbers, not
                    # times, decide: slot * grain may round below the deadline it covers
                    if not probe.finished and probe.wheel_slot <= slot:
                        probe.expire()
                continue
            # Not due yet. Skip slots holding only finished probes, so the timer fires
            # only for probes that may still run out of time.
            running = [p for p in lane if not p.finished and p.wheel_slot <= slot]
            if running:
                wheel[slot] = running
                self._arm(slot)
                return
            heapq.heappop(slots)
            del wheel[slot]


class FastProbe:
    """The fast-path probe of one check (see the module docstring).

    Args:
        plan: the check's `ProbePlan`.
        done: receives the result of each run, from a poller callback or from `start()`.
        poller: the event source (one per loop, shared by all probes).
        deadline: the deadline of the first run, when `start()` is called without one.

    `start(deadline)` runs the probe; once it has reported (or was cancelled) it may be
    started again. `started` is the loop time of the latest start.
    """

    __slots__ = (
        "_buf", "_done", "_fd", "_pending", "_phase", "_poller", "_sock", "_url", "_watched",
        "deadline", "epoch", "finished", "plan", "started", "wheel_slot",
    )

    def __init__(
        self,
        plan: ProbePlan,
        *,
        done: Callable[[ProbeResult], None],
        poller: Poller,
        deadline: float = 0.0,
    ) -> None:
        self.plan = plan
        self._poller = poller
        self._done = done
        self.deadline = deadline
        self.finished = True  # not running
        self.epoch = -1
        self.wheel_slot = 0  # the deadline wheel's slot of the current run
        self.started = 0.0
        self._sock: socket.SocketType | None = None
        self._fd = -1
        self._watched = False  # the socket is in the poller's epoll set
        self._phase = _CONNECTING
        self._url = 0
        self._buf = b""
        self._pending = b""

    def start(self, deadline: float | None = None, *, full_timeout: bool = False) -> None:
        """Open the first connection and arm the deadline (loop time; default: the one
        given at construction). With `full_timeout` the deadline is at least the plan's
        timeout after the real start (a caller that starts a batch of probes late must not
        turn that lateness into failures).

        Raises:
            StateError: the previous run has not finished.
        """
        if not self.finished:
            raise StateError("fast probe started while running")
        poller = self._poller
        started = self.started = poller.time()
        if deadline is not None:
            self.deadline = deadline
        if full_timeout and self.deadline < started + self.plan.timeout:
            self.deadline = started + self.plan.timeout
        self.finished = False
        self._url = 0
        poller.add_deadline(self)
        self._connect()

    def cancel(self) -> None:
        """Stop now: close the socket, never report this run."""
        self.finished = True
        self._close()

    # -- called by the poller ------------------------------------------------------------------

    def ready(self, events: int) -> None:
        """The socket is ready (`events`: the epoll mask)."""
        if self._sock is None:
            return  # closed since the poll that reported it
        phase = self._phase
        if phase == _READING:
            if events & (_IN | _TROUBLE):
                self._on_readable()  # data, EOF or an error: recv says which
        elif phase == _CONNECTING:
            self._on_connect(events)
        elif events & (_OUT | _TROUBLE):
            self._send(events)

    def expire(self) -> None:
        self._finish(False, f"timeout after {self.deadline - self.started:.3g}s")

    # -- the steps ---------------------------------------------------------------------------

    def _connect(self) -> None:
        plan = self.plan
        poller = self._poller
        # a socket left idle by an earlier probe when there is one (no socket option to
        # carry over: only plain plans use them)
        requests = plan.requests
        sock = poller.idle_socket(plan.pool) if plan.plain else None
        reused = sock is not None
        if sock is None:
            try:
                if plan.plain:
                    # the C socket type: socket.socket adds a Python __init__ and close()
                    sock = socket.SocketType(plan.family, _STREAM)
                else:
                    sock = open_socket(plan.family, socket.SOCK_STREAM, 0, plan.spec.connect)
            except OSError as exc:
                self._finish(False, _describe(exc))
                return
            if requests:
                # The handshake's final ACK waits for the request and goes with it, as with
                # HAProxy's tcp-smart-connect: one packet less for each side to handle, and
                # the server is woken once, with its request there. Set once: it survives
                # the dissolution of a kept socket's connection (pools keep kinds apart).
                try:  # noqa: SIM105
                    sock.setsockopt(_IPPROTO_TCP, _TCP_DEFER_ACCEPT, 1)
                except OSError:
                    pass  # only a packet more
        self._sock = sock
        fd = self._fd = sock.fileno()
        self._phase = _CONNECTING
        self._watched = reused
        try:
            err = sock.connect_ex(plan.sockaddr)
        except OSError as exc:  # connect_ex returns most errors; not all (e.g. EAFNOSUPPORT)
            self._finish(False, _describe(exc))
            return
        if err in _IN_PROGRESS or (err == 0 and requests):
            if reused:
                poller.adopt(self, fd)
            else:
                poller.watch(self, fd)
                self._watched = True
            if requests:
                # Optimistic send (as HAProxy): on loopback and most LANs the handshake is
                # over before connect() returns, so the request goes now rather than after
                # an EPOLLOUT report and a callback. A connect still under way refuses it
                # (EAGAIN) and the request waits for EPOLLOUT; one that failed (refused,
                # unreachable) raises its error here, as sock_sendall would after
                # sock_connect on the coroutine path.
                self._pending = requests[self._url]
                self._buf = b""
                self._send(0)
        elif err == 0:
            self._finish(True, "ok", keep=True)  # TCP_CHECK, connected at once
        else:
            self._finish(False, os.strerror(err))

    def _on_connect(self, events: int) -> None:
        """TCP_CHECK's connect is over (HTTP_GET sends at once and waits in `_send`)."""
        if events & _TROUBLE:
            # the connect failed (or the peer reset at once): the reason is in SO_ERROR
            sock = self._sock
            assert sock is not None
            err = sock.getsockopt(_SOL_SOCKET, socket.SO_ERROR)
            self._finish(False, os.strerror(err or errno.ECONNRESET))
            return
        if events & _OUT:
            self._finish(True, "ok", keep=True)  # the handshake is the check

    def _send(self, events: int) -> None:
        sock = self._sock
        assert sock is not None
        try:
            sent = sock.send(self._pending)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._finish(False, _describe(exc))
            return
        if sent:
            self._pending = self._pending[sent:]
        if self._pending:
            # the rest (or all of it, while the connect is under way) at the next EPOLLOUT
            # edge; a failed connect reports EPOLLERR, and send raises its error then
            self._phase = _SENDING
            return
        self._phase = _READING
        if events & _IN:
            # reported together with EPOLLOUT: that edge will not come again
            self._on_readable()

    def _on_readable(self) -> None:
        sock = self._sock
        assert sock is not None
        plan = self.plan
        # edge-triggered: read until the answer is complete or the socket has no more
        while True:
            try:
                chunk = sock.recv(_RECV)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._finish(False, _describe(exc))
                return
            buf = self._buf + chunk if self._buf else chunk
            self._buf = buf
            if len(buf) > plan.limit:
                self._finish(False, "HTTP response too large")
                return
            try:
                status, body = parse_http_status_body(buf, eof=not chunk, head=plan.head)
            except IncompleteResponse:
                continue
            except (WireError, UnicodeError) as exc:
                self._finish(False, _describe(exc))
                return
            break
        spec = plan.spec
        assert isinstance(spec, HttpGetCheck)
        url = spec.urls[self._url]
        why = _judge(url, status, body)
        if why is not None:
            self._finish(False, f"{url.path}: {why}", keep=True)
            return
        self._url += 1
        if self._url == len(plan.requests):
            self._finish(True, "ok", keep=True)
            return
        # the next url on a fresh connection, as run_probe does
        self._close(keep=True)
        self._connect()

    # -- the end -----------------------------------------------------------------------------

    def _close(self, keep: bool = False) -> None:
        """Close the socket with a reset; with `keep`, after an exchange that went to its
        end, dissolve the connection (also a reset) and leave the socket to the poller for
        another probe, when it can take it."""
        sock = self._sock
        if sock is None:
            return
        self._sock = None
        self._buf = b""
        poller = self._poller
        fd = self._fd
        poller.forget(fd)
        if keep and self._watched and self.plan.plain and poller.keep(sock, fd, self.plan.pool):
            return
        # probes._abort inlined (a reset, not a FIN; see there), without its context manager:
        # this runs for every probe
        try:  # noqa: SIM105
            sock.setsockopt(_SOL_SOCKET, _SO_LINGER, _LINGER_ABORT)
        except OSError:
            pass
        sock.close()  # which takes the fd out of the epoll set

    def _finish(self, ok: bool, detail: str, keep: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        self._close(keep)
        self.report(ProbeResult(ok, detail, self._poller.time() - self.started))

    def report(self, result: ProbeResult) -> None:
        """Hand `result` to the `done` callback (subclasses may send it elsewhere)."""
        self._done(result)
