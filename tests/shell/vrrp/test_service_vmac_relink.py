"""A `use_vmac` macvlan deleted and created again under the same name gets a new link
index: VrrpService must not go on using what it (or a port) looked up or bound by that
name before. The fakes here behave as the kernel adapters do: they cache link indexes by
name (`NetlinkAddressPort`), bind the announcer's socket to an index (`PacketAnnouncer`),
and an operation on an index whose link is gone fails (ENODEV / ENXIO).
"""

from __future__ import annotations

import asyncio
import errno
import itertools
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Interface

import pytest
import pytest_asyncio

from hactl.errors import KernelError
from hactl.net.ports import IPInterface, LinkCache
from hactl.testing.clock import ManualClock
from hactl.testing.fakes import InMemoryAddressPort, InMemorySegment, RecordingNeighbourPort
from hactl.vrrp.events import VrrpState
from hactl.vrrp.model import Family, IPAddress, VrrpConfig
from hactl.vrrp.service import VrrpService
from hactl.vrrp.socket import Channel, OnReceive
from hactl.vrrp.vmac import InMemoryVmacPort
from tests.shell.vrrp.vrrp_support import STEP, VIP, one_instance, run_until

pytestmark = pytest.mark.asyncio


class Kernel:
    """Link indexes as the kernel hands them out: a link created again gets a new one."""

    def __init__(self) -> None:
        self._next = itertools.count(10)
        self.index: dict[str, int] = {"eth0": 2}

    def create(self, name: str) -> None:
        self.index[name] = next(self._next)

    def delete(self, name: str) -> None:
        self.index.pop(name, None)


class KernelVmacs(InMemoryVmacPort):
    """A matching macvlan is reused; another one of that name is replaced (a new link)."""

    def __init__(self, addresses: InMemoryAddressPort, kernel: Kernel) -> None:
        super().__init__(addresses)
        self.kernel = kernel

    async def add_vmac(self, *, base: str, name: str, mac: str) -> None:
        if self.vmacs.get(name) != (base, mac):
            self.kernel.create(name)
        await super().add_vmac(base=base, name=name, mac=mac)

    async def remove_vmac(self, *, base: str, name: str) -> None:
        self.kernel.delete(name)
        await super().remove_vmac(base=base, name=name)


class CachingAddresses(InMemoryAddressPort):
    """Caches link indexes by name; an address change on a stale index fails (ENODEV)."""

    def __init__(self, kernel: Kernel, address: IPv4Address) -> None:
        super().__init__({"eth0": [IPv4Interface(f"{address}/24")]})
        self.kernel = kernel
        self.cache: dict[str, int] = {}
        self.forgotten: list[str] = []

    def forget_link(self, interface: str) -> None:
        self.forgotten.append(interface)
        self.cache.pop(interface, None)

    async def link_index(self, interface: str) -> int:
        await super().link_index(interface)
        return self.cache.setdefault(interface, self.kernel.index[interface])

    async def _check(self, interface: str) -> None:
        if await self.link_index(interface) != self.kernel.index.get(interface):
            raise KernelError("addr", errno.ENODEV, f"{interface}: stale index")

    async def add_address(self, interface: str, address: IPInterface) -> None:
        await self._check(interface)
        await super().add_address(interface, address)

    async def remove_address(self, interface: str, address: IPInterface) -> None:
        if interface in self.kernel.index:
            await self._check(interface)
        await super().remove_address(interface, address)


class BoundAnnouncer(RecordingNeighbourPort):
    """Binds a 'socket' to the link's index on first use; a deleted link gives ENXIO."""

    def __init__(self, kernel: Kernel) -> None:
        super().__init__()
        self.kernel = kernel
        self.bound: dict[str, int] = {}
        self.failed = 0

    def forget_link(self, interface: str) -> None:
        self.bound.pop(interface, None)

    async def announce(
        self, interface: str, addresses: tuple[IPInterface, ...], *, repeat: int, interval: float
    ) -> None:
        index = self.bound.setdefault(interface, self.kernel.index[interface])
        if index != self.kernel.index.get(interface):
            self.failed += 1
            raise OSError(errno.ENXIO, "No such device or address")
        await super().announce(interface, addresses, repeat=repeat, interval=interval)


class IndexedSegment(InMemorySegment):
    """Records the link index every channel is opened with."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: list[tuple[str, int]] = []

    def open(
        self,
        *,
        interface: str,
        ifindex: int,
        family: Family,
        source: IPAddress,
        multicast: bool,
        ah: bool,
        on_receive: OnReceive,
    ) -> Channel:
        self.opened.append((interface, ifindex))
        return super().open(
            interface=interface,
            ifindex=ifindex,
            family=family,
            source=source,
            multicast=multicast,
            ah=ah,
            on_receive=on_receive,
        )


def config(**kw: object) -> VrrpConfig:
    return one_instance(150, **{"version": 3, "advert_interval": 0.1, "use_vmac": True, **kw})


class Node:
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.kernel = Kernel()
        self.segment = IndexedSegment()
        self.addresses = CachingAddresses(self.kernel, IPv4Address("10.200.0.1"))
        self.announcer = BoundAnnouncer(self.kernel)
        self.vmacs = KernelVmacs(self.addresses, self.kernel)
        self.service = VrrpService(
            config(),
            addresses=self.addresses,
            neighbours=self.announcer,
            channels=self.segment,
            clock=self.clock,
            vmacs=self.vmacs,
        )
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.service.run(shutdown_trigger=self.stop.wait))

    def holds(self) -> bool:
        return VIP in self.addresses.links.get("vrrp.51", [])

    async def run_until(self, predicate: object, *, limit: float) -> None:
        await run_until(self.clock, predicate, limit=limit)

    def announced_on_current_link(self) -> bool:
        return self.announcer.bound.get("vrrp.51") == self.kernel.index.get("vrrp.51") and any(
            name == "vrrp.51" for name, _, _ in self.announcer.announced
        )


@pytest_asyncio.fixture
async def node() -> AsyncIterator[Node]:
    node = Node()
    try:
        yield node
    finally:
        node.stop.set()
        async with asyncio.timeout(5):
            while not node.task.done():
                node.clock.advance(STEP)
                await asyncio.sleep(0)
            await node.task


async def test_the_fakes_are_link_caches() -> None:
    kernel = Kernel()
    assert isinstance(CachingAddresses(kernel, IPv4Address("10.0.0.1")), LinkCache)
    assert isinstance(BoundAnnouncer(kernel), LinkCache)
    assert not isinstance(InMemoryAddressPort(), LinkCache)  # optional: caches nothing


async def test_vmac_replaced_by_a_reload_is_looked_up_again(node: Node) -> None:
    async with asyncio.timeout(30):
        await node.run_until(node.holds, limit=2)
        first = node.kernel.index["vrrp.51"]
        assert node.segment.opened[-1] == ("vrrp.51", first)
        # another MAC: the macvlan of that name is deleted and created again (a new index)
        await node.service.apply(config(vmac_mac="02:00:5e:00:00:33"), now=node.clock.now())
        second = node.kernel.index["vrrp.51"]
        assert second != first
        assert "vrrp.51" in node.addresses.forgotten
        await node.run_until(node.holds, limit=2)
        await node.run_until(node.announced_on_current_link, limit=1)
        assert node.segment.opened[-1] == ("vrrp.51", second)  # adverts on the new link
        assert node.service.status().address_errors == 0
        assert node.announcer.failed == 0
        assert node.service.routers["VI_1"].state is VrrpState.MASTER


async def test_vmac_removed_then_added_again_is_looked_up_again(node: Node) -> None:
    async with asyncio.timeout(30):
        await node.run_until(node.holds, limit=2)
        first = node.kernel.index["vrrp.51"]
        await node.service.apply(VrrpConfig(instances=()), now=node.clock.now())
        assert "vrrp.51" not in node.kernel.index
        assert "vrrp.51" not in node.addresses.cache and "vrrp.51" not in node.announcer.bound
        await node.service.apply(config(), now=node.clock.now())
        second = node.kernel.index["vrrp.51"]
        assert second != first
        await node.run_until(node.holds, limit=2)
        await node.run_until(node.announced_on_current_link, limit=1)
        assert node.segment.opened[-1] == ("vrrp.51", second)
        assert node.service.status().address_errors == 0
        assert node.announcer.failed == 0
