"""The engine's contract with the schedulers and the model: scheduler lifetime across service
edits, sysctls the schedulers read, the family-aware persistence netmask, package exports."""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
from ipaddress import IPv4Address, IPv6Address

from engine_support import ACK, SYN, SYNACK, Client, dest, make_engine, rs, tcp_service

import hactl.ipvs
from hactl.ipvs import ipvsadm
from hactl.ipvs.engine import DIR_IN, IpvsEngine, PacketInfo
from hactl.ipvs.model import (
    AF_INET6,
    IpProto,
    IpvsSysctl,
    IpvsTimeouts,
    ServiceKey,
    VirtualService,
)
from hactl.ipvs.schedulers import (
    IP_VS_SVC_F_SCHED1,
    SchedPacket,
    make_scheduler,
)

# --------------------------------------------------------------------------------------------
# Service edits: the scheduler is kept unless its name changes


def test_flags_only_edit_keeps_the_rr_cursor() -> None:
    svc = tcp_service(dest(1), dest(2), dest(3), sched="rr")
    engine = make_engine(svc)
    assert Client(engine, "10.9.0.1", 1).send(SYN, now=1).daddr == rs(3)
    assert Client(engine, "10.9.0.1", 2).send(SYN, now=1).daddr == rs(2)
    engine.edit_service(dataclasses.replace(svc, sched_flags=IP_VS_SVC_F_SCHED1), now=2)
    # ip_vs_edit_service: same scheduler, new flags; the cursor stays on rs(2).
    assert Client(engine, "10.9.0.1", 3).send(SYN, now=3).daddr == rs(1)
    assert engine.services()[0].service.sched_flags == IP_VS_SVC_F_SCHED1


def test_scheduler_change_starts_a_new_scheduler() -> None:
    svc = tcp_service(dest(1), dest(2), dest(3), sched="rr")
    engine = make_engine(svc)
    assert Client(engine, "10.9.0.1", 1).send(SYN, now=1).daddr == rs(3)
    engine.edit_service(dataclasses.replace(svc, scheduler="wrr"), now=2)
    engine.edit_service(svc, now=2)  # back to rr: a fresh cursor at the list head
    assert Client(engine, "10.9.0.1", 2).send(SYN, now=3).daddr == rs(3)


# --------------------------------------------------------------------------------------------
# lblc: GC timer from service creation, expiration sysctl followed live
#
# lblc caches the destination per *destination address* (the VIP here). The scenario keeps
# one established connection on the cached server; a later client then reaches the cached
# server while the cache entry lives, and wlc's choice (the idle server) once the full GC
# (every 30th 60 s run, counted from service creation) has dropped it.


def _lblc_engine(*, created: float, sysctl: IpvsSysctl | None = None) -> IpvsEngine:
    svc = tcp_service(dest(1, weight=2), dest(2, weight=2), sched="lblc")
    engine = make_engine(svc, sysctl=sysctl, now=created)
    engine.set_timeouts(IpvsTimeouts(tcp=7200, tcpfin=0, udp=0))
    c = Client(engine, "10.9.0.1", 1000)
    assert c.send(SYN, now=created + 1).daddr == rs(2)  # cached from here on
    c.reply(SYNACK, now=created + 1)
    c.send(ACK, now=created + 1)  # ESTABLISHED for 2 hours: past the full GC run
    return engine


def _after_gc(engine: IpvsEngine, now: float) -> IPv4Address | IPv6Address | None:
    engine.handle_timer(now=now)
    return Client(engine, "10.9.0.2", 2000).send(SYN, now=now).daddr


def test_lblc_entry_survives_full_gc_with_default_expiration() -> None:
    engine = _lblc_engine(created=0.0)
    assert _after_gc(engine, 1800.5) == rs(2)


def test_lblc_expiration_sysctl_change_reaches_an_existing_scheduler() -> None:
    engine = _lblc_engine(created=0.0)
    engine.set_sysctl(dataclasses.replace(engine.sysctl(), lblc_expiration=600))
    assert _after_gc(engine, 1800.5) == rs(1)  # the full GC run at 1800 s dropped it


def test_lblc_gc_counts_from_service_creation() -> None:
    sysctl = IpvsSysctl(lblc_expiration=600)
    engine = _lblc_engine(created=1000.0, sysctl=sysctl)
    # Created at 1000 s: the 30th GC run (the full one) is at 2800 s, not at 1800 s.
    assert _after_gc(engine, 1900.5) == rs(2)
    engine = _lblc_engine(created=1000.0, sysctl=sysctl)
    assert _after_gc(engine, 2800.5) == rs(1)


def test_set_expiration_applies_to_lblc_and_lblcr_only() -> None:
    pkt = SchedPacket(2, 6, IPv4Address("10.9.0.1"), 1, IPv4Address("10.0.0.1"), 80)

    class D:
        def __init__(self, n: int) -> None:
            self.addr, self.port, self.weight = rs(n), 80, 1
            self.activeconns = self.inactconns = self.persistconns = 0
            self.overloaded = False

    for name in ("lblc", "lblcr"):
        s = make_scheduler(name, sched_flags=0, rng=random.Random(1), now=0.0)
        dests = [D(1)]
        s.update_dests(dests)
        assert s.schedule(dests, pkt, now=1.0) is dests[0]
        kw = {"lblc_expiration": 86400.0, "lblcr_expiration": 86400.0}
        kw[f"{name}_expiration"] = 100.0
        s.set_expiration(**kw)
        s.handle_timer(now=1800.0)  # the full GC run
        assert s.cached(pkt.daddr) == ()  # type: ignore[attr-defined]
        other = "lblcr" if name == "lblc" else "lblc"
        s = make_scheduler(name, sched_flags=0, rng=random.Random(1), now=0.0)
        s.update_dests(dests)
        s.schedule(dests, pkt, now=1.0)
        s.set_expiration(**{f"{name}_expiration": 86400.0, f"{other}_expiration": 100.0})
        s.handle_timer(now=1800.0)
        assert s.cached(pkt.daddr) == (dests[0],)  # type: ignore[attr-defined]
    rr = make_scheduler("rr", sched_flags=0, rng=random.Random(1))
    rr.set_expiration(lblc_expiration=1.0, lblcr_expiration=1.0)  # accepted, no effect


# --------------------------------------------------------------------------------------------
# Persistence netmask: per client address by default, for either family

V6_VIP = IPv6Address("2001:db8::100")


def _v6_service(**kw: object) -> VirtualService:
    return VirtualService(
        key=ServiceKey.for_address(IpProto.TCP, V6_VIP, 80),
        scheduler="rr",
        persistence_timeout=300,
        destinations=(dest(1), dest(2)),
        **kw,  # type: ignore[arg-type]
    )


def test_default_netmask_is_the_family_host_prefix() -> None:
    v4 = VirtualService(key=ServiceKey.for_address(IpProto.TCP, IPv4Address("10.0.0.1"), 80))
    assert v4.netmask == 32
    v6 = VirtualService(key=ServiceKey.for_address(IpProto.TCP, V6_VIP, 80))
    assert v6.netmask == 128
    assert VirtualService(key=ServiceKey.for_fwmark(7, family=AF_INET6)).netmask == 128
    # A default service equals one read back with the explicit prefix (no plan churn).
    assert v6 == dataclasses.replace(v6, netmask=128)
    assert _v6_service(netmask=64).netmask == 64


def test_ipv6_persistence_is_per_client_address_by_default() -> None:
    engine = make_engine(_v6_service())
    assert engine.services()[0].service == _v6_service()

    def syn(client: str, port: int) -> object:
        pkt = PacketInfo(AF_INET6, 6, IPv6Address(client), port, V6_VIP, 80, DIR_IN, SYN)
        return engine.receive_packet(pkt, now=1.0).daddr

    # Two clients of the same /32 (the old default granularity) get their own templates.
    assert syn("2001:db8::1", 1) == rs(2)
    assert syn("2001:db8::2", 1) == rs(1)
    assert syn("2001:db8::1", 2) == rs(2)
    assert " mask " not in ipvsadm.list_all(engine.services())
    assert "-M" not in ipvsadm.save(engine.services())


# --------------------------------------------------------------------------------------------
# Package exports


def test_package_exports_resolve_and_keep_the_kernel_adapter_out() -> None:
    code = (
        "import sys, hactl.ipvs as m\n"
        "assert 'hactl.ipvs.engine' not in sys.modules\n"
        "[getattr(m, n) for n in m.__all__]\n"
        "assert 'hactl.ipvs.kernel' not in sys.modules and 'pyroute2' not in sys.modules\n"
        "from hactl.ipvs import IpvsEngine, plan\n"
        "assert plan.__name__ == 'hactl.ipvs.plan'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert hactl.ipvs.IpvsEngine is IpvsEngine
    assert set(hactl.ipvs.__all__) <= set(dir(hactl.ipvs))
