"""The VRRP virtual router: RFC 5798 §6.4 state machine with keepalived 2.2.7's behaviour.

Sans-IO. Inputs are methods (`start`, `receive_advertisement`, `record_decode_error`,
`set_track`, `handle_timer`, `shutdown`), each taking `now` (monotonic seconds); outputs are
pulled with `pop_events()`; `next_deadline()` is absolute.

Rules and invariants:
* States: INIT -> BACKUP | MASTER | FAULT; STOP is final (keepalived's notify-only state).
* In BACKUP exactly one timer runs (Master_Down); in MASTER the advert timer runs, plus the
  optional GARP timers (second batch, lower-priority batch, refresh). INIT, FAULT and STOP
  run no VRRP timer.
* Timer arithmetic follows keepalived: integer microseconds, truncating (spec §6.1), so
  Master_Down_Interval at priority 100, 1 s is exactly 3.609375 s.
* Adverts are only built here; the shell encodes them (`packet.encode`).
* The VIPs (then the virtual routes and rules) are added only after the first MASTER advert
  has been emitted; routes, rules, then VIPs are removed first thing when leaving MASTER
  (spec §6.3 "Gratuitous ARP", RFC 5798 §6.4.3).
* Entering BACKUP from INIT emits RemoveAddresses: addresses a crashed previous run left
  behind are cleaned up (keepalived does the same at start).
* A sync group (`SyncGroup`) moves its members together; it only calls the members' own
  transition methods.
* Bad remote input never raises; misuse (start twice, input after stop) raises StateError.
* No randomness: keepalived's VRRP has none (no jitter), so there is no rng to inject.

Must not import: asyncio, socket, time, pyroute2, structlog.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address

from hactl.errors import StateError, VrrpDecodeError
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
from hactl.vrrp.model import (
    AuthType,
    InitialState,
    IPAddress,
    SyncGroup,
    VrrpInstance,
)
from hactl.vrrp.packet import Advertisement, DropReason, ReceivePolicy

__all__ = [
    "RouterStatus",
    "SyncGroupCore",
    "TrackKind",
    "VirtualRouter",
    "master_down_interval",
    "receive_policy",
    "skew_time",
]

PRIORITY_OWNER = 255
PRIORITY_STOP = 0


class TrackKind(enum.Enum):
    INTERFACE = "interface"
    SCRIPT = "script"
    FILE = "file"


def skew_time(version: int, priority: int, master_adver_int_cs: int) -> float:
    """Skew_Time in seconds, keepalived's integer-microsecond arithmetic (spec §6.1).

    v2: (256 - p) / 256 s regardless of the interval (RFC 3768 §6.1);
    v3: (256 - p) * Master_Adver_Interval / 256 (RFC 5798 §6.1).
    """
    if version == 2:
        return ((256 - priority) * 1_000_000 // 256) / 1e6
    return ((256 - priority) * master_adver_int_cs * 625 // 16) / 1e6


def master_down_interval(
    version: int, priority: int, master_adver_int_cs: int, adverts: int = 3
) -> float:
    """Master_Down_Interval = adverts x Master_Adver_Interval + Skew_Time (RFC 5798 §6.1)."""
    skew_us = round(skew_time(version, priority, master_adver_int_cs) * 1e6)
    return (adverts * master_adver_int_cs * 10_000 + skew_us) / 1e6


def receive_policy(config: VrrpInstance) -> ReceivePolicy:
    """The receive checks an instance applies (spec §4.2) as a codec policy."""
    peers: tuple[tuple[IPAddress, int, int], ...] | None = None
    if config.unicast and config.check_unicast_src:
        peers = tuple((p.address, p.min_ttl, p.max_ttl) for p in config.unicast_peers)
    return ReceivePolicy(
        version=config.version,
        unicast=config.unicast,
        adver_int_cs=round(config.advert_interval * 100),
        auth_type=config.auth_type,
        auth_key=config.auth_key,
        addresses=frozenset(v.ip for v in config.vips),
        unicast_peers=peers,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RouterStatus:
    """A snapshot for the control API and metrics."""

    name: str
    state: VrrpState
    base_priority: int
    effective_priority: int
    master_address: IPAddress | None
    master_priority: int | None
    last_advert_source: IPAddress | None
    last_advert_priority: int | None
    last_advert_at: float | None
    master_adver_int_cs: int
    transitions: int
    became_master: int
    released_master: int
    adverts_sent: int
    adverts_received: int
    priority_zero_sent: int
    priority_zero_received: int
    split_brain: int
    drops: tuple[tuple[str, int], ...]


class VirtualRouter:
    """One VRRP instance.

    Args:
        config: the instance's frozen configuration.
        primary_address: the address adverts are sent from and compared by on ties
            (unicast_src_ip, or the interface's primary IPv4 / link-local IPv6).
        tracking_weight: False forces every track weight to 0 (keepalived does this for
            sync-group members unless `sync_group_tracking_weight`).
        script_weights: the `vrrp_script` weight per script name, used when the
            track_script entry gives none.
    """

    def __init__(
        self,
        config: VrrpInstance,
        *,
        primary_address: IPAddress,
        tracking_weight: bool = True,
        script_weights: dict[str, int] | None = None,
    ) -> None:
        self.config = config
        self.primary_address = primary_address
        self._adver_int_cs = round(config.advert_interval * 100)
        self._policy = receive_policy(config)
        self._relaxed_policy = dataclasses.replace(self._policy, addresses=None)
        self._state = VrrpState.INIT
        self._base_priority = config.priority
        self._effective = config.priority
        self._master_adver_int_cs = self._adver_int_cs
        self._master_down_at: float | None = None
        self._advert_at: float | None = None
        self._garp_at: float | None = None
        self._garp_lower_at: float | None = None
        self._garp_refresh_at: float | None = None
        self._preempt_until: float | None = None
        self._want_master = False
        self._group: SyncGroupCore | None = None
        self._group_fault = False
        self._ah_seq = 0
        self._events: list[VrrpEvent] = []
        self._master_address: IPAddress | None = None
        self._last_advert: tuple[IPAddress, int, float] | None = None
        self._master_priority: int | None = None
        self._counters: Counter[str] = Counter()
        self._drops: Counter[str] = Counter()
        self._tracking_weight = tracking_weight
        self._script_weights = dict(script_weights or {})
        # (kind, name) -> (weight, reverse); weight None on files means "value x weight"
        self._tracks = self._build_tracks(config)
        # current values: interfaces and scripts 1 (up/ok) or 0; files the integer read
        self._values: dict[tuple[TrackKind, str], int] = {
            key: (0 if key[0] is TrackKind.FILE else 1) for key in self._tracks
        }

    def _build_tracks(self, config: VrrpInstance) -> dict[tuple[TrackKind, str], tuple[int, bool]]:
        weights = self._script_weights
        tracks: dict[tuple[TrackKind, str], tuple[int, bool]] = {}
        for ti in config.track_interfaces:
            tracks[(TrackKind.INTERFACE, ti.name)] = (ti.weight, ti.reverse)
        for ts in config.track_scripts:
            weight = ts.weight if ts.weight is not None else weights.get(ts.name, 0)
            tracks[(TrackKind.SCRIPT, ts.name)] = (weight, ts.reverse)
        for tf in config.track_files:
            tracks[(TrackKind.FILE, tf.name)] = (tf.weight, tf.reverse)
        if not config.dont_track_primary:
            tracks.setdefault((TrackKind.INTERFACE, config.interface), (0, False))
        if not self._tracking_weight:
            tracks = {k: (0, rev) for k, (_, rev) in tracks.items()}
        return tracks

    # ------------------------------------------------------------------ queries

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def state(self) -> VrrpState:
        return self._state

    @property
    def effective_priority(self) -> int:
        return self._effective

    @property
    def master_address(self) -> IPAddress | None:
        """The current master's address as this router knows it (itself when MASTER)."""
        return self._master_address

    def policy_for(self, src: IPAddress) -> ReceivePolicy:
        """The receive checks for an advert from `src` (spec §4.2).

        keepalived's `skip_check_adv_addr`: a BACKUP skips the VIP count and list checks for
        repeat adverts from the master it already accepted.
        """
        if (
            self.config.skip_check_adv_addr
            and self._state is VrrpState.BACKUP
            and src == self._master_address
        ):
            return self._relaxed_policy
        return self._policy

    @property
    def master_adver_int_cs(self) -> int:
        return self._master_adver_int_cs

    def status(self) -> RouterStatus:
        c = self._counters
        return RouterStatus(
            name=self.name,
            state=self._state,
            base_priority=self._base_priority,
            effective_priority=self._effective,
            master_address=self._master_address,
            last_advert_source=self._last_advert[0] if self._last_advert else None,
            last_advert_priority=self._last_advert[1] if self._last_advert else None,
            last_advert_at=self._last_advert[2] if self._last_advert else None,
            master_priority=self._master_priority,
            master_adver_int_cs=self._master_adver_int_cs,
            transitions=c["transitions"],
            became_master=c["became_master"],
            released_master=c["released_master"],
            adverts_sent=c["adverts_sent"],
            adverts_received=c["adverts_received"],
            priority_zero_sent=c["priority_zero_sent"],
            priority_zero_received=c["priority_zero_received"],
            split_brain=c["split_brain"],
            drops=tuple(sorted(self._drops.items())),
        )

    def next_deadline(self) -> float | None:
        candidates = [
            t
            for t in (
                self._master_down_at,
                self._advert_at,
                self._garp_at,
                self._garp_lower_at,
                self._garp_refresh_at,
            )
            if t is not None
        ]
        return min(candidates) if candidates else None

    def pop_events(self) -> list[VrrpEvent]:
        events, self._events = self._events, []
        return events

    def skew_time(self) -> float:
        return skew_time(self.config.version, self._effective, self._master_adver_int_cs)

    def master_down_interval(self) -> float:
        return master_down_interval(
            self.config.version,
            self._effective,
            self._master_adver_int_cs,
            self.config.down_timer_adverts,
        )

    # ------------------------------------------------------------------ inputs

    def start(self, *, now: float) -> None:
        """RFC 5798 §6.4.1 Initialize, with keepalived's startup (spec §6.3)."""
        if self._state is not VrrpState.INIT:
            raise StateError(f"{self.name}: start() in state {self._state.name}")
        self._recompute_priority(now=now, announce=False)
        if self._own_fault():
            self._emit_clean_start()
            self._enter_fault(now=now, reason="tracked object down at start")
            return
        if self.config.priority == PRIORITY_OWNER and self.config.state is InitialState.MASTER:
            # spec §6.3: only an owner with `state MASTER` skips the down timer
            self._emit_clean_start()
            self._become_master(now=now, reason="address owner")
            return
        # deviation §10.11: `state MASTER` below 255 waits the full Master_Down_Interval
        self._emit_clean_start()
        self._enter_backup(now=now, reason="init")

    def shutdown(self, *, now: float) -> None:
        """Leave for good: RFC 5798 §6.4.3 Shutdown (priority-0 advert) and keepalived STOP."""
        if self._state is VrrpState.STOP:
            return
        old = self._state
        if old is VrrpState.INIT:
            # never started: nothing was announced, so nothing to notify
            self._state = VrrpState.STOP
            return
        if old is VrrpState.MASTER:
            self._send_advert(priority=PRIORITY_STOP)
            self._remove_addresses()
            self._counters["released_master"] += 1
        self._clear_timers()
        self._set_state(VrrpState.STOP, reason="shutdown", old=old)

    def same_identity(self, config: VrrpInstance) -> bool:
        """Whether `config` can be applied in place: same (interface, family, VRID) and the
        same source address (the shell demultiplexes and sends by these), and the same
        VMAC (a macvlan with another MAC is a new link, which the VIPs must move to)."""
        old = self.config
        return (
            old.interface == config.interface
            and old.vip_interface == config.vip_interface
            and old.advert_interface == config.advert_interface
            and old.family is config.family
            and old.vrid == config.vrid
            and old.unicast_src_ip == config.unicast_src_ip
            and (old.use_vmac, old.vmac_mac) == (config.use_vmac, config.vmac_mac)
        )

    def apply(
        self,
        config: VrrpInstance,
        *,
        now: float,
        tracking_weight: bool | None = None,
        script_weights: dict[str, int] | None = None,
    ) -> None:
        """Take a new configuration for this instance in place, keeping state and timers.

        The reload counterpart of keepalived's, without its transitions: nothing here
        forces a state change. A priority change is carried by the next periodic advert
        (as keepalived does for effective-priority changes, spec §6.3), so a master whose
        priority drops below a backup's is replaced only through RFC 5798 §6.4.2 (the
        preempting backup discards its adverts and its Master_Down_Timer runs out). A
        tracked object that now faults, or no longer does, moves the router as
        `set_track` would.

        Args:
            config: the new configuration; same identity (`same_identity`).
            tracking_weight / script_weights: as for the constructor; None keeps them.

        Raises:
            StateError: the identity differs (the shell removes and adds instead).
        """
        if not self.same_identity(config):
            raise StateError(f"{self.name}: apply() with another interface, family or VRID")
        if tracking_weight is not None:
            changed_weights = tracking_weight != self._tracking_weight
            self._tracking_weight = tracking_weight
        else:
            changed_weights = False
        if script_weights is not None and script_weights != self._script_weights:
            self._script_weights = dict(script_weights)
            changed_weights = True
        old = self.config
        if config == old and not changed_weights:
            return  # unchanged: no events at all
        state = self._state
        master = state is VrrpState.MASTER
        was_faulted = self._own_fault() if state is not VrrpState.INIT else False
        self.config = config
        self._policy = receive_policy(config)
        self._relaxed_policy = dataclasses.replace(self._policy, addresses=None)
        # tracking: keep the last known value of every object still tracked
        self._tracks = self._build_tracks(config)
        self._values = {
            key: self._values.get(key, 0 if key[0] is TrackKind.FILE else 1) for key in self._tracks
        }
        # priority (and tracking weights): the next periodic advert carries the new value
        announce = state is not VrrpState.INIT
        if config.priority != old.priority:
            self._base_priority = config.priority
        if self._base_priority == PRIORITY_OWNER:
            if self._effective != PRIORITY_OWNER and announce:
                self._events.append(
                    PriorityChanged(instance=self.name, old=self._effective, new=PRIORITY_OWNER)
                )
            self._effective = PRIORITY_OWNER
        else:
            self._recompute_priority(now=now, announce=announce)
        if master:
            self._master_priority = self._effective
        # advert_int: RFC 5798 §6.4.3 the master restarts its Adver_Timer; a backup keeps
        # the master's interval it learnt (v3) and re-arms Master_Down_Timer with it
        new_int = round(config.advert_interval * 100)
        if (
            new_int != self._adver_int_cs
            or config.version != old.version
            or (config.down_timer_adverts != old.down_timer_adverts)
        ):
            self._adver_int_cs = new_int
            if master:
                self._master_adver_int_cs = new_int
                self._advert_at = now + new_int / 100
            elif state is VrrpState.BACKUP:
                if config.version == 2 or self._master_address is None:
                    self._master_adver_int_cs = new_int
                self._master_down_at = now + self.master_down_interval()
            else:
                self._master_adver_int_cs = new_int
        if config.preempt_delay != old.preempt_delay:
            self._preempt_until = None  # keepalived restarts the delay at the next advert
        if master:
            self._apply_master_addresses(old, config, now=now)
        if state in (VrrpState.INIT, VrrpState.STOP):
            return
        faulted = self._own_fault()
        if faulted and not was_faulted:
            self._go_fault(now=now, reason="reload: tracked object down")
        elif was_faulted and not faulted and not self._group_fault:
            self._leave_fault(now=now, reason="reload: tracked objects up")

    def _apply_master_addresses(self, old: VrrpInstance, new: VrrpInstance, *, now: float) -> None:
        """A master's VIP and route changes on reload: drop what went, add and announce
        what came (RFC 5798 §6.4.2 sends GARP/NA for the addresses it starts to own)."""
        # routes and rules that may use a dropped VIP go first, as when leaving MASTER
        gone_routes = tuple(r for r in old.virtual_routes if r not in new.virtual_routes)
        gone_rules = tuple(r for r in old.virtual_rules if r not in new.virtual_rules)
        if gone_routes or gone_rules:
            self._events.append(
                RemoveRoutes(instance=self.name, routes=gone_routes, rules=gone_rules)
            )
        # a prefix change on one address is a remove and an add of that address
        dropped = tuple(v for v in old.vips if v not in new.vips)
        added = tuple(v for v in new.vips if v not in old.vips)
        if dropped:
            self._events.append(
                RemoveAddresses(instance=self.name, interface=new.vip_interface, addresses=dropped)
            )
        if added:
            self._events.append(
                AddAddresses(
                    instance=self.name,
                    interface=new.vip_interface,
                    addresses=added,
                    accept=new.accepts,
                )
            )
        came_routes = tuple(r for r in new.virtual_routes if r not in old.virtual_routes)
        came_rules = tuple(r for r in new.virtual_rules if r not in old.virtual_rules)
        if came_routes or came_rules:
            self._events.append(AddRoutes(instance=self.name, routes=came_routes, rules=came_rules))
        garp = new.garp
        if added and garp.master_repeat:
            self._events.append(
                AnnounceAddresses(
                    instance=self.name,
                    interface=new.vip_interface,
                    addresses=added,
                    repeat=garp.master_repeat,
                    interval=garp.interval,
                )
            )
        if garp.master_refresh != old.garp.master_refresh:
            self._garp_refresh_at = now + garp.master_refresh if garp.master_refresh else None

    def record_decode_error(self, error: VrrpDecodeError, *, src: IPAddress | None) -> None:
        """Count an advert the codec rejected (shell calls this with the policy's error)."""
        reason = error.reason if isinstance(error.reason, DropReason) else DropReason.TRUNCATED
        self._drop(reason, src, str(error))

    def receive_advertisement(
        self,
        adv: Advertisement,
        *,
        src: IPAddress,
        now: float,
        ah_seq: int | None = None,
    ) -> None:
        """An advert that passed the codec's checks for this instance (spec §4.2)."""
        if self._state is VrrpState.STOP:
            raise StateError(f"{self.name}: advert after stop")
        if self._state in (VrrpState.INIT, VrrpState.FAULT):
            # spec §4.2 check 0b: an instance in FAULT or INIT ignores adverts
            self._drop(DropReason.NOT_LISTENING, src, self._state.name)
            return
        if type(src) is not type(self.primary_address):
            self._drop(DropReason.FAMILY, src)
            return
        if self.config.auth_type is AuthType.AH:
            # spec §5.3: replay check (seq > stored), one counter shared by send and receive
            if ah_seq is None or ah_seq <= self._ah_seq:
                self._drop(DropReason.AH_REPLAY, src, f"seq {ah_seq} <= {self._ah_seq}")
                return
            self._ah_seq = ah_seq
        self._counters["adverts_received"] += 1
        self._last_advert = (src, adv.priority, now)
        if adv.priority == PRIORITY_STOP:
            self._counters["priority_zero_received"] += 1
        if self._state is VrrpState.BACKUP:
            self._backup_receive(adv, src=src, now=now)
        else:
            self._master_receive(adv, src=src, now=now)

    def set_track(self, kind: TrackKind, name: str, value: int | bool, *, now: float) -> None:
        """Record a tracked object's state: interfaces/scripts up (True) or down, files' value.

        Raises:
            StateError: the instance does not track this object.
        """
        key = (kind, name)
        if key not in self._tracks:
            raise StateError(f"{self.name}: does not track {kind.value} {name}")
        if self._state is VrrpState.STOP:
            return
        new = int(value)
        if self._values[key] == new:
            return
        was_faulted = self._own_fault()
        self._values[key] = new
        self._recompute_priority(now=now, announce=self._state is not VrrpState.INIT)
        if self._state is VrrpState.INIT:
            return
        faulted = self._own_fault()
        if faulted and not was_faulted:
            self._go_fault(now=now, reason=f"{kind.value} {name} failed")
        elif was_faulted and not faulted:
            self._leave_fault(now=now, reason=f"{kind.value} {name} recovered")

    def tracks(self) -> Iterable[tuple[TrackKind, str]]:
        return tuple(self._tracks)

    def handle_timer(self, *, now: float) -> None:
        """Fire every timer whose deadline is <= now."""
        if self._state is VrrpState.BACKUP:
            if self._master_down_at is not None and now >= self._master_down_at:
                self._master_down_expired(now=now)
            return
        if self._state is not VrrpState.MASTER:
            return
        if self._advert_at is not None and now >= self._advert_at:
            # RFC 5798 §6.4.3: Adver_Timer fires -> send an advert, restart the timer.
            # Restarted from its deadline, not from `now`, so adverts do not drift by the
            # loop's latency (keepalived restarts from now); after a stall, from now.
            self._send_advert(priority=self._effective)
            interval = self._adver_int_cs / 100
            self._advert_at += interval
            if self._advert_at <= now:
                self._advert_at = now + interval
            if self._garp_refresh_at is not None and now >= self._garp_refresh_at:
                # keepalived checks the refresh timer when it sends an advert
                self._announce(self.config.garp.master_refresh_repeat)
                self._garp_refresh_at = now + self.config.garp.master_refresh
        if self._garp_at is not None and now >= self._garp_at:
            self._garp_at = None
            self._announce(self.config.garp.master_repeat)
        if self._garp_lower_at is not None and now >= self._garp_lower_at:
            self._garp_lower_at = None
            self._announce(self.config.garp.lower_prio_repeat)

    # ------------------------------------------------------------------ receive paths

    def _backup_receive(self, adv: Advertisement, *, src: IPAddress, now: float) -> None:
        cfg = self.config
        if adv.priority == PRIORITY_STOP:
            # RFC 5798 §6.4.2: priority 0 -> Master_Down_Timer = Skew_Time
            self._master_down_at = now + self.skew_time()
            return
        in_preempt_delay = cfg.preempt_delay > 0 and (
            self._preempt_until is None or self._preempt_until > now
        )
        if cfg.nopreempt or adv.priority >= self._effective or in_preempt_delay:
            # RFC 5798 §6.4.2: accept; v3 learns Master_Adver_Interval, reset the timer
            if cfg.version == 3:
                self._master_adver_int_cs = adv.adver_int_cs
            self._master_down_at = now + self.master_down_interval()
            self._master_address = src
            self._master_priority = adv.priority
            self._want_master = False
            if cfg.preempt_delay > 0:
                if adv.priority >= self._effective:
                    self._preempt_until = None
                elif self._preempt_until is None:
                    # keepalived: the delay starts at the first lower-priority advert
                    self._preempt_until = now + cfg.preempt_delay
            return
        # preempting a lower-priority master: discard without resetting the timer
        self._master_address = src
        self._drop(DropReason.LOWER_PRIORITY, src, f"priority {adv.priority}")

    def _master_receive(self, adv: Advertisement, *, src: IPAddress, now: float) -> None:
        cfg = self.config
        ours = _address_key(self.primary_address)
        theirs = _address_key(src)
        addr_cmp = (theirs > ours) - (theirs < ours)
        higher = adv.priority > self._effective or (
            adv.priority == self._effective and addr_cmp > 0
        )
        if adv.priority == PRIORITY_STOP or (cfg.higher_prio_send_advert and higher):
            # RFC 5798 §6.4.3: priority 0 -> send an advert at once, restart Adver_Timer
            self._send_advert(priority=self._effective)
            self._advert_at = now + self._adver_int_cs / 100
            if adv.priority == PRIORITY_STOP:
                return
        if adv.priority == self._effective and addr_cmp != 0 and self._effective == 255:
            # spec §6.3: two address owners -> keepalived lowers its own priority to 254
            old = self._effective
            self._base_priority = self._effective = PRIORITY_OWNER - 1
            self._events.append(PriorityChanged(instance=self.name, old=old, new=self._effective))
            higher = addr_cmp > 0
        if adv.priority <= self._effective and addr_cmp != 0:
            # two masters for one VRID: make it visible (PRODUCT §7.8)
            self._counters["split_brain"] += 1
            self._events.append(
                SplitBrainDetected(
                    instance=self.name,
                    src=src,
                    their_priority=adv.priority,
                    our_priority=self._effective,
                    count=self._counters["split_brain"],
                )
            )
        if not higher:
            if addr_cmp == 0:
                return  # our own address: keepalived only warns
            # spec §6.3 (deviation §10.4): answer a lower-priority master at once
            # (AH: the replay check already raised our counter to the peer's, keepalived's
            # "Syncing seq_num"; the next advert carries seq + 1)
            if not cfg.lower_prio_no_advert:
                self._send_advert(priority=self._effective)
                self._advert_at = now + self._adver_int_cs / 100
            if cfg.garp.lower_prio_repeat:
                self._announce(cfg.garp.lower_prio_repeat)
                if cfg.garp.lower_prio_delay:
                    self._garp_lower_at = now + cfg.garp.lower_prio_delay
            self._events.append(
                MasterReceivedLowerPriority(instance=self.name, src=src, priority=adv.priority)
            )
            if self._group is not None:
                self._group.member_lower_priority(self)
            return
        # RFC 5798 §6.4.3: higher priority (or equal and higher address) -> Backup
        if cfg.version == 3:
            self._master_adver_int_cs = adv.adver_int_cs
        self._master_address = src
        self._master_priority = adv.priority
        self._leave_master()
        self._enter_backup(now=now, reason="higher priority advert", restart=False)
        if self._group is not None:
            self._group.member_to_backup(self, now=now)

    # ------------------------------------------------------------------ transitions

    def _master_down_expired(self, *, now: float) -> None:
        self._want_master = True
        if self._group is not None and not self._group.can_go_master(self):
            # keepalived vrrp_sync_can_goto_master: wait for the others, restart the timer
            self._master_down_at = now + self.master_down_interval()
            return
        self._become_master(now=now, reason="master down timer expired")
        if self._group is not None:
            self._group.member_to_master(self, now=now)

    def _become_master(self, *, now: float, reason: str) -> None:
        old = self._state
        self._master_down_at = None
        self._want_master = False
        self._master_adver_int_cs = self._adver_int_cs
        self._master_address = self.primary_address
        self._master_priority = self._effective
        self._preempt_until = None
        # RFC 5798 §6.4.2: send an advert, then GARP/NA; keepalived adds VIPs in between
        self._send_advert(priority=self._effective)
        self._advert_at = now + self._adver_int_cs / 100
        vips = self.config.vips
        if vips:
            self._events.append(
                AddAddresses(
                    instance=self.name,
                    interface=self.config.vip_interface,
                    addresses=vips,
                    accept=self.config.accepts,
                )
            )
        if self.config.virtual_routes or self.config.virtual_rules:
            self._events.append(
                AddRoutes(
                    instance=self.name,
                    routes=self.config.virtual_routes,
                    rules=self.config.virtual_rules,
                )
            )
        garp = self.config.garp
        if garp.master_repeat:
            self._announce(garp.master_repeat)
            if garp.master_delay:
                self._garp_at = now + garp.master_delay
        if garp.master_refresh:
            self._garp_refresh_at = now + garp.master_refresh
        self._counters["became_master"] += 1
        self._set_state(VrrpState.MASTER, reason=reason, old=old)

    def _leave_master(self) -> None:
        """Stop the MASTER timers and drop the VIPs (no state change yet)."""
        self._advert_at = self._garp_at = self._garp_lower_at = self._garp_refresh_at = None
        self._remove_addresses()
        self._counters["released_master"] += 1

    def _enter_backup(self, *, now: float, reason: str, restart: bool = True) -> None:
        old = self._state
        if restart:
            self._master_adver_int_cs = self._adver_int_cs
        self._master_down_at = now + self.master_down_interval()
        self._want_master = False
        self._set_state(VrrpState.BACKUP, reason=reason, old=old)

    def _go_fault(self, *, now: float, reason: str) -> None:
        self._enter_fault(now=now, reason=reason)
        if self._group is not None:
            self._group.member_to_fault(self, now=now)

    def _enter_fault(self, *, now: float, reason: str) -> None:
        if self._state in (VrrpState.FAULT, VrrpState.STOP):
            return
        old = self._state
        if old is VrrpState.MASTER:
            # spec §6.3: two priority-0 adverts back to back, then the VIPs go
            self._send_advert(priority=PRIORITY_STOP)
            self._send_advert(priority=PRIORITY_STOP)
            self._leave_master()
        self._clear_timers()
        self._want_master = False
        self._set_state(VrrpState.FAULT, reason=reason, old=old)

    def _leave_fault(self, *, now: float, reason: str) -> None:
        if self._state is not VrrpState.FAULT:
            return
        if self._group is not None:
            self._group.member_fault_cleared(self, now=now, reason=reason)
            return
        # spec §6.4: leaving FAULT goes to BACKUP with a full down timer
        self._enter_backup(now=now, reason=reason)

    def _own_fault(self) -> bool:
        for key, (weight, reverse) in self._tracks.items():
            if weight != 0:
                continue
            value = self._values[key]
            # weight 0 on a file: a non-zero value is a failure
            failed = value != 0 if key[0] is TrackKind.FILE else (value == 0) != reverse
            if failed:
                return True
        for key, (weight, reverse) in self._tracks.items():
            # keepalived track_file.c: value x weight at or below -254 means FAULT
            if (
                key[0] is TrackKind.FILE
                and weight != 0
                and _file_contribution(self._values[key], weight, reverse) <= -254
            ):
                return True
        return False

    def _recompute_priority(self, *, now: float, announce: bool) -> None:
        """keepalived's weight arithmetic (spec §6.4 "Tracking and weights")."""
        if self._base_priority == PRIORITY_OWNER:
            return  # an owner never changes priority
        total = self._base_priority
        for key, (weight, reverse) in self._tracks.items():
            if weight == 0:
                continue
            value = self._values[key]
            if key[0] is TrackKind.FILE:
                total += _file_contribution(value, weight, reverse)
                continue
            ok = (value != 0) != reverse
            if (weight > 0 and ok) or (weight < 0 and not ok):
                total += weight
        new = min(254, max(1, total))
        if new != self._effective:
            old, self._effective = self._effective, new
            if announce:
                # deviation §10.13: the next periodic advert carries it, nothing is sent now
                self._events.append(PriorityChanged(instance=self.name, old=old, new=new))

    # ------------------------------------------------------------------ helpers

    def _emit_clean_start(self) -> None:
        self._remove_addresses()

    def _remove_routes(self) -> None:
        if self.config.virtual_routes or self.config.virtual_rules:
            self._events.append(
                RemoveRoutes(
                    instance=self.name,
                    routes=self.config.virtual_routes,
                    rules=self.config.virtual_rules,
                )
            )

    def _remove_addresses(self) -> None:
        self._remove_routes()
        if self.config.vips:
            self._events.append(
                RemoveAddresses(
                    instance=self.name,
                    interface=self.config.vip_interface,
                    addresses=self.config.vips,
                )
            )

    def _announce(self, repeat: int) -> None:
        if self.config.vips and repeat > 0:
            self._events.append(
                AnnounceAddresses(
                    instance=self.name,
                    interface=self.config.vip_interface,
                    addresses=self.config.vips,
                    repeat=repeat,
                    interval=self.config.garp.interval,
                )
            )

    def _send_advert(self, *, priority: int) -> None:
        cfg = self.config
        if cfg.auth_type is AuthType.PASS:
            auth_data = cfg.auth_key
        elif cfg.version == 2:
            auth_data = b"\0" * 8
        else:
            auth_data = b""
        ah_seq: int | None = None
        if cfg.auth_type is AuthType.AH:
            self._ah_seq = (self._ah_seq + 1) & 0xFFFFFFFF
            ah_seq = self._ah_seq
        adv = Advertisement(
            version=cfg.version,
            vrid=cfg.vrid,
            priority=priority,
            adver_int_cs=self._adver_int_cs,
            addresses=tuple(v.ip for v in cfg.vips),
            auth_type=cfg.auth_type,
            auth_data=auth_data,
        )
        self._counters["adverts_sent"] += 1
        if priority == PRIORITY_STOP:
            self._counters["priority_zero_sent"] += 1
        self._events.append(SendAdvertisement(instance=self.name, advertisement=adv, ah_seq=ah_seq))

    def _clear_timers(self) -> None:
        self._master_down_at = self._advert_at = None
        self._garp_at = self._garp_lower_at = self._garp_refresh_at = None

    def _set_state(self, new: VrrpState, *, reason: str, old: VrrpState) -> None:
        self._state = new
        self._counters["transitions"] += 1
        self._events.append(
            StateChanged(
                instance=self.name,
                old=old,
                new=new,
                reason=reason,
                priority=(
                    0 if new is VrrpState.STOP and old is VrrpState.MASTER else self._effective
                ),
            )
        )

    def _drop(self, reason: DropReason, src: IPAddress | None, detail: str = "") -> None:
        self._drops[reason.value] += 1
        self._events.append(
            AdvertisementDropped(instance=self.name, reason=reason, src=src, detail=detail)
        )

    # ------------------------------------------------------------------ sync group hooks

    def _join_group(self, group: SyncGroupCore) -> None:
        if self._group is not None:
            raise StateError(f"{self.name}: already in sync group {self._group.name}")
        self._group = group

    def _leave_group(self) -> None:
        self._group = None

    def _forced_master(self, *, now: float, group: str) -> None:
        if self._state is VrrpState.BACKUP:
            self._become_master(now=now, reason=f"sync group {group}")

    def _forced_backup(self, *, now: float, group: str) -> None:
        if self._state is VrrpState.MASTER:
            self._leave_master()
            self._enter_backup(now=now, reason=f"sync group {group}")

    def _forced_fault(self, *, now: float, group: str) -> None:
        self._group_fault = True
        self._enter_fault(now=now, reason=f"sync group {group}")

    def _group_fault_cleared(self, *, now: float, reason: str) -> None:
        self._group_fault = False
        if self._state is VrrpState.FAULT and not self._own_fault():
            self._enter_backup(now=now, reason=reason)

    def _announce_lower_priority(self) -> None:
        if self._state is VrrpState.MASTER and self.config.garp.lower_prio_repeat:
            self._announce(self.config.garp.lower_prio_repeat)


class SyncGroupCore:
    """A `vrrp_sync_group`: its members change state together (spec §6.4).

    * one member going BACKUP pulls every MASTER member to BACKUP;
    * one member going FAULT pulls every member to FAULT, until no member has a fault;
    * a member may go MASTER only when every other member wants MASTER too (its down
      timer ran out) or the group is already MASTER; then all go MASTER together.
    """

    def __init__(self, config: SyncGroup, members: Iterable[VirtualRouter]) -> None:
        self.config = config
        self.members = tuple(members)
        names = {m.name for m in self.members}
        if names != set(config.members):
            raise StateError(f"sync group {config.name}: members {names} != {config.members}")
        self._events: list[VrrpEvent] = []
        for member in self.members:
            member._join_group(self)

    @property
    def name(self) -> str:
        return self.config.name

    def dissolve(self) -> None:
        """Release the members (reload rebuilds the groups around the same routers, whose
        states are kept)."""
        for member in self.members:
            member._leave_group()

    @property
    def state(self) -> VrrpState:
        states = {m.state for m in self.members}
        for s in (VrrpState.FAULT, VrrpState.BACKUP, VrrpState.MASTER):
            if s in states:
                return s
        return VrrpState.INIT

    def pop_events(self) -> list[VrrpEvent]:
        events, self._events = self._events, []
        return events

    def can_go_master(self, member: VirtualRouter) -> bool:
        if any(m.state is VrrpState.MASTER for m in self.members if m is not member):
            return True
        return all(m._want_master for m in self.members if m is not member)

    def member_to_master(self, member: VirtualRouter, *, now: float) -> None:
        self._events.append(
            GroupStateChanged(group=self.name, new=VrrpState.MASTER, initiator=member.name)
        )
        for other in self.members:
            if other is not member:
                other._forced_master(now=now, group=self.name)

    def member_to_backup(self, member: VirtualRouter, *, now: float) -> None:
        self._events.append(
            GroupStateChanged(group=self.name, new=VrrpState.BACKUP, initiator=member.name)
        )
        for other in self.members:
            if other is not member:
                other._forced_backup(now=now, group=self.name)

    def member_to_fault(self, member: VirtualRouter, *, now: float) -> None:
        self._events.append(
            GroupStateChanged(group=self.name, new=VrrpState.FAULT, initiator=member.name)
        )
        for other in self.members:
            if other is not member:
                other._forced_fault(now=now, group=self.name)

    def member_fault_cleared(self, member: VirtualRouter, *, now: float, reason: str) -> None:
        if any(m._own_fault() for m in self.members):
            return  # another member is still faulty: the whole group stays in FAULT
        self._events.append(
            GroupStateChanged(group=self.name, new=VrrpState.BACKUP, initiator=member.name)
        )
        for m in self.members:
            m._group_fault_cleared(now=now, reason=reason)

    def member_lower_priority(self, member: VirtualRouter) -> None:
        # keepalived also sends the lower-priority GARP batch on the other members
        for other in self.members:
            if other is not member:
                other._announce_lower_priority()


def _file_contribution(value: int, weight: int, reverse: bool) -> int:
    # keepalived track_file.c clamps each file's contribution to -254..253
    return max(-254, min(253, value * weight * (-1 if reverse else 1)))


def _address_key(address: IPAddress) -> tuple[int, int]:
    # spec §10.16: unsigned big-endian comparison of the source addresses
    return (4 if isinstance(address, IPv4Address) else 6, int(address))
