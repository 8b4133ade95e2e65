"""Runtime specifications of health checks, real servers and virtual servers (frozen data).

These are the health checker's own view of configuration, in keepalived's vocabulary
(`man 5 keepalived.conf`, sections "Virtual server(s)", real_server and each CHECKER_TYPE).
Values here are *resolved*: inheritance (virtual server -> real server -> checker) has already
been applied by whoever builds the specs, and defaults that depend on the checker kind are
class defaults of the checker's spec (retry 0 for MISC_CHECK, 3 for DNS_CHECK; delay_before_retry
3 s for HTTP_GET/SSL_GET and delay_loop for DNS_CHECK; warmup defaults to delay_loop).

Identity is by stable keys (`RealServerKey`, `CheckKey`): a reload that keeps a key keeps the
health state attached to it, whatever else changed.

Pure data: imports nothing from hactl but `ipvs.model`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import ClassVar

from hactl.ipvs.model import FwdMethod, IPAddress, ServiceKey

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DELAY_LOOP",
    "IPVS_WEIGHT_MAX",
    "BfdCheck",
    "CheckKey",
    "CheckKind",
    "CheckSpec",
    "ConnectOptions",
    "DnsCheck",
    "FileCheck",
    "HttpGetCheck",
    "MiscCheck",
    "PingCheck",
    "RealServerKey",
    "RealServerSpec",
    "ScriptSpec",
    "SmtpCheck",
    "SorryServerSpec",
    "SslGetCheck",
    "TcpCheck",
    "TlsOptions",
    "UdpCheck",
    "UrlSpec",
    "VirtualServerSpec",
]

# man 5 keepalived.conf: "delay timer for checker polling (60 seconds if not specified)".
DEFAULT_DELAY_LOOP = 60.0
# man 5 keepalived.conf: "Optional connection timeout in seconds. The default is 5 seconds".
DEFAULT_CONNECT_TIMEOUT = 5.0
# keepalived clamps effective weights to [0, INT32_MAX] (IPVS_WEIGHT_LIMIT).
IPVS_WEIGHT_MAX = 2**31 - 1


class CheckKind(enum.StrEnum):
    """The checker block names of keepalived, as written in configuration."""

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


@dataclass(frozen=True, slots=True)
class RealServerKey:
    """Identity of a real server: its virtual service, address and port.

    Its hash is computed once: keys are looked up on every probe result, and hashing an
    ipaddress object is not cheap.
    """

    vs: ServiceKey
    addr: IPAddress
    port: int
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.vs, self.addr, self.port)))

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        host = f"[{self.addr}]" if self.addr.version == 6 else str(self.addr)
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class CheckKey:
    """Identity of one checker: real server, kind, target and ordinal among equal ones.

    `ordinal` separates two checkers of the same kind and target on one real server
    (keepalived allows "multiple of each type"); it counts in configuration order.
    """

    rs: RealServerKey
    kind: CheckKind
    target: str = ""
    ordinal: int = 0
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.rs, self.kind, self.target, self.ordinal)))

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        suffix = f"#{self.ordinal}" if self.ordinal else ""
        target = f"@{self.target}" if self.target else ""
        return f"{self.rs}/{self.kind}{target}{suffix}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ScriptSpec:
    """A script to run: argv as configured, and the user/group to run it as.

    `user` None means the global script_user (or, failing that, the daemon's own user).
    """

    argv: tuple[str, ...]
    user: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        if not self.argv or not self.argv[0]:
            raise ValueError("a script needs a program")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectOptions:
    """keepalived's "generic connection options" of a checker.

    `connect_ip`/`connect_port` None mean the real server's address/port.
    """

    connect_ip: IPAddress | None = None
    connect_port: int | None = None
    bindto: IPAddress | None = None
    bind_port: int | None = None
    bind_if: str | None = None
    fwmark: int = 0
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT

    def __post_init__(self) -> None:
        if not self.connect_timeout > 0:
            raise ValueError("connect_timeout must be positive")
        for port in (self.connect_port, self.bind_port):
            if port is not None and not 0 <= port <= 65535:
                raise ValueError(f"port out of range: {port}")
        if self.fwmark < 0:
            raise ValueError("fwmark must not be negative")


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckSpec:
    """Fields common to every checker (man 5 keepalived.conf, CHECKER_TYPE).

    `warmup` None means "up to delay_loop" (keepalived: "Enabled by default, with the
    maximum at delay_loop. Specify 0 to disable"). `delay_before_retry` None means the
    kind's default (`effective_delay_before_retry`). `rise` is the hactl extension: that many
    consecutive successes before a failed checker counts as up again (1 = keepalived).
    `alpha`: the checker starts failed and the real server out of the pool until it succeeds.
    """

    connect: ConnectOptions = field(default_factory=ConnectOptions)
    delay_loop: float = DEFAULT_DELAY_LOOP
    retry: int = 1
    delay_before_retry: float | None = None
    warmup: float | None = None
    alpha: bool = False
    rise: int = 1
    log_all_failures: bool = False

    KIND: ClassVar[CheckKind | None] = None

    @property
    def kind(self) -> CheckKind:
        """The checker block name; each concrete spec class fixes it in `KIND`."""
        kind = type(self).KIND
        assert kind is not None  # __post_init__ refuses the abstract base
        return kind

    def __post_init__(self) -> None:
        if type(self).KIND is None:
            raise TypeError("CheckSpec is abstract: use TcpCheck, HttpGetCheck, ...")
        if not (self.delay_loop > 0 and math.isfinite(self.delay_loop)):
            raise ValueError("delay_loop must be a positive number of seconds")
        if self.retry < 0:
            raise ValueError("retry must not be negative")
        if self.delay_before_retry is not None and self.delay_before_retry < 0:
            raise ValueError("delay_before_retry must not be negative")
        if self.warmup is not None and self.warmup < 0:
            raise ValueError("warmup must not be negative")
        if self.rise < 1:
            raise ValueError("rise must be at least 1")

    @property
    def effective_delay_before_retry(self) -> float:
        """man 5 keepalived.conf: 3 s for HTTP_GET/SSL_GET, delay_loop for DNS_CHECK, else 1 s."""
        if self.delay_before_retry is not None:
            return self.delay_before_retry
        return self._default_delay_before_retry()

    def _default_delay_before_retry(self) -> float:
        return 1.0

    @property
    def effective_warmup(self) -> float:
        return self.delay_loop if self.warmup is None else self.warmup

    @property
    def timeout(self) -> float:
        """How long one probe may run before it is cancelled and counted as failed."""
        return self.connect.connect_timeout

    def target_label(self) -> str:
        """The part of the check key that names what is probed (connect overrides)."""
        c = self.connect
        ip = "" if c.connect_ip is None else str(c.connect_ip)
        port = "" if c.connect_port is None else str(c.connect_port)
        return f"{ip}:{port}" if ip or port else ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpCheck(CheckSpec):
    """TCP_CHECK: a connect() that completes within connect_timeout."""

    KIND: ClassVar[CheckKind | None] = CheckKind.TCP_CHECK


@dataclass(frozen=True, slots=True, kw_only=True)
class UrlSpec:
    """One `url { }` block of HTTP_GET/SSL_GET.

    `status_codes` are inclusive ranges; man 5 keepalived.conf: "Default is 200-299".
    `digest` is the lowercase hex MD5 of the body (as genhash prints it).
    `regex` is searched in the body (Python `re` syntax, a subset of PCRE2);
    `regex_no_match` inverts the sense.
    """

    path: str = "/"
    digest: str | None = None
    status_codes: tuple[tuple[int, int], ...] = ((200, 299),)
    regex: str | None = None
    regex_no_match: bool = False
    virtualhost: str | None = None

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"url path must start with '/': {self.path!r}")
        if self.digest is not None:
            d = self.digest.lower()
            if len(d) != 32 or any(ch not in "0123456789abcdef" for ch in d):
                raise ValueError(f"digest must be 32 hex digits: {self.digest!r}")
            object.__setattr__(self, "digest", d)
        if not self.status_codes:
            raise ValueError("status_code needs at least one code or range")
        for low, high in self.status_codes:
            if not 100 <= low <= high <= 999:
                raise ValueError(f"bad status code range {low}-{high}")

    def status_ok(self, status: int) -> bool:
        # a loop, not any(<generator>): this runs for every HTTP probe
        for low, high in self.status_codes:  # noqa: SIM110
            if low <= status <= high:
                return True
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsOptions:
    """Client TLS settings of SSL_GET (keepalived's global `SSL { }` block, plus hactl's
    `verify` extension: keepalived never verifies the server certificate).
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    password: str | None = None
    verify: bool = False
    verify_hostname: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpGetCheck(CheckSpec):
    """HTTP_GET: every url must answer with an accepted status, digest and regex.

    hactl extensions (keepalived issue #2118): `method`, extra `headers`, `basic_auth`
    (user, password). `http_protocol` is "1.0", "1.0C" (1.0 plus Connection: close) or
    "1.1" (which always sends Connection: close); keepalived's default is 1.0.
    """

    urls: tuple[UrlSpec, ...] = (UrlSpec(),)
    virtualhost: str | None = None
    http_protocol: str = "1.0"
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    basic_auth: tuple[str, str] | None = None
    max_body: int = 1 << 20

    KIND: ClassVar[CheckKind | None] = CheckKind.HTTP_GET

    def __post_init__(self) -> None:
        CheckSpec.__post_init__(self)
        if self.http_protocol not in ("1.0", "1.0C", "1.1"):
            raise ValueError(f"http_protocol must be 1.0, 1.0C or 1.1: {self.http_protocol!r}")
        if not self.urls:
            raise ValueError("HTTP_GET needs at least one url")
        if not self.method.isascii() or not self.method.isalpha() or not self.method.isupper():
            raise ValueError(f"bad HTTP method {self.method!r}")
        for name, value in self.headers:
            if not name or any(ch in name for ch in ":\r\n ") or "\r" in value or "\n" in value:
                raise ValueError(f"bad HTTP header {name!r}")

    def _default_delay_before_retry(self) -> float:
        return 3.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SslGetCheck(HttpGetCheck):
    """SSL_GET: HTTP_GET over TLS. `enable_sni` sends the virtualhost (or connect address)
    as SNI; `tls_compliant` closes with a close_notify instead of just dropping the socket.
    """

    enable_sni: bool = False
    tls_compliant: bool = False
    tls: TlsOptions = field(default_factory=TlsOptions)

    KIND: ClassVar[CheckKind | None] = CheckKind.SSL_GET


@dataclass(frozen=True, slots=True, kw_only=True)
class MiscCheck(CheckSpec):
    """MISC_CHECK: run `script`; exit 0 is success, 1 failure, and with `misc_dynamic`
    2-255 is success with weight = status - 2. Killed (whole process group) at misc_timeout.

    man 5 keepalived.conf: "The retry default is 0". `misc_timeout` None means delay_loop.
    """

    script: ScriptSpec
    misc_timeout: float | None = None
    misc_dynamic: bool = False
    retry: int = 0

    KIND: ClassVar[CheckKind | None] = CheckKind.MISC_CHECK

    @property
    def timeout(self) -> float:
        return self.delay_loop if self.misc_timeout is None else self.misc_timeout

    def target_label(self) -> str:
        return " ".join(self.script.argv)


@dataclass(frozen=True, slots=True, kw_only=True)
class SmtpCheck(CheckSpec):
    """SMTP_CHECK: read a 2xx banner, send HELO, expect 250, then QUIT."""

    helo_name: str = "localhost"

    KIND: ClassVar[CheckKind | None] = CheckKind.SMTP_CHECK


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsCheck(CheckSpec):
    """DNS_CHECK: one query over UDP; success is a response with our id, QR set and
    RCODE NOERROR. man 5 keepalived.conf: type default SOA, name default ".", retry default 3.
    """

    query_type: str = "SOA"
    name: str = "."
    retry: int = 3

    KIND: ClassVar[CheckKind | None] = CheckKind.DNS_CHECK

    def __post_init__(self) -> None:
        CheckSpec.__post_init__(self)
        if self.query_type.upper() not in ("A", "NS", "CNAME", "SOA", "MX", "TXT", "AAAA"):
            raise ValueError(f"unsupported DNS query type {self.query_type!r}")
        object.__setattr__(self, "query_type", self.query_type.upper())

    def _default_delay_before_retry(self) -> float:
        return self.delay_loop


@dataclass(frozen=True, slots=True, kw_only=True)
class UdpCheck(CheckSpec):
    """UDP_CHECK: send `payload` (random bytes if None); an ICMP error is a failure.

    With `require_reply`, a reply whose length lies in [min_reply_length, max_reply_length]
    must arrive, and if `reply_pattern` is set (bytes, with `reply_mask` bits set where the
    hex string had X) it must match up to the shorter of the two.
    """

    payload: bytes | None = None
    require_reply: bool = False
    reply_pattern: bytes | None = None
    reply_mask: bytes | None = None
    min_reply_length: int = 0
    max_reply_length: int = 255

    KIND: ClassVar[CheckKind | None] = CheckKind.UDP_CHECK

    @property
    def timeout(self) -> float:
        # Without require_reply a success is "no ICMP error within connect_timeout": the
        # probe waits that long, so its deadline needs a little room beyond it.
        if self.require_reply:
            return self.connect.connect_timeout
        return self.connect.connect_timeout + 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class PingCheck(CheckSpec):
    """PING_CHECK: one ICMP (or ICMPv6) echo that is answered within connect_timeout."""

    KIND: ClassVar[CheckKind | None] = CheckKind.PING_CHECK


@dataclass(frozen=True, slots=True, kw_only=True)
class FileCheck(CheckSpec):
    """FILE_CHECK: the number in `path` decides (keepalived track_file semantics).

    With `weight` 0 a non-zero value means down. Otherwise value * weight (negated with
    `reverse`) is the adjustment; at or below -2**31 the checker is down, and with
    `dynamic` the adjustment is added to the real server's weight. keepalived watches the
    file with inotify; hactl reads it every delay_loop (default 1 s here), with no retries.
    """

    path: str
    weight: int = 1
    reverse: bool = False
    dynamic: bool = False
    delay_loop: float = 1.0
    retry: int = 0
    warmup: float | None = 0.0

    KIND: ClassVar[CheckKind | None] = CheckKind.FILE_CHECK

    def target_label(self) -> str:
        return self.path


@dataclass(frozen=True, slots=True, kw_only=True)
class BfdCheck(CheckSpec):
    """BFD_CHECK: parsed, not implemented. It never probes and never fails the server;
    the composition root warns once (`check.not_implemented`)."""

    name: str = ""

    KIND: ClassVar[CheckKind | None] = CheckKind.BFD_CHECK

    def target_label(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True, kw_only=True)
class RealServerSpec:
    """A real_server block as the health checker needs it."""

    addr: IPAddress
    port: int
    weight: int = 1
    fwd: FwdMethod = FwdMethod.MASQ
    u_threshold: int = 0
    l_threshold: int = 0
    inhibit_on_failure: bool = False
    notify_up: ScriptSpec | None = None
    notify_down: ScriptSpec | None = None
    checks: tuple[CheckSpec, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.weight <= IPVS_WEIGHT_MAX:
            raise ValueError(f"weight out of range: {self.weight}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")

    def key(self, vs: ServiceKey) -> RealServerKey:
        return RealServerKey(vs, self.addr, self.port)

    def check_keys(
        self, vs: ServiceKey, rs_key: RealServerKey | None = None
    ) -> tuple[CheckKey, ...]:
        """Stable keys of this server's checkers, in configuration order.

        `rs_key` (equal to `self.key(vs)`) lets the caller share one key object, which makes
        dictionary lookups hit on identity.
        """
        if rs_key is None:
            rs_key = self.key(vs)
        seen: dict[tuple[CheckKind, str], int] = {}
        keys = []
        for check in self.checks:
            ident = (check.kind, check.target_label())
            ordinal = seen.get(ident, 0)
            seen[ident] = ordinal + 1
            keys.append(CheckKey(rs_key, check.kind, ident[1], ordinal))
        return tuple(keys)


@dataclass(frozen=True, slots=True, kw_only=True)
class SorryServerSpec:
    """`sorry_server` (+ `sorry_server_inhibit`, `sorry_server_lvs_method`)."""

    addr: IPAddress
    port: int
    weight: int = 1
    fwd: FwdMethod = FwdMethod.MASQ
    inhibit: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class VirtualServerSpec:
    """The health policy of one virtual_server.

    man 5 keepalived.conf: quorum "Defaults to 1", hysteresis "Defaults to 0".
    `omega`: on shutdown run the RS notify_down and quorum_down scripts.
    `ha_suspend`: no checks while this director does not hold the virtual address
    (hactl: while it is not VRRP master).
    """

    key: ServiceKey
    real_servers: tuple[RealServerSpec, ...] = ()
    quorum: int = 1
    hysteresis: int = 0
    quorum_up: ScriptSpec | None = None
    quorum_down: ScriptSpec | None = None
    sorry_server: SorryServerSpec | None = None
    ha_suspend: bool = False
    omega: bool = False

    def __post_init__(self) -> None:
        if self.quorum < 0 or self.hysteresis < 0:
            raise ValueError("quorum and hysteresis must not be negative")
        seen: set[tuple[IPAddress, int]] = set()
        for rs in self.real_servers:
            if (rs.addr, rs.port) in seen:
                raise ValueError(f"duplicate real server {rs.addr}:{rs.port}")
            seen.add((rs.addr, rs.port))

