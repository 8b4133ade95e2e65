"""Persistence templates, quiescing and their interplay (spec §4, §5.1)."""

from __future__ import annotations

from ipaddress import IPv4Address

from engine_support import ACK, FIN, SYN, VIP, Client, dest, make_engine, rs, tcp_service

from hactl.ipvs.engine import DIR_IN, Action, PacketInfo
from hactl.ipvs.model import (
    AF_INET,
    IP_VS_CONN_F_TEMPLATE,
    Destination,
    IpProto,
    IpvsSysctl,
    ServiceKey,
    VirtualService,
)


def templates(engine: object, now: float) -> list[tuple[str, int, str, str, float]]:
    return [
        (str(c.caddr), c.vport, str(c.daddr), c.state, c.expires_in)
        for c in engine.connections(now=now)  # type: ignore[attr-defined]
        if c.flags & IP_VS_CONN_F_TEMPLATE
    ]


def open_and_close(c: Client, now: float) -> None:
    c.send(SYN, now=now)
    c.send(ACK, now=now)
    c.send(FIN, now=now + 1)


def test_persistent_client_keeps_reaching_quiesced_server_until_template_expires() -> None:
    """§4.5 / §5.1: weight 0 keeps a valid template's clients (expire_quiescent_template 0)."""
    svc = tcp_service(dest(1), dest(2), persistence=300)
    engine = make_engine(svc)
    c1 = Client(engine, "10.9.0.1", 40001)
    first = c1.send(SYN, now=0).daddr
    assert first == rs(2)  # rr starts at the newest destination
    c1.send(ACK, now=0)
    assert templates(engine, 0) == [("10.9.0.1", 80, str(rs(2)), "ASSURED", 300)]
    engine.edit_dest(svc.key, dest(2, weight=0), now=10)  # quiesce
    # A second connection from the same client, 100 s later: same server, template refreshed.
    c2 = Client(engine, "10.9.0.1", 40002)
    assert c2.send(SYN, now=100).daddr == rs(2)
    assert templates(engine, 100)[0][4] == 300
    # New clients avoid the quiesced server.
    assert Client(engine, "10.9.0.2", 1).send(SYN, now=100).daddr == rs(1)
    # Both connections of client 1 end; the template lives 300 s after the last new conn.
    c1.send(FIN, now=101)
    c2.send(ACK, now=101)
    c2.send(FIN, now=102)
    engine.handle_timer(now=102 + 120)  # the FIN_WAIT/CLOSE_WAIT entries are gone by now
    assert templates(engine, 222)[0][2] == str(rs(2))
    engine.handle_timer(now=399.9)
    c3 = Client(engine, "10.9.0.1", 40003)
    assert c3.send(SYN, now=399.9).daddr == rs(2)
    c3.send(ACK, now=399.9)
    # That third connection refreshed the template: 300 s from t=399.9, then, as the
    # connection is still there, 60 s more at a time (§4.3).
    engine.handle_timer(now=399.9 + 300)
    assert templates(engine, 699.9) == [("10.9.0.1", 80, str(rs(2)), "ASSURED", 60)]
    # Once the client is gone for good (its entry expires 900 s after its last packet),
    # the template goes at its next 60 s check and the client may land anywhere.
    engine.handle_timer(now=399.9 + 900)
    assert c3.state() is None
    engine.handle_timer(now=399.9 + 900 + 60)
    assert templates(engine, 1360) == []


def test_template_rearmed_for_60s_while_controlling_connections() -> None:
    """§4.3: a template due while it controls connections lives on 60 s at a time."""
    svc = tcp_service(dest(1), persistence=30)
    engine = make_engine(svc)
    c = Client(engine, "10.9.0.1", 40001)
    c.send(SYN, now=0)
    c.send(ACK, now=0)
    # The connection stays busy; the template's 30 s run out at t=30.
    c.send(ACK, now=25)
    engine.handle_timer(now=30)
    assert templates(engine, 30) == [("10.9.0.1", 80, str(rs(1)), "ASSURED", 60)]
    c.send(ACK, now=80)
    engine.handle_timer(now=90)
    assert templates(engine, 90)[0][4] == 60  # re-armed again at t=90
    # The connection goes idle and expires at 80 + 900; the template follows within 60 s.
    engine.handle_timer(now=980)
    assert c.state() is None
    assert len(templates(engine, 980)) == 1
    deadline = engine.next_deadline()
    assert deadline is not None
    engine.handle_timer(now=1050)
    assert templates(engine, 1050) == []
    assert engine.services()[0].dests[0].persistconns == 0


def test_expire_quiescent_template_reschedules_next_connection() -> None:
    """§4.2 step 2, §4.5: with expire_quiescent_template=1 the template is invalidated."""
    svc = tcp_service(dest(1), dest(2), persistence=300)
    engine = make_engine(svc, sysctl=IpvsSysctl(expire_quiescent_template=1))
    c1 = Client(engine, "10.9.0.1", 40001)
    assert c1.send(SYN, now=0).daddr == rs(2)
    c1.send(ACK, now=0)
    engine.edit_dest(svc.key, dest(2, weight=0), now=1)
    # The existing connection is untouched...
    assert c1.send(ACK, now=2).daddr == rs(2)
    # ...but the next one from that client goes elsewhere.
    v = Client(engine, "10.9.0.1", 40002).send(SYN, now=3)
    assert v.daddr == rs(1)
    tpl = templates(engine, 3)
    # The old template stays, invalidated (vport 0xffff), its timer not restarted (297 s
    # left of the 300 armed at t=0); the new one rules.
    assert ("10.9.0.1", 65535, str(rs(2)), "ASSURED", 297) in tpl
    assert ("10.9.0.1", 80, str(rs(1)), "NONE", 300) in tpl
    assert engine.template_count() == 1


def test_removed_destination_always_invalidates_template() -> None:
    """§4.5: a removed dest (not AVAILABLE) invalidates templates even with the default."""
    svc = tcp_service(dest(1), dest(2), persistence=300)
    engine = make_engine(svc)
    Client(engine, "10.9.0.1", 40001).send(SYN, now=0)
    engine.del_dest(svc.key, rs(2), 80, now=1)
    assert Client(engine, "10.9.0.1", 40002).send(SYN, now=2).daddr == rs(1)


def test_netmask_granularity_groups_clients() -> None:
    """§4.2: the template key is the client address masked by the netmask."""
    svc = tcp_service(dest(1), dest(2), persistence=300, netmask=24)
    engine = make_engine(svc)
    a = Client(engine, "10.9.0.1", 1000).send(SYN, now=0).daddr
    assert Client(engine, "10.9.0.200", 1000).send(SYN, now=1).daddr == a
    other = Client(engine, "10.9.1.1", 1000).send(SYN, now=2).daddr
    assert other != a
    assert sorted(t[0] for t in templates(engine, 2)) == ["10.9.0.0", "10.9.1.0"]


def test_port_zero_service_template_and_dest_port() -> None:
    """§4.2: a `-t VIP:0 -p` service: template vport 0, the conn keeps the client's port."""
    key = ServiceKey.for_address(IpProto.TCP, VIP, 0)
    svc = VirtualService(
        key=key, scheduler="rr", persistence_timeout=60,
        destinations=(Destination(addr=rs(1), port=0), Destination(addr=rs(2), port=0)),
    )
    engine = make_engine(svc)
    v = Client(engine, "10.9.0.1", 1000, vport=443).send(SYN, now=0)
    assert v.action is Action.FORWARD and v.dport == 443
    v2 = Client(engine, "10.9.0.1", 1001, vport=8080).send(SYN, now=1)
    assert v2.daddr == v.daddr and v2.dport == 8080  # one template for every port
    [tpl] = templates(engine, 1)
    assert tpl[1] == 0


def test_non_persistent_port_zero_service_rejects() -> None:
    """§6.0: port-0 services must be persistent; the kernel answers port unreachable."""
    key = ServiceKey.for_address(IpProto.TCP, VIP, 0)
    engine = make_engine(VirtualService(key=key, scheduler="rr",
                                        destinations=(Destination(addr=rs(1), port=0),)))
    v = Client(engine, "10.9.0.1", 1000, vport=443).send(SYN, now=0)
    assert v.action is Action.REJECT


def test_fwmark_service_template() -> None:
    """§4.2: a fwmark service's template has protocol 0 and the mark as virtual address."""
    key = ServiceKey.for_fwmark(1)
    svc = VirtualService(
        key=key, scheduler="rr", persistence_timeout=60,
        destinations=(Destination(addr=rs(1), port=0), Destination(addr=rs(2), port=0)),
    )
    engine = make_engine(svc)

    def syn(port: int, sport: int) -> PacketInfo:
        return PacketInfo(family=AF_INET, protocol=6, saddr=IPv4Address("10.9.0.1"),
                          sport=sport, daddr=VIP, dport=port, direction=DIR_IN,
                          tcp_flags=SYN, fwmark=1)

    v80 = engine.receive_packet(syn(80, 1000), now=0)
    v443 = engine.receive_packet(syn(443, 1001), now=0)
    assert v80.daddr == v443.daddr and (v80.dport, v443.dport) == (80, 443)
    [tpl] = [c for c in engine.connections(now=0) if c.flags & IP_VS_CONN_F_TEMPLATE]
    assert (tpl.protocol, str(tpl.vaddr), tpl.vport, tpl.dport, tpl.fwmark) == (
        IpProto.IP, "0.0.0.1", 0, 0, 1,
    )
    # A packet without the mark does not reach the fwmark service.
    nomark = PacketInfo(family=AF_INET, protocol=6, saddr=IPv4Address("10.9.0.1"),
                        sport=1002, daddr=VIP, dport=80, tcp_flags=SYN)
    assert engine.receive_packet(nomark, now=0).reason == "no_service"


def test_template_assured_by_established_and_udp_reply() -> None:
    """§4.4: ESTABLISHED (TCP) or a reply (UDP) marks the controlling template ASSURED."""
    from engine_support import udp_service

    engine = make_engine(tcp_service(dest(1), persistence=60),
                         udp_service(dest(1, port=53), persistence=60))
    c = Client(engine, "10.9.0.1", 1000)
    c.send(SYN, now=0)
    assert [t[3] for t in templates(engine, 0)] == ["NONE"]
    c.send(ACK, now=0)
    assert [t[3] for t in templates(engine, 0)] == ["ASSURED"]
    u = Client(engine, "10.9.0.1", 5000, vport=53, protocol=IpProto.UDP)
    u.send(0, now=0)
    states = sorted(t[3] for t in templates(engine, 0))
    assert states == ["ASSURED", "NONE"]
    u.reply(0, now=0)
    assert sorted(t[3] for t in templates(engine, 0)) == ["ASSURED", "ASSURED"]


def test_persistconns_counted_on_dest() -> None:
    svc = tcp_service(dest(1), persistence=60)
    engine = make_engine(svc)
    Client(engine, "10.9.0.1", 1).send(SYN, now=0)
    Client(engine, "10.9.0.2", 1).send(SYN, now=0)
    d = engine.services()[0].dests[0]
    assert (d.persistconns, d.activeconns, d.inactconns) == (2, 2, 0)
    assert engine.services()[0].stats.conns == 2  # templates are not counted (§9.1)


def test_rearmed_template_keeps_60s_timeout_for_later_connections() -> None:
    """§4.2 step 5 + §4.3: a template's timeout is set only at creation; after an expiry
    re-arm it is 60 s, and new connections refresh it for 60 s (kernel behaviour)."""
    svc = tcp_service(dest(1), persistence=300)
    engine = make_engine(svc)
    c = Client(engine, "10.9.0.1", 1000)
    c.send(SYN, now=0)
    c.send(ACK, now=0)
    engine.handle_timer(now=300)  # due while controlling the connection: 60 s more
    Client(engine, "10.9.0.1", 1001).send(SYN, now=310)
    assert templates(engine, 310)[0][4] == 60
