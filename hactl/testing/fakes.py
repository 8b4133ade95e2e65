"""Fakes shipped with the package, so every test tree uses the same ones.

* `InMemoryAddressPort` / `RecordingNeighbourPort`: the `hactl.net.ports` Protocols over
  plain dicts and lists.
* `InMemorySegment`: a `ChannelFactory` whose channels share one broadcast domain in the
  event loop, so whole `VrrpService`s run against a `ManualClock` deterministically.
* `LoopbackWire`: N `VirtualRouter`s on one simulated segment (h11 ConnectionPair,
  aioquic roundtrip style). Adverts go through the real codec (`packet.encode` /
  `decode` with each receiver's policy), so an election test exercises the wire format too.
  Time is a plain float the test moves with `run_until`.

Must not import: pyroute2, socket, structlog.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address

from hactl.errors import LinkNotFound, VrrpDecodeError
from hactl.vrrp.events import (
    AddAddresses,
    RemoveAddresses,
    SendAdvertisement,
    VrrpEvent,
    VrrpState,
)
from hactl.vrrp.model import AuthType, Family, IPAddress, IPInterface, Route, Rule
from hactl.vrrp.packet import (
    MCAST_GROUP4,
    MCAST_GROUP6,
    AhParams,
    decode,
    decode_ipv4,
    encode,
    encode_ipv4,
)
from hactl.vrrp.router import SyncGroupCore, VirtualRouter
from hactl.vrrp.socket import Channel, Inbound, OnReceive

__all__ = ["InMemoryAddressPort", "InMemorySegment", "LoopbackWire", "RecordingNeighbourPort"]


class InMemoryAddressPort:
    """`AddressPort` over a dict of interface -> addresses (insertion ordered)."""

    def __init__(self, links: dict[str, Iterable[IPInterface]] | None = None) -> None:
        self.links: dict[str, list[IPInterface]] = {
            name: list(addrs) for name, addrs in (links or {}).items()
        }
        self.up: dict[str, bool] = dict.fromkeys(self.links, True)
        self.calls: list[tuple[str, str, IPInterface]] = []
        self.routes: list[Route] = []
        self.rules: list[Rule] = []

    def _link(self, interface: str) -> list[IPInterface]:
        try:
            return self.links[interface]
        except KeyError:
            raise LinkNotFound("link", 19, f"no link {interface}") from None

    async def add_address(self, interface: str, address: IPInterface) -> None:
        addrs = self._link(interface)
        self.calls.append(("add", interface, address))
        if address not in addrs:
            addrs.append(address)

    async def remove_address(self, interface: str, address: IPInterface) -> None:
        addrs = self._link(interface)
        self.calls.append(("remove", interface, address))
        if address in addrs:
            addrs.remove(address)

    async def list_addresses(self, interface: str) -> tuple[IPInterface, ...]:
        return tuple(self._link(interface))

    async def primary_address(self, interface: str, family: Family) -> IPAddress | None:
        for addr in self._link(interface):
            if family is Family.INET and isinstance(addr.ip, IPv4Address):
                return addr.ip
            if family is Family.INET6 and isinstance(addr.ip, IPv6Address) and addr.is_link_local:
                return addr.ip
        return None

    async def link_index(self, interface: str) -> int:
        self._link(interface)
        return list(self.links).index(interface) + 1

    async def link_is_up(self, interface: str) -> bool:
        self._link(interface)
        return self.up[interface]

    async def add_route(self, route: Route) -> None:
        if route.interface is not None:
            self._link(route.interface)
        if route not in self.routes:
            self.routes.append(route)

    async def remove_route(self, route: Route) -> None:
        if route in self.routes:
            self.routes.remove(route)

    async def add_rule(self, rule: Rule) -> None:
        if rule not in self.rules:
            self.rules.append(rule)

    async def remove_rule(self, rule: Rule) -> None:
        if rule in self.rules:
            self.rules.remove(rule)


class RecordingNeighbourPort:
    """`NeighbourPort` that records what would have been announced."""

    def __init__(self) -> None:
        self.announced: list[tuple[str, tuple[IPInterface, ...], int]] = []

    async def announce(
        self, interface: str, addresses: tuple[IPInterface, ...], *, repeat: int, interval: float
    ) -> None:
        self.announced.append((interface, addresses, repeat))


class InMemorySegment:
    """`ChannelFactory` for one simulated L2 segment: every channel hears multicast sends
    and the unicast sends addressed to its source; delivery is scheduled on the loop."""

    def __init__(self) -> None:
        self.channels: list[_SegmentChannel] = []
        self.cut: set[IPAddress] = set()

    def open(
        self,
        *,
        interface: str,
        ifindex: int,
        family: Family,
        source: IPAddress,
        multicast: bool,
        ah: bool,
        on_receive: OnReceive,
    ) -> Channel:
        channel = _SegmentChannel(self, source, on_receive)
        self.channels.append(channel)
        return channel

    def detach(self, source: IPAddress) -> None:
        """The node with `source` vanishes from the segment (sends and receives nothing)."""
        self.cut.add(source)

    def attach(self, source: IPAddress) -> None:
        self.cut.discard(source)


class _SegmentChannel:
    ipv4_datagrams = False

    def __init__(self, segment: InMemorySegment, source: IPAddress, on_receive: OnReceive):
        self._segment = segment
        self.source = source
        self._on_receive = on_receive
        self.closed = False

    def send(self, data: bytes, dst: IPAddress, *, ttl: int) -> None:
        if self.closed or self.source in self._segment.cut:
            return
        loop = asyncio.get_running_loop()
        for other in self._segment.channels:
            if other is self or other.closed or other.source in self._segment.cut:
                continue
            if dst.is_multicast or dst == other.source:
                inbound = Inbound(data=data, src=self.source, dst=dst, ttl=ttl, ipv4_datagram=False)
                loop.call_soon(other._on_receive, inbound)

    def close(self) -> None:
        self.closed = True


class LoopbackWire:
    """Routers on one segment, stepped by a float clock; adverts go through the codec."""

    def __init__(self) -> None:
        self.now = 0.0
        self.routers: dict[str, VirtualRouter] = {}
        self.groups: list[SyncGroupCore] = []
        self.log: list[tuple[float, VrrpEvent]] = []
        self.vips: dict[str, set[IPInterface]] = {}
        self._down: set[str] = set()
        self._isolated: set[str] = set()
        self._ident = 0

    def attach(self, *routers: VirtualRouter) -> None:
        for router in routers:
            self.routers[router.name] = router
            self.vips[router.name] = set()

    def add_group(self, group: SyncGroupCore) -> None:
        self.groups.append(group)

    # -------------------------------------------------------------- driving

    def start(self, *names: str) -> None:
        for name in names or tuple(self.routers):
            self._down.discard(name)
            self.routers[name].start(now=self.now)
        self.pump()

    def shutdown(self, name: str) -> None:
        """Graceful stop: the router sends what it sends, then leaves the wire."""
        self.routers[name].shutdown(now=self.now)
        self.pump()
        self._down.add(name)

    def crash(self, name: str) -> None:
        """The router vanishes: nothing is sent, its VIPs stay where they are."""
        self._down.add(name)

    def partition(self, *names: str) -> None:
        """Cut `names` off the segment: they keep running but hear and reach nobody."""
        self._isolated.update(names)

    def heal(self) -> None:
        self._isolated.clear()

    def replace(self, router: VirtualRouter) -> None:
        """A restarted process: a fresh router under the same name, not yet started."""
        self.routers[router.name] = router
        self._down.add(router.name)

    def live(self) -> list[VirtualRouter]:
        return [r for n, r in self.routers.items() if n not in self._down]

    def run_until(self, until: float) -> None:
        """Fire every deadline up to `until`, in time order, delivering adverts at once."""
        while True:
            deadlines = [(d, r.name) for r in self.live() if (d := r.next_deadline()) is not None]
            if not deadlines:
                break
            first = min(deadlines)[0]
            if first > until:
                break
            self.now = max(self.now, first)
            for router in self.live():
                deadline = router.next_deadline()
                if deadline is not None and deadline <= self.now:
                    router.handle_timer(now=self.now)
            self.pump()
        self.now = max(self.now, until)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def pump(self) -> None:
        """Drain every live router's events, delivering adverts until nothing moves."""
        busy = True
        while busy:
            busy = False
            for group in self.groups:
                for event in group.pop_events():
                    self.log.append((self.now, event))
            for router in self.live():
                events = router.pop_events()
                busy = busy or bool(events)
                for event in events:
                    self.log.append((self.now, event))
                    self._carry_out(router, event)

    # -------------------------------------------------------------- queries

    def states(self) -> dict[str, VrrpState]:
        return {name: r.state for name, r in self.routers.items()}

    def holders(self, vip: IPInterface) -> list[str]:
        return sorted(name for name, vips in self.vips.items() if vip in vips)

    def events(self, kind: type, *, instance: str | None = None) -> list[tuple[float, VrrpEvent]]:
        return [
            (t, e)
            for t, e in self.log
            if isinstance(e, kind)
            and (instance is None or getattr(e, "instance", None) == instance)
        ]

    # -------------------------------------------------------------- internals

    def _carry_out(self, sender: VirtualRouter, event: VrrpEvent) -> None:
        if isinstance(event, AddAddresses):
            self.vips[sender.name].update(event.addresses)
        elif isinstance(event, RemoveAddresses):
            self.vips[sender.name].difference_update(event.addresses)
        elif isinstance(event, SendAdvertisement):
            if sender.name in self._isolated:
                return
            for receiver in self.live():
                if receiver is sender or receiver.config.vrid != event.advertisement.vrid:
                    continue
                if receiver.name not in self._isolated:
                    self._deliver(sender, receiver, event)

    def _deliver(
        self, sender: VirtualRouter, receiver: VirtualRouter, event: SendAdvertisement
    ) -> None:
        src = sender.primary_address
        policy = receiver.policy_for(src)
        try:
            if isinstance(src, IPv4Address):
                dst4 = receiver.primary_address if sender.config.unicast else MCAST_GROUP4
                assert isinstance(dst4, IPv4Address)
                self._ident = self._ident % 0xFFFF + 1
                ah = None
                if sender.config.auth_type is AuthType.AH and event.ah_seq is not None:
                    ah = AhParams(
                        key=sender.config.auth_key, seq=event.ah_seq, unicast=sender.config.unicast
                    )
                datagram = encode_ipv4(
                    event.advertisement, src=src, dst=dst4, ident=self._ident, ah=ah
                )
                received = decode_ipv4(datagram, policy=policy)
                receiver.receive_advertisement(
                    received.advertisement, src=src, now=self.now, ah_seq=received.ah_seq
                )
            else:
                dst6 = receiver.primary_address if sender.config.unicast else MCAST_GROUP6
                message = encode(event.advertisement, src=src, dst=dst6)
                adv = decode(message, src=src, dst=dst6, ttl=255, policy=policy)
                receiver.receive_advertisement(adv, src=src, now=self.now)
        except VrrpDecodeError as err:
            receiver.record_decode_error(err, src=src)
