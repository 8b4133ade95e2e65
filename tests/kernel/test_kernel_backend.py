"""The kernel backend against a real kernel: what hactl applies, the kernel's own tools read back.

Every configuration feature (all schedulers and their flags, persistence with a netmask in
IPv4 and IPv6, fwmark services of both families, IPv6, one-packet scheduling, persistence
engines, weights, thresholds, forwarding methods, timeouts, tunables) is applied through
`KernelIpvs` and compared with `ipvsadm -Sn`, `ipvsadm -Ln [--thresholds|--stats|--rate]`
and `ipvsadm -l --timeout`, printed by ipvsadm from the kernel's answers, and with hactl's
own renderings (hactl.ipvs.ipvsadm) of the desired table and of `KernelIpvs.services()`.
"""

from __future__ import annotations

import errno
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest

from hactl.errors import KernelError, NotSupported
from hactl.ipvs import ipvsadm as view
from hactl.ipvs.kernel import kernel_ipvs_available
from hactl.ipvs.model import (
    AF_INET6,
    IP_VS_SVC_F_SCHED1,
    IP_VS_SVC_F_SCHED2,
    Destination,
    DestStatus,
    FwdMethod,
    IpProto,
    IpvsSysctl,
    IpvsTable,
    IpvsTimeouts,
    ServiceKey,
    ServiceStatus,
    VirtualService,
)
from hactl.ipvs.plan import AddDest, AddService, DelDest, DelService, EditDest, EditService, plan
from tests.kernel.conftest import ipvsadm

pytestmark = [pytest.mark.kernel_ipvs, pytest.mark.asyncio]

V4 = IPv4Address
V6 = IPv6Address


def tcp(addr: str, port: int) -> ServiceKey:
    return ServiceKey.for_address(IpProto.TCP, V4(addr) if ":" not in addr else V6(addr), port)


def udp(addr: str, port: int) -> ServiceKey:
    return ServiceKey.for_address(IpProto.UDP, V4(addr) if ":" not in addr else V6(addr), port)


def dest(addr: str, port: int, **kw: Any) -> Destination:
    return Destination(addr=V4(addr) if ":" not in addr else V6(addr), port=port, **kw)


SH_FLAGS = IP_VS_SVC_F_SCHED1 | IP_VS_SVC_F_SCHED2  # sh-fallback,sh-port / mh-fallback,mh-port

# One service per feature; destinations in add order.
FEATURES = IpvsTable(
    (
        VirtualService(
            key=tcp("10.0.0.1", 80),
            scheduler="rr",
            destinations=(
                dest("192.168.1.2", 80, fwd=FwdMethod.MASQ),
                dest(
                    "192.168.1.3",
                    8080,
                    weight=5,
                    fwd=FwdMethod.MASQ,
                    u_threshold=100,
                    l_threshold=10,
                ),
            ),
        ),
        VirtualService(
            key=tcp("10.0.0.2", 80),
            scheduler="wrr",
            destinations=(
                dest("192.168.1.2", 80, weight=0, fwd=FwdMethod.DROUTE),
                dest("192.168.1.4", 80, weight=3, fwd=FwdMethod.DROUTE),
                dest("192.168.1.5", 80, weight=7, fwd=FwdMethod.TUNNEL),
            ),
        ),
        VirtualService(
            key=udp("10.0.0.3", 53),
            scheduler="lc",
            persistence_timeout=300,
            netmask=24,
            destinations=(dest("192.168.1.2", 53, u_threshold=50),),
        ),
        VirtualService(key=tcp("10.0.0.4", 443), scheduler="wlc", persistence_timeout=60),
        VirtualService(
            key=tcp("10.0.0.5", 80),
            scheduler="sh",
            sched_flags=SH_FLAGS,
            destinations=(dest("192.168.1.2", 80, weight=2), dest("192.168.1.3", 80, weight=2)),
        ),
        VirtualService(key=tcp("10.0.0.6", 80), scheduler="dh", sched_flags=IP_VS_SVC_F_SCHED1),
        VirtualService(
            key=tcp("10.0.0.7", 80),
            scheduler="mh",
            sched_flags=SH_FLAGS,
            destinations=(dest("192.168.1.6", 80, weight=9),),
        ),
        VirtualService(
            key=ServiceKey.for_fwmark(1),
            scheduler="wrr",
            persistence_timeout=120,
            netmask=16,
            destinations=(dest("192.168.1.2", 0, fwd=FwdMethod.DROUTE),),
        ),
        VirtualService(
            key=ServiceKey.for_fwmark(2, family=AF_INET6),
            scheduler="rr",
            netmask=128,
            destinations=(dest("2001:db8:1::2", 0, fwd=FwdMethod.DROUTE),),
        ),
        VirtualService(
            key=tcp("2001:db8::10", 80),
            scheduler="wlc",
            persistence_timeout=600,
            netmask=64,
            destinations=(
                dest("2001:db8:1::2", 80, fwd=FwdMethod.MASQ, weight=4),
                dest("2001:db8:1::3", 8080, fwd=FwdMethod.DROUTE, l_threshold=5, u_threshold=9),
            ),
        ),
        VirtualService(
            key=udp("2001:db8::11", 53),
            scheduler="sh",
            sched_flags=IP_VS_SVC_F_SCHED2,
            netmask=128,
            one_packet=True,
            destinations=(dest("2001:db8:1::4", 53),),
        ),
        VirtualService(
            key=ServiceKey.for_address(IpProto.SCTP, V4("10.0.0.8"), 9999),
            scheduler="rr",
            destinations=(dest("192.168.1.7", 9999),),
        ),
        VirtualService(
            key=udp("10.0.0.9", 5060),
            scheduler="rr",
            persistence_timeout=30,
            pe_name="sip",
            destinations=(dest("192.168.1.8", 5060),),
        ),
    )
)


def as_status(table: IpvsTable) -> list[ServiceStatus]:
    """The desired table as a kernel snapshot would hold it (destinations newest first)."""
    return [
        ServiceStatus(
            service=svc, dests=tuple(DestStatus(dest=d) for d in reversed(svc.destinations))
        )
        for svc in table.services
    ]


def by_key(table: IpvsTable) -> dict[ServiceKey, VirtualService]:
    return {svc.key: svc for svc in table.services}


async def apply_table(kipvs: Any, desired: IpvsTable) -> int:
    ops = plan(desired, await kipvs.dump())
    await kipvs.apply(ops)
    return len(ops)


async def test_family_present() -> None:
    assert await kernel_ipvs_available()


async def test_every_feature_reads_back_identically(kipvs: Any) -> None:
    await apply_table(kipvs, FEATURES)

    # The kernel's own tool, from the kernel's answers, prints what hactl meant.
    assert ipvsadm("-Sn") == view.save(as_status(FEATURES))
    assert ipvsadm("-Ln", "--thresholds") == view.list_all(
        as_status(FEATURES), fmt=view.ListFormat.THRESHOLDS
    )
    # hactl's reading of the table is the table it applied: nothing left to do.
    dumped = await kipvs.dump()
    assert by_key(dumped) == by_key(FEATURES)
    assert plan(FEATURES, dumped) == ()
    # ipvsadm's listings equal hactl's rendering of KernelIpvs.services().
    services = await kipvs.services()
    size = await kipvs.conn_tab_size()
    for args, fmt in (
        (("-Ln",), view.ListFormat.DEFAULT),
        (("-Ln", "--stats"), view.ListFormat.STATS),
        (("-Ln", "--rate"), view.ListFormat.RATE),
        (("-Ln", "--persistent-conn"), view.ListFormat.PERSISTENT_CONN),
    ):
        assert ipvsadm(*args) == view.list_all(services, fmt=fmt, conn_table_size=size), args
    assert ipvsadm("-Ln", "--nosort") == view.list_all(services, nosort=True, conn_table_size=size)


async def test_apply_is_idempotent_and_converges(kipvs: Any) -> None:
    key = tcp("10.1.0.1", 80)
    first = VirtualService(key=key, scheduler="rr", destinations=(dest("192.168.2.1", 80),))
    ops = [AddService(VirtualService(key=key, scheduler="rr")), AddDest(key, first.destinations[0])]
    await kipvs.apply(ops)
    await kipvs.apply(ops)  # adding what exists succeeds
    # Adding again with other parameters makes the kernel's entry what was asked for.
    changed = dest("192.168.2.1", 80, weight=4, fwd=FwdMethod.DROUTE, u_threshold=7)
    await kipvs.apply(
        [
            AddService(VirtualService(key=key, scheduler="wlc", persistence_timeout=90, netmask=8)),
            AddDest(key, changed),
        ]
    )
    assert ipvsadm("-Sn") == (
        "-A -t 10.1.0.1:80 -s wlc -p 90 -M 255.0.0.0\n-a -t 10.1.0.1:80 -r 192.168.2.1:80 -g -w 4\n"
    )
    # Deleting what is missing succeeds: a missing destination, then a missing service.
    await kipvs.apply([DelDest(key, V4("192.168.2.9"), 80)])
    await kipvs.apply([DelDest(key, V4("192.168.2.1"), 80), DelService(key)])
    await kipvs.apply([DelDest(key, V4("192.168.2.1"), 80), DelService(key)])
    assert ipvsadm("-Sn") == ""
    assert kipvs.owned == frozenset()


async def test_refusals_become_kernel_errors(kipvs: Any) -> None:
    key = tcp("10.1.0.2", 80)
    with pytest.raises(NotSupported) as unknown:
        await kipvs.apply([AddService(VirtualService(key=key, scheduler="nosuch"))])
    assert (unknown.value.op, unknown.value.errno) == ("add_service", errno.ENOENT)
    assert "TCP 10.1.0.2:80" in str(unknown.value)

    with pytest.raises(KernelError) as missing:
        await kipvs.apply([EditService(VirtualService(key=key, scheduler="rr"))])
    assert (missing.value.op, missing.value.errno) == ("edit_service", errno.ESRCH)

    with pytest.raises(KernelError) as orphan:
        await kipvs.apply([AddDest(key, dest("192.168.2.1", 80))])
    assert (orphan.value.op, orphan.value.errno) == ("add_dest", errno.ESRCH)

    await kipvs.apply([AddService(VirtualService(key=key, scheduler="rr"))])
    with pytest.raises(KernelError) as nodest:
        await kipvs.apply([EditDest(key, dest("192.168.2.1", 80))])
    assert (nodest.value.op, nodest.value.errno) == ("edit_dest", errno.ENOENT)
    # The operations before a refusal stay applied.
    assert ipvsadm("-Sn") == "-A -t 10.1.0.2:80 -s rr\n"


async def test_ownership_and_flush_on_stop(kipvs: Any) -> None:
    ipvsadm("-A", "-t", "10.2.0.1:80", "-s", "rr")  # an operator's service
    ipvsadm("-A", "-t", "10.2.0.2:80", "-s", "rr")  # left by a previous run, still configured
    mine = tcp("10.2.0.3", 80)
    await kipvs.apply([AddService(VirtualService(key=mine, scheduler="wrr"))])
    assert set(by_key(await kipvs.dump())) == {mine}
    kipvs.adopt([tcp("10.2.0.2", 80)])
    assert set(by_key(await kipvs.dump())) == {mine, tcp("10.2.0.2", 80)}
    assert len(await kipvs.services()) == 3

    await kipvs.lvs_flush_on_stop()
    assert ipvsadm("-Sn") == "-A -t 10.2.0.1:80 -s rr\n"
    await kipvs.apply([AddService(VirtualService(key=mine, scheduler="wrr"))])
    await kipvs.lvs_flush_on_stop(everything=True)
    assert ipvsadm("-Sn") == ""


async def test_timeouts_set_and_read_over_netlink(kipvs: Any) -> None:
    wanted = IpvsTimeouts(tcp=1000, tcpfin=60, udp=200)
    await kipvs.set_timeouts(wanted)
    assert ipvsadm("-l", "--timeout") == view.list_timeout(wanted)
    assert await kipvs.get_timeouts() == wanted
    # 0 leaves a value as it is.
    await kipvs.set_timeouts(IpvsTimeouts(tcp=0, tcpfin=30, udp=0))
    assert await kipvs.get_timeouts() == IpvsTimeouts(tcp=1000, tcpfin=30, udp=200)
    # Set by ipvsadm, read by hactl.
    ipvsadm("--set", "901", "121", "301")
    assert await kipvs.get_timeouts() == IpvsTimeouts(tcp=901, tcpfin=121, udp=301)
    assert ipvsadm("-l", "--timeout") == "Timeout (tcp tcpfin udp): 901 121 301\n"


SYSCTL_DIR = Path("/proc/sys/net/ipv4/vs")


async def test_sysctl_block_written_to_proc(kipvs: Any) -> None:
    before = await kipvs.get_sysctl()
    wanted = IpvsSysctl(
        sync_threshold=4,
        sync_period=40,
        expire_nodest_conn=1,
        expire_quiescent_template=1,
        conn_reuse_mode=2,
        sloppy_tcp=1,
        sync_version=0,
        am_droprate=20,
        sync_qlen_max=0,  # the kernel's own default: never written
    )
    try:
        await kipvs.set_sysctl(wanted)
        assert (SYSCTL_DIR / "sync_threshold").read_text().split() == ["4", "40"]
        for name in (
            "expire_nodest_conn",
            "expire_quiescent_template",
            "conn_reuse_mode",
            "sloppy_tcp",
            "sync_version",
            "am_droprate",
        ):
            assert int((SYSCTL_DIR / name).read_text()) == getattr(wanted, name), name
        after = await kipvs.get_sysctl()
        assert after.sync_qlen_max == before.sync_qlen_max != 0
        assert after == replace(wanted, sync_qlen_max=after.sync_qlen_max)

        # keepalived's ipvs_sysctl: only the named tunables are written.
        await kipvs.write_sysctl(IpvsSysctl(sloppy_tcp=0, am_droprate=99), names=["sloppy_tcp"])
        assert int((SYSCTL_DIR / "sloppy_tcp").read_text()) == 0
        assert int((SYSCTL_DIR / "am_droprate").read_text()) == 20

        # The kernel refuses a threshold not below its period: KernelError with its errno.
        with pytest.raises(KernelError) as refused:
            await kipvs.write_sysctl(
                IpvsSysctl(sync_threshold=50, sync_period=40), names=["sync_threshold"]
            )
        assert refused.value.errno == errno.EINVAL
        assert refused.value.op == "sysctl net.ipv4.vs.sync_threshold"
    finally:
        await kipvs.set_sysctl(before)
