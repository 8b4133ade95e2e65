"""Small HTTP real servers for the loopback demo and the daemon's tests.

Each server answers every request with `200 OK` and a body naming itself (`web1\\n`), so a
client fetching through the VIP sees which real server the scheduler picked. One request per
connection (`Connection: close`), which is what health checks and `curl` do.

Run them: `python -m hactl.testing.demo_servers 127.0.0.11:8081=web1 127.0.0.12:8081=web2`;
SIGTERM or Ctrl-C stops them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

__all__ = ["DemoServer", "main", "parse_spec", "start_demo_server"]

_MAX_HEAD = 16 * 1024


class DemoServer:
    """One named HTTP server; `requests` counts the requests it answered."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                                     ConnectionError, TimeoutError):
                async with asyncio.timeout(10):
                    head = await reader.readuntil(b"\r\n\r\n")
                if len(head) > _MAX_HEAD:
                    return
                method = head.split(b" ", 1)[0]
                body = f"{self.name}\n".encode()
                self.requests += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    + f"Content-Length: {len(body)}\r\nX-Real-Server: {self.name}\r\n".encode()
                    + b"Connection: close\r\n\r\n"
                    + (b"" if method == b"HEAD" else body)
                )
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def start(self, host: str, port: int) -> asyncio.Server:
        self.server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        return self.server

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None


async def start_demo_server(host: str, port: int, name: str) -> DemoServer:
    """Start a named server on host:port (port 0: any free port) and return it."""
    server = DemoServer(name)
    await server.start(host, port)
    return server


def parse_spec(spec: str) -> tuple[str, int, str]:
    """`HOST:PORT=NAME` -> (host, port, name).

    Raises:
        ValueError: malformed spec.
    """
    address, sep, name = spec.partition("=")
    host, colon, port = address.rpartition(":")
    if not sep or not colon or not name or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT=NAME, got {spec!r}")
    return host, int(port), name


async def _serve(specs: Sequence[tuple[str, int, str]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servers = []
    try:
        for host, port, name in specs:
            servers.append(await start_demo_server(host, port, name))
            print(f"demo real server {name} listening on {host}:{port}", flush=True)
        await stop.wait()
    finally:
        for server in servers:
            await server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hactl.testing.demo_servers",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("servers", nargs="+", metavar="HOST:PORT=NAME")
    args = parser.parse_args(argv)
    try:
        specs = [parse_spec(s) for s in args.servers]
    except ValueError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(_serve(specs))
    except OSError as exc:
        print(f"demo_servers: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
