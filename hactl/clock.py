"""Where time comes from.

Cores never read a clock: they take `now` (monotonic seconds). Shells get `now` from a
`Clock`; production uses `LoopClock` (the event loop's monotonic time), tests use
`hactl.testing.clock.ManualClock`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "LoopClock", "WallClock"]


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds, comparable only with other readings of the same clock."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once `now() >= deadline`."""
        ...


class LoopClock:
    """The running event loop's monotonic clock."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - self.now()
        if delay > 0:
            await asyncio.sleep(delay)


class WallClock:
    """Seconds since the epoch, for timestamps shown to people (never for timers)."""

    def now(self) -> float:
        return time.time()
