"""VrrpService: the asyncio shell around the VRRP routers.

It does what a shell does (STYLE §8.4) and nothing else: receive, feed the core, drain its
events, carry them out through ports, re-arm one deadline.

* One channel per (interface, family) (`socket.RawChannelFactory`, or the UDP development
  transport); inbound datagrams are demultiplexed by (interface, family, VRID) and decoded
  with the instance's receive policy. Decode failures become `AdvertisementDropped` facts
  through the router, so every rejection is counted per reason.
* One loop waits for the next datagram or tracking result *or* the earliest router
  deadline, takes `now` from the clock, feeds the routers and applies their events in order
  (advert first, then addresses, then announcements, then notifies).
* Tracked interfaces and files are polled; vrrp_scripts run in a `ScriptRunner`.
* Leaving always runs (finally): every router shuts down (priority-0 advert when master),
  the VIPs are removed, channels closed, VMAC macvlans and firewall tables deleted, STOP
  notifies given their 1 s.
* Starting removes VIPs a crashed previous run left behind (the routers ask for it), and
  the firewall tables it left (`FirewallPort.reset`).
* Accept mode off (`no_accept`, not owner): the VIPs are blocked in the firewall before
  they are added and unblocked after they are removed (keepalived's order).
* `use_vmac`: the macvlan is created before the instance's channel opens and deleted after
  it closes; the VIPs, GARPs and (multicast) adverts use it (`VrrpInstance.vip_interface`,
  `advert_interface`).

Must not import: pyroute2 (ports are injected), the configuration front end.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Literal

import structlog

from hactl.clock import Clock, LoopClock
from hactl.errors import HactlError, KernelError, NotSupported, VrrpDecodeError
from hactl.net.ports import AddressPort, LinkCache, NeighbourPort
from hactl.vrrp.events import (
    AddAddresses,
    AddRoutes,
    AdvertisementDropped,
    AnnounceAddresses,
    GroupStateChanged,
    MasterReceivedLowerPriority,
    PriorityChanged,
    RemoveAddresses,
    RemoveRoutes,
    SendAdvertisement,
    SplitBrainDetected,
    StateChanged,
    VrrpEvent,
    VrrpState,
)
from hactl.vrrp.firewall import FirewallPort
from hactl.vrrp.model import AuthType, Family, IPAddress, Route, Rule, VrrpConfig, VrrpInstance
from hactl.vrrp.notify import Notifier
from hactl.vrrp.packet import (
    IPPROTO_AH,
    MCAST_GROUP4,
    MCAST_GROUP6,
    AhParams,
    decode,
    decode_ipv4,
    encode,
    encode_ipv4,
)
from hactl.vrrp.router import (
    RouterStatus,
    SyncGroupCore,
    TrackKind,
    VirtualRouter,
)
from hactl.vrrp.socket import Channel, ChannelFactory, Inbound
from hactl.vrrp.timerfd import TimerFd
from hactl.vrrp.track import ScriptRunner, ScriptStateChanged, read_track_file
from hactl.vrrp.vmac import VmacPort, vmac_address

__all__ = ["ServiceStatus", "VrrpService"]


_ChannelKey = tuple[str, Family]


class _Shutdown(Exception):
    """Raised by the shutdown task to end the service's TaskGroup."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceStatus:
    routers: tuple[RouterStatus, ...]
    unknown_vrid: int
    send_errors: int
    address_errors: int
    firewall_errors: int = 0


@dataclass(slots=True)
class _Binding:
    router: VirtualRouter
    channel: Channel
    ident: int = 0


class VrrpService:
    """Runs every VRRP instance of a `VrrpConfig`.

    Args:
        config: the VRRP slice of the configuration.
        addresses: VIP add/remove and link queries.
        neighbours: gratuitous ARP / unsolicited NA sender.
        channels: the transport (raw sockets, or UDP for development).
        clock: where `now` comes from.
        notifier: notify scripts and FIFO; None for none.
        on_state_changed: called with (instance name, new state) after each transition has
            been carried out (the director follows mastership with it instead of polling);
            it must not block or raise.
        firewall: drop rules for `no_accept` and the VMAC IGMP redirect; None refuses
            instances that need it.
        vmacs: creates the `use_vmac` macvlans; None refuses instances that need it.

    Raises:
        NotSupported: an instance needs a firewall or a VMAC port that was not given, or
            asks for `use_vmac` over IPv6 (not implemented).
    """

    def __init__(
        self,
        config: VrrpConfig,
        *,
        addresses: AddressPort,
        neighbours: NeighbourPort,
        channels: ChannelFactory,
        clock: Clock,
        notifier: Notifier | None = None,
        link_poll_interval: float = 0.2,
        file_poll_interval: float = 0.5,
        on_state_changed: Callable[[str, VrrpState], None] | None = None,
        firewall: FirewallPort | None = None,
        vmacs: VmacPort | None = None,
    ) -> None:
        self._firewall = firewall
        self._vmac_port = vmacs
        self._check_supported(config)
        self.config = config
        self._addresses = addresses
        self._neighbours = neighbours
        self._channel_factory = channels
        self._clock = clock
        self._notifier = notifier or Notifier()
        self._link_poll_interval = link_poll_interval
        self._file_poll_interval = file_poll_interval
        self._on_state_changed = on_state_changed
        self._log = structlog.get_logger("hactl.vrrp")
        self.routers: dict[str, VirtualRouter] = {}
        self.groups: list[SyncGroupCore] = []
        self._channels: dict[_ChannelKey, Channel] = {}
        self._opened_flags: dict[_ChannelKey, tuple[bool, bool]] = {}
        self._leaving = False
        self._bindings: dict[tuple[str, Family, int], _Binding] = {}
        self._own: dict[_ChannelKey, set[IPAddress]] = {}
        self._inbox: list[tuple[_ChannelKey, Inbound] | ScriptStateChanged] = []
        self._ifindex: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._fed_at = float("-inf")  # the latest `now` the loop gave the routers
        self._timer: TimerFd | Literal[False] | None = None  # False: none to be had
        self._counters: Counter[str] = Counter()
        self._background: set[asyncio.Task[None]] = set()
        self._tg: asyncio.TaskGroup | None = None
        self._blocked: dict[str, set[IPAddress]] = {}  # instance -> addresses in the firewall
        self._vmacs: dict[str, tuple[str, str]] = {}  # macvlan -> (base, MAC), as created
        self._scripts_task: asyncio.Task[None] | None = None
        self._links_task: asyncio.Task[None] | None = None
        self._files_task: asyncio.Task[None] | None = None
        self.started = asyncio.Event()

    # ------------------------------------------------------------------ public

    def status(self) -> ServiceStatus:
        return ServiceStatus(
            routers=tuple(r.status() for r in self.routers.values()),
            unknown_vrid=self._counters["unknown_vrid"],
            send_errors=self._counters["send_errors"],
            address_errors=self._counters["address_errors"],
            firewall_errors=self._counters["firewall_errors"],
        )

    def _check_supported(self, config: VrrpConfig) -> None:
        # refuse rather than pretend: an instance whose traffic rules or macvlan cannot be
        # installed must not run as if they were
        for inst in config.instances:
            if not inst.accepts and self._firewall is None:
                raise NotSupported(
                    "no_accept", errno.EOPNOTSUPP, f"{inst.name}: no_accept needs a firewall port"
                )
            if inst.use_vmac and inst.family is Family.INET6:
                raise NotSupported(
                    "use_vmac",
                    errno.EOPNOTSUPP,
                    f"{inst.name}: use_vmac over IPv6 is not supported",
                )
            if inst.use_vmac and self._vmac_port is None:
                raise NotSupported(
                    "use_vmac", errno.EOPNOTSUPP, f"{inst.name}: use_vmac needs a VMAC port"
                )

    async def run(self, *, shutdown_trigger: Callable[[], Awaitable[Any]]) -> None:
        """Run until `shutdown_trigger` returns (or the task is cancelled), then leave.

        Raises:
            KernelError / OSError: setup failed (no address on an interface, no raw socket).
        """
        try:
            await self._setup()
            now = self._clock.now()
            for router in self.routers.values():
                router.start(now=now)
            await self._drain()
            self.started.set()
            try:
                async with asyncio.TaskGroup() as tg:
                    self._tg = tg
                    tg.create_task(self._loop(), name="vrrp loop")
                    tg.create_task(self._until(shutdown_trigger), name="vrrp shutdown")
                    self._start_trackers(scripts_changed=True)
            except* _Shutdown:
                pass
        finally:
            self._tg = None
            await self._leave()

    def _start_trackers(self, *, scripts_changed: bool) -> None:
        """Start (or, for changed vrrp_scripts, restart) the tracking tasks the current
        configuration needs; the pollers read the tracked set on every round."""
        tg = self._tg
        if tg is None:
            return
        if scripts_changed and self._scripts_task is not None:
            self._scripts_task.cancel()
            self._scripts_task = None
        if self.config.scripts and self._scripts_task is None:
            runner = ScriptRunner(
                self.config.scripts,
                clock=self._clock,
                emit=self._script_changed,
                default_user=self.config.script_user,
            )
            self._scripts_task = tg.create_task(runner.run(), name="vrrp scripts")
        if self._links_task is None and self._tracked_links():
            self._links_task = tg.create_task(self._poll_links(), name="vrrp links")
        if self._files_task is None and self._tracked_files():
            self._files_task = tg.create_task(self._poll_files(), name="vrrp files")

    async def apply(self, config: VrrpConfig, *, now: float) -> None:
        """Take a new VRRP slice while running, keyed by instance name (STYLE §8.4 reload).

        * unchanged instances: nothing happens;
        * changed, same (interface, family, VRID, source): `VirtualRouter.apply` keeps the
          state and timers (no transition, so no VIP move);
        * changed identity: the old router leaves as on shutdown (priority-0 advert when
          master, RFC 5798 §6.4.3) and a new one starts, as do added instances;
        * removed instances leave as on shutdown; the others are untouched;
        * sync groups are rebuilt by name around the same routers, keeping their states.

        Raises:
            NotSupported: an instance needs a port this service was not given (nothing is
                changed).
            KernelError: an added instance's interface has no usable address (nothing is
                changed).
        """
        self._check_supported(config)
        old_config = self.config
        if config == old_config:
            return
        self._fed_at = max(self._fed_at, now)
        if not self.started.is_set() or self._leaving:
            # not running (yet, or any more): setup reads the slice, leaving ignores it
            self.config = config
            return
        wanted = {i.name: i for i in config.instances}
        weights = {s.name: s.weight for s in config.scripts}
        in_group = {m: g for g in config.sync_groups for m in g.members}
        leaving = [
            r
            for name, r in self.routers.items()
            if name not in wanted or not r.same_identity(wanted[name])
        ]
        # the only step that can fail (an interface without an address) comes first, so a
        # failed apply changes nothing
        staying = {r.name for r in self.routers.values() if r not in leaving}
        primaries = {
            inst.name: await self._primary_address(inst)
            for inst in config.instances
            if inst.name not in staying
        }
        for core in self.groups:
            core.dissolve()
        self.groups = []
        for router in leaving:
            inst = router.config
            del self.routers[inst.name]
            router.shutdown(now=now)
            await self._drain_router(router)  # its priority-0 advert still needs the binding
            self._bindings.pop((inst.advert_interface, inst.family, inst.vrid), None)
            self._blocked.pop(inst.name, None)
        self.config = config
        for inst in config.instances:
            if inst.name not in self.routers:
                await self._add_vmac(inst)
        added: list[VirtualRouter] = []
        for inst in config.instances:
            group = in_group.get(inst.name)
            tracking_weight = group is None or group.sync_group_tracking_weight
            if inst.name in self.routers:
                continue
            primary = primaries[inst.name]
            router = VirtualRouter(
                inst,
                primary_address=primary,
                tracking_weight=tracking_weight,
                script_weights=weights,
            )
            key: _ChannelKey = (inst.advert_interface, inst.family)
            channel = self._channels.get(key)
            if channel is None:
                channel = self._open_channel(inst, primary)
                self._channels[key] = channel
            self._bindings[(inst.advert_interface, inst.family, inst.vrid)] = _Binding(
                router, channel
            )
            self.routers[inst.name] = router
            added.append(router)
        self._refresh_channels()
        await self._remove_vmacs(keep={i.vmac_interface for i in config.instances if i.use_vmac})
        # keep the configuration order (status, drain order)
        self.routers = {i.name: self.routers[i.name] for i in config.instances}
        self._own = {}
        for router in self.routers.values():
            key = (router.config.advert_interface, router.config.family)
            self._own.setdefault(key, set()).add(router.primary_address)
        for group_config in config.sync_groups:
            members = [self.routers[m] for m in group_config.members]
            self.groups.append(SyncGroupCore(group_config, members))
        # kept routers take their new settings inside their new groups, so a fault the
        # reload causes pulls the group along (spec §6.4)
        fresh = {id(r) for r in added}
        for inst in config.instances:
            group = in_group.get(inst.name)
            kept = self.routers[inst.name]
            if id(kept) not in fresh:
                kept.apply(
                    inst,
                    now=now,
                    tracking_weight=group is None or group.sync_group_tracking_weight,
                    script_weights=weights,
                )
                if kept.state is VrrpState.MASTER:
                    # accept mode changed on a master: its VIPs stay, the rules follow
                    vips = tuple(v.ip for v in inst.vips)
                    if inst.accepts:
                        await self._unblock(inst.name, vips)
                    else:
                        await self._block(inst.name, vips)
        init_fail = {s.name for s in config.scripts if s.init_fail}
        for router in added:
            for kind, name in router.tracks():
                if kind is TrackKind.SCRIPT and name in init_fail:
                    router.set_track(kind, name, False, now=now)
        await self._poll_links_once(now=now)
        self._poll_files_once(now=now)
        for router in added:
            router.start(now=now)
        self._start_trackers(scripts_changed=config.scripts != old_config.scripts)
        await self._drain()
        self._wake.set()  # deadlines moved: the loop re-arms

    async def _drain_router(self, router: VirtualRouter) -> None:
        for event in router.pop_events():
            await self._apply(router, event)

    # ------------------------------------------------------------------ setup

    async def _setup(self) -> None:
        weights = {s.name: s.weight for s in self.config.scripts}
        in_group = {m: g for g in self.config.sync_groups for m in g.members}
        for inst in self.config.instances:
            group = in_group.get(inst.name)
            primary = await self._primary_address(inst)
            router = VirtualRouter(
                inst,
                primary_address=primary,
                tracking_weight=group is None or group.sync_group_tracking_weight,
                script_weights=weights,
            )
            self.routers[inst.name] = router
            key: _ChannelKey = (inst.advert_interface, inst.family)
            self._own.setdefault(key, set()).add(primary)
        for group_config in self.config.sync_groups:
            members = [self.routers[m] for m in group_config.members]
            self.groups.append(SyncGroupCore(group_config, members))
        # initial tracking state: init_fail scripts start failed
        init_fail = {s.name for s in self.config.scripts if s.init_fail}
        now = self._clock.now()
        for router in self.routers.values():
            for kind, name in router.tracks():
                if kind is TrackKind.SCRIPT and name in init_fail:
                    router.set_track(kind, name, False, now=now)
        await self._poll_links_once(now=now)
        self._poll_files_once(now=now)
        await self._reset_firewall()
        for router in self.routers.values():
            await self._add_vmac(router.config)
        for router in self.routers.values():
            inst = router.config
            key = (inst.advert_interface, inst.family)
            channel = self._channels.get(key)
            if channel is None:
                channel = self._open_channel(inst, router.primary_address)
                self._channels[key] = channel
            binding_key = (inst.advert_interface, inst.family, inst.vrid)
            if binding_key in self._bindings:
                raise HactlError(f"{inst.name}: VRID {inst.vrid} used twice on {inst.interface}")
            self._bindings[binding_key] = _Binding(router, channel)

    def _channel_flags(self, key: _ChannelKey) -> tuple[bool, bool]:
        """(multicast, ah) the instances on one (interface, family) need from its channel."""
        same = [i for i in self.config.instances if (i.advert_interface, i.family) == key]
        return any(not i.unicast for i in same), any(i.auth_type is AuthType.AH for i in same)

    def _open_channel(self, inst: VrrpInstance, source: IPAddress) -> Channel:
        key: _ChannelKey = (inst.advert_interface, inst.family)
        multicast, ah = self._channel_flags(key)
        self._opened_flags[key] = (multicast, ah)
        ifindex = self._ifindex.get(inst.advert_interface, 0)
        return self._channel_factory.open(
            interface=inst.advert_interface,
            ifindex=ifindex,
            family=inst.family,
            source=source,
            multicast=multicast,
            ah=ah,
            on_receive=lambda inbound: self._received(key, inbound),
        )

    def _refresh_channels(self) -> None:
        """After a reload: close the channels no instance uses any more, and reopen those
        whose instances now need multicast membership or AH that they were not opened with
        (the bindings move to the new channel; router state is untouched)."""
        for key, channel in list(self._channels.items()):
            users = [b for k, b in self._bindings.items() if (k[0], k[1]) == key]
            if not users:
                with contextlib.suppress(OSError):
                    channel.close()
                del self._channels[key]
                self._opened_flags.pop(key, None)
                continue
            if self._channel_flags(key) == self._opened_flags.get(key):
                continue
            first = users[0].router
            with contextlib.suppress(OSError):
                channel.close()  # first: the new one binds the same address and port
            del self._channels[key]
            fresh = self._open_channel(first.config, first.primary_address)
            self._channels[key] = fresh
            for binding in users:
                binding.channel = fresh

    async def _primary_address(self, inst: VrrpInstance) -> IPAddress:
        if inst.unicast_src_ip is not None:
            with contextlib.suppress(KernelError):
                self._ifindex[inst.interface] = await self._addresses.link_index(inst.interface)
            return inst.unicast_src_ip
        self._ifindex[inst.interface] = await self._addresses.link_index(inst.interface)
        vips = {v.ip for v in (*inst.vips, *inst.excluded_vips)}
        for addr in await self._addresses.list_addresses(inst.interface):
            ip = addr.ip
            if ip in vips:
                continue  # a VIP left by a crashed run is never our source address
            if inst.family is Family.INET and isinstance(ip, IPv4Address):
                return ip
            if inst.family is Family.INET6 and isinstance(ip, IPv6Address) and ip.is_link_local:
                return ip
        raise KernelError(
            "primary_address",
            errno.EADDRNOTAVAIL,
            f"{inst.name}: {inst.interface} has no "
            f"{'IPv4' if inst.family is Family.INET else 'link-local IPv6'} address",
        )

    # ------------------------------------------------------------------ main loop

    async def _until(self, trigger: Callable[[], Awaitable[Any]]) -> None:
        await trigger()
        raise _Shutdown

    async def _loop(self) -> None:
        while True:
            deadlines = [d for r in self.routers.values() if (d := r.next_deadline()) is not None]
            if not self._inbox:
                await self._wait(min(deadlines) if deadlines else None)
            now = self._clock.now()
            inbox, self._inbox = self._inbox, []
            for item in inbox:
                self._feed(item, now=self._arrival(item, now=now))
            self._fed_at = now
            for router in self.routers.values():
                deadline = router.next_deadline()
                if deadline is not None and now >= deadline:
                    router.handle_timer(now=now)
            await self._drain()

    async def _wait(self, deadline: float | None) -> None:
        self._wake.clear()
        if deadline is None:
            await self._wake.wait()
            return
        if deadline <= self._clock.now():
            return
        if isinstance(self._clock, LoopClock):
            # fast path: a kernel timer sets the wake event at the deadline (no tasks). A
            # timerfd fires on time; asyncio's own timers wait in epoll, whose whole
            # milliseconds round every deadline up (timerfd.py), which a takeover pays
            if self._timer is None:
                self._timer = TimerFd.open(self._wake.set) or False
            if self._timer:
                self._timer.arm(deadline)
                try:
                    await self._wake.wait()
                finally:
                    self._timer.disarm()
                return
            handle = asyncio.get_running_loop().call_at(deadline, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                handle.cancel()
            return
        waker = asyncio.ensure_future(self._wake.wait())
        sleeper = asyncio.ensure_future(self._clock.sleep_until(deadline))
        try:
            await asyncio.wait({waker, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waker, sleeper):
                task.cancel()

    def _arrival(
        self, item: tuple[_ChannelKey, Inbound] | ScriptStateChanged, *, now: float
    ) -> float:
        """The `now` an inbox item is fed with. RFC 5798 §6.4.2 resets the Master_Down_Timer
        when the advert is *received*: the kernel's receive time when the channel knows it
        (a loop busy elsewhere would otherwise push the takeover back by its own delay),
        never earlier than what the routers have already seen (their time never goes
        back)."""
        if isinstance(item, tuple) and item[1].received_at is not None:
            return max(self._fed_at, min(now, item[1].received_at))
        return now

    def _received(self, key: _ChannelKey, inbound: Inbound) -> None:
        self._inbox.append((key, inbound))
        self._wake.set()

    def _script_changed(self, event: ScriptStateChanged) -> None:
        self._inbox.append(event)
        self._wake.set()

    def _feed(self, item: tuple[_ChannelKey, Inbound] | ScriptStateChanged, *, now: float) -> None:
        if isinstance(item, ScriptStateChanged):
            for router in self.routers.values():
                if (TrackKind.SCRIPT, item.name) in router.tracks():
                    router.set_track(TrackKind.SCRIPT, item.name, item.ok, now=now)
            return
        key, inbound = item
        if inbound.src in self._own.get(key, ()):
            return  # our own advert looped back
        vrid = _vrid_of(inbound)
        binding = self._bindings.get((key[0], key[1], vrid)) if vrid is not None else None
        if binding is None:
            # spec §4.2 check 0: unknown VRIDs are ignored silently (counted)
            self._counters["unknown_vrid"] += 1
            return
        router = binding.router
        try:
            policy = router.policy_for(inbound.src)
            if inbound.ipv4_datagram:
                received = decode_ipv4(inbound.data, policy=policy)
                router.receive_advertisement(
                    received.advertisement, src=received.src, now=now, ah_seq=received.ah_seq
                )
            else:
                adv = decode(
                    inbound.data,
                    src=inbound.src,
                    dst=inbound.dst,
                    ttl=inbound.ttl,
                    policy=policy,
                )
                router.receive_advertisement(adv, src=inbound.src, now=now)
        except VrrpDecodeError as err:
            router.record_decode_error(err, src=inbound.src)

    # ------------------------------------------------------------------ effects

    async def _drain(self) -> None:
        moved = True
        while moved:
            moved = False
            for router in list(self.routers.values()):
                for event in router.pop_events():
                    moved = True
                    await self._apply(router, event)
            for group in list(self.groups):
                for event in group.pop_events():
                    moved = True
                    await self._apply(None, event)

    async def _apply(self, router: VirtualRouter | None, event: VrrpEvent) -> None:
        log = self._log
        if isinstance(event, SendAdvertisement):
            assert router is not None
            self._send(router, event)
        elif isinstance(event, AddAddresses):
            if not event.accept:
                # RFC 5798 §6.4.3 Accept_Mode off: the drop rule goes in before the VIPs
                await self._block(event.instance, tuple(a.ip for a in event.addresses))
            for address in event.addresses:
                try:
                    await self._addresses.add_address(event.interface, address)
                except (KernelError, OSError) as err:
                    self._counters["address_errors"] += 1
                    log.error(
                        "vrrp.address_failed",
                        op="add",
                        vrid=_vrid(router),
                        instance=event.instance,
                        address=str(address),
                        error=str(err),
                    )
        elif isinstance(event, RemoveAddresses):
            for address in event.addresses:
                try:
                    await self._addresses.remove_address(event.interface, address)
                except (KernelError, OSError) as err:
                    self._counters["address_errors"] += 1
                    log.error(
                        "vrrp.address_failed",
                        op="remove",
                        instance=event.instance,
                        address=str(address),
                        error=str(err),
                    )
            # ... and comes out after they are gone
            await self._unblock(event.instance, tuple(a.ip for a in event.addresses))
        elif isinstance(event, AddRoutes):
            await self._routes(event.instance, event.routes, event.rules, add=True)
        elif isinstance(event, RemoveRoutes):
            await self._routes(event.instance, event.routes, event.rules, add=False)
        elif isinstance(event, AnnounceAddresses):
            self._spawn(self._announce(event))
            # let its first round leave now, before the state change is logged and notified:
            # until the GARPs arrive, clients still send to the old master's MAC
            await asyncio.sleep(0)
        elif isinstance(event, StateChanged):
            log.info(
                "vrrp.state_changed",
                instance=event.instance,
                vrid=_vrid(router),
                old=event.old.name,
                new=event.new.name,
                reason=event.reason,
                priority=event.priority,
            )
            if router is not None:
                self._notifier.instance_state(
                    router.config.notify, event.instance, event.new, event.priority
                )
            if self._on_state_changed is not None:
                self._on_state_changed(event.instance, event.new)
        elif isinstance(event, GroupStateChanged):
            log.info(
                "vrrp.group_state_changed",
                group=event.group,
                new=event.new.name,
                initiator=event.initiator,
            )
            group = next((g for g in self.groups if g.name == event.group), None)
            if group is not None:  # None: a reload removed the group meanwhile
                self._notifier.group_state(group.config.notify, event.group, event.new)
        elif isinstance(event, AdvertisementDropped):
            log.debug(
                "vrrp.advert_dropped",
                instance=event.instance,
                reason=event.reason.value,
                src=str(event.src),
                detail=event.detail,
            )
        elif isinstance(event, SplitBrainDetected):
            log.warning(
                "vrrp.split_brain",
                instance=event.instance,
                src=str(event.src),
                their_priority=event.their_priority,
                our_priority=event.our_priority,
                count=event.count,
            )
        elif isinstance(event, MasterReceivedLowerPriority):
            if router is not None:
                self._notifier.master_rx_lower_priority(
                    router.config.notify, event.instance, event.priority
                )
        elif isinstance(event, PriorityChanged):
            log.info("vrrp.priority_changed", instance=event.instance, old=event.old, new=event.new)

    def _send(self, router: VirtualRouter, event: SendAdvertisement) -> None:
        inst = router.config
        binding = self._bindings[(inst.advert_interface, inst.family, inst.vrid)]
        source = router.primary_address
        if inst.unicast:
            targets: list[IPAddress] = [p.address for p in inst.unicast_peers]
            ttl = inst.unicast_ttl
        else:
            targets = [MCAST_GROUP4 if inst.family is Family.INET else MCAST_GROUP6]
            ttl = 255
        for dst in targets:
            try:
                if binding.channel.ipv4_datagrams:
                    assert isinstance(source, IPv4Address) and isinstance(dst, IPv4Address)
                    binding.ident = binding.ident % 0xFFFF + 1  # never 0 (spec §5.3)
                    ah = None
                    if inst.auth_type is AuthType.AH and event.ah_seq is not None:
                        ah = AhParams(key=inst.auth_key, seq=event.ah_seq, unicast=inst.unicast)
                    data = encode_ipv4(
                        event.advertisement,
                        src=source,
                        dst=dst,
                        ident=binding.ident,
                        ttl=ttl,
                        ah=ah,
                    )
                else:
                    data = encode(event.advertisement, src=source, dst=dst)
                binding.channel.send(data, dst, ttl=ttl)
            except OSError as err:
                self._counters["send_errors"] += 1
                self._log.warning(
                    "vrrp.send_failed", instance=inst.name, dst=str(dst), error=str(err)
                )

    async def _routes(
        self, instance: str, routes: tuple[Route, ...], rules: tuple[Rule, ...], *, add: bool
    ) -> None:
        port = self._addresses
        # add: routes (which may use a VIP as source) then rules; remove: the reverse
        steps: list[tuple[str, Route | Rule]] = (
            [("route", r) for r in routes] + [("rule", r) for r in rules]
            if add
            else [("rule", r) for r in rules] + [("route", r) for r in routes]
        )
        for kind, item in steps:
            try:
                if isinstance(item, Route):
                    await (port.add_route(item) if add else port.remove_route(item))
                else:
                    await (port.add_rule(item) if add else port.remove_rule(item))
            except (KernelError, OSError) as err:
                self._counters["address_errors"] += 1
                self._log.error(
                    "vrrp.route_failed",
                    op="add" if add else "remove",
                    kind=kind,
                    instance=instance,
                    item=str(item),
                    error=str(err),
                )

    async def _announce(self, event: AnnounceAddresses) -> None:
        try:
            await self._neighbours.announce(
                event.interface, event.addresses, repeat=event.repeat, interval=event.interval
            )
        except OSError as err:
            self._log.warning("vrrp.announce_failed", instance=event.instance, error=str(err))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ tracking

    def _tracked_links(self) -> set[str]:
        return {n for r in self.routers.values() for k, n in r.tracks() if k is TrackKind.INTERFACE}

    def _tracked_files(self) -> dict[str, str]:
        return {tf.name: tf.path for inst in self.config.instances for tf in inst.track_files}

    async def _poll_links(self) -> None:
        while True:
            await self._clock.sleep_until(self._clock.now() + self._link_poll_interval)
            await self._poll_links_once(now=self._clock.now())
            await self._drain()

    async def _poll_links_once(self, *, now: float) -> None:
        self._fed_at = max(self._fed_at, now)
        for name in self._tracked_links():
            try:
                up = await self._addresses.link_is_up(name)
            except KernelError as err:
                if err.errno == errno.EBADMSG:
                    continue  # an undecodable reply says nothing: keep the last known state
                up = False  # a missing link is a down link
            for router in self.routers.values():
                if (TrackKind.INTERFACE, name) in router.tracks():
                    router.set_track(TrackKind.INTERFACE, name, up, now=now)

    async def _poll_files(self) -> None:
        while True:
            await self._clock.sleep_until(self._clock.now() + self._file_poll_interval)
            self._poll_files_once(now=self._clock.now())
            await self._drain()

    def _poll_files_once(self, *, now: float) -> None:
        self._fed_at = max(self._fed_at, now)
        for name, path in self._tracked_files().items():
            value = read_track_file(path)
            for router in self.routers.values():
                if (TrackKind.FILE, name) in router.tracks():
                    router.set_track(TrackKind.FILE, name, value, now=now)

    # ------------------------------------------------------------------ leaving

    async def _leave(self) -> None:
        """RFC 5798 §6.4.3 Shutdown for every router; each step attempted (STYLE §8.4)."""
        self._leaving = True
        now = self._clock.now()
        for router in self.routers.values():
            try:
                router.shutdown(now=now)
            except Exception as err:  # pragma: no cover - a bug; keep releasing the rest
                self._log.error("vrrp.shutdown_failed", instance=router.name, error=str(err))
        with contextlib.suppress(Exception):
            await self._drain()
        for task in list(self._background):
            task.cancel()
        for channel in self._channels.values():
            with contextlib.suppress(OSError):
                channel.close()
        self._channels.clear()
        if self._timer:
            self._timer.close()
        self._timer = None
        await self._remove_vmacs(keep=set())
        if self._firewall is not None:
            try:
                await self._firewall.close()
            except (HactlError, OSError) as err:
                self._counters["firewall_errors"] += 1
                self._log.error("vrrp.firewall_failed", op="close", error=str(err))
        await self._notifier.aclose()

    # ------------------------------------------------------------------ firewall, VMAC

    async def _reset_firewall(self) -> None:
        """Delete what a crashed run left. Without `no_accept` instances, a firewall that
        cannot be used (no `nft`, no CAP_NET_ADMIN) is not an error: it is logged, and a
        `use_vmac` instance runs without the IGMP redirect."""
        if self._firewall is None:
            return
        needed = any(not i.accepts for i in self.config.instances)
        try:
            await self._firewall.reset()
        except (HactlError, OSError) as err:
            if needed:
                raise
            self._log.debug("vrrp.firewall_unavailable", error=str(err))

    async def _block(self, instance: str, addresses: tuple[IPAddress, ...]) -> None:
        blocked = self._blocked.setdefault(instance, set())
        new = tuple(a for a in addresses if a not in blocked)
        if not new or self._firewall is None:
            return
        try:
            await self._firewall.block(new)
        except (HactlError, OSError) as err:
            self._counters["firewall_errors"] += 1
            self._log.error("vrrp.firewall_failed", op="block", instance=instance, error=str(err))
            return
        blocked.update(new)
        self._log.info("vrrp.firewall_blocked", instance=instance, addresses=list(map(str, new)))

    async def _unblock(self, instance: str, addresses: tuple[IPAddress, ...]) -> None:
        blocked = self._blocked.get(instance, set())
        gone = tuple(a for a in addresses if a in blocked)
        if not gone or self._firewall is None:
            return
        try:
            await self._firewall.unblock(gone)
        except (HactlError, OSError) as err:
            self._counters["firewall_errors"] += 1
            self._log.error("vrrp.firewall_failed", op="unblock", instance=instance, error=str(err))
            return
        blocked.difference_update(gone)
        self._log.info("vrrp.firewall_unblocked", instance=instance, addresses=list(map(str, gone)))

    async def _add_vmac(self, inst: VrrpInstance) -> None:
        """Create the instance's macvlan (failures raise: the instance cannot run)."""
        if not inst.use_vmac or self._vmac_port is None:
            return
        name = inst.vmac_interface
        wanted = (inst.interface, inst.vmac_mac or vmac_address(inst.vrid, inst.family))
        if self._vmacs.get(name) != wanted:
            # a new link, or one that replaces a macvlan of that name (another base or
            # MAC): whatever was looked up or bound by its name is stale from here on
            self._vmacs.pop(name, None)
            try:
                await self._vmac_port.add_vmac(base=wanted[0], name=name, mac=wanted[1])
            except BaseException:
                self._forget_link(name)  # whatever the port got done, the old link may be gone
                raise
            await self._link_replaced(name)
            self._vmacs[name] = wanted
            self._log.info("vrrp.vmac_added", instance=inst.name, vmac=name, base=inst.interface)
            if self._firewall is not None:
                # best effort, as without a firewall keepalived still runs its VMACs: only
                # the backups' multicast reports would show the virtual MAC to switches
                try:
                    await self._firewall.add_vmac(name, inst.interface)
                except (HactlError, OSError) as err:
                    self._counters["firewall_errors"] += 1
                    self._log.warning(
                        "vrrp.firewall_failed", op="add_vmac", vmac=name, error=str(err)
                    )
        self._ifindex[name] = await self._addresses.link_index(name)

    async def _link_replaced(self, name: str) -> None:
        """Link `name` was created, recreated or deleted: its index is not the one cached
        here or in the ports (their index cache, the announcer's bound socket), and a
        channel bound to it would send and receive on a link that is gone. Forget them;
        channels still in use are reopened on the current link."""
        self._forget_link(name)
        for key in [k for k in self._channels if k[0] == name]:
            with contextlib.suppress(OSError):
                self._channels.pop(key).close()
            self._opened_flags.pop(key, None)
            users = [b for k, b in self._bindings.items() if (k[0], k[1]) == key]
            if users:
                self._ifindex[name] = await self._addresses.link_index(name)
                first = users[0].router
                fresh = self._open_channel(first.config, first.primary_address)
                self._channels[key] = fresh
                for binding in users:
                    binding.channel = fresh

    def _forget_link(self, name: str) -> None:
        self._ifindex.pop(name, None)
        for port in (self._addresses, self._neighbours):
            if isinstance(port, LinkCache):
                port.forget_link(name)

    async def _remove_vmacs(self, *, keep: set[str]) -> None:
        for name, (base, _mac) in list(self._vmacs.items()):
            if name in keep:
                continue
            del self._vmacs[name]
            if self._firewall is not None:
                try:
                    await self._firewall.remove_vmac(name)
                except (HactlError, OSError) as err:
                    self._counters["firewall_errors"] += 1
                    self._log.warning(
                        "vrrp.firewall_failed", op="remove_vmac", vmac=name, error=str(err)
                    )
            try:
                assert self._vmac_port is not None
                await self._vmac_port.remove_vmac(base=base, name=name)
            except (HactlError, OSError) as err:
                self._counters["address_errors"] += 1
                self._log.error("vrrp.vmac_failed", op="remove", vmac=name, error=str(err))
            else:
                self._log.info("vrrp.vmac_removed", vmac=name, base=base)
            await self._link_replaced(name)


def _vrid_of(inbound: Inbound) -> int | None:
    data = inbound.data
    if not inbound.ipv4_datagram:
        return data[1] if len(data) >= 2 else None
    if len(data) < 20:
        return None
    offset = (data[0] & 0x0F) * 4 + (24 if data[9] == IPPROTO_AH else 0)
    return data[offset + 1] if len(data) > offset + 1 else None


def _vrid(router: VirtualRouter | None) -> int | None:
    return router.config.vrid if router is not None else None
