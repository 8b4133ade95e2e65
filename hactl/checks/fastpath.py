"""Callback-driven TCP_CHECK and plain HTTP_GET probes: no coroutine, Task or Future per probe.

`CheckRunner` starts these instead of `run_probe` tasks for the two checker kinds that
dominate large pools. A `FastProbe` is a small state machine driven by callbacks from a
`Poller`:

    start -> connect_ex --EINPROGRESS--> watch EPOLLOUT --ready--> (EPOLLERR: SO_ERROR, fail)
                                                                   |-- TCP_CHECK: done
                                                                   '-- HTTP_GET: send request,
          watch EPOLLIN --ready--> recv, parse (bounded buffer), judge --> next url or done

Every socket is closed with SO_LINGER 0 (a reset, as `probes._abort` explains). The result
goes to the `done` callback exactly once, unless the probe is cancelled first (then never).

Why callbacks: awaiting `loop.sock_connect` costs a coroutine, a Task, a Future, a timeout
context and several loop iterations per probe; at 10,000 checks a second that was over half
of the checker's CPU.

Why a `Poller` rather than `loop.add_writer`/`add_reader` and `loop.call_at` per probe (the
first version of this module did that): in a profile, the loop's per-fd bookkeeping (a
Handle per registration, selector key lookups, an epoll_ctl to add and another to remove, a
TimerHandle per deadline) was the largest Python cost left; measured, HTTP_GET went from
0.21 to about 0.15 ms CPU per check (docs/checks.md, Scale). The Poller owns one epoll set
that the loop watches as a single readable fd: a probe costs one epoll_ctl to add (closing
the socket removes it from the set), EPOLLERR spares the SO_ERROR query on success, one
`poll` delivers a batch of ready probes, and deadlines sit in one heap behind one loop
timer. Linux only, like IPVS.

Semantics are those of `probes.run_probe` and must stay so (a differential test compares
both): the same request bytes (`probes._request`), the same response parser
(`wire.parse_http_response`), the same verdict (`probes._judge`), the same failure texts
(`probes._describe`, "timeout after ...", "HTTP response too large"). SSL_GET and every other
kind keep the coroutine path.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import os
import select
import socket
from collections.abc import Callable

from hactl.checks.events import ProbeResult
from hactl.checks.model import CheckSpec, HttpGetCheck, TcpCheck
from hactl.checks.probes import _LINGER_ABORT, _describe, _judge, _request, open_socket
from hactl.checks.wire import IncompleteResponse, WireError, parse_http_response
from hactl.ipvs.model import IPAddress

__all__ = ["FastProbe", "Poller", "ProbePlan", "supports"]

_RECV = 65536
_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR})

_OUT = select.EPOLLOUT
_IN = select.EPOLLIN
_TROUBLE = select.EPOLLERR | select.EPOLLHUP
# what a probe waits for
_CONNECTING, _SENDING, _READING = 0, 1, 2
# how many ready sockets one poll takes; more wait for the loop's next turn
_BATCH = 1024


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

    __slots__ = ("family", "head", "limit", "requests", "sockaddr", "spec")

    def __init__(self, spec: CheckSpec, addr: IPAddress, port: int) -> None:
        opts = spec.connect
        if opts.connect_ip is not None:
            addr = opts.connect_ip
        if opts.connect_port is not None:
            port = opts.connect_port
        self.spec = spec
        self.sockaddr = (str(addr), port)
        self.family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        self.requests: tuple[bytes, ...] = ()
        self.head = False
        self.limit = 0
        if isinstance(spec, HttpGetCheck):
            self.requests = tuple(_request(addr, port, spec, url) for url in spec.urls)
            self.head = spec.method == "HEAD"
            self.limit = spec.max_body + 65536  # as run_probe: headers may add up to 64 KiB


class Poller:
    """The event source of fast probes: one epoll set and one deadline heap, each behind a
    single loop callback.

    Args:
        loop: the running loop; it watches the epoll fd and runs the deadline timer.

    `close()` releases the epoll fd; probes still registered must be cancelled first.
    """

    __slots__ = ("_at", "_deadlines", "_ep", "_epoch", "_fd", "_loop", "_probes", "_seq",
                 "_timer", "time")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.time = loop.time
        self._ep = select.epoll()
        self._fd = self._ep.fileno()
        self._probes: dict[int, FastProbe] = {}
        # epoch of the current dispatch: a probe registered during it (on a reused fd
        # number) is not the one its events are about
        self._epoch = 0
        self._deadlines: list[tuple[float, int, FastProbe]] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._at = float("inf")
        loop.add_reader(self._fd, self._on_ready)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._ep.closed:
            self._loop.remove_reader(self._fd)
            self._ep.close()
        self._probes.clear()
        self._deadlines.clear()

    # -- used by FastProbe ---------------------------------------------------------------------

    def watch(self, probe: FastProbe, fd: int, events: int) -> None:
        probe.epoch = self._epoch
        if fd in self._probes:
            self._ep.modify(fd, events)
        else:
            self._ep.register(fd, events)
        self._probes[fd] = probe

    def forget(self, fd: int) -> None:
        """`fd` is about to be closed (which takes it out of the epoll set)."""
        self._probes.pop(fd, None)

    def add_deadline(self, probe: FastProbe) -> None:
        self._seq += 1
        heapq.heappush(self._deadlines, (probe.deadline, self._seq, probe))
        if probe.deadline < self._at:
            self._arm(probe.deadline)

    # -- loop callbacks ----------------------------------------------------------------------

    def _on_ready(self) -> None:
        self._epoch += 1
        epoch = self._epoch
        probes = self._probes
        for fd, events in self._ep.poll(0, _BATCH):
            probe = probes.get(fd)
            if probe is not None and probe.epoch != epoch:
                probe.ready(events)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = at
        self._timer = self._loop.call_at(at, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        self._at = float("inf")
        heap = self._deadlines
        now = self._loop.time()
        # Finished probes leave their entries behind; they are dropped here, so the timer
        # only fires for probes that were still running when it was armed.
        while heap:
            at, _, probe = heap[0]
            if probe.finished:
                heapq.heappop(heap)
            elif at <= now:
                heapq.heappop(heap)
                probe.expire()
            else:
                self._arm(at)
                return


class FastProbe:
    """One in-flight TCP_CHECK or HTTP_GET probe (see the module docstring).

    Args:
        plan: the check's `ProbePlan`.
        deadline: loop time at which the probe fails with "timeout after ...".
        done: receives the result once, from a poller callback or from `start()` itself.
        poller: the event source (one per loop, shared by all probes).
    """

    __slots__ = (
        "_buf", "_done", "_fd", "_pending", "_phase", "_plan", "_poller", "_sock", "_started",
        "_url", "deadline", "epoch", "finished",
    )

    def __init__(
        self,
        plan: ProbePlan,
        *,
        deadline: float,
        done: Callable[[ProbeResult], None],
        poller: Poller,
    ) -> None:
        self._plan = plan
        self._poller = poller
        self._done: Callable[[ProbeResult], None] | None = done
        self.deadline = deadline
        self.finished = False
        self.epoch = -1
        self._started = 0.0
        self._sock: socket.socket | None = None
        self._fd = -1
        self._phase = _CONNECTING
        self._url = 0
        self._buf = b""
        self._pending = b""

    def start(self) -> None:
        """Open the first connection and arm the deadline."""
        self._started = self._poller.time()
        self._poller.add_deadline(self)
        self._connect()

    def cancel(self) -> None:
        """Stop now: close the socket, never call `done`."""
        self._done = None
        self.finished = True
        self._close()

    # -- called by the poller ------------------------------------------------------------------

    def ready(self, events: int) -> None:
        """The socket is ready (`events`: the epoll mask)."""
        if self._sock is None:
            return  # closed since the poll that reported it
        phase = self._phase
        if phase == _CONNECTING:
            self._on_connect(events)
        elif phase == _SENDING:
            self._send()
        else:
            self._on_readable()

    def expire(self) -> None:
        self._finish(False, f"timeout after {self.deadline - self._started:.3g}s")

    # -- the steps ---------------------------------------------------------------------------

    def _connect(self) -> None:
        plan = self._plan
        try:
            sock = open_socket(plan.family, socket.SOCK_STREAM, 0, plan.spec.connect)
        except OSError as exc:
            self._finish(False, _describe(exc))
            return
        self._sock = sock
        self._fd = sock.fileno()
        self._phase = _CONNECTING
        try:
            err = sock.connect_ex(plan.sockaddr)
        except OSError as exc:  # connect_ex returns most errors; not all (e.g. EAFNOSUPPORT)
            self._finish(False, _describe(exc))
            return
        if err == 0:
            self._connected()
        elif err in _IN_PROGRESS:
            self._poller.watch(self, self._fd, _OUT)
        else:
            self._finish(False, os.strerror(err))

    def _on_connect(self, events: int) -> None:
        if events & _TROUBLE:
            # the connect failed (or the peer reset at once): the reason is in SO_ERROR
            sock = self._sock
            assert sock is not None
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            self._finish(False, os.strerror(err or errno.ECONNRESET))
            return
        self._connected()

    def _connected(self) -> None:
        requests = self._plan.requests
        if not requests:
            self._finish(True, "ok")  # TCP_CHECK: the handshake is the check
            return
        self._pending = requests[self._url]
        self._buf = b""
        self._send()

    def _send(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            sent = sock.send(self._pending)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._finish(False, _describe(exc))
            return
        self._pending = self._pending[sent:]
        # the rest when writable again, or else the answer
        if self._pending:
            self._phase = _SENDING
            self._poller.watch(self, self._fd, _OUT)
        else:
            self._phase = _READING
            self._poller.watch(self, self._fd, _IN)

    def _on_readable(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            chunk = sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(False, _describe(exc))
            return
        buf = self._buf + chunk
        self._buf = buf
        plan = self._plan
        if len(buf) > plan.limit:
            self._finish(False, "HTTP response too large")
            return
        try:
            resp = parse_http_response(buf, eof=not chunk, head=plan.head)
        except IncompleteResponse:
            return
        except (WireError, UnicodeError) as exc:
            self._finish(False, _describe(exc))
            return
        spec = plan.spec
        assert isinstance(spec, HttpGetCheck)
        url = spec.urls[self._url]
        why = _judge(url, resp.status, resp.body)
        if why is not None:
            self._finish(False, f"{url.path}: {why}")
            return
        self._url += 1
        if self._url == len(plan.requests):
            self._finish(True, "ok")
            return
        # the next url on a fresh connection, as run_probe does
        self._close()
        self._connect()

    # -- the end -----------------------------------------------------------------------------

    def _close(self) -> None:
        sock = self._sock
        if sock is None:
            return
        self._sock = None
        self._poller.forget(self._fd)
        # probes._abort inlined (a reset, not a FIN; see there), without its context manager:
        # this runs for every probe
        try:  # noqa: SIM105
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
        except OSError:
            pass
        sock.close()  # which takes the fd out of the epoll set

    def _finish(self, ok: bool, detail: str) -> None:
        self.finished = True
        self._close()
        done, self._done = self._done, None
        if done is not None:
            done(ProbeResult(ok, detail, self._poller.time() - self._started))
