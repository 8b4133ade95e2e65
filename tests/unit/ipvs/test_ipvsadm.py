"""Golden tests of the ipvsadm 1.31 views (spec/ipvs.md §8).

Expected texts are built from the spec's examples and from ipvsadm.c's printf formats; in
the multi-line goldens "·" stands for a space so that trailing spaces stay visible.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

import pytest

from hactl.ipvs.ipvsadm import (
    ListFormat,
    SyncDaemonStatus,
    list_all,
    list_conn,
    list_daemon,
    list_service,
    list_timeout,
    save,
    sort_services,
)
from hactl.ipvs.model import (
    AF_INET6,
    ConnStatus,
    Destination,
    DestStatus,
    FwdMethod,
    IpProto,
    IpvsTimeouts,
    Rates,
    ServiceKey,
    ServiceStatus,
    Stats,
    VirtualService,
)


def text(golden: str) -> str:
    """A golden written with "·" for spaces, one line per source line, each ending in \\n."""
    lines = golden.strip("\n").split("\n")
    return "".join(line.replace("·", " ") + "\n" for line in lines)


def svc(
    proto: IpProto,
    addr: str,
    port: int,
    scheduler: str = "wlc",
    *dests: DestStatus,
    stats: Stats | None = None,
    rates: Rates | None = None,
    **kw: Any,
) -> ServiceStatus:
    vs = VirtualService(
        key=ServiceKey.for_address(proto, ip_address(addr), port), scheduler=scheduler, **kw
    )
    return ServiceStatus(service=vs, dests=dests, stats=stats or Stats(), rates=rates or Rates())


def fwm(
    mark: int, scheduler: str, *dests: DestStatus, v6: bool = False, **kw: Any
) -> ServiceStatus:
    key = ServiceKey.for_fwmark(mark, family=AF_INET6 if v6 else 2)
    vs = VirtualService(key=key, scheduler=scheduler, **kw)
    return ServiceStatus(service=vs, dests=dests)


def rs(
    addr: str,
    port: int,
    weight: int = 1,
    fwd: FwdMethod = FwdMethod.MASQ,
    active: int = 0,
    inactive: int = 0,
    **kw: Any,
) -> DestStatus:
    u = int(kw.pop("u", 0))
    low = int(kw.pop("l", 0))
    d = Destination(
        addr=ip_address(addr), port=port, weight=weight, fwd=fwd, u_threshold=u, l_threshold=low
    )
    return DestStatus(dest=d, activeconns=active, inactconns=inactive, **kw)


SPEC_TABLE = [
    # backend order deliberately not the listing order
    fwm(1, "sh", sched_flags=0x8 | 0x10),
    svc(IpProto.UDP, "10.0.0.1", 53, "rr", persistence_timeout=360.0, netmask=24),
    svc(
        IpProto.TCP,
        "10.0.0.1",
        80,
        "wlc",
        rs("192.168.1.2", 8080, 0, FwdMethod.MASQ, 0, 1),
        rs("192.168.1.1", 80, 1, FwdMethod.DROUTE, 3, 12),
    ),
]


# ---------------------------------------------------------------------------------------------
# -Ln (§8.2)


def test_list_spec_example() -> None:
    assert list_all(SPEC_TABLE) == text("""
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
··->·RemoteAddress:Port···········Forward·Weight·ActiveConn·InActConn
TCP  10.0.0.1:80 wlc
··->·192.168.1.1:80···············Route···1······3··········12········
··->·192.168.1.2:8080·············Masq····0······0··········1·········
UDP  10.0.0.1:53 rr persistent 360 mask 255.255.255.0
FWM  1 sh (sh-fallback,sh-port)
""")


def test_list_nosort_keeps_backend_order_and_size_is_shown() -> None:
    out = list_all(SPEC_TABLE, nosort=True, conn_table_size=1048576)
    lines = out.splitlines()
    assert lines[0] == "IP Virtual Server version 1.2.1 (size=1048576)"
    assert lines[3:] == [
        "FWM  1 sh (sh-fallback,sh-port)",
        "UDP  10.0.0.1:53 rr persistent 360 mask 255.255.255.0",
        "TCP  10.0.0.1:80 wlc",
        "  -> 192.168.1.2:8080             Masq    0      0          1         ",
        "  -> 192.168.1.1:80               Route   1      3          12        ",
    ]


def test_list_empty_table() -> None:
    assert list_all([]) == (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
    )


def test_service_flags_per_scheduler_persistence_pe_and_ops() -> None:
    table = [
        svc(IpProto.TCP, "10.0.0.1", 1, "mh", sched_flags=0x8),
        svc(IpProto.TCP, "10.0.0.1", 2, "mh", sched_flags=0x10),
        svc(IpProto.TCP, "10.0.0.1", 3, "wrr", sched_flags=0x8 | 0x10 | 0x20),
        svc(IpProto.TCP, "10.0.0.1", 4, "sh", sched_flags=0x20),  # sh has no name for flag-3
        svc(IpProto.UDP, "10.0.0.1", 5060, "rr", persistence_timeout=300.0, pe_name="sip"),
        svc(IpProto.UDP, "10.0.0.1", 5061, "rr", pe_name="sip"),  # pe shown only if persistent
        svc(IpProto.UDP, "10.0.0.1", 53, "rr", one_packet=True, sched_flags=0x8),
        svc(IpProto.SCTP, "10.0.0.1", 9, "fo", persistence_timeout=60.0, netmask=32),
        svc(IpProto.TCP, "10.0.0.1", 0, "lc", persistence_timeout=1.0, netmask=0),
    ]
    assert list_all(table).splitlines()[3:] == [
        "TCP  10.0.0.1:0 lc persistent 1 mask 0.0.0.0",
        "TCP  10.0.0.1:1 mh (mh-fallback)",
        "TCP  10.0.0.1:2 mh (mh-port)",
        "TCP  10.0.0.1:3 wrr (flag-1,flag-2,flag-3)",
        "TCP  10.0.0.1:4 sh ()",
        "UDP  10.0.0.1:53 rr (flag-1) ops",
        "UDP  10.0.0.1:5060 rr persistent 300 pe sip",
        "UDP  10.0.0.1:5061 rr",
        "SCTP 10.0.0.1:9 fo persistent 60",
    ]


def test_ipv6_and_fwmark_services_and_long_ipv6_labels() -> None:
    v6 = svc(
        IpProto.TCP,
        "2001:db8::1",
        443,
        "wrr",
        rs("2001:db8:1234:5678:9abc:def0:1234:5678", 8443, 2, FwdMethod.TUNNEL, 1, 0),
        rs("2001:db8::10", 443, 1, FwdMethod.LOCALNODE, 0, 0),
        persistence_timeout=600.0,
        netmask=64,
    )
    table = [fwm(7, "rr", v6=True), v6, fwm(7, "wlc", rs("10.1.1.1", 0, 3))]
    assert list_all(table) == text("""
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
··->·RemoteAddress:Port···········Forward·Weight·ActiveConn·InActConn
TCP  [2001:db8::1]:443 wrr persistent 600 mask 64
··->·[2001:db8::10]:443···········Local···1······0··········0·········
··->·[2001:db8:1234:5678:9abc:def0:1234:5678]:8443·Tunnel··2······1··········0·········
FWM  7 wlc
··->·10.1.1.1:0···················Masq····3······0··········0·········
FWM  7 IPv6 rr
""")


def test_ipv6_text_is_glibc_inet_ntop() -> None:
    addrs = ["::ffff:10.0.0.1", "::10.0.0.1", "::1", "::", "2001:db8:0:1:1:1:1:1", "1:0:0:1::"]
    table = [svc(IpProto.TCP, "2001:db8::1", 80, "rr", *(rs(a, 80) for a in addrs))]
    assert [line[5:].split()[0] for line in list_all(table).splitlines()[4:]] == [
        "[::]:80",
        "[::1]:80",
        "[::10.0.0.1]:80",  # first six words zero: embedded IPv4
        "[::ffff:10.0.0.1]:80",  # v4-mapped
        "[1:0:0:1::]:80",  # the longer run wins
        "[2001:db8:0:1:1:1:1:1]:80",  # a single zero word is not compressed
    ]


# ---------------------------------------------------------------------------------------------
# sorting (§8.1)


def test_sort_wraps_addresses_2_31_apart() -> None:
    table = [
        svc(IpProto.TCP, "10.0.0.1", 80, "rr"),
        svc(IpProto.TCP, "192.168.1.1", 80, "rr"),
    ]
    # 0xC0A80101 - 0x0A000001 = 0xB6A80100, negative as a 32-bit int: 192.168.1.1 first.
    assert list_all(table).splitlines()[3:] == [
        "TCP  192.168.1.1:80 rr",
        "TCP  10.0.0.1:80 rr",
    ]


def test_sort_non_transitive_order_follows_glibc_merge_sort() -> None:
    # x = 10.0.0.1 < y = 100.0.0.1 < z = 192.168.1.1 < x (wrapped): the result depends on
    # the input order exactly as glibc's merge sort leaves it.
    x, y, z = (svc(IpProto.TCP, a, 80, "rr") for a in ("10.0.0.1", "100.0.0.1", "192.168.1.1"))

    def order(items: list[ServiceStatus]) -> list[str]:
        return [str(s.service.key.addr) for s in sort_services(items)]

    # [x] + sort([y, z]) = [x] + [y, z]; merge: x <= y => x y z
    assert order([x, y, z]) == ["10.0.0.1", "100.0.0.1", "192.168.1.1"]
    # [z] + sort([y, x]) = [z] + [x, y]; merge: z < x => z x y
    assert order([z, y, x]) == ["192.168.1.1", "10.0.0.1", "100.0.0.1"]
    # [y] + sort([x, z]) = [y] + [z, x]; merge: y < z => y z x
    assert order([y, x, z]) == ["100.0.0.1", "192.168.1.1", "10.0.0.1"]


def test_sort_keys_fwmark_family_protocol_address_port() -> None:
    table = [
        fwm(2, "rr"),
        fwm(1, "rr", v6=True),
        fwm(1, "rr"),
        svc(IpProto.SCTP, "10.0.0.1", 80, "rr"),
        svc(IpProto.TCP, "2001:db8::1", 80, "rr"),
        svc(IpProto.UDP, "10.0.0.1", 80, "rr"),
        svc(IpProto.TCP, "10.0.0.1", 443, "rr"),
        svc(IpProto.TCP, "10.0.0.1", 80, "rr"),
        svc(IpProto.TCP, "2001:db8::1:0:0:1", 80, "rr"),
    ]
    assert list_all(table).splitlines()[3:] == [
        "TCP  10.0.0.1:80 rr",
        "TCP  10.0.0.1:443 rr",
        "UDP  10.0.0.1:80 rr",
        "SCTP 10.0.0.1:80 rr",
        "TCP  [2001:db8::1]:80 rr",  # AF_INET6 (10) after AF_INET (2)
        "TCP  [2001:db8::1:0:0:1]:80 rr",  # third word 0 < 1, compared word by word
        "FWM  1 rr",
        "FWM  1 IPv6 rr",
        "FWM  2 rr",
    ]


def test_dests_sorted_by_wrapped_address_then_port() -> None:
    table = [
        svc(
            IpProto.TCP,
            "10.0.0.1",
            80,
            "wlc",
            rs("10.0.0.5", 80),
            rs("192.168.1.1", 8080),
            rs("192.168.1.1", 80),
        )
    ]
    assert [line.split()[1] for line in list_all(table).splitlines()[4:]] == [
        "192.168.1.1:80",
        "192.168.1.1:8080",
        "10.0.0.5:80",
    ]


# ---------------------------------------------------------------------------------------------
# --stats, --rate, --exact (§8.3)


def test_stats_matches_the_kube_router_capture() -> None:
    table = [
        svc(
            IpProto.TCP,
            "10.3.0.42",
            80,
            "rr",
            DestStatus(
                dest=Destination(addr=IPv4Address("10.2.1.22"), port=80),
                stats=Stats(conns=2, inpkts=12, outpkts=8, inbytes=774, outbytes=894),
            ),
            stats=Stats(
                conns=14209, inpkts=111769, outpkts=74613, inbytes=7207174, outbytes=8334358
            ),
        )
    ]
    assert list_all(table, fmt=ListFormat.STATS) == text("""
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
··->·RemoteAddress:Port
TCP  10.3.0.42:80                    14209   111769    74613  7207174  8334358
··->·10.2.1.22:80                        2       12        8      774      894
""")


BIG = Stats(
    conns=5,
    inpkts=123_456_789,
    outpkts=2_000_000_000,
    inbytes=150_000_000_000,
    outbytes=1_000_000_000_000_000,
)


def test_stats_large_numbers_are_scaled_by_truncation() -> None:
    table = [svc(IpProto.TCP, "10.0.0.9", 80, "rr", stats=BIG)]
    out = list_all(table, fmt=ListFormat.STATS).splitlines()
    assert (
        out[3] == "TCP  10.0.0.9:80                         5  123456K    2000M     150G    1000T"
    )


def test_largenum_boundaries() -> None:
    cases = [
        (99_999_999, " 99999999"),
        (100_000_000, "  100000K"),
        (999_999_999, "  999999K"),
        (1_000_000_000, "    1000M"),
        (99_999_999_999, "   99999M"),
        (100_000_000_000, "     100G"),
        (99_999_999_999_999, "   99999G"),
        (100_000_000_000_000, "     100T"),
    ]
    for value, expected in cases:
        table = [svc(IpProto.TCP, "10.0.0.9", 80, "rr", stats=Stats(conns=value))]
        line = list_all(table, fmt=ListFormat.STATS).splitlines()[3]
        assert line[33:42] == expected, value


def test_exact_prints_full_numbers_one_space_apart() -> None:
    table = [svc(IpProto.TCP, "10.0.0.9", 80, "rr", stats=BIG)]
    out = list_all(table, fmt=ListFormat.STATS, exact=True).splitlines()
    assert out[3] == (
        "TCP  10.0.0.9:80                         5 123456789 2000000000 150000000000"
        " 1000000000000000"
    )


def _rated(r: Rates) -> list[ServiceStatus]:
    """One service with one destination, both at rates `r`."""
    dest = DestStatus(dest=Destination(addr=IPv4Address("192.168.1.1"), port=80), rates=r)
    return [svc(IpProto.TCP, "10.0.0.1", 80, "wlc", dest, rates=r)]


def test_rate_dest_lines_print_cps_and_pps_plain() -> None:
    table = _rated(Rates(cps=3, inpps=40, outpps=38, inbps=5200, outbps=48000))
    assert list_all(table, fmt=ListFormat.RATE) == text("""
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS
··->·RemoteAddress:Port
TCP  10.0.0.1:80                         3       40       38     5200    48000
··->·192.168.1.1:80                      3       40       38     5200    48000
""")
    table = _rated(Rates(cps=123_456_789, inpps=1, outpps=2, inbps=123_456_789, outbps=7))
    lines = list_all(table, fmt=ListFormat.RATE).splitlines()
    assert (
        lines[3] == "TCP  10.0.0.1:80                   123456K        1        2  123456K        7"
    )
    assert (
        lines[4]
        == "  -> 192.168.1.1:80               123456789        1        2  123456K        7"
    )


# ---------------------------------------------------------------------------------------------
# --thresholds, --persistent-conn (§8.4)


def test_thresholds_and_persistent_conn() -> None:
    table = [
        svc(
            IpProto.TCP,
            "10.0.0.1",
            80,
            "wlc",
            rs("192.168.1.1", 80, 5, FwdMethod.DROUTE, 7, 2, u=100, l=50, persistconns=4),
            persistence_timeout=300.0,
        )
    ]
    assert list_all(table, fmt=ListFormat.THRESHOLDS) == text("""
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn·
··->·RemoteAddress:Port
TCP  10.0.0.1:80 wlc persistent 300
··->·192.168.1.1:80···············100········50·········7··········2·········
""")
    assert list_all(table, fmt=ListFormat.PERSISTENT_CONN) == text("""
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port            Weight    PersistConn ActiveConn InActConn·
··->·RemoteAddress:Port
TCP  10.0.0.1:80 wlc persistent 300
··->·192.168.1.1:80···············5·········4···········7··········2·········
""")


def test_list_service_has_no_version_line() -> None:
    assert list_service(SPEC_TABLE[2]) == text("""
Prot LocalAddress:Port Scheduler Flags
··->·RemoteAddress:Port···········Forward·Weight·ActiveConn·InActConn
TCP  10.0.0.1:80 wlc
··->·192.168.1.1:80···············Route···1······3··········12········
··->·192.168.1.2:8080·············Masq····0······0··········1·········
""")


# ---------------------------------------------------------------------------------------------
# -Sn (§8.7)


def test_save_spec_example() -> None:
    table = [
        fwm(1, "sh", sched_flags=0x18),
        svc(IpProto.UDP, "10.0.0.1", 53, "rr", persistence_timeout=360.0, netmask=24),
        svc(IpProto.TCP, "10.0.0.1", 80, "wlc", rs("192.168.1.1", 80, 1, FwdMethod.DROUTE)),
    ]
    assert save(table) == text("""
-A -t 10.0.0.1:80 -s wlc
-a -t 10.0.0.1:80 -r 192.168.1.1:80 -g -w 1
-A -u 10.0.0.1:53 -s rr -p 360 -M 255.255.255.0
-A -f 1 -s sh -b sh-fallback,sh-port
""")


def test_save_forwarding_switches_ipv6_sctp_pe_ops() -> None:
    table = [
        svc(
            IpProto.SCTP,
            "2001:db8::1",
            3868,
            "mh",
            rs("2001:db8::20", 3868, 2, FwdMethod.TUNNEL),
            rs("2001:db8::10", 3868, 0, FwdMethod.MASQ),
            persistence_timeout=120.0,
            netmask=48,
            sched_flags=0x10,
        ),
        svc(IpProto.UDP, "10.0.0.1", 5060, "rr", pe_name="sip", one_packet=True),
        fwm(3, "wlc", rs("10.0.0.7", 0, 4, FwdMethod.LOCALNODE), v6=True),
    ]
    assert save(table) == text("""
-A -u 10.0.0.1:5060 -s rr --pe sip -o
-A --sctp-service [2001:db8::1]:3868 -s mh -p 120 -M 48 -b mh-port
-a --sctp-service [2001:db8::1]:3868 -r [2001:db8::10]:3868 -m -w 0
-a --sctp-service [2001:db8::1]:3868 -r [2001:db8::20]:3868 -i -w 2 --tun-type ipip
-A -f 3 -6 -s wlc
-a -f 3 -6 -r 10.0.0.7:0 -g -w 4
""")


# ---------------------------------------------------------------------------------------------
# -Lnc (§8.5)


def conn(
    proto: IpProto,
    c: str,
    cport: int,
    v: str,
    vport: int,
    d: str,
    dport: int,
    state: str,
    expires: float,
    **kw: Any,
) -> ConnStatus:
    return ConnStatus(
        protocol=proto,
        caddr=ip_address(c),
        cport=cport,
        vaddr=ip_address(v),
        vport=vport,
        daddr=ip_address(d),
        dport=dport,
        state=state,
        expires_in=expires,
        **kw,
    )


def test_conn_list_spec_example() -> None:
    conns = [
        conn(
            IpProto.TCP, "10.0.0.5", 51234, "10.0.0.1", 80, "192.168.1.1", 80, "ESTABLISHED", 898.7
        ),
        conn(IpProto.UDP, "10.0.0.5", 40000, "10.0.0.1", 53, "192.168.1.2", 53, "UDP", 299.99),
        conn(
            IpProto.TCP,
            "10.0.0.0",
            0,
            "10.0.0.1",
            80,
            "192.168.1.1",
            80,
            "NONE",
            357.0,
            flags=0x1000,
        ),
        conn(
            IpProto.IP,
            "10.0.0.0",
            0,
            "0.0.0.0",
            0,
            "192.168.1.1",
            0,
            "ASSURED",
            6000.0,
            flags=0x1000,
            fwmark=1,
        ),
    ]
    assert list_conn(conns) == text("""
IPVS connection entries
pro expire state       source             virtual            destination
TCP 14:58  ESTABLISHED 10.0.0.5:51234     10.0.0.1:80        192.168.1.1:80
UDP 04:59  UDP         10.0.0.5:40000     10.0.0.1:53        192.168.1.2:53
TCP 05:57  NONE        10.0.0.0:0         10.0.0.1:80        192.168.1.1:80
IP  100:00 ASSURED     10.0.0.0:0         0.0.0.1:0          192.168.1.1:0
""")


def test_conn_list_fwmark_mark_as_address_ipv6_sctp_and_ops() -> None:
    conns = [
        conn(IpProto.IP, "10.0.0.0", 0, "0.0.0.0", 0, "192.168.1.1", 0, "NONE", 59.0, fwmark=300),
        conn(IpProto.IP, "2001:db8::", 0, "::", 0, "2001:db8::10", 0, "NONE", 0.4, fwmark=1),
        conn(
            IpProto.SCTP,
            "2001:db8::5",
            1234,
            "2001:db8::1",
            3868,
            "2001:db8::10",
            3868,
            "ESTABLISHED",
            3600.0,
        ),
        conn(
            IpProto.UDP, "10.0.0.5", 1, "10.0.0.1", 53, "192.168.1.2", 53, "UDP", 0.0, flags=0x2000
        ),
        conn(IpProto.UDP, "10.0.0.5", 2, "10.0.0.1", 53, "192.168.1.2", 53, "UDP", -1.0),
    ]
    assert list_conn(conns).splitlines()[2:] == [
        "IP  00:59  NONE        10.0.0.0:0         0.0.1.44:0         192.168.1.1:0",
        "IP  00:00  NONE        [2001:db8::]:0     [0:1::]:0          [2001:db8::10]:0",
        "SCTP 60:00  ESTABLISHED [2001:db8::5]:1234 [2001:db8::1]:3868 [2001:db8::10]:3868",
        "UDP 00:00  UDP         10.0.0.5:2         10.0.0.1:53        192.168.1.2:53",
    ]


def test_conn_list_persistent_conn_with_pe_data() -> None:
    conns = [
        conn(
            IpProto.UDP,
            "10.0.0.5",
            5060,
            "10.0.0.1",
            5060,
            "192.168.1.2",
            5060,
            "UDP",
            180.0,
            pe_name="sip",
            pe_data=b"a84b4c76e66710 trailing",
        ),
        conn(IpProto.UDP, "10.0.0.6", 5060, "10.0.0.1", 5060, "192.168.1.3", 5060, "UDP", 10.0),
    ]
    # "%-3s %-6s %-11s %-18s %-18s %-16s %-18s %s" for rows with PE data (the destination
    # column narrows to 16), the plain 6-column row otherwise.
    assert list_conn(conns, persistent_conn=True) == (
        "IPVS connection entries\n"
        "pro expire state       source             virtual            destination       "
        " pe name          pe_data\n"
        "UDP 03:00  UDP         10.0.0.5:5060      10.0.0.1:5060      192.168.1.2:5060 "
        "sip                a84b4c76e66710\n"
        "UDP 00:10  UDP         10.0.0.6:5060      10.0.0.1:5060      192.168.1.3:5060\n"
    )
    # without --persistent-conn the pe columns are not printed
    assert list_conn(conns).splitlines()[2] == (
        "UDP 03:00  UDP         10.0.0.5:5060      10.0.0.1:5060      192.168.1.2:5060"
    )


# ---------------------------------------------------------------------------------------------
# --timeout, --daemon (§8.6), numeric only


def test_timeout() -> None:
    assert list_timeout(IpvsTimeouts()) == "Timeout (tcp tcpfin udp): 900 120 300\n"
    assert list_timeout(IpvsTimeouts(tcp=7200, tcpfin=30, udp=5)) == (
        "Timeout (tcp tcpfin udp): 7200 30 5\n"
    )


def test_daemon_lines_master_first_optional_fields() -> None:
    master = SyncDaemonStatus(
        state="master",
        mcast_ifn="eth0",
        syncid=0,
        maxlen=1472,
        group=IPv4Address("224.0.0.81"),
        port=8848,
        ttl=1,
    )
    backup = SyncDaemonStatus(
        state="backup", mcast_ifn="eth1", syncid=7, group=IPv6Address("ff02::12")
    )
    assert list_daemon([backup, master]) == (
        "master sync daemon (mcast=eth0, syncid=0, maxlen=1472, group=224.0.0.81, port=8848,"
        " ttl=1)\n"
        "backup sync daemon (mcast=eth1, syncid=7, group=ff02::12)\n"
    )
    assert list_daemon([]) == ""


def test_name_resolution_is_refused_explicitly() -> None:
    calls: list[Callable[[], str]] = [
        lambda: list_all(SPEC_TABLE, numeric=False),
        lambda: list_service(SPEC_TABLE[0], numeric=False),
        lambda: save(SPEC_TABLE, numeric=False),
        lambda: list_conn([], numeric=False),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="name resolution"):
            call()


def test_sort_fwmark_difference_wraps_too() -> None:
    # The fwmark difference is also taken as a signed 32-bit int: 0 - 0x80000001 wraps to
    # 0x7FFFFFFF > 0, so such a mark sorts before a non-fwmark service.
    table = [svc(IpProto.TCP, "10.0.0.1", 80, "rr"), fwm(0x80000001, "rr")]
    assert list_all(table).splitlines()[3:] == ["FWM  2147483649 rr", "TCP  10.0.0.1:80 rr"]
    # With mark 5 as well the order is cyclic (TCP < 5 < 0x80000001 < TCP); glibc's merge
    # sort of [TCP, big, 5] merges [TCP] with [5, big].
    table.append(fwm(5, "rr"))
    assert list_all(table).splitlines()[3:] == [
        "TCP  10.0.0.1:80 rr",
        "FWM  5 rr",
        "FWM  2147483649 rr",
    ]
