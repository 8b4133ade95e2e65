"""Data-plane shell behaviour: reconciliation, options, PROXY v2, keepalive, splice, UDP."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import cast

import pytest
from structlog.testing import capture_logs

from hactl.ipvs.dataplane import DataPlane, DataPlaneSettings, KeepaliveSettings, ServiceOptions
from hactl.ipvs.flows import FlowEvent
from hactl.ipvs.model import FwdMethod, IpProto, ServiceKey, VirtualService
from hactl.ipvs.splicepool import SplicePool, splice_supported
from hactl.ipvs.tcpproxy import proxy_v2_header
from tests.shell.ipvs.dataplane_support import (
    Clients,
    MemoryFlowTable,
    NamedServer,
    free_port,
    make_table,
    serving_plane,
    start_servers,
    tcp_service,
)


def test_proxy_v2_header_ipv4_and_ipv6() -> None:
    header = proxy_v2_header(
        IpProto.TCP, (IPv4Address("10.0.0.5"), 51234), (IPv4Address("192.0.2.1"), 80)
    )
    assert header == (
        b"\r\n\r\n\x00\r\nQUIT\n"
        + b"\x21\x11\x00\x0c"
        + bytes([10, 0, 0, 5, 192, 0, 2, 1])
        + (51234).to_bytes(2, "big")
        + (80).to_bytes(2, "big")
    )
    v6 = proxy_v2_header(IpProto.UDP, (IPv6Address("2001:db8::1"), 1), (IPv6Address("::1"), 2))
    assert v6[12:16] == b"\x21\x22\x00\x24" and len(v6) == 16 + 36
    with pytest.raises(ValueError):
        proxy_v2_header(IpProto.TCP, (IPv4Address("10.0.0.5"), 1), (IPv6Address("::1"), 2))


def test_keepalive_defaults_come_from_the_system(tmp_path: Path) -> None:
    for name, value in (("time", "600"), ("intvl", "30"), ("probes", "4")):
        (tmp_path / f"tcp_keepalive_{name}").write_text(f"{value}\n")
    assert KeepaliveSettings.from_system(tmp_path) == KeepaliveSettings(
        time=600, interval=30, probes=4
    )
    assert KeepaliveSettings.from_system(tmp_path / "missing") == KeepaliveSettings()


def test_service_options_are_validated() -> None:
    with pytest.raises(ValueError):
        ServiceOptions(proxy_protocol=1)
    with pytest.raises(ValueError):
        ServiceOptions(connect_timeout=0)


def test_splice_pool_lends_reuses_and_bounds() -> None:
    if not splice_supported():
        pytest.skip("splice is not available here")
    pool = SplicePool(max_idle=1, max_pipes=2)
    a, b = pool.acquire(), pool.acquire()
    assert a is not None and b is not None and pool.acquire() is None
    pool.release(a)
    pool.release(b)  # beyond max_idle: closed
    assert pool.open_pipes == 1
    assert pool.acquire() == a
    pool.discard(a)
    pool.close()
    assert pool.open_pipes == 0


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_apply_reconciles_listeners_and_refuses_fwmark() -> None:
    (a,) = await start_servers(["a"])
    table = MemoryFlowTable()
    p1, p2 = free_port(), free_port()
    s1, s2 = tcp_service(p1, [(a.port, 1)]), tcp_service(p2, [(a.port, 1)], fwd=FwdMethod.DROUTE)
    fwm = VirtualService(key=ServiceKey.for_fwmark(7))
    for svc in (s1, s2):
        table.add_service(svc)
    plane = DataPlane(table)
    clients = Clients()
    try:
        with capture_logs() as logs:
            plane.apply([s1, s2, fwm])
            plane.apply([s1, s2, fwm])  # warnings are one-time
        events = [e["event"] for e in logs]
        assert events.count("dataplane.fwmark_unsupported") == 1
        assert events.count("dataplane.forwarding_method") == 1  # DR, forwarded as a proxy
        assert plane.services == {s1.key, s2.key}
        name, reader, writer = await clients.greet(p1)
        assert name == "a"
        plane.apply([s2])  # s1 removed: its listener goes, its connection stays
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", p1)
        writer.write(b"NAME\n")
        assert await reader.readline() == b"a\n"
        assert (await clients.greet(p2))[0] == "a"
    finally:
        await clients.aclose()
        plane.close()
        await a.stop()


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_proxy_protocol_keepalive_and_flow_events() -> None:
    server = await NamedServer("pp", free_port(), expect_proxy_header=True).start()
    table = MemoryFlowTable()
    vport = free_port()
    svc = tcp_service(vport, [(server.port, 1)])
    table.add_service(svc)
    keepalive = KeepaliveSettings(time=321, interval=12, probes=3)
    plane = DataPlane(table, DataPlaneSettings(keepalive=keepalive))
    clients = Clients()
    try:
        plane.apply([svc], {svc.key: ServiceOptions(proxy_protocol=2)})
        name, reader, writer = await clients.greet(vport, source="127.0.0.9")
        assert name == "pp"
        header = server.proxy_headers[0]
        assert header[16:20] == bytes([127, 0, 0, 9]) and header[20:24] == bytes([127, 0, 0, 1])
        assert int.from_bytes(header[26:28], "big") == vport
        # Both legs carry the configured keepalive (client leg inherited from the listener).
        (conn,) = plane._ctx.connections.values()
        for sock in (conn.client, conn.server):  # type: ignore[attr-defined]
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 321
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 12
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        writer.write_eof()
        assert await reader.read() == b""
        await asyncio.sleep(0.05)
        (flow,) = table.flows()
        events = table.events_of(flow)
        assert events[:2] == [FlowEvent.ACCEPTED, FlowEvent.BACKEND_ESTABLISHED]
        assert events[-1] is FlowEvent.CLOSED
        # A short connection's bytes ride on its FINs (the greeting: "pp\n" = 3 bytes).
        reported = {e: n for f, e, n in table.events if f is flow and n}
        assert reported == {FlowEvent.SERVER_FIN: 3}
        assert FlowEvent.CLIENT_FIN in events
    finally:
        await clients.aclose()
        plane.close()
        await server.stop()


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_bulk_transfer_goes_through_splice_intact() -> None:
    if not splice_supported():
        pytest.skip("splice is not available here")
    (a,) = await start_servers(["a"])
    plane, _, svc = serving_plane("engine", [(a.port, 1)])
    vport = svc.key.port
    clients = Clients()
    try:
        plane.apply([svc])
        _, reader, writer = await clients.greet(vport)
        writer.write(b"SINK\n" + b"u" * (16 << 20))
        writer.write_eof()
        assert await reader.readline() == f"{16 << 20}\n".encode()
        stats = plane.stats()
        assert stats.bytes_up >= 16 << 20
        assert stats.bytes_spliced > 0  # bulk moved zero-copy
        assert stats.open_pipes <= plane.settings.max_idle_pipes
    finally:
        await clients.aclose()
        plane.close()
        await a.stop()


@pytest.mark.asyncio
@pytest.mark.timeout(30)
@pytest.mark.parametrize("fin", [False, True])
async def test_request_sent_before_the_real_server_accepted(fin: bool) -> None:
    # The client writes at once, so its request (and FIN) usually waits in the client socket
    # while the real server is being connected: a short first read of that request must
    # neither lose a FIN behind it nor stop later requests; and a small exchange moves by
    # plain recv/send, without taking a splice pipe.
    (a,) = await start_servers(["a"])
    plane, table, svc = serving_plane("memory", [(a.port, 1)])
    try:
        plane.apply([svc])
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", svc.key.port)
            try:
                writer.write(b"NAME\n")
                if fin:
                    writer.write_eof()
                    assert await reader.read() == b"a\na\n"
                else:
                    assert await reader.readline() == b"a\n"  # the greeting
                    assert await reader.readline() == b"a\n"
                    writer.write(b"NAME\n")  # a later request raises a new edge
                    assert await reader.readline() == b"a\n"
                    writer.write_eof()
                    assert await reader.read() == b""
            finally:
                writer.close()
                await writer.wait_closed()
        await asyncio.sleep(0.05)
        for flow in table.flows():
            events = table.events_of(flow)
            assert FlowEvent.CLIENT_FIN in events and events[-1] is FlowEvent.CLOSED
        stats = plane.stats()
        assert stats.completed == 3 and stats.active == 0
        assert stats.bytes_spliced == 0 and stats.open_pipes == 0
    finally:
        plane.close()
        await a.stop()


class _UdpNamed(asyncio.DatagramProtocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(self.name.encode() + b":" + data, addr)


@pytest.mark.asyncio
@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["engine", "memory"])
async def test_udp_relay_keys_flows_by_client_and_closes_on_expiry(kind: str) -> None:
    loop = asyncio.get_running_loop()
    ports = [free_port(socket.SOCK_DGRAM) for _ in range(2)]
    transports = []
    for name, port in zip("ab", ports, strict=True):
        t, _ = await loop.create_datagram_endpoint(
            lambda n=name: _UdpNamed(n), local_addr=("127.0.0.1", port)
        )
        transports.append(t)
    vport = free_port(socket.SOCK_DGRAM)
    svc = tcp_service(vport, [(p, 1) for p in ports], protocol=IpProto.UDP)
    table = make_table(kind)
    table.add_service(svc)
    plane = DataPlane(table, DataPlaneSettings(tick_interval=0.05, event_interval=0.1))
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    try:
        plane.apply([svc])
        answers: dict[int, set[bytes]] = {}
        for i, c in enumerate(clients):
            c.setblocking(False)
            c.connect(("127.0.0.1", vport))
            for n in range(3):
                await loop.sock_sendall(c, f"{i}-{n}".encode())
                data = await asyncio.wait_for(loop.sock_recv(c, 100), 5)
                answers.setdefault(i, set()).add(data.split(b":")[0])
        assert all(len(v) == 1 for v in answers.values())  # one real server per client
        assert sorted(b"".join(v) for v in answers.values()) == [b"a", b"a", b"b", b"b"]
        stats = plane.stats()
        assert stats.udp_flows_opened == 4 and stats.udp_datagrams_down == 12
        if kind == "engine":
            await asyncio.sleep(0.3)  # past the event interval: coalesced data is reported
            (status,) = table.engine.services()
            # Payload bytes both ways, summed over the real servers: "i-n" (3 bytes) up,
            # "x:i-n" (5 bytes) down; the first datagram of each client is the scheduling one.
            inbytes = sum(d.stats.inbytes for d in status.dests)
            outbytes = sum(d.stats.outbytes for d in status.dests)
            assert (inbytes, outbytes) == (36, 60)
            assert sum(d.stats.conns for d in status.dests) == 4
            inpkts = sum(d.stats.inpkts for d in status.dests)
            assert 4 <= inpkts <= 12  # coalesced: reports, not datagrams
        # The table ends every flow (its UDP timeout); the relay closes the sockets.
        table.handle_timer(now=loop.time() + 1000)
        await asyncio.sleep(0.2)
        assert plane.stats().udp_flows_closed == 4
        assert plane.stats().outcomes["closed_by_table"] == 4
    finally:
        for c in clients:
            c.close()
        plane.close()
        for t in transports:
            t.close()
