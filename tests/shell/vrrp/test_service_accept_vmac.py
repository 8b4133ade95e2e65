"""VrrpService with the firewall and VMAC ports faked: accept mode (`no_accept`) and
`use_vmac` as effects, in keepalived's order, over an in-memory segment and a ManualClock.

Also the `NftablesFirewall` adapter's scripts, with a stand-in `nft` that records what it is
given (the real command is exercised in tests/integration/test_vrrp_accept.py).
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv6Interface, ip_address
from pathlib import Path

import pytest
import pytest_asyncio

from hactl.errors import KernelError, NotSupported
from hactl.testing.clock import ManualClock
from hactl.testing.fakes import InMemoryAddressPort, InMemorySegment, RecordingNeighbourPort
from hactl.vrrp.events import VrrpState
from hactl.vrrp.firewall import InMemoryFirewall, NftablesFirewall
from hactl.vrrp.model import InitialState, VrrpConfig, VrrpInstance
from hactl.vrrp.service import VrrpService
from hactl.vrrp.vmac import InMemoryVmacPort
from tests.shell.vrrp import vrrp_support
from tests.shell.vrrp.vrrp_support import VIP, one_instance

VIP6 = IPv6Interface("fd00::100/64")
VIP_IP = VIP.ip

pytestmark = pytest.mark.asyncio


@dataclass
class Node:
    address: IPv4Address
    ports: InMemoryAddressPort
    firewall: InMemoryFirewall
    vmacs: InMemoryVmacPort
    service: VrrpService
    stop: asyncio.Event
    order: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def holds(self, interface: str = "eth0") -> bool:
        return VIP in self.ports.links.get(interface, [])


class _OrderedAddresses(InMemoryAddressPort):
    """Records address changes into the same list as the firewall, to check the order."""

    def __init__(self, links: dict[str, list[IPv4Interface]], order: list[str]) -> None:
        super().__init__(links)  # type: ignore[arg-type]
        self.order = order

    async def add_address(self, interface: str, address: IPv4Interface) -> None:  # type: ignore[override]
        self.order.append(f"add {address.ip}")
        await super().add_address(interface, address)

    async def remove_address(self, interface: str, address: IPv4Interface) -> None:  # type: ignore[override]
        self.order.append(f"remove {address.ip}")
        await super().remove_address(interface, address)


class _OrderedFirewall(InMemoryFirewall):
    def __init__(self, order: list[str]) -> None:
        super().__init__()
        self.order = order

    async def block(self, addresses: tuple[IPv4Address, ...]) -> None:  # type: ignore[override]
        self.order.append("block " + " ".join(map(str, addresses)))
        await super().block(addresses)

    async def unblock(self, addresses: tuple[IPv4Address, ...]) -> None:  # type: ignore[override]
        self.order.append("unblock " + " ".join(map(str, addresses)))
        await super().unblock(addresses)


class Lab(vrrp_support.Lab[Node]):
    def start(self, name: str, config: VrrpConfig) -> Node:
        address = IPv4Address(f"10.200.0.{len(self.nodes) + 1}")
        order: list[str] = []
        ports = _OrderedAddresses({"eth0": [IPv4Interface(f"{address}/24")]}, order)
        firewall = _OrderedFirewall(order)
        vmacs = InMemoryVmacPort(ports)
        service = VrrpService(
            config,
            addresses=ports,
            neighbours=RecordingNeighbourPort(),
            channels=self.segment,
            clock=self.clock,
            firewall=firewall,
            vmacs=vmacs,
        )
        node = Node(address, ports, firewall, vmacs, service, asyncio.Event(), order)
        node.task = asyncio.create_task(service.run(shutdown_trigger=node.stop.wait))
        self.nodes[name] = node
        return node

    async def stop(self, node: Node) -> None:
        node.stop.set()
        async with asyncio.timeout(5):
            while node.task is not None and not node.task.done():
                await self.step()
            assert node.task is not None
            await node.task


def config(priority: int, **kw: object) -> VrrpConfig:
    return one_instance(priority, **{"version": 3, "advert_interval": 0.1, **kw})


@pytest_asyncio.fixture
async def lab() -> AsyncIterator[Lab]:
    lab = Lab(ManualClock(), InMemorySegment(), {})
    try:
        yield lab
    finally:
        await lab.close()


async def test_no_accept_blocks_while_master_in_keepalived_order(lab: Lab) -> None:
    async with asyncio.timeout(30):
        a = lab.start("a", config(150, accept=False))
        b = lab.start("b", config(100))
        await a.service.started.wait()
        await b.service.started.wait()
        assert a.firewall.calls[0] == ("reset", ())  # a crashed run's tables go first
        await lab.run_until(a.holds, limit=2)
        assert a.firewall.blocked == {VIP_IP}
        assert b.firewall.blocked == set()  # b accepts (keepalived's default)
        # the rule is in before the VIP, and out after it
        assert a.order[a.order.index(f"block {VIP_IP}") + 1] == f"add {VIP_IP}"
        # a leaves: priority 0, b takes over (and still accepts)
        await lab.stop(a)
        assert a.order[-2:] == [f"remove {VIP_IP}", f"unblock {VIP_IP}"]
        assert a.firewall.blocked == set() and a.firewall.closed
        await lab.run_until(b.holds, limit=1)
        assert b.firewall.blocked == set()
        assert a.service.status().firewall_errors == 0


async def test_backup_again_unblocks_and_owner_always_accepts(lab: Lab) -> None:
    async with asyncio.timeout(30):
        # b: no_accept, but the owner (priority 255) always accepts (RFC 5798 §6.4.3)
        owner = lab.start("owner", config(255, accept=False, state=InitialState.MASTER))
        await owner.service.started.wait()
        await lab.run_until(owner.holds, limit=1)
        assert owner.firewall.blocked == set()
        assert [c for c, _ in owner.firewall.calls] == ["reset"]
        # a lower no_accept node: backup, nothing blocked
        c = lab.start("c", config(100, accept=False))
        await c.service.started.wait()
        await lab.run_until(lambda: lab.clock.now() > 1.0, limit=2)
        assert c.service.routers["VI_1"].state is VrrpState.BACKUP
        assert c.firewall.blocked == set()
        # the owner crashes: c becomes master and blocks; the owner comes back: c unblocks
        lab.segment.detach(owner.address)
        await lab.run_until(c.holds, limit=1)
        assert c.firewall.blocked == {VIP_IP}
        lab.segment.attach(owner.address)
        await lab.run_until(lambda: not c.holds(), limit=1)
        assert c.firewall.blocked == set()
        assert c.order[-2:] == [f"remove {VIP_IP}", f"unblock {VIP_IP}"]


async def test_reload_switches_accept_mode_on_a_master(lab: Lab) -> None:
    async with asyncio.timeout(30):
        a = lab.start("a", config(150))
        await a.service.started.wait()
        await lab.run_until(a.holds, limit=2)
        assert a.firewall.blocked == set()
        await a.service.apply(config(150, accept=False), now=lab.clock.now())
        assert a.firewall.blocked == {VIP_IP} and a.holds()
        await a.service.apply(config(150), now=lab.clock.now())
        assert a.firewall.blocked == set() and a.holds()


async def test_vmac_holds_the_vips_and_goes_at_stop(lab: Lab) -> None:
    async with asyncio.timeout(30):
        a = lab.start("a", config(150, use_vmac=True))
        await a.service.started.wait()
        assert a.vmacs.vmacs == {"vrrp.51": ("eth0", "00:00:5e:00:01:33")}
        assert a.firewall.vmacs == {"vrrp.51": "eth0"}  # IGMP reports leave from eth0
        await lab.run_until(lambda: a.holds("vrrp.51"), limit=2)
        assert not a.holds("eth0")
        await lab.stop(a)
        assert a.vmacs.vmacs == {} and a.vmacs.calls == [("add", "vrrp.51"), ("remove", "vrrp.51")]
        assert "vrrp.51" not in a.ports.links


async def test_vmac_name_and_mac_given_and_reload_moves_it(lab: Lab) -> None:
    async with asyncio.timeout(30):
        a = lab.start(
            "a", config(150, use_vmac=True, vmac_name="vip51", vmac_mac="02:00:5e:00:00:01")
        )
        await a.service.started.wait()
        assert a.vmacs.vmacs == {"vip51": ("eth0", "02:00:5e:00:00:01")}
        await lab.run_until(lambda: a.holds("vip51"), limit=2)
        # another name: the instance is replaced, the old macvlan goes, the new one holds
        await a.service.apply(config(150, use_vmac=True), now=lab.clock.now())
        assert set(a.vmacs.vmacs) == {"vrrp.51"}
        assert "vip51" not in a.ports.links
        await lab.run_until(lambda: a.holds("vrrp.51"), limit=2)


async def test_refused_without_the_ports() -> None:
    inst = dict(name="VI_1", interface="eth0", vrid=51, vips=(VIP,))
    kwargs = dict(
        addresses=InMemoryAddressPort(),
        neighbours=RecordingNeighbourPort(),
        channels=InMemorySegment(),
        clock=ManualClock(),
    )
    for extra, needs in (({"accept": False}, "firewall"), ({"use_vmac": True}, "VMAC")):
        config = VrrpConfig(instances=(VrrpInstance(**inst, **extra),))  # type: ignore[arg-type]
        with pytest.raises(NotSupported, match=needs):
            VrrpService(config, **kwargs)  # type: ignore[arg-type]
    v6 = VrrpInstance(
        name="VI_6", interface="eth0", vrid=51, version=3, use_vmac=True, vips=(VIP6,)
    )
    with pytest.raises(NotSupported, match="IPv6"):
        VrrpService(
            VrrpConfig(instances=(v6,)),
            firewall=InMemoryFirewall(),
            vmacs=InMemoryVmacPort(),
            **kwargs,  # type: ignore[arg-type]
        )


async def test_nothing_needs_nft_so_a_missing_nft_is_fine(lab: Lab, tmp_path: Path) -> None:
    fw = NftablesFirewall(nft=str(tmp_path / "no-such-nft"))
    with pytest.raises(NotSupported):
        await fw.reset()
    service = VrrpService(
        config(150),
        addresses=InMemoryAddressPort({"eth0": [IPv4Interface("10.200.0.9/24")]}),
        neighbours=RecordingNeighbourPort(),
        channels=lab.segment,
        clock=lab.clock,
        firewall=fw,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(shutdown_trigger=stop.wait))
    async with asyncio.timeout(5):
        await service.started.wait()
        stop.set()
        await task
    # with a no_accept instance, the same missing nft stops the start
    failing = VrrpService(
        config(150, accept=False),
        addresses=InMemoryAddressPort({"eth0": [IPv4Interface("10.200.0.9/24")]}),
        neighbours=RecordingNeighbourPort(),
        channels=lab.segment,
        clock=lab.clock,
        firewall=fw,
    )
    with pytest.raises(NotSupported):
        async with asyncio.timeout(5):
            await failing.run(shutdown_trigger=asyncio.Event().wait)


def _fake_nft(tmp_path: Path, *, fail: str = "") -> tuple[str, Path]:
    log = tmp_path / "nft.log"
    script = tmp_path / "nft"
    script.write_text(
        "#!/bin/sh\n"
        f'input=$(cat); printf "%s\\n--\\n" "$input" >> "{log}"\n'
        f'case "$input" in *"{fail or "@@never@@"}"*) echo "Error: boom" >&2; exit 1;; esac\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), log


def _scripts(log: Path) -> list[str]:
    return [s.strip() for s in log.read_text().split("--\n") if s.strip()] if log.exists() else []


async def test_nftables_scripts(tmp_path: Path) -> None:
    nft, log = _fake_nft(tmp_path)
    fw = NftablesFirewall(nft=nft, table="t")
    a, b6 = ip_address("10.0.0.1"), ip_address("fd00::1")
    await fw.reset()
    await fw.block((a, b6))
    await fw.block((a,))  # already blocked: no process at all
    await fw.unblock((ip_address("10.0.0.2"),))  # never blocked: nothing either
    await fw.add_vmac("vrrp.51", "eth0")
    await fw.unblock((a, b6))
    await fw.close()
    await fw.close()  # nothing left to delete
    scripts = _scripts(log)
    assert scripts[0] == ("add table ip t\ndelete table ip t\nadd table ip6 t\ndelete table ip6 t")
    assert "table ip t {" in scripts[1] and "table ip6 t {" in scripts[1]
    assert "ip daddr @vips drop" in scripts[1] and "ip6 saddr @vips drop" in scripts[1]
    assert scripts[1].endswith(
        "add element ip t vips { 10.0.0.1 }\nadd element ip6 t vips { fd00::1 }"
    )
    assert scripts[2] == 'add element ip t vmacs { "vrrp.51" : "eth0" }'
    assert (
        scripts[3] == "delete element ip t vips { 10.0.0.1 }\ndelete element ip6 t vips { fd00::1 }"
    )
    assert scripts[4].startswith("add table ip t\ndelete table ip t")
    assert len(scripts) == 5


async def test_nftables_failures_are_kernel_errors(tmp_path: Path) -> None:
    nft, _ = _fake_nft(tmp_path, fail="add element")
    fw = NftablesFirewall(nft=nft)
    with pytest.raises(KernelError, match="boom"):
        await fw.block((ip_address("10.0.0.1"),))
    assert os.access(nft, os.X_OK)
