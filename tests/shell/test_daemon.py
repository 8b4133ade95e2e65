"""The director on loopback: real demo servers, the embedded engine and data plane, checks.

Each test runs `Director.run` in the test's loop with an event as shutdown trigger, talks to
the VIP over real sockets, and stops the director at the end (asserting a clean stop).
"""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from ipaddress import IPv4Address
from typing import Any

import pytest
import structlog

from hactl.clock import LoopClock
from hactl.config import Loaded, parse_text
from hactl.daemon import Director, VrrpPorts, default_vrrp_ports, run
from hactl.errors import ConfigErrors, NotSupported
from hactl.ipvs.model import IpProto, ServiceKey
from hactl.testing.demo_servers import DemoServer, start_demo_server
from hactl.testing.fakes import InMemoryAddressPort, RecordingNeighbourPort
from hactl.vrrp.events import VrrpState
from hactl.vrrp.transport import UdpChannelFactory

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
DELAY_LOOP = 0.3
CONNECT_TIMEOUT = 0.5
# A dead server is out after one failed probe (retry 0): at most one delay_loop plus one
# connect timeout, plus the reconciler's turn; twice that leaves room for a loaded machine.
CHECK_BOUND = 2 * (DELAY_LOOP + CONNECT_TIMEOUT) + 0.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _config(vport: int, servers: list[DemoServer], *, extra: str = "") -> str:
    rs = "".join(
        f"""
    real_server {HOST} {_port(s)} {{
        TCP_CHECK {{
            connect_timeout {CONNECT_TIMEOUT}
            retry 0
        }}
    }}"""
        for s in servers
    )
    return f"""
global_defs {{
    lvs_timeouts tcp 7500
}}
{extra}
virtual_server {HOST} {vport} {{
    protocol TCP
    lvs_sched rr
    lvs_method NAT
    delay_loop {DELAY_LOOP}
{rs}
}}
"""


def _port(server: DemoServer) -> int:
    assert server.server is not None
    return int(server.server.sockets[0].getsockname()[1])


async def _fetch(port: int) -> str:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    return data.split(b"\r\n\r\n", 1)[1].decode().strip()


async def _eventually(pred: Callable[[], bool], limit: float) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not pred():
        if loop.time() - start > limit:
            raise AssertionError(f"not within {limit:.2f}s")
        await asyncio.sleep(0.02)
    return loop.time() - start


@asynccontextmanager
async def _servers(*names: str) -> AsyncIterator[list[DemoServer]]:
    servers = [await start_demo_server(HOST, 0, name) for name in names]
    try:
        yield servers
    finally:
        for s in servers:
            await s.close()


@asynccontextmanager
async def _director(text: str, **kwargs: Any) -> AsyncIterator[Director]:
    director = Director(parse_text(text).config, clock=LoopClock(), **kwargs)
    stop = asyncio.Event()
    task = asyncio.create_task(director.run(shutdown_trigger=stop.wait))
    try:
        async with asyncio.timeout(5):
            await director.started.wait()
        yield director
    finally:
        stop.set()
        async with asyncio.timeout(3):  # a clean stop takes well under the 5 s we promise
            await task


def _key(port: int) -> ServiceKey:
    return ServiceKey.for_address(IpProto.TCP, IPv4Address(HOST), port)


@pytest.mark.asyncio
async def test_traffic_through_vip_and_dead_server_removed_within_check_bound() -> None:
    vport = _free_port()
    with structlog.testing.capture_logs() as logs:
        async with _servers("a", "b", "c") as servers, \
                _director(_config(vport, servers)) as director:
            seen = [await _fetch(vport) for _ in range(6)]
            assert sorted(seen) == ["a", "a", "b", "b", "c", "c"]  # rr over three servers
            b_port = _port(servers[1])
            await servers[1].close()
            assert director.embedded is not None
            engine = director.embedded.engine

            def b_gone() -> bool:
                svc = engine.services()[0].service
                return all(d.port != b_port for d in svc.destinations)

            await _eventually(b_gone, CHECK_BOUND)
            after = {await _fetch(vport) for _ in range(6)}
            assert after == {"a", "c"}
        # stopped: listeners closed, managed services removed
        assert director.embedded is not None and director.embedded.engine.services() == ()
        with pytest.raises(OSError):
            await _fetch(vport)
    events = [e["event"] for e in logs]
    removed = [e for e in logs if e["event"] == "ipvs.dest_removed"]
    assert removed[0]["rs"] == f"{HOST}:{b_port}"
    steps = [e["step"] for e in logs if e["event"] == "daemon.stopped_step"]
    assert steps == ["sync", "vrrp", "checks", "listeners", "ipvs"]
    assert events[-1] == "daemon.stopped"


@pytest.mark.asyncio
async def test_reload_adds_server_keeps_connections_and_health_state() -> None:
    vport = _free_port()
    async with _servers("a", "b", "new") as servers, \
            _director(_config(vport, servers[:2])) as director:
        key = _key(vport)
        core = director.runner.core(key)
        trackers = list(core.trackers())
        # a connection in flight across the reload: the request is not finished yet
        reader, writer = await asyncio.open_connection(HOST, vport)
        writer.write(b"GET / HTTP/1.0\r\n")
        await writer.drain()
        assert director.embedded is not None
        engine = director.embedded.engine
        await _eventually(lambda: engine.conn_count() >= 1, 2)
        assert await director.reload(parse_text(_config(vport, servers)).config)
        # kept objects keep their state: same core, same trackers (health, counters)
        assert director.runner.core(key) is core
        assert all(any(t is u for u in core.trackers()) for t in trackers)
        writer.write(b"\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200")
        names = {await _fetch(vport) for _ in range(6)}
        assert names == {"a", "b", "new"}


@pytest.mark.asyncio
async def test_freeze_heap_moves_the_long_lived_objects_out_of_collection() -> None:
    vport = _free_port()
    gc.unfreeze()
    try:
        async with _servers("a") as servers, \
                _director(_config(vport, servers), freeze_heap=True) as director:
            started = gc.get_freeze_count()
            assert started > 0  # frozen once started
            gc.unfreeze()
            assert await director.reload(parse_text(_config(vport, servers)).config)
            assert gc.get_freeze_count() > 0  # and again after a reload
        gc.unfreeze()
        async with _servers("a") as servers, _director(_config(vport, servers)):
            assert gc.get_freeze_count() == 0  # off unless asked (tests share a process)
    finally:
        gc.unfreeze()


@pytest.mark.asyncio
async def test_invalid_reload_keeps_running_state() -> None:
    vport = _free_port()
    hup = asyncio.Event()
    stop = asyncio.Event()
    done = asyncio.Event()

    async def reload_trigger() -> None:
        await hup.wait()
        hup.clear()

    def bad_loader() -> Loaded:
        try:
            return parse_text("virtual_server 127.0.0.1 {\n  lvs_sched nope\n}\n")
        finally:
            done.set()

    async with _servers("a", "b") as servers:
        director = Director(parse_text(_config(vport, servers)).config, clock=LoopClock())
        before = director.derived
        with structlog.testing.capture_logs() as logs:
            task = asyncio.create_task(director.run(
                shutdown_trigger=stop.wait, reload_trigger=reload_trigger, loader=bad_loader))
            await asyncio.wait_for(director.started.wait(), 5)
            hup.set()
            await asyncio.wait_for(done.wait(), 5)
            await asyncio.sleep(0.05)
            assert director.derived is before
            assert {await _fetch(vport) for _ in range(4)} == {"a", "b"}
            stop.set()
            await asyncio.wait_for(task, 3)
    rejected = [e for e in logs if e["event"] == "config.reload_rejected"]
    assert rejected and rejected[0]["errors"] >= 1
    assert any(e["event"] == "config.error" and "nope" in e["diagnostic"] for e in logs)
    with pytest.raises(ConfigErrors):
        bad_loader()


@pytest.mark.asyncio
async def test_reload_removes_a_service_and_its_listener() -> None:
    vport, vport2 = _free_port(), _free_port()
    async with _servers("a") as servers:
        two = _config(vport, servers) + _config(vport2, servers).split("}\n", 1)[1]
        async with _director(two) as director:
            assert await _fetch(vport2) == "a"
            assert await director.reload(parse_text(_config(vport, servers)).config)
            with pytest.raises(OSError):
                await _fetch(vport2)
            assert await _fetch(vport) == "a"


@pytest.mark.asyncio
async def test_vrrp_dev_transport_master_enables_ha_suspend_checks() -> None:
    """A lone unicast VRRP instance becomes master over the UDP dev transport; the
    ha_suspend virtual server is checked only then, and a clean stop leaves no VIP."""
    vport = _free_port()
    vrrp = """
vrrp_instance VI_1 {
    state BACKUP
    interface lo
    virtual_router_id 51
    priority 100
    advert_int 1
    unicast_src_ip 127.0.0.61
    unicast_peer {
        127.0.0.62
    }
    virtual_ipaddress {
        127.0.0.160/32
    }
}
"""
    addresses = InMemoryAddressPort({"lo": ()})
    ports = VrrpPorts(addresses=addresses, neighbours=RecordingNeighbourPort(),
                      channels=UdpChannelFactory(port=_free_udp_port()), transport="udp-dev")
    async with _servers("a") as servers:
        text = _config(vport, servers, extra=vrrp).replace(
            "    lvs_method NAT\n", "    lvs_method NAT\n    ha_suspend\n")
        with structlog.testing.capture_logs() as logs:
            async with _director(text, vrrp_ports=ports) as director:
                # Backup for the first 3 s (master_down = 3 * advert + skew): with ha_suspend
                # no probe runs meanwhile, though delay_loop would allow several.
                await asyncio.sleep(4 * DELAY_LOOP)
                assert not director.master
                assert director.runner.stats.completed == 0
                await _eventually(
                    lambda: director.vrrp_states().get("VI_1") is VrrpState.MASTER, 6)
                assert [str(a) for a in addresses.links["lo"]] == ["127.0.0.160/32"]
                await _eventually(lambda: director.master, 1)
                await _eventually(lambda: director.runner.stats.completed > 0, 2)
                assert await _fetch(vport) == "a"
            assert addresses.links["lo"] == []
    masters = [e for e in logs if e["event"] == "daemon.master_changed"]
    assert [e["master"] for e in masters] == [True]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def test_vrrp_transport_choice() -> None:
    """Raw sockets only as root on existing interfaces; otherwise the UDP dev transport for
    unicast instances, and a refusal for multicast ones."""
    import os

    from hactl.derive import derive

    def ports(interface: str, unicast: bool) -> VrrpPorts | None:
        peers = ("    unicast_src_ip 127.0.0.61\n    unicast_peer {\n        127.0.0.62\n"
                 "    }\n") if unicast else ""
        text = (f"vrrp_instance VI_1 {{\n    interface {interface}\n"
                f"    virtual_router_id 51\n{peers}    virtual_ipaddress {{\n"
                "        127.0.0.160/32\n    }\n}\n")
        return default_vrrp_ports(derive(parse_text(text).config))

    missing = ports("hactl-nope0", True)
    assert missing is not None and missing.transport == "udp-dev"
    with pytest.raises(NotSupported, match="raw sockets"):
        ports("hactl-nope0", False)
    if os.geteuid() == 0:
        raw = ports("lo", False)
        assert raw is not None and raw.transport == "raw"
        assert raw.close is not None
        asyncio.run(raw.close())
    else:
        with pytest.raises(NotSupported, match="raw sockets"):
            ports("lo", False)


@pytest.mark.asyncio
async def test_sync_daemon_with_unknown_instance_is_refused() -> None:
    text = _config(_free_port(), []).replace(
        "    lvs_timeouts tcp 7500\n", "    lvs_timeouts tcp 7500\n    lvs_sync_daemon lo\n")
    with pytest.raises(NotSupported, match="lvs_sync_daemon"):
        await run(parse_text(text).config, clock=LoopClock(), backend=None,
                  shutdown_trigger=asyncio.Event().wait)


@pytest.mark.asyncio
async def test_stop_runs_omega_scripts(tmp_path: Any) -> None:
    """omega: at stop, the alive servers' notify_down and the quorum_down script run."""
    vport = _free_port()
    marker = tmp_path / "omega"
    async with _servers("a") as servers:
        script = f"/bin/sh -c 'echo down >> {marker}'"
        policy = f"    omega\n    quorum_down \"{script}\"\n"
        text = _config(vport, servers).replace("    lvs_method NAT\n",
                                               "    lvs_method NAT\n" + policy)
        async with _director(text):
            assert not marker.exists()
        assert marker.read_text() == "down\n"


@pytest.mark.asyncio
async def test_external_backend_only_managed_services_are_touched() -> None:
    """With a backend it did not build (the kernel's, in production), the director sets the
    tunables, adds its services next to foreign ones, and at stop removes only its own."""
    import random

    from hactl.ipvs.engine import IpvsEngine
    from hactl.ipvs.model import Destination, IpvsTable, VirtualService
    from hactl.ipvs.plan import plan
    from hactl.ipvs.userspace import UserspaceIpvs

    backend = UserspaceIpvs(IpvsEngine(rng=random.Random(1)), LoopClock())
    foreign = VirtualService(
        key=ServiceKey.for_address(IpProto.TCP, IPv4Address("10.9.9.9"), 80), scheduler="rr",
        destinations=(Destination(addr=IPv4Address("10.9.9.10"), port=80),))
    await backend.apply(plan(IpvsTable((foreign,)), IpvsTable()))
    vport = _free_port()
    async with _servers("a") as servers, \
            _director(_config(vport, servers), backend=backend) as director:
        assert director.embedded is None and director.dataplane is None
        keys = {svc.key for svc in (await backend.dump()).services}
        assert keys == {foreign.key, _key(vport)}
        assert (await backend.get_timeouts()).tcp == 7500
    (left,) = (await backend.dump()).services
    assert left.key == foreign.key and left.destinations == foreign.destinations


@pytest.mark.asyncio
async def test_sync_with_external_backend_is_refused() -> None:
    import random

    from hactl.ipvs.engine import IpvsEngine
    from hactl.ipvs.userspace import UserspaceIpvs

    text = _config(_free_port(), []).replace(
        "    lvs_timeouts tcp 7500\n", "    lvs_timeouts tcp 7500\n    lvs_sync_daemon lo VI_1\n")
    text += """
vrrp_instance VI_1 {
    interface lo
    virtual_router_id 51
    unicast_src_ip 127.0.0.61
    unicast_peer {
        127.0.0.62
    }
    virtual_ipaddress {
        127.0.0.160/32
    }
}
"""
    backend = UserspaceIpvs(IpvsEngine(rng=random.Random(1)), LoopClock())
    ports = VrrpPorts(addresses=InMemoryAddressPort({"lo": ()}),
                      neighbours=RecordingNeighbourPort(), channels=UdpChannelFactory(),
                      transport="udp-dev")
    with pytest.raises(NotSupported, match="kernel backend"):
        Director(parse_text(text).config, clock=LoopClock(), backend=backend, vrrp_ports=ports)


@pytest.mark.asyncio
async def test_stop_is_bounded_when_an_omega_script_hangs() -> None:
    """A quorum_down script that never ends is cut; the stop still completes every step."""
    vport = _free_port()
    async with _servers("a") as servers:
        policy = '    omega\n    quorum_down "/bin/sleep 30"\n'
        text = _config(vport, servers).replace("    lvs_method NAT\n",
                                               "    lvs_method NAT\n" + policy)
        loop = asyncio.get_running_loop()
        with structlog.testing.capture_logs() as logs:
            async with _director(text):
                stop_started = loop.time()
            elapsed = loop.time() - stop_started
    assert elapsed < 3.0
    steps = [e["step"] for e in logs if e["event"] == "daemon.stopped_step"]
    assert steps[-2:] == ["listeners", "ipvs"]
