"""VrrpService over the UDP development transport on loopback: no root needed.

Two or three services run in one event loop, each bound to its own 127.x.y.z address,
with in-memory address ports. Intervals are VRRPv3 0.05 s, so elections take ~0.2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from hactl.clock import LoopClock
from hactl.errors import KernelError
from hactl.testing.fakes import InMemoryAddressPort, RecordingNeighbourPort
from hactl.vrrp.events import VrrpState
from hactl.vrrp.model import (
    NotifyScripts,
    SyncGroup,
    TrackFile,
    TrackInterface,
    TrackScript,
    UnicastPeer,
    VrrpConfig,
    VrrpInstance,
    VrrpScript,
)
from hactl.vrrp.notify import Notifier
from hactl.vrrp.packet import Advertisement, encode
from hactl.vrrp.service import VrrpService
from hactl.vrrp.socket import Channel, ChannelFactory, Inbound, OnReceive
from hactl.vrrp.transport import UdpChannelFactory

VIP = IPv4Interface("10.200.0.100/24")
ADV = 0.05  # seconds


def _free_port(addresses: list[str]) -> int:
    for _ in range(50):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind((addresses[0], 0))
        port = probe.getsockname()[1]
        probe.close()
        try:
            for addr in addresses:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((addr, port))
                s.close()
        except OSError:
            continue
        return port
    raise RuntimeError("no free UDP port")


_counter = iter(range(1, 250))


@pytest.fixture
def net() -> tuple[list[IPv4Address], int]:
    """Three loopback addresses unique to this test and a UDP port free on all of them."""
    block = next(_counter)
    second = os.getpid() % 250 + 1
    addrs = [IPv4Address(f"127.{second}.{block}.{i}") for i in (1, 2, 3)]
    return addrs, _free_port([str(a) for a in addrs])


class CuttableFactory(UdpChannelFactory):
    """UDP channels that can be cut, to simulate a crashed node (nothing in, nothing out)."""

    def __init__(self, *, port: int) -> None:
        super().__init__(port=port)
        self.cut = False

    def open(self, **kw: object) -> Channel:
        on_receive: OnReceive = kw.pop("on_receive")  # type: ignore[assignment]
        inner = super().open(on_receive=self._filter(on_receive), **kw)  # type: ignore[arg-type]
        factory = self

        class _Cuttable:
            ipv4_datagrams = False

            def send(self, data: bytes, dst: object, *, ttl: int) -> None:
                if not factory.cut:
                    inner.send(data, dst, ttl=ttl)  # type: ignore[arg-type]

            def close(self) -> None:
                inner.close()

        return _Cuttable()

    def _filter(self, on_receive: OnReceive) -> Callable[[Inbound], None]:
        def deliver(inbound: Inbound) -> None:
            if not self.cut:
                on_receive(inbound)

        return deliver


@dataclass
class Node:
    name: str
    service: VrrpService
    addresses: InMemoryAddressPort
    neighbours: RecordingNeighbourPort
    factory: CuttableFactory
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def router_state(self) -> VrrpState:
        return self.service.routers["VI_1"].state

    def holds_vip(self) -> bool:
        return VIP in self.addresses.links["lo"]


def instance(
    me: IPv4Address, peers: list[IPv4Address], priority: int, **kw: object
) -> VrrpInstance:
    fields: dict[str, object] = {
        "name": "VI_1",
        "interface": "lo",
        "vrid": 51,
        "priority": priority,
        "version": 3,
        "advert_interval": ADV,
        "vips": (VIP,),
        "unicast_src_ip": me,
        "unicast_peers": tuple(UnicastPeer(address=p) for p in peers),
    }
    fields.update(kw)
    return VrrpInstance(**fields)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(
    *configs: tuple[str, VrrpConfig], port: int, **kw: object
) -> AsyncIterator[list[Node]]:
    nodes = []
    for name, config in configs:
        addresses = InMemoryAddressPort({"lo": [IPv4Interface("127.0.0.1/8")]})
        neighbours = RecordingNeighbourPort()
        factory = CuttableFactory(port=port)
        service = VrrpService(
            config,
            addresses=addresses,
            neighbours=neighbours,
            channels=factory,
            clock=LoopClock(),
            notifier=kw.get("notifier") if name == "a" else None,  # type: ignore[arg-type]
        )
        nodes.append(Node(name, service, addresses, neighbours, factory))
    try:
        for node in nodes:
            node.task = asyncio.create_task(node.service.run(shutdown_trigger=node.stop.wait))
            await node.service.started.wait()
        yield nodes
    finally:
        for node in nodes:
            node.stop.set()
        await asyncio.gather(*(n.task for n in nodes if n.task is not None))


def lone_service(
    config: VrrpConfig, addresses: InMemoryAddressPort, channels: ChannelFactory
) -> VrrpService:
    """One service with recorded announcements on the loop's clock."""
    return VrrpService(
        config,
        addresses=addresses,
        neighbours=RecordingNeighbourPort(),
        channels=channels,
        clock=LoopClock(),
    )


@contextlib.asynccontextmanager
async def serving(service: VrrpService) -> AsyncIterator[None]:
    """Run `service` from its start (`started`) to the end of the block, then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(shutdown_trigger=stop.wait))
    try:
        await service.started.wait()
        yield
    finally:
        stop.set()
        await task


async def wait_for(predicate: Callable[[], bool], *, limit: float) -> float:
    """Seconds until `predicate()` holds (polling every 5 ms); fails after `limit`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > limit:
            raise AssertionError(f"condition not met within {limit} s")
        await asyncio.sleep(0.005)
    return loop.time() - start


def pair(net: tuple[list[IPv4Address], int], **kw: object) -> tuple[VrrpConfig, VrrpConfig]:
    (a, b, _), _port = net
    return (
        VrrpConfig(instances=(instance(a, [b], 150, **kw),)),
        VrrpConfig(instances=(instance(b, [a], 100, **kw),)),
    )


@pytest.mark.asyncio
async def test_election_graceful_handover_and_preempt(net: tuple[list[IPv4Address], int]) -> None:
    ca, cb = pair(net)
    async with asyncio.timeout(15), running(("a", ca), ("b", cb), port=net[1]) as (a, b):
        # a (150) becomes master after its Master_Down_Interval (3 x 0.05 + skew)
        # (gratuitous ARPs are recorded just after the VIP is added: wait for both)
        await wait_for(lambda: a.holds_vip() and bool(a.neighbours.announced), limit=2)
        assert a.router_state is VrrpState.MASTER and not b.holds_vip()
        assert b.router_state is VrrpState.BACKUP
        assert a.neighbours.announced[0] == ("lo", (VIP,), 5)
        await asyncio.sleep(0.3)
        assert b.router_state is VrrpState.BACKUP  # stays backup while adverts flow
        # graceful stop: priority 0 -> b takes over after its skew (0.0305 s) only
        a.stop.set()
        assert a.task is not None
        await a.task
        assert not a.holds_vip()
        took = await wait_for(lambda: b.holds_vip(), limit=1)
        assert took < 0.03046875 + 0.15
        # (on a loaded machine b may have been master for a moment at start-up too)
        released_before = b.service.status().routers[0].released_master
        # a comes back and preempts
        a2_service = VrrpService(
            ca,
            addresses=a.addresses,
            neighbours=a.neighbours,
            channels=a.factory,
            clock=LoopClock(),
        )
        a.stop = asyncio.Event()
        a.service = a2_service
        a.task = asyncio.create_task(a2_service.run(shutdown_trigger=a.stop.wait))
        await wait_for(lambda: a.holds_vip() and not b.holds_vip(), limit=2)
        assert b.router_state is VrrpState.BACKUP
        assert b.service.status().routers[0].released_master == released_before + 1


@pytest.mark.asyncio
async def test_crash_takeover_within_down_interval(net: tuple[list[IPv4Address], int]) -> None:
    ca, cb = pair(net)
    async with asyncio.timeout(15), running(("a", ca), ("b", cb), port=net[1]) as (a, b):
        await wait_for(lambda: a.holds_vip(), limit=2)
        await asyncio.sleep(0.2)
        a.factory.cut = True  # a vanishes from the segment
        took = await wait_for(lambda: b.holds_vip(), limit=2)
        # 3 x 0.05 + skew(100) 0.0305 from a's last advert, at most one interval earlier
        assert 3 * ADV + 0.0305 - ADV - 0.01 <= took <= 3 * ADV + 0.0305 + 0.15
        assert a.holds_vip()  # a never knew: both hold the VIP, as a crashed keepalived
        a.factory.cut = False
        # the partition heals: b hears a's higher priority and yields
        await wait_for(lambda: not b.holds_vip(), limit=2)
        assert b.service.status().routers[0].released_master == 1
        assert a.router_state is VrrpState.MASTER and a.holds_vip()


@pytest.mark.asyncio
async def test_leftover_vips_are_removed_at_start(net: tuple[list[IPv4Address], int]) -> None:
    (a_ip, b_ip, _), port = net
    config = VrrpConfig(instances=(instance(a_ip, [b_ip], 100),))
    addresses = InMemoryAddressPort({"lo": [IPv4Interface("127.0.0.1/8"), VIP]})
    service = lone_service(config, addresses, UdpChannelFactory(port=port))
    async with asyncio.timeout(5), serving(service):
        assert VIP not in addresses.links["lo"]
        assert service.routers["VI_1"].state is VrrpState.BACKUP


class FlakyLinkPort(InMemoryAddressPort):
    """An address port whose link query can answer with an undecodable reply."""

    undecodable = False

    async def link_is_up(self, interface: str) -> bool:
        if self.undecodable:
            raise KernelError("link_get", errno.EBADMSG, "undecodable netlink reply")
        return await super().link_is_up(interface)


@pytest.mark.asyncio
async def test_undecodable_link_reply_keeps_the_tracked_state(
    net: tuple[list[IPv4Address], int],
) -> None:
    (a_ip, b_ip, _), port = net
    watched = instance(a_ip, [b_ip], 100, track_interfaces=(TrackInterface(name="eth1"),))
    addresses = FlakyLinkPort({"lo": [IPv4Interface("127.0.0.1/8")], "eth1": []})
    service = lone_service(
        VrrpConfig(instances=(watched,)), addresses, UdpChannelFactory(port=port)
    )
    async with asyncio.timeout(5), serving(service):
        router = service.routers["VI_1"]
        assert router.state is VrrpState.BACKUP
        addresses.undecodable = True
        await service._poll_links_once(now=0.0)
        assert router.state is VrrpState.BACKUP  # no fault from a reply that says nothing
        addresses.undecodable = False
        addresses.up["eth1"] = False
        await service._poll_links_once(now=0.0)
        assert router.state is VrrpState.FAULT  # a real link-down still counts


@pytest.mark.asyncio
async def test_garbage_and_unknown_vrids_are_counted(net: tuple[list[IPv4Address], int]) -> None:
    (a_ip, b_ip, _), port = net
    config = VrrpConfig(instances=(instance(a_ip, [b_ip], 100),))
    async with asyncio.timeout(5), running(("x", config), port=port) as (node,):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((str(b_ip), port))
        sock.sendto(b"\x31\x33\x64", (str(a_ip), port))  # vrid 51, truncated
        other = Advertisement(version=3, vrid=52, priority=100, adver_int_cs=5, addresses=())
        sock.sendto(encode(other, src=b_ip, dst=a_ip), (str(a_ip), port))
        wrong = Advertisement(
            version=2, vrid=51, priority=100, adver_int_cs=100, addresses=(VIP.ip,)
        )
        sock.sendto(encode(wrong, src=b_ip, dst=a_ip), (str(a_ip), port))
        sock.close()

        def counted() -> bool:
            status = node.service.status()
            return status.unknown_vrid == 1 and sum(n for _, n in status.routers[0].drops) == 2

        await wait_for(counted, limit=2)
        assert dict(node.service.status().routers[0].drops) == {"truncated": 1, "version": 1}


@pytest.mark.asyncio
async def test_script_weight_moves_mastership(
    net: tuple[list[IPv4Address], int], tmp_path: Path
) -> None:
    flag = tmp_path / "healthy"
    flag.write_text("")
    (a_ip, b_ip, _), port = net
    script = VrrpScript(name="chk", command=("test", "-e", str(flag)), interval=0.05, weight=-60)
    ca = VrrpConfig(
        instances=(instance(a_ip, [b_ip], 150, track_scripts=(TrackScript(name="chk"),)),),
        scripts=(script,),
    )
    cb = VrrpConfig(instances=(instance(b_ip, [a_ip], 100),))
    async with asyncio.timeout(15), running(("a", ca), ("b", cb), port=port) as (a, b):
        await wait_for(lambda: a.holds_vip(), limit=2)
        flag.unlink()  # a drops to 90 < 100: b preempts when it stops accepting a's adverts
        await wait_for(lambda: b.holds_vip() and not a.holds_vip(), limit=3)
        assert a.service.routers["VI_1"].effective_priority == 90
        flag.write_text("")
        await wait_for(lambda: a.holds_vip() and not b.holds_vip(), limit=3)


@pytest.mark.asyncio
async def test_track_file_weight_zero_faults(
    net: tuple[list[IPv4Address], int], tmp_path: Path
) -> None:
    path = tmp_path / "track"
    path.write_text("0\n")
    (a_ip, b_ip, _), port = net
    ca = VrrpConfig(
        instances=(
            instance(
                a_ip, [b_ip], 150, track_files=(TrackFile(name="t", path=str(path), weight=0),)
            ),
        )
    )
    cb = VrrpConfig(instances=(instance(b_ip, [a_ip], 100),))
    async with asyncio.timeout(15), running(("a", ca), ("b", cb), port=port) as (a, b):
        await wait_for(lambda: a.holds_vip(), limit=2)
        path.write_text("1\n")
        await wait_for(lambda: a.router_state is VrrpState.FAULT, limit=3)
        assert not a.holds_vip()
        # FAULT sends priority 0 twice: b takes over after its skew, not the down interval
        took = await wait_for(lambda: b.holds_vip(), limit=1)
        assert took < 0.2


@pytest.mark.asyncio
async def test_notify_fifo_and_generic_script(
    net: tuple[list[IPv4Address], int], tmp_path: Path
) -> None:
    (a_ip, b_ip, _), port = net
    out = tmp_path / "notify.out"
    script = tmp_path / "notify.sh"
    script.write_text(f'#!/bin/sh\necho "$@" >> {out}\n')
    script.chmod(0o755)
    fifo = tmp_path / "fifo"
    ca = VrrpConfig(
        instances=(instance(a_ip, [b_ip], 150, notify=NotifyScripts(generic=(str(script), "x"))),),
        notify_fifo=str(fifo),
    )
    notifier = Notifier(fifo=str(fifo))
    assert fifo.is_fifo()
    reader_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        async with asyncio.timeout(10), running(("a", ca), port=port, notifier=notifier) as (a,):
            await wait_for(lambda: a.holds_vip(), limit=2)
            await wait_for(lambda: out.exists() and "MASTER" in out.read_text(), limit=2)
        lines = os.read(reader_fd, 4096).decode().splitlines()
    finally:
        os.close(reader_fd)
    assert lines == [
        'INSTANCE "VI_1" BACKUP 150',
        'INSTANCE "VI_1" MASTER 150',
        'INSTANCE "VI_1" STOP 0',
    ]
    assert out.read_text().splitlines() == [
        "x INSTANCE VI_1 BACKUP 150",
        "x INSTANCE VI_1 MASTER 150",
        "x INSTANCE VI_1 STOP 0",
    ]


def test_no_accept_is_refused_not_ignored() -> None:
    from hactl.errors import NotSupported

    config = VrrpConfig(instances=(instance(IPv4Address("127.0.0.1"), [], 100, accept=False),))
    with pytest.raises(NotSupported):
        VrrpService(
            config,
            addresses=InMemoryAddressPort(),
            neighbours=RecordingNeighbourPort(),
            channels=UdpChannelFactory(),
            clock=LoopClock(),
        )


@pytest.mark.asyncio
async def test_interface_down_faults_and_recovers(net: tuple[list[IPv4Address], int]) -> None:
    ca, cb = pair(net)
    async with asyncio.timeout(15), running(("a", ca), ("b", cb), port=net[1]) as (a, b):
        await wait_for(lambda: a.holds_vip(), limit=2)
        a.addresses.up["lo"] = False  # the polled link state of a's interface
        await wait_for(lambda: a.router_state is VrrpState.FAULT, limit=2)
        assert not a.holds_vip()
        await wait_for(lambda: b.holds_vip(), limit=1)
        a.addresses.up["lo"] = True
        await wait_for(lambda: a.holds_vip() and not b.holds_vip(), limit=3)


@pytest.mark.asyncio
async def test_setup_failure_raises_and_leaves_nothing(net: tuple[list[IPv4Address], int]) -> None:
    from hactl.errors import KernelError

    config = VrrpConfig(
        instances=(
            VrrpInstance(name="VI_1", interface="lo", vrid=51, vips=(VIP,)),  # multicast
        )
    )
    addresses = InMemoryAddressPort({"lo": []})  # no IPv4 address to send from
    service = lone_service(config, addresses, UdpChannelFactory(port=net[1]))
    async with asyncio.timeout(5):
        with pytest.raises(KernelError):
            await service.run(shutdown_trigger=asyncio.Event().wait)
    assert addresses.links["lo"] == []


VIP2 = IPv4Interface("10.200.0.101/24")


@pytest.mark.asyncio
async def test_reload_changes_priority_and_vips_without_a_transition(
    net: tuple[list[IPv4Address], int],
) -> None:
    (ia, ib, _), _port = net
    # 0.2 s adverts: a loop stall of a few adverts on a busy machine must not look like a
    # master failure, since the test asserts that no transition happens
    adv = 0.2
    ca, cb = pair(net, advert_interval=adv)
    async with asyncio.timeout(15), running(("a", ca), ("b", cb), port=net[1]) as (a, b):
        await wait_for(lambda: a.holds_vip(), limit=3)
        router_a, router_b = a.service.routers["VI_1"], b.service.routers["VI_1"]
        before_a = router_a.status().transitions
        before_b = router_b.status().transitions
        await wait_for(lambda: len(a.neighbours.announced) == 1, limit=1)  # the takeover's
        announced = len(a.neighbours.announced)
        loop = asyncio.get_running_loop()
        # priority 120 and a VIP swap on the master, priority 110 and the VIPs on the backup
        new_a = VrrpConfig(instances=(instance(ia, [ib], 120, vips=(VIP2,), advert_interval=adv),))
        new_b = VrrpConfig(instances=(instance(ib, [ia], 110, vips=(VIP2,), advert_interval=adv),))
        await a.service.apply(new_a, now=loop.time())
        await b.service.apply(new_b, now=loop.time())
        # the VIPs follow at once on the master: the new one added and announced
        assert VIP2 in a.addresses.links["lo"] and not a.holds_vip()
        await wait_for(lambda: len(a.neighbours.announced) > announced, limit=1)
        assert a.neighbours.announced[announced:] == [("lo", (VIP2,), 5)]
        assert VIP2 not in b.addresses.links["lo"]
        await asyncio.sleep(3 * adv)
        # same routers, same states, no transition; the adverts carry the new priority
        assert a.service.routers["VI_1"] is router_a and b.service.routers["VI_1"] is router_b
        assert router_a.state is VrrpState.MASTER and router_b.state is VrrpState.BACKUP
        assert router_a.status().transitions == before_a
        assert router_b.status().transitions == before_b
        assert router_b.status().master_priority == 120
        assert a.service.config == new_a


@pytest.mark.asyncio
async def test_reload_adds_removes_and_regroups_instances(
    net: tuple[list[IPv4Address], int],
) -> None:
    (ia, ib, _), _port = net
    ca, _cb = pair(net)
    async with asyncio.timeout(15), running(("a", ca), port=net[1]) as (a,):
        await wait_for(lambda: a.holds_vip(), limit=2)
        router = a.service.routers["VI_1"]
        loop = asyncio.get_running_loop()
        second = instance(ia, [ib], 150, name="VI_2", vrid=52, vips=(VIP2,))
        grouped = VrrpConfig(
            instances=(ca.instances[0], second),
            sync_groups=(SyncGroup(name="G", members=("VI_1", "VI_2")),),
        )
        await a.service.apply(grouped, now=loop.time())
        # added: starts in BACKUP (INIT -> BACKUP), then takes over with no peer around;
        # the running member keeps its state
        assert a.service.routers["VI_2"].state is VrrpState.BACKUP
        assert a.service.routers["VI_1"] is router and router.state is VrrpState.MASTER
        await wait_for(lambda: VIP2 in a.addresses.links["lo"], limit=2)
        assert [g.name for g in a.service.groups] == ["G"]
        transitions = router.status().transitions
        # removed: VI_2 leaves like a graceful stop (its VIPs go), VI_1 is untouched
        await a.service.apply(ca, now=loop.time())
        assert VIP2 not in a.addresses.links["lo"] and a.holds_vip()
        assert set(a.service.routers) == {"VI_1"} and a.service.groups == []
        await asyncio.sleep(5 * ADV)
        assert router.state is VrrpState.MASTER
        assert router.status().transitions == transitions
        # a changed identity (another VRID) is a remove and an add
        moved = VrrpConfig(instances=(instance(ia, [ib], 150, vrid=60),))
        await a.service.apply(moved, now=loop.time())
        assert a.service.routers["VI_1"] is not router
        assert router.state is VrrpState.STOP
        await wait_for(lambda: a.service.routers["VI_1"].state is VrrpState.MASTER, limit=2)
        assert a.holds_vip()


class RecordingFactory:
    """Channels that send nowhere; records how each was opened and whether it was closed."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, bool, bool]] = []
        self.closed: list[str] = []

    def open(self, *, interface: str, multicast: bool, ah: bool, **_: object) -> Channel:
        self.opened.append((interface, multicast, ah))
        factory = self

        class _Quiet:
            ipv4_datagrams = False

            def send(self, data: bytes, dst: object, *, ttl: int) -> None:
                pass

            def close(self) -> None:
                factory.closed.append(interface)

        return _Quiet()


@pytest.mark.asyncio
async def test_reload_reopens_a_channel_whose_needs_changed(
    net: tuple[list[IPv4Address], int],
) -> None:
    (ia, ib, _), _port = net
    unicast = VrrpConfig(instances=(instance(ia, [ib], 150),))
    factory = RecordingFactory()
    addresses = InMemoryAddressPort(
        {"lo": [IPv4Interface("127.0.0.1/8")], "eth1": [IPv4Interface("192.0.2.1/24")]}
    )
    service = lone_service(unicast, addresses, factory)
    async with asyncio.timeout(10), serving(service):
        assert factory.opened == [("lo", False, False)]
        loop = asyncio.get_running_loop()
        router = service.routers["VI_1"]
        # a multicast instance joins lo: the channel is reopened with multicast membership
        both = VrrpConfig(
            instances=(
                instance(ia, [ib], 150),
                instance(ia, [], 100, name="VI_2", vrid=52, vips=(VIP2,), unicast_src_ip=None),
            )
        )
        await service.apply(both, now=loop.time())
        assert factory.opened == [("lo", False, False), ("lo", True, False)]
        assert factory.closed == ["lo"]
        assert service.routers["VI_1"] is router
        # every instance moves to eth1: lo's channel is closed, eth1's opened
        moved = VrrpConfig(
            instances=(
                instance(ia, [ib], 150, interface="eth1", unicast_src_ip=None, unicast_peers=()),
            )
        )
        await service.apply(moved, now=loop.time())
        assert factory.opened[-1] == ("eth1", True, False)
        assert factory.closed == ["lo", "lo"]
        # an added instance on an interface without an address: refused, nothing changed
        kept = service.routers["VI_1"]
        broken = VrrpConfig(
            instances=(
                *moved.instances,
                instance(
                    ia,
                    [],
                    100,
                    name="VI_3",
                    vrid=53,
                    interface="eth2",
                    unicast_src_ip=None,
                    unicast_peers=(),
                ),
            )
        )
        with pytest.raises(KernelError):
            await service.apply(broken, now=loop.time())
        assert service.config == moved and service.routers == {"VI_1": kept}
