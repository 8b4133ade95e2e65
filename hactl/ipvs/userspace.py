"""`UserspaceIpvs`: the `IpvsBackend` over the embedded engine.

Owns nothing but the translation: each backend call reads `clock.now()` once and calls the
engine; netlink-style errors keep their errno (`KernelError`), and the idempotent cases of
the backend contract (add what exists, delete what is missing) are successes here, as in
the kernel adapter.

Invariant: the engine is only touched from the event loop's thread (every method runs to
completion without awaiting in between).

Imports the engine, the plan's operations and the clock Protocol; no sockets, no logging.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

from hactl.clock import Clock
from hactl.errors import KernelError
from hactl.ipvs.engine import IpvsEngine
from hactl.ipvs.model import ConnStatus, IpvsSysctl, IpvsTable, IpvsTimeouts, ServiceStatus
from hactl.ipvs.plan import AddDest, AddService, DelDest, DelService, EditDest, EditService, IpvsOp

__all__ = ["UserspaceIpvs"]


class UserspaceIpvs:
    """The embedded engine behind the `IpvsBackend` port."""

    def __init__(self, engine: IpvsEngine, clock: Clock) -> None:
        self.engine = engine
        self._clock = clock

    async def dump(self) -> IpvsTable:
        return IpvsTable(tuple(s.service for s in self.engine.services()))

    async def apply(self, ops: Sequence[IpvsOp]) -> None:
        now = self._clock.now()
        engine = self.engine
        for op in ops:
            try:
                if isinstance(op, AddService):
                    engine.add_service(op.service, now=now)
                elif isinstance(op, EditService):
                    engine.edit_service(op.service, now=now)
                elif isinstance(op, DelService):
                    engine.del_service(op.key, now=now)
                elif isinstance(op, AddDest):
                    engine.add_dest(op.service, op.dest, now=now)
                elif isinstance(op, EditDest):
                    engine.edit_dest(op.service, op.dest, now=now)
                else:
                    engine.del_dest(op.service, op.addr, op.port, now=now)
            except KernelError as exc:
                if _idempotent(op, exc):
                    continue
                raise

    async def services(self) -> tuple[ServiceStatus, ...]:
        return self.engine.services()

    async def connections(self) -> tuple[ConnStatus, ...]:
        return tuple(self.engine.connections(now=self._clock.now()))

    async def get_timeouts(self) -> IpvsTimeouts:
        return self.engine.timeouts()

    async def set_timeouts(self, timeouts: IpvsTimeouts) -> None:
        self.engine.set_timeouts(timeouts)

    async def get_sysctl(self) -> IpvsSysctl:
        return self.engine.sysctl()

    async def set_sysctl(self, sysctl: IpvsSysctl) -> None:
        self.engine.set_sysctl(sysctl)


def _idempotent(op: IpvsOp, exc: KernelError) -> bool:
    """Add-when-exists and delete-when-missing are successes (STYLE §8.6)."""
    if isinstance(op, AddService | AddDest):
        return exc.errno == errno.EEXIST
    if isinstance(op, DelService | DelDest):
        return exc.errno in (errno.ESRCH, errno.ENOENT)
    return False
