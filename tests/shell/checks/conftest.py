"""Real local peers for the probes: an aiohttp server whose answers a test can change, tiny
asyncio SMTP/DNS/UDP responders, and a self-signed certificate for SSL_GET."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest
import pytest_asyncio
from aiohttp import web


@dataclass
class HttpBehaviour:
    status: int = 200
    body: bytes = b"<html>all good</html>"
    delay: float = 0.0
    chunked: bool = False
    requests: list[web.Request] = field(default_factory=list)
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    peers: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class HttpPeer:
    port: int
    behaviour: HttpBehaviour
    runner: web.AppRunner
    host: str = "127.0.0.1"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_http(
    behaviour: HttpBehaviour,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
) -> HttpPeer:
    async def handler(request: web.Request) -> web.StreamResponse:
        behaviour.seen_headers.append(dict(request.headers))
        behaviour.requests.append(request)
        if request.transport is not None:
            behaviour.peers.append(request.transport.get_extra_info("peername")[:2])
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        if behaviour.chunked:
            resp = web.StreamResponse(status=behaviour.status)
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            half = len(behaviour.body) // 2
            await resp.write(behaviour.body[:half])
            await resp.write(behaviour.body[half:])
            await resp.write_eof()
            return resp
        return web.Response(status=behaviour.status, body=behaviour.body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None)
    assert sockets
    return HttpPeer(sockets[0].getsockname()[1], behaviour, runner, host)


@pytest_asyncio.fixture
async def http_peer() -> AsyncIterator[HttpPeer]:
    peer = await start_http(HttpBehaviour())
    try:
        yield peer
    finally:
        await peer.stop()


@pytest.fixture(scope="session")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=rs.example.test", "-addext", "subjectAltName=DNS:rs.example.test",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture
def server_tls(cert_files: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert_files[0]), str(cert_files[1]))
    return ctx


# -- SMTP ------------------------------------------------------------------------------------


@dataclass
class SmtpPeer:
    port: int
    banner: bytes = b"220 mx.example.test ESMTP ready\r\n"
    helo_reply: bytes = b"250 mx.example.test\r\n"
    helos: list[str] = field(default_factory=list)


@pytest_asyncio.fixture
async def smtp_peer() -> AsyncIterator[SmtpPeer]:
    peer = SmtpPeer(0)

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"220-multi-line banner\r\n" + peer.banner)
            while line := await reader.readline():
                text = line.decode().strip()
                if text.upper().startswith("HELO"):
                    peer.helos.append(text)
                    writer.write(peer.helo_reply)
                elif text.upper() == "QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    peer.port = server.sockets[0].getsockname()[1]
    try:
        yield peer
    finally:
        server.close()
        await server.wait_closed()


# -- DNS and UDP ------------------------------------------------------------------------------


@dataclass
class DatagramPeer:
    port: int
    rcode: int = 0
    reply: bytes | None = None  # UDP: fixed reply; None echoes
    silent: bool = False
    received: list[bytes] = field(default_factory=list)


class _DnsProtocol(asyncio.DatagramProtocol):
    def __init__(self, peer: DatagramPeer, *, dns: bool) -> None:
        self.peer = peer
        self.dns = dns
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.peer.received.append(data)
        if self.peer.silent or self.transport is None:
            return
        if self.dns:
            qid, flags = struct.unpack_from("!HH", data)
            flags = (flags | 0x8080) & 0xFFF0 | self.peer.rcode
            out = struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 0) + data[12:]
        else:
            out = data if self.peer.reply is None else self.peer.reply
        self.transport.sendto(out, addr)


async def _datagram_peer(*, dns: bool) -> tuple[DatagramPeer, asyncio.DatagramTransport]:
    peer = DatagramPeer(0)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _DnsProtocol(peer, dns=dns), local_addr=("127.0.0.1", 0)
    )
    peer.port = transport.get_extra_info("sockname")[1]
    return peer, transport


@pytest_asyncio.fixture
async def dns_peer() -> AsyncIterator[DatagramPeer]:
    peer, transport = await _datagram_peer(dns=True)
    try:
        yield peer
    finally:
        transport.close()


@pytest_asyncio.fixture
async def udp_peer() -> AsyncIterator[DatagramPeer]:
    peer, transport = await _datagram_peer(dns=False)
    try:
        yield peer
    finally:
        transport.close()
