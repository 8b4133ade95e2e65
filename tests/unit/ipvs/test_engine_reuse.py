"""Client port reuse: conn_reuse_mode and the conntrack SYN drop (spec §5.3, §5.4)."""

from __future__ import annotations

import pytest
from engine_support import ACK, FIN, SYN, SYNACK, Client, dest, make_engine, rs, tcp_service

from hactl.ipvs.engine import Action, EngineOptions
from hactl.ipvs.events import ConnExpired, ExpiryReason
from hactl.ipvs.model import IP_VS_CONN_F_NFCT, FwdMethod, IpvsSysctl


def nat_connection_to_time_wait(c: Client, now: float) -> None:
    c.send(SYN, now=now)
    c.reply(SYNACK, now=now)
    c.send(ACK, now=now)
    c.send(FIN, now=now + 1)
    c.reply(FIN, now=now + 1)
    c.send(ACK, now=now + 1)
    assert c.state() == "TIME_WAIT"


def dr_connection_to_fin_wait(c: Client, now: float) -> None:
    c.send(SYN, now=now)
    c.send(ACK, now=now)
    c.send(FIN, now=now + 1)
    assert c.state() == "FIN_WAIT"


@pytest.mark.parametrize(("mode", "expected"), [(0, 2), (1, 1), (2, 1)])
def test_time_wait_port_reuse(mode: int, expected: int) -> None:
    """TIME_WAIT reuse: mode 0 keeps the old entry (and its real server, even quiesced);
    modes 1 and 2 expire it and schedule the SYN as a new connection."""
    svc = tcp_service(dest(1), dest(2))
    engine = make_engine(svc, sysctl=IpvsSysctl(conn_reuse_mode=mode))
    c = Client(engine, "10.9.0.1", 40001)
    nat_connection_to_time_wait(c, 0)
    engine.edit_dest(svc.key, dest(2, weight=0), now=5)  # drain the old server
    v = c.send(SYN, now=10)
    assert v.action is Action.FORWARD and v.daddr == rs(expected)
    assert c.state() == "SYN_RECV"
    stats = {d.dest.addr: d.stats.conns for d in engine.services()[0].dests}
    assert stats[rs(1)] == (1 if mode else 0)  # a rescheduled SYN is a new connection


@pytest.mark.parametrize(("mode", "expected"), [(0, 2), (1, 2), (2, 1)])
def test_dr_fin_wait_port_reuse(mode: int, expected: int) -> None:
    """DR/TUN entries end in FIN_WAIT: only bit 2 reschedules a SYN reusing them (§3.3)."""
    svc = tcp_service(dest(1, fwd=FwdMethod.DROUTE), dest(2, fwd=FwdMethod.DROUTE))
    engine = make_engine(svc, sysctl=IpvsSysctl(conn_reuse_mode=mode))
    c = Client(engine, "10.9.0.1", 40001)
    dr_connection_to_fin_wait(c, 0)
    engine.edit_dest(svc.key, dest(2, weight=0, fwd=FwdMethod.DROUTE), now=5)
    assert c.send(SYN, now=10).daddr == rs(expected)


def test_established_entry_is_never_reused() -> None:
    svc = tcp_service(dest(1), dest(2))
    engine = make_engine(svc, sysctl=IpvsSysctl(conn_reuse_mode=1))
    c = Client(engine, "10.9.0.1", 40001)
    c.send(SYN, now=0)
    c.send(ACK, now=0)
    assert c.send(SYN, now=1).daddr == rs(2)
    assert engine.conn_count() == 1


def test_persistent_entry_is_not_rescheduled() -> None:
    """Controlled entries are never rescheduled on reuse (current `ip_vs_in_hook`)."""
    svc = tcp_service(dest(1), dest(2), persistence=300)
    engine = make_engine(svc, sysctl=IpvsSysctl(conn_reuse_mode=1))
    c = Client(engine, "10.9.0.1", 40001)
    nat_connection_to_time_wait(c, 0)
    engine.edit_dest(svc.key, dest(2, weight=0), now=5)
    assert c.send(SYN, now=10).daddr == rs(2)


def test_conntrack_on_drops_first_syn_then_retransmission_goes_through() -> None:
    """§5.4: with conntrack=1 the reused entry still holds its (confirmed) conntrack: the
    SYN is dropped and the old entry expired; the client's retransmission 1 s later is
    scheduled as a new connection. This is the "1-second connect delay"."""
    svc = tcp_service(dest(1), dest(2))
    engine = make_engine(svc, sysctl=IpvsSysctl(conn_reuse_mode=1, conntrack=1))
    c = Client(engine, "10.9.0.1", 40001)
    nat_connection_to_time_wait(c, 0)
    cp = engine.find_conn(6, c.addr, c.port, c.vip, 80)
    assert cp is not None and cp.flags & IP_VS_CONN_F_NFCT
    engine.edit_dest(svc.key, dest(2, weight=0), now=5)
    v = c.send(SYN, now=10)
    assert v.action is Action.DROP and v.reason == "conntrack_reuse"
    assert c.state() is None
    retry = c.send(SYN, now=11)  # the client's initial RTO
    assert retry.action is Action.FORWARD and retry.daddr == rs(1)
    assert engine.counters()["conntrack_reuse"] == 1


def test_conntrack_on_with_mode_0_keeps_old_entry() -> None:
    """kube-proxy's old workaround: conn_reuse_mode=0 avoids the drop, and the reused port
    sticks to the old (here drained) server."""
    svc = tcp_service(dest(1), dest(2))
    engine = make_engine(svc, sysctl=IpvsSysctl(conn_reuse_mode=0, conntrack=1))
    c = Client(engine, "10.9.0.1", 40001)
    nat_connection_to_time_wait(c, 0)
    engine.edit_dest(svc.key, dest(2, weight=0), now=5)
    v = c.send(SYN, now=10)
    assert v.action is Action.FORWARD and v.daddr == rs(2)


@pytest.mark.parametrize("fast_path", [True, False])
def test_time_wait_reuse_reports_the_old_entry_once(fast_path: bool) -> None:
    """The reused entry is reported as one ConnExpired (reason REUSE), equal to one built by
    its constructor, on the fast path as on the general one; the new entry is a new object
    and the destination's connection counters hold the new entry only."""
    svc = tcp_service(dest(1))
    engine = make_engine(svc, options=EngineOptions(report_expiry=True, fast_path=fast_path))
    c = Client(engine, "10.9.0.1", 40001)
    nat_connection_to_time_wait(c, 0)
    old = c.send(ACK, now=2).conn
    assert engine.pop_events() == []
    v = c.send(SYN, now=10)
    assert v.action is Action.FORWARD and v.conn is not old
    events = engine.pop_events()
    assert events == [ConnExpired(old, ExpiryReason.REUSE)]
    assert type(events[0]) is ConnExpired and hash(events[0]) == hash(events[0])
    assert c.state() == "SYN_RECV" and engine.conn_count() == 1
    (d,) = engine.services()[0].dests
    assert (d.activeconns, d.inactconns, d.stats.conns) == (1, 0, 2)  # SYN_RECV is active
