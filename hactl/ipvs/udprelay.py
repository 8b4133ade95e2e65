"""The UDP half of the data plane: one relay per UDP virtual service, keyed by client address.

A relay owns the socket bound to VIP:port (IP_FREEBIND, SO_REUSEADDR). The first datagram
from a client address opens a flow in the `FlowTable` (the scheduling decision) and a
socket connected to the chosen real server; later datagrams of that client go the same way,
and the real server's replies are sent back to the client from VIP:port. The flow lives as
long as the table's connection entry: the UDP idle timeout (spec/ipvs.md §3.4, 300 s by
default, refreshed by every datagram either way) is the table's timer, and when the table
ends the flow (expiry, destination removed with expire_nodest_conn 1) the relay closes the
real-server socket.

Invariants: datagrams are never queued in user space (a send that would block drops the
datagram, counted, as a router would); each relay entry appears in
`ProxyContext.connections` (so it counts against the connection limit) until its flow gets
`FlowEvent.CLOSED`. Errors are counted, logged outcomes, never exceptions out of callbacks.
"""

from __future__ import annotations

import socket
from typing import Final

from hactl.ipvs.flows import Flow, FlowEvent
from hactl.ipvs.model import IPAddress, IpProto, ServiceKey
from hactl.ipvs.tcpproxy import (
    Outcome,
    ProxyContext,
    ServiceOptions,
    errno_name,
    listening_socket,
    parse_addr,
)

__all__ = ["UdpRelay"]

DATAGRAM_MAX: Final = 65535
RECV_BATCH: Final = 64


class _UdpFlow:
    """One client address of a UDP service and its socket to the real server."""

    __slots__ = (
        "client_addr",
        "down_bytes",
        "fd",
        "flow",
        "next_down",
        "next_up",
        "open",
        "queued",
        "relay",
        "sock",
        "up_bytes",
    )

    def __init__(self, relay: UdpRelay, flow: Flow, client_addr: tuple[str, int]) -> None:
        self.relay = relay
        self.flow = flow
        self.client_addr = client_addr
        family = socket.AF_INET if flow.dest[0].version == 4 else socket.AF_INET6
        self.sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            self.sock.connect(relay.ctx.sockaddr(flow.dest))
        except OSError:
            self.sock.close()
            raise
        self.fd = self.sock.fileno()
        self.open = True
        # Datagrams are reported to the table at most once per event interval per direction,
        # with the bytes summed (the first one was the table's scheduling packet).
        ctx = relay.ctx
        self.next_up = self.next_down = ctx.epoch + max(1, ctx.event_ticks)
        self.up_bytes = self.down_bytes = 0
        self.queued = False
        ctx.loop.add_reader(self.fd, self._on_readable)

    def send_up(self, data: bytes, now: float, *, first: bool = False) -> None:
        """Relay a client datagram; `first` = it opened the flow (already fed to the table)."""
        ctx = self.relay.ctx
        try:
            self.sock.send(data)
        except OSError as exc:  # ECONNREFUSED from an earlier ICMP, EAGAIN, ENOBUFS...
            ctx.log(
                Outcome.UDP_SEND_FAILED,
                self,
                direction="up",
                error=errno_name(exc),
            )
            return
        ctx.counters.udp_datagrams_up += 1
        ctx.counters.bytes_up += len(data)
        if first:
            return
        self.up_bytes += len(data)
        if ctx.epoch >= self.next_up:
            ctx.table.flow_event(self.flow, FlowEvent.CLIENT_DATA, self.up_bytes, now=now)
            self.up_bytes = 0
            self.next_up = ctx.epoch + ctx.event_ticks
        elif not self.queued:
            self.queued = True
            ctx.unreported.append(self)

    def _on_readable(self) -> None:
        ctx = self.relay.ctx
        for _ in range(RECV_BATCH):
            try:
                data = self.sock.recv(DATAGRAM_MAX)
            except BlockingIOError:
                return
            except OSError as exc:  # ECONNREFUSED: the real server's port is closed
                ctx.log(
                    Outcome.UDP_RECV_FAILED,
                    self,
                    error=errno_name(exc),
                )
                return
            try:
                self.relay.sock.sendto(data, self.client_addr)
            except OSError as exc:
                ctx.log(
                    Outcome.UDP_SEND_FAILED,
                    self,
                    direction="down",
                    error=errno_name(exc),
                )
                continue
            ctx.counters.udp_datagrams_down += 1
            ctx.counters.bytes_down += len(data)
            self.down_bytes += len(data)
            if ctx.epoch >= self.next_down:
                ctx.table.flow_event(
                    self.flow, FlowEvent.SERVER_DATA, self.down_bytes, now=ctx.loop.time()
                )
                self.down_bytes = 0
                self.next_down = ctx.epoch + ctx.event_ticks
            elif not self.queued:
                self.queued = True
                ctx.unreported.append(self)

    def report_due(self, now: float) -> bool:
        """Tick: report held bytes whose interval has passed; True = still holding some."""
        if not self.open:
            return False
        ctx = self.relay.ctx
        if self.up_bytes and ctx.epoch >= self.next_up:
            ctx.table.flow_event(self.flow, FlowEvent.CLIENT_DATA, self.up_bytes, now=now)
            self.up_bytes = 0
            self.next_up = ctx.epoch + ctx.event_ticks
        if self.down_bytes and ctx.epoch >= self.next_down:
            ctx.table.flow_event(self.flow, FlowEvent.SERVER_DATA, self.down_bytes, now=now)
            self.down_bytes = 0
            self.next_down = ctx.epoch + ctx.event_ticks
        return bool(self.up_bytes or self.down_bytes)

    def log_context(self) -> dict[str, object]:
        flow = self.flow
        return {
            "vs": f"{flow.vip[0]}:{flow.vip[1]}",
            "rs": f"{flow.dest[0]}:{flow.dest[1]}",
            "client": f"{flow.client[0]}:{flow.client[1]}",
        }

    def close_by_table(self, reason: str) -> None:
        if self.open:
            self.relay.ctx.log(Outcome.CLOSED_BY_TABLE, self, reason=reason)
            self.close()

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        if not self.open:
            return
        self.open = False
        ctx = self.relay.ctx
        ctx.loop.remove_reader(self.fd)
        self.sock.close()
        self.relay.flows.pop(self.client_addr, None)
        ctx.connections.pop(self.flow, None)
        ctx.counters.udp_flows_closed += 1
        now = ctx.loop.time()
        if self.up_bytes:
            ctx.table.flow_event(self.flow, FlowEvent.CLIENT_DATA, self.up_bytes, now=now)
        if self.down_bytes:
            ctx.table.flow_event(self.flow, FlowEvent.SERVER_DATA, self.down_bytes, now=now)
        ctx.table.flow_event(self.flow, FlowEvent.CLOSED, now=now)


class UdpRelay:
    """The socket of one UDP virtual service and its per-client flows."""

    def __init__(self, ctx: ProxyContext, key: ServiceKey, options: ServiceOptions) -> None:
        if key.addr is None or key.protocol != IpProto.UDP:
            raise ValueError(f"not a UDP address service: {key}")
        self.ctx = ctx
        self.key = key
        self.options = options
        self.vip: tuple[IPAddress, int] = (key.addr, key.port)
        self.flows: dict[tuple[str, int], _UdpFlow] = {}
        self.sock = listening_socket(key.addr, key.port, socket.SOCK_DGRAM)
        self.fd = self.sock.fileno()
        ctx.loop.add_reader(self.fd, self._on_readable)

    def close(self) -> None:
        """Stop relaying: close the service socket and every flow's socket."""
        for entry in list(self.flows.values()):
            entry.close()
        self.ctx.loop.remove_reader(self.fd)
        self.sock.close()

    def _on_readable(self) -> None:
        ctx = self.ctx
        for _ in range(RECV_BATCH):
            try:
                data, addr = self.sock.recvfrom(DATAGRAM_MAX)
            except BlockingIOError:
                return
            except OSError as exc:
                ctx.log(
                    Outcome.UDP_RECV_FAILED,
                    vs=f"{self.vip[0]}:{self.vip[1]}",
                    error=errno_name(exc),
                )
                return
            client_addr = (addr[0], addr[1])
            now = ctx.loop.time()
            entry = self.flows.get(client_addr)
            if entry is None:
                entry = self._open(client_addr, len(data), now)
                if entry is None:
                    continue
                entry.send_up(data, now, first=True)
            else:
                entry.send_up(data, now)

    def _open(self, client_addr: tuple[str, int], nbytes: int, now: float) -> _UdpFlow | None:
        ctx = self.ctx
        vs = f"{self.vip[0]}:{self.vip[1]}"
        if len(ctx.connections) >= ctx.max_connections:
            ctx.log(Outcome.REFUSED_LIMIT, vs=vs, limit=ctx.max_connections)
            return None
        flow = ctx.table.open_flow(
            self.key, (parse_addr(client_addr[0]), client_addr[1]), now=now, nbytes=nbytes
        )
        if flow is None:
            ctx.log(Outcome.NO_DESTINATION, vs=vs, client=f"{client_addr[0]}:{client_addr[1]}")
            return None
        try:
            entry = _UdpFlow(self, flow, client_addr)
        except OSError as exc:
            ctx.table.flow_event(flow, FlowEvent.CLOSED, now=now)
            ctx.log(Outcome.UDP_SEND_FAILED, vs=vs, error=errno_name(exc))
            return None
        self.flows[client_addr] = entry
        ctx.connections[flow] = entry
        ctx.counters.udp_flows_opened += 1
        return entry
