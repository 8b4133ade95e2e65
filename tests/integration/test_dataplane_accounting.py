"""Socket events drive the engine like packets would: ActiveConn/InActConn, states, stats.

Loopback, against the production adapter (`EngineFlowTable`) over the real engine.
"""

from __future__ import annotations

import asyncio
import gc
from ipaddress import IPv4Address, IPv6Address

import pytest
from structlog.testing import capture_logs

from hactl.ipvs.dataplane import DataPlane, DataPlaneSettings
from hactl.ipvs.model import FwdMethod, IpProto, ServiceKey, Stats, VirtualService
from hactl.ipvs.tcpproxy import Outcome, OutcomeLog, TcpConnection
from tests.shell.ipvs.dataplane_support import (
    Clients,
    connect_and_read,
    free_port,
    make_table,
    serving_plane,
    start_servers,
    tcp_service,
    until,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


def _states(table: object) -> list[str]:
    engine = table.engine  # type: ignore[attr-defined]
    now = asyncio.get_running_loop().time()
    return sorted(c.state for c in engine.connections(now=now) if c.cport != 0)


@pytest.mark.parametrize("fwd", [FwdMethod.MASQ, FwdMethod.DROUTE])
async def test_active_and_inactive_counts_follow_the_connections(fwd: FwdMethod) -> None:
    (a,) = await start_servers(["a"])
    plane, table, svc = serving_plane("engine", [(a.port, 1)], fwd=fwd)
    vport = svc.key.port
    clients = Clients()
    try:
        plane.apply([svc])
        conns = [await clients.greet(vport) for _ in range(3)]
        for _, reader, writer in conns:
            writer.write(b"NAME\n")
            assert await reader.readline() == b"a\n"
        assert table.active(svc.key, a.port) == (3, 0)
        assert _states(table) == ["ESTABLISHED"] * 3

        def svc_stats() -> Stats:
            return next(s for s in table.engine.services() if s.service.key == svc.key).stats

        # Coalesced data of quiet connections reaches the table within interval + tick.
        await until(lambda: svc_stats().inbytes == 3 * len(b"NAME\n"), limit=3)
        # The client half-closes and the server answers with its own FIN (it closes on EOF).
        # NAT sees INPUT fin (-> CLOSE_WAIT) then OUTPUT fin (-> TIME_WAIT); DR/TUN are fed
        # input only: IN_ONLY fin -> FIN_WAIT, and there it stays (spec §3.3).
        _, _, writer = conns[0]
        writer.write_eof()
        expected = "TIME_WAIT" if fwd is FwdMethod.MASQ else "FIN_WAIT"
        await until(lambda: _states(table).count(expected) == 1)
        assert table.active(svc.key, a.port) == (2, 1)
        # Closing everything leaves the entries inactive until their timers end them.
        await clients.aclose()
        await until(lambda: plane.stats().active == 0)
        assert table.active(svc.key, a.port) == (0, 3)
        stats = svc_stats()
        assert stats.conns == 3
        assert stats.inbytes == 3 * len(b"NAME\n")  # payload bytes (docs/dataplane.md)
        # Replies of DR/TUN flows never pass a kernel director, so they are not counted.
        assert stats.outbytes == (3 * 2 * len(b"a\n") if fwd is FwdMethod.MASQ else 0)
    finally:
        await clients.aclose()
        plane.close()
        await a.stop()


async def test_no_destination_resets_the_client_and_is_counted() -> None:
    (a,) = await start_servers(["a"])
    plane, _, svc = serving_plane("engine", [(a.port, 0)])  # the only real server is quiesced
    vport = svc.key.port
    try:
        plane.apply([svc])
        with capture_logs() as logs, pytest.raises(ConnectionResetError):
            await connect_and_read(vport)
        assert plane.stats().outcomes["no_destination"] == 1
        assert [e["event"] for e in logs] == ["dataplane.no_destination"]
        assert a.accepted == 0
    finally:
        plane.close()
        await a.stop()


async def test_server_reset_mid_transfer_resets_the_client() -> None:
    (a,) = await start_servers(["a"])
    plane, _, svc = serving_plane("engine", [(a.port, 1)])
    vport = svc.key.port
    clients = Clients()
    try:
        plane.apply([svc])
        _, reader, writer = await clients.greet(vport)
        writer.write(b"ECHO\n")
        await writer.drain()
        await until(lambda: a.open == 1)
        a.abort_all()  # the real server resets its connections
        with pytest.raises(ConnectionResetError):
            while await reader.read(1024):
                pass
        await until(lambda: plane.stats().active == 0)
        assert plane.stats().outcomes["server_reset"] == 1
    finally:
        await clients.aclose()
        plane.close()
        await a.stop()


async def test_listener_binds_a_vip_not_yet_on_any_interface() -> None:
    # IP_FREEBIND / IPV6_FREEBIND: no traffic is sent, the sockets only bind and listen.
    keys = [
        ServiceKey.for_address(IpProto.TCP, IPv4Address("192.0.2.77"), free_port()),
        ServiceKey.for_address(IpProto.UDP, IPv4Address("192.0.2.77"), free_port()),
        ServiceKey.for_address(IpProto.TCP, IPv6Address("2001:db8::77"), free_port()),
    ]
    table = make_table("memory")
    plane = DataPlane(table)
    try:
        with capture_logs() as logs:
            plane.apply([VirtualService(key=k) for k in keys])
        assert plane.services == set(keys), logs
        assert plane.stats().listeners == 2 and plane.stats().relays == 1
    finally:
        plane.close()


async def test_busy_port_is_reported_and_retried_on_next_apply() -> None:
    vport = free_port()
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", vport)
    svc = tcp_service(vport, [(free_port(), 1)])
    plane = DataPlane(make_table("memory"), DataPlaneSettings())
    try:
        with capture_logs() as logs:
            plane.apply([svc])
        assert plane.services == frozenset()
        failed = next(e for e in logs if e["event"] == "dataplane.listen_failed")
        assert failed["error"] == "EADDRINUSE"
        blocker.close()
        await blocker.wait_closed()
        plane.apply([svc])
        assert plane.services == {svc.key}
    finally:
        blocker.close()
        plane.close()


async def test_closed_connections_are_freed_at_once_and_leave_no_connect_deadline() -> None:
    """A closed connection is freed by reference counting, not left for the cyclic
    collector (with it disabled, no proxied connection object survives its close), and a
    connection that reached its real server no longer waits in the connect-timeout queue."""
    (a,) = await start_servers(["a"])
    plane, _, svc = serving_plane("engine", [(a.port, 1)])
    vport = svc.key.port
    gc.collect()
    gc.disable()
    try:
        plane.apply([svc])

        def alive() -> int:
            return sum(isinstance(o, TcpConnection) for o in gc.get_objects())

        before = alive()
        held = []
        for _ in range(3):  # open ones: established, so out of the connect queue
            reader, writer = await asyncio.open_connection("127.0.0.1", vport)
            writer.write(b"NAME\n")
            assert await reader.readline() == b"a\n"
            held.append(writer)
        assert not plane._ctx.connecting  # white box: the queue of connects in progress
        for _ in range(40):
            reader, writer = await asyncio.open_connection("127.0.0.1", vport)
            writer.write(b"NAME\n")
            assert await reader.readline() == b"a\n"
            writer.write_eof()  # the server closes on EOF: a FIN each way, then close
            await reader.read()  # the rest of its answer, up to its FIN
            assert reader.at_eof()
            writer.close()
        await until(lambda: plane.stats().completed == 40)
        assert alive() == before + 3  # the held ones only
        for writer in held:
            writer.close()
        await until(lambda: plane.stats().active == 0)
        assert alive() == before
    finally:
        gc.enable()
        plane.close()
        await a.stop()


async def test_quiet_outcomes_count_every_event_and_log_within_the_budget() -> None:
    """`OutcomeLog.quiet` (the half-closes of every connection) counts each event and logs
    as a call of the log does: `burst` lines per second, then one carrying `suppressed`."""

    class Source:
        def log_context(self) -> dict[str, object]:
            return {"vs": "v", "rs": "r", "client": "c"}

    lines: list[tuple[str, dict[str, object]]] = []

    class Logger:
        def debug(self, name: str, **context: object) -> None:
            lines.append((name, context))

    log = OutcomeLog(Logger(), burst=10)
    for _ in range(25):
        log.quiet(Outcome.CLIENT_HALF_CLOSE, Source())  # type: ignore[arg-type]
    assert log.counts[Outcome.CLIENT_HALF_CLOSE] == 25
    assert len(lines) == 10
    assert lines[0] == ("dataplane.client_half_close", {"vs": "v", "rs": "r", "client": "c"})
    await asyncio.sleep(1.05)  # the next second's budget
    log.quiet(Outcome.CLIENT_HALF_CLOSE, Source())  # type: ignore[arg-type]
    assert log.counts[Outcome.CLIENT_HALF_CLOSE] == 26
    assert lines[-1][1]["suppressed"] == 15
    assert len(lines) == 11
