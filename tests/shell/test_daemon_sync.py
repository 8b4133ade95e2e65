"""Two directors on loopback: VRRP (UDP dev transport) elects one, its connections reach
the other through connection sync, and the sync role follows the VRRP role."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from hactl.api.client import ApiClient, real_server_path
from hactl.clock import LoopClock
from hactl.config import parse_text
from hactl.daemon import ApiSettings, Director, VrrpPorts
from hactl.ipvs.model import IpProto, ServiceKey
from hactl.sync import SyncRole
from hactl.testing.demo_servers import start_demo_server
from hactl.testing.fakes import InMemoryAddressPort, RecordingNeighbourPort
from hactl.vrrp.events import VrrpState
from hactl.vrrp.transport import UdpChannelFactory

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]

HOST = "127.0.0.1"
TOKEN = "peer-token"


def _free(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _config(*, src: str, peer: str, priority: int, vport: int, rport: int) -> str:
    return f"""
global_defs {{
    lvs_timeouts tcp 7500
    lvs_sync_daemon lo VI_S
}}
vrrp_instance VI_S {{
    state BACKUP
    interface lo
    virtual_router_id 53
    priority {priority}
    advert_int 1
    unicast_src_ip {src}
    unicast_peer {{
        {peer}
    }}
    virtual_ipaddress {{
        127.0.0.171/32
    }}
}}
virtual_server {HOST} {vport} {{
    protocol TCP
    lvs_sched rr
    lvs_method NAT
    delay_loop 0.5
    real_server {HOST} {rport} {{
        TCP_CHECK {{
            connect_timeout 0.5
        }}
    }}
}}
"""


async def _eventually(pred: Callable[[], bool], limit: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not pred():
        assert loop.time() < end, f"not within {limit}s"
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_master_syncs_connections_to_backup(tmp_path: Path) -> None:
    """... and the operator's overrides reach the peer through its API (PeerLink), so a
    failover keeps them; the API reports the sync counters."""
    vport, vrrp_port = _free(socket.SOCK_STREAM), _free(socket.SOCK_DGRAM)
    api_ports = [_free(socket.SOCK_STREAM), _free(socket.SOCK_STREAM)]
    sync_port = _free(socket.SOCK_DGRAM)
    server = await start_demo_server(HOST, 0, "rs")
    assert server.server is not None
    rport = int(server.server.sockets[0].getsockname()[1])
    directors = []
    pairs = (("127.0.0.63", "127.0.0.64", 150), ("127.0.0.64", "127.0.0.63", 100))
    for index, (src, peer, prio) in enumerate(pairs):
        api = ApiSettings(unix_path=tmp_path / f"api{index}.sock", tcp=(HOST, api_ports[index]),
                          token=TOKEN, state_path=tmp_path / f"state{index}.json",
                          peer_api=f"http://{HOST}:{api_ports[1 - index]}", peer_token=TOKEN)
        ports = VrrpPorts(addresses=InMemoryAddressPort({"lo": ()}),
                          neighbours=RecordingNeighbourPort(),
                          channels=UdpChannelFactory(port=vrrp_port), transport="udp-dev")
        d = Director(parse_text(_config(src=src, peer=peer, priority=prio, vport=vport,
                                        rport=rport)).config,
                     clock=LoopClock(), vrrp_ports=ports, api=api)
        # Point-to-point sync on loopback: lo has no multicast, and configuration (rightly)
        # only accepts a multicast group, so the test swaps in a unicast one.
        assert d.derived.sync is not None
        d.derived = dataclasses.replace(d.derived, sync=dataclasses.replace(
            d.derived.sync, group=IPv4Address("127.0.0.81"), port=sync_port))
        directors.append(d)
    master, backup = directors
    stops = [asyncio.Event() for _ in directors]
    tasks = []
    try:
        # The master-to-be first: its data plane holds VIP:port, so the backup's listener
        # (same VIP:port, one host) cannot bind and every client goes through the master.
        for d, s in zip(directors, stops, strict=True):
            tasks.append(asyncio.create_task(d.run(shutdown_trigger=s.wait)))
            await asyncio.wait_for(d.started.wait(), 5)
        assert master.dataplane is not None and backup.dataplane is not None
        assert len(master.dataplane.services) == 1 and not backup.dataplane.services
        await _eventually(lambda: master.vrrp_states().get("VI_S") is VrrpState.MASTER, 8)
        await _eventually(
            lambda: master.sync is not None and master.sync.role is SyncRole.MASTER
            and backup.sync is not None and backup.sync.role is SyncRole.BACKUP, 3)
        assert backup.vrrp_states().get("VI_S") is VrrpState.BACKUP
        reader, writer = await asyncio.open_connection(HOST, vport)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 5)).endswith(b"rs\n")
        writer.close()
        assert master.embedded is not None and backup.embedded is not None
        assert master.embedded.engine.conn_count() >= 1
        engine = backup.embedded.engine
        await _eventually(lambda: engine.conn_count() >= 1, 6)
        conns = list(engine.connections(now=asyncio.get_running_loop().time()))
        assert any(c.vport == vport and c.dport == rport for c in conns)
        # the API shows the sync counters of both sides
        async with ApiClient(f"http://{HOST}:{api_ports[0]}") as client:
            sync = await client.get("/api/v1/sync")
            text = await client.get_text("/metrics")
        assert sync["role"] == "master" and sync["sender"]["entries_sent"] >= 1
        assert 'hactl_sync_role{role="master"} 1' in text
        assert backup.api is not None
        stats = backup.api.sync_stats()
        assert stats is not None and stats.role is SyncRole.BACKUP
        assert sum(p.entries_received for p in stats.peers) >= 1
        # an operator override on the master reaches the backup through its API
        vs = ServiceKey.for_address(IpProto.TCP, IPv4Address(HOST), vport)
        rs = (IPv4Address(HOST), rport)
        async with ApiClient(f"http://{HOST}:{api_ports[0]}", token=TOKEN) as client:
            await client.send("PUT", real_server_path(vs, rs) + "/weight", {"weight": 7})
        await _eventually(lambda: (vs, rs) in backup.overrides, 5)
        assert backup.overrides[(vs, rs)].weight == 7
        assert backup.desired().services[0].destinations[0].weight == 7
        # Stopping the master sends a priority-0 advert (RFC 5798 §6.4.3): the backup takes
        # over after Skew_Time (~0.6 s), not after a full Master_Down_Interval (~3.6 s).
        stops[0].set()
        await asyncio.wait_for(tasks[0], 3)
        loop = asyncio.get_running_loop()
        stopped = loop.time()
        await _eventually(lambda: backup.vrrp_states().get("VI_S") is VrrpState.MASTER, 3)
        assert loop.time() - stopped < 2.0
        await _eventually(lambda: backup.sync is not None
                          and backup.sync.role is SyncRole.MASTER, 2)
        # the new master kept the override: the failover did not undo it
        assert backup.embedded is not None
        await _eventually(lambda: backup.embedded is not None and [
            d.weight for d in backup.embedded.engine.services()[0].service.destinations] == [7],
            3)
    finally:
        for s in stops:
            s.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        await server.close()
