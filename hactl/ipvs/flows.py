"""The data plane's port onto the connection table: flows, flow events, and the `FlowTable`.

The data plane (`hactl.ipvs.dataplane`) carries real traffic; the engine decides where it goes
and keeps the kernel's accounting. This module is the narrow seam between the two:

* `FlowTable.open_flow()` is the scheduling decision for one new client (the kernel's
  "SYN arrives, no connection entry, schedule"): it returns a `Flow` bound to one real server,
  or None when the service has no destination (the kernel answers ICMP unreachable; a proxy
  resets the accepted socket).
* `FlowTable.flow_event()` reports what the sockets did (`FlowEvent`): accept, backend
  established, data in each direction, half-close, reset, close. An adapter turns these into
  the per-direction packets of spec/ipvs.md §9.2, so ActiveConn/InActConn, persistence
  templates, quiesce and removal behave as in the kernel.
* `FlowTable.pop_closed_flows()` hands back flows the table has ended on its own (the entry
  expired, or its destination was removed with `expire_nodest_conn = 1`). The data plane then
  closes both sockets of each.

Invariants: a `Flow` is owned by the table that opened it; after `FlowEvent.CLOSED` the data
plane reports nothing more about it, and events about a flow the table already ended are
ignored by the table (they are not errors: sockets and timers race).

`EngineFlowTable` is the adapter over `hactl.ipvs.engine.IpvsEngine`: it synthesises the
per-direction packets of spec/ipvs.md §9.2 from flow events. Pure like the engine: no sockets,
no asyncio, no clock, no logging.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol

from hactl.ipvs import proto as P
from hactl.ipvs.engine import DIR_IN, DIR_OUT, Action, EngineOptions, IpvsEngine, PacketInfo
from hactl.ipvs.events import ConnExpired, ExpiryReason, IpvsEvent
from hactl.ipvs.model import (
    FwdMethod,
    IPAddress,
    IpProto,
    IpvsSysctl,
    IpvsTimeouts,
    ServiceKey,
    VirtualService,
)

__all__ = [
    "CloseReason",
    "ClosedFlow",
    "Flow",
    "FlowEvent",
    "FlowTable",
]


class FlowEvent(enum.Enum):
    """What the sockets of one flow did, in the order the data plane observed it.

    TCP mapping (spec/ipvs.md §9.2): ACCEPTED = client SYN (INPUT syn);
    BACKEND_ESTABLISHED = the real server's SYN-ACK (OUTPUT syn) and the client's handshake
    ACK; CLIENT_DATA / SERVER_DATA = INPUT / OUTPUT ack carrying `nbytes` of payload;
    CLIENT_FIN / SERVER_FIN = a FIN in that direction, carrying in `nbytes` the payload not yet
    reported by a DATA event (as a FIN segment may); CLIENT_RST / SERVER_RST = a reset from
    that side (also used for "the real server refused the connection"); CLOSED = the data plane
    has closed both sockets and will report nothing more.
    UDP uses CLIENT_DATA / SERVER_DATA (one datagram each) and CLOSED.
    """

    ACCEPTED = "accepted"
    BACKEND_ESTABLISHED = "backend_established"
    CLIENT_DATA = "client_data"
    SERVER_DATA = "server_data"
    CLIENT_FIN = "client_fin"
    SERVER_FIN = "server_fin"
    CLIENT_RST = "client_rst"
    SERVER_RST = "server_rst"
    CLOSED = "closed"


class CloseReason(enum.StrEnum):
    """Why the table ended a flow on its own (a stable label for logs and counters)."""

    EXPIRED = "expired"  # the connection entry's timer ran out (spec §3.5)
    DEST_REMOVED = "dest_removed"  # destination deleted with expire_nodest_conn = 1 (spec §5.2)
    SERVICE_REMOVED = "service_removed"  # the virtual service itself is gone
    REUSED = "reused"  # a new connection reused the client's ports (spec §5.3)
    DEFENSE = "defense"  # dropped by the drop_entry defense (spec §7.1)
    SYNC = "sync"  # replaced by a sync message naming another real server (spec §1.10)


@dataclass(slots=True, eq=False, kw_only=True)
class Flow:
    """One proxied client connection (TCP) or client address (UDP), bound to a real server.

    Compared and hashed by identity: two flows are the same only if they are the same object.
    `dest` is where the data plane connects: the destination's address and port (the virtual
    port when the destination's port is 0, spec/ipvs.md §6.0). `fwd` is the destination's
    configured forwarding method; the data plane forwards every method as a proxy would (NAT
    semantics) and only reads it to warn. `handle` belongs to the table (for the engine
    adapter: its connection entry) and is opaque to the data plane.
    """

    service: ServiceKey
    protocol: IpProto
    client: tuple[IPAddress, int]
    vip: tuple[IPAddress, int]
    dest: tuple[IPAddress, int]
    fwd: FwdMethod = FwdMethod.MASQ
    handle: object = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ClosedFlow:
    """A flow the table has ended on its own, and why."""

    flow: Flow
    reason: CloseReason


class FlowTable(Protocol):
    """The connection table as the data plane sees it (implemented over the engine, or faked).

    Every time-dependent method takes `now`: monotonic seconds on the event loop's clock, the
    same clock the table's own timers use.
    """

    def open_flow(
        self, service: ServiceKey, client: tuple[IPAddress, int], *, now: float, nbytes: int = 0
    ) -> Flow | None:
        """Schedule a new client of `service`; `nbytes` = payload of the opening packet (UDP).

        Returns the new flow, bound to the real server the scheduler (or a persistence
        template) picked, or None when no destination is available. Opening a flow creates
        the connection entry; it is counted in the service's statistics.
        """
        ...

    def flow_event(self, flow: Flow, event: FlowEvent, nbytes: int = 0, *, now: float) -> None:
        """Feed what the sockets of `flow` did; `nbytes` is the payload of a DATA or FIN event.

        Never raises for a flow the table has already ended; such events are ignored.
        """
        ...

    def pop_closed_flows(self) -> list[ClosedFlow]:
        """The flows the table ended on its own since the last call (oldest first)."""
        ...

    def next_deadline(self) -> float | None:
        """The absolute time the table next needs `handle_timer`, or None."""
        ...

    def handle_timer(self, *, now: float) -> None:
        """Run the table's timers that are due at `now` (expiry may end flows)."""
        ...


_REASONS = {
    ExpiryReason.TIMEOUT: CloseReason.EXPIRED,
    ExpiryReason.NODEST: CloseReason.DEST_REMOVED,
    ExpiryReason.REUSE: CloseReason.REUSED,
    ExpiryReason.DEFENSE: CloseReason.DEFENSE,
    ExpiryReason.SYNC: CloseReason.SYNC,
}

# event name -> (direction, TCP flags) of the packets it becomes; DATA and FIN packets carry
# the payload length. Keyed by member name: Enum.__hash__ is Python code, str hashes are cached.
_TCP_PACKETS: dict[str, tuple[tuple[int, int], ...]] = {
    FlowEvent.ACCEPTED.name: (),  # the SYN was the scheduling packet of open_flow
    # The real server's SYN-ACK, then the client's handshake ACK (the proxy completed the
    # client's handshake before it could connect; the order the kernel would see is this).
    FlowEvent.BACKEND_ESTABLISHED.name: ((DIR_OUT, P.TH_SYN | P.TH_ACK), (DIR_IN, P.TH_ACK)),
    FlowEvent.CLIENT_DATA.name: ((DIR_IN, P.TH_ACK),),
    FlowEvent.SERVER_DATA.name: ((DIR_OUT, P.TH_ACK),),
    FlowEvent.CLIENT_FIN.name: ((DIR_IN, P.TH_FIN | P.TH_ACK),),
    FlowEvent.SERVER_FIN.name: ((DIR_OUT, P.TH_FIN | P.TH_ACK),),
    FlowEvent.CLIENT_RST.name: ((DIR_IN, P.TH_RST),),
    FlowEvent.SERVER_RST.name: ((DIR_OUT, P.TH_RST),),
    FlowEvent.CLOSED.name: (),  # the entry lives on in its state until its timer ends it
}
_UDP_PACKETS: dict[str, tuple[tuple[int, int], ...]] = {
    FlowEvent.CLIENT_DATA.name: ((DIR_IN, 0),),
    FlowEvent.SERVER_DATA.name: ((DIR_OUT, 0),),
}


_Plan = dict[str, tuple[tuple[int, int], ...]]  # event name -> its packets, only if any
_Head = tuple[int, int, IPAddress, int, IPAddress, int]  # the fixed fields of a flow's packets


def _packet_plan(packets: _Plan, *, input_only: bool) -> _Plan:
    """The events that feed packets, for NAT flows or (input_only) DR/TUN flows."""
    plan = {}
    for name, pkts in packets.items():
        kept = tuple(p for p in pkts if not (input_only and p[0] == DIR_OUT))
        if kept:
            plan[name] = kept
    return plan


# (protocol is TCP, forwarded as NAT) -> the plan a flow keeps for its whole life, so an event
# costs one lookup: no per-event test of the protocol or the forwarding method.
_PLANS: dict[tuple[bool, bool], _Plan] = {
    (tcp, masq): _packet_plan(_TCP_PACKETS if tcp else _UDP_PACKETS, input_only=not masq)
    for tcp in (True, False)
    for masq in (True, False)
}
_CLOSED: Final = FlowEvent.CLOSED  # a module global reads faster than an enum member
_CHUNK: Final = P.SCTP_CHUNK_DATA  # PacketInfo's default sctp_chunk
# Packets and flows are built per socket event, so they are built the cheap way: a named
# tuple from a plain tuple (keyword construction costs about four times as much), and a Flow
# without its keyword-only __init__ (a dict of keywords per call; it only stores the fields).
_new_tuple = tuple.__new__
_new_object = object.__new__


class EngineFlowTable:
    """`FlowTable` over the embedded engine: flow events become the packets of spec §9.2.

    * `open_flow` feeds the client's SYN (UDP: its first datagram, `nbytes` long)
      as an INPUT packet; a FORWARD verdict opens the flow towards the verdict's real server,
      anything else (REJECT: no destination; DROP; PASS) refuses it.
    * NAT (MASQ) destinations see both directions, as a kernel NAT director does. For DR and
      TUN destinations the engine is fed INPUT packets only, so its entries carry NOOUTPUT and
      follow the INPUT_ONLY state table, exactly as on a kernel DR/TUN director (whose
      counters, timeouts and synced flags hactl then matches), although the proxy itself
      forwards such flows like NAT.
    * A DATA event carries the bytes since the previous one (the data plane coalesces them);
      it is fed as one packet whose length is that byte count. A FIN event's bytes ride on
      the FIN packet.
    * The engine must be built with `EngineOptions(report_expiry=True)`: its `ConnExpired`
      events are how flows end on their own. The adapter is then the consumer of the
      engine's `pop_events()`; every other event is kept for `pop_engine_events()`.
    """

    def __init__(self, engine: IpvsEngine) -> None:
        self.engine = engine
        # engine conn handle -> (live flow, its packet plan, the packet head: family,
        # protocol, client address and port, virtual address and port)
        self._flows: dict[object, tuple[Flow, _Plan, _Head]] = {}
        self._closed: list[ClosedFlow] = []
        self._other_events: list[IpvsEvent] = []

    @classmethod
    def for_services(
        cls,
        services: Iterable[VirtualService],
        *,
        now: float = 0.0,
        sysctl: IpvsSysctl | None = None,
        timeouts: IpvsTimeouts | None = None,
        rng: random.Random | None = None,
    ) -> EngineFlowTable:
        """A table over a new engine (expiry reported) holding `services`."""
        engine = IpvsEngine(
            rng=rng or random.Random(),
            sysctl=sysctl,
            timeouts=timeouts,
            options=EngineOptions(report_expiry=True),
        )
        for svc in services:
            engine.add_service(svc, now=now)
        return cls(engine)

    def open_flow(
        self, service: ServiceKey, client: tuple[IPAddress, int], *, now: float, nbytes: int = 0
    ) -> Flow | None:
        vaddr = service.addr
        if vaddr is None:
            return None
        protocol = service.protocol
        tcp = protocol == IpProto.TCP
        head: _Head = (service.family, int(protocol), client[0], client[1], vaddr, service.port)
        verdict = self.engine.receive_packet(
            _new_tuple(PacketInfo, (*head, DIR_IN, P.TH_SYN if tcp else 0, _CHUNK, nbytes, 0)),
            now=now,
        )
        conn = verdict.conn
        daddr = verdict.daddr
        if verdict.action != Action.FORWARD or conn is None or daddr is None:
            return None
        fwd = verdict.fwd
        flow = _new_object(Flow)
        flow.service = service
        flow.protocol = protocol
        flow.client = client
        flow.vip = (vaddr, service.port)
        flow.dest = (daddr, verdict.dport or service.port)
        flow.fwd = fwd
        flow.handle = conn
        self._flows[conn] = (flow, _PLANS[tcp, fwd == FwdMethod.MASQ], head)
        return flow

    def flow_event(self, flow: Flow, event: FlowEvent, nbytes: int = 0, *, now: float) -> None:
        live = self._flows.get(flow.handle)
        if live is None or live[0] is not flow:
            return  # ended by the engine (or closed already): ignored, as the port requires
        packets = live[1].get(event._name_)
        if packets is None:
            if event is _CLOSED:
                del self._flows[flow.handle]
            return  # no packet for this event (ACCEPTED, CLOSED, TCP events of a UDP flow)
        fam, pro, ca, cp, va, vp = live[2]
        handle = flow.handle  # this table's engine entry (see open_flow)
        receive = self.engine.receive_conn_packet
        for d, fl in packets:
            receive(
                handle,  # type: ignore[arg-type]
                _new_tuple(PacketInfo, (fam, pro, ca, cp, va, vp, d, fl, _CHUNK, nbytes, 0)),
                now=now,
            )
        # Engine events are collected when they are asked for (pop_closed_flows, on the data
        # plane's tick), not after every packet.

    def _drain(self) -> None:
        for event in self.engine.pop_events():
            if isinstance(event, ConnExpired):
                live = self._flows.pop(event.handle, None)
                if live is not None:
                    self._closed.append(ClosedFlow(live[0], _REASONS[event.reason]))
            else:
                self._other_events.append(event)

    def pop_closed_flows(self) -> list[ClosedFlow]:
        self._drain()
        closed, self._closed = self._closed, []
        return closed

    def pop_engine_events(self) -> list[IpvsEvent]:
        """The engine's events other than ConnExpired (sync decisions...), oldest first."""
        self._drain()
        events, self._other_events = self._other_events, []
        return events

    def next_deadline(self) -> float | None:
        return self.engine.next_deadline()

    def handle_timer(self, *, now: float) -> None:
        self.engine.handle_timer(now=now)
        self._drain()
