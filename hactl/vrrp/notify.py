"""keepalived-compatible notifications: notify scripts and the notify FIFO (spec §7).

* `notify_master` / `notify_backup` / `notify_fault` / `notify_stop` run with only their
  configured arguments; the generic `notify` gets four more: `INSTANCE|GROUP`, the name,
  `MASTER|BACKUP|FAULT|STOP` and the effective priority (0 for groups).
* The FIFO gets one line per event: `INSTANCE "VI_1" MASTER 100`, `GROUP "G" BACKUP 0`,
  `INSTANCE "VI_1" MASTER_RX_LOWER_PRI 50`. hactl creates the FIFO; a write with no reader
  is skipped (the write end is opened non-blocking), never blocks the loop.
* Scripts are spawned with `asyncio.create_subprocess_exec` (as `script_user` when set and
  running as root) and reaped by a task; the STOP script gets keepalived's 1 s timeout
  when the service closes.

Must not import: hactl.vrrp.router, pyroute2.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable

from hactl.vrrp.events import VrrpState
from hactl.vrrp.model import NotifyScripts
from hactl.vrrp.track import kill_and_reap, user_kwargs

__all__ = ["Notifier", "fifo_line", "script_commands"]

STOP_SCRIPT_TIMEOUT = 1.0

_WORDS = {
    VrrpState.MASTER: "MASTER",
    VrrpState.BACKUP: "BACKUP",
    VrrpState.FAULT: "FAULT",
    VrrpState.STOP: "STOP",
}


def fifo_line(kind: str, name: str, word: str, priority: int) -> bytes:
    return f'{kind} "{name}" {word} {priority}\n'.encode()


def script_commands(
    scripts: NotifyScripts, kind: str, name: str, state: VrrpState, priority: int
) -> list[tuple[str, ...]]:
    """The commands keepalived runs for a transition to `state`, in its order."""
    word = _WORDS.get(state)
    if word is None:
        return []
    specific = {
        VrrpState.MASTER: scripts.master,
        VrrpState.BACKUP: scripts.backup,
        VrrpState.FAULT: scripts.fault,
        VrrpState.STOP: scripts.stop,
    }[state]
    commands: list[tuple[str, ...]] = []
    if specific:
        commands.append(specific)
    if scripts.generic:
        commands.append((*scripts.generic, kind, name, word, str(priority)))
    return commands


class Notifier:
    """Spawns notify scripts and writes FIFO lines; never blocks, never raises for them."""

    def __init__(
        self,
        *,
        fifo: str | None = None,
        user: str | None = None,
        on_error: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self._fifo = fifo
        self._user = user
        self._on_error = on_error
        self._tasks: set[asyncio.Task[None]] = set()
        if fifo is not None:
            try:
                mode = os.stat(fifo).st_mode
            except FileNotFoundError:
                os.mkfifo(fifo, 0o600)
            else:
                if not stat.S_ISFIFO(mode):
                    raise FileExistsError(f"notify_fifo {fifo} exists and is not a FIFO")

    def instance_state(
        self, scripts: NotifyScripts, name: str, state: VrrpState, priority: int
    ) -> None:
        word = _WORDS.get(state)
        if word is None:
            return
        self._write_fifo(fifo_line("INSTANCE", name, word, priority))
        for command in script_commands(scripts, "INSTANCE", name, state, priority):
            self._spawn(command, STOP_SCRIPT_TIMEOUT if state is VrrpState.STOP else None)

    def group_state(self, scripts: NotifyScripts, name: str, state: VrrpState) -> None:
        word = _WORDS.get(state)
        if word is None:
            return
        self._write_fifo(fifo_line("GROUP", name, word, 0))
        for command in script_commands(scripts, "GROUP", name, state, 0):
            self._spawn(command, STOP_SCRIPT_TIMEOUT if state is VrrpState.STOP else None)

    def master_rx_lower_priority(self, scripts: NotifyScripts, name: str, priority: int) -> None:
        self._write_fifo(fifo_line("INSTANCE", name, "MASTER_RX_LOWER_PRI", priority))
        if scripts.master_rx_lower_pri:
            self._spawn(scripts.master_rx_lower_pri, None)

    async def aclose(self, *, grace: float = STOP_SCRIPT_TIMEOUT) -> None:
        """Wait up to `grace` for running scripts (STOP ones first of all), then kill."""
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    def _write_fifo(self, line: bytes) -> None:
        if self._fifo is None:
            return
        try:
            fd = os.open(self._fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return  # ENXIO: nobody reads the FIFO right now
        try:
            os.write(fd, line)
        except OSError as err:
            self._report("fifo", err)
        finally:
            os.close(fd)

    def _spawn(self, command: tuple[str, ...], timeout: float | None) -> None:
        task = asyncio.get_running_loop().create_task(self._run(command, timeout))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, command: tuple[str, ...], limit: float | None) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                **user_kwargs(self._user),  # type: ignore[arg-type]
            )
        except OSError as err:
            self._report(command[0], err)
            return
        try:
            async with asyncio.timeout(limit):
                await proc.wait()
        except TimeoutError as err:
            await kill_and_reap(proc)
            self._report(command[0], err)
        except asyncio.CancelledError:
            # killed and reaped before the cancellation goes on: no child outlives the loop
            await kill_and_reap(proc)
            raise

    def _report(self, what: str, err: BaseException) -> None:
        if self._on_error is not None:
            self._on_error(what, err)
