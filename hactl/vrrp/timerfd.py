"""A kernel timer for the VRRP shell's one deadline: `TimerFd` (Linux `timerfd`).

Why: asyncio sleeps in `epoll_wait`, whose timeout is whole milliseconds, and CPython
rounds it *up*, so a `loop.call_at` deadline fires 0 to 1 ms late plus the loop's own
latency. A backup's Master_Down_Timer is the start of a takeover, so that lateness is
client-visible outage (keepalived's timers are timerfds too). A CLOCK_MONOTONIC timerfd
armed with an absolute deadline wakes the loop at the deadline with the kernel's high
resolution timer, through an ordinary reader callback.

`loop.time()` is `time.monotonic()`, which is CLOCK_MONOTONIC, so deadlines taken from
`LoopClock` are handed to the kernel as they are.

`TimerFd.open` returns None where timerfd cannot be had (not Linux, no libc symbol); the
caller then falls back to `loop.call_at`.

Must not import: hactl.vrrp.router, pyroute2, structlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import math
import os
import sys
import time
from collections.abc import Callable

__all__ = ["TimerFd"]

_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1
_TFD_NONBLOCK = os.O_NONBLOCK if hasattr(os, "O_NONBLOCK") else 0
_TFD_CLOEXEC = os.O_CLOEXEC if hasattr(os, "O_CLOEXEC") else 0


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or time.get_clock_info("monotonic").implementation != (
        "clock_gettime(CLOCK_MONOTONIC)"
    ):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        create, settime = libc.timerfd_create, libc.timerfd_settime
    except (OSError, AttributeError):
        return None
    create.argtypes = (ctypes.c_int, ctypes.c_int)
    create.restype = ctypes.c_int
    settime.argtypes = (
        ctypes.c_int,
        ctypes.c_int,
        ctypes.POINTER(_Itimerspec),
        ctypes.POINTER(_Itimerspec),
    )
    settime.restype = ctypes.c_int
    return libc


class TimerFd:
    """One re-armable absolute deadline; `callback` runs in the loop when it passes."""

    def __init__(
        self,
        libc: ctypes.CDLL,
        fd: int,
        loop: asyncio.AbstractEventLoop,
        callback: Callable[[], None],
    ) -> None:
        self._libc = libc
        self._fd = fd
        self._loop = loop
        self._callback = callback
        self._spec = _Itimerspec()
        loop.add_reader(fd, self._readable)

    @classmethod
    def open(cls, callback: Callable[[], None]) -> TimerFd | None:
        """A timerfd watched by the running loop, or None where there is none."""
        libc = _libc()
        if libc is None:
            return None
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            return None
        return cls(libc, fd, asyncio.get_running_loop(), callback)

    def arm(self, deadline: float) -> None:
        """Fire once at `deadline` (monotonic seconds), replacing any earlier arming."""
        # a deadline of 0 would disarm the timer: anything already due fires in 1 ns
        frac, whole = math.modf(max(deadline, 1e-9))
        self._set(int(whole), int(frac * 1e9))

    def disarm(self) -> None:
        self._set(0, 0)

    def _set(self, sec: int, nsec: int) -> None:
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = sec, nsec
        if self._libc.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, self._spec, None) < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def _readable(self) -> None:
        try:
            os.read(self._fd, 8)  # the expiry count; reading it clears readability
        except BlockingIOError:
            return  # re-armed or disarmed since it became readable
        self._callback()

    def close(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(ValueError, RuntimeError):  # loop already closed
            self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
