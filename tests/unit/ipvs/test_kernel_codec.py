"""The kernel backend's pure parts: model <-> IPVS netlink attributes (down to the wire bytes),
the verbs each operation sends, errno -> hactl errors, and the /proc formats.

No kernel needed: messages are encoded and decoded with the backend's own `IpvsMessage`, and
the verb tests drive `KernelIpvs` over a recording socket that answers with errno values.
"""

from __future__ import annotations

import errno
import struct
import sys
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroute2.netlink.exceptions import NetlinkError

from hactl.errors import KernelError, LinkNotFound, NotSupported
from hactl.ipvs import kernel
from hactl.ipvs.ipvsadm import SyncDaemonStatus
from hactl.ipvs.kernel import (
    IpvsMessage,
    KernelIpvs,
    build_message,
    daemon_attrs,
    daemon_from_nla,
    describe_dest,
    describe_service,
    dest_attrs,
    dest_from_nla,
    kernel_error,
    kernel_ipvs_available,
    netmask_from_wire,
    netmask_to_wire,
    service_attrs,
    service_from_nla,
    service_key_attrs,
    timeouts_attrs,
    timeouts_from_message,
)
from hactl.ipvs.model import (
    AF_INET,
    AF_INET6,
    IP_VS_SVC_F_ONEPACKET,
    IP_VS_SVC_F_PERSISTENT,
    IP_VS_SVC_F_SCHED1,
    IP_VS_SVC_F_SCHED2,
    ConnStatus,
    Destination,
    FwdMethod,
    IpProto,
    IpvsSysctl,
    IpvsTimeouts,
    Rates,
    ServiceKey,
    Stats,
    VirtualService,
)
from hactl.ipvs.plan import AddDest, AddService, DelDest, DelService, EditDest, EditService
from hactl.ipvs.procfs import (
    IpvsProcFs,
    parse_conn_line,
    parse_conn_tab_size,
    parse_conn_table,
    parse_sysctl,
    render_sysctl,
)

V4 = IPv4Address
V6 = IPv6Address
TCP80 = ServiceKey.for_address(IpProto.TCP, V4("10.0.0.1"), 80)
UDP6 = ServiceKey.for_address(IpProto.UDP, V6("2001:db8::1"), 53)
FWM7 = ServiceKey.for_fwmark(7)
FWM8_6 = ServiceKey.for_fwmark(8, family=AF_INET6)


def roundtrip(cmd: int, attrs: list[tuple[str, Any]]) -> Any:
    """Encode a message as it goes to the kernel, decode it back as a reply would be."""
    msg = build_message(cmd, attrs)
    msg.encode()
    decoded = IpvsMessage(msg.data)
    decoded.decode()
    return decoded


def nla(kind: int, payload: bytes) -> bytes:
    """One netlink attribute (struct nlattr + payload, padded to 4 bytes)."""
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


# ---------------------------------------------------------------------------------------------
# Netmask: network-order mask for IPv4, host-order prefix length for IPv6.


def test_netmask_ipv4_is_the_mask_in_network_order() -> None:
    value = netmask_to_wire(AF_INET, 24)
    assert value.to_bytes(4, sys.byteorder) == bytes([255, 255, 255, 0])
    assert netmask_to_wire(AF_INET, 32).to_bytes(4, sys.byteorder) == b"\xff\xff\xff\xff"
    assert netmask_to_wire(AF_INET, 0) == 0


def test_netmask_ipv6_is_the_prefix_length() -> None:
    assert netmask_to_wire(AF_INET6, 128) == 128
    assert netmask_to_wire(AF_INET6, 64) == 64
    assert netmask_from_wire(AF_INET6, 64) == 64


@pytest.mark.parametrize(
    ("family", "prefix"), [(AF_INET, 33), (AF_INET, -1), (AF_INET6, 0), (AF_INET6, 129)]
)
def test_netmask_out_of_range_is_refused_before_sending(family: int, prefix: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        netmask_to_wire(family, prefix)


@given(st.integers(min_value=0, max_value=32))
def test_netmask_ipv4_roundtrip(prefix: int) -> None:
    assert netmask_from_wire(AF_INET, netmask_to_wire(AF_INET, prefix)) == prefix


def test_netmask_non_contiguous_is_rejected() -> None:
    value = int.from_bytes(bytes([255, 0, 255, 0]), sys.byteorder)
    with pytest.raises(ValueError, match="non-contiguous"):
        netmask_from_wire(AF_INET, value)


# ---------------------------------------------------------------------------------------------
# Model -> attributes.


def test_service_attrs_pinned() -> None:
    svc = VirtualService(
        key=TCP80,
        scheduler="sh",
        sched_flags=IP_VS_SVC_F_SCHED1 | IP_VS_SVC_F_SCHED2,
        persistence_timeout=300,
        netmask=24,
    )
    assert service_attrs(svc) == [
        ("IPVS_SVC_ATTR_AF", AF_INET),
        ("IPVS_SVC_ATTR_PROTOCOL", 6),
        ("IPVS_SVC_ATTR_ADDR", b"\x0a\x00\x00\x01"),
        ("IPVS_SVC_ATTR_PORT", 80),
        ("IPVS_SVC_ATTR_SCHED_NAME", "sh"),
        (
            "IPVS_SVC_ATTR_FLAGS",
            {"flags": IP_VS_SVC_F_PERSISTENT | 0x18, "mask": 0xFFFFFFFF},
        ),
        ("IPVS_SVC_ATTR_TIMEOUT", 300),
        ("IPVS_SVC_ATTR_NETMASK", netmask_to_wire(AF_INET, 24)),
    ]


def test_fwmark_service_always_carries_a_netmask() -> None:
    attrs = dict(service_attrs(VirtualService(key=FWM7, scheduler="wrr")))
    assert attrs["IPVS_SVC_ATTR_FWMARK"] == 7
    assert "IPVS_SVC_ATTR_ADDR" not in attrs
    assert attrs["IPVS_SVC_ATTR_NETMASK"] == 0xFFFFFFFF
    v6 = dict(service_attrs(VirtualService(key=FWM8_6, scheduler="rr", netmask=128)))
    assert (v6["IPVS_SVC_ATTR_AF"], v6["IPVS_SVC_ATTR_NETMASK"]) == (AF_INET6, 128)


def test_not_persistent_clears_the_flag_and_sends_timeout_zero() -> None:
    attrs = dict(service_attrs(VirtualService(key=TCP80, scheduler="rr", one_packet=True)))
    assert attrs["IPVS_SVC_ATTR_FLAGS"] == {"flags": IP_VS_SVC_F_ONEPACKET, "mask": 0xFFFFFFFF}
    assert attrs["IPVS_SVC_ATTR_TIMEOUT"] == 0


def test_new_service_wire_bytes() -> None:
    """The exact attribute bytes of IPVS_CMD_NEW_SERVICE for `-A -t 10.0.0.1:80 -s rr`."""
    msg = build_message(
        kernel.IPVS_CMD_NEW_SERVICE,
        [
            (
                "IPVS_CMD_ATTR_SERVICE",
                {"attrs": service_attrs(VirtualService(key=TCP80, scheduler="rr"))},
            )
        ],
    )
    msg.encode()
    nested = b"".join(
        [
            nla(1, struct.pack("=H", AF_INET)),
            nla(2, struct.pack("=H", 6)),
            nla(3, bytes([10, 0, 0, 1])),
            nla(4, struct.pack(">H", 80)),
            nla(6, b"rr\0"),
            nla(7, struct.pack("=II", 0, 0xFFFFFFFF)),
            nla(8, struct.pack("=I", 0)),
            nla(9, b"\xff\xff\xff\xff"),
        ]
    )
    genl = struct.pack("=BBH", kernel.IPVS_CMD_NEW_SERVICE, 1, 0)
    assert bytes(msg.data[16:]) == genl + nla(1, nested)


def test_dest_attrs_always_carry_the_forwarding_method() -> None:
    attrs = dest_attrs(Destination(addr=V4("192.168.1.2"), port=8080))
    assert attrs == [
        ("IPVS_DEST_ATTR_ADDR", b"\xc0\xa8\x01\x02"),
        ("IPVS_DEST_ATTR_ADDR_FAMILY", AF_INET),
        ("IPVS_DEST_ATTR_PORT", 8080),
        ("IPVS_DEST_ATTR_FWD_METHOD", 0),
        ("IPVS_DEST_ATTR_WEIGHT", 1),
        ("IPVS_DEST_ATTR_U_THRESH", 0),
        ("IPVS_DEST_ATTR_L_THRESH", 0),
    ]


# ---------------------------------------------------------------------------------------------
# Attributes -> model, through encoded messages.

SERVICES = [
    VirtualService(key=TCP80, scheduler="rr"),
    VirtualService(
        key=TCP80,
        scheduler="mh",
        sched_flags=IP_VS_SVC_F_SCHED1 | IP_VS_SVC_F_SCHED2,
        persistence_timeout=3600,
        netmask=16,
        one_packet=True,
    ),
    VirtualService(key=UDP6, scheduler="wlc", persistence_timeout=60, netmask=64),
    VirtualService(key=UDP6, scheduler="sh", netmask=128),
    VirtualService(key=FWM7, scheduler="wrr", persistence_timeout=120, netmask=8),
    VirtualService(key=FWM8_6, scheduler="dh", netmask=96),
    VirtualService(
        key=ServiceKey.for_address(IpProto.UDP, V4("10.0.0.9"), 5060),
        scheduler="rr",
        persistence_timeout=30,
        pe_name="sip",
    ),
    VirtualService(key=ServiceKey.for_address(IpProto.SCTP, V4("10.0.0.8"), 9), scheduler="lc"),
]


@pytest.mark.parametrize("svc", SERVICES, ids=lambda s: f"{describe_service(s.key)}-{s.scheduler}")
def test_service_roundtrip_through_the_message(svc: VirtualService) -> None:
    msg = roundtrip(
        kernel.IPVS_CMD_NEW_SERVICE, [("IPVS_CMD_ATTR_SERVICE", {"attrs": service_attrs(svc)})]
    )
    back, stats, rates = service_from_nla(msg.get("IPVS_CMD_ATTR_SERVICE"))
    assert back == svc
    assert (stats, rates) == (Stats(), Rates())


def test_service_reply_as_the_kernel_sends_it() -> None:
    """16-byte addresses, the HASHED flag, STATS and STATS64: the 64-bit counters win."""
    stats64 = [
        ("IPVS_STATS_ATTR_CONNS", 2**40),
        ("IPVS_STATS_ATTR_INPKTS", 5),
        ("IPVS_STATS_ATTR_OUTPKTS", 6),
        ("IPVS_STATS_ATTR_INBYTES", 7),
        ("IPVS_STATS_ATTR_OUTBYTES", 8),
        ("IPVS_STATS_ATTR_CPS", 1),
        ("IPVS_STATS_ATTR_INPPS", 2),
        ("IPVS_STATS_ATTR_OUTPPS", 3),
        ("IPVS_STATS_ATTR_INBPS", 4),
        ("IPVS_STATS_ATTR_OUTBPS", 9),
    ]
    attrs = [
        ("IPVS_SVC_ATTR_AF", AF_INET),
        ("IPVS_SVC_ATTR_PROTOCOL", 17),
        ("IPVS_SVC_ATTR_ADDR", bytes([10, 0, 0, 3]) + bytes(12)),
        ("IPVS_SVC_ATTR_PORT", 53),
        ("IPVS_SVC_ATTR_SCHED_NAME", "lc"),
        ("IPVS_SVC_ATTR_FLAGS", {"flags": IP_VS_SVC_F_PERSISTENT | 0x2, "mask": 0xFFFFFFFF}),
        ("IPVS_SVC_ATTR_TIMEOUT", 300),
        ("IPVS_SVC_ATTR_NETMASK", netmask_to_wire(AF_INET, 24)),
        ("IPVS_SVC_ATTR_STATS", {"attrs": [("IPVS_STATS_ATTR_CONNS", 1)]}),
        ("IPVS_SVC_ATTR_STATS64", {"attrs": stats64}),
    ]
    msg = roundtrip(kernel.IPVS_CMD_GET_SERVICE, [("IPVS_CMD_ATTR_SERVICE", {"attrs": attrs})])
    svc, stats, rates = service_from_nla(msg.get("IPVS_CMD_ATTR_SERVICE"))
    assert svc == VirtualService(
        key=ServiceKey.for_address(IpProto.UDP, V4("10.0.0.3"), 53),
        scheduler="lc",
        persistence_timeout=300.0,
        netmask=24,
    )
    assert stats == Stats(2**40, 5, 6, 7, 8)
    assert rates == Rates(1, 2, 3, 4, 9)


@pytest.mark.parametrize(
    "dest",
    [
        Destination(addr=V4("192.168.1.2"), port=80),
        Destination(addr=V4("192.168.1.3"), port=0, weight=0, fwd=FwdMethod.DROUTE),
        Destination(
            addr=V6("2001:db8::2"),
            port=53,
            weight=65535,
            fwd=FwdMethod.TUNNEL,
            u_threshold=9,
            l_threshold=3,
        ),
        Destination(addr=V4("192.168.1.4"), port=443, fwd=FwdMethod.LOCALNODE),
    ],
    ids=str,
)
def test_dest_roundtrip_through_the_message(dest: Destination) -> None:
    msg = roundtrip(
        kernel.IPVS_CMD_NEW_DEST,
        [
            ("IPVS_CMD_ATTR_SERVICE", {"attrs": service_key_attrs(TCP80)}),
            ("IPVS_CMD_ATTR_DEST", {"attrs": dest_attrs(dest)}),
        ],
    )
    assert msg.get("IPVS_CMD_ATTR_SERVICE").get("IPVS_SVC_ATTR_PORT") == 80
    status = dest_from_nla(msg.get("IPVS_CMD_ATTR_DEST"), service_family=AF_INET)
    assert status.dest == dest
    assert (status.activeconns, status.inactconns, status.persistconns) == (0, 0, 0)


def test_dest_reply_without_family_uses_the_service_family() -> None:
    attrs = [
        ("IPVS_DEST_ATTR_ADDR", V6("2001:db8::7").packed),
        ("IPVS_DEST_ATTR_PORT", 80),
        ("IPVS_DEST_ATTR_FWD_METHOD", 0x3 | 0x2000),  # conn flags: only the method bits count
        ("IPVS_DEST_ATTR_WEIGHT", 2),
        ("IPVS_DEST_ATTR_U_THRESH", 0),
        ("IPVS_DEST_ATTR_L_THRESH", 0),
        ("IPVS_DEST_ATTR_ACTIVE_CONNS", 4),
        ("IPVS_DEST_ATTR_INACT_CONNS", 5),
        ("IPVS_DEST_ATTR_PERSIST_CONNS", 6),
        ("IPVS_DEST_ATTR_STATS", {"attrs": [("IPVS_STATS_ATTR_CONNS", 11)]}),
    ]
    msg = roundtrip(kernel.IPVS_CMD_GET_DEST, [("IPVS_CMD_ATTR_DEST", {"attrs": attrs})])
    status = dest_from_nla(msg.get("IPVS_CMD_ATTR_DEST"), service_family=AF_INET6)
    assert status.dest == Destination(
        addr=V6("2001:db8::7"), port=80, weight=2, fwd=FwdMethod.DROUTE
    )
    assert (status.activeconns, status.inactconns, status.persistconns) == (4, 5, 6)
    assert status.stats == Stats(conns=11)  # only the 32-bit counters: they are used


def test_timeouts_roundtrip() -> None:
    msg = roundtrip(
        kernel.IPVS_CMD_SET_CONFIG, timeouts_attrs(IpvsTimeouts(tcp=1, tcpfin=2, udp=3))
    )
    assert timeouts_from_message(msg) == IpvsTimeouts(tcp=1, tcpfin=2, udp=3)


# ---------------------------------------------------------------------------------------------
# Errors.


def test_unknown_scheduler_is_not_supported() -> None:
    exc = kernel_error("add_service", errno.ENOENT, "TCP 10.0.0.1:80")
    assert isinstance(exc, NotSupported)
    assert (exc.op, exc.errno) == ("add_service", errno.ENOENT)
    assert exc.strerror is not None
    assert exc.strerror.startswith("add_service TCP 10.0.0.1:80: No such file or directory")
    assert isinstance(exc, OSError)


@pytest.mark.parametrize(
    ("op", "code", "cls"),
    [
        ("del_dest", errno.ENOENT, KernelError),
        ("edit_dest", errno.ENOENT, KernelError),
        ("edit_service", errno.ESRCH, KernelError),
        ("add_dest", errno.EINVAL, KernelError),
        ("add_service", errno.EAFNOSUPPORT, NotSupported),
        ("set_timeouts", errno.EOPNOTSUPP, NotSupported),
        ("add_service", errno.EPERM, KernelError),
    ],
)
def test_errno_mapping(op: str, code: int, cls: type[KernelError]) -> None:
    exc = kernel_error(op, code)
    assert type(exc) is cls
    assert (exc.op, exc.errno) == (op, code)


def test_describe() -> None:
    assert describe_service(TCP80) == "TCP 10.0.0.1:80"
    assert describe_service(UDP6) == "UDP [2001:db8::1]:53"
    assert describe_service(FWM8_6) == "FWM 8 IPv6"
    assert describe_dest(UDP6, V6("2001:db8::2"), 53) == "UDP [2001:db8::1]:53 -> [2001:db8::2]:53"


# ---------------------------------------------------------------------------------------------
# The verbs each operation sends (pinned: "set" modifies, never the DEL that pyroute2's
# "update" sends), and idempotency, over a socket that records the encoded requests.


class RecordingSocket:
    """Answers every request from a script of errno values (0 = success)."""

    def __init__(self, answers: Sequence[int] = ()) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[int, int]] = []  # (command, netlink flags)

    async def _do_request(self, msg: Any, msg_flags: int) -> list[Any]:
        msg.encode()
        decoded = IpvsMessage(msg.data)
        decoded.decode()
        self.sent.append((decoded["cmd"], msg_flags))
        code = self.answers.pop(0) if self.answers else 0
        if code:
            raise NetlinkError(code)
        return []

    def close(self) -> None:
        pass


def backend(answers: Sequence[int] = ()) -> tuple[KernelIpvs, RecordingSocket]:
    sock = RecordingSocket(answers)
    return KernelIpvs(sock), sock  # type: ignore[arg-type]


SVC = VirtualService(key=TCP80, scheduler="rr")
DEST = Destination(addr=V4("192.168.1.2"), port=80)


@pytest.mark.asyncio
async def test_each_operation_sends_its_command() -> None:
    ipvs, sock = backend()
    await ipvs.apply(
        [
            AddService(SVC),
            AddDest(TCP80, DEST),
            EditService(SVC),
            EditDest(TCP80, DEST),
            DelDest(TCP80, DEST.addr, DEST.port),
            DelService(TCP80),
        ]
    )
    assert [cmd for cmd, _ in sock.sent] == [1, 5, 2, 6, 7, 3]
    assert [flags & 0x600 for _, flags in sock.sent] == [0x600, 0x600, 0, 0, 0, 0]  # CREATE|EXCL


@pytest.mark.asyncio
async def test_add_when_exists_converges_with_set() -> None:
    ipvs, sock = backend([errno.EEXIST, 0, errno.EEXIST, 0])
    await ipvs.apply([AddService(SVC), AddDest(TCP80, DEST)])
    assert [cmd for cmd, _ in sock.sent] == [1, 2, 5, 6]
    assert ipvs.owned == {TCP80}


@pytest.mark.asyncio
async def test_delete_when_missing_succeeds() -> None:
    ipvs, sock = backend([errno.ENOENT, errno.ESRCH, errno.ESRCH])
    await ipvs.apply(
        [DelDest(TCP80, DEST.addr, 80), DelDest(TCP80, DEST.addr, 80), DelService(TCP80)]
    )
    assert [cmd for cmd, _ in sock.sent] == [7, 7, 3]


@pytest.mark.asyncio
async def test_a_refusal_stops_the_batch() -> None:
    ipvs, sock = backend([0, errno.EINVAL])
    with pytest.raises(KernelError) as refused:
        await ipvs.apply([AddService(SVC), AddDest(TCP80, DEST), DelService(TCP80)])
    assert (refused.value.op, refused.value.errno) == ("add_dest", errno.EINVAL)
    assert refused.value.strerror == (
        "add_dest TCP 10.0.0.1:80 -> 192.168.1.2:80: Invalid argument"
    )
    assert [cmd for cmd, _ in sock.sent] == [1, 5]


@pytest.mark.asyncio
async def test_flush_on_stop_removes_only_owned_services() -> None:
    ipvs, sock = backend([0, 0, errno.EPERM, 0])
    ipvs.adopt([UDP6])
    await ipvs.apply([AddService(SVC)])
    assert ipvs.owned == {TCP80, UDP6}
    with pytest.raises(KernelError) as failed:
        await ipvs.lvs_flush_on_stop()
    # Both removals were attempted (in name order); the one that failed stays owned.
    assert (failed.value.op, failed.value.errno) == ("del_service", errno.EPERM)
    assert [cmd for cmd, _ in sock.sent] == [1, 3, 3]
    assert ipvs.owned == {UDP6}
    await ipvs.lvs_flush_on_stop(everything=True)
    assert sock.sent[-1][0] == kernel.IPVS_CMD_FLUSH
    assert ipvs.owned == frozenset()


# ---------------------------------------------------------------------------------------------
# /proc/net/ip_vs_conn, /proc/net/ip_vs and the tunables.

CONN_TABLE = """\
Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
TCP 0A000005 C822 0A000001 0050 C0A80101 0050 ESTABLISHED     898
UDP 0A000005 9C40 0A000001 0035 C0A80102 0035 UDP             299
TCP 0A000000 0000 0A000001 0050 C0A80101 0050 NONE            357
IP  0A000000 0000 00000001 0000 C0A80101 0000 ASSURED        6000
UDP 2001:0db8:0000:0000:0000:0000:0000:0005 1F90 2001:0db8:0000:0000:0000:0000:0000:0001 0035 \
[2001:0db8:0001:0000:0000:0000:0000:0002] 0035 UDP              12
UDP 0A000005 13C4 0A000009 13C4 C0A80108 13C4 UDP              27 sip a84b4c76e66710
"""


def test_parse_conn_table() -> None:
    rows = parse_conn_table(CONN_TABLE)
    assert rows[0] == ConnStatus(
        protocol=IpProto.TCP,
        caddr=V4("10.0.0.5"),
        cport=51234,
        vaddr=V4("10.0.0.1"),
        vport=80,
        daddr=V4("192.168.1.1"),
        dport=80,
        state="ESTABLISHED",
        expires_in=898.0,
    )
    assert (rows[1].protocol, rows[1].state, rows[1].expires_in) == (IpProto.UDP, "UDP", 299.0)
    assert (rows[2].cport, rows[2].state) == (0, "NONE")
    template = rows[3]
    assert (template.protocol, template.fwmark, template.vaddr) == (IpProto.IP, 1, V4("0.0.0.1"))
    v6 = rows[4]
    assert (v6.caddr, v6.cport, v6.vaddr) == (V6("2001:db8::5"), 8080, V6("2001:db8::1"))
    assert v6.daddr == V6("2001:db8:1::2")
    assert (rows[5].pe_name, rows[5].pe_data) == ("sip", b"a84b4c76e66710")


def test_parse_conn_fwmark_template_ipv6() -> None:
    line = (
        "IP  2001:0db8:0000:0000:0000:0000:0000:0000 0000 0000:0007:0000:0000:0000:0000:0000:0000"
        " 0000 2001:0db8:0001:0000:0000:0000:0000:0002 0000 NONE            100"
    )
    row = parse_conn_line(line)
    assert (row.protocol, row.fwmark) == (IpProto.IP, 7)


@pytest.mark.parametrize(
    "line",
    [
        "TCP 0A000005 C822 0A000001 0050 C0A80101 0050 ESTABLISHED",  # short
        "XYZ 0A000005 C822 0A000001 0050 C0A80101 0050 ESTABLISHED 1",  # protocol
        "TCP 0A0005 C822 0A000001 0050 C0A80101 0050 ESTABLISHED 1",  # address width
        "TCP 0A000005 C8 0A000001 0050 C0A80101 0050 ESTABLISHED 1",  # port width
        "TCP 0A000005 C822 0A000001 0050 C0A80101 0050 ESTABLISHED soon",  # expiry
    ],
)
def test_parse_conn_rejects_malformed_rows(line: str) -> None:
    with pytest.raises(ValueError, match="ip_vs_conn row"):
        parse_conn_line(line)


def test_parse_conn_tab_size() -> None:
    assert parse_conn_tab_size("IP Virtual Server version 1.2.1 (size=4096)\nProt ...\n") == 4096
    with pytest.raises(ValueError):
        parse_conn_tab_size("nothing here\n")


def test_sysctl_text_both_ways() -> None:
    sysctl = parse_sysctl({"sync_threshold": "4\t40\n", "expire_nodest_conn": "1\n"})
    assert (sysctl.sync_threshold, sysctl.sync_period, sysctl.expire_nodest_conn) == (4, 40, 1)
    assert sysctl.conn_reuse_mode == IpvsSysctl().conn_reuse_mode
    assert render_sysctl(sysctl, "sync_threshold") == "4 40"
    assert render_sysctl(sysctl, "expire_nodest_conn") == "1"
    for bad in ({"sync_threshold": "3"}, {"amemthresh": "1 2"}, {"sync_period": "5"}):
        with pytest.raises(ValueError):
            parse_sysctl(bad)
    with pytest.raises(ValueError):
        render_sysctl(sysctl, "sync_period")


def make_proc(tmp_path: Path, *, missing: Sequence[str] = ()) -> Path:
    vs = tmp_path / "sys/net/ipv4/vs"
    vs.mkdir(parents=True)
    defaults = IpvsSysctl()
    for name in IpvsSysctl.names():
        if name not in missing:
            (vs / name).write_text(render_sysctl(defaults, name).replace(" ", "\t") + "\n")
    (tmp_path / "net").mkdir()
    (tmp_path / "net/ip_vs").write_text("IP Virtual Server version 1.2.1 (size=1024)\n")
    (tmp_path / "net/ip_vs_conn").write_text(CONN_TABLE)
    return tmp_path


def test_procfs_reads_and_writes_named_tunables(tmp_path: Path) -> None:
    procfs = IpvsProcFs(make_proc(tmp_path, missing=["run_estimation"]))
    sysctl, absent = procfs.read_sysctl()
    assert sysctl == IpvsSysctl()
    assert absent == {"run_estimation"}
    procfs.write_sysctl(IpvsSysctl(sync_threshold=5, sync_period=60), ["sync_threshold"])
    assert (tmp_path / "sys/net/ipv4/vs/sync_threshold").read_text() == "5 60\n"
    with pytest.raises(NotSupported) as absent_error:
        procfs.write_sysctl(IpvsSysctl(), ["run_estimation"])
    assert absent_error.value.op == "sysctl net.ipv4.vs.run_estimation"
    assert procfs.read_conn_tab_size() == 1024
    assert len(procfs.read_conn_table()) == 6


def test_procfs_without_ipvs(tmp_path: Path) -> None:
    procfs = IpvsProcFs(tmp_path)
    assert procfs.read_conn_table() == ()
    with pytest.raises(NotSupported):
        procfs.read_sysctl()
    with pytest.raises(NotSupported):
        procfs.read_conn_tab_size()


@pytest.mark.asyncio
async def test_open_without_ipvs_is_not_supported() -> None:
    if await kernel_ipvs_available():
        pytest.skip("this kernel has IPVS: tests/kernel covers it")
    with pytest.raises(NotSupported) as missing:
        await KernelIpvs.open()
    assert (missing.value.op, missing.value.errno) == ("open", errno.ENOENT)


# ---------------------------------------------------------------------------------------------
# The kernel's sync daemons.


@pytest.mark.parametrize(
    "daemon",
    [
        SyncDaemonStatus(state="master", mcast_ifn="eth0", syncid=7),
        SyncDaemonStatus(
            state="backup",
            mcast_ifn="bond0.100",
            syncid=255,
            maxlen=1400,
            group=V4("239.1.2.3"),
            port=8850,
            ttl=3,
        ),
        SyncDaemonStatus(state="master", mcast_ifn="eth1", syncid=0, group=V6("ff02::81")),
    ],
    ids=lambda d: f"{d.state}-{d.mcast_ifn}",
)
def test_daemon_roundtrip(daemon: SyncDaemonStatus) -> None:
    msg = roundtrip(
        kernel.IPVS_CMD_NEW_DAEMON, [("IPVS_CMD_ATTR_DAEMON", {"attrs": daemon_attrs(daemon)})]
    )
    assert daemon_from_nla(msg.get("IPVS_CMD_ATTR_DAEMON")) == daemon


def test_daemon_wire_bytes() -> None:
    """`--start-daemon master --mcast-interface eth0 --syncid 7 --mcast-port 8850`."""
    daemon = SyncDaemonStatus(state="master", mcast_ifn="eth0", syncid=7, port=8850)
    msg = build_message(
        kernel.IPVS_CMD_NEW_DAEMON, [("IPVS_CMD_ATTR_DAEMON", {"attrs": daemon_attrs(daemon)})]
    )
    msg.encode()
    nested = b"".join(
        [
            nla(1, struct.pack("=I", 1)),
            nla(2, b"eth0\0"),
            nla(3, struct.pack("=I", 7)),
            nla(7, struct.pack("=H", 8850)),  # host byte order, as the kernel reads it
        ]
    )
    assert bytes(msg.data[20:]) == nla(3, nested)


@pytest.mark.asyncio
async def test_daemon_verbs_and_idempotency() -> None:
    ipvs, sock = backend([0, errno.ESRCH, errno.ENODEV, errno.EEXIST])
    master = SyncDaemonStatus(state="master", mcast_ifn="eth0", syncid=7)
    await ipvs.start_sync_daemon(master)
    await ipvs.stop_sync_daemon("master")  # none running: a success
    with pytest.raises(LinkNotFound):
        await ipvs.start_sync_daemon(master)
    # EEXIST and the running daemon is not the one asked for (the listing is empty here).
    with pytest.raises(KernelError) as busy:
        await ipvs.start_sync_daemon(master)
    assert (busy.value.op, busy.value.errno) == ("start_sync_daemon", errno.EEXIST)
    assert [cmd for cmd, _ in sock.sent] == [9, 10, 9, 9, 11]
