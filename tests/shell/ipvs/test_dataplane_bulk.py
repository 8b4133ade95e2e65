"""Bulk transfers through the data plane: splice, backpressure in both directions, the pipe pool.

A bulk direction switches to splice after a full read; when its destination is full it stops
reading its source and takes the source's input edges out of the epoll set until it has
flushed. These tests drive that path with slow peers (small receive buffers, paced reads) and
check that every byte arrives in order, that nothing stays stuck, and that pipes go back to
the pool.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import random
import socket
from pathlib import Path

import pytest

from hactl.ipvs.dataplane import DataPlane, DataPlaneSettings
from hactl.ipvs.splicepool import SplicePool, splice_supported
from tests.shell.ipvs.dataplane_support import free_port, make_table, tcp_service

pytestmark = pytest.mark.skipif(not splice_supported(), reason="splice is not available here")

SIZE = 8 << 20
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


def _payload(seed: int, size: int = SIZE) -> bytes:
    """Deterministic, non-repeating bytes: a reordered or dropped chunk changes the digest."""
    return random.Random(seed).randbytes(size)


async def _recv_all(sock: socket.socket, *, pace_every: int, pace: float) -> bytes:
    """Read `sock` to EOF, pausing `pace` seconds every `pace_every` reads (a slow peer)."""
    loop = asyncio.get_running_loop()
    chunks = []
    reads = 0
    while data := await loop.sock_recv(sock, 65536):
        chunks.append(data)
        reads += 1
        if reads % pace_every == 0:
            await asyncio.sleep(pace)
    return b"".join(chunks)


def _small_buffers(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)


class _RawServer:
    """One-shot real server on raw sockets: `handler(conn)` runs for each connection."""

    def __init__(self, handler: object, *, slow: bool) -> None:
        self.port = free_port()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if slow:
            _small_buffers(self.sock)  # inherited by accepted sockets
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.handler = handler
        self.task: asyncio.Task[None] | None = None

    async def _serve_one(self) -> None:
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(self.sock)
        conn.setblocking(False)
        try:
            await self.handler(conn)  # type: ignore[operator]
        finally:
            conn.close()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._serve_one())

    async def finish(self) -> None:
        assert self.task is not None
        await self.task

    def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.sock.close()


async def _plane_for(server_port: int) -> tuple[DataPlane, int]:
    svc = tcp_service(free_port(), [(server_port, 1)])
    table = make_table("engine")
    table.add_service(svc)
    plane = DataPlane(table, DataPlaneSettings())
    plane.apply([svc])
    return plane, svc.key.port


async def _connect(port: int, *, slow: bool, slow_reader: bool = False) -> socket.socket:
    sock = socket.socket()
    if slow:
        _small_buffers(sock)
    elif slow_reader:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_download_to_a_slow_client_is_intact_and_returns_its_pipe() -> None:
    payload = _payload(1)

    async def send_payload(conn: socket.socket) -> None:
        await asyncio.get_running_loop().sock_sendall(conn, payload)
        conn.shutdown(socket.SHUT_WR)

    server = _RawServer(send_payload, slow=False)
    server.start()
    plane, vport = await _plane_for(server.port)
    client = await _connect(vport, slow=True)
    try:
        async with asyncio.timeout(45):
            got = await _recv_all(client, pace_every=4, pace=0.002)
            await server.finish()
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        stats = plane.stats()
        assert stats.bytes_down == SIZE
        assert stats.bytes_spliced > SIZE // 2  # the bulk of it moved zero-copy
        # Every pipe is back in the pool (idle) or closed: none is still lent out.
        assert stats.open_pipes <= plane.settings.max_idle_pipes
    finally:
        client.close()
        server.close()
        plane.close()
    assert plane.stats().open_pipes == 0


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_upload_to_a_slow_server_is_intact() -> None:
    payload = _payload(2)
    received: list[bytes] = []

    async def sink(conn: socket.socket) -> None:
        received.append(await _recv_all(conn, pace_every=4, pace=0.002))
        await asyncio.get_running_loop().sock_sendall(conn, b"done")

    server = _RawServer(sink, slow=True)
    server.start()
    plane, vport = await _plane_for(server.port)
    client = await _connect(vport, slow=False)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(45):
            await loop.sock_sendall(client, payload)
            client.shutdown(socket.SHUT_WR)
            assert await _recv_all(client, pace_every=1, pace=0) == b"done"
            await server.finish()
        assert hashlib.sha256(received[0]).digest() == hashlib.sha256(payload).digest()
        assert plane.stats().bytes_up == SIZE
    finally:
        client.close()
        server.close()
        plane.close()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_both_directions_stalled_at_once_resume_intact() -> None:
    """An echo server with slow reads: each pump stalls on a full destination while the
    other does too, and both resume by themselves (more bytes than the proxy's socket
    buffers in both directions can hold)."""
    size = 3 * SIZE
    payload = _payload(3, size)

    async def echo(conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        reads = 0
        while data := await loop.sock_recv(conn, 65536):
            await loop.sock_sendall(conn, data)
            reads += 1
            if reads % 4 == 0:
                await asyncio.sleep(0.005)
        conn.shutdown(socket.SHUT_WR)

    server = _RawServer(echo, slow=True)
    server.start()
    plane, vport = await _plane_for(server.port)
    client = await _connect(vport, slow=False, slow_reader=True)
    loop = asyncio.get_running_loop()

    async def upload() -> None:
        await loop.sock_sendall(client, payload)
        client.shutdown(socket.SHUT_WR)

    try:
        async with asyncio.timeout(45):
            up = loop.create_task(upload())
            got = await _recv_all(client, pace_every=2, pace=0.002)
            await up
            await server.finish()
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        stats = plane.stats()
        assert stats.bytes_up == stats.bytes_down == size
    finally:
        client.close()
        server.close()
        plane.close()


def test_pipe_pool_gets_the_largest_pipes_it_may() -> None:
    """A size above fs.pipe-max-size is granted only with CAP_SYS_RESOURCE; without it the
    pool falls back to pipe-max-size (not the 64 KiB default), and `pipe_size` is what the
    pipes really hold."""
    try:
        max_size = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except OSError:
        pytest.skip("no /proc/sys/fs/pipe-max-size")
    pool = SplicePool(pipe_size=max_size * 4)
    pipe = pool.acquire()
    assert pipe is not None
    try:
        capacity = fcntl.fcntl(pipe[1], _F_GETPIPE_SZ)
        assert pool.pipe_size == capacity
        assert capacity >= max_size
    finally:
        pool.release(pipe)
        pool.close()
