"""Running external programs for MISC_CHECK and the notify/quorum scripts.

Each script runs in a new session, so it leads its own process group; when its time is up
(or the awaiting task is cancelled) the whole group gets SIGKILL and the child is reaped,
so a hung script leaves nothing behind. keepalived sends SIGTERM first and SIGKILL later;
hactl kills at once so a probe ends exactly at misc_timeout.

Scripts run as `ScriptSpec.user` (or the executor's default, keepalived's script_user) when
the daemon runs as root; a non-root daemon can only run scripts as itself. Output goes to
/dev/null, as with keepalived. Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import signal
from dataclasses import dataclass

from hactl.checks.model import ScriptSpec

__all__ = ["ScriptError", "ScriptExecutor", "ScriptOutcome"]


class ScriptError(Exception):
    """A script could not be started (missing program, unknown user...)."""


@dataclass(frozen=True, slots=True)
class ScriptOutcome:
    """How a script ended: `status` (exit code) or `signal`, or `timed_out`."""

    status: int | None
    signal: int | None = None
    timed_out: bool = False

    def describe(self) -> str:
        if self.timed_out:
            return "timed out, process group killed"
        if self.signal is not None:
            return f"killed by signal {self.signal}"
        return f"exited with status {self.status}"


@dataclass(frozen=True, slots=True)
class _Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]


class ScriptExecutor:
    """Starts scripts with the right identity and kills their process group on timeout.

    Args:
        default_user / default_group: keepalived's global `script_user`, used for scripts
            that name no user. None: run as the daemon's own user.
    """

    def __init__(self, *, default_user: str | None = None,
                 default_group: str | None = None) -> None:
        self._default_user = default_user
        self._default_group = default_group
        self._identities: dict[tuple[str, str | None], _Identity] = {}

    @classmethod
    def from_config(cls, script_user: str | None = None,
                    script_group: str | None = None) -> ScriptExecutor:
        """keepalived's rule for the default script user (man 5 keepalived.conf, global_defs
        script_user): the configured one, else `keepalived_script` if that user exists,
        else the daemon's own user."""
        if script_user is None:
            try:
                pwd.getpwnam("keepalived_script")
            except KeyError:
                return cls()
            script_user = "keepalived_script"
        return cls(default_user=script_user, default_group=script_group)

    def _identity(self, script: ScriptSpec) -> _Identity | None:
        user = script.user or self._default_user
        group = script.group if script.user else (script.group or self._default_group)
        if user is None:
            return None
        key = (user, group)
        cached = self._identities.get(key)
        if cached is not None:
            return cached
        try:
            pw = pwd.getpwnam(user)
            gid = grp.getgrnam(group).gr_gid if group else pw.pw_gid
        except KeyError as exc:
            raise ScriptError(f"unknown user or group: {exc.args[0]}") from None
        if os.geteuid() != 0:
            if pw.pw_uid != os.geteuid():
                raise ScriptError(f"cannot run a script as {user}: hactl is not root")
            ident = None
        else:
            ident = _Identity(pw.pw_uid, gid, tuple(os.getgrouplist(user, gid)))
        if ident is not None:
            self._identities[key] = ident
        return ident

    async def run(self, script: ScriptSpec, *, time_limit: float | None) -> ScriptOutcome:
        """Run `script` to completion or until `time_limit` seconds have passed.

        Raises:
            ScriptError: the script could not be started.
            CancelledError: propagated after the process group has been killed.
        """
        ident = self._identity(script)
        kwargs: dict[str, object] = {}
        if ident is not None:
            kwargs = {"user": ident.uid, "group": ident.gid, "extra_groups": list(ident.groups)}
        try:
            proc = await asyncio.create_subprocess_exec(
                *script.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
                **kwargs,  # type: ignore[arg-type]
            )
        except OSError as exc:
            raise ScriptError(f"cannot start {script.argv[0]}: {exc.strerror}") from None
        try:
            if time_limit is None:
                code = await proc.wait()
            else:
                try:
                    async with asyncio.timeout(time_limit):
                        code = await proc.wait()
                except TimeoutError:
                    _kill_group(proc.pid)
                    await _reap(proc)
                    return ScriptOutcome(None, timed_out=True)
        finally:
            if proc.returncode is None:
                # cancelled (the runner's deadline or shutdown): the group must not outlive us
                _kill_group(proc.pid)
                with contextlib.suppress(asyncio.CancelledError):
                    # a second cancel must not leave a zombie; the first one still propagates
                    await asyncio.shield(_reap(proc))
        if code < 0:
            return ScriptOutcome(None, signal=-code)
        return ScriptOutcome(code)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    await proc.wait()
