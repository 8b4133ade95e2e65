"""CheckRunner wiring: reload by key, cancellation of removed probes, ha_suspend, scripts,
omega at stop, BFD warning, lateness statistics. Probes are scripted (a fake ProbeFn) except
where a script must really run."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import random
import stat
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from hactl.checks import (
    BfdCheck,
    CheckEvent,
    CheckRunner,
    CheckSpec,
    ConnectOptions,
    DesiredChanged,
    HealthChanged,
    ProbeResult,
    RealServerSpec,
    RunScript,
    ScriptExecutor,
    ScriptSpec,
    TcpCheck,
    VirtualServerSpec,
)
from hactl.ipvs.model import IPAddress, IpProto, ServiceKey

pytestmark = pytest.mark.timeout(30)

VS = ServiceKey.for_address(IpProto.TCP, ipaddress.IPv4Address("10.2.0.1"), 80)
CHECK = TcpCheck(delay_loop=0.1, retry=0, warmup=0.05, connect=ConnectOptions(connect_timeout=0.5))


def ip(n: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(f"127.0.60.{n}")


class FakeProbe:
    """Answers per server address: "ok", "fail" or "block" (waits until cancelled)."""

    def __init__(self) -> None:
        self.mode: dict[IPAddress, str] = {}
        self.calls: list[IPAddress] = []
        self.cancelled: list[IPAddress] = []

    async def __call__(self, spec: CheckSpec, addr: IPAddress, port: int, *,
                       scripts: ScriptExecutor | None = None,
                       deadline: float | None = None) -> ProbeResult:
        self.calls.append(addr)
        mode = self.mode.get(addr, "ok")
        if mode == "block":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append(addr)
                raise
        return ProbeResult(mode == "ok", mode)


class Events(list[CheckEvent]):
    def __call__(self, event: CheckEvent) -> None:
        self.append(event)

    def views(self) -> list[dict[str, int]]:
        return [{str(d.addr): d.weight for d in e.view.destinations}
                for e in self if isinstance(e, DesiredChanged)]


async def until(pred: Callable[[], bool], limit: float = 3.0) -> None:
    """Poll `pred` (state of the runner and of files, which have no event to wait on)."""
    async with asyncio.timeout(limit):
        while True:
            if pred():
                return
            await asyncio.sleep(0.01)


@asynccontextmanager
async def running(runner: CheckRunner) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(runner.run())
    try:
        yield task
    finally:
        runner.stop()
        await asyncio.wait_for(task, 5)


def vs(*servers: RealServerSpec, **kw: object) -> VirtualServerSpec:
    return VirtualServerSpec(key=VS, real_servers=servers, **kw)  # type: ignore[arg-type]


def rs(n: int, **kw: object) -> RealServerSpec:
    kw.setdefault("checks", (CHECK,))
    return RealServerSpec(addr=ip(n), port=80, **kw)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_reload_keeps_health_of_unchanged_keys() -> None:
    probe, events = FakeProbe(), Events()
    probe.mode[ip(1)] = "fail"
    runner = CheckRunner([vs(rs(1), rs(2))], emit=events, rng=random.Random(1), probe=probe)
    loop = asyncio.get_running_loop()
    async with running(runner):
        await until(lambda: events.views()[-1:] == [{"127.0.60.2": 1}])
        # reload: server 1 keeps its key (and its failed state), 2 gets a new weight, 3 is new
        runner.apply([vs(rs(1), rs(2, weight=5), rs(3))], now=loop.time())
        assert runner.views()[VS].destinations[0].addr == ip(2)
        assert {str(d.addr): d.weight for d in runner.views()[VS].destinations} == {
            "127.0.60.2": 5, "127.0.60.3": 1}
        probe.mode[ip(1)] = "ok"
        await until(lambda: len(runner.views()[VS].destinations) == 3)
    ups = [e for e in events if isinstance(e, HealthChanged) and e.up]
    assert [e.rs.addr for e in ups] == [ip(1)]


@pytest.mark.asyncio
async def test_probes_of_removed_servers_are_cancelled() -> None:
    probe, events = FakeProbe(), Events()
    probe.mode[ip(1)] = "block"
    runner = CheckRunner([vs(rs(1), rs(2))], emit=events, rng=random.Random(1), probe=probe)
    loop = asyncio.get_running_loop()
    async with running(runner):
        await until(lambda: ip(1) in probe.calls)
        runner.apply([vs(rs(2))], now=loop.time())
        await until(lambda: probe.cancelled == [ip(1)])
        calls = len(probe.calls)
        await asyncio.sleep(0.3)
        assert ip(1) not in probe.calls[calls:]
        assert probe.calls[calls:], "server 2 is still checked"


@pytest.mark.asyncio
async def test_ha_suspend_stops_probing_on_backup() -> None:
    probe, events = FakeProbe(), Events()
    runner = CheckRunner([vs(rs(1), ha_suspend=True)], emit=events, rng=random.Random(1),
                         probe=probe, master=False)
    loop = asyncio.get_running_loop()
    async with running(runner):
        await asyncio.sleep(0.3)
        assert probe.calls == []
        runner.set_master(True, now=loop.time())
        await until(lambda: len(probe.calls) >= 3)
        runner.set_master(False, now=loop.time())
        await asyncio.sleep(0.05)  # a probe in flight may still finish
        calls = len(probe.calls)
        await asyncio.sleep(0.3)
        assert len(probe.calls) == calls


def script(tmp_path: Path, name: str) -> tuple[ScriptSpec, Path]:
    out = tmp_path / f"{name}.out"
    path = tmp_path / f"{name}.sh"
    path.write_text(f'#!/bin/sh\necho "$@" >> {out}\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return ScriptSpec(argv=(str(path), name, "extra arg")), out


@pytest.mark.asyncio
async def test_notify_and_omega_scripts_run(tmp_path: Path) -> None:
    up, up_out = script(tmp_path, "up")
    down, down_out = script(tmp_path, "down")
    qdown, qdown_out = script(tmp_path, "qdown")
    probe, events = FakeProbe(), Events()
    spec = vs(rs(1, notify_up=up, notify_down=down), rs(2, notify_down=down),
              omega=True, quorum_down=qdown)
    runner = CheckRunner([spec], emit=events, rng=random.Random(1), probe=probe)
    async with running(runner):
        probe.mode[ip(1)] = "fail"
        await until(down_out.exists)
        assert down_out.read_text() == "down extra arg\n"  # configured arguments only
        probe.mode[ip(1)] = "ok"
        await until(up_out.exists)
        assert up_out.read_text() == "up extra arg\n"
        down_out.unlink()
    # omega: at stop, notify_down of both alive servers and quorum_down ran (and finished)
    assert down_out.read_text() == "down extra arg\ndown extra arg\n"
    assert qdown_out.read_text() == "qdown extra arg\n"
    stopping = [e for e in events if isinstance(e, RunScript) and e.stopping]
    assert [e.reason for e in stopping] == ["notify_down", "notify_down", "quorum_down"]


@pytest.mark.asyncio
async def test_failing_notify_script_is_logged_not_fatal(tmp_path: Path) -> None:
    probe, events = FakeProbe(), Events()
    missing = ScriptSpec(argv=(str(tmp_path / "missing.sh"),))
    runner = CheckRunner([vs(rs(1, notify_down=missing))], emit=events, rng=random.Random(1),
                         probe=probe)
    with capture_logs() as logs:
        async with running(runner):
            probe.mode[ip(1)] = "fail"
            await until(lambda: any(e["event"] == "check.script_failed" for e in logs))
            await until(lambda: len(probe.calls) >= 4)
    assert any(e["event"] == "check.health_changed" and e["up"] is False for e in logs)


@pytest.mark.asyncio
async def test_bfd_check_is_reported_not_implemented() -> None:
    probe, events = FakeProbe(), Events()
    server = rs(1, checks=(BfdCheck(name="bfd1"), CHECK))
    with capture_logs() as logs:
        runner = CheckRunner([vs(server)], emit=events, rng=random.Random(1), probe=probe)
        async with running(runner):
            await until(lambda: len(probe.calls) >= 2)
    assert [e["check"] for e in logs if e["event"] == "check.not_implemented"] == ["BFD_CHECK"]
    assert runner.views()[VS].destinations  # BFD never takes the server out


class StallingProbe(FakeProbe):
    """Blocks the whole event loop once, the way a stalled director would."""

    def __init__(self, stall: float) -> None:
        super().__init__()
        self.stall = stall

    async def __call__(self, spec: CheckSpec, addr: IPAddress, port: int, *,
                       scripts: ScriptExecutor | None = None,
                       deadline: float | None = None) -> ProbeResult:
        if self.stall and len(self.calls) == 100:
            time.sleep(self.stall)  # noqa: ASYNC251 - the point: a blocked event loop
            self.stall = 0.0
        return await super().__call__(spec, addr, port, scripts=scripts, deadline=deadline)


@pytest.mark.asyncio
async def test_stats_measure_lateness() -> None:
    probe, events = StallingProbe(0.3), Events()
    fast = dataclasses.replace(CHECK, delay_loop=0.05, warmup=0.05)
    spec = vs(*(rs(n, checks=(fast,)) for n in range(1, 51)))
    runner = CheckRunner([spec], emit=events, rng=random.Random(1), probe=probe)
    async with running(runner):
        await asyncio.sleep(0.8)
    st = runner.stats
    # 50 servers every 50 ms for 0.8 s, less the slots the stall skipped
    assert 300 <= st.started <= 850
    assert sum(st.lateness_ms) == st.started
    assert st.completed >= st.started - 50 and st.failed == 0
    # the stall made the probes due meanwhile late by about its length, and only them:
    # the cadence skipped the missed slots instead of queueing them
    assert 0.25 <= st.lateness_max < 1.5
    late = sum(st.lateness_ms[200:])
    assert 1 <= late <= 50, "one late start per server at most"
    assert st.lateness_quantile(0.5) < 0.1


def many_servers(check: CheckSpec, *, vips: str, rips: str, n_vs: int,
                 n_rs: int) -> list[VirtualServerSpec]:
    """`n_vs` virtual servers (`vips` + 1.., port 80) of `n_rs` real servers each
    (`rips` + v.1.., port 80), all checked by `check`."""
    return [
        VirtualServerSpec(
            key=ServiceKey.for_address(IpProto.TCP, ipaddress.IPv4Address(f"{vips}{v}"), 80),
            real_servers=tuple(
                RealServerSpec(addr=ipaddress.IPv4Address(f"{rips}{v}.{n}"), port=80,
                               checks=(check,))
                for n in range(1, n_rs + 1)
            ),
        )
        for v in range(1, n_vs + 1)
    ]


@pytest.mark.asyncio
async def test_a_backlog_of_due_probes_starts_in_batches() -> None:
    """400 probes due at once (warmup 0) start in batches with event-loop turns between
    them: the first probe runs before the last one has started, so answers are not left
    waiting behind thousands of starts (the cause of false timeouts on a busy machine)."""
    seen_tasks: list[int] = []

    async def probe(spec: CheckSpec, addr: IPAddress, port: int, *,
                    scripts: ScriptExecutor | None = None,
                    deadline: float | None = None) -> ProbeResult:
        seen_tasks.append(len(asyncio.all_tasks()))  # probes started so far, + 2
        return ProbeResult(True, "ok")

    now_check = dataclasses.replace(CHECK, warmup=0.0, delay_loop=5.0)
    specs = many_servers(now_check, vips="10.3.0.", rips="127.0.", n_vs=8, n_rs=50)
    runner = CheckRunner(specs, emit=Events(), rng=random.Random(1), probe=probe)
    async with running(runner):
        await until(lambda: runner.stats.completed == 400)
    assert runner.stats.started == 400
    # the first probe ran after one batch (whole virtual servers of 50), not after all
    # 400; the runner's and this test's tasks make the 2
    assert 50 + 2 <= seen_tasks[0] <= 200 + 2


class BatchRecordingRunner(CheckRunner):
    """Records how many results each feed hands to the cores (the hook the daemon uses)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.batches: list[int] = []

    def _feed_results(self, now: float) -> None:
        if self._results:
            self.batches.append(len(self._results))
        super()._feed_results(now)


@pytest.mark.asyncio
async def test_a_backlog_of_results_is_fed_in_batches() -> None:
    """1,200 results that arrive in one loop turn reach the cores in batches, with loop
    turns between them, and none is lost or fed twice."""
    release = asyncio.Event()
    n = 1200

    async def probe(spec: CheckSpec, addr: IPAddress, port: int, *,
                    scripts: ScriptExecutor | None = None,
                    deadline: float | None = None) -> ProbeResult:
        await release.wait()
        return ProbeResult(True, "ok")

    check = dataclasses.replace(CHECK, warmup=0.0, delay_loop=30.0)
    specs = many_servers(check, vips="10.4.0.", rips="127.1.", n_vs=12, n_rs=100)
    runner = BatchRecordingRunner(specs, emit=Events(), rng=random.Random(1), probe=probe)
    async with running(runner):
        await until(lambda: runner.stats.started == n)
        release.set()
        await until(lambda: runner.stats.completed == n)
        await until(lambda: sum(runner.batches) == n)
    assert max(runner.batches) <= 300
    assert sum(runner.batches) == n
    assert all(t.up for key in runner.views() for t in runner.core(key).trackers())
