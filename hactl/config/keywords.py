"""The configuration vocabulary: config-word enums, defaults and the keyword tables.

Every keyword hactl accepts is one row of a table below: its argument spec, the model field it
fills, whether hactl acts on it, its canonical spelling when it is a legacy synonym, and any
deprecation note. `build.py` walks these tables; `fmt.py` writes them back; the docs and the
tests read them. Defaults live here once (the `DEFAULT_*` constants): `model.py` uses them as
field defaults and `fmt.py` omits values equal to them.

Three kinds of rows:
* implemented rows: a typed value hactl acts on;
* `implemented=False` rows: keepalived knows the keyword, hactl parses and keeps it (typed when
  cheap, else as raw words) and reports the warning `not-implemented` ("accepted, not
  implemented") instead of dropping it silently;
* hactl extensions (`extension=True`), documented in docs/configuration.md; they never change
  the meaning of a keepalived configuration.

Keyword lists follow keepalived 2.2.7 (`man 5 keepalived.conf`; check_parser.c,
vrrp_parser.c, global_parser.c). Strict where keepalived is lenient: an unknown keyword is an
error, not a log line (keepalived issues #297, #1954).

Imports nothing from hactl but `ipvs.model` (for the sysctl names).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Final

from hactl.ipvs.model import IpvsSysctl

__all__ = [
    "BLOCKS",
    "AuthType",
    "Block",
    "CheckerKind",
    "DnsType",
    "FlushOnStop",
    "HttpMethod",
    "HttpProtocol",
    "IpFamily",
    "Kw",
    "LvsMethod",
    "LvsSched",
    "Protocol",
    "ProxyProtocol",
    "SchedFlag",
    "Scope",
    "TunnelCsum",
    "TunnelType",
    "VrrpState",
]


# ---------------------------------------------------------------------------------------------
# Config words (StrEnum: the value is the spelling written in the file)


class VrrpState(enum.StrEnum):
    MASTER = "MASTER"
    BACKUP = "BACKUP"


class AuthType(enum.StrEnum):
    PASS = "PASS"
    AH = "AH"


class LvsSched(enum.StrEnum):
    """IPVS schedulers keepalived 2.2.7 accepts for `lvs_sched` / `lb_algo`."""

    RR = "rr"
    WRR = "wrr"
    LC = "lc"
    WLC = "wlc"
    LBLC = "lblc"
    SH = "sh"
    MH = "mh"
    DH = "dh"
    FO = "fo"
    OVF = "ovf"
    LBLCR = "lblcr"
    SED = "sed"
    NQ = "nq"
    TWOS = "twos"


class LvsMethod(enum.StrEnum):
    NAT = "NAT"
    DR = "DR"
    TUN = "TUN"


class TunnelType(enum.StrEnum):
    IPIP = "ipip"
    GUE = "gue"
    GRE = "gre"


class TunnelCsum(enum.StrEnum):
    NOCSUM = "nocsum"
    CSUM = "csum"
    REMCSUM = "remcsum"


class Protocol(enum.StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


class SchedFlag(enum.StrEnum):
    """Scheduler flags (`ipvsadm -b`); sh-*/mh-* are named spellings of flag-1/flag-2."""

    FLAG_1 = "flag-1"
    FLAG_2 = "flag-2"
    FLAG_3 = "flag-3"
    SH_FALLBACK = "sh-fallback"
    SH_PORT = "sh-port"
    MH_FALLBACK = "mh-fallback"
    MH_PORT = "mh-port"


class IpFamily(enum.StrEnum):
    INET = "inet"
    INET6 = "inet6"


class HttpProtocol(enum.StrEnum):
    HTTP_1_0 = "1.0"
    HTTP_1_0C = "1.0C"
    HTTP_1_1 = "1.1"


class HttpMethod(enum.StrEnum):
    """hactl extension `method` in an HTTP_GET/SSL_GET url block."""

    GET = "GET"
    HEAD = "HEAD"
    POST = "POST"
    PUT = "PUT"
    OPTIONS = "OPTIONS"


class DnsType(enum.StrEnum):
    A = "A"
    NS = "NS"
    CNAME = "CNAME"
    SOA = "SOA"
    MX = "MX"
    TXT = "TXT"
    AAAA = "AAAA"


class Scope(enum.StrEnum):
    SITE = "site"
    LINK = "link"
    HOST = "host"
    NOWHERE = "nowhere"
    GLOBAL = "global"


class FlushOnStop(enum.StrEnum):
    """`lvs_flush_on_stop` alone flushes everything; `lvs_flush_on_stop VS` only our services."""

    ALL = "all"
    VS = "VS"


class ProxyProtocol(enum.StrEnum):
    """hactl extension `proxy_protocol` (embedded engine only)."""

    V2 = "v2"


class CheckerKind(enum.StrEnum):
    TCP_CHECK = "TCP_CHECK"
    HTTP_GET = "HTTP_GET"
    SSL_GET = "SSL_GET"
    MISC_CHECK = "MISC_CHECK"
    SMTP_CHECK = "SMTP_CHECK"
    DNS_CHECK = "DNS_CHECK"
    UDP_CHECK = "UDP_CHECK"
    PING_CHECK = "PING_CHECK"
    FILE_CHECK = "FILE_CHECK"
    BFD_CHECK = "BFD_CHECK"


# ---------------------------------------------------------------------------------------------
# Defaults (man 5 keepalived.conf; keepalived 2.2.7 check_data.c / vrrp_data.c where the man
# page is silent). Each is defined once, here.

DEFAULT_DELAY_LOOP: Final = 60.0  # "60 seconds if not specified"
DEFAULT_CONNECT_TIMEOUT: Final = 5.0  # "The default is 5 seconds"
DEFAULT_LVS_SCHED: Final = LvsSched.WLC  # IPVS_DEF_SCHED
DEFAULT_LVS_METHOD: Final = LvsMethod.NAT  # "default is NAT"
# check_data.c: "no protocol set - defaulting to UDP" (protocol 0 means UDP to the kernel).
DEFAULT_PROTOCOL: Final = Protocol.UDP
DEFAULT_PERSISTENCE_TIMEOUT: Final = 360  # `persistence_timeout` without value: 6 minutes
DEFAULT_QUORUM: Final = 1
DEFAULT_HYSTERESIS: Final = 0
DEFAULT_WEIGHT: Final = 1
DEFAULT_RISE: Final = 1  # hactl extension; 1 keeps keepalived's behaviour
# Checker retry / delay_before_retry defaults depend on the checker (man: "Default: 1 unless
# specified below"; "Defaults to delay_loop for DNS_CHECK, 3 seconds for HTTP_GET and SSL_GET,
# and 1 second otherwise"; DNS_CHECK retry 3, MISC_CHECK retry 0).
DEFAULT_RETRY: Final[dict[CheckerKind, int]] = {
    CheckerKind.DNS_CHECK: 3,
    CheckerKind.MISC_CHECK: 0,
}
DEFAULT_RETRY_OTHER: Final = 1
DEFAULT_DELAY_BEFORE_RETRY: Final[dict[CheckerKind, float]] = {
    CheckerKind.HTTP_GET: 3.0,
    CheckerKind.SSL_GET: 3.0,
}
DEFAULT_DELAY_BEFORE_RETRY_OTHER: Final = 1.0
DEFAULT_STATUS_CODES: Final = ((200, 299),)
DEFAULT_HTTP_PROTOCOL: Final = HttpProtocol.HTTP_1_0
DEFAULT_DNS_TYPE: Final = DnsType.SOA
DEFAULT_DNS_NAME: Final = "."
DEFAULT_UDP_MIN_REPLY: Final = 0
DEFAULT_UDP_MAX_REPLY: Final = 255

DEFAULT_PRIORITY: Final = 100
DEFAULT_ADVERT_INT: Final = 1.0
DEFAULT_VRRP_VERSION: Final = 2
DEFAULT_STATE: Final = VrrpState.BACKUP
DEFAULT_PREEMPT_DELAY: Final = 0.0
DEFAULT_DOWN_TIMER_ADVERTS: Final = 3
DEFAULT_GARP_MASTER_DELAY: Final = 5.0
DEFAULT_GARP_MASTER_REPEAT: Final = 5
DEFAULT_GARP_MASTER_REFRESH: Final = 0.0
DEFAULT_GARP_MASTER_REFRESH_REPEAT: Final = 1
DEFAULT_GARP_INTERVAL: Final = 0.0
DEFAULT_GNA_INTERVAL: Final = 0.0
DEFAULT_MCAST_GROUP4: Final = ipaddress.IPv4Address("224.0.0.18")
DEFAULT_MCAST_GROUP6: Final = ipaddress.IPv6Address("ff02::12")
DEFAULT_SMTP_CONNECT_TIMEOUT: Final = 30.0
DEFAULT_SMTP_PORT: Final = 25

DEFAULT_SCRIPT_INTERVAL: Final = 1.0
DEFAULT_SCRIPT_WEIGHT: Final = 0
DEFAULT_SCRIPT_RISE: Final = 1
DEFAULT_SCRIPT_FALL: Final = 1
DEFAULT_TRACK_FILE_WEIGHT: Final = 1

DEFAULT_SYNC_PORT: Final = 8848
DEFAULT_SYNC_GROUP4: Final = ipaddress.IPv4Address("224.0.0.81")
SYNC_AUTH_KEY_MIN_LEN: Final = 16  # hactl extension: HMAC-SHA256 key, at least 128 bits


# ---------------------------------------------------------------------------------------------
# Argument specs


@dataclass(frozen=True, slots=True)
class Flag:
    """`keyword [<BOOL>]`: present means True; an optional on|off|true|false|yes|no."""


@dataclass(frozen=True, slots=True)
class Int:
    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class Timer:
    """`<TIMER>`: seconds, fractional allowed (man: PARAMETER SYNTAX)."""

    lo: float
    hi: float


@dataclass(frozen=True, slots=True)
class Str:
    """Exactly one word."""


@dataclass(frozen=True, slots=True)
class Text:
    """One or more words, kept as one string (scripts, paths with arguments)."""


@dataclass(frozen=True, slots=True)
class Choice:
    enum: type[enum.StrEnum]


@dataclass(frozen=True, slots=True)
class Addr:
    """One IP address; `version` 4 or 6 restricts the family."""

    version: int | None = None


@dataclass(frozen=True, slots=True)
class Custom:
    """Arguments (and block, when `block` is set) parsed by `build.CUSTOM[name]`."""

    name: str
    block: bool = False


@dataclass(frozen=True, slots=True)
class Raw:
    """Kept as words (not-implemented keywords); `block` allows a raw sub-block."""

    min_args: int = 0
    max_args: int | None = None
    block: bool = False


@dataclass(frozen=True, slots=True)
class Sub:
    """A sub-block walked with the table `BLOCKS[name]`."""

    name: str


Spec = Flag | Int | Timer | Str | Text | Choice | Addr | Custom | Raw | Sub


@dataclass(frozen=True, slots=True)
class Kw:
    """One keyword of one block."""

    name: str
    spec: Spec
    field: str = ""  # the model field; defaults to the keyword with '-' replaced by '_'
    implemented: bool = True
    alias_of: str = ""  # legacy synonym: the canonical keyword fmt writes
    deprecated: str = ""  # a note: keepalived still accepts it, but prefer ...
    extension: bool = False  # hactl-only keyword
    many: bool = False  # repeatable: each occurrence adds to a tuple field
    doc: str = ""

    # Derived once here, read once per statement by the builder.
    takes_block: bool = dataclasses.field(init=False, default=False)
    notice: bool = dataclasses.field(init=False, default=False)  # deprecated or not implemented
    attr: str = dataclasses.field(init=False, default="")  # the model field

    def __post_init__(self) -> None:
        spec = self.spec
        block = isinstance(spec, Sub) or (isinstance(spec, Custom | Raw) and spec.block)
        object.__setattr__(self, "takes_block", block)
        object.__setattr__(self, "notice", bool(self.deprecated) or not self.implemented)
        attr = self.field or self.alias_of or self.name.replace("-", "_")
        object.__setattr__(self, "attr", attr)


@dataclass(frozen=True, slots=True)
class Block:
    """The keyword table of one block kind."""

    name: str
    keywords: dict[str, Kw] = field(default_factory=dict)

    def get(self, keyword: str) -> Kw | None:
        return self.keywords.get(keyword)

    def names(self) -> tuple[str, ...]:
        return tuple(self.keywords)


def _block(name: str, *rows: Kw) -> Block:
    table: dict[str, Kw] = {}
    for row in rows:
        if row.name in table:
            raise ValueError(f"duplicate keyword {row.name!r} in table {name!r}")
        table[row.name] = row
    return Block(name, table)


def _ni(name: str, spec: Spec | None = None, *, deprecated: str = "") -> Kw:
    """A keyword keepalived knows and hactl keeps but does not act on."""
    spec = spec if spec is not None else Raw()
    return Kw(name, spec, implemented=False, deprecated=deprecated)


FLAG = Flag()
STR = Str()
TEXT = Text()
ADDR = Addr()
PORT = Int(1, 65535)
# track_* weights (man: track_interface/track_script weight -253..253)
TRACK_WEIGHT = Int(-253, 253)
SCRIPT = Custom("script")  # <STRING>|<QUOTED-STRING> [username [groupname]]
USER = Custom("user")  # USERNAME [GROUPNAME]

# ---------------------------------------------------------------------------------------------
# Common checker keywords (check_api.c install_checker_common_keywords)

_CONNECTION = (
    Kw("connect_ip", ADDR),
    Kw("connect_port", PORT),
    Kw("bindto", ADDR),
    Kw("bind_port", PORT),
    Kw("bind_if", STR),
    Kw("connect_timeout", Timer(0.000001, 86400)),
    Kw("fwmark", Int(0, 2**32 - 1)),
)
_TIMING = (
    Kw("retry", Int(0, 2**31 - 1)),
    Kw("delay_before_retry", Timer(0, 86400)),
    Kw("warmup", Timer(0, 86400)),
    Kw("delay_loop", Timer(0.000001, 86400)),
    Kw("alpha", FLAG),
    _ni("log_all_failures", FLAG),
    Kw(
        "rise",
        Int(1, 1000),
        extension=True,
        doc="consecutive successful checks before a failed real server is brought back",
    ),
)

_URL = _block(
    "url",
    Kw("path", STR),
    Kw("digest", Custom("digest")),
    Kw("status_code", Custom("status_code"), field="status_codes"),
    Kw("virtualhost", STR),
    Kw("regex", TEXT),
    Kw("regex_no_match", FLAG),
    _ni("regex_options", Raw(1)),
    _ni("regex_min_offset", Int(0, 2**31 - 1)),
    _ni("regex_max_offset", Int(0, 2**31 - 1)),
    _ni("regex_stack", Raw(2, 2)),
    Kw("method", Choice(HttpMethod), extension=True, doc="HTTP method of the probe (GET)"),
    Kw(
        "header",
        Custom("header"),
        field="headers",
        many=True,
        extension=True,
        doc='an extra request header "Name: value" (repeatable)',
    ),
    Kw(
        "basic_auth",
        Custom("basic_auth"),
        extension=True,
        doc="HTTP basic authentication: USER PASSWORD",
    ),
)

_HTTP_ROWS = (
    *_CONNECTION,
    *_TIMING,
    Kw("nb_get_retry", Int(0, 2**31 - 1), alias_of="retry", deprecated="use retry"),
    Kw("virtualhost", STR),
    Kw("http_protocol", Choice(HttpProtocol)),
    Kw("fast_recovery", FLAG),
    Kw("url", Sub("url"), field="urls", many=True),
)

_TCP_CHECK = _block("TCP_CHECK", *_CONNECTION, *_TIMING)
# keepalived installs enable_sni for HTTP_GET too, where it has no effect.
_HTTP_GET = _block("HTTP_GET", *_HTTP_ROWS, _ni("enable_sni", FLAG))
_SSL_GET = _block("SSL_GET", *_HTTP_ROWS, Kw("enable_sni", FLAG))
_MISC_CHECK = _block(
    "MISC_CHECK",
    *_TIMING,
    Kw("misc_path", TEXT),
    Kw("misc_timeout", Timer(0.000001, 86400)),
    Kw("misc_dynamic", FLAG),
    Kw("user", USER),
)
_SMTP_CHECK = _block(
    "SMTP_CHECK",
    *_CONNECTION,
    *_TIMING,
    Kw("helo_name", TEXT),
    _ni("host", Raw(0, 0, block=True), deprecated="add one SMTP_CHECK per host instead"),
)
_DNS_CHECK = _block(
    "DNS_CHECK",
    *_CONNECTION,
    *_TIMING,
    Kw("type", Choice(DnsType)),
    Kw("name", STR),
)
_UDP_CHECK = _block(
    "UDP_CHECK",
    *_CONNECTION,
    *_TIMING,
    Kw("payload", Custom("hex")),
    Kw("require_reply", Custom("require_reply")),
    Kw("min_reply_length", Int(0, 65535)),
    Kw("max_reply_length", Int(0, 65535)),
)
_PING_CHECK = _block("PING_CHECK", *_CONNECTION, *_TIMING)
_FILE_CHECK = _block(
    "FILE_CHECK",
    Kw("track_file", STR),
    Kw("weight", Custom("file_weight")),
    Kw("dynamic", FLAG),
)
_BFD_CHECK = _block("BFD_CHECK", Kw("name", STR), Kw("alpha", FLAG))

CHECKER_BLOCKS: Final[dict[CheckerKind, Block]] = {
    CheckerKind.TCP_CHECK: _TCP_CHECK,
    CheckerKind.HTTP_GET: _HTTP_GET,
    CheckerKind.SSL_GET: _SSL_GET,
    CheckerKind.MISC_CHECK: _MISC_CHECK,
    CheckerKind.SMTP_CHECK: _SMTP_CHECK,
    CheckerKind.DNS_CHECK: _DNS_CHECK,
    CheckerKind.UDP_CHECK: _UDP_CHECK,
    CheckerKind.PING_CHECK: _PING_CHECK,
    CheckerKind.FILE_CHECK: _FILE_CHECK,
    CheckerKind.BFD_CHECK: _BFD_CHECK,
}
# Checkers hactl does not run yet: accepted and kept, with a `not-implemented` warning.
CHECKERS_NOT_IMPLEMENTED: Final = frozenset({CheckerKind.BFD_CHECK, CheckerKind.SMTP_CHECK})

_CHECKER_ROWS = tuple(
    Kw(
        kind.value,
        Sub(kind.value),
        field="checkers",
        implemented=kind not in CHECKERS_NOT_IMPLEMENTED,
        many=True,
    )
    for kind in CheckerKind
)

# ---------------------------------------------------------------------------------------------
# LVS: virtual_server, real_server, virtual_server_group, SSL

_REAL_SERVER = _block(
    "real_server",
    Kw("weight", Int(0, 65535)),
    Kw("lvs_method", Custom("lvs_method")),
    Kw("uthreshold", Int(0, 2**31 - 1)),
    Kw("lthreshold", Int(0, 2**31 - 1)),
    Kw("inhibit_on_failure", FLAG),
    Kw("notify_up", SCRIPT),
    Kw("notify_down", SCRIPT),
    Kw("alpha", FLAG),
    Kw("retry", Int(0, 2**31 - 1)),
    Kw("delay_before_retry", Timer(0, 86400)),
    Kw("warmup", Timer(0, 86400)),
    Kw("connect_timeout", Timer(0.000001, 86400)),
    Kw("delay_loop", Timer(0.000001, 86400)),
    _ni("smtp_alert", FLAG),
    Kw("virtualhost", STR),
    _ni("snmp_name", STR),
    Kw(
        "rise",
        Int(1, 1000),
        extension=True,
        doc="default `rise` for this real server's checkers",
    ),
    *_CHECKER_ROWS,
)

_VIRTUAL_SERVER = _block(
    "virtual_server",
    # Row order is the order `hactl fmt` writes: service, scheduling, health, quorum, servers.
    Kw("protocol", Choice(Protocol)),
    Kw("ip_family", Choice(IpFamily)),
    Kw("lvs_sched", Choice(LvsSched)),
    Kw("lb_algo", Choice(LvsSched), alias_of="lvs_sched"),
    *(Kw(flag.value, Custom("sched_flag"), field="sched_flags", many=True) for flag in SchedFlag),
    _ni("hashed", FLAG, deprecated="ignored since Linux 2.6.35"),
    Kw("ops", FLAG),
    Kw("lvs_method", Custom("lvs_method")),
    Kw("lb_kind", Custom("lvs_method"), alias_of="lvs_method"),
    Kw("persistence_engine", STR),
    Kw("persistence_timeout", Custom("persistence_timeout")),
    Kw("persistence_granularity", Custom("granularity")),
    Kw(
        "proxy_protocol",
        Choice(ProxyProtocol),
        extension=True,
        doc="embedded engine: send a PROXY protocol v2 header to real servers",
    ),
    Kw("delay_loop", Timer(0.000001, 86400)),
    Kw("connect_timeout", Timer(0.000001, 86400)),
    Kw("retry", Int(0, 2**31 - 1)),
    Kw("delay_before_retry", Timer(0, 86400)),
    Kw("warmup", Timer(0, 86400)),
    Kw("inhibit_on_failure", FLAG),
    Kw("alpha", FLAG),
    Kw("omega", FLAG),
    Kw("ha_suspend", FLAG),
    Kw("virtualhost", STR),
    _ni("smtp_alert", FLAG),
    _ni("snmp_name", STR),
    Kw("quorum", Int(1, 2**31 - 1)),
    Kw("hysteresis", Int(0, 2**31 - 1)),
    Kw("quorum_up", SCRIPT),
    Kw("quorum_down", SCRIPT),
    _ni("weight", Int(1, 65535)),
    Kw("sorry_server", Custom("sorry_server")),
    Kw("sorry_server_inhibit", FLAG),
    Kw("sorry_server_lvs_method", Custom("lvs_method")),
    Kw("real_server", Custom("real_server", block=True), field="real_servers", many=True),
)

_SSL = _block(
    "SSL",
    Kw("password", STR),
    Kw("ca", STR),
    Kw("certificate", STR),
    Kw("key", STR),
)

# ---------------------------------------------------------------------------------------------
# VRRP

_TRACK_ROWS = (
    Kw("track_interface", Custom("track_interface", block=True), many=True),
    Kw("track_script", Custom("track_script", block=True), many=True),
    Kw("track_file", Custom("track_file", block=True), many=True),
    _ni("track_process", Raw(0, 0, block=True)),
    _ni("track_bfd", Raw(0, 0, block=True)),
)
_NOTIFY_ROWS = (
    Kw("notify_master", SCRIPT),
    Kw("notify_backup", SCRIPT),
    Kw("notify_fault", SCRIPT),
    Kw("notify_stop", SCRIPT),
    Kw("notify", SCRIPT),
)

_VRRP_SYNC_GROUP = _block(
    "vrrp_sync_group",
    Kw("group", Custom("names", block=True), many=True),
    *_TRACK_ROWS,
    *_NOTIFY_ROWS,
    _ni("smtp_alert", FLAG),
    _ni("global_tracking", FLAG, deprecated="use sync_group_tracking_weight"),
    _ni("sync_group_tracking_weight", FLAG),
    _ni("notify_priority_changes", FLAG),
)

_AUTHENTICATION = _block(
    "authentication",
    Kw("auth_type", Choice(AuthType)),
    Kw("auth_pass", STR),
)

_VRRP_INSTANCE = _block(
    "vrrp_instance",
    Kw("use_vmac", Custom("use_vmac")),
    _ni("use_vmac_addr", FLAG),
    _ni("vmac_xmit_base", FLAG),
    _ni("use_ipvlan", Raw(0, 3)),
    Kw("unicast_peer", Custom("unicast_peer", block=True), field="unicast_peers", many=True),
    _ni("unicast_fault_no_peer", FLAG),
    Kw("check_unicast_src", FLAG),
    _ni("old_unicast_checksum", Raw(0, 1)),
    _ni("native_ipv6", FLAG, deprecated="the VIPs decide the family"),
    Kw("state", Choice(VrrpState)),
    Kw("interface", STR),
    _ni("vrf", STR),
    Kw("dont_track_primary", FLAG),
    *_TRACK_ROWS,
    Kw("mcast_src_ip", ADDR, field="unicast_src_ip", alias_of="unicast_src_ip"),
    Kw("unicast_src_ip", ADDR),
    Kw("mcast_dst_ip", ADDR),
    _ni("track_src_ip", FLAG),
    Kw("virtual_router_id", Int(1, 255)),
    Kw("unicast_ttl", Int(0, 255)),
    Kw("version", Int(2, 3)),
    Kw("priority", Int(1, 255)),
    Kw("advert_int", Timer(0.01, 255)),
    Kw("virtual_ipaddress", Custom("addresses", block=True), many=True),
    Kw("virtual_ipaddress_excluded", Custom("addresses", block=True), many=True),
    _ni("promote_secondaries", FLAG),
    _ni("linkbeat_use_polling", FLAG, deprecated="use a linkbeat_interfaces block"),
    Kw("virtual_routes", Custom("routes", block=True), many=True, implemented=False),
    Kw("virtual_rules", Custom("rules", block=True), many=True, implemented=False),
    Kw("accept", FLAG),
    Kw("no_accept", FLAG),
    _ni("skip_check_adv_addr", FLAG),
    _ni("strict_mode", FLAG),
    Kw("preempt", FLAG),
    Kw("nopreempt", FLAG),
    Kw("preempt_delay", Timer(0, 1000)),
    _ni("debug", Int(0, 4)),
    *_NOTIFY_ROWS,
    _ni("notify_deleted", SCRIPT),
    _ni("notify_master_rx_lower_pri", SCRIPT),
    _ni("smtp_alert", FLAG),
    _ni("notify_priority_changes", FLAG),
    Kw(
        "lvs_sync_daemon_interface",
        STR,
        deprecated="use `lvs_sync_daemon IFACE INSTANCE` in global_defs",
    ),
    Kw("garp_master_delay", Timer(0, 86400)),
    Kw("garp_master_refresh", Timer(0, 86400)),
    Kw("garp_master_repeat", Int(1, 255)),
    Kw("garp_master_refresh_repeat", Int(1, 255)),
    _ni("garp_lower_prio_delay", Timer(0, 86400)),
    _ni("garp_lower_prio_repeat", Int(1, 255)),
    Kw("down_timer_adverts", Int(1, 100)),
    _ni("garp_extra_if", Raw(1, 2)),
    _ni("vmac_garp_intvl", Raw(1, 2), deprecated="use garp_extra_if"),
    _ni("lower_prio_no_advert", FLAG),
    _ni("higher_prio_send_advert", FLAG),
    _ni("kernel_rx_buf_size", Raw(0, 1)),
    Kw("authentication", Sub("authentication")),
)

_VRRP_SCRIPT = _block(
    "vrrp_script",
    Kw("script", TEXT),
    Kw("interval", Timer(0.000001, 86400)),
    Kw("timeout", Timer(0.000001, 86400)),
    Kw("weight", Custom("script_weight")),
    Kw("rise", Int(1, 2**31 - 1)),
    Kw("fall", Int(1, 2**31 - 1)),
    Kw("user", USER),
    Kw("init_fail", FLAG),
)

_TRACK_FILE = _block(
    "vrrp_track_file",
    Kw("file", TEXT),
    Kw("weight", Custom("file_weight")),
    Kw("init_file", Custom("init_file")),
)

# ---------------------------------------------------------------------------------------------
# global_defs (global_parser.c)

_IPVS_SYSCTL = _block(
    "ipvs_sysctl",
    *(
        Kw(
            name,
            Custom("sync_threshold") if name == "sync_threshold" else Custom("sysctl"),
            extension=True,
            doc=f"/proc/sys/net/ipv4/vs/{name}"
            + (" (two values: threshold and period)" if name == "sync_threshold" else ""),
        )
        for name in IpvsSysctl.names()
    ),
)

_GLOBAL_NI_RAW = (
    "process_names",
    "process_name",
    "vrrp_process_name",
    "checker_process_name",
    "lvs_process_name",
    "bfd_process_name",
    "startup_script",
    "startup_script_timeout",
    "shutdown_script",
    "shutdown_script_timeout",
    "max_auto_priority",
    "min_auto_priority_delay",
    "dynamic_interfaces",
    "disable_local_igmp",
    "vrrp_garp_lower_prio_delay",
    "vrrp_garp_lower_prio_repeat",
    "vrrp_down_timer_adverts",
    "vrrp_garp_extra_if",
    "vrrp_vmac_garp_intvl",
    "vrrp_lower_prio_no_advert",
    "vrrp_higher_prio_send_advert",
    "vrrp_iptables",
    "vrrp_ipsets",
    "nftables",
    "nftables_priority",
    "nftables_ifindex",
    "nftables_ipvs",
    "nftables_ipvs_priority",
    "nftables_ipvs_start_fwmark",
    "nftables_counters",
    "vrrp_skip_check_adv_addr",
    "vrrp_strict",
    "vrrp_priority",
    "vrrp_no_swap",
    "vrrp_rt_priority",
    "vrrp_cpu_affinity",
    "vrrp_rlimit_rttime",
    "vrrp_rlimit_rtime",
    "notify_fifo",
    "notify_fifo_script",
    "vrrp_notify_fifo",
    "vrrp_notify_fifo_script",
    "vrrp_notify_priority_changes",
    "fifo_write_vrrp_states_on_reload",
    "lvs_notify_fifo",
    "lvs_notify_fifo_script",
    "checker_priority",
    "checker_no_swap",
    "checker_rt_priority",
    "checker_cpu_affinity",
    "checker_rlimit_rttime",
    "checker_rlimit_rtime",
    "bfd_priority",
    "bfd_no_swap",
    "bfd_rt_priority",
    "bfd_cpu_affinity",
    "bfd_rlimit_rttime",
    "bfd_rlimit_rtime",
    "snmp_socket",
    "enable_traps",
    "enable_snmp_vrrp",
    "enable_snmp_keepalived",
    "enable_snmp_rfc",
    "enable_snmp_rfcv2",
    "enable_snmp_rfcv3",
    "enable_snmp_checker",
    "enable_dbus",
    "dbus_service_name",
    "vrrp_netlink_cmd_rcv_bufs",
    "vrrp_netlink_cmd_rcv_bufs_force",
    "vrrp_netlink_monitor_rcv_bufs",
    "vrrp_netlink_monitor_rcv_bufs_force",
    "process_monitor_rcv_bufs",
    "process_monitor_rcv_bufs_force",
    "lvs_netlink_cmd_rcv_bufs",
    "lvs_netlink_cmd_rcv_bufs_force",
    "lvs_netlink_monitor_rcv_bufs",
    "lvs_netlink_monitor_rcv_bufs_force",
    "rs_init_notifies",
    "no_checker_emails",
    "vrrp_rx_bufs_policy",
    "vrrp_rx_bufs_multiplier",
    "vrrp_startup_delay",
    "log_unknown_vrids",
    "vmac_prefix",
    "vmac_addr_prefix",
    "umask",
    "random_seed",
    "reload_check_config",
    "reload_time_file",
    "reload_repeat",
    "reload_file",
    "include_check",
    "config_save_dir",
    "tmp_config_directory",
    "data_use_instance",
    "smtp_alert",
    "smtp_alert_vrrp",
    "smtp_alert_checker",
    "checker_log_all_failures",
    "no_email_faults",
)

_GLOBAL_DEFS = _block(
    "global_defs",
    Kw("router_id", STR),
    _ni("notification_email", Custom("names", block=True)),
    _ni("notification_email_from", STR),
    _ni("smtp_server", Custom("smtp_server")),
    _ni("smtp_helo_name", STR),
    _ni("smtp_connect_timeout", Timer(0.000001, 86400)),
    Kw("script_user", USER),
    Kw("enable_script_security", FLAG),
    Kw("default_interface", STR),
    Kw("vrrp_mcast_group4", Addr(4)),
    Kw("vrrp_mcast_group6", Addr(6)),
    Kw("vrrp_version", Int(2, 3)),
    Kw("vrrp_garp_master_delay", Timer(0, 86400)),
    Kw("vrrp_garp_master_repeat", Int(1, 255)),
    Kw("vrrp_garp_master_refresh", Timer(0, 86400)),
    Kw("vrrp_garp_master_refresh_repeat", Int(1, 255)),
    Kw("vrrp_garp_interval", Timer(0, 1)),
    Kw("vrrp_gna_interval", Timer(0, 1)),
    Kw("vrrp_min_garp", FLAG),
    Kw("vrrp_check_unicast_src", FLAG),
    Kw("lvs_sync_daemon", Custom("lvs_sync_daemon")),
    Kw("lvs_timeouts", Custom("lvs_timeouts")),
    Kw("lvs_flush", FLAG),
    Kw("lvs_flush_on_stop", Custom("flush_on_stop")),
    Kw(
        "lvs_flush_onstop",
        Custom("flush_on_stop"),
        alias_of="lvs_flush_on_stop",
        deprecated="use lvs_flush_on_stop",
    ),
    Kw(
        "ipvs_sysctl",
        Sub("ipvs_sysctl"),
        extension=True,
        doc="/proc/sys/net/ipv4/vs tunables the embedded engine obeys and the kernel backend "
        "writes",
    ),
    Kw(
        "sync_auth_key",
        Custom("sync_auth_key"),
        extension=True,
        doc="shared secret of the HMAC-SHA256 trailer on connection-sync datagrams",
    ),
    *(_ni(name) for name in _GLOBAL_NI_RAW),
)

# ---------------------------------------------------------------------------------------------
# The top level

_TOP = _block(
    "<top>",
    Kw("global_defs", Sub("global_defs"), many=True),
    Kw("static_ipaddress", Custom("addresses", block=True), many=True, implemented=False),
    Kw("static_routes", Custom("routes", block=True), many=True, implemented=False),
    Kw("static_rules", Custom("rules", block=True), many=True, implemented=False),
    Kw("vrrp_script", Custom("named", block=True), field="vrrp_scripts", many=True),
    Kw("track_file", Custom("named", block=True), field="track_files", many=True),
    Kw(
        "vrrp_track_file",
        Custom("named", block=True),
        field="track_files",
        alias_of="track_file",
        many=True,
    ),
    Kw("vrrp_sync_group", Custom("named", block=True), field="sync_groups", many=True),
    Kw("vrrp_instance", Custom("named", block=True), field="vrrp_instances", many=True),
    Kw("virtual_server_group", Custom("vsg", block=True), field="virtual_server_groups", many=True),
    Kw("virtual_server", Custom("virtual_server", block=True), field="virtual_servers", many=True),
    Kw("SSL", Sub("SSL"), field="ssl"),
    _ni("net_namespace", Raw(1, 1)),
    _ni("net_namespace_ipvs", Raw(0, 1)),
    _ni("namespace_with_ipsets", Raw(0, 0)),
    _ni("use_pid_dir", Raw(0, 0)),
    _ni("instance", Raw(1, 1)),
    _ni("child_wait_time", Raw(1, 1)),
    _ni("linkbeat_use_polling", Raw(0, 0)),
    _ni("linkbeat_interfaces", Raw(0, 0, block=True)),
    _ni("interface_up_down_delays", Raw(0, 0, block=True)),
    _ni("track_group", Raw(1, 1, block=True)),
    _ni("garp_group", Raw(0, 0, block=True)),
    _ni("vrrp_track_process", Raw(1, 1, block=True)),
    _ni("bfd_instance", Raw(1, 1, block=True)),
)

BLOCKS: Final[dict[str, Block]] = {
    b.name: b
    for b in (
        _TOP,
        _GLOBAL_DEFS,
        _IPVS_SYSCTL,
        _VRRP_SCRIPT,
        _TRACK_FILE,
        _VRRP_SYNC_GROUP,
        _VRRP_INSTANCE,
        _AUTHENTICATION,
        _VIRTUAL_SERVER,
        _REAL_SERVER,
        _URL,
        _SSL,
        *CHECKER_BLOCKS.values(),
    )
}
TOP: Final = _TOP

# Which checker-level timing keywords inherit from the real server and virtual server.
INHERITED_TIMING: Final = ("connect_timeout", "delay_loop", "retry", "delay_before_retry", "warmup")

# Kernel ranges of the ipvs_sysctl tunables (Documentation/networking/ipvs-sysctl.rst and
# ip_vs_ctl.c proc handlers; spec/ipvs.md §7.2 and §2.2). Unlisted ones: 0..INT_MAX.
SYSCTL_RANGES: Final[dict[str, tuple[int, int]]] = {
    "am_droprate": (0, 2**31 - 1),
    "amemthresh": (0, 2**31 - 1),
    "backup_only": (0, 1),
    "cache_bypass": (0, 1),
    "conn_reuse_mode": (0, 3),  # bit 0: reschedule, bit 1: also for conntrack/OPS
    "conntrack": (0, 1),
    "drop_entry": (0, 3),
    "drop_packet": (0, 3),
    "expire_nodest_conn": (0, 1),
    "expire_quiescent_template": (0, 1),
    "ignore_tunneled": (0, 1),
    "nat_icmp_send": (0, 1),
    "pmtu_disc": (0, 1),
    "run_estimation": (0, 1),
    "schedule_icmp": (0, 1),
    "secure_tcp": (0, 3),
    "sloppy_sctp": (0, 1),
    "sloppy_tcp": (0, 1),
    "snat_reroute": (0, 1),
    "sync_persist_mode": (0, 1),
    "sync_ports": (1, 2**31 - 1),  # must also be a power of two
    "sync_retries": (0, 3),
    "sync_version": (0, 1),
}
