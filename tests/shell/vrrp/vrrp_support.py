"""Shared pieces of the VRRP shell tests that run whole VrrpServices on a ManualClock.

The clock moves in `STEP`s; after each one the event loop gets a few turns, so every timer
that became due has fired before the next step (each hop can fire up to one step late).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from ipaddress import IPv4Interface
from typing import Generic, Protocol, TypeVar

from hactl.testing.clock import ManualClock
from hactl.testing.fakes import InMemorySegment
from hactl.vrrp.model import VrrpConfig, VrrpInstance

VIP = IPv4Interface("10.200.0.100/24")
STEP = 0.001


def one_instance(priority: int, **kw: object) -> VrrpConfig:
    """A config of one instance, VI_1 on eth0 with vrid 51 at `priority`, holding VIP;
    `kw` sets any other field (VRRPv2 and its 1 s interval unless told)."""
    fields: dict[str, object] = {
        "name": "VI_1",
        "interface": "eth0",
        "vrid": 51,
        "priority": priority,
        "vips": (VIP,),
    }
    fields.update(kw)
    return VrrpConfig(instances=(VrrpInstance(**fields),))  # type: ignore[arg-type]


async def step(clock: ManualClock) -> None:
    """Advance `clock` by one STEP and let the services run what became due."""
    clock.advance(STEP)
    for _ in range(4):
        await asyncio.sleep(0)


async def run_until(clock: ManualClock, predicate: object, *, limit: float) -> float:
    """Advance one STEP at a time until `predicate()`; returns the clock's time then."""
    assert callable(predicate)
    end = clock.now() + limit
    while not predicate():
        if clock.now() > end:
            raise AssertionError(f"not reached by t={clock.now():.3f}")
        await step(clock)
    return clock.now()


class RunningNode(Protocol):
    stop: asyncio.Event
    task: asyncio.Task[None] | None


N = TypeVar("N", bound=RunningNode)


@dataclass
class Lab(Generic[N]):
    """Nodes on one in-memory segment, sharing one clock; subclasses add `start`."""

    clock: ManualClock
    segment: InMemorySegment
    nodes: dict[str, N]

    async def step(self) -> None:
        await step(self.clock)

    async def run_until(self, predicate: object, *, limit: float) -> float:
        return await run_until(self.clock, predicate, limit=limit)

    async def close(self) -> None:
        """Stop every node at once, then step the clock until each service has returned."""
        for node in self.nodes.values():
            node.stop.set()
        async with asyncio.timeout(5):
            for node in self.nodes.values():
                while node.task is not None and not node.task.done():
                    await self.step()
                if node.task is not None:
                    await node.task
