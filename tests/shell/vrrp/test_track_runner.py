"""The vrrp_script runner and the notify scripts against real subprocesses (never
blocking the loop; never leaving a child behind)."""

from __future__ import annotations

import asyncio
import os
import pwd
import time
from pathlib import Path

import pytest

from hactl.clock import LoopClock
from hactl.vrrp.events import VrrpState
from hactl.vrrp.model import NotifyScripts, VrrpScript
from hactl.vrrp.notify import Notifier
from hactl.vrrp.track import ScriptRunner, ScriptStateChanged, run_script


def spec(**kw: object) -> VrrpScript:
    fields: dict[str, object] = {"name": "chk", "command": ("true",), "interval": 2.0}
    fields.update(kw)
    return VrrpScript(**fields)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_run_script_exit_status_and_timeout() -> None:
    async with asyncio.timeout(10):
        assert await run_script(("true",), script_timeout=5, user=None)
        assert not await run_script(("false",), script_timeout=5, user=None)
        assert not await run_script(("/nonexistent/x",), script_timeout=5, user=None)
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert not await run_script(("sleep", "5"), script_timeout=0.2, user=None)
        assert loop.time() - start < 2


@pytest.mark.asyncio
async def test_runner_reports_transitions(tmp_path: Path) -> None:
    flag = tmp_path / "ok"
    flag.write_text("")
    seen: list[ScriptStateChanged] = []
    got = asyncio.Event()

    def emit(event: ScriptStateChanged) -> None:
        seen.append(event)
        got.set()

    runner = ScriptRunner(
        (spec(command=("test", "-e", str(flag)), interval=0.05, fall=2),),
        clock=LoopClock(),
        emit=emit,
    )
    async with asyncio.timeout(10):
        task = asyncio.create_task(runner.run())
        await asyncio.sleep(0.2)
        assert seen == []
        flag.unlink()
        await got.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert seen == [ScriptStateChanged(name="chk", ok=False)]


@pytest.mark.asyncio
@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_script_runs_as_its_user() -> None:
    async with asyncio.timeout(10):
        uid = pwd.getpwnam("nobody").pw_uid
        check = ("sh", "-c", f'test "$(id -u)" = {uid}')
        assert await run_script(check, script_timeout=5, user="nobody")
        assert not await run_script(check, script_timeout=5, user=None)


@pytest.mark.asyncio
async def test_cancelled_run_kills_the_script(tmp_path: Path) -> None:
    marker = tmp_path / "survived"
    command = ("sh", "-c", f"sleep 1; touch {marker}")
    async with asyncio.timeout(10):
        task = asyncio.create_task(run_script(command, script_timeout=5, user=None))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(1.5)
    assert not marker.exists()


def _pid_from(path: Path, *, limit: float = 5.0) -> int:
    """The pid the script wrote (blocking: run it in a thread)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.strip():
            return int(text)
        time.sleep(0.01)
    raise AssertionError(f"no pid in {path}")


@pytest.mark.asyncio
async def test_cancelled_script_is_reaped_before_the_task_ends(tmp_path: Path) -> None:
    """A child left for asyncio's watcher to reap after its loop closed makes the loop
    complain ("Loop ... that handles pid ... is closed"): it must be gone, not merely
    killed, when the cancelled task finishes."""
    pid_file = tmp_path / "pid"
    command = ("sh", "-c", f"echo $$ > {pid_file}; exec sleep 30")
    async with asyncio.timeout(10):
        task = asyncio.create_task(run_script(command, script_timeout=30, user=None))
        pid = await asyncio.to_thread(_pid_from, pid_file)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # at once, before anything else runs: killed and reaped, not even a zombie
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.asyncio
async def test_notify_script_still_running_at_close_is_reaped(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = tmp_path / "notify.sh"
    script.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 30\n")
    script.chmod(0o755)
    notifier = Notifier()
    async with asyncio.timeout(10):
        notifier.instance_state(NotifyScripts(master=(str(script),)), "VI_1", VrrpState.MASTER, 100)
        pid = await asyncio.to_thread(_pid_from, pid_file)
        await notifier.aclose(grace=0.1)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
