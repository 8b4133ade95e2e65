"""ipvsadm-identical text views of IPVS snapshots (spec/ipvs.md §8; ipvsadm 1.31).

Owns: the text `ipvsadm` 1.31 prints for `-Ln` (plain, `--stats`, `--rate`, `--exact`,
`--thresholds`, `--persistent-conn`, `--nosort`), `-Ln -t|-u|-f <service>`, `-Lnc` (with
`--persistent-conn`), `-l --timeout`, `-L --daemon` and `-Sn` / `--save -n`, byte for byte,
so that scripts written against ipvsadm keep working on hactl's output.

Invariants:
* Pure functions of snapshots (`ServiceStatus`, `ConnStatus`, `IpvsTimeouts`,
  `SyncDaemonStatus`); every line ends with "\\n", and trailing spaces of left-justified last
  columns are kept, as ipvsadm prints them.
* Sorting reproduces libipvs' comparators (differences of host-order values taken as signed
  32-bit ints, so addresses 2^31 or more apart compare "wrapped": 192.168.1.1 sorts before
  10.0.0.1) and glibc's qsort, a stable top-down merge sort, whose order is what those
  non-transitive comparisons yield.
* Only numeric output (`-n`) is produced: the name-resolving variants ask the resolver and
  /etc/services, which a pure view cannot do, so `numeric=False` raises ValueError.

Not rendered: `--tun-info` (the model carries no tunnel type/port/checksum); in `--save`,
tunnel destinations are written with the kernel's default tunnel type (`--tun-type ipip`).

Imports only the shared IPVS model.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Literal, TypeVar

from hactl.ipvs.model import (
    AF_INET6,
    ConnStatus,
    DestStatus,
    FwdMethod,
    IPAddress,
    IpProto,
    IpvsTimeouts,
    ServiceStatus,
    VirtualService,
)

__all__ = [
    "IP_VS_VERSION",
    "ListFormat",
    "SyncDaemonStatus",
    "list_all",
    "list_conn",
    "list_daemon",
    "list_service",
    "list_timeout",
    "save",
    "sort_dests",
    "sort_services",
]

IP_VS_VERSION = "1.2.1"  # IP_VS_VERSION_CODE 0x010201 (spec §0.1)

_SVC_F_SCHED1 = 0x0008
_SVC_F_SCHED2 = 0x0010
_SVC_F_SCHED3 = 0x0020
_CONN_F_ONE_PACKET = 0x2000

_NUMERIC_ONLY = (
    "name resolution (ipvsadm without -n) is not supported: the views print numeric "
    "addresses and ports only; pass numeric=True"
)


class ListFormat(enum.Enum):
    """Which `ipvsadm -L` column set to print (mutually exclusive, as in print_title)."""

    DEFAULT = "default"
    STATS = "stats"  # --stats
    RATE = "rate"  # --rate
    THRESHOLDS = "thresholds"  # --thresholds
    PERSISTENT_CONN = "persistent-conn"  # --persistent-conn


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncDaemonStatus:
    """One running sync daemon as `ipvsadm -L --daemon` reports it (spec §8.6).

    Zero / None fields are the ones the kernel did not report; ipvsadm leaves them out.
    """

    state: Literal["master", "backup"]
    mcast_ifn: str
    syncid: int
    maxlen: int = 0
    group: IPAddress | None = None
    port: int = 0
    ttl: int = 0


# ---------------------------------------------------------------------------------------------
# Address rendering


def _ntop6(addr: IPv6Address) -> str:
    """glibc inet_ntop(AF_INET6): RFC 5952-style text with glibc's embedded-IPv4 forms.

    The longest run (first on ties) of two or more zero words becomes "::"; an address whose
    first six words are zero, or five zero words then ffff, ends in dotted IPv4 (::a.b.c.d,
    ::ffff:a.b.c.d). Python's own text differs for the latter cases.
    """
    packed = addr.packed
    words = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, 16, 2)]
    best_base, best_len = -1, 0
    cur_base, cur_len = -1, 0
    for i, w in enumerate(words):
        if w == 0:
            if cur_base == -1:
                cur_base, cur_len = i, 1
            else:
                cur_len += 1
        elif cur_base != -1:
            if best_base == -1 or cur_len > best_len:
                best_base, best_len = cur_base, cur_len
            cur_base = -1
    if cur_base != -1 and (best_base == -1 or cur_len > best_len):
        best_base, best_len = cur_base, cur_len
    if best_base != -1 and best_len < 2:
        best_base = -1
    out: list[str] = []
    i = 0
    while i < 8:
        if best_base != -1 and best_base <= i < best_base + best_len:
            if i == best_base:
                out.append(":")
            i += 1
            continue
        if i != 0:
            out.append(":")
        if i == 6 and best_base == 0 and (best_len == 6 or (best_len == 5 and words[5] == 0xFFFF)):
            out.append(str(IPv4Address(packed[12:])))
            break
        out.append(f"{words[i]:x}")
        i += 1
    if best_base != -1 and best_base + best_len == 8:
        out.append(":")
    return "".join(out)


def _addrport(addr: IPAddress, port: int) -> str:
    """addrport_to_anyname with -n: `a.b.c.d:port` or `[v6]:port`."""
    if addr.version == 4:
        return f"{addr}:{port}"
    return f"[{_ntop6(addr)}]:{port}"


def _proto_name(protocol: int) -> str:
    """ipvsadm's protocol_name(): the label of a non-fwmark service."""
    return {6: "TCP", 17: "UDP", 132: "SCTP"}.get(protocol, "?")


def _proto_option(protocol: int) -> str:
    """option_from_protocol() for --save (`--xxx-service` for anything else)."""
    return {6: "-t", 17: "-u", 132: "--sctp-service"}.get(protocol, "--xxx-service")


def _fwd_name(fwd: FwdMethod) -> str:
    # fwd_name() has no case for BYPASS and hands NULL to printf, which glibc prints as
    # "(null)"; kept for exactness although such destinations cannot be configured.
    return "(null)" if fwd == FwdMethod.BYPASS else fwd.ipvsadm_name


def _fwd_switch(fwd: FwdMethod) -> str:
    return {
        FwdMethod.MASQ: "-m",
        FwdMethod.TUNNEL: "-i",
        FwdMethod.LOCALNODE: "-g",
        FwdMethod.DROUTE: "-g",
    }.get(fwd, "(null)")


def _svc_name(svc: VirtualService, *, rule: bool) -> str:
    key = svc.key
    if key.is_fwmark:
        if rule:
            return f"-f {key.fwmark} -6" if key.family == AF_INET6 else f"-f {key.fwmark}"
        return f"FWM  {key.fwmark} IPv6" if key.family == AF_INET6 else f"FWM  {key.fwmark}"
    if key.addr is None:
        raise ValueError(f"service {key} has neither an address nor a fwmark")
    vname = _addrport(key.addr, key.port)
    if rule:
        return f"{_proto_option(key.protocol)} {vname}"
    name = f"{_proto_name(key.protocol):<4} {vname}"
    # svc_name[33] = '\0' for IPv4 services (the label column of --stats is 33 wide). A
    # numeric IPv4 label has at most 26 characters; the cut matters for resolved names only.
    return name if key.family == AF_INET6 else name[:33]


def _dest_name(ds: DestStatus) -> str:
    name = _addrport(ds.dest.addr, ds.dest.port)
    # dname[28] = '\0' for IPv4 destinations (at most 21 characters when numeric).
    return name if ds.dest.addr.version == 6 else name[:28]


def _sched_flags(svc: VirtualService) -> str:
    """print_sched_flags(): comma-separated flag names as the scheduler knows them."""
    f = svc.sched_flags
    if svc.scheduler == "sh":
        names = [(_SVC_F_SCHED1, "sh-fallback"), (_SVC_F_SCHED2, "sh-port")]
    elif svc.scheduler == "mh":
        names = [(_SVC_F_SCHED1, "mh-fallback"), (_SVC_F_SCHED2, "mh-port")]
    else:
        names = [(_SVC_F_SCHED1, "flag-1"), (_SVC_F_SCHED2, "flag-2"), (_SVC_F_SCHED3, "flag-3")]
    return ",".join(name for bit, name in names if f & bit)


def _has_sched_flags(svc: VirtualService) -> bool:
    return bool(svc.sched_flags & (_SVC_F_SCHED1 | _SVC_F_SCHED2 | _SVC_F_SCHED3))


def _ipv4_mask(prefix: int) -> str:
    return str(IPv4Address((0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF))


def _persistence(svc: VirtualService, *, rule: bool) -> str:
    """` persistent <t>[ mask <m>]` / ` -p <t>[ -M <m>]`, empty when not persistent."""
    if svc.persistence_timeout is None:
        return ""
    out = (
        f" -p {int(svc.persistence_timeout)}"
        if rule
        else (f" persistent {int(svc.persistence_timeout)}")
    )
    word = " -M " if rule else " mask "
    if svc.key.family == AF_INET6:
        if svc.netmask != 128:
            out += f"{word}{svc.netmask}"
    elif svc.netmask != 32:
        out += f"{word}{_ipv4_mask(svc.netmask)}"
    return out


# ---------------------------------------------------------------------------------------------
# Numbers


def _largenum(value: int, *, exact: bool) -> str:
    """print_largenum(): 9 columns, K/M/G/T scaled by truncating division unless --exact."""
    if exact:
        digits = str(value)
        return digits.rjust(9 if len(digits) <= 8 else len(digits) + 1)
    if value < 100_000_000:
        return f"{value:9d}"
    if value < 1_000_000_000:
        return f"{value // 1000:8d}K"
    if value < 100_000_000_000:
        return f"{value // 1_000_000:8d}M"
    if value < 100_000_000_000_000:
        return f"{value // 1_000_000_000:8d}G"
    return f"{value // 1_000_000_000_000:8d}T"


# ---------------------------------------------------------------------------------------------
# Sorting (libipvs ipvs_cmp_services / ipvs_cmp_dests + glibc qsort)

T = TypeVar("T")


def _s32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - 0x100000000 if value & 0x80000000 else value


def _addr_cmp(a: IPAddress | None, b: IPAddress | None, *, v6: bool) -> int:
    x = int(a) if a is not None else 0
    y = int(b) if b is not None else 0
    if not v6:
        return _s32((x & 0xFFFFFFFF) - (y & 0xFFFFFFFF))
    for shift in (96, 64, 32, 0):
        r = _s32(((x >> shift) & 0xFFFFFFFF) - ((y >> shift) & 0xFFFFFFFF))
        if r:
            return r
    return 0


def _cmp_services(s1: ServiceStatus, s2: ServiceStatus) -> int:
    k1, k2 = s1.service.key, s2.service.key
    r = _s32(k1.fwmark - k2.fwmark)
    if r:
        return r
    r = k1.family - k2.family
    if r:
        return r
    r = int(k1.protocol) - int(k2.protocol)
    if r:
        return r
    r = _addr_cmp(k1.addr, k2.addr, v6=k1.family == AF_INET6)
    if r:
        return r
    return k1.port - k2.port


def _cmp_dests(d1: DestStatus, d2: DestStatus) -> int:
    r = _addr_cmp(d1.dest.addr, d2.dest.addr, v6=d1.dest.addr.version == 6)
    if r:
        return r
    return d1.dest.port - d2.dest.port


def _qsort(items: Sequence[T], cmp: Callable[[T, T], int]) -> list[T]:
    """glibc qsort: top-down merge sort, first half n // 2, merge takes left when cmp <= 0.

    (glibc's msort; the in-place introsort of glibc 2.37-2.38 was reverted in 2.39.) For a
    consistent comparator any correct sort gives the same result; this one also reproduces
    ipvsadm's order when the wrapped address comparison is not transitive.
    """
    n = len(items)
    if n <= 1:
        return list(items)
    n1 = n // 2
    left = _qsort(items[:n1], cmp)
    right = _qsort(items[n1:], cmp)
    out: list[T] = []
    i = j = 0
    while i < len(left) and j < len(right):
        if cmp(left[i], right[j]) <= 0:
            out.append(left[i])
            i += 1
        else:
            out.append(right[j])
            j += 1
    out.extend(left[i:])
    out.extend(right[j:])
    return out


def sort_services(services: Sequence[ServiceStatus]) -> list[ServiceStatus]:
    """Services in ipvsadm's listing order (spec §8.1)."""
    return _qsort(services, _cmp_services)


def sort_dests(dests: Sequence[DestStatus]) -> list[DestStatus]:
    """Destinations in ipvsadm's listing order (spec §8.1)."""
    return _qsort(dests, _cmp_dests)


# ---------------------------------------------------------------------------------------------
# -L


def _title(fmt: ListFormat) -> str:
    """print_title()."""
    rest = "  -> RemoteAddress:Port\n"
    if fmt is ListFormat.STATS:
        cols = ("Conns", "InPkts", "OutPkts", "InBytes", "OutBytes")
        return f"{'Prot LocalAddress:Port':<33}" + "".join(f" {c:>8}" for c in cols) + "\n" + rest
    if fmt is ListFormat.RATE:
        cols = ("CPS", "InPPS", "OutPPS", "InBPS", "OutBPS")
        return f"{'Prot LocalAddress:Port':<33}" + "".join(f" {c:>8}" for c in cols) + "\n" + rest
    if fmt is ListFormat.THRESHOLDS:
        return (
            f"{'Prot LocalAddress:Port':<33} {'Uthreshold':<10} {'Lthreshold':<10} "
            f"{'ActiveConn':<10} {'InActConn':<10}\n" + rest
        )
    if fmt is ListFormat.PERSISTENT_CONN:
        return (
            f"{'Prot LocalAddress:Port':<33} {'Weight':<9} {'PersistConn':<11} "
            f"{'ActiveConn':<10} {'InActConn':<10}\n" + rest
        )
    return (
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
    )


def _service_entry(st: ServiceStatus, fmt: ListFormat, *, exact: bool, nosort: bool) -> str:
    """print_service_entry() for the listing formats."""
    svc = st.service
    name = _svc_name(svc, rule=False)
    if fmt is ListFormat.STATS:
        s = st.stats
        nums = (s.conns, s.inpkts, s.outpkts, s.inbytes, s.outbytes)
        line = f"{name:<33}" + "".join(_largenum(v, exact=exact) for v in nums)
    elif fmt is ListFormat.RATE:
        r = st.rates
        nums = (r.cps, r.inpps, r.outpps, r.inbps, r.outbps)
        line = f"{name:<33}" + "".join(_largenum(v, exact=exact) for v in nums)
    else:
        line = f"{name} {svc.scheduler}"
        if _has_sched_flags(svc):
            line += f" ({_sched_flags(svc)})"
        line += _persistence(svc, rule=False)
        if svc.persistence_timeout is not None and svc.pe_name:
            line += f" pe {svc.pe_name}"
        if svc.one_packet:
            line += " ops"
    lines = [line + "\n"]
    for ds in st.dests if nosort else sort_dests(st.dests):
        lines.append(_dest_entry(ds, fmt, exact=exact))
    return "".join(lines)


def _dest_entry(ds: DestStatus, fmt: ListFormat, *, exact: bool) -> str:
    dname = _dest_name(ds)
    d = ds.dest
    if fmt is ListFormat.STATS:
        s = ds.stats
        nums = (s.conns, s.inpkts, s.outpkts, s.inbytes, s.outbytes)
        return f"  -> {dname:<28}" + "".join(_largenum(v, exact=exact) for v in nums) + "\n"
    if fmt is ListFormat.RATE:
        r = ds.rates
        return (
            f"  -> {dname:<28} {r.cps:8d} {r.inpps:8d} {r.outpps:8d}"
            + _largenum(r.inbps, exact=exact)
            + _largenum(r.outbps, exact=exact)
            + "\n"
        )
    if fmt is ListFormat.THRESHOLDS:
        return (
            f"  -> {dname:<28} {d.u_threshold:<10} {d.l_threshold:<10} "
            f"{ds.activeconns:<10} {ds.inactconns:<10}\n"
        )
    if fmt is ListFormat.PERSISTENT_CONN:
        return (
            f"  -> {dname:<28} {d.weight:<9} {ds.persistconns:<11} "
            f"{ds.activeconns:<10} {ds.inactconns:<10}\n"
        )
    return (
        f"  -> {dname:<28} {_fwd_name(d.fwd):<7} {d.weight:<6} "
        f"{ds.activeconns:<10} {ds.inactconns:<10}\n"
    )


def list_all(
    services: Sequence[ServiceStatus],
    *,
    fmt: ListFormat = ListFormat.DEFAULT,
    exact: bool = False,
    nosort: bool = False,
    numeric: bool = True,
    conn_table_size: int = 4096,
) -> str:
    """`ipvsadm -Ln [--stats|--rate|--thresholds|--persistent-conn] [--exact] [--nosort]`.

    Args:
        services: the table, in backend order (kept with `nosort`).
        fmt: the column set.
        exact: `--exact`: full numbers in --stats / --rate instead of K/M/G/T.
        nosort: `--nosort`: services and destinations in the given order.
        numeric: must be True (`-n`).
        conn_table_size: the connection hash table size shown in the version line.

    Raises:
        ValueError: `numeric=False` (name resolution is not supported).
    """
    if not numeric:
        raise ValueError(_NUMERIC_ONLY)
    ordered = services if nosort else sort_services(services)
    out = [f"IP Virtual Server version {IP_VS_VERSION} (size={conn_table_size})\n", _title(fmt)]
    out.extend(_service_entry(st, fmt, exact=exact, nosort=nosort) for st in ordered)
    return "".join(out)


def list_service(
    service: ServiceStatus,
    *,
    fmt: ListFormat = ListFormat.DEFAULT,
    exact: bool = False,
    nosort: bool = False,
    numeric: bool = True,
) -> str:
    """`ipvsadm -Ln -t|-u|-f <service> ...`: the titles and one service, no version line.

    Raises:
        ValueError: `numeric=False` (name resolution is not supported).
    """
    if not numeric:
        raise ValueError(_NUMERIC_ONLY)
    return _title(fmt) + _service_entry(service, fmt, exact=exact, nosort=nosort)


# ---------------------------------------------------------------------------------------------
# -S


def save(services: Sequence[ServiceStatus], *, nosort: bool = False, numeric: bool = True) -> str:
    """`ipvsadm -Sn`: the table as ipvsadm commands (spec §8.7), no header.

    Raises:
        ValueError: `numeric=False` (name resolution is not supported).
    """
    if not numeric:
        raise ValueError(_NUMERIC_ONLY)
    out: list[str] = []
    for st in services if nosort else sort_services(services):
        svc = st.service
        name = _svc_name(svc, rule=True)
        line = f"-A {name} -s {svc.scheduler}" + _persistence(svc, rule=True)
        if svc.pe_name:
            line += f" --pe {svc.pe_name}"
        if svc.one_packet:
            line += " -o"
        if _has_sched_flags(svc):
            line += f" -b {_sched_flags(svc)}"
        out.append(line + "\n")
        for ds in st.dests if nosort else sort_dests(st.dests):
            d = ds.dest
            rule = f"-a {name} -r {_addrport(d.addr, d.port)} {_fwd_switch(d.fwd)} -w {d.weight}"
            if d.fwd == FwdMethod.TUNNEL:
                # print_tunnel_rule(): the kernel reports tun_type 0 (IPIP) by default.
                rule += " --tun-type ipip"
            out.append(rule + "\n")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# -Lc, --timeout, --daemon


def _conn_proto(protocol: int) -> str:
    # ip_vs_proto_name() as /proc/net/ip_vs_conn prints it; ipvsadm copies the word.
    known = {0: "IP", 6: "TCP", 17: "UDP", 132: "SCTP", 1: "ICMP", 58: "ICMPv6"}
    return known.get(protocol, f"IP_{protocol}")


def _conn_vaddr(c: ConnStatus) -> IPAddress:
    if c.protocol == IpProto.IP and c.fwmark:
        # A fwmark template carries the mark in the first word of its virtual address.
        if c.caddr.version == 4:
            return IPv4Address(c.fwmark & 0xFFFFFFFF)
        return IPv6Address((c.fwmark & 0xFFFFFFFF) << 96)
    return c.vaddr


def _pe_data_token(data: bytes) -> str:
    # ipvsadm reads the /proc line with sscanf("%s"): the first whitespace-free token.
    text = data.decode("latin-1")
    parts = text.split()
    return parts[0] if parts else ""


def list_conn(
    conns: Sequence[ConnStatus], *, persistent_conn: bool = False, numeric: bool = True
) -> str:
    """`ipvsadm -Lnc [--persistent-conn]`: connections and templates (spec §8.5).

    Rows are printed in the given order (the kernel's is hash-bucket order). Entries flagged
    one-packet (OPS) are skipped: the kernel never hashes them, so they are never listed.
    `expire` is the remaining time truncated to whole seconds, as MM:SS.

    Raises:
        ValueError: `numeric=False` (name resolution is not supported).
    """
    if not numeric:
        raise ValueError(_NUMERIC_ONLY)
    out = ["IPVS connection entries\n"]
    if persistent_conn:
        out.append(
            f"pro expire {'state':<11} {'source':<18} {'virtual':<18} {'destination':<18} "
            f"{'pe name':<16} pe_data\n"
        )
    else:
        out.append(f"pro expire {'state':<11} {'source':<18} {'virtual':<18} destination\n")
    for c in conns:
        if c.flags & _CONN_F_ONE_PACKET:
            continue
        seconds = max(0, int(c.expires_in))
        expire = f"{seconds // 60:02d}:{seconds % 60:02d}"
        proto = _conn_proto(c.protocol)
        cname = _addrport(c.caddr, c.cport)
        vname = _addrport(_conn_vaddr(c), c.vport)
        dname = _addrport(c.daddr, c.dport)
        pe_data = _pe_data_token(c.pe_data)
        if persistent_conn and c.pe_name and pe_data:
            out.append(
                f"{proto:<3} {expire:<6} {c.state:<11} {cname:<18} {vname:<18} {dname:<16} "
                f"{c.pe_name:<18} {pe_data}\n"
            )
        else:
            out.append(f"{proto:<3} {expire:<6} {c.state:<11} {cname:<18} {vname:<18} {dname}\n")
    return "".join(out)


def list_timeout(timeouts: IpvsTimeouts) -> str:
    """`ipvsadm -l --timeout` (spec §8.6)."""
    return f"Timeout (tcp tcpfin udp): {timeouts.tcp} {timeouts.tcpfin} {timeouts.udp}\n"


def list_daemon(daemons: Sequence[SyncDaemonStatus]) -> str:
    """`ipvsadm -L --daemon`: one line per running daemon, master first; "" if none."""
    out: list[str] = []
    for d in sorted(daemons, key=lambda d: d.state != "master"):
        line = f"{d.state} sync daemon (mcast={d.mcast_ifn}, syncid={d.syncid}"
        if d.maxlen:
            line += f", maxlen={d.maxlen}"
        if d.group is not None:
            text = str(d.group) if d.group.version == 4 else _ntop6(d.group)
            line += f", group={text}"
        if d.port:
            line += f", port={d.port}"
        if d.ttl:
            line += f", ttl={d.ttl}"
        out.append(line + ")\n")
    return "".join(out)
