"""The embedded IPVS engine: a sans-IO model of Linux IPVS, decision for decision.

Owns: virtual services and their destinations (newest added first, spec §0), the connection
table with its persistence templates (§4, §9.1), the per-protocol state machines (§3, tables
in `hactl.ipvs.proto`), expiry (§3.5), ActiveConn/InActConn/PersistConn accounting and the
OVERLOAD thresholds (§6.1), statistics and the 2-second rate estimator (§8.8), quiesce and
removal with the destination trash (§5.1, §5.2), port reuse (`conn_reuse_mode`, conntrack,
§5.3, §5.4), sloppy TCP/SCTP (§5.5), the defense strategies (§7.1), the sync decision (§2) and
the backup side of sync (§1.10). The scheduling choice itself is delegated to
`hactl.ipvs.schedulers`.

Inputs are packet-shaped and per direction (`receive_packet`), configuration mirrors the
netlink commands (`add_service`, `edit_dest`, ...), time comes in as `now` and randomness as
the injected `rng`. Outputs are verdicts (return values), events (`pop_events`) and snapshots
(`services`, `connections`, `timeouts`, `sysctl`).

Invariants:
* a connection entry is in its protocol's table exactly while it is armed in the timer wheel
  (one-packet entries are never in either);
* a destination's activeconns + inactconns + persistconns equals the number of entries bound
  to it, and an entry counts in activeconns exactly when it lacks the INACTIVE flag;
* a template is in the template table under its key until it is invalidated (§4.2) or freed;
* the engine never reads a clock, never does I/O and never logs.

Must not import: asyncio, socket, time, structlog, pyroute2.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import math
import operator
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from hactl.errors import KernelError, NotSupported
from hactl.ipvs import proto as P
from hactl.ipvs.conntable import Conn, ConnKey, Template, TimerWheel, addr_int
from hactl.ipvs.events import (
    DefenseChanged,
    DestFreed,
    ExpiryReason,
    IpvsEvent,
    SyncConnNeeded,
    conn_expired,
)
from hactl.ipvs.model import (
    AF_INET,
    AF_INET6,
    IP_VS_CONN_F_BACKUP_MASK,
    IP_VS_CONN_F_BACKUP_UPD_MASK,
    IP_VS_CONN_F_BYPASS,
    IP_VS_CONN_F_FWD_MASK,
    IP_VS_CONN_F_HASHED,
    IP_VS_CONN_F_INACTIVE,
    IP_VS_CONN_F_MASQ,
    IP_VS_CONN_F_NFCT,
    IP_VS_CONN_F_NOOUTPUT,
    IP_VS_CONN_F_ONE_PACKET,
    IP_VS_CONN_F_SYNC,
    IP_VS_CONN_F_TEMPLATE,
    IP_VS_CTPL_S_ASSURED,
    IP_VS_DEST_F_AVAILABLE,
    IP_VS_DEST_F_OVERLOAD,
    IP_VS_SVC_F_ONEPACKET,
    IP_VS_SVC_F_PERSISTENT,
    ConnStatus,
    Destination,
    DestStatus,
    FwdMethod,
    IPAddress,
    IpProto,
    IpvsSysctl,
    IpvsTimeouts,
    Rates,
    ServiceKey,
    ServiceStatus,
    Stats,
    SyncConn,
    VirtualService,
)
from hactl.ipvs.schedulers import Scheduler, has_least_keys, least_keys, make_scheduler

__all__ = [
    "Action",
    "Dest",
    "EngineOptions",
    "IpvsEngine",
    "PacketInfo",
    "Service",
    "SyncApplied",
    "Verdict",
]

FTPPORT = 21
FTPDATA = 20
TEMPLATE_REARM_TIMEOUT = 60.0  # §3.5, §4.3: "expire later"
SYNC_TEMPLATE_DEFAULT_TIMEOUT = 180.0  # §1.10 step 4
DEFENSE_TIMER_PERIOD = 1.0  # §7.1
ESTIMATOR_PERIOD = 2.0  # §8.8
DEST_TRASH_PERIOD = 120.0  # §5.2 (IP_VS_DEST_TRASH_PERIOD); the timer runs every half period
MAX_TIMEOUT = 2678400  # ipvsadm's limit for --set and -p (31 days)
UNPRIVILEGED_PORT_START = 1024  # net.ipv4.ip_unprivileged_port_start default (§6.0)
_INVALID_PORT = 0xFFFF  # §4.2 step 2: an invalidated template's vport and dport

_FWD_OF_FLAGS: tuple[FwdMethod, ...] = (
    FwdMethod.MASQ,
    FwdMethod.LOCALNODE,
    FwdMethod.TUNNEL,
    FwdMethod.DROUTE,
    FwdMethod.BYPASS,
    FwdMethod.MASQ,
    FwdMethod.MASQ,
    FwdMethod.MASQ,
)
_PORTS: tuple[int, ...] = tuple(range(65536))  # shared port objects for the key tuples
# Plain-int copies of constants used on the per-packet path (module globals are cheaper
# to read than enum members and attributes of other modules).
_TCP, _UDP, _SCTP = int(IpProto.TCP), int(IpProto.UDP), int(IpProto.SCTP)
_TH_SYN, _TH_RST, _TH_FIN, _TH_ACK = P.TH_SYN, P.TH_RST, P.TH_FIN, P.TH_ACK
_TH_SYN_RST = _TH_SYN | _TH_RST
_SCTP_INIT, _SCTP_ABORT = P.SCTP_CHUNK_INIT, P.SCTP_CHUNK_ABORT
_DIR_INPUT, _DIR_OUTPUT, _DIR_INPUT_ONLY = P.DIR_INPUT, P.DIR_OUTPUT, P.DIR_INPUT_ONLY
_TCP_CLOSE, _TCP_ESTABLISHED = int(P.TcpState.CLOSE), int(P.TcpState.ESTABLISHED)
_TCP_TIME_WAIT = int(P.TcpState.TIME_WAIT)
_REUSE = ExpiryReason.REUSE
# Entries with any of these flags take the general path after the state transition.
_SLOW_PATH_FLAGS = IP_VS_CONN_F_ONE_PACKET | IP_VS_CONN_F_BYPASS


# --------------------------------------------------------------------------------------------
# Packets and verdicts


class PacketInfo(NamedTuple):
    """One packet as the engine sees it.

    `saddr:sport -> daddr:dport` is always the connection's client-side tuple (client to
    virtual address), whatever the `direction`: a reply from the real server
    (`direction=DIR_OUT`) names the connection it belongs to by that same tuple. `tcp_flags`
    holds TH_SYN/TH_ACK/TH_FIN/TH_RST bits; `sctp_chunk` the type of the first SCTP chunk;
    `length` the bytes counted in the statistics; `fwmark` the packet's netfilter mark.
    `family` must match the addresses' version.

    It satisfies the schedulers' `SchedPacketLike` and is handed to them as it is (a named
    tuple: a packet is built per socket event, and a frozen dataclass costs several times
    more to build).
    """

    family: int
    protocol: int
    saddr: IPAddress
    sport: int
    daddr: IPAddress
    dport: int
    direction: int = 0
    tcp_flags: int = 0
    sctp_chunk: int = P.SCTP_CHUNK_DATA
    length: int = 0
    fwmark: int = 0


DIR_IN = 0
DIR_OUT = 1


class Action(enum.IntEnum):
    """What the packet's owner must do with it."""

    FORWARD = 0  # send to (daddr, dport) with `fwd` (replies: back to the client)
    DROP = 1  # discard silently
    REJECT = 2  # ICMP port unreachable (a proxy: reset / refuse the client)
    PASS = 3  # not IPVS's packet: leave it to the local stack


_FORWARD = Action.FORWARD  # a module global reads faster than an enum member
_sub = operator.sub


class Verdict(NamedTuple):
    """The outcome of one packet. `conn` is the entry it belongs to (an opaque handle)."""

    action: Action
    conn: Conn | None = None
    daddr: IPAddress | None = None
    dport: int = 0
    fwd: FwdMethod = FwdMethod.MASQ
    reason: str = ""


def _verdict(action: Action, reason: str) -> Verdict:
    return Verdict(action, None, None, 0, FwdMethod.MASQ, reason)


V_NOT_IPVS = _verdict(Action.PASS, "not_ipvs_protocol")
V_NO_SERVICE = _verdict(Action.PASS, "no_service")
V_NOT_SCHEDULABLE = _verdict(Action.PASS, "not_schedulable")
V_BACKUP_ONLY = _verdict(Action.PASS, "backup_only")
V_FTP_DATA = _verdict(Action.PASS, "ftp_data_not_scheduled")
V_FTP_OTHER = _verdict(Action.PASS, "ftp_vip_other_port")
V_NO_CONN = _verdict(Action.PASS, "reply_without_conn")
V_CONN_GONE = _verdict(Action.PASS, "conn_gone")
V_NO_DEST = _verdict(Action.REJECT, "no_destination")
V_DROP_NODEST = _verdict(Action.DROP, "dest_unavailable")
V_DROP_OLD_CT = _verdict(Action.DROP, "conntrack_reuse")
V_DROP_DEFENSE = _verdict(Action.DROP, "drop_packet_defense")


class SyncApplied(enum.StrEnum):
    """What `apply_sync` did with an entry (spec §1.9, §1.10)."""

    CREATED = "created"
    UPDATED = "updated"
    IGNORED_STALE = "ignored_stale"  # INACTIVE notice for an entry already replaced
    SKIPPED_PROTOCOL = "skipped_protocol"
    SKIPPED_STATE = "skipped_state"


# --------------------------------------------------------------------------------------------
# Runtime services and destinations


class _Stats:
    """Cumulative counters and the estimator state of one stats object (§8.8)."""

    __slots__ = (
        "avg_cps",
        "avg_inbps",
        "avg_inpps",
        "avg_outbps",
        "avg_outpps",
        "conns",
        "inbytes",
        "inpkts",
        "last",
        "outbytes",
        "outpkts",
    )

    def __init__(self) -> None:
        self.zero_stats()

    def zero_stats(self) -> None:
        self.conns = self.inpkts = self.outpkts = self.inbytes = self.outbytes = 0
        self.avg_cps = self.avg_inpps = self.avg_outpps = self.avg_inbps = self.avg_outbps = 0
        self.last = (0, 0, 0, 0, 0)

    def estimate(self) -> None:
        """One 2-second estimator step (`ip_vs_chain_estimation`, §8.8)."""
        now = (self.conns, self.inpkts, self.outpkts, self.inbytes, self.outbytes)
        l_conns, l_inpkts, l_outpkts, l_inbytes, l_outbytes = self.last
        self.last = now
        self.avg_cps += (((now[0] - l_conns) << 9) - self.avg_cps) >> 2
        self.avg_inpps += (((now[1] - l_inpkts) << 9) - self.avg_inpps) >> 2
        self.avg_outpps += (((now[2] - l_outpkts) << 9) - self.avg_outpps) >> 2
        self.avg_inbps += (((now[3] - l_inbytes) << 4) - self.avg_inbps) >> 2
        self.avg_outbps += (((now[4] - l_outbytes) << 4) - self.avg_outbps) >> 2

    def stats(self) -> Stats:
        return Stats(self.conns, self.inpkts, self.outpkts, self.inbytes, self.outbytes)

    def rates(self) -> Rates:
        return Rates(
            (self.avg_cps + 0x1FF) >> 10,
            (self.avg_inpps + 0x1FF) >> 10,
            (self.avg_outpps + 0x1FF) >> 10,
            (self.avg_inbps + 0xF) >> 5,
            (self.avg_outbps + 0xF) >> 5,
        )


class Dest(_Stats):
    """A destination at run time (`struct ip_vs_dest`); satisfies `schedulers.SchedDest`.

    `overloaded` mirrors the OVERLOAD bit of `flags` as a plain attribute (schedulers read it
    for every destination of every decision; a property costs several times more). Only
    `_set_overload` changes that bit.

    `lkeys` is its service's fast-path key list when the dest is one of its lc/wlc/sed/nq
    candidates (else None): every change of activeconns / inactconns adds `lact` / `linact`
    per connection to `lkeys[lpos]` (IpvsEngine._update_least_keys).
    """

    __slots__ = (
        "activeconns",
        "addr",
        "conn_flags",
        "family",
        "flags",
        "fwd",
        "idle_start",
        "inactconns",
        "l_threshold",
        "lact",
        "last_weight",
        "linact",
        "lkeys",
        "lpos",
        "overloaded",
        "persistconns",
        "port",
        "svc",
        "u_threshold",
        "weight",
    )

    def __init__(self, addr: IPAddress, port: int, svc: Service) -> None:
        super().__init__()
        self.addr = addr
        self.port = _PORTS[port]
        self.family = AF_INET if addr.version == 4 else AF_INET6
        self.svc = svc
        self.weight = 0
        self.last_weight = 0
        self.fwd = FwdMethod.MASQ
        self.conn_flags = IP_VS_CONN_F_INACTIVE
        self.u_threshold = 0
        self.l_threshold = 0
        self.flags = 0
        self.overloaded = False
        self.activeconns = 0
        self.inactconns = 0
        self.persistconns = 0
        self.idle_start: float | None = None
        self.lkeys: list[int] | None = None
        self.lpos = 0
        self.lact = 0
        self.linact = 0

    def _set_overload(self, on: bool) -> None:
        """Set or clear IP_VS_DEST_F_OVERLOAD, keeping `overloaded` equal to it."""
        if on:
            self.flags |= IP_VS_DEST_F_OVERLOAD
        else:
            self.flags &= ~IP_VS_DEST_F_OVERLOAD
        self.overloaded = on

    @property
    def available(self) -> bool:
        return bool(self.flags & IP_VS_DEST_F_AVAILABLE)

    @property
    def refs(self) -> int:
        """Entries bound to this destination (connections and templates)."""
        return self.activeconns + self.inactconns + self.persistconns

    def as_destination(self) -> Destination:
        return Destination(
            addr=self.addr,
            port=self.port,
            weight=self.weight,
            fwd=self.fwd,
            u_threshold=self.u_threshold,
            l_threshold=self.l_threshold,
        )

    def __repr__(self) -> str:
        return f"<Dest {self.addr}:{self.port} w={self.weight} a={self.activeconns}>"


class Service(_Stats):
    """A virtual service at run time (`struct ip_vs_service`)."""

    __slots__ = (
        "addr",
        "dest_index",
        "dests",
        "family",
        "fwmark",
        "fwmark_addr",
        "key",
        "ldests",
        "lidle",
        "lkeys",
        "mask",
        "netmask",
        "one_packet",
        "pe_name",
        "persistent",
        "port",
        "protocol",
        "sched_flags",
        "sched_name",
        "scheduler",
        "timeout",
    )

    def __init__(self, key: ServiceKey) -> None:
        super().__init__()
        self.key = key
        self.family = key.family
        self.protocol = int(key.protocol)
        self.addr = key.addr
        self.port = key.port
        self.fwmark = key.fwmark
        # A fwmark template's virtual address is the mark in the first 32-bit word (§4.2).
        self.fwmark_addr = key.fwmark if key.family == AF_INET else key.fwmark << 96
        self.dests: list[Dest] = []
        # (addr, port) -> the Dest in `dests`: the kernel walks its list, but a service of
        # 10,000 servers would make a table load quadratic here
        self.dest_index: dict[tuple[IPAddress, int], Dest] = {}
        self.sched_name = ""
        self.sched_flags = 0
        self.scheduler: Scheduler[Any] | None = None
        # lc/wlc/sed/nq without thresholds (IpvsEngine._update_least_keys): the candidates,
        # their keys kept up to date by the counter changes, and for nq the keys of idle
        # candidates; otherwise None.
        self.ldests: list[Dest] = []
        self.lkeys: list[int] | None = None
        self.lidle: list[int] | None = None
        self.persistent = False
        self.timeout = 0.0
        self.netmask = 32
        self.mask = 0
        self.one_packet = False
        self.pe_name = ""

    @property
    def flags(self) -> int:
        flags = self.sched_flags
        if self.persistent:
            flags |= IP_VS_SVC_F_PERSISTENT
        if self.one_packet:
            flags |= IP_VS_SVC_F_ONEPACKET
        return flags

    def find_dest(self, addr: IPAddress, port: int) -> Dest | None:
        return self.dest_index.get((addr, port))

    def client_net(self, saddr: int) -> int:
        """The persistence granularity applied to a client address (§4.2)."""
        return saddr & self.mask

    def as_virtual_service(self) -> VirtualService:
        return VirtualService(
            key=self.key,
            scheduler=self.sched_name,
            sched_flags=self.sched_flags,
            persistence_timeout=self.timeout if self.persistent else None,
            netmask=self.netmask,
            pe_name=self.pe_name,
            one_packet=self.one_packet,
            destinations=tuple(d.as_destination() for d in reversed(self.dests)),
        )


class _Proto:
    """Per-protocol data: the connection table, timeouts and the transition function."""

    __slots__ = ("conns", "fast", "first", "names", "protocol", "timeouts", "transition")

    def __init__(self, protocol: IpProto, timeouts: Sequence[float], names: Sequence[str]):
        self.protocol = protocol
        self.conns: dict[ConnKey, Conn] = {}
        # (vaddr, vport[, 6]) -> service, for the new-connection fast path (_refresh_fast).
        self.fast: dict[tuple[int, ...], Service] = {}
        # conn_flags -> the first input transition's result (IpvsEngine._first_input).
        self.first: dict[int, tuple[int, int, float, bool, FwdMethod]] = {}
        self.timeouts = [float(t) for t in timeouts]
        self.names = tuple(names)
        self.transition: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineOptions:
    """Modelling choices that have no sysctl.

    legacy_active_states: count only ESTABLISHED as active, as kernels before the
        "pre-established states are active" change did (§3.1).
    timer_granularity: bucket width of the expiry wheel; entries expire at most this late
        when the shell follows `next_deadline()` (exactly on time when `handle_timer` is
        called at or after their expiry).
    report_expiry: emit `ConnExpired` for every connection entry that leaves the table.
    conn_tab_bits: log2 of the kernel's connection hash size (drop_entry probes size/32).
    fast_path: take the specialised path for new connections of plain services; it gives
        the same results as the general path, which False forces (differential tests).
    """

    legacy_active_states: bool = False
    timer_granularity: float = 1.0
    report_expiry: bool = False
    conn_tab_bits: int = 12
    fast_path: bool = True


# --------------------------------------------------------------------------------------------
# The engine


class IpvsEngine:
    """Embedded IPVS: services, destinations, the connection table and its timers."""

    def __init__(
        self,
        *,
        rng: random.Random,
        sysctl: IpvsSysctl | None = None,
        timeouts: IpvsTimeouts | None = None,
        options: EngineOptions | None = None,
    ) -> None:
        self._rng = rng
        self._opts = options or EngineOptions()
        self._sysctl = IpvsSysctl()
        self._wheel = TimerWheel(self._opts.timer_granularity)
        self._tcp = _Proto(IpProto.TCP, P.TCP_DEFAULT_TIMEOUTS, P.TCP_STATE_NAMES)
        self._udp = _Proto(IpProto.UDP, P.UDP_DEFAULT_TIMEOUTS, P.UDP_STATE_NAMES)
        self._sctp = _Proto(IpProto.SCTP, P.SCTP_DEFAULT_TIMEOUTS, P.SCTP_STATE_NAMES)
        self._tcp.transition = self._set_tcp_state
        self._udp.transition = self._set_udp_state
        self._sctp.transition = self._set_sctp_state
        self._protos: dict[int, _Proto] = {
            IpProto.TCP: self._tcp,
            IpProto.UDP: self._udp,
            IpProto.SCTP: self._sctp,
        }
        self._tcp_active = P.TCP_ACTIVE_LEGACY if self._opts.legacy_active_states else P.TCP_ACTIVE
        self._templates: dict[ConnKey, Template] = {}
        self._unbound: dict[Conn, tuple[IPAddress, int]] = {}  # entry -> (daddr, fwmark)
        self._services: dict[ServiceKey, Service] = {}
        # (protocol, vaddr, vport[, 6]) with the address as an int, like the entry keys.
        self._svc_tab: dict[tuple[int, ...], Service] = {}
        self._fwm_tab: dict[tuple[int, int], Service] = {}
        self._ftpsvc_counter = 0
        self._nullsvc_counter = 0
        self._trash: list[Dest] = []
        self._total = _Stats()
        self._events: list[IpvsEvent] = []
        self._counters: Counter[str] = Counter()
        self._flag_ints: dict[int, int] = {}
        # Sync daemon states (§2.1) and the director switch of backup_only (§7.2).
        self._sync_master = False
        self._sync_backup = False
        self._director_off = False
        # Defense (§7.1).
        self._availmem: int | None = None
        self._dropentry = False
        self._drop_rate = 0
        self._drop_counter = 0
        self._secure_tcp_on = False
        self._tcp_table = P.TCP_STATES
        self._todrop_counter = [0] * 9
        # Periodic timers (absolute deadlines, None = not running).
        self._est_next: float | None = None
        self._defense_next: float | None = None
        self._trash_next: float | None = None
        self.set_sysctl(sysctl or IpvsSysctl())
        if timeouts is not None:
            self.set_timeouts(timeouts)

    # ------------------------------------------------------------------ packets

    def receive_packet(self, pkt: PacketInfo, *, now: float) -> Verdict:
        """Process one packet (`ip_vs_in_hook` / `ip_vs_out_hook`, spec §9.1 order).

        Returns the verdict; never raises for any packet content.
        """
        # One unpacking instead of a descriptor call per field read.
        family, protocol, saddr, sport, daddr, dport, direction, tflags, _, length, fwmark = pkt
        if direction:
            return self._receive_reply(pkt, now)
        if self._director_off:
            self._counters["backup_only"] += 1
            return V_BACKUP_ONLY
        pp = self._protos.get(protocol)
        if pp is None:
            return V_NOT_IPVS
        if family == AF_INET:
            key: ConnKey = (
                saddr._ip,  # type: ignore[union-attr]
                _PORTS[sport],
                daddr._ip,  # type: ignore[union-attr]
                _PORTS[dport],
            )
        else:
            key = (addr_int(saddr), _PORTS[sport], addr_int(daddr), _PORTS[dport], 6)
        cp = pp.conns.get(key)
        if (
            cp is not None
            and tflags & _TH_SYN
            and pp is self._tcp
            and cp.expires > now
            and (cp.state == _TCP_TIME_WAIT or cp.state == _TCP_CLOSE)
            and cp.control is None
            and not cp.flags & IP_VS_CONN_F_NFCT
            and type(cp) is Conn
            and self._sysctl.conn_reuse_mode
            and key[2:] in pp.fast
        ):
            # Port reuse (§5.3), the usual case: a client port comes back while its entry is
            # in TIME_WAIT or CLOSE (a busy client's steady state). `_check_existing` would
            # reschedule it (is_new_conn_expected, no old conntrack, no controller); this is
            # its `_expire`, inlined, and the new flow then takes the fast path below.
            # Only for services on the fast path, so the differential test covers it.
            del pp.conns[key]
            cp.tb = None
            self._unbind_dest(cp)
            if self._unbound:
                self._unbound.pop(cp, None)
            if self._opts.report_expiry:
                self._events.append(conn_expired(cp, _REUSE))
            cp = None
        if cp is None:
            svc = pp.fast.get(key[2:])
            if (
                svc is not None
                and (tflags & _TH_SYN_RST == _TH_SYN or pp is self._udp)
                and not fwmark
                and sport != FTPDATA
            ):
                # The fast path for a new flow of a plain service: the general path's steps
                # (`_try_to_schedule`, §6.0; the input statistics; the first state
                # transition; `_after_input`) without the tests that cannot matter here.
                # `pp.fast` holds only services for which they cannot (see _refresh_fast),
                # and this packet passes the per-packet ones: a TCP SYN without RST or any
                # UDP datagram, no fwmark, not from the FTP data port. The differential test
                # holds both paths to the same verdicts, choices, counters and events.
                dest: Dest | None
                keys = svc.lkeys
                if keys is not None:
                    # lc/wlc/sed/nq: the first least key (see _update_least_keys), found
                    # by two C-level scans instead of a Python loop over the dests.
                    idle = svc.lidle
                    if idle is None:
                        dest = svc.ldests[keys.index(min(keys))]
                    else:
                        # nq: the first idle candidate (key == its idle key), else sed's.
                        busy = list(map(_sub, keys, idle))
                        if 0 in busy:
                            dest = svc.ldests[busy.index(0)]
                        else:
                            dest = svc.ldests[keys.index(min(keys))]
                else:
                    sched = svc.scheduler
                    assert sched is not None
                    dest = sched.schedule(svc.dests, pkt, now=now)
                if dest is None:
                    return self._leave(svc, pp, pkt, key, now)
                conn_flags = dest.conn_flags
                if dest.u_threshold or conn_flags & _SLOW_PATH_FLAGS:
                    return self._bind_new(svc, pp, dest, pkt, key, now)
                # The first transition of an entry with these flags, cached (its inputs are
                # fixed until the state table or the timeouts change, which clear the cache).
                first = pp.first.get(conn_flags) or self._first_input(pp, conn_flags)
                state, flags, timeout, active, fwd = first
                rport = dest.port or key[3]
                cp = Conn(key, pp, dest, rport, flags)
                pp.conns[key] = cp
                # ip_vs_bind_dest (a new entry is INACTIVE), then the transition's move.
                lk = dest.lkeys
                if active:
                    dest.activeconns += 1
                    if lk is not None:
                        lk[dest.lpos] += dest.lact
                else:
                    dest.inactconns += 1
                    if lk is not None:
                        lk[dest.lpos] += dest.linact
                # ip_vs_conn_stats, then ip_vs_in_stats for this first packet: as
                # _count_first_packet, inlined (a call costs as much as three counters).
                if dest.flags & IP_VS_DEST_F_AVAILABLE:
                    tot = self._total
                    dest.conns += 1
                    dest.inpkts += 1
                    dest.inbytes += length
                    svc.conns += 1
                    svc.inpkts += 1
                    svc.inbytes += length
                    tot.conns += 1
                    tot.inpkts += 1
                    tot.inbytes += length
                cp.state = state
                cp.timeout = timeout
                cp.in_pkts = 1
                cp.expires = now + timeout
                self._wheel.file(cp)
                return _new_verdict(Verdict, (_FORWARD, cp, dest.addr, rport, fwd, ""))
        elif cp.expires <= now:
            # Its timer is due: the kernel would already have run it.
            self._expire(cp, now, ExpiryReason.TIMEOUT)
            cp = pp.conns.get(key)
        if cp is not None and (
            pkt.tcp_flags & _TH_SYN
            or pkt.sctp_chunk == _SCTP_INIT
            or (cp.dest is not None and not cp.dest.flags & IP_VS_DEST_F_AVAILABLE)
        ):
            # A new-connection packet on an existing entry, or an entry whose dest is gone.
            res = self._check_existing(pp, cp, pkt, now)
            if res is not cp:
                if res is not None:
                    return res  # type: ignore[return-value]
                cp = None
        if cp is None:
            res = self._try_to_schedule(pp, pkt, key, now)
            if type(res) is Verdict:
                return res
            cp = res  # type: ignore[assignment]
        assert cp is not None
        # ip_vs_in_stats: counted only while the destination is available.
        dest = cp.dest
        if dest is not None and dest.flags & IP_VS_DEST_F_AVAILABLE:
            length = pkt.length
            dest.inpkts += 1
            dest.inbytes += length
            svc = dest.svc
            svc.inpkts += 1
            svc.inbytes += length
            tot = self._total
            tot.inpkts += 1
            tot.inbytes += length
        pp.transition(cp, _DIR_INPUT, pkt)
        flags = cp.flags
        if not flags & _SLOW_PATH_FLAGS and not self._sync_master and dest is not None:
            # The common case, inlined: count the packet, re-arm, forward to the dest.
            cp.in_pkts += 1
            exp = cp.expires = now + cp.timeout
            tb = cp.tb
            if tb is None or tb.start > exp:
                self._wheel.file(cp)
            return _new_verdict(
                Verdict, (_FORWARD, cp, dest.addr, cp.dport, _FWD_OF_FLAGS[flags & 7], "")
            )
        return self._after_input(cp, now)

    def receive_conn_packet(self, cp: Conn, pkt: PacketInfo, *, now: float) -> None:
        """`receive_packet(pkt, now=now)` without the verdict, for a packet of entry `cp`.

        `cp` is a FORWARD verdict's `conn` and `pkt` names that entry's tuple (the data
        plane's socket events of an open flow). While `cp` is the table's live entry for its
        tuple and the packet is a usual one (not a SYN, the entry not due, its destination
        available, no one-packet or bypass flag, no sync master, the director on), this skips
        finding the entry again and building a verdict: the rest is `receive_packet`'s path
        for a found entry, step for step. Every other packet takes `receive_packet` itself.
        """
        pp = cp.pp
        if pkt.direction:
            # `_receive_reply` for a found entry.
            if self._director_off or cp.expires <= now or pp.conns.get(cp.key) is not cp:
                self._receive_reply(pkt, now)
                return
            dest = cp.dest
            if dest is not None and dest.flags & IP_VS_DEST_F_AVAILABLE:
                length = pkt.length
                dest.outpkts += 1
                dest.outbytes += length
                svc = dest.svc
                svc.outpkts += 1
                svc.outbytes += length
                tot = self._total
                tot.outpkts += 1
                tot.outbytes += length
            pp.transition(cp, _DIR_OUTPUT, pkt)
            self._wheel.arm(cp, now + cp.timeout)
            return
        dest = cp.dest
        if (
            self._director_off
            or self._sync_master
            or cp.expires <= now
            or pkt.tcp_flags & _TH_SYN
            or pp is self._sctp
            or dest is None
            or not dest.flags & IP_VS_DEST_F_AVAILABLE
            or cp.flags & _SLOW_PATH_FLAGS
            or pp.conns.get(cp.key) is not cp
        ):
            self.receive_packet(pkt, now=now)
            return
        # receive_packet from "ip_vs_in_stats" on, for an entry it found.
        length = pkt.length
        dest.inpkts += 1
        dest.inbytes += length
        svc = dest.svc
        svc.inpkts += 1
        svc.inbytes += length
        tot = self._total
        tot.inpkts += 1
        tot.inbytes += length
        pp.transition(cp, _DIR_INPUT, pkt)
        if cp.flags & _SLOW_PATH_FLAGS:
            self._after_input(cp, now)
            return
        cp.in_pkts += 1
        exp = cp.expires = now + cp.timeout
        tb = cp.tb
        if tb is None or tb.start > exp:
            self._wheel.file(cp)

    def _count_conn(self, dest: Dest, svc: Service) -> None:
        """`ip_vs_conn_stats`: a new connection, counted only while the dest is available."""
        if dest.flags & IP_VS_DEST_F_AVAILABLE:
            dest.conns += 1
            svc.conns += 1
            self._total.conns += 1

    def _count_first_packet(self, dest: Dest, svc: Service, length: int) -> None:
        """`ip_vs_conn_stats`, then `ip_vs_in_stats` for the packet that made the connection.

        Per-packet input and output counting stays inline in `receive_packet` and
        `_receive_reply`: it is the hottest path of the engine, and the two touch different
        counters.
        """
        if dest.flags & IP_VS_DEST_F_AVAILABLE:
            tot = self._total
            dest.conns += 1
            dest.inpkts += 1
            dest.inbytes += length
            svc.conns += 1
            svc.inpkts += 1
            svc.inbytes += length
            tot.conns += 1
            tot.inpkts += 1
            tot.inbytes += length

    def _bind_new(
        self, svc: Service, pp: _Proto, dest: Dest, pkt: PacketInfo, key: ConnKey, now: float
    ) -> Verdict:
        """The fast path's remainder for a dest with a threshold or a bypass method: the
        general steps after the scheduling decision (§6.0, §6.1)."""
        if dest.u_threshold:
            cp = Conn(key, pp, None, dest.port or key[3], 0)
            self._bind_dest(cp, dest)
        else:
            # ip_vs_bind_dest for an entry without extra flags and a dest without threshold.
            cp = Conn(key, pp, dest, dest.port or key[3], dest.conn_flags)
            dest.inactconns += 1
            if dest.lkeys is not None:
                dest.lkeys[dest.lpos] += dest.linact
        pp.conns[key] = cp
        self._count_first_packet(dest, svc, pkt.length)
        pp.transition(cp, _DIR_INPUT, pkt)
        flags = cp.flags
        if flags & _SLOW_PATH_FLAGS:
            return self._after_input(cp, now)
        cp.in_pkts = 1
        cp.expires = now + cp.timeout
        self._wheel.file(cp)
        return _new_verdict(
            Verdict, (_FORWARD, cp, dest.addr, cp.dport, _FWD_OF_FLAGS[flags & 7], "")
        )

    @staticmethod
    def _update_least_keys(svc: Service) -> None:
        """Derive the fast path's lc/wlc/sed/nq keys for a service that needs no OVERLOAD test.

        `schedulers.least_keys` restates ip_vs_lc_schedule, ip_vs_wlc_schedule,
        ip_vs_sed_schedule and ip_vs_nq_schedule (§6.4-§6.7) as "the first candidate of least
        integer key", valid while the weights stay as they are and no destination is
        overloaded. OVERLOAD is only ever set on a destination with an upper threshold
        (§6.1), so services with a threshold keep the scheduler's own walk; weights change
        only through `_update_dest`, which calls this again. The keys are linear in the
        counters: every place that moves activeconns / inactconns of a candidate moves its
        key by `lact` / `linact` per connection, so a decision reads no counter at all.
        Called after every change of the destination list or the scheduler.
        """
        for d in svc.ldests:
            d.lkeys = None  # former candidates (removed, quiesced) no longer keep a key
        svc.ldests = []
        svc.lkeys = svc.lidle = None
        sched = svc.scheduler
        if sched is None or not has_least_keys(sched):
            return  # (checked first: the walk below would make adding N servers O(N^2))
        if any(d.u_threshold or d.overloaded for d in svc.dests):
            return
        plan = least_keys(sched, svc.dests)
        if plan is None or not plan.dests:
            return
        keys = [
            d.activeconns * a + d.inactconns * i + b
            for d, a, i, b in zip(plan.dests, plan.act, plan.inact, plan.base, strict=True)
        ]
        for pos, d in enumerate(plan.dests):
            d.lkeys = keys
            d.lpos = pos
            d.lact = plan.act[pos]
            d.linact = plan.inact[pos]
        svc.ldests = list(plan.dests)
        svc.lkeys = keys
        svc.lidle = list(plan.base) if plan.idle else None

    def _first_input(self, pp: _Proto, conn_flags: int) -> tuple[int, int, float, bool, FwdMethod]:
        """The first input transition of a new entry with `conn_flags` (fast path cache).

        Returns (state, flags, timeout, active, fwd) as `_set_tcp_state` / `_set_udp_state`
        leave them for a TCP SYN (event 0 for any SYN without RST) or a UDP datagram from
        state NONE; `active` tells whether the entry ends up counted in activeconns, `fwd`
        is the verdict's forwarding method for the resulting flags.
        """
        if pp is self._tcp:
            direction = _DIR_INPUT_ONLY if conn_flags & IP_VS_CONN_F_NOOUTPUT else _DIR_INPUT
            state = self._tcp_table[direction][0][0]
            flags = conn_flags
            active = False
            if state != 0 and self._tcp_active[state]:
                # A new entry is INACTIVE (ip_vs_bind_dest); the transition activates it.
                active = True
                flags = self._iflags(conn_flags & ~IP_VS_CONN_F_INACTIVE)
            result = (state, flags, self._tcp.timeouts[state], active, _FWD_OF_FLAGS[flags & 7])
        else:
            result = (0, conn_flags, self._udp.timeouts[0], False, _FWD_OF_FLAGS[conn_flags & 7])
        pp.first[conn_flags] = result
        return result

    def _refresh_fast(self) -> None:
        """Rebuild the services whose new flows `receive_packet` may take on its fast path.

        Called after every change of a condition the fast path does not test itself: the
        service set and settings, sysctl conntrack, the drop_packet rate, the sync state.
        """
        self._tcp.fast = {}
        self._udp.fast = {}
        if not self._opts.fast_path or self._conntrack_flag or self._drop_rate or self._sync_master:
            return
        for vkey, svc in self._svc_tab.items():
            if svc.persistent or not svc.port:
                continue
            if svc.protocol == _TCP:
                pp = self._tcp
            elif svc.protocol == _UDP and not svc.one_packet:
                pp = self._udp
            else:
                continue
            pp.fast[vkey[1:]] = svc  # (vaddr, vport[, 6]): the tail of an entry's key

    def _after_input(self, cp: Conn, now: float) -> Verdict:
        """in_pkts, the sync decision, re-arming (`ip_vs_conn_put`) and the verdict."""
        flags = cp.flags
        if flags & IP_VS_CONN_F_ONE_PACKET:
            pkts = self._sysctl.sync_threshold
        else:
            pkts = cp.in_pkts = cp.in_pkts + 1
        if self._sync_master:
            self._sync_conn(cp, pkts, now)
        elif flags & IP_VS_CONN_F_ONE_PACKET and cp.control is not None:
            cp.control.in_pkts += 1
        dest = cp.dest
        if dest is not None:
            daddr, dport = dest.addr, cp.dport
        elif flags & IP_VS_CONN_F_BYPASS:
            daddr, dport = self._unbound[cp][0], cp.key[3]
        else:
            daddr, dport = self._unbound[cp][0], cp.dport
        verdict = _new_verdict(Verdict, (_FORWARD, cp, daddr, dport, _FWD_OF_FLAGS[flags & 7], ""))
        if flags & IP_VS_CONN_F_ONE_PACKET:
            self._free_conn(cp, now, ExpiryReason.TIMEOUT, forced=False)  # OPS: freed at once
        else:
            self._wheel.arm(cp, now + cp.timeout)
        return verdict

    def _check_existing(
        self, pp: _Proto, cp: Conn, pkt: PacketInfo, now: float
    ) -> Conn | Verdict | None:
        """Port reuse (§5.3) and the unavailable-destination check (§5.2) for a found entry.

        Returns `cp` to go on with it, None to schedule the packet anew, or a verdict.
        """
        sysctl = self._sysctl
        proto = pp.protocol
        is_new = (proto == IpProto.TCP and pkt.tcp_flags & P.TH_SYN) or (
            proto == IpProto.SCTP and pkt.sctp_chunk == P.SCTP_CHUNK_INIT
        )
        if is_new and cp.control is None:
            # ip_vs_in_hook (current kernels): controlled entries are never rescheduled.
            dest = cp.dest
            resched = False
            if sysctl.expire_nodest_conn and dest is not None and dest.weight == 0:
                resched = True  # §5.1 special case, independent of conn_reuse_mode
            elif sysctl.conn_reuse_mode and self._is_new_conn_expected(cp, proto):
                resched = True  # this model has no FTP helper: entries control nobody
            if resched:
                old_ct = self._uses_old_conntrack(cp)
                if not old_ct:
                    cp.flags = self._iflags(cp.flags & ~IP_VS_CONN_F_NFCT)
                self._expire(cp, now, ExpiryReason.REUSE)
                if old_ct:
                    # §5.4: the SYN is dropped; the client retransmits it after its RTO.
                    self._counters[V_DROP_OLD_CT.reason] += 1
                    return V_DROP_OLD_CT
                return None
        dest = cp.dest
        if dest is not None and not dest.flags & IP_VS_DEST_F_AVAILABLE:
            if sysctl.expire_nodest_conn:
                old_ct = self._uses_old_conntrack(cp)
                if not old_ct:
                    cp.flags = self._iflags(cp.flags & ~IP_VS_CONN_F_NFCT)
                self._expire(cp, now, ExpiryReason.NODEST)
                if old_ct:
                    self._counters[V_DROP_OLD_CT.reason] += 1
                    return V_DROP_OLD_CT
                return None  # current kernels schedule the packet as a new flow
            self._counters[V_DROP_NODEST.reason] += 1
            return V_DROP_NODEST
        return cp

    def _is_new_conn_expected(self, cp: Conn, proto: int) -> bool:
        """`is_new_conn_expected` (§5.3)."""
        if proto == IpProto.TCP:
            state = cp.state
            return (
                state == P.TcpState.TIME_WAIT
                or state == P.TcpState.CLOSE
                or (
                    bool(self._sysctl.conn_reuse_mode & 2)
                    and state == P.TcpState.FIN_WAIT
                    and bool(cp.flags & IP_VS_CONN_F_NOOUTPUT)
                )
            )
        if proto == IpProto.SCTP:
            return cp.state == P.SctpState.CLOSED
        return False

    @staticmethod
    def _uses_old_conntrack(cp: Conn) -> bool:
        """`ip_vs_conn_uses_old_conntrack` in this model (§5.4).

        The netfilter conntrack entry of a connection lives as long as the IPVS entry that
        keeps it (flag NFCT, set on every entry while sysctl `conntrack` is 1): a packet that
        reuses the ports of such an entry therefore carries that old, confirmed conntrack.
        """
        return bool(cp.flags & IP_VS_CONN_F_NFCT)

    def _try_to_schedule(
        self, pp: _Proto, pkt: PacketInfo, key: ConnKey, now: float
    ) -> Conn | Verdict:
        """`ip_vs_try_to_schedule` + `*_conn_schedule` + `ip_vs_schedule` (§6.0, §5.5)."""
        proto = pp.protocol
        if proto == _TCP:
            tflags = pkt.tcp_flags
            if tflags & _TH_RST or not (tflags & _TH_SYN or self._sloppy_tcp):
                return V_NOT_SCHEDULABLE
        elif proto == _SCTP:
            chunk = pkt.sctp_chunk
            if chunk == _SCTP_ABORT or not (chunk == _SCTP_INIT or self._sysctl.sloppy_sctp):
                return V_NOT_SCHEDULABLE
        fwmark = pkt.fwmark
        svc = None
        if fwmark:
            svc = self._fwm_tab.get((pkt.family, fwmark))
        if svc is None:
            vkey = (proto, key[2], key[3]) if len(key) == 4 else (proto, key[2], key[3], 6)
            svc = self._svc_tab.get(vkey)
            if svc is None:
                svc = self._service_fallback(vkey)
                if svc is None:
                    return V_NO_SERVICE
        if self._drop_rate and self._todrop():
            self._counters[V_DROP_DEFENSE.reason] += 1
            return V_DROP_DEFENSE
        if pkt.sport == FTPDATA:
            return V_FTP_DATA  # never schedule active FTP data (§6.0)
        if svc.persistent:
            return self._sched_persist(svc, pp, pkt, key, now)
        if not svc.fwmark and pkt.dport != svc.port:
            return self._leave(svc, pp, pkt, key, now)  # port-0 service without persistence
        sched = svc.scheduler
        assert sched is not None
        dest = sched.schedule(svc.dests, pkt, now=now)
        if dest is None:
            return self._leave(svc, pp, pkt, key, now)
        flags = self._conntrack_flag
        if svc.one_packet and proto == _UDP:
            flags |= IP_VS_CONN_F_ONE_PACKET
        if flags or dest.u_threshold:
            cp = Conn(key, pp, None, dest.port or key[3], flags)
            self._bind_dest(cp, dest)
            if not flags & IP_VS_CONN_F_ONE_PACKET:
                pp.conns[key] = cp
        else:
            # ip_vs_bind_dest, inlined for the common case (no extra flags, no threshold):
            # a new entry takes the dest's flags, which always include INACTIVE (§3.4).
            cp = Conn(key, pp, dest, dest.port or key[3], dest.conn_flags)
            dest.inactconns += 1
            if dest.lkeys is not None:
                dest.lkeys[dest.lpos] += dest.linact
            pp.conns[key] = cp
        self._count_conn(dest, svc)
        return cp

    def _service_fallback(self, vkey: tuple[int, ...]) -> Service | None:
        """§6.0 steps 3 and 4: the FTP service for data ports, then the port-0 service.

        `vkey` is (protocol, vaddr, vport[, 6]) as in the service index.
        """
        proto, vport = vkey[0], vkey[2]
        if (
            proto == IpProto.TCP
            and self._ftpsvc_counter
            and (vport == FTPDATA or vport >= UNPRIVILEGED_PORT_START)
        ):
            svc = self._svc_tab.get((proto, vkey[1], FTPPORT, *vkey[3:]))
            if svc is not None:
                return svc
        if self._nullsvc_counter:
            return self._svc_tab.get((proto, vkey[1], 0, *vkey[3:]))
        return None

    def _find_service(
        self, family: int, fwmark: int, proto: int, vaddr: IPAddress, vport: int
    ) -> Service | None:
        """`ip_vs_service_find` (§6.0)."""
        if fwmark:
            svc = self._fwm_tab.get((family, fwmark))
            if svc is not None:
                return svc
        vkey = _svc_index_key(proto, vaddr, vport)
        svc = self._svc_tab.get(vkey)
        if svc is not None:
            return svc
        return self._service_fallback(vkey)

    def _sched_persist(
        self, svc: Service, pp: _Proto, pkt: PacketInfo, key: ConnKey, now: float
    ) -> Conn | Verdict:
        """`ip_vs_sched_persist` (§4.2)."""
        proto = pp.protocol
        snet = svc.client_net(key[0])
        vaddr = key[2]
        dst_port = key[3]
        tail = key[4:]  # (6,) for IPv6
        tkey: ConnKey
        if dst_port == svc.port:
            tkey = (proto, snet, vaddr, dst_port if svc.port != FTPPORT else 0, *tail)
        elif svc.fwmark:
            tkey = (0, snet, svc.fwmark_addr, 0, *tail)
        else:
            tkey = (proto, snet, vaddr, 0, *tail)
        ct = self._templates.get(tkey)
        if ct is not None and ct.expires <= now:
            self._expire(ct, now, ExpiryReason.TIMEOUT)
            ct = self._templates.get(tkey)
        if ct is None or not self._check_template(ct):
            sched = svc.scheduler
            assert sched is not None
            dest = sched.schedule(svc.dests, pkt, now=now)
            if dest is None:
                return self._leave(svc, pp, pkt, key, now)
            tdport = dest.port if (dst_port == svc.port and svc.port != FTPPORT) else 0
            ct = Template(
                tkey, None, tdport, IP_VS_CONN_F_TEMPLATE | self._conntrack_flag, pkt.fwmark
            )
            self._bind_dest(ct, dest)
            self._templates[tkey] = ct
            ct.timeout = svc.timeout
        else:
            dest = ct.dest
        dport = dst_port
        if dport == svc.port and dest.port:
            dport = dest.port
        flags = self._conntrack_flag
        if svc.one_packet and proto == IpProto.UDP:
            flags |= IP_VS_CONN_F_ONE_PACKET
        cp = Conn(key, pp, None, dport, flags)
        self._bind_dest(cp, dest)
        if not flags & IP_VS_CONN_F_ONE_PACKET:
            pp.conns[key] = cp
        cp.control = ct
        ct.n_control += 1
        # Releasing the template restarts its timer with the full timeout (§4.2 step 5).
        self._wheel.arm(ct, now + ct.timeout)
        self._count_conn(dest, svc)
        return cp

    def _check_template(self, ct: Template) -> bool:
        """`ip_vs_check_template` (§4.2 step 2, §4.5): invalidate in place when unusable."""
        dest = ct.dest
        if (
            dest is None
            or not dest.flags & IP_VS_DEST_F_AVAILABLE
            or (self._sysctl.expire_quiescent_template and dest.weight == 0)
        ):
            if ct.key[3] != _INVALID_PORT:
                if ct.tkey is not None and self._templates.get(ct.tkey) is ct:
                    del self._templates[ct.tkey]
                ct.tkey = None
                ct.key = (ct.key[0], 0, ct.key[2], _INVALID_PORT, *ct.key[4:])
                ct.dport = _INVALID_PORT
            return False
        return True

    def _leave(
        self, svc: Service, pp: _Proto, pkt: PacketInfo, key: ConnKey, now: float
    ) -> Verdict:
        """`ip_vs_leave`: bypass, pass, or reject a packet no destination takes (§6.0)."""
        vaddr = pkt.daddr
        if self._sysctl.cache_bypass and svc.fwmark and not vaddr.is_multicast:
            flags = IP_VS_CONN_F_BYPASS | self._conntrack_flag
            if svc.one_packet and pp.protocol == IpProto.UDP:
                flags |= IP_VS_CONN_F_ONE_PACKET
            cp = Conn(key, pp, None, 0, flags)
            self._unbound[cp] = (vaddr, pkt.fwmark)
            if not flags & IP_VS_CONN_F_ONE_PACKET:
                pp.conns[key] = cp
            pp.transition(cp, P.DIR_INPUT, pkt)
            return self._after_input(cp, now)
        if svc.port == FTPPORT and pkt.dport != FTPPORT:
            return V_FTP_OTHER
        self._counters[V_NO_DEST.reason] += 1
        return V_NO_DEST

    def _receive_reply(self, pkt: PacketInfo, now: float) -> Verdict:
        """A real server's reply (`ip_vs_out_hook` + `handle_response`), named by its
        connection's client-side tuple."""
        if self._director_off:
            return V_BACKUP_ONLY
        pp = self._protos.get(pkt.protocol)
        if pp is None:
            return V_NOT_IPVS
        key: ConnKey = (addr_int(pkt.saddr), pkt.sport, addr_int(pkt.daddr), pkt.dport)
        if pkt.family != AF_INET:
            key = (*key, 6)
        cp = pp.conns.get(key)
        if cp is None:
            return V_NO_CONN
        if cp.expires <= now:
            self._expire(cp, now, ExpiryReason.TIMEOUT)
            return V_NO_CONN
        dest = cp.dest
        if dest is not None and dest.flags & IP_VS_DEST_F_AVAILABLE:
            length = pkt.length
            dest.outpkts += 1
            dest.outbytes += length
            svc = dest.svc
            svc.outpkts += 1
            svc.outbytes += length
            tot = self._total
            tot.outpkts += 1
            tot.outbytes += length
        pp.transition(cp, P.DIR_OUTPUT, pkt)
        self._wheel.arm(cp, now + cp.timeout)
        fwd = _FWD_OF_FLAGS[cp.flags & 7]
        return _new_verdict(Verdict, (_FORWARD, cp, pkt.saddr, pkt.sport, fwd, ""))

    # ------------------------------------------------------------------ state machines

    def _set_tcp_state(self, cp: Conn, direction: int, pkt: PacketInfo) -> None:
        """`set_tcp_state` (§3.3)."""
        flags = cp.flags
        if flags & IP_VS_CONN_F_NOOUTPUT:
            if direction == _DIR_OUTPUT:
                cp.flags = flags = self._iflags(flags & ~IP_VS_CONN_F_NOOUTPUT)
            else:
                direction = _DIR_INPUT_ONLY
        tflags = pkt.tcp_flags
        if tflags == _TH_SYN:
            event = 0
        elif tflags & _TH_RST:
            event = 3
        elif tflags & _TH_SYN:
            event = 0
        elif tflags & _TH_FIN:
            event = 1
        elif tflags & _TH_ACK:
            event = 2
        else:
            event = -1
        state = cp.state
        new = _TCP_CLOSE if event < 0 else self._tcp_table[direction][event][state]
        if new != state:
            dest = cp.dest
            if dest is not None:
                active = self._tcp_active[new]
                if not flags & IP_VS_CONN_F_INACTIVE:
                    if not active:
                        dest.activeconns -= 1
                        dest.inactconns += 1
                        if dest.lkeys is not None:
                            dest.lkeys[dest.lpos] += dest.linact - dest.lact
                        flags |= IP_VS_CONN_F_INACTIVE
                        cp.flags = self._flag_ints.setdefault(flags, flags)
                elif active:
                    dest.activeconns += 1
                    dest.inactconns -= 1
                    if dest.lkeys is not None:
                        dest.lkeys[dest.lpos] += dest.lact - dest.linact
                    flags &= ~IP_VS_CONN_F_INACTIVE
                    cp.flags = self._flag_ints.setdefault(flags, flags)
            if new == _TCP_ESTABLISHED:
                self._assure_ct(cp)
            cp.state = new
        cp.timeout = self._tcp.timeouts[new]

    def _set_udp_state(self, cp: Conn, direction: int, pkt: PacketInfo) -> None:
        """`udp_state_transition` (§3.4): one state; replies assure the template."""
        if direction == P.DIR_OUTPUT:
            self._assure_ct(cp)
        cp.timeout = self._udp.timeouts[0]

    def _set_sctp_state(self, cp: Conn, direction: int, pkt: PacketInfo) -> None:
        """`set_sctp_state` (§3.4; tables in `proto.SCTP_STATES`)."""
        flags = cp.flags
        if flags & IP_VS_CONN_F_NOOUTPUT:
            if direction == P.DIR_OUTPUT:
                cp.flags = flags = self._iflags(flags & ~IP_VS_CONN_F_NOOUTPUT)
            else:
                direction = P.DIR_INPUT_ONLY
        new = P.SCTP_STATES[direction][P.sctp_event(pkt.sctp_chunk)][cp.state]
        if new != cp.state:
            dest = cp.dest
            if dest is not None:
                active = P.SCTP_ACTIVE[new]
                if not flags & IP_VS_CONN_F_INACTIVE and not active:
                    dest.activeconns -= 1
                    dest.inactconns += 1
                    if dest.lkeys is not None:
                        dest.lkeys[dest.lpos] += dest.linact - dest.lact
                    cp.flags = self._iflags(flags | IP_VS_CONN_F_INACTIVE)
                elif flags & IP_VS_CONN_F_INACTIVE and active:
                    dest.activeconns += 1
                    dest.inactconns -= 1
                    if dest.lkeys is not None:
                        dest.lkeys[dest.lpos] += dest.lact - dest.linact
                    cp.flags = self._iflags(flags & ~IP_VS_CONN_F_INACTIVE)
            cp.state = new
        cp.timeout = self._sctp.timeouts[new]

    @staticmethod
    def _assure_ct(cp: Conn) -> None:
        """`ip_vs_control_assure_ct` (§4.4)."""
        ct = cp.control
        if ct is not None and not ct.state & IP_VS_CTPL_S_ASSURED:
            ct.state |= IP_VS_CTPL_S_ASSURED

    def _iflags(self, value: int) -> int:
        """One shared int object per distinct flags value (keeps entries small)."""
        return self._flag_ints.setdefault(value, value)

    # ------------------------------------------------------------------ binding, expiry

    def _bind_dest(self, cp: Conn, dest: Dest) -> None:
        """`ip_vs_bind_dest` (§3.4, §6.1, §1.10 step 3)."""
        conn_flags = dest.conn_flags
        if type(cp) is Conn and cp.pp is not self._udp:
            conn_flags &= ~IP_VS_CONN_F_ONE_PACKET
        flags = cp.flags
        if flags & IP_VS_CONN_F_SYNC:
            if not flags & IP_VS_CONN_F_TEMPLATE:
                conn_flags &= ~IP_VS_CONN_F_INACTIVE  # keep the synced activity flag
            flags &= ~(IP_VS_CONN_F_FWD_MASK | IP_VS_CONN_F_NOOUTPUT)  # our dest's method
        flags |= conn_flags
        cp.flags = self._iflags(flags)
        cp.dest = dest
        if flags & IP_VS_CONN_F_TEMPLATE:
            dest.persistconns += 1
        elif flags & IP_VS_CONN_F_INACTIVE:
            dest.inactconns += 1
            if dest.lkeys is not None:
                dest.lkeys[dest.lpos] += dest.linact
        else:
            dest.activeconns += 1
            if dest.lkeys is not None:
                dest.lkeys[dest.lpos] += dest.lact
        u = dest.u_threshold
        if u and dest.activeconns + dest.inactconns >= u:
            dest._set_overload(True)

    @staticmethod
    def _unbind_dest(cp: Conn) -> None:
        """`ip_vs_unbind_dest` (§6.1): counters and the OVERLOAD hysteresis."""
        dest = cp.dest
        if dest is None:
            return
        flags = cp.flags
        if flags & IP_VS_CONN_F_TEMPLATE:
            dest.persistconns -= 1
        elif flags & IP_VS_CONN_F_INACTIVE:
            dest.inactconns -= 1
            if dest.lkeys is not None:
                dest.lkeys[dest.lpos] -= dest.linact
        else:
            dest.activeconns -= 1
            if dest.lkeys is not None:
                dest.lkeys[dest.lpos] -= dest.lact
        total = dest.activeconns + dest.inactconns
        if dest.l_threshold:
            if total < dest.l_threshold:
                dest._set_overload(False)
        elif dest.u_threshold:
            if total * 4 < dest.u_threshold * 3:
                dest._set_overload(False)
        elif dest.overloaded:
            dest._set_overload(False)

    def _expire(self, cp: Conn, now: float, reason: ExpiryReason, *, forced: bool = False) -> None:
        """`ip_vs_conn_expire` (§3.5): free the entry, or re-arm a controlling template."""
        if type(cp) is Template and cp.n_control > 0:
            # "expire later": keep it 60 s more while it controls connections (§4.3).
            cp.timeout = TEMPLATE_REARM_TIMEOUT
            if self._sync_master:
                self._sync_conn(cp, self._sysctl.sync_threshold, now)
            cp.expires = now + TEMPLATE_REARM_TIMEOUT
            self._wheel.file(cp)
            return
        self._free_conn(cp, now, reason, forced=forced)

    def _free_conn(self, cp: Conn, now: float, reason: ExpiryReason, *, forced: bool) -> None:
        if type(cp) is Template:
            if cp.tkey is not None and self._templates.get(cp.tkey) is cp:
                del self._templates[cp.tkey]
        else:
            conns = cp.pp.conns
            if conns.get(cp.key) is cp:
                del conns[cp.key]
        cp.tb = None
        ct = cp.control
        if ct is not None:
            ct.n_control -= 1
            # A forced deletion (timeout 0) drops a controller it leaves unused, unless it
            # is an ASSURED template (§3.5, §4.4 b).
            if forced and ct.n_control == 0 and not ct.state & IP_VS_CTPL_S_ASSURED:
                self._free_conn(ct, now, reason, forced=True)
        self._unbind_dest(cp)
        if self._unbound:
            self._unbound.pop(cp, None)
        if (
            self._opts.report_expiry
            and type(cp) is Conn
            and not cp.flags & IP_VS_CONN_F_ONE_PACKET  # never in the table
        ):
            self._events.append(conn_expired(cp, reason))

    def _delete_conn(self, cp: Conn, now: float, reason: ExpiryReason) -> None:
        """`ip_vs_conn_del`: forced expiry (timeout 0) of an armed entry."""
        if cp.tb is None:
            return
        if type(cp) is Template and cp.n_control > 0:
            self._expire(cp, now, reason)
            return
        self._free_conn(cp, now, reason, forced=True)

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        """The absolute time `handle_timer` must next run (None: nothing pending)."""
        deadlines = [
            d
            for d in (
                self._wheel.next_deadline(),
                self._est_next,
                self._defense_next,
                self._trash_next,
            )
            if d is not None
        ]
        for svc in self._services.values():
            if svc.scheduler is not None:
                d = svc.scheduler.next_deadline()
                if d is not None:
                    deadlines.append(d)
        return min(deadlines) if deadlines else None

    def handle_timer(self, *, now: float) -> None:
        """Run everything due at `now`: expiry, estimator, defense, trash, scheduler GC."""
        wheel = self._wheel
        due: list[Conn] = []
        for bucket in wheel.pop_due(now):
            for cp in bucket:
                if cp.tb is not bucket:
                    continue  # stale copy: the entry was re-filed or freed
                if cp.expires <= now:
                    due.append(cp)
                else:
                    wheel.file(cp)
        if len(due) > 1:
            # Timers fire in expiry order (a template due after its last connection must
            # see that connection gone), whatever bucket the lazy wheel kept them in.
            due.sort(key=_expires_of)
        for cp in due:
            if cp.tb is not None and cp.expires <= now:
                self._expire(cp, now, ExpiryReason.TIMEOUT)
        if self._est_next is not None and now >= self._est_next:
            self._run_estimator()
            self._est_next = _next_period(self._est_next, ESTIMATOR_PERIOD, now)
        if self._defense_next is not None and now >= self._defense_next:
            self._defense_tick(now)
            self._defense_next = (
                _next_period(self._defense_next, DEFENSE_TIMER_PERIOD, now)
                if self._defense_configured()
                else None
            )
        if self._trash_next is not None and now >= self._trash_next:
            self._trash_tick(now)
        for svc in self._services.values():
            sched = svc.scheduler
            if sched is not None:
                d = sched.next_deadline()
                if d is not None and now >= d:
                    sched.handle_timer(now=now)

    def _run_estimator(self) -> None:
        if not self._sysctl.run_estimation:
            return
        self._total.estimate()
        for svc in self._services.values():
            svc.estimate()
            for d in svc.dests:
                d.estimate()

    def _trash_tick(self, now: float) -> None:
        """`ip_vs_dest_trash_expire` (§5.2)."""
        keep: list[Dest] = []
        for dest in self._trash:
            if dest.refs > 0:
                keep.append(dest)
            elif dest.idle_start is None:
                dest.idle_start = now
                keep.append(dest)
            elif now < dest.idle_start + DEST_TRASH_PERIOD:
                keep.append(dest)
            else:
                self._events.append(DestFreed(dest.svc.key, dest.addr, dest.port))
        self._trash = keep
        self._trash_next = now + DEST_TRASH_PERIOD / 2 if keep else None

    # ------------------------------------------------------------------ defense (§7.1)

    def set_available_memory(self, pages: int | None) -> None:
        """The shell's reading of free + buffer pages (None: plenty); used every second."""
        self._availmem = pages

    def _defense_configured(self) -> bool:
        s = self._sysctl
        return bool(s.drop_entry or s.drop_packet or s.secure_tcp)

    def _defense_tick(self, now: float) -> None:
        self._update_defense_level()
        if self._dropentry:
            self._random_dropentry(now)

    def _update_defense_level(self) -> None:
        """`update_defense_level`: the automatic modes switch between 1 and 2."""
        s = self._sysctl
        amemthresh = max(s.amemthresh, 0)
        availmem = self._availmem
        nomem = availmem is not None and availmem < amemthresh
        changes: dict[str, int] = {}
        # drop_entry
        mode = s.drop_entry
        was = self._dropentry
        if mode == 0:
            self._dropentry = False
        elif mode == 1:
            self._dropentry = nomem
            if nomem:
                changes["drop_entry"] = 2
        elif mode == 2:
            self._dropentry = nomem
            if not nomem:
                changes["drop_entry"] = 1
        else:
            self._dropentry = True
        if self._dropentry != was:
            self._events.append(DefenseChanged("drop_entry", self._dropentry))
        # drop_packet
        mode = s.drop_packet
        was_rate = self._drop_rate
        if mode in (1, 2):
            if nomem:
                assert availmem is not None
                self._drop_rate = self._drop_counter = amemthresh // (amemthresh - availmem)
                if mode == 1:
                    changes["drop_packet"] = 2
            else:
                self._drop_rate = 0
                if mode == 2:
                    changes["drop_packet"] = 1
        elif mode == 3:
            self._drop_rate = s.am_droprate
        else:
            self._drop_rate = 0
        if bool(self._drop_rate) != bool(was_rate):
            self._events.append(DefenseChanged("drop_packet", bool(self._drop_rate)))
            self._refresh_fast()
        # secure_tcp
        mode = s.secure_tcp
        on = self._secure_tcp_on
        if mode == 0:
            on = False
        elif mode == 1:
            on = nomem
            if nomem:
                changes["secure_tcp"] = 2
        elif mode == 2:
            on = nomem
            if not nomem:
                changes["secure_tcp"] = 1
        else:
            on = True
        if on != self._secure_tcp_on:
            self._secure_tcp_on = on
            self._tcp_table = P.TCP_STATES_DOS if on else P.TCP_STATES
            self._tcp.first.clear()
            self._events.append(DefenseChanged("secure_tcp", on))
        if changes:
            self._sysctl = dataclasses.replace(s, **changes)

    def _todrop(self) -> bool:
        """`ip_vs_todrop`: one of every `drop_rate` new connections is dropped."""
        self._drop_counter -= 1
        if self._drop_counter > 0:
            return False
        self._drop_counter = self._drop_rate
        return True

    def _random_dropentry(self, now: float) -> None:
        """`ip_vs_random_dropentry`, modelled: examine about 1/32 of the table at random
        (the kernel probes table_size/32 random hash buckets)."""
        tab_size = 1 << self._opts.conn_tab_bits
        count = max(1, (tab_size >> 5) * max(1, len(self._wheel) // tab_size))
        for cp in self._wheel.sample(self._rng, count):
            if cp.tb is None:
                continue
            if type(cp) is Template:
                if cp.n_control:
                    continue
                if not cp.state & IP_VS_CTPL_S_ASSURED:
                    self._counters["drop_entry"] += 1
                    self._delete_conn(cp, now, ExpiryReason.DEFENSE)
                continue
            proto = cp.pp.protocol
            if proto == IpProto.TCP:
                # Half-open entries always go; established ones by the idle/packet rule.
                drop = cp.state in (P.TcpState.SYN_RECV, P.TcpState.SYNACK) or (
                    cp.state == P.TcpState.ESTABLISHED and self._todrop_entry(cp, now)
                )
            elif proto == IpProto.SCTP:
                drop = cp.state in (P.SctpState.INIT1, P.SctpState.INIT) or (
                    cp.state == P.SctpState.ESTABLISHED and self._todrop_entry(cp, now)
                )
            else:
                drop = self._todrop_entry(cp, now)
            if not drop:
                continue
            self._counters["drop_entry"] += 1
            self._delete_conn(cp, now, ExpiryReason.DEFENSE)

    def _todrop_entry(self, cp: Conn, now: float) -> bool:
        """`todrop_entry`: idle for 60 s or more and 0..8 packets, with per-count rates."""
        if now - (cp.expires - cp.timeout) < 60.0:
            return False
        i = cp.in_pkts
        if i > 8 or i < 0 or i == 0:
            return False
        self._todrop_counter[i] -= 1
        if self._todrop_counter[i] > 0:
            return False
        self._todrop_counter[i] = i
        return True

    # ------------------------------------------------------------------ sync (§2)

    def set_sync_state(self, *, master: bool, backup: bool) -> None:
        """Which sync daemons run (both may): the master makes the engine emit
        `SyncConnNeeded`; a backup with sysctl backup_only = 1 disables the director."""
        self._sync_master = master
        self._sync_backup = backup
        self._director_off = bool(self._sysctl.backup_only) and backup
        self._refresh_fast()

    def _sync_conn(self, cp: Conn, pkts: int, now: float) -> None:
        """`ip_vs_sync_conn` (v1) / `ip_vs_sync_conn_v0` (§2.1, §2.4)."""
        if self._sysctl.sync_version == 0:
            if cp.flags & IP_VS_CONN_F_ONE_PACKET or len(cp.key) == 5:
                return
            if not self._sync_conn_needed(cp, pkts, now):
                return
            self._events.append(SyncConnNeeded(self._sync_entry(cp)))
            ct = cp.control
            if ct is not None:
                ct.in_pkts += 1
                self._sync_conn(ct, ct.in_pkts, now)
            return
        c: Conn | None = cp
        if not cp.flags & IP_VS_CONN_F_ONE_PACKET and self._sync_conn_needed(cp, pkts, now):
            self._events.append(SyncConnNeeded(self._sync_entry(cp)))
        c = cp.control
        while c is not None:
            c.in_pkts += 1
            if self._sync_conn_needed(c, c.in_pkts, now):
                self._events.append(SyncConnNeeded(self._sync_entry(c)))
            c = c.control

    def _sync_conn_needed(self, cp: Conn, pkts: int, now: float) -> bool:
        """`ip_vs_sync_conn_needed` (§2.3), on a millisecond tick clock."""
        s = self._sysctl
        orig = cp.sync_endtime
        now_t = int(now * 1000)
        timeout_t = int(cp.timeout * 1000)
        n = (now_t + timeout_t) & ~3
        force = False
        is_template = type(cp) is Template
        if is_template:
            force = False
        elif s.sync_persist_mode and cp.control is not None:
            return False
        else:
            proto = cp.pp.protocol
            if proto == IpProto.TCP:
                if cp.state not in _TCP_SYNC_STATES:
                    return False
                force = cp.state != cp.old_state
                if force and cp.state != P.TcpState.ESTABLISHED:
                    return self._sync_commit(cp, orig, n, force)
            elif proto == IpProto.SCTP:
                if cp.state not in _SCTP_SYNC_STATES:
                    return False
                force = cp.state != cp.old_state
                if force and cp.state != P.SctpState.ESTABLISHED:
                    return self._sync_commit(cp, orig, n, force)
        refresh_t = s.sync_refresh_period * 1000
        if refresh_t > 0:
            diff = n - orig
            min_diff = max(timeout_t >> 1, 10_000)
            if abs(diff) < min(refresh_t, min_diff):
                retries = orig & 3
                if retries >= s.sync_retries:
                    return False
                if now_t < orig - timeout_t + (refresh_t >> 3):
                    return False
                n |= retries + 1
        period = s.sync_period
        if period > 0:
            if not is_template and pkts % period != s.sync_threshold:
                return False
        elif not refresh_t and pkts != s.sync_threshold:
            return False
        return self._sync_commit(cp, orig, n, force)

    @staticmethod
    def _sync_commit(cp: Conn, orig: int, n: int, force: bool) -> bool:
        cp.old_state = cp.state
        changed = cp.sync_endtime == orig
        cp.sync_endtime = n
        return changed or force

    def _sync_entry(self, cp: Conn) -> SyncConn:
        """The entry as `ip_vs_sync_conn` encodes it (§1.7)."""
        caddr, cport, vaddr, vport = cp.caddr, cp.cport, cp.vaddr, cp.vport
        dest = cp.dest
        if type(cp) is Template:
            protocol = cp.protocol_
            fwmark = cp.fwmark
        else:
            protocol = int(cp.pp.protocol)
            fwmark = dest.svc.fwmark if dest is not None else self._unbound[cp][1]
        daddr = self._daddr_of(cp)
        return SyncConn(
            family=AF_INET if caddr.version == 4 else AF_INET6,
            protocol=protocol,
            flags=cp.flags & ~IP_VS_CONN_F_HASHED,
            state=cp.state,
            cport=cport,
            vport=vport,
            dport=cp.dport,
            fwmark=fwmark,
            timeout=int(cp.timeout),
            caddr=caddr,
            vaddr=vaddr,
            daddr=daddr,
        )

    def apply_sync(self, entry: SyncConn, *, now: float, version: int = 1) -> SyncApplied:
        """Apply one synced entry on this (backup) director (`ip_vs_proc_conn`, §1.10).

        Args:
            entry: the decoded entry.
            now: monotonic seconds.
            version: 1 masks the flags with BACKUP_MASK; 0 keeps all 16 bits (§1.9).

        Returns:
            What was done; entries the kernel skips are reported, never raised.
        """
        is_template = bool(entry.flags & IP_VS_CONN_F_TEMPLATE)
        if version == 0:
            flags = (entry.flags | IP_VS_CONN_F_SYNC) & ~IP_VS_CONN_F_HASHED
        else:
            flags = (entry.flags & IP_VS_CONN_F_BACKUP_MASK) | IP_VS_CONN_F_SYNC
        pp = self._protos.get(entry.protocol)
        if not is_template:
            if pp is None:
                return SyncApplied.SKIPPED_PROTOCOL
            if not 0 <= entry.state < P.state_count(entry.protocol):
                return SyncApplied.SKIPPED_STATE
        cp: Conn | None
        if not is_template:
            assert pp is not None
            key = _conn_key(entry.caddr, entry.cport, entry.vaddr, entry.vport)
            cp = pp.conns.get(key)
            if cp is not None and cp.expires <= now:
                self._expire(cp, now, ExpiryReason.TIMEOUT)
                cp = pp.conns.get(key)
            if cp is not None and (cp.dport != entry.dport or self._daddr_of(cp) != entry.daddr):
                if not flags & IP_VS_CONN_F_INACTIVE:
                    self._expire(cp, now, ExpiryReason.SYNC)
                    cp = None
                else:
                    return SyncApplied.IGNORED_STALE
        else:
            tkey = _template_key(entry.protocol, entry.caddr, entry.vaddr, entry.vport)
            cp = self._templates.get(tkey)
            if cp is not None and cp.expires <= now:
                self._expire(cp, now, ExpiryReason.TIMEOUT)
                cp = self._templates.get(tkey)
        result: SyncApplied
        if cp is not None:
            dest = cp.dest
            if (cp.flags ^ flags) & IP_VS_CONN_F_INACTIVE and not is_template and dest:
                if flags & IP_VS_CONN_F_INACTIVE:
                    dest.activeconns -= 1
                    dest.inactconns += 1
                    if dest.lkeys is not None:
                        dest.lkeys[dest.lpos] += dest.linact - dest.lact
                else:
                    dest.activeconns += 1
                    dest.inactconns -= 1
                    if dest.lkeys is not None:
                        dest.lkeys[dest.lpos] += dest.lact - dest.linact
            cp.flags = self._iflags(
                (flags & IP_VS_CONN_F_BACKUP_UPD_MASK) | (cp.flags & ~IP_VS_CONN_F_BACKUP_UPD_MASK)
            )
            if dest is None:
                self._try_bind_dest(cp, entry)
            result = SyncApplied.UPDATED
        else:
            dest = self._find_dest(entry, flags)
            flags |= self._conntrack_flag
            if is_template:
                tkey = _template_key(entry.protocol, entry.caddr, entry.vaddr, entry.vport)
                cp = Template(tkey, None, _PORTS[entry.dport], flags, entry.fwmark)
                self._templates[tkey] = cp
            else:
                assert pp is not None
                cp = Conn(key, pp, None, _PORTS[entry.dport], flags)
                pp.conns[key] = cp
            if dest is not None:
                self._bind_dest(cp, dest)
            else:
                cp.flags = self._iflags(flags)
                self._unbound[cp] = (entry.daddr, entry.fwmark)
            result = SyncApplied.CREATED
        cp.in_pkts = self._sysctl.sync_threshold
        cp.state = entry.state
        cp.old_state = entry.state
        if entry.timeout:
            cp.timeout = float(entry.timeout)
        elif not is_template and pp is not None:
            cp.timeout = pp.timeouts[entry.state]
        else:
            cp.timeout = SYNC_TEMPLATE_DEFAULT_TIMEOUT
        self._wheel.arm(cp, now + cp.timeout)
        return result

    def _daddr_of(self, cp: Conn) -> IPAddress:
        if cp.dest is not None:
            return cp.dest.addr  # type: ignore[no-any-return]
        return self._unbound[cp][0]

    def _find_dest(self, entry: SyncConn, flags: int) -> Dest | None:
        """`ip_vs_find_dest` (§1.10 step 3)."""
        svc = self._find_service(
            entry.family, entry.fwmark, entry.protocol, entry.vaddr, entry.vport
        )
        if svc is None:
            return None
        port = entry.dport
        if entry.fwmark and (flags & IP_VS_CONN_F_FWD_MASK) != IP_VS_CONN_F_MASQ:
            port = 0
        dest = svc.find_dest(entry.daddr, port)
        if dest is None:
            dest = svc.find_dest(entry.daddr, port ^ entry.dport)
        return dest

    def _try_bind_dest(self, cp: Conn, entry: SyncConn) -> None:
        """`ip_vs_try_bind_dest`: bind an unbound synced entry once its dest exists."""
        daddr, fwmark = self._unbound.get(cp, (entry.daddr, entry.fwmark))
        protocol = cp.protocol_ if type(cp) is Template else int(cp.pp.protocol)
        probe = dataclasses.replace(
            entry,
            daddr=daddr,
            dport=cp.dport,
            vaddr=cp.vaddr,
            vport=cp.vport,
            protocol=protocol,
            fwmark=fwmark,
        )
        dest = self._find_dest(probe, cp.flags)
        if dest is not None:
            self._unbound.pop(cp, None)
            self._bind_dest(cp, dest)

    # ------------------------------------------------------------------ configuration

    def add_service(self, vs: VirtualService, *, now: float) -> None:
        """`IP_VS_SO_SET_ADD` / IPVS_CMD_NEW_SERVICE, then its destinations in order.

        Raises:
            KernelError: EEXIST (already there), EINVAL (bad netmask / protocol / timeout),
                ENOENT (unknown scheduler); NotSupported for a persistence engine.
        """
        key = vs.key
        if key in self._services:
            raise KernelError("add_service", errno.EEXIST, f"service {_fmt_key(key)} exists")
        svc = Service(key)
        self._configure_service(svc, vs, "add_service", now)
        self._services[key] = svc
        if key.fwmark:
            self._fwm_tab[(key.family, key.fwmark)] = svc
        else:
            assert key.addr is not None
            self._svc_tab[_svc_index_key(key.protocol, key.addr, key.port)] = svc
            if key.port == FTPPORT:
                self._ftpsvc_counter += 1
            elif key.port == 0:
                self._nullsvc_counter += 1
        self._refresh_fast()
        if self._est_next is None:
            self._est_next = now + ESTIMATOR_PERIOD
        for d in vs.destinations:
            self.add_dest(key, d, now=now)

    def _configure_service(self, svc: Service, vs: VirtualService, op: str, now: float) -> None:
        key = vs.key
        if not key.fwmark and key.protocol not in (IpProto.TCP, IpProto.UDP, IpProto.SCTP):
            raise KernelError(op, errno.EPROTONOSUPPORT, f"protocol {key.protocol} not handled")
        if key.family not in (AF_INET, AF_INET6):
            raise KernelError(op, errno.EAFNOSUPPORT, f"family {key.family}")
        full = 32 if key.family == AF_INET else 128
        if not 1 <= vs.netmask <= full:
            raise KernelError(op, errno.EINVAL, f"netmask /{vs.netmask} out of range")
        if vs.pe_name:
            raise NotSupported(op, errno.ENOENT, f"persistence engine {vs.pe_name!r}")
        timeout = vs.persistence_timeout
        if timeout is not None and not 0 < timeout <= MAX_TIMEOUT:
            raise KernelError(op, errno.EINVAL, f"persistence timeout {timeout} out of range")
        if svc.scheduler is None or vs.scheduler != svc.sched_name:
            # ip_vs_bind_scheduler + init_service: a new scheduler starts from scratch, and
            # lblc/lblcr count their GC period from now.
            try:
                sched = make_scheduler(
                    vs.scheduler,
                    sched_flags=vs.sched_flags,
                    rng=self._rng,
                    lblc_expiration=float(self._sysctl.lblc_expiration),
                    lblcr_expiration=float(self._sysctl.lblcr_expiration),
                    now=now,
                )
            except ValueError as exc:
                raise KernelError(op, errno.ENOENT, str(exc)) from None
            sched.update_dests(svc.dests)
            svc.scheduler = sched
            self._update_least_keys(svc)
        elif vs.sched_flags != svc.sched_flags:
            # ip_vs_edit_service keeps the scheduler when its name is unchanged (rr/wrr
            # cursors, the lblc cache and sh/mh tables carry over); only the flags change.
            svc.scheduler.update_flags(vs.sched_flags)
        svc.sched_name = vs.scheduler
        svc.sched_flags = vs.sched_flags
        svc.persistent = timeout is not None
        svc.timeout = float(timeout) if timeout is not None else 0.0
        svc.netmask = vs.netmask
        svc.mask = ((1 << full) - 1) ^ ((1 << (full - vs.netmask)) - 1)
        svc.one_packet = vs.one_packet
        svc.pe_name = vs.pe_name

    def edit_service(self, vs: VirtualService, *, now: float) -> None:
        """`IPVS_CMD_SET_SERVICE`: scheduler (state restarts), flags, persistence.

        The destinations in `vs` are ignored (edit them with the dest commands).
        """
        svc = self._service("edit_service", vs.key)
        self._configure_service(svc, vs, "edit_service", now)
        self._refresh_fast()

    def del_service(self, key: ServiceKey, *, now: float) -> None:
        """`IPVS_CMD_DEL_SERVICE`: its destinations go to the trash (§5.2)."""
        svc = self._service("del_service", key)
        for dest in list(svc.dests):
            self._unlink_dest(svc, dest, now=now, update_sched=False, flush=False)
        self._update_least_keys(svc)  # the trashed dests keep no key
        if self._sysctl.expire_nodest_conn:
            self._expire_nodest_conn_flush(now)
        del self._services[key]
        if key.fwmark:
            del self._fwm_tab[(key.family, key.fwmark)]
        else:
            assert key.addr is not None
            del self._svc_tab[_svc_index_key(key.protocol, key.addr, key.port)]
            if key.port == FTPPORT:
                self._ftpsvc_counter -= 1
            elif key.port == 0:
                self._nullsvc_counter -= 1
        self._refresh_fast()
        if not self._services:
            self._est_next = None

    def flush(self, *, now: float) -> None:
        """`IPVS_CMD_FLUSH` (ipvsadm -C): delete every service."""
        for key in list(self._services):
            self.del_service(key, now=now)

    def add_dest(self, key: ServiceKey, d: Destination, *, now: float) -> None:
        """`IPVS_CMD_NEW_DEST`: insert at the list head, or resurrect it from the trash."""
        svc = self._service("add_dest", key)
        self._check_dest_args("add_dest", d)
        if svc.find_dest(d.addr, d.port) is not None:
            raise KernelError("add_dest", errno.EEXIST, f"destination {d.addr}:{d.port} exists")
        dest = self._trash_get_dest(svc, d)
        if dest is None:
            dest = Dest(d.addr, d.port, svc)
        self._update_dest(svc, dest, d, add=True)

    def edit_dest(self, key: ServiceKey, d: Destination, *, now: float) -> None:
        """`IPVS_CMD_SET_DEST`: weight (0 = quiesce, §5.1), method, thresholds."""
        svc = self._service("edit_dest", key)
        self._check_dest_args("edit_dest", d)
        dest = svc.find_dest(d.addr, d.port)
        if dest is None:
            raise KernelError("edit_dest", errno.ENOENT, f"no destination {d.addr}:{d.port}")
        self._update_dest(svc, dest, d, add=False)

    def del_dest(self, key: ServiceKey, addr: IPAddress, port: int, *, now: float) -> None:
        """`IPVS_CMD_DEL_DEST`: unlink, clear AVAILABLE, move to the trash (§5.2)."""
        svc = self._service("del_dest", key)
        dest = svc.find_dest(addr, port)
        if dest is None:
            raise KernelError("del_dest", errno.ENOENT, f"no destination {addr}:{port}")
        self._unlink_dest(svc, dest, now=now, update_sched=True)

    def _service(self, op: str, key: ServiceKey) -> Service:
        svc = self._services.get(key)
        if svc is None:
            raise KernelError(op, errno.ESRCH, f"no service {_fmt_key(key)}")
        return svc

    @staticmethod
    def _check_dest_args(op: str, d: Destination) -> None:
        if d.weight < 0:
            raise KernelError(op, errno.ERANGE, "weight must not be negative")
        if d.u_threshold < 0 or d.l_threshold < 0:
            raise KernelError(op, errno.ERANGE, "thresholds must not be negative")
        if d.u_threshold and d.l_threshold > d.u_threshold:
            raise KernelError(op, errno.ERANGE, "lower threshold above upper threshold")
        if not 0 <= d.port <= 65535:
            raise KernelError(op, errno.EINVAL, f"port {d.port} out of range")

    def _trash_get_dest(self, svc: Service, d: Destination) -> Dest | None:
        """`ip_vs_trash_get_dest`: the same addr:port of the same service comes back."""
        for i, dest in enumerate(self._trash):
            if dest.addr == d.addr and dest.port == d.port and dest.svc.key == svc.key:
                del self._trash[i]
                dest.idle_start = None
                if dest.svc is not svc:
                    dest.zero_stats()  # bound to a new service object: stats start anew
                    dest.svc = svc
                if not self._trash:
                    self._trash_next = None
                return dest
        return None

    def _update_dest(self, svc: Service, dest: Dest, d: Destination, *, add: bool) -> None:
        """`__ip_vs_update_dest` (§5.1)."""
        conn_flags = int(d.fwd) | IP_VS_CONN_F_INACTIVE
        if d.fwd != FwdMethod.MASQ:
            conn_flags |= IP_VS_CONN_F_NOOUTPUT
        dest.conn_flags = self._iflags(conn_flags)
        dest.fwd = d.fwd
        if add or d.weight > 0:
            dest.last_weight = d.weight
        dest.weight = d.weight
        dest.flags |= IP_VS_DEST_F_AVAILABLE
        if d.u_threshold == 0 or d.u_threshold > dest.u_threshold:
            dest._set_overload(False)
        dest.u_threshold = d.u_threshold
        dest.l_threshold = d.l_threshold
        if add:
            svc.dests.insert(0, dest)
            svc.dest_index[(dest.addr, dest.port)] = dest
        assert svc.scheduler is not None
        svc.scheduler.update_dests(svc.dests)
        self._update_least_keys(svc)

    def _unlink_dest(
        self, svc: Service, dest: Dest, *, now: float, update_sched: bool, flush: bool = True
    ) -> None:
        """`__ip_vs_unlink_dest` + `__ip_vs_del_dest` (§5.2)."""
        dest.flags &= ~IP_VS_DEST_F_AVAILABLE
        svc.dests.remove(dest)
        del svc.dest_index[(dest.addr, dest.port)]
        if update_sched and svc.scheduler is not None:
            svc.scheduler.update_dests(svc.dests)
            self._update_least_keys(svc)
        if not self._trash:
            self._trash_next = now + DEST_TRASH_PERIOD / 2
        self._trash.insert(0, dest)
        dest.idle_start = None
        if flush and self._sysctl.expire_nodest_conn:
            self._expire_nodest_conn_flush(now)

    def _expire_nodest_conn_flush(self, now: float) -> None:
        """`ip_vs_expire_nodest_conn_flush` (§5.2): one walk over the whole table."""
        for cp in list(self._wheel.entries()):
            if cp.tb is None:
                continue
            dest = cp.dest
            if dest is None or dest.flags & IP_VS_DEST_F_AVAILABLE:
                continue
            if type(cp) is Template and cp.n_control:
                continue
            ct = cp.control
            self._delete_conn(cp, now, ExpiryReason.NODEST)
            if ct is not None and ct.n_control == 0 and ct.tb is not None:
                self._delete_conn(ct, now, ExpiryReason.NODEST)

    def set_timeouts(self, timeouts: IpvsTimeouts) -> None:
        """`ipvsadm --set tcp tcpfin udp` (§3.2): 0 leaves a value unchanged.

        Raises:
            KernelError: EINVAL for a negative value or one above 31 days.
        """
        for value in (timeouts.tcp, timeouts.tcpfin, timeouts.udp):
            if not 0 <= value <= MAX_TIMEOUT:
                raise KernelError("set_timeouts", errno.EINVAL, f"timeout {value} out of range")
        if timeouts.tcp:
            self._tcp.timeouts[P.TcpState.ESTABLISHED] = float(timeouts.tcp)
        if timeouts.tcpfin:
            self._tcp.timeouts[P.TcpState.FIN_WAIT] = float(timeouts.tcpfin)
        if timeouts.udp:
            self._udp.timeouts[0] = float(timeouts.udp)
        self._tcp.first.clear()
        self._udp.first.clear()

    def timeouts(self) -> IpvsTimeouts:
        """`ipvsadm -l --timeout`."""
        return IpvsTimeouts(
            tcp=int(self._tcp.timeouts[P.TcpState.ESTABLISHED]),
            tcpfin=int(self._tcp.timeouts[P.TcpState.FIN_WAIT]),
            udp=int(self._udp.timeouts[0]),
        )

    def set_sysctl(self, sysctl: IpvsSysctl) -> None:
        """Replace the tunables (spec §7.2); the defense levels are re-evaluated at once.

        Raises:
            KernelError: EINVAL for values the kernel's handlers refuse.
        """
        for name in ("drop_entry", "drop_packet", "secure_tcp"):
            if not 0 <= getattr(sysctl, name) <= 3:
                raise KernelError("set_sysctl", errno.EINVAL, f"{name} must be 0..3")
        if not 0 <= sysctl.sync_retries <= 3:
            raise KernelError("set_sysctl", errno.EINVAL, "sync_retries must be 0..3")
        if (
            sysctl.sync_threshold < 0
            or sysctl.sync_period < 0
            or (sysctl.sync_period and sysctl.sync_threshold >= sysctl.sync_period)
        ):
            raise KernelError("set_sysctl", errno.EINVAL, "sync_threshold must be < sync_period")
        if sysctl.sync_version not in (0, 1):
            raise KernelError("set_sysctl", errno.EINVAL, "sync_version must be 0 or 1")
        if sysctl.sync_refresh_period < 0 or sysctl.am_droprate < 0:
            raise KernelError("set_sysctl", errno.EINVAL, "negative value")
        old = self._sysctl
        self._sysctl = sysctl
        if (
            sysctl.lblc_expiration != old.lblc_expiration
            or sysctl.lblcr_expiration != old.lblcr_expiration
        ):
            # The kernel reads these at every use: existing lblc/lblcr caches follow at once.
            for svc in self._services.values():
                if svc.scheduler is not None:
                    svc.scheduler.set_expiration(
                        lblc_expiration=float(sysctl.lblc_expiration),
                        lblcr_expiration=float(sysctl.lblcr_expiration),
                    )
        self._conntrack_flag = IP_VS_CONN_F_NFCT if sysctl.conntrack else 0
        self._sloppy_tcp = bool(sysctl.sloppy_tcp)
        self._director_off = bool(sysctl.backup_only) and self._sync_backup
        self._update_defense_level()
        if self._defense_configured():
            if self._defense_next is None:
                self._defense_next = 0.0  # first run at the next handle_timer
        else:
            self._defense_next = None
        self._refresh_fast()

    def sysctl(self) -> IpvsSysctl:
        """The tunables as they read now (automatic defense modes show 1 or 2)."""
        return self._sysctl

    # ------------------------------------------------------------------ snapshots

    def pop_events(self) -> list[IpvsEvent]:
        """Events since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    def counters(self) -> dict[str, int]:
        """Verdict reasons and defense actions counted since start (stable labels)."""
        return dict(self._counters)

    def defense_state(self) -> dict[str, bool | int]:
        """Which defense strategies are engaged now (§7.1)."""
        return {
            "drop_entry": self._dropentry,
            "drop_packet_rate": self._drop_rate,
            "secure_tcp": self._secure_tcp_on,
        }

    def services(self) -> tuple[ServiceStatus, ...]:
        """Every service with its destinations (newest first), counters, stats and rates."""
        out: list[ServiceStatus] = []
        for svc in self._services.values():
            dests = tuple(
                DestStatus(
                    dest=d.as_destination(),
                    activeconns=d.activeconns,
                    inactconns=d.inactconns,
                    persistconns=d.persistconns,
                    overloaded=d.overloaded,
                    stats=d.stats(),
                    rates=d.rates(),
                )
                for d in svc.dests
            )
            out.append(
                ServiceStatus(
                    service=svc.as_virtual_service(),
                    dests=dests,
                    stats=svc.stats(),
                    rates=svc.rates(),
                )
            )
        return tuple(out)

    def total_stats(self) -> tuple[Stats, Rates]:
        """The director-wide counters (`/proc/net/ip_vs_stats`)."""
        return self._total.stats(), self._total.rates()

    def connections(self, *, now: float) -> Iterator[ConnStatus]:
        """Every entry of the table, templates included (one-packet entries never)."""
        for cp in self._wheel.entries():
            yield self._conn_status(cp, now)

    def conn_count(self) -> int:
        """Connection entries in the table (templates excluded)."""
        return len(self._tcp.conns) + len(self._udp.conns) + len(self._sctp.conns)

    def template_count(self) -> int:
        """Templates still findable (invalidated ones excluded)."""
        return len(self._templates)

    def _conn_status(self, cp: Conn, now: float) -> ConnStatus:
        caddr, cport, vaddr, vport = cp.caddr, cp.cport, cp.vaddr, cp.vport
        if type(cp) is Template:
            protocol = IpProto(cp.protocol_)
            state = P.state_name(cp.protocol_, cp.state, template=True)
            fwmark = cp.fwmark
        else:
            protocol = cp.pp.protocol
            state = P.state_name(protocol, cp.state)
            fwmark = cp.dest.svc.fwmark if cp.dest is not None else 0
        return ConnStatus(
            protocol=protocol,
            caddr=caddr,
            cport=cport,
            vaddr=vaddr,
            vport=vport,
            daddr=self._daddr_of(cp),
            dport=cp.dport,
            state=state,
            expires_in=max(0.0, cp.expires - now),
            flags=cp.flags,
            fwmark=fwmark,
        )

    # ------------------------------------------------------------------ proxy helpers

    def open_connection(
        self,
        protocol: int,
        caddr: IPAddress,
        cport: int,
        vaddr: IPAddress,
        vport: int,
        *,
        now: float,
        length: int = 0,
        fwmark: int = 0,
    ) -> Verdict:
        """A new client flow as a proxy sees it (spec §9.2): the TCP SYN, SCTP INIT or first
        UDP datagram, as one input packet."""
        pkt = PacketInfo(
            AF_INET if caddr.version == 4 else AF_INET6,
            protocol,
            caddr,
            cport,
            vaddr,
            vport,
            DIR_IN,
            P.TH_SYN if protocol == IpProto.TCP else 0,
            P.SCTP_CHUNK_INIT if protocol == IpProto.SCTP else P.SCTP_CHUNK_DATA,
            length,
            fwmark,
        )
        return self.receive_packet(pkt, now=now)

    def record_segment(
        self,
        cp: Conn,
        *,
        direction: int,
        now: float,
        tcp_flags: int = 0,
        length: int = 0,
        sctp_chunk: int = P.SCTP_CHUNK_DATA,
    ) -> Verdict:
        """One more packet of the entry `cp` (a verdict's `conn`), in `direction`.

        Returns PASS with reason "conn_gone" when `cp` has left the table (a later entry
        of the same tuple is not fed by mistake).
        """
        pp = cp.pp
        if pp is None or cp.tb is None or pp.conns.get(cp.key) is not cp:
            return V_CONN_GONE
        pkt = PacketInfo(
            AF_INET6 if len(cp.key) == 5 else AF_INET,
            pp.protocol,
            cp.caddr,
            cp.cport,
            cp.vaddr,
            cp.vport,
            direction,
            tcp_flags,
            sctp_chunk,
            length,
            0,
        )
        return self.receive_packet(pkt, now=now)

    def find_conn(
        self, protocol: int, caddr: IPAddress, cport: int, vaddr: IPAddress, vport: int
    ) -> Conn | None:
        """The entry of a client-side tuple, if any (read-only use)."""
        pp = self._protos.get(protocol)
        return None if pp is None else pp.conns.get(_conn_key(caddr, cport, vaddr, vport))

    def conn_status(self, cp: Conn, *, now: float) -> ConnStatus:
        """A snapshot of one entry (for example a verdict's `conn`)."""
        return self._conn_status(cp, now)


_TCP_SYNC_STATES = frozenset(
    {
        P.TcpState.ESTABLISHED,
        P.TcpState.FIN_WAIT,
        P.TcpState.CLOSE,
        P.TcpState.CLOSE_WAIT,
        P.TcpState.TIME_WAIT,
    }
)
_SCTP_SYNC_STATES = frozenset(
    {
        P.SctpState.ESTABLISHED,
        P.SctpState.SHUTDOWN_SENT,
        P.SctpState.SHUTDOWN_RECEIVED,
        P.SctpState.SHUTDOWN_ACK_SENT,
        P.SctpState.CLOSED,
    }
)


_expires_of = operator.attrgetter("expires")
_new_verdict = tuple.__new__  # builds a Verdict without its Python-level __new__


def _conn_key(caddr: IPAddress, cport: int, vaddr: IPAddress, vport: int) -> ConnKey:
    if caddr.version == 4:
        return (addr_int(caddr), _PORTS[cport], addr_int(vaddr), _PORTS[vport])
    return (addr_int(caddr), _PORTS[cport], addr_int(vaddr), _PORTS[vport], 6)


def _template_key(protocol: int, caddr: IPAddress, vaddr: IPAddress, vport: int) -> ConnKey:
    key = (protocol, addr_int(caddr), addr_int(vaddr), _PORTS[vport])
    return key if caddr.version == 4 else (*key, 6)


def _svc_index_key(protocol: int, vaddr: IPAddress, vport: int) -> tuple[int, ...]:
    key = (int(protocol), addr_int(vaddr), vport)
    return key if vaddr.version == 4 else (*key, 6)


def _next_period(deadline: float, period: float, now: float) -> float:
    """The next tick of a periodic timer after `now`, keeping its phase."""
    if now < deadline + period:
        return deadline + period
    return deadline + period * (math.floor((now - deadline) / period) + 1)


def _fmt_key(key: ServiceKey) -> str:
    if key.fwmark:
        return f"FWM {key.fwmark}"
    return f"{key.protocol.name} {key.addr}:{key.port}"
