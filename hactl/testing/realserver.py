"""A real server for fault-injection tests: HTTP, TCP and UDP answering with its name, with
a failure mode that can be changed while it runs.

Every service answers with the server's name: HTTP `GET /` with `200 OK` and the body
`NAME\\n` (header `X-Real-Server: NAME`), TCP with `NAME\\n` on connect (then the bytes it
receives, echoed), UDP with `NAME:` followed by the datagram.

The mode is read from a control file (one word; polled every 50 ms, a missing or empty file
is `ok`), so a test changes it from outside the server's network namespace:

* `ok`: answer normally.
* `refuse`: the listening sockets are closed (connections are refused, UDP gets ICMP port
  unreachable); they are opened again when the mode changes.
* `hang`: accept and read, never answer (a server stuck in a lock or a GC pause).
* `500`: HTTP answers `500 Internal Server Error` (TCP and UDP keep answering).
* `close`: HTTP sends its headers and half the announced body, then closes (a crash
  mid-transfer); TCP closes at once, UDP does not answer.

Run: `python -m hactl.testing.realserver --name rs1 --listen 10.0.0.11 --control FILE`; it
prints `ready` on standard output once it listens, and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["MODES", "RealServer", "main"]

MODES = ("ok", "refuse", "hang", "500", "close")
_POLL = 0.05
_MAX_HEAD = 16 * 1024


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: RealServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if self.transport is None or self.server.mode in ("hang", "close"):
            return
        self.server.udp_datagrams += 1
        self.transport.sendto(self.server.name.encode() + b":" + data, addr)


class RealServer:
    """The three listeners of one named server and its current mode."""

    def __init__(self, name: str, host: str, *, http_port: int, tcp_port: int,
                 udp_port: int) -> None:
        self.name, self.host = name, host
        self.http_port, self.tcp_port, self.udp_port = http_port, tcp_port, udp_port
        self.mode = "ok"
        self.requests = 0
        self.udp_datagrams = 0
        self._servers: list[asyncio.Server] = []
        self._udp: asyncio.DatagramTransport | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def listening(self) -> bool:
        return bool(self._servers)

    async def open(self) -> None:
        if self._servers:
            return
        self._servers = [
            await asyncio.start_server(self._http, self.host, self.http_port,
                                       reuse_address=True),
            await asyncio.start_server(self._tcp, self.host, self.tcp_port, reuse_address=True),
        ]
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self), local_addr=(self.host, self.udp_port), reuse_port=True)
        self._udp = transport

    async def shut(self) -> None:
        """Close the listeners and reset the connections they had accepted."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        for writer in list(self._writers):
            writer.transport.abort()
        for server in servers:
            await server.wait_closed()

    async def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            mode = "ok"
        if mode == self.mode:
            return
        self.mode = mode
        if mode == "refuse":
            await self.shut()
        else:
            await self.open()

    async def _hang(self, reader: asyncio.StreamReader) -> None:
        # Hold the connection until the peer gives up or the mode changes.
        while self.mode == "hang":
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_POLL * 4):
                    if not await reader.read(4096):
                        return

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                                     ConnectionError, TimeoutError):
                async with asyncio.timeout(10):
                    head = await reader.readuntil(b"\r\n\r\n")
                if len(head) > _MAX_HEAD:
                    return
                if self.mode == "hang":
                    await self._hang(reader)
                    return
                status, body = "200 OK", f"{self.name}\n".encode()
                if self.mode == "500":
                    status, body = "500 Internal Server Error", f"{self.name} failing\n".encode()
                announced = len(body)
                if self.mode == "close":
                    body = (body * 512)[:512]
                    announced = 1024
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\n"
                    f"Content-Length: {announced}\r\nX-Real-Server: {self.name}\r\n"
                    "Connection: close\r\n\r\n".encode() + body)
                await writer.drain()
                if self.mode == "close":
                    writer.transport.abort()
                    return
                self.requests += 1
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            with contextlib.suppress(ConnectionError, TimeoutError):
                if self.mode == "close":
                    writer.transport.abort()
                    return
                if self.mode == "hang":
                    await self._hang(reader)
                    return
                writer.write(f"{self.name}\n".encode())
                await writer.drain()
                async with asyncio.timeout(30):
                    while data := await reader.read(65536):
                        if self.mode != "ok" and self.mode != "500":
                            writer.transport.abort()
                            return
                        writer.write(data)
                        await writer.drain()
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _read_mode(path: Path | None) -> str:
    if path is None:
        return "ok"
    try:
        word = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return "ok"
    return word or "ok"


async def serve(server: RealServer, control: Path | None, stop: asyncio.Event) -> None:
    mode = _read_mode(control)
    server.mode = mode if mode in MODES else "ok"
    if server.mode != "refuse":
        await server.open()
    print("ready", flush=True)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_POLL):
                    await stop.wait()
            await server.set_mode(_read_mode(control))
    finally:
        await server.shut()


async def _main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = RealServer(args.name, args.listen, http_port=args.http_port,
                        tcp_port=args.tcp_port, udp_port=args.udp_port)
    await serve(server, Path(args.control) if args.control else None, stop)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hactl.testing.realserver",
                                     description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--listen", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--http-port", type=int, default=80)
    parser.add_argument("--tcp-port", type=int, default=9000)
    parser.add_argument("--udp-port", type=int, default=9000)
    parser.add_argument("--control", default=None,
                        help="file holding the mode: " + ", ".join(MODES))
    args = parser.parse_args(argv)
    try:
        asyncio.run(_main(args))
    except OSError as exc:
        print(f"realserver: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
