"""Tracked objects for VRRP: `vrrp_script` (sans-IO tracker + asyncio runner) and track_file.

`ScriptTracker` is the pure part: keepalived's rise/fall debounce over script results, the
run schedule (every `interval`, measured from the previous start) and init_fail. It takes
`now` and emits `ScriptStateChanged` only on transitions.

`ScriptRunner` is the shell: one task per script, the command run with
`asyncio.create_subprocess_exec` (never blocking the loop), killed at `timeout`; exit 0 is
success, anything else (or a timeout) failure, as keepalived does. A script still running
when the runner is cancelled is killed and reaped before the cancellation goes on
(`kill_and_reap`), so no child outlives the service's event loop. Results reach the VRRP
service through a callback.

`read_track_file` reads keepalived's track_file format: a C `strtol(buf, NULL, 0)` of the
first bytes; a missing, empty or non-numeric file reads as 0, as in keepalived.

Must not import: pyroute2, socket. The tracker must not import asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
from collections.abc import Callable
from dataclasses import dataclass

from hactl.clock import Clock
from hactl.vrrp.model import VrrpScript

__all__ = [
    "ScriptRunner",
    "ScriptStateChanged",
    "ScriptTracker",
    "read_track_file",
    "run_script",
    "user_kwargs",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ScriptStateChanged:
    name: str
    ok: bool


class ScriptTracker:
    """Debounces one script's results: `fall` failures in a row -> down, `rise` successes -> up.

    Initial state: down with `init_fail`, else up (keepalived treats a script with no
    result yet as OK unless init_fail is set).
    """

    def __init__(self, spec: VrrpScript, *, now: float) -> None:
        self.spec = spec
        self.ok = not spec.init_fail
        self._streak = 0
        self._next_run = now
        self._events: list[ScriptStateChanged] = []

    def next_run_at(self) -> float:
        return self._next_run

    def started(self, *, now: float) -> None:
        """A run started now: the next one is due `interval` later."""
        self._next_run = now + self.spec.interval

    def record_result(self, success: bool, *, now: float) -> None:
        if success == self.ok:
            self._streak = 0
            return
        self._streak += 1
        needed = self.spec.rise if success else self.spec.fall
        if self._streak >= needed:
            self.ok = success
            self._streak = 0
            self._events.append(ScriptStateChanged(name=self.spec.name, ok=success))

    def pop_events(self) -> list[ScriptStateChanged]:
        events, self._events = self._events, []
        return events


def user_kwargs(user: str | None) -> dict[str, object]:
    """`create_subprocess_exec` arguments to run as `user` (keepalived's script_user).

    Only root can switch users; a missing user falls back to the current one, as keepalived
    falls back to root (with a warning).
    """
    if user is None or os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return {}
    return {"user": entry.pw_uid, "group": entry.pw_gid}


_REAP_TIMEOUT = 2.0


async def kill_and_reap(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL a child and collect its exit status while the loop still runs.

    A child left to exit on its own after its task was cancelled is reaped by asyncio's
    child watcher later, possibly after the loop has closed ("Loop ... that handles pid ...
    is closed"): so every path that gives up on a child kills it *and* waits for it.
    Bounded: a killed child only outlives the bound in uninterruptible sleep.
    """
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_REAP_TIMEOUT):
            await proc.wait()


async def run_script(command: tuple[str, ...], *, script_timeout: float, user: str | None) -> bool:
    """Run once; True for exit status 0 within `script_timeout`. Never raises for script failure."""
    kwargs = user_kwargs(user)
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            **kwargs,  # type: ignore[arg-type]
        )
    except OSError:
        return False
    try:
        async with asyncio.timeout(script_timeout):
            return await proc.wait() == 0
    except TimeoutError:
        await kill_and_reap(proc)
        return False
    except asyncio.CancelledError:
        # the service is leaving: do not leave the script running (or unreaped) behind us
        await kill_and_reap(proc)
        raise


class ScriptRunner:
    """Runs every vrrp_script on its schedule; reports transitions through `emit`."""

    def __init__(
        self,
        scripts: tuple[VrrpScript, ...],
        *,
        clock: Clock,
        emit: Callable[[ScriptStateChanged], None],
        default_user: str | None = None,
    ) -> None:
        self._scripts = scripts
        self._clock = clock
        self._emit = emit
        self._default_user = default_user
        self.trackers: dict[str, ScriptTracker] = {}

    async def run(self) -> None:
        now = self._clock.now()
        self.trackers = {s.name: ScriptTracker(s, now=now) for s in self._scripts}
        async with asyncio.TaskGroup() as tg:
            for tracker in self.trackers.values():
                tg.create_task(self._loop(tracker), name=f"vrrp_script {tracker.spec.name}")

    async def _loop(self, tracker: ScriptTracker) -> None:
        spec = tracker.spec
        while True:
            await self._clock.sleep_until(tracker.next_run_at())
            tracker.started(now=self._clock.now())
            ok = await run_script(
                spec.command,
                script_timeout=spec.effective_timeout,
                user=spec.user or self._default_user,
            )
            tracker.record_result(ok, now=self._clock.now())
            for event in tracker.pop_events():
                self._emit(event)


_STRTOL = re.compile(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def read_track_file(path: str) -> int:
    """keepalived's track_file value: strtol(content, base 0); 0 if missing or not a number."""
    try:
        with open(path, "rb") as f:
            text = f.read(127).decode("ascii", errors="replace")
    except OSError:
        return 0
    match = _STRTOL.match(text)
    if match is None:
        return 0
    sign, digits = match.groups()
    if digits.lower().startswith("0x"):
        value = int(digits, 16)
    elif digits.startswith("0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    return -value if sign == "-" else value
