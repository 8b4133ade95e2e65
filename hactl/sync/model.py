"""Data of the sync daemon: its configuration, its roles, and the observability snapshots.

`SyncDaemonConfig` is what keepalived's `lvs_sync_daemon IFACE INSTANCE [id N] [maxlen N]
[port N] [ttl N] [group ADDR]` plus the `sync_*` tunables (spec/ipvs.md §1.1, §1.8, §2.2) say;
`max_sync_len()` resolves `maxlen` exactly as the kernel does (§1.1). The stats types are frozen
snapshots, built by the cores and read by the control API and metrics.

Pure data: imports nothing from hactl but `ipvs.model`.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hactl.ipvs.model import AF_INET, AF_INET6, IPAddress

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_PORT",
    "DEFAULT_QLEN_MAX",
    "DEFAULT_TTL",
    "FLUSH_INTERVAL",
    "PeerStats",
    "SenderStats",
    "SyncDaemonConfig",
    "SyncRole",
    "SyncStats",
    "max_sync_len",
    "parse_lvs_sync_daemon",
]

# §1.1 transport defaults.
DEFAULT_GROUP = ipaddress.IPv4Address("224.0.0.81")
DEFAULT_PORT = 8848
DEFAULT_TTL = 1
# §1.8: a partial datagram leaves once it is IPVS_SYNC_FLUSH_TIME (2 s) old.
FLUSH_INTERVAL = 2.0
# §1.8: the kernel's default is free pages / 32, a number of no use to a user-space sender;
# 1024 datagrams (about 1.5 MB of 1472-byte messages) absorbs several seconds of a busy table.
DEFAULT_QLEN_MAX = 1024

_IP_UDP_HLEN = {AF_INET: 28, AF_INET6: 48}
_MAX_PORTS = 64


class SyncRole(enum.Enum):
    """What the daemon does; VRRP drives it (keepalived starts/stops the kernel daemons)."""

    NONE = "none"
    MASTER = "master"
    BACKUP = "backup"


def max_sync_len(
    maxlen: int | None, *, family: int = AF_INET, master: bool = True, mtu: int = 1500
) -> int:
    """The kernel's `sync_maxlen` for a daemon (§1.1), in bytes of UDP payload.

    Args:
        maxlen: the configured value, or None when not configured.
        family: the multicast group's family (IP + UDP header of 28 or 48 bytes).
        master: the master's default ignores the MTU; the backup's does not.
        mtu: the interface MTU (backup default only).
    """
    hlen = _IP_UDP_HLEN[family]
    if maxlen is None:
        if master:
            return 1500 - hlen
        return min(max(mtu, 1500), 65535) - hlen
    return min(max(maxlen, 1 if master else 1024), 65535 - hlen)


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncDaemonConfig:
    """One sync daemon (both directions), as configuration describes it.

    `interface` and `instance` come from `lvs_sync_daemon IFACE INSTANCE`; `syncid`, `maxlen`,
    `port`, `ttl` and `group` from its options; `sync_ports`, `version` and `qlen_max` from the
    `sync_ports`, `sync_version`, `sync_qlen_max` and `sync_sock_size` (SO_SNDBUF / SO_RCVBUF
    when above 0) tunables. `auth_key` enables the hactl
    HMAC extension (docs/sync.md). `source` overrides the sender's source address (the kernel
    uses the interface's primary IPv4 address). `multicast_loop` exists for tests on one host;
    the kernel always turns it off.
    """

    interface: str
    instance: str = ""
    syncid: int = 0
    maxlen: int | None = None
    port: int = DEFAULT_PORT
    ttl: int = DEFAULT_TTL
    group: IPAddress = DEFAULT_GROUP
    sync_ports: int = 1
    version: int = 1
    qlen_max: int = DEFAULT_QLEN_MAX
    flush_interval: float = FLUSH_INTERVAL
    auth_key: bytes | None = field(default=None, repr=False)
    sock_size: int = 0
    source: IPAddress | None = None
    multicast_loop: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.syncid <= 255:
            raise ValueError(f"syncid {self.syncid} is not in 0..255")
        if not 1 <= self.port <= 65535 - _MAX_PORTS:
            raise ValueError(f"port {self.port} is out of range")
        if not 1 <= self.ttl <= 255:
            raise ValueError(f"ttl {self.ttl} is not in 1..255")
        ports = self.sync_ports
        if not 1 <= ports <= _MAX_PORTS or ports & (ports - 1):
            raise ValueError(f"sync_ports {ports} is not a power of two in 1..{_MAX_PORTS}")
        if self.version not in (0, 1):
            raise ValueError(f"sync_version {self.version} is not 0 or 1")
        if self.qlen_max < 1:
            raise ValueError(f"sync_qlen_max {self.qlen_max} must be positive")
        if self.sock_size < 0:
            raise ValueError("sync_sock_size must not be negative")
        if self.flush_interval <= 0:
            raise ValueError("flush_interval must be positive")
        if self.auth_key is not None and len(self.auth_key) < 16:
            raise ValueError("the sync authentication key must be at least 16 bytes")

    @property
    def family(self) -> int:
        return AF_INET if self.group.version == 4 else AF_INET6


@dataclass(frozen=True, slots=True, kw_only=True)
class SenderStats:
    """Master side counters since the sender was built."""

    entries_added: int = 0
    entries_sent: int = 0
    datagrams_sent: int = 0
    bytes_sent: int = 0
    entries_pending: int = 0  # in partial datagrams not yet due
    queue_depth: int = 0  # full datagrams waiting for the socket
    datagrams_dropped: int = 0  # discarded because the queue was full
    entries_dropped: Mapping[str, int] = field(default_factory=dict)  # by reason


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerStats:
    """Backup side counters for one master (keyed by its source address).

    `entries_received` counts the entries announced by datagrams that passed the datagram
    checks; each of them is then applied, dropped (`entries_dropped` by reason) or failed in
    the sink (`entries_failed`). `datagrams_dropped` counts whole datagrams discarded by reason.
    `apply_results` counts what the sink reported doing with applied entries (for the engine:
    created, updated, ignored_stale...).
    `lag` is the age of the newest information from this peer: a busy master sends at least
    every flush interval (2 s), so a growing lag means loss or a silent master.
    """

    peer: str
    first_message_at: float
    last_message_at: float
    lag: float
    syncid: int
    version: int
    datagrams: int
    datagrams_dropped: Mapping[str, int]
    entries_received: int
    entries_applied: int
    entries_failed: int
    entries_dropped: Mapping[str, int]
    apply_results: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncStats:
    """A whole daemon: its role, the sender's counters and one record per peer."""

    role: SyncRole
    sender: SenderStats
    peers: tuple[PeerStats, ...] = ()
    send_errors: int = 0
    receive_errors: int = 0


# keepalived `lvs_sync_daemon` options: word -> (config field, smallest, largest value).
_LVS_SYNC_OPTIONS: dict[str, tuple[str, int, int]] = {
    "id": ("syncid", 0, 255),
    "maxlen": ("maxlen", 1, 65535 - 28),
    "port": ("port", 1, 65535 - _MAX_PORTS),
    "ttl": ("ttl", 1, 255),
}


def parse_lvs_sync_daemon(args: Sequence[str]) -> SyncDaemonConfig:
    """The arguments of keepalived's `lvs_sync_daemon IFACE INSTANCE [id N] [maxlen N]
    [port N] [ttl N] [group ADDR]` as a `SyncDaemonConfig`.

    Raises:
        ValueError: naming the offending word; every option may appear once, values are
        checked against keepalived's ranges and never replaced by defaults.
    """
    if len(args) < 2:
        raise ValueError("lvs_sync_daemon needs an interface and a VRRP instance name")
    values: dict[str, object] = {"interface": args[0], "instance": args[1]}
    rest = list(args[2:])
    seen: set[str] = set()
    while rest:
        word = rest.pop(0)
        if word in seen:
            raise ValueError(f"lvs_sync_daemon: {word!r} given twice")
        seen.add(word)
        if not rest:
            raise ValueError(f"lvs_sync_daemon: {word!r} needs a value")
        value = rest.pop(0)
        if word == "group":
            try:
                group = ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"lvs_sync_daemon: group {value!r} is not an address") from None
            if not group.is_multicast:
                raise ValueError(f"lvs_sync_daemon: group {value} is not a multicast address")
            values["group"] = group
            continue
        if word not in _LVS_SYNC_OPTIONS:
            raise ValueError(f"lvs_sync_daemon: unknown option {word!r}")
        name, low, high = _LVS_SYNC_OPTIONS[word]
        if not value.isdigit() or not low <= int(value) <= high:
            raise ValueError(f"lvs_sync_daemon: {word} {value!r} is not in {low}..{high}")
        values[name] = int(value)
    return SyncDaemonConfig(**values)  # type: ignore[arg-type]
