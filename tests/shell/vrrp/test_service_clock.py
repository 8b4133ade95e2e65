"""Whole VrrpServices on an in-memory segment, driven by a ManualClock: exact timings.

The shell is the real one (demux, codec, effects, notifies); only time and the wire are
simulated, so the takeover instants can be asserted within a few milliseconds (the clock
moves in 1 ms steps; each timer hop can fire up to one step late).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest
import pytest_asyncio

from hactl.testing.clock import ManualClock
from hactl.testing.fakes import InMemoryAddressPort, InMemorySegment, RecordingNeighbourPort
from hactl.vrrp.events import VrrpState
from hactl.vrrp.model import SyncGroup, TrackFile, VrrpConfig, VrrpInstance
from hactl.vrrp.service import VrrpService
from tests.shell.vrrp import vrrp_support
from tests.shell.vrrp.vrrp_support import STEP, VIP
from tests.shell.vrrp.vrrp_support import one_instance as config


@dataclass
class Node:
    address: IPv4Address
    ports: InMemoryAddressPort
    service: VrrpService
    stop: asyncio.Event
    task: asyncio.Task[None] | None = None

    def holds(self) -> bool:
        return VIP in self.ports.links["eth0"]


class Lab(vrrp_support.Lab[Node]):
    def start(self, name: str, config: VrrpConfig) -> Node:
        address = IPv4Address(f"10.200.0.{len(self.nodes) + 1}")
        ports = InMemoryAddressPort({"eth0": [IPv4Interface(f"{address}/24")]})
        service = VrrpService(
            config,
            addresses=ports,
            neighbours=RecordingNeighbourPort(),
            channels=self.segment,
            clock=self.clock,
        )
        node = Node(address, ports, service, asyncio.Event())
        node.task = asyncio.create_task(service.run(shutdown_trigger=node.stop.wait))
        self.nodes[name] = node
        return node


@pytest_asyncio.fixture
async def lab() -> AsyncIterator[Lab]:
    lab = Lab(ManualClock(), InMemorySegment(), {})
    try:
        yield lab
    finally:
        await lab.close()


@pytest.mark.asyncio
async def test_exact_election_crash_and_graceful_timings(lab: Lab) -> None:
    async with asyncio.timeout(30):
        a = lab.start("a", config(150))
        b = lab.start("b", config(100))
        for node in (a, b):
            await node.service.started.wait()
        # a's Master_Down_Interval at priority 150, v2: 3.414062 s
        t = await lab.run_until(a.holds, limit=5)
        assert t == pytest.approx(3.414062, abs=4 * STEP)
        assert not b.holds()
        # crash: a detached right after its advert at 3.414062 + 2
        await lab.run_until(lambda: lab.clock.now() >= 5.42, limit=3)
        lab.segment.detach(a.address)
        t = await lab.run_until(b.holds, limit=5)
        assert t == pytest.approx(5.414062 + 3.609375, abs=4 * STEP)
        # a comes back (it never noticed it was cut): b hears it and yields at once
        lab.segment.attach(a.address)
        t2 = await lab.run_until(lambda: not b.holds(), limit=2)
        assert t2 - t <= 1.0 + 2 * STEP
        # graceful stop: priority 0, b takes over after Skew_Time(100) = 0.609375 s
        start = lab.clock.now()
        a.stop.set()
        t = await lab.run_until(b.holds, limit=2)
        assert t - start == pytest.approx(0.609375, abs=4 * STEP)
        assert not a.holds()


@pytest.mark.asyncio
async def test_v3_fast_adverts_and_learned_interval(lab: Lab) -> None:
    async with asyncio.timeout(30):
        a = lab.start("a", config(150, version=3, advert_interval=0.5))
        b = lab.start("b", config(100, version=3, advert_interval=1.0))
        for node in (a, b):
            await node.service.started.wait()
        await lab.run_until(a.holds, limit=5)
        await lab.run_until(lambda: lab.clock.now() >= 4.0, limit=3)
        assert b.service.routers["VI_1"].master_adver_int_cs == 50
        lab.segment.detach(a.address)
        last_advert = 1.707031 + 0.5 * 4  # a became master at its 1 s down interval
        t = await lab.run_until(b.holds, limit=5)
        # b learned 50 cs: 3 x 0.5 + skew(100, 50 cs) = 1.804687 s after a's last advert
        assert t == pytest.approx(last_advert + 1.804687, abs=4 * STEP)


@pytest.mark.asyncio
async def test_sync_group_fails_over_as_one(lab: Lab, tmp_path: Path) -> None:
    vip2 = IPv4Interface("10.200.1.100/24")
    track = tmp_path / "maintenance"
    track.write_text("0\n")

    def group_config(priority: int, *, tracked: bool) -> VrrpConfig:
        files = (TrackFile(name="m", path=str(track), weight=-10),) if tracked else ()
        return VrrpConfig(
            instances=(
                VrrpInstance(
                    name="VI_1", interface="eth0", vrid=51, priority=priority, vips=(VIP,)
                ),
                VrrpInstance(
                    name="VI_2",
                    interface="eth0",
                    vrid=52,
                    priority=priority,
                    vips=(vip2,),
                    track_files=files,
                ),
            ),
            sync_groups=(SyncGroup(name="G", members=("VI_1", "VI_2")),),
        )

    async with asyncio.timeout(60):
        a = lab.start("a", group_config(150, tracked=True))
        b = lab.start("b", group_config(100, tracked=False))
        for node in (a, b):
            await node.service.started.wait()
        await lab.run_until(lambda: a.holds() and vip2 in a.ports.links["eth0"], limit=5)
        # VI_2's file goes non-zero: in a sync group its weight is forced to 0, so VI_2
        # faults and pulls VI_1 along; b takes over both (priority 0 from a: skew only)
        track.write_text("1\n")
        t0 = lab.clock.now()
        await lab.run_until(lambda: b.holds() and vip2 in b.ports.links["eth0"], limit=3)
        assert lab.clock.now() - t0 <= 0.5 + 0.609375 + 4 * STEP  # file poll + skew
        states = {r.name: r.state for r in a.service.status().routers}
        assert states == {"VI_1": VrrpState.FAULT, "VI_2": VrrpState.FAULT}
        assert not a.holds() and vip2 not in a.ports.links["eth0"]
        track.write_text("0\n")
        await lab.run_until(lambda: a.holds() and vip2 in a.ports.links["eth0"], limit=6)
        await lab.run_until(lambda: not b.holds() and vip2 not in b.ports.links["eth0"], limit=1)
