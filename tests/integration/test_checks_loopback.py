"""End to end on loopback: CheckRunner + real probes + real servers.

The issue's bound: a stopped server leaves the pool within
`connect_timeout + retry * (delay_before_retry + connect_timeout) + delay_loop`
and comes back after it returns; HTTP 500, a body that stops matching the regex or the
digest take a server out; a hanging MISC_CHECK script is killed at misc_timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import random
import socket
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from hactl.checks import (
    CheckEvent,
    CheckRunner,
    CheckSpec,
    ConnectOptions,
    DesiredChanged,
    HttpGetCheck,
    MiscCheck,
    RealServerSpec,
    ScriptSpec,
    TcpCheck,
    UrlSpec,
    VirtualServerSpec,
)
from hactl.ipvs.model import IpProto, ServiceKey

pytestmark = [pytest.mark.timeout(30), pytest.mark.slow]

VS = ServiceKey.for_address(IpProto.TCP, ipaddress.IPv4Address("10.1.0.1"), 80)
# Scheduling slack on top of the bound: timer wake-ups and a loaded CI machine.
SLACK = 0.25


class Recorder:
    """Collects events with their loop time; lets a test wait for the pool to change."""

    def __init__(self) -> None:
        self.events: list[tuple[float, CheckEvent]] = []
        self.changed = asyncio.Event()
        self._since = 0.0

    def __call__(self, event: CheckEvent) -> None:
        self.events.append((asyncio.get_running_loop().time(), event))
        if isinstance(event, DesiredChanged):
            self.changed.set()

    def weights(self) -> dict[str, int]:
        views = [e for _, e in self.events if isinstance(e, DesiredChanged)]
        return {f"{d.addr}:{d.port}": d.weight for d in views[-1].view.destinations}

    async def wait_for(self, pred: Callable[[dict[str, int]], bool], limit: float) -> float:
        """Wait until a view emitted since `mark()` satisfies `pred(weights)`; return the loop
        time it was emitted at."""
        async with asyncio.timeout(limit):
            while True:
                for at, e in self.events:
                    if (
                        at >= self._since
                        and isinstance(e, DesiredChanged)
                        and pred({f"{d.addr}:{d.port}": d.weight for d in e.view.destinations})
                    ):
                        return at
                self.changed.clear()
                await self.changed.wait()

    def mark(self) -> float:
        self._since = asyncio.get_running_loop().time()
        return self._since


class Backend:
    """An aiohttp real server that can be stopped and started again on the same port."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 0
        self.status = 200
        self.body = b"<h1>pool member ok</h1>"
        self.delay = 0.0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.status, body=self.body)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if not self.port:
            server = site._server
            assert server is not None
            sockets = getattr(server, "sockets", None)
            assert sockets
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"


@asynccontextmanager
async def backends(n: int) -> AsyncIterator[list[Backend]]:
    started = [Backend(f"127.0.{41 + i}.1") for i in range(n)]
    try:
        for b in started:
            await b.start()
        yield started
    finally:
        for b in started:
            await b.stop()


@asynccontextmanager
async def running(specs: list[VirtualServerSpec], rec: Recorder) -> AsyncIterator[CheckRunner]:
    runner = CheckRunner(specs, emit=rec, rng=random.Random(5))
    task = asyncio.create_task(runner.run())
    try:
        yield runner
    finally:
        runner.stop()
        await asyncio.wait_for(task, 5)


def rs(b: Backend, check: CheckSpec, *, inhibit_on_failure: bool = False) -> RealServerSpec:
    return RealServerSpec(addr=ipaddress.IPv4Address(b.host), port=b.port, weight=3,
                          checks=(check,), inhibit_on_failure=inhibit_on_failure)


TIMING = {"delay_loop": 0.3, "retry": 1, "delay_before_retry": 0.2, "warmup": 0.1}


def bound(check: TcpCheck | HttpGetCheck) -> float:
    c = check.connect.connect_timeout
    return c + check.retry * (check.effective_delay_before_retry + c) + check.delay_loop


@pytest.mark.asyncio
@pytest.mark.parametrize("inhibit", [False, True])
async def test_stopped_server_is_removed_within_the_bound_and_returns(inhibit: bool) -> None:
    rec = Recorder()
    check = TcpCheck(connect=ConnectOptions(connect_timeout=0.3), **TIMING)  # type: ignore[arg-type]
    async with backends(2) as (a, b):
        spec = VirtualServerSpec(
            key=VS, real_servers=(rs(a, check, inhibit_on_failure=inhibit), rs(b, check))
        )
        async with running([spec], rec):
            await rec.wait_for(lambda w: w == {a.label: 3, b.label: 3}, 2)
            await asyncio.sleep(0.35)  # at least one successful probe each
            t0 = rec.mark()
            await a.stop()
            gone = {b.label: 3, a.label: 0} if inhibit else {b.label: 3}
            t1 = await rec.wait_for(lambda w: w == gone, 5)
            assert t1 - t0 <= bound(check) + SLACK
            rec.mark()
            await a.start()
            t2 = await rec.wait_for(lambda w: w == {a.label: 3, b.label: 3}, 5)
            assert t2 - t1 <= check.delay_loop + SLACK * 2


@pytest.mark.asyncio
async def test_hung_server_is_removed_within_the_bound() -> None:
    """Every failing probe runs into connect_timeout: the bound's worst case."""
    rec = Recorder()
    check = HttpGetCheck(connect=ConnectOptions(connect_timeout=0.3), **TIMING)  # type: ignore[arg-type]
    async with backends(1) as (a,):
        spec = VirtualServerSpec(key=VS, real_servers=(rs(a, check),))
        async with running([spec], rec):
            await asyncio.sleep(0.5)
            assert rec.weights() == {a.label: 3}
            t0 = rec.mark()
            a.delay = 10.0
            t1 = await rec.wait_for(lambda w: w == {}, 5)
            elapsed = t1 - t0
            assert bound(check) - check.delay_loop - 0.05 <= elapsed <= bound(check) + SLACK
            a.delay = 0.0
            rec.mark()
            await rec.wait_for(lambda w: w == {a.label: 3}, 3)


@pytest.mark.asyncio
@pytest.mark.parametrize("breakage", ["status", "regex", "digest"])
async def test_http_server_going_bad_is_taken_out(breakage: str) -> None:
    rec = Recorder()
    async with backends(2) as (a, b):
        url = UrlSpec(
            path="/health", regex="pool member ok", digest=hashlib.md5(a.body).hexdigest()
        )
        if breakage != "digest":
            url = UrlSpec(path="/health", regex="pool member ok")
        check = HttpGetCheck(connect=ConnectOptions(connect_timeout=0.3), urls=(url,), **TIMING)  # type: ignore[arg-type]
        spec = VirtualServerSpec(key=VS, real_servers=(rs(a, check), rs(b, check)))
        async with running([spec], rec):
            await asyncio.sleep(0.5)
            assert rec.weights() == {a.label: 3, b.label: 3}
            t0 = rec.mark()
            if breakage == "status":
                a.status = 500
            elif breakage == "regex":
                a.body = b"<h1>maintenance</h1>"
            else:
                a.body = b"<h1>pool member ok</h1><!-- changed -->"  # regex still matches
            t1 = await rec.wait_for(lambda w: w == {b.label: 3}, 5)
            assert t1 - t0 <= bound(check) + SLACK
            a.status, a.body = 200, b"<h1>pool member ok</h1>"
            rec.mark()
            await rec.wait_for(lambda w: w == {a.label: 3, b.label: 3}, 3)


def _group_members(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry))
    return found


@pytest.mark.asyncio
async def test_hanging_misc_check_is_killed_at_misc_timeout(tmp_path: Path) -> None:
    rec = Recorder()
    pids = tmp_path / "pids"
    script = tmp_path / "check.sh"
    script.write_text(f"#!/bin/sh\nsleep 60 &\necho $$ >> {pids}\nwait\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    check = MiscCheck(
        script=ScriptSpec(argv=(str(script),)), misc_timeout=0.4, delay_loop=0.3, warmup=0.0
    )
    spec = VirtualServerSpec(
        key=VS,
        real_servers=(
            RealServerSpec(addr=ipaddress.IPv4Address("127.0.51.1"), port=80, checks=(check,)),
        ),
    )
    async with running([spec], rec) as runner:
        t0 = rec.mark()
        t1 = await rec.wait_for(lambda w: w == {}, 3)
        # retry 0 (MISC_CHECK's default): the first timed-out run takes it down
        assert 0.35 <= t1 - t0 <= 0.4 + SLACK
        for pgid in map(int, pids.read_text().split()):
            for _ in range(50):
                if not _group_members(pgid):
                    break
                await asyncio.sleep(0.02)
            assert _group_members(pgid) == [], "the script's process group outlived it"
        assert runner.stats.failed >= 1


@pytest.mark.asyncio
async def test_refused_connection_is_not_retried_forever() -> None:
    """A port nobody listens on: down after exactly 1 + retry failures."""
    rec = Recorder()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    check = TcpCheck(
        connect=ConnectOptions(connect_timeout=0.3),
        delay_loop=0.3,
        retry=2,
        delay_before_retry=0.1,
        warmup=0.0,
    )
    spec = VirtualServerSpec(
        key=VS,
        real_servers=(
            RealServerSpec(addr=ipaddress.IPv4Address("127.0.0.1"), port=port, checks=(check,)),
        ),
    )
    async with running([spec], rec) as runner:
        await rec.wait_for(lambda w: w == {}, 3)
        assert runner.stats.failed == 3
