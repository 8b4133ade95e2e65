"""Bad input yields counted, logged outcomes, never exceptions or stuck connections.

Loopback only. Covers: a client that resets, a real server that refuses, a real server that
half-closes, a flood beyond the connection limit, a real server that never answers the
connect, and 10,000 connections opened and closed without a file-descriptor leak.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import struct
import sys
from asyncio.subprocess import PIPE

import pytest
from structlog.testing import capture_logs

from hactl.ipvs.dataplane import DataPlane, DataPlaneSettings
from hactl.ipvs.model import IpProto
from tests.shell.ipvs.dataplane_support import (
    TABLE_KINDS,
    Clients,
    NamedServer,
    connect_and_read,
    free_port,
    make_table,
    serving_plane,
    start_servers,
    tcp_service,
    until,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


async def _plane(kind: str, dest_ports: list[int], **settings: float):  # type: ignore[no-untyped-def]
    plane, _, svc = serving_plane(
        kind,
        [(p, 1) for p in dest_ports],
        settings=DataPlaneSettings(tick_interval=0.05, **settings),  # type: ignore[arg-type]
    )
    plane.apply([svc])
    return plane, svc.key.port


@pytest.mark.parametrize("kind", TABLE_KINDS)
async def test_client_reset_is_propagated_and_counted(kind: str) -> None:
    (a,) = await start_servers(["a"])
    plane, vport = await _plane(kind, [a.port])
    try:
        with capture_logs() as logs:
            reader, writer = await asyncio.open_connection("127.0.0.1", vport)
            assert await reader.readline() == b"a\n"
            writer.write(b"BULK 67108864\n")  # the server streams 64 MiB; we read a little
            assert await reader.read(1024)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # close() with SO_LINGER 0: an RST
            await until(lambda: plane.stats().active == 0)
            await until(lambda: a.open == 0)
        assert plane.stats().outcomes["client_reset"] == 1
        assert any(e["event"] == "dataplane.client_reset" for e in logs)
        assert a.errors and isinstance(a.errors[0], ConnectionResetError)  # RST propagated
    finally:
        plane.close()
        await a.stop()


@pytest.mark.parametrize("kind", TABLE_KINDS)
async def test_refusing_server_resets_the_client(kind: str) -> None:
    plane, vport = await _plane(kind, [free_port()])  # nothing listens there
    try:
        with capture_logs() as logs, pytest.raises(ConnectionResetError):
            await connect_and_read(vport)
        assert plane.stats().outcomes["connect_failed"] == 1
        event = next(e for e in logs if e["event"] == "dataplane.connect_failed")
        assert event["error"] == "ECONNREFUSED"
        assert plane.stats().active == 0
    finally:
        plane.close()


async def test_server_half_close_lets_the_client_keep_sending() -> None:
    (a,) = await start_servers(["a"])
    plane, vport = await _plane("engine", [a.port])
    clients = Clients()
    try:
        _, reader, writer = await clients.greet(vport)
        writer.write(b"HALF\n")
        assert await reader.read() == b"bye\n"  # server FIN arrives as EOF, stream open
        writer.write(b"z" * 100_000)
        writer.write_eof()
        await until(lambda: a.sunk == [100_000])
        await until(lambda: plane.stats().active == 0)
        stats = plane.stats()
        assert stats.outcomes["server_half_close"] == 1
        assert stats.outcomes["client_half_close"] == 1
        assert stats.completed == 1
    finally:
        await clients.aclose()
        plane.close()
        await a.stop()


@pytest.mark.parametrize("kind", TABLE_KINDS)
async def test_flood_beyond_the_limit_is_refused_and_counted(kind: str) -> None:
    (a,) = await start_servers(["a"])
    plane, vport = await _plane(kind, [a.port], max_connections=5)
    clients = Clients()
    try:
        results = await asyncio.gather(
            *(clients.greet(vport) for _ in range(25)), return_exceptions=True
        )
        served = [r for r in results if isinstance(r, tuple) and r[0] == "a"]
        refused = [r for r in results if not (isinstance(r, tuple) and r[0] == "a")]
        assert len(served) == 5
        assert len(refused) == 20
        assert plane.stats().outcomes["refused_limit"] == 20
        assert plane.stats().active == 5
    finally:
        await clients.aclose()
        plane.close()
        await a.stop()


@pytest.mark.parametrize("kind", TABLE_KINDS)
async def test_connect_timeout_resets_the_client(kind: str) -> None:
    # A listener whose accept queue is full drops further SYNs: the connect never completes.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    filler = []
    for _ in range(2):  # non-blocking: the second one already hangs in SYN_SENT
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        s.connect_ex(blackhole.getsockname())
        filler.append(s)
    await asyncio.sleep(0.05)
    plane, vport = await _plane(kind, [blackhole.getsockname()[1]], connect_timeout=0.3)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", vport)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(10), 5)
        writer.close()
        assert plane.stats().outcomes["connect_timeout"] == 1
        assert plane.stats().active == 0
    finally:
        plane.close()
        for s in filler:
            s.close()
        blackhole.close()


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow
async def test_no_fd_leak_after_10000_connections() -> None:
    (a,) = await start_servers(["a"])
    plane, vport = await _plane("engine", [a.port])
    try:

        async def one() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", vport)
            assert await reader.readline() == b"a\n"
            writer.close()
            await writer.wait_closed()

        for _ in range(3):  # warm up pools and caches before counting
            await one()
        await until(lambda: plane.stats().active == 0)
        before = _fd_count()
        async with asyncio.timeout(90):
            for _ in range(100):
                await asyncio.gather(*(one() for _ in range(100)))
        await until(lambda: plane.stats().active == 0 and a.open == 0, limit=10)
        assert _fd_count() == before
        assert plane.stats().accepted == 10_003
        assert plane.stats().completed == 10_003
    finally:
        plane.close()
        await a.stop()


@pytest.mark.parametrize("kind", TABLE_KINDS)
async def test_client_bytes_and_fin_sent_while_connecting_are_delivered(kind: str) -> None:
    # The real server's accept queue is full, so the proxy's SYN is dropped and retried
    # (about 1 s later): the client's bytes and FIN arrive while the proxy is connecting.
    loop = asyncio.get_running_loop()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    server.setblocking(False)
    filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    filler.connect_ex(server.getsockname())
    await asyncio.sleep(0.05)
    plane, vport = await _plane(kind, [server.getsockname()[1]], connect_timeout=10)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", vport)
        writer.write(b"hello while connecting")
        writer.write_eof()
        await asyncio.sleep(0.2)
        first, _ = await loop.sock_accept(server)  # frees the queue for the proxy's retry
        first.close()
        async with asyncio.timeout(10):
            conn, _ = await loop.sock_accept(server)
            got = b""
            while chunk := await loop.sock_recv(conn, 1024):
                got += chunk
            assert got == b"hello while connecting"  # bytes, then the FIN
            await loop.sock_sendall(conn, b"answer")
            conn.close()
            assert await reader.read() == b"answer"
        writer.close()
        await until(lambda: plane.stats().active == 0)
        assert plane.stats().completed == 1
    finally:
        plane.close()
        filler.close()
        server.close()


async def test_close_releases_every_descriptor() -> None:
    (a,) = await start_servers(["a"])
    clients = Clients()
    try:
        before = _fd_count()
        vport, uport = free_port(), free_port(socket.SOCK_DGRAM)
        tcp = tcp_service(vport, [(a.port, 1)])
        udp = tcp_service(uport, [(a.port, 1)], protocol=IpProto.UDP)
        table = make_table("engine")
        table.add_service(tcp)
        table.add_service(udp)
        plane = DataPlane(table)
        plane.apply([tcp, udp])
        _, reader, writer = await clients.greet(vport)
        writer.write(b"SINK\n" + b"v" * (8 << 20))  # bulk: pipes come out of the pool
        writer.write_eof()
        assert await reader.readline() == f"{8 << 20}\n".encode()
        await clients.greet(vport)  # one connection left open for close() to reset
        assert plane.stats().open_pipes > 0
        plane.close()
        await clients.aclose()
        await until(lambda: a.open == 0)
        # Listeners, relay, epoll set, pipes and both legs of every connection are gone.
        await until(lambda: _fd_count() == before)
    finally:
        await clients.aclose()
        await a.stop()


async def test_descriptor_exhaustion_is_counted_and_recovers() -> None:
    # The real server and the clients live in a child process (with the normal limit); this
    # process, which runs the data plane, gets a descriptor limit at its lowest free descriptor
    # number, so the next accept() is refused with EMFILE whatever else is open.
    bport = free_port()
    plane, vport = await _plane("engine", [bport])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    script = (
        "import socket, sys, time\n"
        "srv = socket.socket()\n"
        "srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"srv.bind(('127.0.0.1', {bport}))\n"
        "srv.listen(100)\n"  # never accepts: the kernel completes the proxy's connects
        "sys.stdin.readline()\n"  # wait until the parent's limit is in place
        "held = []\n"
        "for _ in range(12):\n"
        f"    held.append(socket.create_connection(('127.0.0.1', {vport}), timeout=2))\n"
        "time.sleep(1.0)\n"
    )
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdin=PIPE)
    assert child.stdin is not None
    try:
        lowest_free = os.dup(0)
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        child.stdin.write(b"go\n")  # the pipe exists already: no new descriptor
        await until(lambda: plane.stats().outcomes["accept_failed"] > 0)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        child.stdin.close()
        assert await child.wait() == 0
    clients = Clients()
    a = await NamedServer("a", bport).start()
    try:
        await until(lambda: plane.stats().active == 0)
        assert (await clients.greet(vport))[0] == "a"  # the listener is back in service
    finally:
        await clients.aclose()
        plane.close()
        await a.stop()
