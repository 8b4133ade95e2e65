"""Removing destinations: expire_nodest_conn, the trash, re-adding (spec §5.1, §5.2)."""

from __future__ import annotations

import errno

import pytest
from engine_support import ACK, SYN, Client, dest, make_engine, rs, tcp_service

from hactl.errors import KernelError
from hactl.ipvs.engine import Action, EngineOptions
from hactl.ipvs.events import ConnExpired, DestFreed, ExpiryReason
from hactl.ipvs.model import IpvsSysctl


def established(c: Client, now: float) -> None:
    c.send(SYN, now=now)
    c.send(ACK, now=now)


def test_removed_dest_expire_nodest_conn_0_drops_packets_until_timeout() -> None:
    """§5.2 default: packets of the removed dest's entries are silently dropped."""
    svc = tcp_service(dest(1), dest(2))
    engine = make_engine(svc)
    c = Client(engine, "10.9.0.1", 40001)
    established(c, 0)
    assert c.send(ACK, now=1).daddr == rs(2)
    engine.del_dest(svc.key, rs(2), 80, now=2)
    v = c.send(ACK, now=3)
    assert v.action is Action.DROP and v.reason == "dest_unavailable"
    assert c.state() == "ESTABLISHED"  # the entry stays, pointing at the trashed dest
    # A dropped packet does not refresh the entry: it expires 900 s after t=1.
    engine.handle_timer(now=901)
    assert c.state() is None
    # A new SYN from the same socket is now a new connection.
    assert c.send(SYN, now=902).daddr == rs(1)
    assert engine.counters()["dest_unavailable"] == 1


def test_removed_dest_expire_nodest_conn_1_flushes_and_reschedules() -> None:
    """§5.2 with expire_nodest_conn=1: deletion flushes the dest's entries; a packet of
    such an entry is scheduled anew (current kernels)."""
    svc = tcp_service(dest(1), dest(2))
    engine = make_engine(svc, sysctl=IpvsSysctl(expire_nodest_conn=1),
                         options=EngineOptions(report_expiry=True))
    c = Client(engine, "10.9.0.1", 40001)
    other = Client(engine, "10.9.0.2", 40001)
    established(c, 0)  # -> rs(2)
    established(other, 0)  # -> rs(1)
    handle = engine.find_conn(6, c.addr, c.port, c.vip, 80)
    engine.del_dest(svc.key, rs(2), 80, now=2)
    assert c.state() is None and other.state() == "ESTABLISHED"
    assert engine.pop_events() == [ConnExpired(handle, ExpiryReason.NODEST)]
    # The client's next segment is a mid-stream ACK: it cannot open an entry (§5.5)...
    assert c.send(ACK, now=3).action is Action.PASS
    # ...but with sloppy_tcp (a director picking up flows) it lands on a live server.
    engine.set_sysctl(IpvsSysctl(expire_nodest_conn=1, sloppy_tcp=1))
    assert c.send(ACK, now=4).daddr == rs(1)


def test_expire_nodest_conn_packet_path_without_flush() -> None:
    """The packet-path half of §5.2: an entry of an unavailable dest found by a packet is
    expired and the packet scheduled (the flush ran before the sysctl was switched on)."""
    svc = tcp_service(dest(1), dest(2))
    engine = make_engine(svc)
    c = Client(engine, "10.9.0.1", 40001)
    c.send(SYN, now=0)
    engine.del_dest(svc.key, rs(2), 80, now=1)
    engine.set_sysctl(IpvsSysctl(expire_nodest_conn=1))
    v = c.send(SYN, now=2)  # a retransmitted SYN
    assert v.action is Action.FORWARD and v.daddr == rs(1)


def test_quiesced_dest_with_expire_nodest_conn_reschedules_new_syn() -> None:
    """§5.1 special case: a SYN matching an entry of a weight-0 dest is rescheduled when
    expire_nodest_conn=1, whatever conn_reuse_mode says."""
    svc = tcp_service(dest(1), dest(2))
    engine = make_engine(svc, sysctl=IpvsSysctl(expire_nodest_conn=1, conn_reuse_mode=0))
    c = Client(engine, "10.9.0.1", 40001)
    established(c, 0)
    engine.edit_dest(svc.key, dest(2, weight=0), now=1)
    assert c.send(ACK, now=2).daddr == rs(2)  # existing traffic continues
    assert c.send(SYN, now=3).daddr == rs(1)


def test_readding_removed_dest_resurrects_it_from_the_trash() -> None:
    """§5.2: same addr:port on the same service within the trash period comes back with its
    counters, statistics and connections, and forwards again at once."""
    svc = tcp_service(dest(1), dest(2))
    engine = make_engine(svc)
    c = Client(engine, "10.9.0.1", 40001)
    established(c, 0)
    engine.del_dest(svc.key, rs(2), 80, now=1)
    assert c.send(ACK, now=2).action is Action.DROP
    engine.add_dest(svc.key, dest(2, weight=5), now=30)
    assert c.send(ACK, now=31).daddr == rs(2)
    d2 = next(d for d in engine.services()[0].dests if d.dest.addr == rs(2))
    assert d2.activeconns == 1 and d2.dest.weight == 5 and d2.stats.conns == 1
    assert engine.services()[0].dests[0].dest.addr == rs(2)  # back at the list head


def test_trash_frees_unreferenced_dest_after_period() -> None:
    """§5.2: the trash timer runs every 60 s; an unreferenced dest is freed 120 s after it
    is first seen unreferenced (so 120..180 s after deletion)."""
    svc = tcp_service(dest(1), dest(2))
    engine = make_engine(svc)
    engine.del_dest(svc.key, rs(2), 80, now=0)
    assert engine.next_deadline() == 2.0  # the estimator first
    engine.handle_timer(now=60)  # first trash run: stamps idle_start = 60
    engine.handle_timer(now=120)
    assert engine.pop_events() == []
    engine.handle_timer(now=180)  # 120 s after the stamp
    assert engine.pop_events() == [DestFreed(svc.key, rs(2), 80)]
    # Re-adding now creates a fresh dest.
    engine.add_dest(svc.key, dest(2), now=200)
    d2 = engine.services()[0].dests[0]
    assert d2.dest.addr == rs(2) and d2.stats.conns == 0


def test_trash_keeps_referenced_dest() -> None:
    svc = tcp_service(dest(1))
    engine = make_engine(svc)
    c = Client(engine, "10.9.0.1", 1)
    established(c, 0)
    engine.del_dest(svc.key, rs(1), 80, now=0)
    for t in range(60, 900, 60):
        engine.handle_timer(now=t)
    assert engine.pop_events() == []
    # t=900: the connection expires, then the trash run of that instant finds the dest
    # unreferenced and stamps it; it is freed by the first run 120 s later.
    engine.handle_timer(now=900)
    engine.handle_timer(now=960)
    assert engine.pop_events() == []
    engine.handle_timer(now=1020)
    assert engine.pop_events() == [DestFreed(svc.key, rs(1), 80)]


def test_delete_service_trashes_dests_and_keeps_connections() -> None:
    svc = tcp_service(dest(1))
    engine = make_engine(svc)
    c = Client(engine, "10.9.0.1", 1)
    established(c, 0)
    engine.del_service(svc.key, now=1)
    assert engine.services() == ()
    assert c.state() == "ESTABLISHED"
    assert c.send(ACK, now=2).action is Action.DROP
    # Re-creating the service and re-adding the dest brings the same dest object back.
    engine.add_service(svc, now=3)
    assert c.send(ACK, now=4).daddr == rs(1)
    assert engine.services()[0].dests[0].activeconns == 1


def test_config_errors_carry_errno() -> None:
    svc = tcp_service(dest(1))
    engine = make_engine(svc)
    with pytest.raises(KernelError) as info:
        engine.add_service(svc, now=0)
    assert info.value.errno == errno.EEXIST
    with pytest.raises(KernelError) as info:
        engine.add_dest(svc.key, dest(1), now=0)
    assert info.value.errno == errno.EEXIST
    with pytest.raises(KernelError) as info:
        engine.del_dest(svc.key, rs(9), 80, now=0)
    assert info.value.errno == errno.ENOENT
    with pytest.raises(KernelError) as info:
        engine.add_dest(svc.key, dest(3, u=5, l=10), now=0)
    assert info.value.errno == errno.ERANGE
    with pytest.raises(KernelError) as info:
        engine.add_service(tcp_service(port=81, sched="nope"), now=0)
    assert info.value.errno == errno.ENOENT
