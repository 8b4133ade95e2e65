"""Test support for the data plane: an in-memory `FlowTable` and small named real servers.

`MemoryFlowTable` is a fake of hactl's own port (`hactl.ipvs.flows.FlowTable`), not of the
engine: it schedules with the real kernel-faithful schedulers (`hactl.ipvs.schedulers`),
keeps persistence templates per client address, counts open flows per destination, expires
idle flows, and ends the flows of a destination removed with expire_nodest_conn 1. Every
decision is recorded (`decisions`) so tests can compare what the sockets did with what the
table decided.

`NamedServer` is an asyncio real server that greets every connection with its name and then
obeys a tiny line protocol (BULK n / SINK / HALF / echo), recording what it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from hactl.ipvs.dataplane import DataPlane, DataPlaneSettings
from hactl.ipvs.engine import EngineOptions, IpvsEngine
from hactl.ipvs.flows import ClosedFlow, CloseReason, EngineFlowTable, Flow, FlowEvent
from hactl.ipvs.model import (
    Destination,
    FwdMethod,
    IPAddress,
    IpProto,
    IpvsSysctl,
    ServiceKey,
    VirtualService,
)
from hactl.ipvs.schedulers import SchedPacket, Scheduler, make_scheduler

LOCALHOST = IPv4Address("127.0.0.1")


@dataclass(eq=False)
class FakeDest:
    addr: IPv4Address | IPv6Address
    port: int
    weight: int
    fwd: FwdMethod = FwdMethod.MASQ
    activeconns: int = 0
    inactconns: int = 0
    persistconns: int = 0
    available: bool = True

    @property
    def overloaded(self) -> bool:
        return False


@dataclass(eq=False)
class _Service:
    svc: VirtualService
    sched: Scheduler[FakeDest]
    dests: list[FakeDest]  # kernel order: newest added first
    templates: dict[IPAddress, tuple[FakeDest, float]] = field(default_factory=dict)


class MemoryFlowTable:
    """An in-memory FlowTable (see module docstring)."""

    def __init__(self, *, idle_timeout: float = 900.0, expire_nodest_conn: int = 0) -> None:
        self.idle_timeout = idle_timeout
        self.expire_nodest_conn = expire_nodest_conn
        self.services: dict[ServiceKey, _Service] = {}
        self.open: dict[Flow, float] = {}  # flow -> last activity
        self.events: list[tuple[Flow, FlowEvent, int]] = []
        self.decisions: list[tuple[tuple[IPAddress, int], tuple[IPAddress, int]]] = []
        self._closed: list[ClosedFlow] = []
        self.ended: set[Flow] = set()

    # -- table management (what the engine's control side would do) ------------------------
    def add_service(self, svc: VirtualService) -> None:
        sched = make_scheduler(svc.scheduler, sched_flags=svc.sched_flags, rng=random.Random(1))
        dests = [FakeDest(d.addr, d.port, d.weight, d.fwd) for d in reversed(svc.destinations)]
        sched.update_dests(dests)
        self.services[svc.key] = _Service(svc, sched, dests)

    def dest(self, key: ServiceKey, port: int) -> FakeDest:
        return next(d for d in self.services[key].dests if d.port == port)

    def set_weight(self, key: ServiceKey, port: int, weight: int) -> None:
        service = self.services[key]
        self.dest(key, port).weight = weight
        service.sched.update_dests(service.dests)

    def remove_dest(self, key: ServiceKey, port: int) -> None:
        service = self.services[key]
        dest = self.dest(key, port)
        dest.available = False
        service.dests.remove(dest)
        service.sched.update_dests(service.dests)
        if self.expire_nodest_conn:
            for flow in list(self.open):
                if flow.handle is dest:
                    self._end(flow, CloseReason.DEST_REMOVED)

    def _end(self, flow: Flow, reason: CloseReason) -> None:
        del self.open[flow]
        self.ended.add(flow)
        self._closed.append(ClosedFlow(flow, reason))
        dest = flow.handle
        assert isinstance(dest, FakeDest)
        dest.activeconns -= 1

    # -- FlowTable ---------------------------------------------------------------------------
    def open_flow(
        self, service: ServiceKey, client: tuple[IPAddress, int], *, now: float, nbytes: int = 0
    ) -> Flow | None:
        entry = self.services.get(service)
        if entry is None:
            return None
        dest: FakeDest | None = None
        if entry.svc.persistence_timeout is not None:
            found = entry.templates.get(client[0])
            if found is not None and found[0].available and found[1] > now:
                dest = found[0]
        if dest is None:
            assert service.addr is not None
            pkt = SchedPacket(
                service.family,
                int(service.protocol),
                client[0],
                client[1],
                service.addr,
                service.port,
            )
            dest = entry.sched.schedule(entry.dests, pkt, now=now)
            if dest is None:
                return None
        if entry.svc.persistence_timeout is not None:
            entry.templates[client[0]] = (dest, now + entry.svc.persistence_timeout)
        assert service.addr is not None
        flow = Flow(
            service=service,
            protocol=service.protocol,
            client=client,
            vip=(service.addr, service.port),
            dest=(dest.addr, dest.port or service.port),
            fwd=dest.fwd,
            handle=dest,
        )
        dest.activeconns += 1
        self.open[flow] = now
        self.decisions.append((client, flow.dest))
        return flow

    def flow_event(self, flow: Flow, event: FlowEvent, nbytes: int = 0, *, now: float) -> None:
        self.events.append((flow, event, nbytes))
        if flow not in self.open:
            return  # ended by the table: ignored, as the port requires
        if event is FlowEvent.CLOSED:
            del self.open[flow]
            dest = flow.handle
            assert isinstance(dest, FakeDest)
            dest.activeconns -= 1
        else:
            self.open[flow] = now

    def pop_closed_flows(self) -> list[ClosedFlow]:
        closed, self._closed = self._closed, []
        return closed

    def next_deadline(self) -> float | None:
        if not self.open:
            return None
        return min(self.open.values()) + self.idle_timeout

    def handle_timer(self, *, now: float) -> None:
        for flow, last in list(self.open.items()):
            if last + self.idle_timeout <= now:
                self._end(flow, CloseReason.EXPIRED)

    # -- helpers for assertions --------------------------------------------------------------
    def events_of(self, flow: Flow) -> list[FlowEvent]:
        return [e for f, e, _ in self.events if f is flow]

    def flows(self) -> list[Flow]:
        seen: dict[Flow, None] = {}
        for f, _, _ in self.events:
            seen.setdefault(f)
        return list(seen)


def tcp_service(
    port: int,
    dests: Sequence[tuple[int, int]],
    *,
    scheduler: str = "rr",
    persistence_timeout: float | None = None,
    fwd: FwdMethod = FwdMethod.MASQ,
    addr: IPAddress = LOCALHOST,
    protocol: IpProto = IpProto.TCP,
) -> VirtualService:
    """A service on addr:port with destinations (port, weight) on 127.0.0.1, in add order."""
    return VirtualService(
        key=ServiceKey.for_address(protocol, addr, port),
        scheduler=scheduler,
        persistence_timeout=persistence_timeout,
        destinations=tuple(
            Destination(addr=LOCALHOST, port=p, weight=w, fwd=fwd) for p, w in dests
        ),
    )


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -------------------------------------------------------------------------------------------
# Named real servers


class _ServerProtocol(asyncio.Protocol):
    def __init__(self, server: NamedServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.mode = "command"
        self.sunk = 0
        self.peer: tuple[str, int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        self.server.protocols.add(self)
        self.server.accepted += 1
        self.server.open += 1
        if self.server.expect_proxy_header:
            self.mode = "proxy_header"
        else:
            transport.write(self.server.name.encode() + b"\n")

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.mode == "proxy_header":
            self.buffer += data
            if len(self.buffer) < 16:
                return
            length = int.from_bytes(self.buffer[14:16], "big")
            if len(self.buffer) < 16 + length:
                return
            self.server.proxy_headers.append(self.buffer[: 16 + length])
            self.buffer = self.buffer[16 + length :]
            self.mode = "command"
            self.transport.write(self.server.name.encode() + b"\n")
            if not self.buffer:
                return
            data, self.buffer = self.buffer, b""
        if self.mode in ("sink", "half"):
            self.sunk += len(data)
            return
        if self.mode == "echo":
            self.transport.write(data)
            return
        self.buffer += data
        while b"\n" in self.buffer and self.mode == "command":
            line, _, self.buffer = self.buffer.partition(b"\n")
            self._command(line.decode())

    def _command(self, line: str) -> None:
        assert self.transport is not None
        verb, _, arg = line.partition(" ")
        if verb == "BULK":
            size = int(arg)
            chunk = b"x" * 65536
            while size > 0:
                self.transport.write(chunk[: min(size, 65536)])
                size -= 65536
            self.transport.write_eof()
        elif verb == "SINK":
            self.mode = "sink"
            self.sunk = len(self.buffer)
            self.buffer = b""
        elif verb == "HALF":
            self.mode = "half"
            self.transport.write(b"bye\n")
            self.transport.write_eof()
            self.sunk = len(self.buffer)
            self.buffer = b""
        elif verb == "ECHO":
            self.mode = "echo"
        elif verb == "NAME":
            self.transport.write(self.server.name.encode() + b"\n")

    def eof_received(self) -> bool | None:
        assert self.transport is not None
        if self.mode == "sink":
            self.server.sunk.append(self.sunk)
            self.transport.write(f"{self.sunk}\n".encode())
            self.transport.close()
        elif self.mode == "half":
            self.server.sunk.append(self.sunk)
            self.transport.close()
        else:
            self.transport.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.protocols.discard(self)
        self.server.open -= 1
        if exc is not None:
            self.server.errors.append(exc)


class NamedServer:
    """A real server on 127.0.0.1:port that greets each connection with its name."""

    def __init__(self, name: str, port: int, *, expect_proxy_header: bool = False) -> None:
        self.name = name
        self.port = port
        self.expect_proxy_header = expect_proxy_header
        self.accepted = 0
        self.open = 0
        self.sunk: list[int] = []
        self.errors: list[Exception] = []
        self.proxy_headers: list[bytes] = []
        self.protocols: set[_ServerProtocol] = set()
        self._server: asyncio.Server | None = None

    def abort_all(self) -> None:
        """Reset every open connection (close with SO_LINGER 0)."""
        for proto in list(self.protocols):
            assert proto.transport is not None
            sock = proto.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            proto.transport.abort()

    async def start(self) -> NamedServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ServerProtocol(self), "127.0.0.1", self.port, backlog=4096
        )
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def start_servers(names: Sequence[str]) -> list[NamedServer]:
    return [await NamedServer(n, free_port()).start() for n in names]


class Clients:
    """Test clients; `aclose()` closes every writer they opened (no ResourceWarning)."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []

    async def greet(
        self, port: int, *, source: str | None = None
    ) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to 127.0.0.1:port (from `source`), read the greeting: (name, r, w)."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(source, 0) if source else None
        )
        self.writers.append(writer)
        line = await reader.readline()
        return line.decode().strip(), reader, writer

    async def aclose(self) -> None:
        for writer in self.writers:
            writer.close()
        for writer in self.writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        self.writers.clear()


def addr(text: str) -> IPAddress:
    return ip_address(text)


class RecordingEngineTable(EngineFlowTable):
    """The production adapter over a real engine, recording decisions like MemoryFlowTable."""

    def __init__(self, *, expire_nodest_conn: int = 0) -> None:
        engine = IpvsEngine(
            rng=random.Random(1),
            sysctl=IpvsSysctl(expire_nodest_conn=expire_nodest_conn),
            options=EngineOptions(report_expiry=True),
        )
        super().__init__(engine)
        self.decisions: list[tuple[tuple[IPAddress, int], tuple[IPAddress, int]]] = []
        self.services: dict[ServiceKey, VirtualService] = {}

    def add_service(self, svc: VirtualService) -> None:
        self.services[svc.key] = svc
        self.engine.add_service(svc, now=asyncio.get_running_loop().time())

    def open_flow(
        self, service: ServiceKey, client: tuple[IPAddress, int], *, now: float, nbytes: int = 0
    ) -> Flow | None:
        flow = super().open_flow(service, client, now=now, nbytes=nbytes)
        if flow is not None:
            self.decisions.append((client, flow.dest))
        return flow

    def set_weight(self, key: ServiceKey, port: int, weight: int) -> None:
        dest = next(d for d in self.services[key].destinations if d.port == port)
        self.engine.edit_dest(
            key, replace(dest, weight=weight), now=asyncio.get_running_loop().time()
        )

    def remove_dest(self, key: ServiceKey, port: int) -> None:
        self.engine.del_dest(key, LOCALHOST, port, now=asyncio.get_running_loop().time())

    def active(self, key: ServiceKey, port: int) -> tuple[int, int]:
        """(ActiveConn, InActConn) of a destination, as ipvsadm would print them."""
        for status in self.engine.services():
            if status.service.key == key:
                for d in status.dests:
                    if d.dest.port == port:
                        return (d.activeconns, d.inactconns)
        raise KeyError(port)


def make_table(kind: str, *, expire_nodest_conn: int = 0) -> Any:
    """ "engine" (the production adapter) or "memory" (the fake of the port)."""
    if kind == "engine":
        return RecordingEngineTable(expire_nodest_conn=expire_nodest_conn)
    return MemoryFlowTable(expire_nodest_conn=expire_nodest_conn)


TABLE_KINDS = ["engine", "memory"]


def serving_plane(
    kind: str,
    dests: Sequence[tuple[int, int]],
    *,
    settings: DataPlaneSettings | None = None,
    expire_nodest_conn: int = 0,
    scheduler: str = "rr",
    persistence_timeout: float | None = None,
    fwd: FwdMethod = FwdMethod.MASQ,
) -> tuple[DataPlane, Any, VirtualService]:
    """A data plane over a new `kind` table (see `make_table`) holding one TCP service on a
    free 127.0.0.1 port with destinations (port, weight) (see `tcp_service`).

    Returns (plane, table, service); the plane has not applied the service yet, and the
    service's port is `service.key.port`.
    """
    svc = tcp_service(
        free_port(),
        dests,
        scheduler=scheduler,
        persistence_timeout=persistence_timeout,
        fwd=fwd,
    )
    table = make_table(kind, expire_nodest_conn=expire_nodest_conn)
    table.add_service(svc)
    return DataPlane(table, settings), table, svc


async def connect_and_read(port: int) -> None:
    """Connect to 127.0.0.1:`port` and read once; tests expect a reset, which may already
    fail the connect call, or else the first read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reader.read(10)
    finally:
        writer.close()


async def until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    """Wait (bounded) until socket callbacks have made `predicate` true."""
    async with asyncio.timeout(limit):
        while not predicate():  # noqa: ASYNC110 - the state is changed by loop callbacks
            await asyncio.sleep(0.01)
