"""The typed, immutable configuration model.

Faithful to what the user wrote, in keepalived's vocabulary, with defaults filled from
`keywords.py` (inherited values resolved: a checker's `delay_loop` is the one it runs with,
whether written on the checker, its real server or its virtual server). Subsystems derive their
runtime models from this one.

Invariants:
* every class is `@dataclass(frozen=True, slots=True, kw_only=True)`; collections are tuples;
* every node has `pos` (compare=False, so reload diffs ignore moved lines) and the objects
  reload diffs by have a `key` (STYLE §8.5);
* field names are the keyword names (`Kw.attr`), so `build.py` and `fmt.py` stay table-driven;
* keywords accepted but not acted on are kept, as raw words, in `unimplemented`;
* the blocks cross-object diagnostics point into (global_defs, vrrp_sync_group,
  vrrp_instance, virtual_server, real_server) also record where each keyword was written
  (`keyword_pos`, `at(field)`), not compared either.

Imports only `errors`, `ipvs.model` and `config.keywords`; no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

from hactl.config import keywords as kw
from hactl.config.keywords import (
    AuthType,
    CheckerKind,
    DnsType,
    FlushOnStop,
    HttpMethod,
    HttpProtocol,
    IpFamily,
    LvsMethod,
    LvsSched,
    Protocol,
    ProxyProtocol,
    SchedFlag,
    Scope,
    TunnelCsum,
    TunnelType,
    VrrpState,
)
from hactl.errors import SourcePos
from hactl.ipvs.model import IpvsSysctl

__all__ = [
    "NOPOS",
    "Authentication",
    "BasicAuth",
    "BfdCheck",
    "Checker",
    "Config",
    "DnsCheck",
    "FileCheck",
    "Forwarding",
    "GlobalDefs",
    "HttpGet",
    "IPAddress",
    "IPInterface",
    "IPNetwork",
    "InitFile",
    "Key",
    "LvsSyncDaemon",
    "LvsTimeouts",
    "MiscCheck",
    "NotifyScript",
    "PingCheck",
    "RawStmt",
    "RealServer",
    "Route",
    "Rule",
    "SmtpCheck",
    "SmtpServer",
    "SorryServer",
    "SslConfig",
    "SslGet",
    "SyncGroup",
    "TcpCheck",
    "TrackFile",
    "TrackInterface",
    "TrackRef",
    "UdpCheck",
    "UnicastPeer",
    "Url",
    "UserSpec",
    "VirtualIpAddress",
    "VirtualServer",
    "VirtualServerGroup",
    "VrrpInstance",
    "VrrpScript",
    "VsgMember",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Key = tuple[Hashable, ...]

# The position of a node built by code rather than parsed (tests, the API).
NOPOS = SourcePos("<generated>", 0, 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class RawStmt:
    """A statement kept as written: an accepted keyword hactl does not act on yet."""

    keyword: str
    args: tuple[str, ...] = ()
    block: tuple[RawStmt, ...] | None = None
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)


# ---------------------------------------------------------------------------------------------
# Small values


@dataclass(frozen=True, slots=True, kw_only=True)
class UserSpec:
    """`USERNAME [GROUPNAME]` (script_user, vrrp_script user, MISC_CHECK user)."""

    user: str
    group: str | None = None
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyScript:
    """`<STRING>|<QUOTED-STRING> [username [groupname]]`."""

    script: str
    user: str | None = None
    group: str | None = None
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Forwarding:
    """`lvs_method NAT|DR|TUN [type {ipip|gue port NUM|gre} [nocsum|csum|remcsum]]`."""

    method: LvsMethod = kw.DEFAULT_LVS_METHOD
    tunnel_type: TunnelType | None = None
    tunnel_port: int | None = None
    tunnel_csum: TunnelCsum | None = None
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class SmtpServer:
    """`smtp_server ADDRESS [PORT]` in global_defs."""

    host: str
    port: int = kw.DEFAULT_SMTP_PORT
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class LvsSyncDaemon:
    """`lvs_sync_daemon IFACE [[inst] INSTANCE] [id N] [maxlen N] [port N] [ttl N] [group A]`.

    `sync_id` None: the VRID of `instance` (0 without an instance); `maxlen` None: from the MTU.
    """

    interface: str
    instance: str | None = None
    sync_id: int | None = None
    maxlen: int | None = None
    port: int = kw.DEFAULT_SYNC_PORT
    ttl: int | None = None
    group: IPAddress = kw.DEFAULT_SYNC_GROUP4
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class LvsTimeouts:
    """`lvs_timeouts [tcp SECS] [tcpfin SECS] [udp SECS]`; None leaves the value unchanged."""

    tcp: int | None = None
    tcpfin: int | None = None
    udp: int | None = None
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)


# ---------------------------------------------------------------------------------------------
# Global definitions


@dataclass(frozen=True, slots=True, kw_only=True)
class GlobalDefs:
    """The `global_defs` block (several blocks merge, as in keepalived)."""

    router_id: str | None = None  # None: the local host name
    notification_email: tuple[str, ...] = ()
    notification_email_from: str | None = None
    smtp_server: SmtpServer | None = None
    smtp_helo_name: str | None = None
    smtp_connect_timeout: float = kw.DEFAULT_SMTP_CONNECT_TIMEOUT
    script_user: UserSpec | None = None
    enable_script_security: bool = False
    default_interface: str | None = None
    vrrp_mcast_group4: ipaddress.IPv4Address = kw.DEFAULT_MCAST_GROUP4
    vrrp_mcast_group6: ipaddress.IPv6Address = kw.DEFAULT_MCAST_GROUP6
    vrrp_version: int = kw.DEFAULT_VRRP_VERSION
    vrrp_garp_master_delay: float = kw.DEFAULT_GARP_MASTER_DELAY
    vrrp_garp_master_repeat: int = kw.DEFAULT_GARP_MASTER_REPEAT
    vrrp_garp_master_refresh: float = kw.DEFAULT_GARP_MASTER_REFRESH
    vrrp_garp_master_refresh_repeat: int = kw.DEFAULT_GARP_MASTER_REFRESH_REPEAT
    vrrp_garp_interval: float = kw.DEFAULT_GARP_INTERVAL
    vrrp_gna_interval: float = kw.DEFAULT_GNA_INTERVAL
    vrrp_min_garp: bool = False
    vrrp_check_unicast_src: bool = False
    lvs_sync_daemon: LvsSyncDaemon | None = None
    lvs_timeouts: LvsTimeouts = field(default_factory=LvsTimeouts)
    lvs_flush: bool = False
    lvs_flush_on_stop: FlushOnStop | None = None
    ipvs_sysctl: IpvsSysctl = field(default_factory=IpvsSysctl)
    sync_auth_key: str | None = None
    unimplemented: tuple[RawStmt, ...] = ()
    # Where each keyword was written (model field -> position), for precise diagnostics.
    keyword_pos: Mapping[str, SourcePos] = field(default_factory=dict, compare=False, repr=False)
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)

    def at(self, attr: str) -> SourcePos:
        """Where `attr` was written, or the block's own position."""
        return self.keyword_pos.get(attr, self.pos)


@dataclass(frozen=True, slots=True, kw_only=True)
class SslConfig:
    """The top-level `SSL` block used by SSL_GET."""

    password: str | None = None
    ca: str | None = None
    certificate: str | None = None
    key: str | None = None
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)


# ---------------------------------------------------------------------------------------------
# Addresses, routes, rules


@dataclass(frozen=True, slots=True, kw_only=True)
class VirtualIpAddress:
    """`<IPADDR>[/<MASK>] [brd IP] [dev IF] [scope S] [label L] [peer IP] ... [no_track]`.

    `address` keeps the prefix as written (/32 or /128 when omitted). Options hactl does not
    act on (home, -nodad, preferred_lft ...) are kept in `options` as written.
    """

    address: IPInterface
    brd: str | None = None  # an address, or '-' / '+' (clear / set host bits)
    dev: str | None = None
    scope: Scope | None = None
    label: str | None = None
    peer: IPAddress | None = None
    no_track: bool = False
    options: tuple[str, ...] = ()
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """One line of static_routes / virtual_routes (the `ip route add` syntax).

    The fields hactl validates are typed; the remaining options are kept as written.
    `dest` None means `default`.
    """

    dest: IPNetwork | None
    route_type: str | None = None  # blackhole, unreachable, prohibit, throw, local ...
    src: IPAddress | None = None
    via: IPAddress | None = None
    or_via: IPAddress | None = None
    dev: str | None = None
    table: str | None = None
    metric: int | None = None
    scope: Scope | None = None
    no_track: bool = False
    options: tuple[str, ...] = ()
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One line of static_rules / virtual_rules (the `ip rule add` syntax)."""

    from_: IPNetwork | None = None
    to: IPNetwork | None = None
    table: str | None = None
    preference: int | None = None
    no_track: bool = False
    options: tuple[str, ...] = ()
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)


# ---------------------------------------------------------------------------------------------
# VRRP


@dataclass(frozen=True, slots=True, kw_only=True)
class VrrpScript:
    """A `vrrp_script NAME { ... }` block."""

    name: str
    script: str = ""
    interval: float = kw.DEFAULT_SCRIPT_INTERVAL
    timeout: float | None = None  # None: the interval
    weight: int = kw.DEFAULT_SCRIPT_WEIGHT
    weight_reverse: bool = False
    rise: int = kw.DEFAULT_SCRIPT_RISE
    fall: int = kw.DEFAULT_SCRIPT_FALL
    user: UserSpec | None = None
    init_fail: bool = False
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)

    @property
    def key(self) -> Key:
        return ("vrrp_script", self.name)


@dataclass(frozen=True, slots=True, kw_only=True)
class InitFile:
    """`init_file [VALUE] [overwrite]`."""

    value: int = 0
    overwrite: bool = False
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackFile:
    """`track_file NAME { file PATH; weight N [reverse]; init_file ... }`."""

    name: str
    file: str = ""
    weight: int = kw.DEFAULT_TRACK_FILE_WEIGHT
    weight_reverse: bool = False
    init_file: InitFile | None = None
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)

    @property
    def key(self) -> Key:
        return ("track_file", self.name)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackInterface:
    """`IFACE [weight W [reverse]]` in track_interface."""

    name: str
    weight: int = 0
    reverse: bool = False
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackRef:
    """`NAME [weight W [reverse|no_reverse]]` in track_script / track_file.

    `weight` None: the weight declared on the script or file.
    """

    name: str
    weight: int | None = None
    reverse: bool = False
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class UnicastPeer:
    """One address of `unicast_peer { ... }`, with its optional TTL bounds."""

    address: IPAddress
    min_ttl: int | None = None
    max_ttl: int | None = None
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Authentication:
    """The `authentication { auth_type ...; auth_pass ... }` block of an instance."""

    auth_type: AuthType | None = None
    auth_pass: str | None = None
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncGroup:
    """A `vrrp_sync_group NAME { ... }` block."""

    name: str
    group: tuple[str, ...] = ()
    track_interface: tuple[TrackInterface, ...] = ()
    track_script: tuple[TrackRef, ...] = ()
    track_file: tuple[TrackRef, ...] = ()
    notify_master: NotifyScript | None = None
    notify_backup: NotifyScript | None = None
    notify_fault: NotifyScript | None = None
    notify_stop: NotifyScript | None = None
    notify: NotifyScript | None = None
    unimplemented: tuple[RawStmt, ...] = ()
    # Where each keyword was written (model field -> position), for precise diagnostics.
    keyword_pos: Mapping[str, SourcePos] = field(default_factory=dict, compare=False, repr=False)
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)

    def at(self, attr: str) -> SourcePos:
        """Where `attr` was written, or the block's own position."""
        return self.keyword_pos.get(attr, self.pos)

    @property
    def key(self) -> Key:
        return ("vrrp_sync_group", self.name)


@dataclass(frozen=True, slots=True, kw_only=True)
class VrrpInstance:
    """One `vrrp_instance`. Inherited values (version, garp_*) are resolved from global_defs."""

    name: str
    state: VrrpState = kw.DEFAULT_STATE
    interface: str | None = None
    virtual_router_id: int = 0  # required; build reports its absence
    priority: int = kw.DEFAULT_PRIORITY
    advert_int: float = kw.DEFAULT_ADVERT_INT
    version: int = kw.DEFAULT_VRRP_VERSION
    unicast_src_ip: IPAddress | None = None
    unicast_peers: tuple[UnicastPeer, ...] = ()
    unicast_ttl: int | None = None
    check_unicast_src: bool = False
    mcast_dst_ip: IPAddress | None = None
    authentication: Authentication | None = None
    virtual_ipaddress: tuple[VirtualIpAddress, ...] = ()
    virtual_ipaddress_excluded: tuple[VirtualIpAddress, ...] = ()
    virtual_routes: tuple[Route, ...] = ()
    virtual_rules: tuple[Rule, ...] = ()
    dont_track_primary: bool = False
    track_interface: tuple[TrackInterface, ...] = ()
    track_script: tuple[TrackRef, ...] = ()
    track_file: tuple[TrackRef, ...] = ()
    notify_master: NotifyScript | None = None
    notify_backup: NotifyScript | None = None
    notify_fault: NotifyScript | None = None
    notify_stop: NotifyScript | None = None
    notify: NotifyScript | None = None
    nopreempt: bool = False
    preempt: bool = False  # the backward-compatible no-op spelling, kept for fmt
    preempt_delay: float = kw.DEFAULT_PREEMPT_DELAY
    accept: bool = False
    no_accept: bool = False
    # `use_vmac [NAME [MAC]]`: None off, () keepalived's defaults (vrrp.<VRID>, RFC MAC)
    use_vmac: tuple[str, ...] | None = None
    down_timer_adverts: int = kw.DEFAULT_DOWN_TIMER_ADVERTS
    garp_master_delay: float = kw.DEFAULT_GARP_MASTER_DELAY
    garp_master_repeat: int = kw.DEFAULT_GARP_MASTER_REPEAT
    garp_master_refresh: float = kw.DEFAULT_GARP_MASTER_REFRESH
    garp_master_refresh_repeat: int = kw.DEFAULT_GARP_MASTER_REFRESH_REPEAT
    lvs_sync_daemon_interface: str | None = None
    unimplemented: tuple[RawStmt, ...] = ()
    # Where each keyword was written (model field -> position), for precise diagnostics.
    keyword_pos: Mapping[str, SourcePos] = field(default_factory=dict, compare=False, repr=False)
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)

    def at(self, attr: str) -> SourcePos:
        """Where `attr` was written, or the block's own position."""
        return self.keyword_pos.get(attr, self.pos)

    @property
    def key(self) -> Key:
        return ("vrrp", self.name)

    @property
    def family(self) -> int:
        """4 or 6: the family of the first VIP (keepalived: VIPs decide the family)."""
        if self.virtual_ipaddress:
            return self.virtual_ipaddress[0].address.version
        return 4


# ---------------------------------------------------------------------------------------------
# LVS: checkers


@dataclass(frozen=True, slots=True, kw_only=True)
class Url:
    """A `url { ... }` block of HTTP_GET / SSL_GET."""

    path: str = "/"
    digest: str | None = None
    status_codes: tuple[tuple[int, int], ...] = kw.DEFAULT_STATUS_CODES
    virtualhost: str | None = None
    regex: str | None = None
    regex_no_match: bool = False
    method: HttpMethod = HttpMethod.GET
    headers: tuple[tuple[str, str], ...] = ()
    basic_auth: BasicAuth | None = None
    unimplemented: tuple[RawStmt, ...] = ()
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class BasicAuth:
    """HTTP basic authentication of a `url` block (user and password)."""

    user: str
    password: str
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class _CheckBase:
    """Fields every checker has. Timing values are resolved (checker > real server > VS)."""

    kind: CheckerKind = field(init=False)
    rs_key: Key = field(default=(), compare=False, repr=False)
    index: int = field(default=0, compare=False, repr=False)
    unimplemented: tuple[RawStmt, ...] = ()
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)

    @property
    def key(self) -> Key:
        """(rs_key, kind, connect_port or the checker's index among its kind)."""
        port = getattr(self, "connect_port", None)
        return (self.rs_key, self.kind.value, port if port is not None else self.index)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Timing(_CheckBase):
    """Fields of the checkers that poll on a timer: retries, delays, rise."""

    retry: int = kw.DEFAULT_RETRY_OTHER
    delay_before_retry: float = kw.DEFAULT_DELAY_BEFORE_RETRY_OTHER
    warmup: float | None = None  # None: a random delay up to delay_loop
    delay_loop: float = kw.DEFAULT_DELAY_LOOP
    alpha: bool = False
    rise: int = kw.DEFAULT_RISE


@dataclass(frozen=True, slots=True, kw_only=True)
class _Connection(_Timing):
    """Fields of the checkers that connect to the real server (or `connect_ip`)."""

    connect_ip: IPAddress | None = None  # None: the real server's address
    connect_port: int | None = None  # None: the real server's port
    bindto: IPAddress | None = None
    bind_port: int | None = None
    bind_if: str | None = None
    connect_timeout: float = kw.DEFAULT_CONNECT_TIMEOUT
    fwmark: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpCheck(_Connection):
    """A `TCP_CHECK { ... }` block."""

    kind: CheckerKind = field(default=CheckerKind.TCP_CHECK, init=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpGet(_Connection):
    """An `HTTP_GET { ... }` block."""

    kind: CheckerKind = field(default=CheckerKind.HTTP_GET, init=False)
    delay_before_retry: float = kw.DEFAULT_DELAY_BEFORE_RETRY[CheckerKind.HTTP_GET]
    virtualhost: str | None = None
    http_protocol: HttpProtocol = kw.DEFAULT_HTTP_PROTOCOL
    fast_recovery: bool = False
    urls: tuple[Url, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SslGet(HttpGet):
    """An `SSL_GET { ... }` block."""

    kind: CheckerKind = field(default=CheckerKind.SSL_GET, init=False)
    enable_sni: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class MiscCheck(_Timing):
    """A `MISC_CHECK { ... }` block: a script run as the check."""

    kind: CheckerKind = field(default=CheckerKind.MISC_CHECK, init=False)
    retry: int = kw.DEFAULT_RETRY[CheckerKind.MISC_CHECK]
    misc_path: str = ""
    misc_timeout: float | None = None  # None: delay_loop
    misc_dynamic: bool = False
    user: UserSpec | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SmtpCheck(_Connection):
    """An `SMTP_CHECK { ... }` block."""

    kind: CheckerKind = field(default=CheckerKind.SMTP_CHECK, init=False)
    helo_name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsCheck(_Connection):
    """A `DNS_CHECK { ... }` block."""

    kind: CheckerKind = field(default=CheckerKind.DNS_CHECK, init=False)
    retry: int = kw.DEFAULT_RETRY[CheckerKind.DNS_CHECK]
    type: DnsType = kw.DEFAULT_DNS_TYPE
    name: str = kw.DEFAULT_DNS_NAME


@dataclass(frozen=True, slots=True, kw_only=True)
class UdpCheck(_Connection):
    """A `UDP_CHECK { ... }` block."""

    kind: CheckerKind = field(default=CheckerKind.UDP_CHECK, init=False)
    payload: bytes | None = None  # None: a random payload
    require_reply: bool = False
    require_reply_data: str | None = None  # hex pattern; x/X nibbles are wildcards
    min_reply_length: int = kw.DEFAULT_UDP_MIN_REPLY
    max_reply_length: int = kw.DEFAULT_UDP_MAX_REPLY


@dataclass(frozen=True, slots=True, kw_only=True)
class PingCheck(_Connection):
    """A `PING_CHECK { ... }` block."""

    kind: CheckerKind = field(default=CheckerKind.PING_CHECK, init=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class FileCheck(_CheckBase):
    """A `FILE_CHECK { ... }` block: the state of a `track_file`."""

    kind: CheckerKind = field(default=CheckerKind.FILE_CHECK, init=False)
    track_file: str = ""
    weight: int = kw.DEFAULT_TRACK_FILE_WEIGHT
    weight_reverse: bool = False
    dynamic: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class BfdCheck(_CheckBase):
    """A `BFD_CHECK { ... }` block."""

    kind: CheckerKind = field(default=CheckerKind.BFD_CHECK, init=False)
    name: str = ""
    alpha: bool = False


Checker = (
    TcpCheck
    | HttpGet
    | SslGet
    | MiscCheck
    | SmtpCheck
    | DnsCheck
    | UdpCheck
    | PingCheck
    | FileCheck
    | BfdCheck
)

CHECKER_CLASSES: dict[CheckerKind, type[Checker]] = {
    CheckerKind.TCP_CHECK: TcpCheck,
    CheckerKind.HTTP_GET: HttpGet,
    CheckerKind.SSL_GET: SslGet,
    CheckerKind.MISC_CHECK: MiscCheck,
    CheckerKind.SMTP_CHECK: SmtpCheck,
    CheckerKind.DNS_CHECK: DnsCheck,
    CheckerKind.UDP_CHECK: UdpCheck,
    CheckerKind.PING_CHECK: PingCheck,
    CheckerKind.FILE_CHECK: FileCheck,
    CheckerKind.BFD_CHECK: BfdCheck,
}


# ---------------------------------------------------------------------------------------------
# LVS: real servers, virtual servers, groups


@dataclass(frozen=True, slots=True, kw_only=True)
class RealServer:
    """`real_server IP [PORT] { ... }`; `port` None when omitted (fwmark services)."""

    address: IPAddress
    port: int | None = None
    vs_key: Key = field(default=(), compare=False, repr=False)
    weight: int = kw.DEFAULT_WEIGHT
    lvs_method: Forwarding = field(default_factory=Forwarding)  # resolved from the VS
    uthreshold: int = 0
    lthreshold: int = 0
    inhibit_on_failure: bool = False  # resolved from the VS
    notify_up: NotifyScript | None = None
    notify_down: NotifyScript | None = None
    alpha: bool = False  # resolved from the VS
    retry: int | None = None  # None: the checker's own default
    delay_before_retry: float | None = None
    warmup: float | None = None
    connect_timeout: float = kw.DEFAULT_CONNECT_TIMEOUT
    delay_loop: float = kw.DEFAULT_DELAY_LOOP
    virtualhost: str | None = None
    rise: int = kw.DEFAULT_RISE
    checkers: tuple[Checker, ...] = ()
    unimplemented: tuple[RawStmt, ...] = ()
    # Where each keyword was written (model field -> position), for precise diagnostics.
    keyword_pos: Mapping[str, SourcePos] = field(default_factory=dict, compare=False, repr=False)
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)

    def at(self, attr: str) -> SourcePos:
        """Where `attr` was written, or the block's own position."""
        return self.keyword_pos.get(attr, self.pos)

    @property
    def key(self) -> Key:
        return (self.vs_key, self.address, self.port or 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class SorryServer:
    """`sorry_server IP [PORT]` of a virtual server."""

    address: IPAddress
    port: int | None = None
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class VsgMember:
    """A virtual_server_group line: an address range with optional port, or a fwmark.

    `first`..`last` is inclusive (a single address has first == last).
    """

    first: IPAddress | None = None
    last: IPAddress | None = None
    port: int | None = None
    fwmark: int | None = None
    family: IpFamily | None = None
    text: str = ""  # the range as written, for fmt
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class VirtualServerGroup:
    """A `virtual_server_group NAME { ... }` block."""

    name: str
    members: tuple[VsgMember, ...] = ()
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)

    @property
    def key(self) -> Key:
        return ("virtual_server_group", self.name)


@dataclass(frozen=True, slots=True, kw_only=True)
class VirtualServer:
    """`virtual_server IP [PORT]`, `virtual_server fwmark N` or `virtual_server group NAME`.

    Exactly one of `address`, `fwmark`, `group` is set. `persistence_timeout` None means not
    persistent; `persistence_granularity` is the mask as written (a netmask or prefix length).
    """

    address: IPAddress | None = None
    port: int = 0
    fwmark: int | None = None
    group: str | None = None
    protocol: Protocol = kw.DEFAULT_PROTOCOL
    ip_family: IpFamily | None = None
    lvs_sched: LvsSched = kw.DEFAULT_LVS_SCHED
    sched_flags: frozenset[SchedFlag] = frozenset()
    ops: bool = False
    lvs_method: Forwarding = field(default_factory=Forwarding)
    persistence_engine: str | None = None
    persistence_timeout: int | None = None
    persistence_granularity: str | None = None
    ha_suspend: bool = False
    virtualhost: str | None = None
    alpha: bool = False
    omega: bool = False
    quorum: int = kw.DEFAULT_QUORUM
    hysteresis: int = kw.DEFAULT_HYSTERESIS
    quorum_up: NotifyScript | None = None
    quorum_down: NotifyScript | None = None
    sorry_server: SorryServer | None = None
    sorry_server_inhibit: bool = False
    sorry_server_lvs_method: Forwarding | None = None
    inhibit_on_failure: bool = False
    retry: int | None = None
    delay_before_retry: float | None = None
    warmup: float | None = None
    connect_timeout: float = kw.DEFAULT_CONNECT_TIMEOUT
    delay_loop: float = kw.DEFAULT_DELAY_LOOP
    proxy_protocol: ProxyProtocol | None = None
    real_servers: tuple[RealServer, ...] = ()
    unimplemented: tuple[RawStmt, ...] = ()
    # Where each keyword was written (model field -> position), for precise diagnostics.
    keyword_pos: Mapping[str, SourcePos] = field(default_factory=dict, compare=False, repr=False)
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)

    def at(self, attr: str) -> SourcePos:
        """Where `attr` was written, or the block's own position."""
        return self.keyword_pos.get(attr, self.pos)

    @property
    def key(self) -> Key:
        return vs_key(
            address=self.address,
            port=self.port,
            fwmark=self.fwmark,
            group=self.group,
            protocol=self.protocol,
            ip_family=self.ip_family,
        )

    @property
    def is_fwmark(self) -> bool:
        return self.fwmark is not None


def vs_key(
    *,
    address: IPAddress | None,
    port: int,
    fwmark: int | None,
    group: str | None,
    protocol: Protocol,
    ip_family: IpFamily | None,
) -> Key:
    """A virtual server's identity: ("vs", VIP, port, proto), ("fwmark", mark, family) or
    ("group", name, proto)."""
    if fwmark is not None:
        return ("fwmark", fwmark, (ip_family or IpFamily.INET).value)
    if group is not None:
        return ("group", group, protocol.value)
    return ("vs", address, port, protocol.value)


# ---------------------------------------------------------------------------------------------
# The whole configuration


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """A whole configuration: every top-level block, includes resolved."""

    global_defs: GlobalDefs = field(default_factory=GlobalDefs)
    ssl: SslConfig | None = None
    static_ipaddress: tuple[VirtualIpAddress, ...] = ()
    static_routes: tuple[Route, ...] = ()
    static_rules: tuple[Rule, ...] = ()
    vrrp_scripts: tuple[VrrpScript, ...] = ()
    track_files: tuple[TrackFile, ...] = ()
    sync_groups: tuple[SyncGroup, ...] = ()
    vrrp_instances: tuple[VrrpInstance, ...] = ()
    virtual_server_groups: tuple[VirtualServerGroup, ...] = ()
    virtual_servers: tuple[VirtualServer, ...] = ()
    unimplemented: tuple[RawStmt, ...] = ()
    pos: SourcePos = field(default=NOPOS, compare=False, repr=False)
