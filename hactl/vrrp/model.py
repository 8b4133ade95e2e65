"""The VRRP runtime configuration slice, in keepalived's vocabulary.

Frozen dataclasses only: a `VrrpInstance` (one virtual router), `VrrpScript`, `SyncGroup`
and `VrrpConfig` (everything the VRRP service runs). The configuration front end maps its
model onto these; nothing here parses text.

Rules:
* Durations are float seconds. Wire units (v2 seconds, v3 centiseconds) appear only in
  `packet.py`.
* `__post_init__` checks local invariants (ranges, v2 whole-second intervals, IPv6 implies
  v3) and raises `ValueError`; cross-object rules (duplicate VRID per interface, unknown
  script names) belong to the configuration validator.
* Defaults are keepalived 2.2.7's (spec §6.3, §7).

Must not import: asyncio, socket, pyroute2, structlog, or any other hactl module but
hactl.net.ports (the shared address types).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, IPv6Interface

from hactl.net.ports import Family, IPAddress, IPInterface, Route, Rule

__all__ = [
    "AuthType",
    "Family",
    "GarpSettings",
    "IPAddress",
    "IPInterface",
    "InitialState",
    "NotifyScripts",
    "Route",
    "Rule",
    "SyncGroup",
    "TrackFile",
    "TrackInterface",
    "TrackScript",
    "UnicastPeer",
    "VrrpConfig",
    "VrrpInstance",
    "VrrpScript",
]


class AuthType(enum.IntEnum):
    """VRRPv2 Auth Type field values (RFC 2338; keepalived keeps PASS and AH)."""

    NONE = 0
    PASS = 1
    AH = 2


class InitialState(enum.StrEnum):
    """keepalived's `state` keyword: only a hint (spec §6.3, deviation §10.11)."""

    MASTER = "MASTER"
    BACKUP = "BACKUP"


@dataclass(frozen=True, slots=True, kw_only=True)
class UnicastPeer:
    address: IPAddress
    min_ttl: int = 0
    max_ttl: int = 255

    def __post_init__(self) -> None:
        if not 0 <= self.min_ttl <= self.max_ttl <= 255:
            raise ValueError(f"unicast peer TTL range {self.min_ttl}-{self.max_ttl} is invalid")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackInterface:
    """`track_interface`: weight 0 means the link going down puts the instance in FAULT."""

    name: str
    weight: int = 0
    reverse: bool = False

    def __post_init__(self) -> None:
        _check_weight(self.weight)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackScript:
    """`track_script` entry; `weight` None means the vrrp_script's own weight."""

    name: str
    weight: int | None = None
    reverse: bool = False

    def __post_init__(self) -> None:
        if self.weight is not None:
            _check_weight(self.weight)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackFile:
    """`track_file`: the integer in the file times `weight` is added (weight 0: FAULT if != 0).

    `path` is the `file` of the `vrrp_track_file` block the name refers to.
    """

    name: str
    path: str = ""
    weight: int = 1
    reverse: bool = False

    def __post_init__(self) -> None:
        _check_weight(self.weight)


@dataclass(frozen=True, slots=True, kw_only=True)
class VrrpScript:
    """`vrrp_script`: a command run every `interval` seconds; rise/fall debounce it."""

    name: str
    command: tuple[str, ...]
    interval: float = 1.0
    timeout: float | None = None  # keepalived: defaults to the interval
    weight: int = 0
    weight_reverse: bool = False
    rise: int = 1
    fall: int = 1
    user: str | None = None
    init_fail: bool = False

    def __post_init__(self) -> None:
        if not self.command:
            raise ValueError(f"vrrp_script {self.name}: empty command")
        if self.interval <= 0:
            raise ValueError(f"vrrp_script {self.name}: interval must be > 0")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"vrrp_script {self.name}: timeout must be > 0")
        if self.rise < 1 or self.fall < 1:
            raise ValueError(f"vrrp_script {self.name}: rise and fall must be >= 1")
        _check_weight(self.weight)

    @property
    def effective_timeout(self) -> float:
        return self.interval if self.timeout is None else self.timeout


@dataclass(frozen=True, slots=True, kw_only=True)
class GarpSettings:
    """keepalived's garp_* timers (spec §7 "timers"); delays in seconds, 0 turns them off."""

    master_delay: float = 5.0
    master_repeat: int = 5
    master_refresh: float = 0.0
    master_refresh_repeat: int = 1
    lower_prio_delay: float = 5.0
    lower_prio_repeat: int = 5
    interval: float = 0.0  # vrrp_garp_interval / vrrp_gna_interval: gap between packets

    def __post_init__(self) -> None:
        for name in ("master_delay", "master_refresh", "lower_prio_delay", "interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"garp {name} must be >= 0")
        for name in ("master_repeat", "master_refresh_repeat", "lower_prio_repeat"):
            if getattr(self, name) < 0:
                raise ValueError(f"garp {name} must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyScripts:
    """notify_master/backup/fault/stop run with their own arguments; `notify` gets 4 more."""

    master: tuple[str, ...] | None = None
    backup: tuple[str, ...] | None = None
    fault: tuple[str, ...] | None = None
    stop: tuple[str, ...] | None = None
    generic: tuple[str, ...] | None = None
    master_rx_lower_pri: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class VrrpInstance:
    """One `vrrp_instance`: a virtual router on one interface."""

    name: str
    interface: str
    vrid: int
    priority: int = 100
    advert_interval: float = 1.0
    version: int = 2
    state: InitialState = InitialState.BACKUP
    nopreempt: bool = False
    preempt_delay: float = 0.0
    vips: tuple[IPInterface, ...] = ()
    excluded_vips: tuple[IPInterface, ...] = ()
    virtual_routes: tuple[Route, ...] = ()
    virtual_rules: tuple[Rule, ...] = ()
    unicast_src_ip: IPAddress | None = None
    unicast_peers: tuple[UnicastPeer, ...] = ()
    unicast_ttl: int = 255
    check_unicast_src: bool = False
    auth_type: AuthType = AuthType.NONE
    auth_pass: bytes = b""
    track_interfaces: tuple[TrackInterface, ...] = ()
    track_scripts: tuple[TrackScript, ...] = ()
    track_files: tuple[TrackFile, ...] = ()
    dont_track_primary: bool = False
    garp: GarpSettings = field(default_factory=GarpSettings)
    accept: bool = True  # keepalived default (deviation §10.5): RFC says off unless owner
    use_vmac: bool = False  # keepalived `use_vmac`: VIPs and adverts on a macvlan (spec §1.3)
    vmac_name: str | None = None  # `use_vmac NAME`; None: keepalived's `vrrp.<VRID>`
    vmac_mac: str | None = None  # `use_vmac NAME MAC`; None: 00:00:5e:00:01:<VRID>
    down_timer_adverts: int = 3
    lower_prio_no_advert: bool = False
    higher_prio_send_advert: bool = False
    skip_check_adv_addr: bool = False
    notify: NotifyScripts = field(default_factory=NotifyScripts)

    def __post_init__(self) -> None:
        if not 1 <= self.vrid <= 255:
            raise ValueError(f"{self.name}: virtual_router_id {self.vrid} not in 1..255")
        if not 1 <= self.priority <= 255:
            raise ValueError(f"{self.name}: priority {self.priority} not in 1..255")
        if self.version not in (2, 3):
            raise ValueError(f"{self.name}: version {self.version} is not 2 or 3")
        if self.version == 2:
            if self.advert_interval != int(self.advert_interval) or not (
                1 <= self.advert_interval <= 255
            ):
                raise ValueError(f"{self.name}: VRRPv2 advert_int must be 1..255 whole seconds")
        else:
            cs = round(self.advert_interval * 100)
            if not 1 <= cs <= 4095 or abs(cs - self.advert_interval * 100) > 1e-6:
                raise ValueError(
                    f"{self.name}: VRRPv3 advert_int must be a multiple of 0.01 in 0.01..40.95"
                )
        families = {type(v.ip) for v in self.vips}
        if len(families) > 1:
            raise ValueError(f"{self.name}: VIPs mix IPv4 and IPv6")
        if self.family is Family.INET6 and self.version != 3:
            raise ValueError(f"{self.name}: IPv6 needs VRRP version 3")
        if self.version == 3 and self.auth_type is not AuthType.NONE:
            raise ValueError(f"{self.name}: VRRP version 3 has no authentication")
        if self.auth_type is not AuthType.NONE and not self.auth_pass:
            raise ValueError(f"{self.name}: authentication needs auth_pass")
        if len(self.auth_pass) > 8:
            raise ValueError(f"{self.name}: auth_pass longer than 8 bytes")
        if self.nopreempt and self.state is InitialState.MASTER:
            raise ValueError(f"{self.name}: nopreempt needs state BACKUP")
        if not 0 <= self.preempt_delay <= 1000:
            raise ValueError(f"{self.name}: preempt_delay not in 0..1000")
        if self.down_timer_adverts < 1:
            raise ValueError(f"{self.name}: down_timer_adverts must be >= 1")
        if not 1 <= self.unicast_ttl <= 255:
            raise ValueError(f"{self.name}: unicast_ttl not in 1..255")
        if self.use_vmac and not 1 <= len(self.vmac_interface) <= 15:
            raise ValueError(f"{self.name}: VMAC interface name must be 1..15 characters")
        peer_families = {type(p.address) for p in self.unicast_peers}
        if peer_families and peer_families != {self._address_type}:
            raise ValueError(f"{self.name}: unicast peers must match the VIP family")

    @property
    def key(self) -> tuple[str, str]:
        return ("vrrp", self.name)

    @property
    def family(self) -> Family:
        if self.vips and isinstance(self.vips[0], IPv6Interface):
            return Family.INET6
        if self.unicast_src_ip is not None and isinstance(self.unicast_src_ip, IPv6Address):
            return Family.INET6
        return Family.INET

    @property
    def _address_type(self) -> type:
        return IPv6Address if self.family is Family.INET6 else IPv4Address

    @property
    def unicast(self) -> bool:
        return bool(self.unicast_peers)

    @property
    def owner(self) -> bool:
        """Priority 255: the address owner (RFC 5798 §6.1)."""
        return self.priority == 255

    @property
    def accepts(self) -> bool:
        """RFC 5798 Accept_Mode as keepalived applies it: on unless `no_accept`, and always
        on for the address owner. Off: a master drops traffic to its VIPs (firewall)."""
        return self.accept or self.owner

    @property
    def vmac_interface(self) -> str:
        """The macvlan's name (meaningful with `use_vmac`): given, or `vrrp.<VRID>`."""
        return self.vmac_name or f"vrrp.{self.vrid}"

    @property
    def vip_interface(self) -> str:
        """Where the VIPs go and GARPs leave: the VMAC with `use_vmac`, else `interface`."""
        return self.vmac_interface if self.use_vmac else self.interface

    @property
    def advert_interface(self) -> str:
        """Where adverts are sent and received. With `use_vmac` and multicast: the VMAC
        (a peer's VMAC-sourced multicast arrives only there, spec §1.3). Unicast adverts
        are addressed to the base interface's MAC, so unicast instances stay on it (as
        keepalived's `vmac_xmit_base`)."""
        return self.vmac_interface if self.use_vmac and not self.unicast else self.interface

    @property
    def auth_key(self) -> bytes:
        """The 8-byte, zero-padded password as it goes on the wire (spec §5.2)."""
        return self.auth_pass.ljust(8, b"\0") if self.auth_type is not AuthType.NONE else b""


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncGroup:
    """`vrrp_sync_group`: members change state together (spec §6.4)."""

    name: str
    members: tuple[str, ...]
    notify: NotifyScripts = field(default_factory=NotifyScripts)
    sync_group_tracking_weight: bool = False

    def __post_init__(self) -> None:
        if len(set(self.members)) != len(self.members):
            raise ValueError(f"sync group {self.name}: duplicate members")

    @property
    def key(self) -> tuple[str, str]:
        return ("vrrp_sync_group", self.name)


@dataclass(frozen=True, slots=True, kw_only=True)
class VrrpConfig:
    """Everything the VRRP service runs."""

    instances: tuple[VrrpInstance, ...]
    sync_groups: tuple[SyncGroup, ...] = ()
    scripts: tuple[VrrpScript, ...] = ()
    notify_fifo: str | None = None
    script_user: str | None = None

    def __post_init__(self) -> None:
        names = [i.name for i in self.instances]
        if len(set(names)) != len(names):
            raise ValueError("duplicate vrrp_instance names")
        known = set(names)
        for group in self.sync_groups:
            missing = [m for m in group.members if m not in known]
            if missing:
                raise ValueError(f"sync group {group.name}: unknown members {missing}")
        scripts = {s.name for s in self.scripts}
        for inst in self.instances:
            for ts in inst.track_scripts:
                if ts.name not in scripts:
                    raise ValueError(f"{inst.name}: track_script {ts.name} is not defined")


def _check_weight(weight: int) -> None:
    if not -253 <= weight <= 253:
        raise ValueError(f"weight {weight} not in -253..253")
