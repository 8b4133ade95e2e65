"""The director with a kernel backend (a fake of hactl's own `KernelIpvsBackend` port):
keepalived's global IPVS settings act on the shared table.

* `lvs_flush` empties the table at start; `lvs_flush_on_stop` (ALL) empties it at stop, VS
  (and no keyword) removes only hactl's services;
* only the tunables named in `ipvs_sysctl` are written, and `lvs_timeouts` sends 0 for a
  timeout it does not give (the kernel keeps it);
* configured services found in the table at start are adopted: their stale destinations go
  in the first reconcile;
* `lvs_sync_daemon` runs the kernel's own sync daemon: backup from start, master while the
  instance is MASTER, restarted on reload with new settings, stopped at stop.

The fake keeps its table in the embedded engine (through `UserspaceIpvs`) and, like the
kernel adapter, `dump()`s only the services it owns.
"""

from __future__ import annotations

import asyncio
import errno
import random
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from ipaddress import IPv4Address
from typing import Any, Literal

import pytest
import structlog

from hactl.clock import LoopClock
from hactl.config import parse_text
from hactl.daemon import Director, VrrpPorts
from hactl.errors import KernelError
from hactl.ipvs.backend import KernelIpvsBackend
from hactl.ipvs.engine import IpvsEngine
from hactl.ipvs.ipvsadm import SyncDaemonStatus
from hactl.ipvs.model import (
    ConnStatus,
    Destination,
    FwdMethod,
    IpProto,
    IpvsSysctl,
    IpvsTable,
    IpvsTimeouts,
    ServiceKey,
    ServiceStatus,
    VirtualService,
)
from hactl.ipvs.plan import AddService, DelService, IpvsOp, plan
from hactl.ipvs.userspace import UserspaceIpvs
from hactl.testing.fakes import InMemoryAddressPort, RecordingNeighbourPort
from hactl.vrrp.events import VrrpState
from hactl.vrrp.transport import UdpChannelFactory

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio]

VIP = IPv4Address("10.20.0.1")
RS1 = IPv4Address("127.0.0.1")
STALE = IPv4Address("10.20.0.99")
FOREIGN = VirtualService(
    key=ServiceKey.for_address(IpProto.TCP, IPv4Address("10.9.9.9"), 80),
    scheduler="rr",
    destinations=(Destination(addr=IPv4Address("10.9.9.10"), port=80),),
)


class FakeKernelIpvs:
    """The kernel backend port in memory: a table shared with "others", ownership, flushes,
    tunables by name, timeouts with 0 = unchanged, and sync daemons by state."""

    def __init__(self) -> None:
        self.table = UserspaceIpvs(IpvsEngine(rng=random.Random(1)), LoopClock())
        self.owned: set[ServiceKey] = set()
        self.sysctl = IpvsSysctl()
        self.timeouts = IpvsTimeouts()
        self.daemons: dict[str, SyncDaemonStatus] = {}
        self.calls: list[tuple[Any, ...]] = []

    # -- set up "by others" ---------------------------------------------------------------

    async def install(self, *services: VirtualService) -> None:
        """Services added by someone else (an operator, a previous run)."""
        await self.table.apply(plan(IpvsTable(services), IpvsTable()))

    async def everything(self) -> IpvsTable:
        return await self.table.dump()

    # -- IpvsBackend ------------------------------------------------------------------------

    async def dump(self) -> IpvsTable:
        full = await self.table.dump()
        return IpvsTable(tuple(s for s in full.services if s.key in self.owned))

    async def apply(self, ops: Sequence[IpvsOp]) -> None:
        full = {s.key for s in (await self.table.dump()).services}
        # The kernel adapter converges an add of what exists; the fake's engine would refuse.
        ops = [op for op in ops if not (isinstance(op, AddService) and op.service.key in full)]
        await self.table.apply(ops)
        for op in ops:
            if isinstance(op, AddService):
                self.owned.add(op.service.key)
            elif isinstance(op, DelService):
                self.owned.discard(op.key)

    async def services(self) -> tuple[ServiceStatus, ...]:
        return await self.table.services()

    async def connections(self) -> tuple[ConnStatus, ...]:
        return ()

    async def get_timeouts(self) -> IpvsTimeouts:
        return self.timeouts

    async def set_timeouts(self, timeouts: IpvsTimeouts) -> None:
        self.calls.append(("set_timeouts", timeouts))
        self.timeouts = IpvsTimeouts(
            tcp=timeouts.tcp or self.timeouts.tcp,
            tcpfin=timeouts.tcpfin or self.timeouts.tcpfin,
            udp=timeouts.udp or self.timeouts.udp,
        )

    async def get_sysctl(self) -> IpvsSysctl:
        return self.sysctl

    async def set_sysctl(self, sysctl: IpvsSysctl) -> None:
        self.calls.append(("set_sysctl",))
        self.sysctl = sysctl

    # -- KernelIpvsBackend ------------------------------------------------------------------

    def adopt(self, keys: Iterable[ServiceKey]) -> None:
        self.owned.update(keys)

    async def lvs_flush(self) -> None:
        self.calls.append(("lvs_flush",))
        await self.table.apply(plan(IpvsTable(), await self.table.dump()))
        self.owned.clear()

    async def lvs_flush_on_stop(self, *, everything: bool = False) -> None:
        raise AssertionError("the director removes its services itself")

    async def write_sysctl(self, sysctl: IpvsSysctl, *, names: Iterable[str] | None) -> None:
        assert names is not None, "the director names the tunables it writes"
        names = tuple(names)
        self.calls.append(("write_sysctl", names))
        for name in names:
            self.sysctl = replace(self.sysctl, **{name: getattr(sysctl, name)})
            if name == "sync_threshold":
                self.sysctl = replace(self.sysctl, sync_period=sysctl.sync_period)

    async def sync_daemons(self) -> tuple[SyncDaemonStatus, ...]:
        return tuple(self.daemons.values())

    async def start_sync_daemon(self, daemon: SyncDaemonStatus) -> None:
        self.calls.append(("start", daemon.state, daemon.syncid))
        running = self.daemons.get(daemon.state)
        if running is not None and (running.mcast_ifn, running.syncid) != (
            daemon.mcast_ifn,
            daemon.syncid,
        ):
            raise KernelError("start_sync_daemon", errno.EEXIST, "start_sync_daemon: File exists")
        self.daemons[daemon.state] = daemon

    async def stop_sync_daemon(self, state: Literal["master", "backup"]) -> None:
        self.calls.append(("stop", state))
        self.daemons.pop(state, None)

    def named(self, *kinds: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] in kinds]


def _config(global_defs: str = "", *, port: int = 80, extra: str = "") -> str:
    return f"""
global_defs {{
{global_defs}
}}
{extra}
virtual_server {VIP} {port} {{
    protocol TCP
    lvs_sched rr
    lvs_method NAT
    delay_loop 30
    real_server {RS1} 8080 {{
        weight 1
    }}
}}
"""


VRRP = """
vrrp_instance VI_K {
    state {state}
    interface lo
    virtual_router_id 61
    priority {priority}
    advert_int 1
    unicast_src_ip 127.0.0.71
    unicast_peer {
        127.0.0.72
    }
    virtual_ipaddress {
        127.0.0.181/32
    }
}
"""


def _vrrp(state: str = "BACKUP", priority: int = 100) -> str:
    return VRRP.replace("{state}", state).replace("{priority}", str(priority))


def _ports() -> VrrpPorts:
    return VrrpPorts(
        addresses=InMemoryAddressPort({"lo": ()}),
        neighbours=RecordingNeighbourPort(),
        channels=UdpChannelFactory(port=0),
        transport="udp-dev",
    )


@asynccontextmanager
async def _director(text: str, backend: FakeKernelIpvs, **kwargs: Any) -> AsyncIterator[Director]:
    director = Director(parse_text(text).config, clock=LoopClock(), backend=backend, **kwargs)
    stop = asyncio.Event()
    task = asyncio.create_task(director.run(shutdown_trigger=stop.wait))
    try:
        async with asyncio.timeout(5):
            await asyncio.wait(
                [asyncio.ensure_future(director.started.wait()), task],
                return_when=asyncio.FIRST_COMPLETED,
            )
        if task.done():
            task.result()
        yield director
    finally:
        stop.set()
        async with asyncio.timeout(3):
            await task


async def _eventually(pred: Callable[[], bool], limit: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not pred():
        assert loop.time() < end, f"not within {limit}s"
        await asyncio.sleep(0.02)


def _key(port: int = 80) -> ServiceKey:
    return ServiceKey.for_address(IpProto.TCP, VIP, port)


async def test_the_fake_is_a_kernel_backend() -> None:
    assert isinstance(FakeKernelIpvs(), KernelIpvsBackend)
    engine = UserspaceIpvs(IpvsEngine(rng=random.Random(1)), LoopClock())
    assert not isinstance(engine, KernelIpvsBackend)


async def test_without_flush_foreign_services_stay_and_stale_destinations_go() -> None:
    """A previous run left the configured service with a server no longer configured: it is
    adopted and reconciled at start; a foreign service is never touched."""
    kernel = FakeKernelIpvs()
    left = VirtualService(
        key=_key(),
        scheduler="wlc",
        destinations=(Destination(addr=STALE, port=8080, fwd=FwdMethod.MASQ),),
    )
    await kernel.install(FOREIGN, left)
    async with _director(_config(), kernel) as director:
        assert director.kernel is kernel
        table = {s.key: s for s in (await kernel.everything()).services}
        assert set(table) == {FOREIGN.key, _key()}
        mine = table[_key()]
        assert mine.scheduler == "rr"
        assert [(d.addr, d.port) for d in mine.destinations] == [(RS1, 8080)]
    assert [s.key for s in (await kernel.everything()).services] == [FOREIGN.key]
    assert kernel.named("lvs_flush", "write_sysctl", "set_sysctl", "set_timeouts") == []


@pytest.mark.parametrize(
    ("keyword", "foreign_left"),
    [("lvs_flush_on_stop", False), ("lvs_flush_onstop", False), ("lvs_flush_on_stop VS", True)],
)
async def test_flush_at_start_and_on_stop(keyword: str, foreign_left: bool) -> None:
    kernel = FakeKernelIpvs()
    await kernel.install(FOREIGN)
    text = _config(f"    lvs_flush\n    {keyword}\n")
    async with _director(text, kernel):
        assert [s.key for s in (await kernel.everything()).services] == [_key()]
        assert kernel.named("lvs_flush") == [("lvs_flush",)]
        await kernel.install(FOREIGN)  # added by someone else while hactl runs
    left = [s.key for s in (await kernel.everything()).services]
    assert left == ([FOREIGN.key] if foreign_left else [])


async def test_only_named_tunables_and_given_timeouts_are_written() -> None:
    kernel = FakeKernelIpvs()
    kernel.sysctl = replace(kernel.sysctl, conntrack=1, amemthresh=4096)  # set by the system
    text = _config(
        "    lvs_timeouts tcp 7200 udp 50\n"
        "    ipvs_sysctl {\n        sync_threshold 4 60\n        expire_nodest_conn 1\n    }\n"
    )
    async with _director(text, kernel) as director:
        assert kernel.named("write_sysctl") == [
            ("write_sysctl", ("sync_threshold", "expire_nodest_conn"))
        ]
        assert kernel.named("set_sysctl") == []
        assert kernel.named("set_timeouts") == [
            ("set_timeouts", IpvsTimeouts(tcp=7200, tcpfin=0, udp=50))
        ]
        assert kernel.timeouts == IpvsTimeouts(tcp=7200, tcpfin=120, udp=50)
        # What the API shows (`hactl ipvs --timeout`) is what the kernel uses.
        await director.refresh_ipvs_status()
        assert director.kernel_timeouts() == kernel.timeouts
        s = kernel.sysctl
        assert (s.sync_threshold, s.sync_period, s.expire_nodest_conn) == (4, 60, 1)
        assert (s.conntrack, s.amemthresh) == (1, 4096)  # not named: left alone
        kernel.calls.clear()

        # A drain with --expire-templates writes that one tunable only.
        await director.enable_expire_quiescent()
        assert kernel.named("write_sysctl", "set_sysctl") == [
            ("write_sysctl", ("expire_quiescent_template",))
        ]
        kernel.calls.clear()

        # Reload: the tunables newly named or changed, the timeouts when they changed.
        new = _config(
            "    lvs_timeouts tcp 7200 udp 60\n"
            "    ipvs_sysctl {\n        sync_threshold 4 60\n        expire_nodest_conn 0\n"
            "        conn_reuse_mode 0\n    }\n"
        )
        assert await director.reload(parse_text(new).config)
        assert kernel.named("write_sysctl", "set_sysctl", "set_timeouts") == [
            ("write_sysctl", ("expire_nodest_conn", "conn_reuse_mode")),
            ("set_timeouts", IpvsTimeouts(tcp=7200, tcpfin=0, udp=60)),
        ]
        assert kernel.sysctl.expire_quiescent_template == 1  # the drain's setting stays


async def test_sync_daemon_follows_vrrp_and_stops_with_the_director() -> None:
    kernel = FakeKernelIpvs()
    text = _config("    lvs_sync_daemon lo VI_K id 9\n", extra=_vrrp("MASTER", 255))
    with structlog.testing.capture_logs() as logs:
        async with _director(text, kernel, vrrp_ports=_ports()) as director:
            assert director.kernel_sync is not None
            await _eventually(lambda: director.vrrp_states().get("VI_K") is VrrpState.MASTER, 5)
            await _eventually(lambda: "master" in kernel.daemons, 2)
            assert set(kernel.daemons) == {"master"}
            daemon = kernel.daemons["master"]
            assert (daemon.mcast_ifn, daemon.syncid, daemon.port, daemon.ttl) == ("lo", 9, 8848, 1)
            assert str(daemon.group) == "224.0.0.81"
    assert kernel.daemons == {}
    assert kernel.named("start", "stop") == [
        ("stop", "master"),  # a master left from before would sync beside the backup
        ("start", "backup", 9),
        ("stop", "backup"),
        ("start", "master", 9),
        ("stop", "master"),
    ]
    events = [e["event"] for e in logs if e["event"].startswith("sync.kernel_daemon")]
    assert events == [
        "sync.kernel_daemon_started",
        "sync.kernel_daemon_stopped",
        "sync.kernel_daemon_started",
        "sync.kernel_daemon_stopped",
    ]


async def test_sync_daemon_restarts_with_new_settings_on_reload() -> None:
    kernel = FakeKernelIpvs()
    text = _config("    lvs_sync_daemon lo VI_K id 9\n", extra=_vrrp())
    async with _director(text, kernel, vrrp_ports=_ports()) as director:
        assert set(kernel.daemons) == {"backup"}
        kernel.calls.clear()
        new = text.replace("id 9", "id 10")
        assert await director.reload(parse_text(new).config)
        assert kernel.named("start", "stop") == [
            ("stop", "backup"),
            ("stop", "master"),
            ("start", "backup", 10),
        ]
        assert kernel.daemons["backup"].syncid == 10


async def test_a_conflicting_sync_daemon_stops_the_start() -> None:
    """A backup daemon of another sync id already runs: the director refuses to start (and
    leaves that daemon alone)."""
    kernel = FakeKernelIpvs()
    other = SyncDaemonStatus(state="backup", mcast_ifn="lo", syncid=3)
    kernel.daemons["backup"] = other
    text = _config("    lvs_sync_daemon lo VI_K id 9\n", extra=_vrrp())
    director = Director(
        parse_text(text).config, clock=LoopClock(), backend=kernel, vrrp_ports=_ports()
    )
    with pytest.raises(KernelError, match="File exists"):
        await director.run(shutdown_trigger=asyncio.Event().wait)
    assert kernel.daemons == {"backup": other}
    assert (await kernel.everything()).services == ()


async def test_sync_auth_key_is_warned_with_the_kernel_daemon() -> None:
    kernel = FakeKernelIpvs()
    text = _config(
        "    lvs_sync_daemon lo VI_K\n    sync_auth_key 0123456789abcdef\n", extra=_vrrp()
    )
    with structlog.testing.capture_logs() as logs:
        Director(parse_text(text).config, clock=LoopClock(), backend=kernel, vrrp_ports=_ports())
    assert any(e["event"] == "config.not_applied" and "sync_auth_key" in e["detail"] for e in logs)
