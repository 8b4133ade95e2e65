"""The callback fast path (`fastpath.FastProbe`) against the coroutine probes (`run_probe`):
the same scenario on a real loopback peer must give the same `ok` and the same `detail`.
Then what only the fast path has: cancellation, and a runner that starts no task for it."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import ipaddress
import math
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import pytest

from hactl.checks import (
    CheckEvent,
    CheckRunner,
    CheckSpec,
    ConnectOptions,
    HealthChanged,
    HttpGetCheck,
    ProbeResult,
    RealServerSpec,
    TcpCheck,
    UrlSpec,
    VirtualServerSpec,
)
from hactl.checks.fastpath import (
    DEADLINE_GRAIN,
    IDLE_SOCKETS,
    FastProbe,
    Poller,
    ProbePlan,
    supports,
)
from hactl.checks.model import SslGetCheck
from hactl.checks.probes import run_probe
from hactl.errors import StateError
from hactl.ipvs.model import IPAddress, IpProto, ServiceKey

LO = ipaddress.IPv4Address("127.0.0.1")
FAST = ConnectOptions(connect_timeout=0.4)
BODY = b"<html>backend ok</html>"
pytestmark = pytest.mark.timeout(30)


async def fast_probe(spec: CheckSpec, addr: IPAddress, port: int) -> ProbeResult:
    """Run one FastProbe to completion, the way run_probe is awaited."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[ProbeResult] = loop.create_future()
    poller = Poller(loop)
    try:
        probe = FastProbe(ProbePlan(spec, addr, port), deadline=loop.time() + spec.timeout,
                          done=result.set_result, poller=poller)
        probe.start()
        return await result
    finally:
        poller.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def peer(handler: Handler) -> AsyncIterator[int]:
    """A loopback server running `handler` per connection; yields its port. Handlers that
    wait end when their connection closes, which the teardown forces."""
    tasks: set[asyncio.Task[None]] = set()
    writers: set[asyncio.StreamWriter] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        writers.add(writer)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the probe reset the connection: its business
        finally:
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()
        if tasks:
            await asyncio.wait(list(tasks), timeout=2)
        await server.wait_closed()


def answer(raw: bytes, *, hang: bool = False) -> Handler:
    """A handler that reads the request head, writes `raw` and closes (or hangs)."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()
        if hang:
            await reader.read()  # until the probe gives up and closes
    return handler


def response(status: int = 200, body: bytes = BODY, *, chunked: bool = False) -> bytes:
    if chunked:
        half = len(body) // 2
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part)
                          for part in (body[:half], body[half:]))
        return (b"HTTP/1.1 %d X\r\nTransfer-Encoding: chunked\r\n\r\n" % status
                + chunks + b"0\r\n\r\n")
    return b"HTTP/1.0 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)


def http(**url: object) -> HttpGetCheck:
    return HttpGetCheck(connect=FAST, urls=(UrlSpec(**url),))  # type: ignore[arg-type]


GOOD_DIGEST = hashlib.md5(BODY, usedforsecurity=False).hexdigest()

# (name, spec, handler, expected ok, expected detail or None for "any", both paths alike)
HTTP_CASES: list[tuple[str, HttpGetCheck, Handler, bool, str | None]] = [
    ("200 match", http(path="/h", regex="backend ok", digest=GOOD_DIGEST),
     answer(response()), True, "ok"),
    ("200 chunked", http(regex="backend ok"), answer(response(chunked=True)), True, "ok"),
    ("200 until close", http(), answer(b"HTTP/1.0 200 OK\r\n\r\n" + BODY), True, "ok"),
    ("500", http(path="/h"), answer(response(500)), False, "/h: HTTP status 500"),
    ("status range", http(status_codes=((500, 503),)), answer(response(503)), True, "ok"),
    ("regex mismatch", http(path="/h", regex="nope"), answer(response()),
     False, "/h: regex did not match"),
    ("regex must not match", http(path="/h", regex="backend", regex_no_match=True),
     answer(response()), False, "/h: regex matched"),
    ("digest mismatch", http(path="/h", digest="0" * 32), answer(response()),
     False, f"/h: digest mismatch ({GOOD_DIGEST})"),
    ("closed before answering", http(), answer(b""), False, "truncated HTTP header"),
    ("closed mid header", http(), answer(b"HTTP/1.0 200 OK\r\nContent-"),
     False, "truncated HTTP header"),
    ("closed mid body", http(), answer(b"HTTP/1.0 200 OK\r\nContent-Length: 99\r\n\r\nabc"),
     False, "truncated HTTP body"),
    ("bad status line", http(), answer(b"SMTP 220 hello\r\n\r\n"),
     False, "bad HTTP status line"),
    ("oversize body",
     HttpGetCheck(connect=FAST, max_body=1024),
     answer(response(body=b"x" * 200_000)), False, "HTTP response too large"),
    ("hang after the head", http(), answer(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n",
                                          hang=True), False, "timeout after 0.4s"),
    ("hang before answering", http(), answer(b"", hang=True), False, "timeout after 0.4s"),
    ("second url fails",
     HttpGetCheck(connect=FAST, urls=(UrlSpec(path="/a"), UrlSpec(path="/b", regex="nope"))),
     answer(response()), False, "/b: regex did not match"),
    ("HEAD", HttpGetCheck(connect=FAST, method="HEAD"),
     answer(b"HTTP/1.0 200 OK\r\nContent-Length: 99\r\n\r\n"), True, "ok"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("name", "spec", "handler", "ok", "detail"), HTTP_CASES,
                         ids=[case[0] for case in HTTP_CASES])
async def test_http_paths_agree(name: str, spec: HttpGetCheck, handler: Handler, ok: bool,
                                detail: str | None) -> None:
    assert supports(spec)
    async with peer(handler) as port:
        slow, fast = await asyncio.gather(run_probe(spec, LO, port), fast_probe(spec, LO, port))
    assert (fast.ok, fast.detail) == (slow.ok, slow.detail)
    assert (fast.ok, fast.detail) == (ok, detail)
    assert 0.0 <= fast.elapsed < spec.timeout + 0.5


@pytest.mark.asyncio
async def test_http_request_bytes_are_run_probes() -> None:
    """Same request on the wire: method, path, Host, extension headers, auth."""
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(response())
        await writer.drain()

    spec = HttpGetCheck(connect=FAST, urls=(UrlSpec(path="/x?y=1"),), http_protocol="1.1",
                        method="POST", headers=(("X-Probe", "1"),), basic_auth=("u", "p"))
    async with peer(record) as port:
        assert (await run_probe(spec, LO, port)).ok
        assert (await fast_probe(spec, LO, port)).ok
    assert len(seen) == 2 and seen[0] == seen[1]
    assert seen[1] == b"".join(ProbePlan(spec, LO, port).requests)


@pytest.mark.asyncio
async def test_tcp_open_and_refused_agree() -> None:
    spec = TcpCheck(connect=FAST)
    async with peer(answer(b"")) as port:
        slow, fast = await run_probe(spec, LO, port), await fast_probe(spec, LO, port)
    assert (fast.ok, fast.detail) == (slow.ok, slow.detail) == (True, "ok")
    closed = free_port()
    slow, fast = await run_probe(spec, LO, closed), await fast_probe(spec, LO, closed)
    assert (fast.ok, fast.detail) == (slow.ok, slow.detail) == (False, "Connection refused")
    http_spec = http()
    slow, fast = await run_probe(http_spec, LO, closed), await fast_probe(http_spec, LO, closed)
    assert (fast.ok, fast.detail) == (slow.ok, slow.detail) == (False, "Connection refused")


@pytest.mark.asyncio
async def test_tcp_connect_timeout_agrees() -> None:
    """A listener whose accept queue is full drops SYNs: the connect hangs until the
    deadline on both paths."""
    spec = TcpCheck(connect=ConnectOptions(connect_timeout=0.3))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):  # more than the queue holds; the rest stay in SYN_SENT
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                fillers.append(s)
            await asyncio.sleep(0.05)
            slow = await run_probe(spec, LO, port)
            fast = await fast_probe(spec, LO, port)
        finally:
            for s in fillers:
                s.close()
    assert (fast.ok, fast.detail) == (slow.ok, slow.detail) == (False, "timeout after 0.3s")


@pytest.mark.asyncio
async def test_bind_failure_agrees() -> None:
    """A socket option that fails (bindto an address not on this host) is a failed result."""
    spec = TcpCheck(connect=ConnectOptions(connect_timeout=0.3,
                                           bindto=ipaddress.IPv4Address("192.0.2.1")))
    slow, fast = await run_probe(spec, LO, 1), await fast_probe(spec, LO, 1)
    assert (fast.ok, fast.detail) == (slow.ok, slow.detail)
    assert not fast.ok and fast.detail == "Cannot assign requested address"


@pytest.mark.asyncio
async def test_connect_port_and_ip_override() -> None:
    async with peer(answer(response())) as port:
        spec = HttpGetCheck(connect=ConnectOptions(connect_timeout=0.4, connect_ip=LO,
                                                   connect_port=port))
        result = await fast_probe(spec, ipaddress.IPv4Address("192.0.2.9"), 1)
    assert (result.ok, result.detail) == (True, "ok")


def test_supports_only_plain_tcp_and_http() -> None:
    assert supports(TcpCheck()) and supports(HttpGetCheck())
    assert not supports(SslGetCheck())


@pytest.mark.asyncio
async def test_cancel_closes_and_never_reports() -> None:
    closed = asyncio.Event()

    async def wait_for_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            await reader.read()  # returns or raises once the probe is gone
        finally:
            closed.set()

    loop = asyncio.get_running_loop()
    results: list[ProbeResult] = []
    async with peer(wait_for_close) as port:
        poller = Poller(loop)
        probe = FastProbe(ProbePlan(http(), LO, port), deadline=loop.time() + 0.3,
                          done=results.append, poller=poller)
        probe.start()
        await asyncio.sleep(0.1)
        probe.cancel()
        async with asyncio.timeout(2):
            await closed.wait()
        await asyncio.sleep(0.4)  # past the deadline: the timer was cancelled too
        poller.close()
    assert results == []
    probe.cancel()  # twice is harmless


# -- in the runner ------------------------------------------------------------------------------

VS = ServiceKey.for_address(IpProto.TCP, ipaddress.IPv4Address("10.1.0.1"), 80)


def probe_side_tasks() -> set[asyncio.Task[object]]:
    """The running tasks but the peers' connection handlers."""
    return {t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__name__", "") != "serve"}


@pytest.mark.asyncio
async def test_runner_starts_no_task_for_fast_probes() -> None:
    """Ten HTTP_GET servers whose probes hang: all in flight at once, no task among them;
    stop() closes every socket."""
    connections: list[asyncio.StreamWriter] = []
    hung = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        connections.append(writer)
        if len(connections) == 10:
            hung.set()
        await reader.read()  # until the probe closes

    check = HttpGetCheck(connect=ConnectOptions(connect_timeout=5.0), delay_loop=1.0)
    events: list[CheckEvent] = []
    async with AsyncExitStack() as stack:
        ports = [await stack.enter_async_context(peer(hang)) for _ in range(10)]
        servers = tuple(RealServerSpec(addr=LO, port=port, checks=(check,)) for port in ports)
        runner = CheckRunner([VirtualServerSpec(key=VS, real_servers=servers)],
                             emit=events.append, rng=random.Random(1))
        before = probe_side_tasks()
        task = asyncio.create_task(runner.run())
        async with asyncio.timeout(5):
            await hung.wait()
        assert probe_side_tasks() == before | {task}  # the runner itself, nothing else
        assert runner.stats.started == 10 and runner.stats.completed == 0
        runner.stop()
        await asyncio.wait_for(task, 5)
        await asyncio.sleep(0.05)
        assert all(w.is_closing() or w.transport.is_closing() for w in connections)
    assert runner.stats.completed == 0


@pytest.mark.asyncio
async def test_runner_reports_fast_results() -> None:
    """A server that refuses goes down, one that answers stays up, through the fast path."""
    check = TcpCheck(connect=ConnectOptions(connect_timeout=0.5), delay_loop=0.2, retry=0,
                     warmup=0.0)
    async with peer(answer(b"")) as port:
        up = RealServerSpec(addr=LO, port=port, checks=(check,))
        down = RealServerSpec(addr=LO, port=free_port(), checks=(check,))
        went_down = asyncio.Event()

        def emit(event: CheckEvent) -> None:
            if isinstance(event, HealthChanged) and not event.up and event.rs.port == down.port:
                went_down.set()

        runner = CheckRunner([VirtualServerSpec(key=VS, real_servers=(up, down))],
                             emit=emit, rng=random.Random(1))
        task = asyncio.create_task(runner.run())
        try:
            async with asyncio.timeout(5):
                await went_down.wait()
            await asyncio.sleep(0.5)  # a few more rounds: the good server stays
        finally:
            runner.stop()
            await asyncio.wait_for(task, 5)
    view = runner.views()[VS]
    assert [(d.addr, d.port) for d in view.destinations] == [(LO, port)]
    assert runner.stats.failed >= 1


@pytest.mark.asyncio
async def test_earlier_deadline_rearms_the_timer() -> None:
    """A probe started later with a shorter timeout fails at its own deadline, not at the
    longer one the poller's timer was armed for."""
    loop = asyncio.get_running_loop()
    results: dict[str, ProbeResult] = {}
    order: list[str] = []
    both = asyncio.Event()

    def done(name: str) -> Callable[[ProbeResult], None]:
        def record(result: ProbeResult) -> None:
            results[name] = result
            order.append(name)
            if len(order) == 2:
                both.set()
        return record

    async with peer(answer(b"", hang=True)) as port:
        poller = Poller(loop)
        try:
            slow = FastProbe(ProbePlan(http(), LO, port), deadline=loop.time() + 1.5,
                             done=done("slow"), poller=poller)
            slow.start()
            quick = FastProbe(ProbePlan(http(), LO, port), deadline=loop.time() + 0.2,
                              done=done("quick"), poller=poller)
            quick.start()
            async with asyncio.timeout(5):
                await both.wait()
        finally:
            poller.close()
    assert order == ["quick", "slow"]
    assert results["quick"].detail == "timeout after 0.2s"
    assert 0.15 < results["quick"].elapsed < 1.0
    assert results["slow"].detail == "timeout after 1.5s"


def test_paths_agree_on_uvloop() -> None:
    """The poller's epoll fd is watched through the loop's add_reader: uvloop too."""
    uvloop = pytest.importorskip("uvloop")

    async def scenarios() -> list[tuple[bool, str]]:
        seen = []
        async with peer(answer(response())) as port:
            for spec in (TcpCheck(connect=FAST), http(regex="backend ok"), http(regex="nope")):
                slow, fast = await run_probe(spec, LO, port), await fast_probe(spec, LO, port)
                assert (fast.ok, fast.detail) == (slow.ok, slow.detail)
                seen.append((fast.ok, fast.detail))
        closed = await fast_probe(TcpCheck(connect=FAST), LO, free_port())
        seen.append((closed.ok, closed.detail))
        return seen

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        seen = runner.run(scenarios())
    assert seen == [(True, "ok"), (True, "ok"), (False, "/: regex did not match"),
                    (False, "Connection refused")]


class Boom(Exception):
    pass


@pytest.mark.asyncio
async def test_a_bug_while_feeding_results_ends_run() -> None:
    """Results are fed from a loop callback; an exception there (a bug: here the emit
    callback raising) still comes out of run(), as it did from the scheduler task."""
    check = TcpCheck(connect=ConnectOptions(connect_timeout=0.5), delay_loop=0.2, retry=0,
                     warmup=0.0)

    def emit(event: CheckEvent) -> None:
        if isinstance(event, HealthChanged) and not event.initial:
            raise Boom

    server = RealServerSpec(addr=LO, port=free_port(), checks=(check,))
    runner = CheckRunner([VirtualServerSpec(key=VS, real_servers=(server,))], emit=emit,
                         rng=random.Random(1))
    with pytest.raises(ExceptionGroup) as caught:
        await asyncio.wait_for(runner.run(), 5)
    assert caught.group_contains(Boom)


@pytest.mark.asyncio
async def test_reload_cancels_fast_probes_of_removed_servers() -> None:
    """apply() without a server closes its in-flight fast probe at once; no result of it
    reaches the runner, and the server that stays is still in the pool."""
    arrived = [asyncio.Event(), asyncio.Event()]
    closed = asyncio.Event()

    def hang(n: int) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            arrived[n].set()
            try:
                await reader.read()  # until the probe closes (a reset raises)
            finally:
                if n == 0:
                    closed.set()
        return handler

    check = HttpGetCheck(connect=ConnectOptions(connect_timeout=5.0), delay_loop=1.0,
                         warmup=0.0)
    async with peer(hang(0)) as port0, peer(hang(1)) as port1:
        both = VirtualServerSpec(key=VS, real_servers=tuple(
            RealServerSpec(addr=LO, port=port, checks=(check,)) for port in (port0, port1)))
        runner = CheckRunner([both], emit=lambda event: None, rng=random.Random(1))
        task = asyncio.create_task(runner.run())
        try:
            async with asyncio.timeout(5):
                await asyncio.gather(arrived[0].wait(), arrived[1].wait())
            kept = VirtualServerSpec(key=VS, real_servers=both.real_servers[1:])
            runner.apply([kept], now=asyncio.get_running_loop().time())
            async with asyncio.timeout(2):
                await closed.wait()
            assert runner.stats.completed == 0
            assert [(d.addr, d.port) for d in runner.views()[VS].destinations] == [
                (LO, port1)
            ]
        finally:
            runner.stop()
            await asyncio.wait_for(task, 5)


@pytest.mark.asyncio
async def test_ipv6_paths_agree() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    lo6 = ipaddress.IPv6Address("::1")
    try:
        server = await asyncio.start_server(answer(response()), "::1", 0)
    except OSError:
        pytest.skip("no ::1")
    async with server:
        port = int(server.sockets[0].getsockname()[1])
        for spec in (TcpCheck(connect=FAST), http(regex="backend ok")):
            slow, fast = await run_probe(spec, lo6, port), await fast_probe(spec, lo6, port)
            assert (fast.ok, fast.detail) == (slow.ok, slow.detail) == (True, "ok")
    assert ProbePlan(http(), lo6, port).requests[0].split(b"\r\n")[1] == (
        f"Host: [::1]:{port}".encode()
    )


# -- one probe object per check; the deadline wheel ----------------------------------------------


@pytest.mark.asyncio
async def test_a_probe_runs_again_and_never_twice_at_once() -> None:
    loop = asyncio.get_running_loop()
    results: list[ProbeResult] = []
    got = asyncio.Event()

    def done(result: ProbeResult) -> None:
        results.append(result)
        got.set()

    async with peer(answer(response())) as port:
        poller = Poller(loop)
        try:
            probe = FastProbe(ProbePlan(http(regex="backend ok"), LO, port), done=done,
                              poller=poller)
            for _ in range(3):
                got.clear()
                probe.start(loop.time() + 0.4)
                with pytest.raises(StateError):
                    probe.start(loop.time() + 0.4)
                async with asyncio.timeout(2):
                    await got.wait()
        finally:
            poller.close()
    assert [(r.ok, r.detail) for r in results] == [(True, "ok")] * 3


@pytest.mark.asyncio
async def test_an_earlier_runs_deadline_does_not_expire_the_next_run() -> None:
    """The wheel keeps the entry of a run that finished; when its slot comes up while the
    same probe runs again (with a later deadline), that run is left alone."""
    loop = asyncio.get_running_loop()
    results: list[ProbeResult] = []
    first = {"done": False}

    async def answer_once_then_hang(reader: asyncio.StreamReader,
                                    writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if not first["done"]:
            first["done"] = True
            writer.write(response())
            await writer.drain()
            return
        await reader.read()

    async with peer(answer_once_then_hang) as port:
        poller = Poller(loop)
        try:
            probe = FastProbe(ProbePlan(http(), LO, port), done=results.append, poller=poller)
            probe.start(loop.time() + 0.2)
            await until_count(results, 1)
            probe.start(loop.time() + 0.6)  # hangs: fails at its own deadline only
            await asyncio.sleep(0.35)  # past the first run's deadline
            assert len(results) == 1
            await until_count(results, 2)
        finally:
            poller.close()
    assert (results[0].ok, results[1].detail) == (True, "timeout after 0.6s")
    assert 0.6 <= results[1].elapsed < 0.6 + DEADLINE_GRAIN + 0.2


@pytest.mark.asyncio
async def test_answers_queued_at_the_deadline_are_results() -> None:
    """After a stall, more sockets are ready than one poll takes and the deadline timer is
    due in the same loop turn: the connections that completed in time count as successes,
    not as timeouts."""
    # 400: more than one poll's batch
    results, _ = await connect_many(400, within=0.05, stall=0.2)
    assert {(r.ok, r.detail) for r in results} == {(True, "ok")}


async def connect_many(n: int, *, within: float,
                       stall: float = 0.0) -> tuple[list[ProbeResult], int]:
    """Start `n` plain TCP probes at once (deadline `within` s), stall the loop `stall` s,
    and wait for all their results; returns them and the poller's idle sockets then. The
    connections complete in the kernel's accept queue; nobody needs to accept."""
    loop = asyncio.get_running_loop()
    results: list[ProbeResult] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(n + 16)
        port = listener.getsockname()[1]
        poller = Poller(loop)
        try:
            plan = ProbePlan(TcpCheck(connect=FAST), LO, port)
            deadline = loop.time() + within
            for _ in range(n):
                FastProbe(plan, done=results.append, poller=poller).start(deadline)
            if stall:
                time.sleep(stall)  # noqa: ASYNC251 - the point: a stalled loop
            await until_count(results, n)
            return results, poller.idle_count()
        finally:
            poller.close()


async def until_count(items: list[ProbeResult], n: int) -> None:
    """Poll until `items` (filled by `done` callbacks) holds `n` results."""
    async with asyncio.timeout(5):
        while True:
            if len(items) >= n:
                return
            await asyncio.sleep(0.005)


@pytest.mark.asyncio
async def test_dropped_fast_probes_are_freed_without_the_collector() -> None:
    """A check's probe lives as long as the check; once a reload drops it, reference
    counting frees it. A reference cycle would leave that to the collector, and a daemon
    that froze its startup objects (gc.freeze) would never free it."""
    loop = asyncio.get_running_loop()
    check = TcpCheck(connect=FAST, delay_loop=0.1, warmup=0.0)
    async with peer(answer(b"")) as port:
        servers = tuple(RealServerSpec(addr=ipaddress.IPv4Address(f"127.0.0.{n}"), port=port,
                                       checks=(check,)) for n in range(1, 11))
        runner = CheckRunner([VirtualServerSpec(key=VS, real_servers=servers)],
                             emit=lambda event: None, rng=random.Random(1))
        task = asyncio.create_task(runner.run())
        try:
            async with asyncio.timeout(5):
                while True:
                    if runner.stats.completed >= 30:
                        break
                    await asyncio.sleep(0.02)
            gc.collect()
            gc.disable()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                runner.apply([], now=loop.time())
                await asyncio.sleep(FAST.connect_timeout + 0.2)  # past every deadline slot
                gc.collect()
                leaked = [o for o in gc.garbage if isinstance(o, FastProbe)]
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
                gc.enable()
        finally:
            runner.stop()
            await asyncio.wait_for(task, 5)
    assert leaked == []


def rounding_deadline(after: float) -> float:
    """A deadline within 2 s past `after` that lies just above the end of its wheel slot as
    computed in floating point (ceil(d / grain) * grain < d). How often such slots occur
    depends on the clock's magnitude: near 100 s about one slot in eight has one."""
    k0 = math.ceil(after / DEADLINE_GRAIN)
    for k in range(k0, k0 + int(2 / DEADLINE_GRAIN)):
        end = k * DEADLINE_GRAIN
        d = math.nextafter(end, math.inf)
        for _ in range(3):
            if math.ceil(d / DEADLINE_GRAIN) == k:
                return d
            d = math.nextafter(d, math.inf)
    raise AssertionError(f"no slot with a rounding end within 2 s of {after}")


class ShiftedLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock starts near 100 s: the monotonic clock of a machine up for
    hours can sit where no slot end rounds below a deadline for minutes."""

    def __init__(self) -> None:
        super().__init__()
        self._shift = super().time() - 100.0

    def time(self) -> float:
        return super().time() - self._shift


def test_a_deadline_just_past_its_slot_end_still_expires() -> None:
    loop = ShiftedLoop()
    try:
        loop.run_until_complete(_deadline_just_past_its_slot_end())
    finally:
        loop.close()


async def _deadline_just_past_its_slot_end() -> None:
    loop = asyncio.get_running_loop()
    results: list[ProbeResult] = []
    async with peer(answer(b"", hang=True)) as port:
        poller = Poller(loop)
        try:
            deadline = rounding_deadline(loop.time() + 0.15)
            assert math.ceil(deadline / DEADLINE_GRAIN) * DEADLINE_GRAIN < deadline
            FastProbe(ProbePlan(http(), LO, port), done=results.append,
                      poller=poller).start(deadline)
            await until_count(results, 1)
        finally:
            poller.close()
    assert not results[0].ok and results[0].detail.startswith("timeout after")
    assert loop.time() < deadline + 1.0


# -- idle sockets: a connection that went to its end leaves its socket for the next probe ------


async def run_once(probe: FastProbe, results: list[ProbeResult], within: float = 0.4) -> None:
    n = len(results)
    probe.start(asyncio.get_running_loop().time() + within)
    await until_count(results, n + 1)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["tcp", "http"])
async def test_a_socket_is_kept_and_reused_after_a_complete_exchange(kind: str) -> None:
    loop = asyncio.get_running_loop()
    results: list[ProbeResult] = []
    spec: CheckSpec = TcpCheck(connect=FAST) if kind == "tcp" else http(regex="backend ok")
    async with peer(answer(response())) as port:
        poller = Poller(loop)
        try:
            probe = FastProbe(ProbePlan(spec, LO, port), done=results.append, poller=poller)
            assert poller.idle_count() == 0
            await run_once(probe, results)
            assert poller.idle_count() == 1
            for _ in range(3):
                # a new socket each time would leave one more idle
                await run_once(probe, results)
                assert poller.idle_count() == 1
        finally:
            poller.close()
        assert poller.idle_count() == 0
    assert [(r.ok, r.detail) for r in results] == [(True, "ok")] * 4


@pytest.mark.asyncio
async def test_a_kept_socket_resets_its_connection() -> None:
    """Keeping the socket is no graceful close: the peer sees a reset, as with SO_LINGER 0,
    so neither side keeps the connection in TIME_WAIT."""
    loop = asyncio.get_running_loop()
    results: list[ProbeResult] = []
    seen: list[str] = []
    watched = asyncio.Event()

    async def answer_then_watch(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response())  # framed by Content-Length: the probe needs no EOF
        await writer.drain()
        try:
            rest = await reader.read()
        except ConnectionResetError:
            seen.append("reset")
        else:
            seen.append(f"eof {rest!r}")
        watched.set()

    async with peer(answer_then_watch) as port:
        poller = Poller(loop)
        try:
            probe = FastProbe(ProbePlan(http(), LO, port), done=results.append, poller=poller)
            await run_once(probe, results)
            assert poller.idle_count() == 1
            async with asyncio.timeout(2):
                await watched.wait()
        finally:
            poller.close()
    assert seen == ["reset"]
    assert (results[0].ok, results[0].detail) == (True, "ok")


@pytest.mark.asyncio
async def test_a_reused_socket_reports_the_next_servers_failure() -> None:
    """Nothing of the dissolved connection (its reset, its error) leaks into the next one: a
    refused connect on a reused socket says "Connection refused", as run_probe does, and a
    socket whose connection failed is closed, not kept."""
    loop = asyncio.get_running_loop()
    results: list[ProbeResult] = []
    refused = free_port()
    async with peer(answer(response())) as port:
        poller = Poller(loop)
        try:
            good = FastProbe(ProbePlan(http(), LO, port), done=results.append, poller=poller)
            bad = FastProbe(ProbePlan(http(), LO, refused), done=results.append, poller=poller)
            await run_once(good, results)
            assert poller.idle_count() == 1
            await run_once(bad, results)  # on the socket `good` left
            assert poller.idle_count() == 0
            await run_once(good, results)
            assert poller.idle_count() == 1
        finally:
            poller.close()
    slow = await run_probe(http(), LO, refused)
    assert [(r.ok, r.detail) for r in results] == [
        (True, "ok"), (False, slow.detail), (True, "ok")
    ]
    assert slow.detail == "Connection refused"


@pytest.mark.asyncio
@pytest.mark.parametrize("handler", ["status 500", "hang"])
async def test_only_exchanges_that_went_to_their_end_keep_their_socket(handler: str) -> None:
    """A judged answer (here a 500) keeps the socket; a timeout closes it."""
    loop = asyncio.get_running_loop()
    results: list[ProbeResult] = []
    serve = answer(response(500)) if handler == "status 500" else answer(b"", hang=True)
    async with peer(serve) as port:
        poller = Poller(loop)
        try:
            probe = FastProbe(ProbePlan(http(), LO, port), done=results.append, poller=poller)
            await run_once(probe, results, within=0.1)
            kept = poller.idle_count()
        finally:
            poller.close()
    assert not results[0].ok
    assert kept == (1 if handler == "status 500" else 0)


@pytest.mark.asyncio
async def test_idle_sockets_are_bounded() -> None:
    results, idle = await connect_many(IDLE_SOCKETS + 20, within=1.0)
    assert idle == IDLE_SOCKETS
    assert {(r.ok, r.detail) for r in results} == {(True, "ok")}


# -- the request goes at once, with the handshake's last ACK --------------------------------------


@pytest.mark.asyncio
async def test_a_request_sent_before_the_connect_completes_waits_for_it() -> None:
    """The request is tried right after connect(); while the handshake is still under way
    (here the listener drops the first SYNs, its accept queue being full) send refuses it and
    it goes once the connect completes. Both paths then read the same answer."""
    loop = asyncio.get_running_loop()
    spec = HttpGetCheck(connect=ConnectOptions(connect_timeout=4.0),
                        urls=(UrlSpec(path="/h", regex="backend ok"),))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    fillers = []
    server: asyncio.Server | None = None
    try:
        for _ in range(4):  # more than the queue holds
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        await asyncio.sleep(0.05)
        started = loop.time()
        probes = asyncio.gather(run_probe(spec, LO, port), fast_probe(spec, LO, port))
        await asyncio.sleep(0.2)
        assert loop.time() - started < 0.9  # the probes' first SYNs were dropped

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(response())
                await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass  # a filler, closed below
            finally:
                writer.close()

        for s in fillers:
            s.close()
        listener.listen(16)  # room for the retransmitted SYNs
        server = await asyncio.start_server(serve, sock=listener)
        slow, fast = await probes
    finally:
        for s in fillers:
            s.close()
        if server is not None:
            server.close()
            await server.wait_closed()
        else:
            listener.close()
    assert (fast.ok, fast.detail) == (slow.ok, slow.detail) == (True, "ok")
    # connected only by a SYN retransmission (1 s after the first): the request waited
    assert fast.elapsed > 0.9


@pytest.mark.asyncio
async def test_a_refused_connect_is_found_by_the_request() -> None:
    """On loopback a refused connect is known when connect() returns: the request sent at
    once meets the error, and the probe reports it from start(), as run_probe reports it."""
    loop = asyncio.get_running_loop()
    closed = free_port()
    results: list[ProbeResult] = []
    poller = Poller(loop)
    try:
        FastProbe(ProbePlan(http(), LO, closed), done=results.append, poller=poller).start(
            loop.time() + 1.0)
        assert [(r.ok, r.detail) for r in results] == [(False, "Connection refused")]
    finally:
        poller.close()
    slow = await run_probe(http(), LO, closed)
    assert (slow.ok, slow.detail) == (False, "Connection refused")


@pytest.mark.asyncio
async def test_http_sockets_defer_the_handshake_ack_and_tcp_sockets_do_not() -> None:
    """An HTTP_GET socket asks the kernel to hold the handshake's final ACK for the request
    (TCP_DEFER_ACCEPT on a connecting socket); a TCP_CHECK, whose check is the handshake,
    must complete it, so kept sockets of the two kinds are never exchanged."""
    loop = asyncio.get_running_loop()
    results: list[ProbeResult] = []
    async with peer(answer(response())) as port:
        poller = Poller(loop)
        try:
            http_plan = ProbePlan(http(regex="backend ok"), LO, port)
            tcp_plan = ProbePlan(TcpCheck(connect=FAST), LO, port)
            assert http_plan.pool != tcp_plan.pool
            await run_once(FastProbe(http_plan, done=results.append, poller=poller), results)
            await run_once(FastProbe(tcp_plan, done=results.append, poller=poller), results)
            assert poller.idle_count() == 2  # the TCP_CHECK did not take the HTTP socket
            kept_http = poller.idle_socket(http_plan.pool)
            kept_tcp = poller.idle_socket(tcp_plan.pool)
            assert kept_http is not None and kept_tcp is not None
            assert kept_http.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0
            assert kept_tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) == 0
            kept_http.close()
            kept_tcp.close()
        finally:
            poller.close()
    assert [(r.ok, r.detail) for r in results] == [(True, "ok"), (True, "ok")]
