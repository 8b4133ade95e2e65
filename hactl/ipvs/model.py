"""IPVS domain types shared by the engine, the kernel backend, the planner, the views and sync.

Two kinds of types live here:

* desired state (`VirtualService`, `Destination`, `IpvsTable`): frozen, computed from
  configuration + health + operator overrides, diffed by `plan.plan()`;
* snapshots read back from a backend (`ServiceStatus`, `DestStatus`, `ConnStatus`, `Stats`,
  `Rates`): what `ipvsadm`-style views and the control API print;
* tunables (`IpvsSysctl`, `IpvsTimeouts`): the names and defaults of
  /proc/sys/net/ipv4/vs/* and `ipvsadm --set`, defined once here (spec/ipvs.md §7.2, §3.2).
* `SyncConn`: one connection or template as the sync protocol carries it (spec/ipvs.md §1.3),
  the unit exchanged between the engine and `hactl.sync`;
* the flag values of spec/ipvs.md §0.1 (`IP_VS_CONN_F_*`, `IP_VS_SVC_F_*`, `IP_VS_DEST_F_*`,
  `IP_VS_CTPL_S_*`), under their kernel names.

Pure data: imports nothing from hactl but `errors`.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field, fields
from typing import Literal

__all__ = [
    "AF_INET",
    "AF_INET6",
    "ConnStatus",
    "DestStatus",
    "Destination",
    "FwdMethod",
    "IPAddress",
    "IpProto",
    "IpvsSysctl",
    "IpvsTable",
    "IpvsTimeouts",
    "Rates",
    "ServiceKey",
    "ServiceStatus",
    "Stats",
    "SyncConn",
    "VirtualService",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Address families as the kernel numbers them (AF_INET, AF_INET6); also the sort order of ipvsadm.
AF_INET: Literal[2] = 2
AF_INET6: Literal[10] = 10


class IpProto(enum.IntEnum):
    """IP protocol numbers of the protocols IPVS schedules (0 = fwmark service/template)."""

    IP = 0
    TCP = 6
    UDP = 17
    SCTP = 132


class FwdMethod(enum.IntEnum):
    """Connection forwarding method (IP_VS_CONN_F_FWD_MASK values, spec/ipvs.md §0.1)."""

    MASQ = 0  # NAT; keepalived lb_kind NAT
    LOCALNODE = 1
    TUNNEL = 2  # keepalived lb_kind TUN
    DROUTE = 3  # keepalived lb_kind DR
    BYPASS = 4

    @property
    def ipvsadm_name(self) -> str:
        """The word ipvsadm prints in the Forward column."""
        return _FWD_NAMES[self]


_FWD_NAMES = {
    FwdMethod.MASQ: "Masq",
    FwdMethod.LOCALNODE: "Local",
    FwdMethod.TUNNEL: "Tunnel",
    FwdMethod.DROUTE: "Route",
    FwdMethod.BYPASS: "Bypass",
}


def _family_of(addr: IPAddress) -> int:
    return AF_INET if addr.version == 4 else AF_INET6


@dataclass(frozen=True, slots=True)
class ServiceKey:
    """Identity of a virtual service: (family, protocol, VIP, port) or (family, fwmark).

    For fwmark services `protocol` is IpProto.IP, `addr` is None and `port` is 0.
    """

    family: int
    protocol: IpProto
    addr: IPAddress | None
    port: int
    fwmark: int = 0

    @classmethod
    def for_address(cls, protocol: IpProto, addr: IPAddress, port: int) -> ServiceKey:
        return cls(_family_of(addr), protocol, addr, port, 0)

    @classmethod
    def for_fwmark(cls, fwmark: int, *, family: int = AF_INET) -> ServiceKey:
        return cls(family, IpProto.IP, None, 0, fwmark)

    @property
    def is_fwmark(self) -> bool:
        return self.fwmark != 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Destination:
    """A real server of a virtual service, as desired (or as read back from a backend)."""

    addr: IPAddress
    port: int
    weight: int = 1
    fwd: FwdMethod = FwdMethod.MASQ
    u_threshold: int = 0
    l_threshold: int = 0

    @property
    def key(self) -> tuple[IPAddress, int]:
        return (self.addr, self.port)


# VirtualService.netmask left out: per client address, whatever the family.
_HOST_NETMASK = -1


@dataclass(frozen=True, slots=True, kw_only=True)
class VirtualService:
    """A virtual service and its destinations, as desired.

    `persistence_timeout` None means not persistent. `netmask` is the persistence granularity
    as a prefix length (32 / 128 = per client address); left out, it is per client address
    for the key's family (32 for IPv4, 128 for IPv6). `sched_flags` carries
    IP_VS_SVC_F_SCHED1/2/3 (sh-fallback, sh-port / mh-fallback, mh-port).
    Destinations are kept in the order they were added; backends insert at the list head,
    as the kernel does.
    """

    key: ServiceKey
    scheduler: str = "wlc"
    sched_flags: int = 0
    persistence_timeout: float | None = None
    netmask: int = _HOST_NETMASK
    pe_name: str = ""
    one_packet: bool = False
    destinations: tuple[Destination, ...] = ()

    def __post_init__(self) -> None:
        # The default depends on the family, so it is resolved here rather than made an
        # `int | None` field: readers (backends, views, plan diffs) always see a prefix
        # length, and a default IPv6 service equals one read back from the kernel (/128).
        if self.netmask == _HOST_NETMASK:
            object.__setattr__(self, "netmask", 128 if self.key.family == AF_INET6 else 32)

    def destination(self, addr: IPAddress, port: int) -> Destination | None:
        for dest in self.destinations:
            if dest.addr == addr and dest.port == port:
                return dest
        return None


@dataclass(frozen=True, slots=True)
class IpvsTable:
    """A whole table: the unit `plan(desired, actual)` diffs."""

    services: tuple[VirtualService, ...] = ()

    def service(self, key: ServiceKey) -> VirtualService | None:
        for svc in self.services:
            if svc.key == key:
                return svc
        return None


@dataclass(frozen=True, slots=True)
class Stats:
    """Cumulative counters (ip_vs_stats_user)."""

    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0


@dataclass(frozen=True, slots=True)
class Rates:
    """Estimated rates per second (ip_vs_est.c), as ipvsadm --rate prints them."""

    cps: int = 0
    inpps: int = 0
    outpps: int = 0
    inbps: int = 0
    outbps: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class DestStatus:
    """A destination read back from a backend, with its counters."""

    dest: Destination
    activeconns: int = 0
    inactconns: int = 0
    persistconns: int = 0
    overloaded: bool = False
    stats: Stats = field(default_factory=Stats)
    rates: Rates = field(default_factory=Rates)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceStatus:
    """A service read back from a backend; `dests` in backend order (newest added first)."""

    service: VirtualService
    dests: tuple[DestStatus, ...] = ()
    stats: Stats = field(default_factory=Stats)
    rates: Rates = field(default_factory=Rates)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnStatus:
    """One entry of the connection table as `ipvsadm -Lnc` lists it (templates included)."""

    protocol: IpProto
    caddr: IPAddress
    cport: int
    vaddr: IPAddress
    vport: int
    daddr: IPAddress
    dport: int
    state: str
    expires_in: float
    flags: int = 0
    fwmark: int = 0
    pe_name: str = ""
    pe_data: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncConn:
    """A connection or persistence template as the sync protocol carries it (spec §1.3, §1.7).

    `vaddr` of a fwmark template holds the fwmark value in its first 32-bit word (IPv4 form).
    `timeout` is the full per-state (or persistence) timeout in seconds, not the time left.
    `seq` holds the six 32-bit values of the SEQ_DATA option when present.
    """

    family: int
    protocol: int
    flags: int
    state: int
    cport: int
    vport: int
    dport: int
    fwmark: int
    timeout: int
    caddr: IPAddress
    vaddr: IPAddress
    daddr: IPAddress
    seq: tuple[int, int, int, int, int, int] | None = None
    pe_name: str = ""
    pe_data: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class IpvsTimeouts:
    """`ipvsadm --set tcp tcpfin udp` / keepalived `lvs_timeouts` (spec §3.2), in seconds."""

    tcp: int = 900
    tcpfin: int = 120
    udp: int = 300


@dataclass(frozen=True, slots=True, kw_only=True)
class IpvsSysctl:
    """The tunables under /proc/sys/net/ipv4/vs/, with the kernel's defaults (spec §7.2).

    Field names are exactly the sysctl names, except that the two-valued `sync_threshold`
    is split into `sync_threshold` and `sync_period` (the file holds "3 50").
    `sync_qlen_max` 0 means "the kernel's default" (free pages / 32), resolved by the backend.
    """

    am_droprate: int = 10
    amemthresh: int = 1024
    backup_only: int = 0
    cache_bypass: int = 0
    conn_reuse_mode: int = 1
    conntrack: int = 0
    drop_entry: int = 0
    drop_packet: int = 0
    expire_nodest_conn: int = 0
    expire_quiescent_template: int = 0
    ignore_tunneled: int = 0
    lblc_expiration: int = 86400
    lblcr_expiration: int = 86400
    nat_icmp_send: int = 0
    pmtu_disc: int = 1
    run_estimation: int = 1
    schedule_icmp: int = 0
    secure_tcp: int = 0
    sloppy_sctp: int = 0
    sloppy_tcp: int = 0
    snat_reroute: int = 1
    sync_persist_mode: int = 0
    sync_ports: int = 1
    sync_qlen_max: int = 0
    sync_refresh_period: int = 0
    sync_retries: int = 0
    sync_sock_size: int = 0
    sync_threshold: int = 3
    sync_period: int = 50
    sync_version: int = 1

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every tunable's name, as written in configuration (sync_period excluded)."""
        return tuple(f.name for f in fields(cls) if f.name != "sync_period")


# --------------------------------------------------------------------------------------------
# Flag values (spec §0.1), shared by the engine, the kernel backend, the views and sync.

# Connection flags (cp->flags).
IP_VS_CONN_F_FWD_MASK = 0x0007
IP_VS_CONN_F_MASQ = 0x0000
IP_VS_CONN_F_LOCALNODE = 0x0001
IP_VS_CONN_F_TUNNEL = 0x0002
IP_VS_CONN_F_DROUTE = 0x0003
IP_VS_CONN_F_BYPASS = 0x0004
IP_VS_CONN_F_SYNC = 0x0020
IP_VS_CONN_F_HASHED = 0x0040
IP_VS_CONN_F_NOOUTPUT = 0x0080
IP_VS_CONN_F_INACTIVE = 0x0100
IP_VS_CONN_F_OUT_SEQ = 0x0200
IP_VS_CONN_F_IN_SEQ = 0x0400
IP_VS_CONN_F_SEQ_MASK = 0x0600
IP_VS_CONN_F_NO_CPORT = 0x0800
IP_VS_CONN_F_TEMPLATE = 0x1000
IP_VS_CONN_F_ONE_PACKET = 0x2000
IP_VS_CONN_F_NFCT = 0x10000
IP_VS_CONN_F_BACKUP_MASK = 0x1F87
IP_VS_CONN_F_BACKUP_UPD_MASK = 0x0700
IP_VS_CONN_F_DEST_MASK = IP_VS_CONN_F_FWD_MASK | IP_VS_CONN_F_ONE_PACKET | IP_VS_CONN_F_NFCT

# Service flags (svc->flags).
IP_VS_SVC_F_PERSISTENT = 0x0001
IP_VS_SVC_F_HASHED = 0x0002
IP_VS_SVC_F_ONEPACKET = 0x0004
IP_VS_SVC_F_SCHED1 = 0x0008
IP_VS_SVC_F_SCHED2 = 0x0010
IP_VS_SVC_F_SCHED3 = 0x0020

# Destination flags (dest->flags).
IP_VS_DEST_F_AVAILABLE = 0x0001
IP_VS_DEST_F_OVERLOAD = 0x0002

# Persistence template states (IP_VS_CTPL_S_*).
IP_VS_CTPL_S_NONE = 0
IP_VS_CTPL_S_ASSURED = 1

__all__ += [
    "IP_VS_CONN_F_BACKUP_MASK",
    "IP_VS_CONN_F_BACKUP_UPD_MASK",
    "IP_VS_CONN_F_BYPASS",
    "IP_VS_CONN_F_DEST_MASK",
    "IP_VS_CONN_F_DROUTE",
    "IP_VS_CONN_F_FWD_MASK",
    "IP_VS_CONN_F_HASHED",
    "IP_VS_CONN_F_INACTIVE",
    "IP_VS_CONN_F_IN_SEQ",
    "IP_VS_CONN_F_LOCALNODE",
    "IP_VS_CONN_F_MASQ",
    "IP_VS_CONN_F_NFCT",
    "IP_VS_CONN_F_NOOUTPUT",
    "IP_VS_CONN_F_NO_CPORT",
    "IP_VS_CONN_F_ONE_PACKET",
    "IP_VS_CONN_F_OUT_SEQ",
    "IP_VS_CONN_F_SEQ_MASK",
    "IP_VS_CONN_F_SYNC",
    "IP_VS_CONN_F_TEMPLATE",
    "IP_VS_CONN_F_TUNNEL",
    "IP_VS_CTPL_S_ASSURED",
    "IP_VS_CTPL_S_NONE",
    "IP_VS_DEST_F_AVAILABLE",
    "IP_VS_DEST_F_OVERLOAD",
    "IP_VS_SVC_F_HASHED",
    "IP_VS_SVC_F_ONEPACKET",
    "IP_VS_SVC_F_PERSISTENT",
    "IP_VS_SVC_F_SCHED1",
    "IP_VS_SVC_F_SCHED2",
    "IP_VS_SVC_F_SCHED3",
]
