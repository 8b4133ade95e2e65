"""A shared pool of pipes for `os.splice` (zero-copy socket -> pipe -> socket transfers).

Bulk transfers move through a pipe so payload bytes never enter Python: one `splice` from the
source socket into the pipe, one from the pipe into the destination socket. A pipe is only
needed while it holds bytes, so a direction borrows one from this pool for a transfer and
returns it as soon as it is empty again; per-connection pipes would cost two file
descriptors per direction for nothing (a prototype measured exactly that).

Invariants: a pipe in the pool is empty; a pipe that may still hold bytes is never returned
(`discard` closes it instead); the pool never holds more than `max_idle` pipes and never has
more than `max_pipes` open at once (borrowers fall back to recv/send when `acquire` says no).
Linux only; `probe()` tells whether splice works here at all. No asyncio, no logging.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

__all__ = ["SPLICE_FLAGS", "SplicePool", "splice_supported"]

SPLICE_FLAGS: int = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
_PIPE_MAX_SIZE = Path("/proc/sys/fs/pipe-max-size")


def _pipe_max_size() -> int | None:
    try:
        return int(_PIPE_MAX_SIZE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _size_pipe(fd: int, want: int) -> int:
    """Give pipe `fd` a capacity of `want` bytes, or the largest the system allows.

    Sizes above fs.pipe-max-size need CAP_SYS_RESOURCE; without it the kernel says EPERM and
    the pipe gets pipe-max-size instead of staying at the 64 KiB default (a bulk transfer
    through 64 KiB pipes measured about twice the CPU per GB of 1 MiB pipes, with more
    wakeups). Returns the capacity the pipe has.
    """
    for size in (want, _pipe_max_size()):
        if size is None or size <= 0:
            continue
        try:
            got: int = fcntl.fcntl(fd, _F_SETPIPE_SZ, size)
            return got
        except OSError:
            continue
    try:
        current: int = fcntl.fcntl(fd, _F_GETPIPE_SZ)
        return current
    except OSError:
        return 65536


def splice_supported() -> bool:
    """True when `os.splice` moves bytes between a TCP-like socket and a pipe on this system."""
    if not hasattr(os, "splice"):
        return False
    a, b = socket.socketpair()
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        a.sendall(b"x")
        moved = os.splice(b.fileno(), w, 1, flags=SPLICE_FLAGS)
        return moved == 1 and os.read(r, 1) == b"x"
    except OSError:
        return False
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


class SplicePool:
    """Non-blocking pipes lent out for one transfer at a time.

    Args:
        pipe_size: requested pipe capacity in bytes (F_SETPIPE_SZ; the kernel may round it up,
            and refuses sizes above /proc/sys/fs/pipe-max-size to processes without
            CAP_SYS_RESOURCE, which then get pipe-max-size). It bounds how much one splice
            call moves; after the first pipe is made, `pipe_size` is the capacity pipes
            really have.
        max_idle: pipes kept open for reuse.
        max_pipes: pipes open at once (idle + lent); `acquire` returns None beyond it.
    """

    __slots__ = ("_idle", "_lent", "_sized", "max_idle", "max_pipes", "pipe_size")

    def __init__(self, *, pipe_size: int = 1 << 20, max_idle: int = 64, max_pipes: int = 1024):
        self.pipe_size = pipe_size
        self.max_idle = max_idle
        self.max_pipes = max_pipes
        self._idle: list[tuple[int, int]] = []
        self._lent = 0
        self._sized = False

    @property
    def open_pipes(self) -> int:
        """Pipes currently open (idle in the pool plus lent out)."""
        return len(self._idle) + self._lent

    def acquire(self) -> tuple[int, int] | None:
        """Borrow an empty pipe as (read_fd, write_fd), or None if the pool is exhausted."""
        if self._idle:
            self._lent += 1
            return self._idle.pop()
        if self._lent >= self.max_pipes:
            return None
        try:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # EMFILE/ENFILE: the caller copies instead
            return None
        got = _size_pipe(w, self.pipe_size)
        if not self._sized:  # later pipes may come out smaller (per-user pipe limits)
            self._sized = True
            self.pipe_size = got
        self._lent += 1
        return (r, w)

    def release(self, pipe: tuple[int, int]) -> None:
        """Give back a pipe that is empty (every byte spliced in was spliced out)."""
        self._lent -= 1
        if len(self._idle) < self.max_idle:
            self._idle.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def discard(self, pipe: tuple[int, int]) -> None:
        """Close a lent pipe that may still hold bytes (its connection is gone)."""
        self._lent -= 1
        os.close(pipe[0])
        os.close(pipe[1])

    def close(self) -> None:
        """Close the idle pipes; lent ones are closed by `discard` when their owners finish."""
        while self._idle:
            r, w = self._idle.pop()
            os.close(r)
            os.close(w)
