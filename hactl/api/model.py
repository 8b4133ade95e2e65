"""Data the control API exposes: read-side snapshots, operator overrides, reload plans, and the
text forms of the stable keys that name servers in URLs, on the command line and in the
override state file.

Owns: `vs_id` / `rs_id` (the one text form of a `ServiceKey` and a real server's address:port,
with their parsers), the frozen snapshot types the `Director` port returns, and their JSON
encoding (`*_json` functions; the API never serialises anything else).

Text forms (stable: they are keys in the state file and path segments in the API):
* virtual service: `tcp:10.0.0.1:80`, `udp:[2001:db8::1]:53`, `sctp:...`, `fwm:12`,
  `fwm6:12` (an IPv6 fwmark service); on the command line the `tcp:` prefix may be left out;
* real server: `10.0.0.2:8080`, `[2001:db8::2]:8080`.

Pure data: imports only hactl's model modules.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hactl.ipvs.model import (
    AF_INET,
    AF_INET6,
    ConnStatus,
    DestStatus,
    IPAddress,
    IpProto,
    ServiceKey,
    ServiceStatus,
    Stats,
)

__all__ = [
    "AddressError",
    "CheckSummary",
    "DaemonInfo",
    "Health",
    "LatencyHistogram",
    "Override",
    "OverrideKind",
    "RealServerStatus",
    "ReloadChange",
    "ReloadResult",
    "RsKey",
    "VirtualServerStatus",
    "VrrpInstanceStatus",
    "conn_json",
    "format_rs",
    "format_vs",
    "parse_rs",
    "parse_vs",
    "service_json",
]

RsKey = tuple[IPAddress, int]
"""A real server inside its virtual service: (address, port), as `Destination.key`."""

_PROTO_WORDS = {"tcp": IpProto.TCP, "udp": IpProto.UDP, "sctp": IpProto.SCTP}
_PROTO_NAMES = {v: k for k, v in _PROTO_WORDS.items()}


class AddressError(ValueError):
    """A server key in text form could not be parsed; the message says what was expected."""


def _host_port(text: str, *, what: str) -> tuple[IPAddress, int]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise AddressError(f"{what} {text!r}: expected [IPv6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise AddressError(f"{what} {text!r}: expected ADDRESS:PORT")
        if ":" in host:
            raise AddressError(f"{what} {text!r}: write IPv6 addresses as [ADDRESS]:PORT")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise AddressError(f"{what} {text!r}: {host!r} is not an IP address") from None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise AddressError(f"{what} {text!r}: port must be a number 0-65535")
    return addr, int(port_text)


def _bracket(addr: IPAddress, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def parse_vs(text: str, *, default_protocol: IpProto | None = None) -> ServiceKey:
    """`tcp:10.0.0.1:80`, `udp:[::1]:53`, `fwm:12`, `fwm6:12` -> ServiceKey.

    Args:
        text: the text form.
        default_protocol: used when `text` has no protocol prefix (the CLI passes TCP);
            None makes the prefix mandatory (the API and the state file).

    Raises:
        AddressError: naming what is wrong.
    """
    word, sep, rest = text.partition(":")
    lowered = word.lower()
    if sep and lowered in ("fwm", "fwm6"):
        if not rest.isdigit() or not 0 < int(rest) < 2**32:
            raise AddressError(f"virtual server {text!r}: fwmark must be 1-4294967295")
        return ServiceKey.for_fwmark(int(rest), family=AF_INET6 if lowered == "fwm6" else AF_INET)
    if sep and lowered in _PROTO_WORDS:
        protocol, hostport = _PROTO_WORDS[lowered], rest
    elif default_protocol is not None:
        protocol, hostport = default_protocol, text
    else:
        raise AddressError(
            f"virtual server {text!r}: expected tcp|udp|sctp:ADDRESS:PORT or fwm:MARK"
        )
    addr, port = _host_port(hostport, what="virtual server")
    return ServiceKey.for_address(protocol, addr, port)


def format_vs(key: ServiceKey) -> str:
    """The stable text form of a virtual service (inverse of `parse_vs`)."""
    if key.is_fwmark:
        return f"fwm{'6' if key.family == AF_INET6 else ''}:{key.fwmark}"
    assert key.addr is not None  # non-fwmark keys always carry an address
    return f"{_PROTO_NAMES.get(key.protocol, 'ip')}:{_bracket(key.addr, key.port)}"


def parse_rs(text: str) -> RsKey:
    """`10.0.0.2:80` or `[2001:db8::2]:80` -> (address, port). Raises AddressError."""
    return _host_port(text, what="real server")


def format_rs(key: RsKey) -> str:
    """The stable text form of a real server (inverse of `parse_rs`)."""
    return _bracket(key[0], key[1])


# ---------------------------------------------------------------------------------------------
# Operator overrides


class OverrideKind(enum.StrEnum):
    """What the operator asked for a real server; absence of an override means "enabled":
    health checks alone decide.

    * DRAIN: in IPVS with weight 0 (quiesced): existing connections continue, no new ones
      (persistent clients still reach it through their templates unless those are expired).
    * DISABLE: removed from the IPVS service (health checks keep running, so `enable` puts
      it back at once if it is healthy). A finished drain ends here unless told to stay
      quiesced.
    * WEIGHT: the configured weight replaced by `weight` while the server is healthy.
    """

    DRAIN = "drain"
    DISABLE = "disable"
    WEIGHT = "weight"


@dataclass(frozen=True, slots=True, kw_only=True)
class Override:
    """One operator override. `weight` only for WEIGHT; `reason` is free text for people."""

    kind: OverrideKind
    weight: int | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if (self.kind is OverrideKind.WEIGHT) != (self.weight is not None):
            raise ValueError("a weight override carries a weight, other overrides none")
        if self.weight is not None and not 0 <= self.weight <= 65535:
            raise ValueError(f"weight {self.weight} out of range 0-65535")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind.value, "reason": self.reason}
        if self.weight is not None:
            out["weight"] = self.weight
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Override:
        """Raises ValueError (or TypeError/KeyError, all caught by callers as bad input)."""
        weight = data.get("weight")
        if weight is not None and (not isinstance(weight, int) or isinstance(weight, bool)):
            raise ValueError("weight must be an integer")
        reason = data.get("reason", "")
        if not isinstance(reason, str):
            raise ValueError("reason must be a string")
        return cls(kind=OverrideKind(data["kind"]), weight=weight, reason=reason)


# ---------------------------------------------------------------------------------------------
# Read side


class Health(enum.StrEnum):
    UP = "up"
    DOWN = "down"
    UNKNOWN = "unknown"  # no verdict yet (before the first checks complete)


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencyHistogram:
    """Cumulative latency histogram of one server's checks, Prometheus style: `counts[i]`
    observations <= `bounds[i]` (cumulative), `count` in total (the +Inf bucket)."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    count: int = 0
    sum: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckSummary:
    """The last check of a real server and the counters behind the check metrics."""

    kind: str  # TCP_CHECK, HTTP_GET, ...
    ok: bool | None  # None: never completed
    detail: str = ""
    latency: float | None = None  # seconds, of the last completed probe
    at: float | None = None  # wall clock of the last result
    results: Mapping[str, int] = field(default_factory=dict)  # "success"/"failure" -> count
    histogram: LatencyHistogram | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RealServerStatus:
    addr: IPAddress
    port: int
    health: Health
    configured_weight: int
    effective_weight: int  # what IPVS has now; 0 quiesced
    in_ipvs: bool  # False: removed (down without inhibit, disabled, drained)
    activeconns: int = 0
    inactconns: int = 0
    persistconns: int = 0
    checks: tuple[CheckSummary, ...] = ()
    override: Override | None = None

    @property
    def key(self) -> RsKey:
        return (self.addr, self.port)


@dataclass(frozen=True, slots=True, kw_only=True)
class VirtualServerStatus:
    key: ServiceKey
    scheduler: str
    quorum_up: bool
    sorry_active: bool
    real_servers: tuple[RealServerStatus, ...]
    name: str = ""  # keepalived virtual_server_group or comment, when the daemon has one

    def real_server(self, rs: RsKey) -> RealServerStatus | None:
        for server in self.real_servers:
            if server.key == rs:
                return server
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class VrrpInstanceStatus:
    name: str
    interface: str
    vrid: int
    family: int
    state: str  # INIT, BACKUP, MASTER, FAULT, STOP (VrrpState names)
    priority: int  # configured
    effective_priority: int  # after tracking
    master_address: IPAddress | None
    last_advert_source: IPAddress | None
    transitions: int
    split_brain: int
    adverts_sent: int = 0
    adverts_received: int = 0
    adverts_dropped: Mapping[str, int] = field(default_factory=dict)  # by DropReason value
    vips: tuple[str, ...] = ()
    state_since: float | None = None  # wall clock


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonInfo:
    version: str
    config_path: str
    config_loaded_at: float  # wall clock
    started_at: float  # wall clock
    backend: str  # "kernel" | "embedded"
    router_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadChange:
    """One line of a reload plan: `action` add/remove/change, `subject` e.g.
    "virtual_server tcp:10.0.0.1:80" or "real_server tcp:10.0.0.1:80 10.0.0.2:80"."""

    action: str
    subject: str
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadResult:
    """What a reload did (or, with dry_run, would do). `ok` False: the new configuration was
    rejected and nothing changed; `diagnostics` are "path:line:col: message" lines."""

    ok: bool
    dry_run: bool
    changes: tuple[ReloadChange, ...] = ()
    diagnostics: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dry_run": self.dry_run,
            "changes": [
                {"action": c.action, "subject": c.subject, "detail": c.detail}
                for c in self.changes
            ],
            "diagnostics": list(self.diagnostics),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReloadResult:
        return cls(
            ok=bool(data["ok"]),
            dry_run=bool(data["dry_run"]),
            changes=tuple(
                ReloadChange(action=c["action"], subject=c["subject"], detail=c.get("detail", ""))
                for c in data.get("changes", ())
            ),
            diagnostics=tuple(str(d) for d in data.get("diagnostics", ())),
        )


# ---------------------------------------------------------------------------------------------
# JSON encoding of the read side


def _addr(addr: IPAddress | None) -> str | None:
    return None if addr is None else str(addr)


def _stats_json(stats: Stats) -> dict[str, int]:
    return {
        "conns": stats.conns,
        "inpkts": stats.inpkts,
        "outpkts": stats.outpkts,
        "inbytes": stats.inbytes,
        "outbytes": stats.outbytes,
    }


def check_json(check: CheckSummary) -> dict[str, Any]:
    return {
        "kind": check.kind,
        "ok": check.ok,
        "detail": check.detail,
        "latency": check.latency,
        "at": check.at,
        "results": dict(check.results),
    }


def real_server_json(rs: RealServerStatus) -> dict[str, Any]:
    return {
        "id": format_rs(rs.key),
        "address": str(rs.addr),
        "port": rs.port,
        "health": rs.health.value,
        "configured_weight": rs.configured_weight,
        "effective_weight": rs.effective_weight,
        "in_ipvs": rs.in_ipvs,
        "connections": {
            "active": rs.activeconns,
            "inactive": rs.inactconns,
            "persistent": rs.persistconns,
        },
        "checks": [check_json(c) for c in rs.checks],
        "override": None if rs.override is None else rs.override.to_json(),
    }


def virtual_server_json(vs: VirtualServerStatus) -> dict[str, Any]:
    return {
        "id": format_vs(vs.key),
        "name": vs.name,
        "scheduler": vs.scheduler,
        "quorum_up": vs.quorum_up,
        "sorry_active": vs.sorry_active,
        "real_servers": [real_server_json(rs) for rs in vs.real_servers],
    }


def vrrp_json(inst: VrrpInstanceStatus) -> dict[str, Any]:
    return {
        "name": inst.name,
        "interface": inst.interface,
        "vrid": inst.vrid,
        "family": "inet6" if inst.family == AF_INET6 else "inet",
        "state": inst.state,
        "state_since": inst.state_since,
        "priority": inst.priority,
        "effective_priority": inst.effective_priority,
        "master_address": _addr(inst.master_address),
        "last_advert_source": _addr(inst.last_advert_source),
        "transitions": inst.transitions,
        "split_brain": inst.split_brain,
        "adverts": {
            "sent": inst.adverts_sent,
            "received": inst.adverts_received,
            "dropped": dict(inst.adverts_dropped),
        },
        "vips": list(inst.vips),
    }


def _dest_json(ds: DestStatus) -> dict[str, Any]:
    d = ds.dest
    return {
        "id": format_rs(d.key),
        "address": str(d.addr),
        "port": d.port,
        "forward": d.fwd.ipvsadm_name,
        "weight": d.weight,
        "u_threshold": d.u_threshold,
        "l_threshold": d.l_threshold,
        "activeconns": ds.activeconns,
        "inactconns": ds.inactconns,
        "persistconns": ds.persistconns,
        "overloaded": ds.overloaded,
        "stats": _stats_json(ds.stats),
    }


def service_json(st: ServiceStatus) -> dict[str, Any]:
    svc = st.service
    return {
        "id": format_vs(svc.key),
        "scheduler": svc.scheduler,
        "persistence_timeout": svc.persistence_timeout,
        "netmask": svc.netmask,
        "one_packet": svc.one_packet,
        "stats": _stats_json(st.stats),
        "destinations": [_dest_json(ds) for ds in st.dests],
    }


def _proto_name(protocol: int) -> str:
    try:
        return IpProto(protocol).name
    except ValueError:
        return f"IP_{protocol}"


def conn_json(c: ConnStatus) -> dict[str, Any]:
    return {
        "protocol": _proto_name(int(c.protocol)),
        "client": format_rs((c.caddr, c.cport)),
        "virtual": format_rs((c.vaddr, c.vport)),
        "destination": format_rs((c.daddr, c.dport)),
        "state": c.state,
        "expires_in": c.expires_in,
        "flags": c.flags,
        "fwmark": c.fwmark,
    }
