"""The sync decision (spec §2) and applying synced entries on a backup (spec §1.10)."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address

from engine_support import (
    ACK,
    FIN,
    SYN,
    SYNACK,
    VIP,
    Client,
    dest,
    make_engine,
    rs,
    tcp_service,
)

from hactl.ipvs.engine import Action, IpvsEngine, SyncApplied
from hactl.ipvs.events import SyncConnNeeded
from hactl.ipvs.model import (
    AF_INET,
    IP_VS_CONN_F_SYNC,
    IP_VS_CONN_F_TEMPLATE,
    FwdMethod,
    IpvsSysctl,
    SyncConn,
)


def synced(engine: IpvsEngine) -> list[SyncConn]:
    events = engine.pop_events()
    assert all(isinstance(e, SyncConnNeeded) for e in events), events
    return [e.conn for e in events if isinstance(e, SyncConnNeeded)]


def master(*services: object, sysctl: IpvsSysctl | None = None) -> IpvsEngine:
    engine = make_engine(*services, sysctl=sysctl)  # type: ignore[arg-type]
    engine.set_sync_state(master=True, backup=False)
    return engine


def test_connection_synced_on_3rd_53rd_103rd_packet_and_state_changes() -> None:
    """§2.3 with defaults (3, 50): packet count gate, ESTABLISHED not forced, FIN_WAIT/
    CLOSE_WAIT/TIME_WAIT/CLOSE forced at once; replies never trigger sync."""
    engine = master(tcp_service(dest(1)))
    c = Client(engine, "10.9.0.1", 40001)
    sent_at: list[tuple[int, str, int]] = []
    now = 0.0
    c.send(SYN, now=now)  # packet 1: SYN_RECV, never synced
    c.reply(SYNACK, now=now)
    c.send(ACK, now=now)  # packet 2: ESTABLISHED, 2 % 50 != 3
    assert synced(engine) == []
    for n in range(3, 111):
        c.send(ACK, now=now + n)
        for conn in synced(engine):
            sent_at.append((n, "ESTABLISHED", conn.timeout))
    assert sent_at == [(3, "ESTABLISHED", 900), (53, "ESTABLISHED", 900),
                       (103, "ESTABLISHED", 900)]
    c.send(FIN, now=200)  # packet 111: CLOSE_WAIT, forced
    [cw] = synced(engine)
    assert (cw.state, cw.timeout, cw.flags) == (7, 60, 0x100)
    c.reply(FIN, now=201)  # TIME_WAIT via a reply: not synced by itself
    assert synced(engine) == []
    c.send(ACK, now=202)  # packet 112 in TIME_WAIT: forced (state != old_state)
    [tw] = synced(engine)
    assert (tw.state, tw.timeout) == (5, 120)
    c.send(ACK, now=203)  # same state again, 113 % 50 != 3
    assert synced(engine) == []
    assert (tw.caddr, tw.cport, tw.vaddr, tw.vport, tw.daddr, tw.dport) == (
        IPv4Address("10.9.0.1"), 40001, VIP, 80, rs(1), 80,
    )


def test_dr_entry_flags_in_sync() -> None:
    """§1.7: DR established 0x83, DR in FIN_WAIT 0x183."""
    engine = master(tcp_service(dest(1, fwd=FwdMethod.DROUTE)))
    c = Client(engine, "10.9.0.1", 40001)
    for flags in (SYN, ACK, ACK):
        c.send(flags, now=0)
    [es] = synced(engine)
    assert es.flags == 0x83
    c.send(FIN, now=1)
    [fw] = synced(engine)
    assert (fw.state, fw.flags, fw.timeout) == (4, 0x183, 120)


def test_udp_synced_on_3rd_and_53rd_packet() -> None:
    from engine_support import udp_service

    from hactl.ipvs.model import IpProto

    engine = master(udp_service(dest(1, port=53)))
    c = Client(engine, "10.9.0.1", 5000, vport=53, protocol=IpProto.UDP)
    hits = []
    for n in range(1, 60):
        c.send(0, now=n)
        if synced(engine):
            hits.append(n)
    assert hits == [3, 53]


def test_sync_refresh_period_suppresses_close_resyncs() -> None:
    """§2.3 (R): within sync_refresh_period of the last sync the reported expiry has not
    moved enough, and with sync_retries 0 the entry is not sent again."""
    engine = master(tcp_service(dest(1)),
                    sysctl=IpvsSysctl(sync_threshold=3, sync_period=5, sync_refresh_period=10))
    c = Client(engine, "10.9.0.1", 40001)
    hits = []
    for n in range(1, 40):
        c.send(SYN if n == 1 else ACK, now=float(n))  # one packet per second
        if synced(engine):
            hits.append(n)
    # Period 5 allows 3, 8, 13, 18, 23, 28, 33, 38; the refresh rule keeps only those at
    # least 10 s after the previous send.
    assert hits == [3, 13, 23, 33]


def test_sync_retries_allow_resends() -> None:
    engine = master(tcp_service(dest(1)),
                    sysctl=IpvsSysctl(sync_threshold=3, sync_period=5, sync_refresh_period=10,
                                      sync_retries=1))
    c = Client(engine, "10.9.0.1", 40001)
    hits = []
    for n in range(1, 40):
        c.send(SYN if n == 1 else ACK, now=float(n))
        if synced(engine):
            hits.append(n)
    # After a full send (3), one retry is allowed inside the refresh window (8, once 1/8 of
    # the window has passed); the retry count lives in the low bits of sync_endtime, so the
    # next send waits until the expiry has moved by the refresh period (23), and so on.
    assert hits == [3, 8, 23, 28]


def test_template_synced_with_its_connections() -> None:
    """§2.4: every input packet of a controlled entry considers its template, and templates
    bypass the packet-count gate; re-arming at expiry syncs it with timeout 60 (§4.3)."""
    svc = tcp_service(dest(1), persistence=120)
    engine = master(svc)
    c = Client(engine, "10.9.0.1", 40001)
    c.send(SYN, now=0)
    [tpl] = synced(engine)
    assert tpl.flags & IP_VS_CONN_F_TEMPLATE and (tpl.cport, tpl.timeout, tpl.state) == (
        0, 120, 0,
    )
    c.send(ACK, now=0)
    [tpl2] = synced(engine)
    assert tpl2.state == 1  # ASSURED
    c.send(ACK, now=0)
    both = synced(engine)
    assert [bool(e.flags & IP_VS_CONN_F_TEMPLATE) for e in both] == [False, True]
    c.send(ACK, now=100)
    synced(engine)
    engine.handle_timer(now=120)  # template due while controlling the connection
    [rearm] = synced(engine)
    assert rearm.flags & IP_VS_CONN_F_TEMPLATE and rearm.timeout == 60


def test_sync_persist_mode_syncs_templates_only() -> None:
    engine = master(tcp_service(dest(1), persistence=120),
                    sysctl=IpvsSysctl(sync_persist_mode=1))
    c = Client(engine, "10.9.0.1", 40001)
    sent = []
    for flags in (SYN, ACK, ACK, ACK):
        c.send(flags, now=0)
        sent.extend(synced(engine))
    assert sent and all(e.flags & IP_VS_CONN_F_TEMPLATE for e in sent)


def test_no_sync_events_without_master_daemon() -> None:
    engine = make_engine(tcp_service(dest(1)))
    c = Client(engine, "10.9.0.1", 40001)
    for flags in (SYN, ACK, ACK, ACK):
        c.send(flags, now=0)
    assert engine.pop_events() == []


def test_apply_sync_then_takeover_keeps_clients_on_their_servers() -> None:
    """§1.10: the backup builds the entries (flags masked, SYNC set, its own dest config,
    counters), and after takeover an established client continues and a returning
    persistent client reaches the same real server."""
    svc = tcp_service(dest(1), dest(2), dest(3), persistence=600)
    active = master(svc)
    c = Client(active, "10.9.0.1", 40001)
    for flags in (SYN, ACK, ACK):
        assert c.send(flags, now=0).daddr == rs(3)
    entries = synced(active)
    assert len(entries) >= 2
    backup = make_engine(svc)
    backup.set_sync_state(master=False, backup=True)
    results = [backup.apply_sync(e, now=1) for e in entries]
    assert results[0] is SyncApplied.CREATED and SyncApplied.UPDATED in results
    [conn, tpl] = sorted(backup.connections(now=1), key=lambda s: s.cport)[::-1]
    assert (conn.state, conn.daddr, conn.flags & IP_VS_CONN_F_SYNC) == (
        "ESTABLISHED", rs(3), IP_VS_CONN_F_SYNC,
    )
    assert (tpl.state, tpl.daddr, tpl.cport, tpl.expires_in) == ("ASSURED", rs(3), 0, 600)
    d3 = next(d for d in backup.services()[0].dests if d.dest.addr == rs(3))
    assert (d3.activeconns, d3.inactconns, d3.persistconns) == (1, 0, 1)
    assert backup.services()[0].stats.conns == 0  # sync does not count statistics
    # Takeover: the backup now receives the traffic.
    b = Client(backup, "10.9.0.1", 40001)
    assert b.send(ACK, now=5).daddr == rs(3)  # mid-stream, no sloppy_tcp needed
    # The backup's rr has not scheduled anything yet: fresh clients get rs(3), rs(2)...
    assert Client(backup, "10.9.0.2", 40002).send(SYN, now=6).daddr == rs(3)
    assert Client(backup, "10.9.0.3", 40002).send(SYN, now=6).daddr == rs(2)
    # ...while the returning persistent client keeps rs(3), whatever rr would say (rs(1)).
    assert Client(backup, "10.9.0.1", 40002).send(SYN, now=7).daddr == rs(3)
    assert Client(backup, "10.9.0.4", 40002).send(SYN, now=7).daddr == rs(1)


def test_apply_sync_uses_backup_forwarding_method() -> None:
    """§1.10 step 3: a bound synced entry takes the backup dest's method and NOOUTPUT."""
    entry = SyncConn(family=AF_INET, protocol=6, flags=0x0, state=1, cport=1000, vport=80,
                     dport=80, fwmark=0, timeout=900, caddr=IPv4Address("10.9.0.1"),
                     vaddr=VIP, daddr=rs(1))
    backup = make_engine(tcp_service(dest(1, fwd=FwdMethod.DROUTE)))
    assert backup.apply_sync(entry, now=0) is SyncApplied.CREATED
    [conn] = backup.connections(now=0)
    assert conn.flags == 0x83 | IP_VS_CONN_F_SYNC


def test_apply_sync_replacement_and_stale_notice() -> None:
    base = SyncConn(family=AF_INET, protocol=6, flags=0x0, state=1, cport=1000, vport=80,
                    dport=80, fwmark=0, timeout=900, caddr=IPv4Address("10.9.0.1"),
                    vaddr=VIP, daddr=rs(1))
    backup = make_engine(tcp_service(dest(1), dest(2)))
    backup.apply_sync(base, now=0)
    moved = dataclasses.replace(base, daddr=rs(2))
    stale = dataclasses.replace(moved, daddr=rs(1), flags=0x100, state=4)
    assert backup.apply_sync(moved, now=1) is SyncApplied.CREATED  # replaces the entry
    assert backup.apply_sync(stale, now=2) is SyncApplied.IGNORED_STALE
    [conn] = backup.connections(now=2)
    assert conn.daddr == rs(2) and conn.state == "ESTABLISHED"
    # An update for the same real server moves the entry to InActConn (INACTIVE bit).
    fin = dataclasses.replace(moved, flags=0x100, state=7, timeout=60)
    assert backup.apply_sync(fin, now=3) is SyncApplied.UPDATED
    d2 = next(d for d in backup.services()[0].dests if d.dest.addr == rs(2))
    assert (d2.activeconns, d2.inactconns) == (0, 1)
    assert next(iter(backup.connections(now=3))).expires_in == 60


def test_apply_sync_rejects_bad_protocol_and_state() -> None:
    backup = make_engine(tcp_service(dest(1)))
    base = SyncConn(family=AF_INET, protocol=6, flags=0, state=11, cport=1, vport=80, dport=80,
                    fwmark=0, timeout=0, caddr=IPv4Address("10.9.0.1"), vaddr=VIP,
                    daddr=rs(1))
    assert backup.apply_sync(base, now=0) is SyncApplied.SKIPPED_STATE
    assert backup.apply_sync(dataclasses.replace(base, protocol=50, state=0), now=0) is (
        SyncApplied.SKIPPED_PROTOCOL
    )


def test_apply_sync_unbound_entry_binds_later_and_default_timeouts() -> None:
    """§1.10: without a matching service the entry is kept unbound and still forwarded;
    timeout 0 means the protocol table (180 s for templates); binding is retried."""
    entry = SyncConn(family=AF_INET, protocol=6, flags=0, state=1, cport=1000, vport=80,
                     dport=8080, fwmark=0, timeout=0, caddr=IPv4Address("10.9.0.1"),
                     vaddr=VIP, daddr=rs(7))
    backup = make_engine()
    assert backup.apply_sync(entry, now=0) is SyncApplied.CREATED
    [conn] = backup.connections(now=0)
    assert (conn.daddr, conn.dport, conn.expires_in) == (rs(7), 8080, 900)
    c = Client(backup, "10.9.0.1", 1000)
    v = c.send(ACK, now=1)
    assert (v.action, v.daddr, v.dport) == (Action.FORWARD, rs(7), 8080)
    svc = tcp_service(dest(7, port=8080))
    backup.add_service(svc, now=2)
    backup.apply_sync(entry, now=3)
    assert backup.services()[0].dests[0].activeconns == 1
    tpl = dataclasses.replace(entry, flags=IP_VS_CONN_F_TEMPLATE, cport=0, state=0)
    backup.apply_sync(tpl, now=4)
    assert {s.expires_in for s in backup.connections(now=4) if s.cport == 0} == {180}


def test_backup_only_disables_the_director() -> None:
    engine = make_engine(tcp_service(dest(1)), sysctl=IpvsSysctl(backup_only=1))
    c = Client(engine, "10.9.0.1", 1000)
    engine.set_sync_state(master=False, backup=True)
    assert c.send(SYN, now=0).reason == "backup_only"
    engine.set_sync_state(master=False, backup=False)
    assert c.send(SYN, now=0).action is Action.FORWARD


def test_sync_version_0_skips_ipv6_and_keeps_all_flags() -> None:
    engine = master(tcp_service(dest(1)), sysctl=IpvsSysctl(sync_version=0))
    c = Client(engine, "10.9.0.1", 1000)
    for flags in (SYN, ACK, ACK):
        c.send(flags, now=0)
    [entry] = synced(engine)
    backup = make_engine(tcp_service(dest(1)))
    one_packet = dataclasses.replace(entry, flags=entry.flags | 0x2000)
    backup.apply_sync(one_packet, now=0, version=0)
    [conn] = backup.connections(now=0)
    assert conn.flags & 0x2000  # v0 does not apply BACKUP_MASK (§1.9)
