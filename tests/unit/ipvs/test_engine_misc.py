"""Thresholds (§6.1), UDP/SCTP/one-packet (§3.4, §4.6), defense (§7.1), estimator (§8.8)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from engine_support import (
    ACK,
    SYN,
    VIP,
    Client,
    dest,
    make_engine,
    rs,
    tcp_service,
    udp_service,
)

from hactl.ipvs.engine import DIR_IN, DIR_OUT, Action, PacketInfo
from hactl.ipvs.events import DefenseChanged
from hactl.ipvs.model import (
    AF_INET,
    AF_INET6,
    Destination,
    IpProto,
    IpvsSysctl,
    IpvsTimeouts,
    ServiceKey,
    VirtualService,
)
from hactl.ipvs.proto import SCTP_CHUNK_INIT


def dest_status(engine: object, n: int) -> object:
    for status in engine.services()[0].dests:  # type: ignore[attr-defined]
        if status.dest.addr == rs(n):
            return status
    raise AssertionError(n)


def test_upper_threshold_sets_overload_and_lower_threshold_clears() -> None:
    """§6.1: OVERLOAD at bind when active+inactive >= u_threshold; cleared at unbind below
    l_threshold; overloaded dests are skipped by the scheduler."""
    svc = tcp_service(dest(1), dest(2, u=2, l=1))
    engine = make_engine(svc)
    clients = [Client(engine, "10.9.0.1", p) for p in range(1000, 1006)]
    picks = [c.send(SYN, now=0).daddr for c in clients[:4]]
    assert picks == [rs(2), rs(1), rs(2), rs(1)]
    assert dest_status(engine, 2).overloaded  # type: ignore[attr-defined]
    assert clients[4].send(SYN, now=0).daddr == rs(1)  # rr skips the overloaded dest
    # SYN_RECV entries expire after 60 s: rs(2) drops to 0 < l_threshold 1 -> cleared.
    engine.handle_timer(now=60)
    assert not dest_status(engine, 2).overloaded  # type: ignore[attr-defined]


def test_threshold_75_percent_rule_without_lower_threshold() -> None:
    svc = tcp_service(dest(1, u=4))
    engine = make_engine(svc)
    clients = [Client(engine, "10.9.0.1", p) for p in range(1000, 1004)]
    for i, c in enumerate(clients):
        c.send(SYN, now=i)  # expiries at 60, 61, 62, 63
    assert dest_status(engine, 1).overloaded  # type: ignore[attr-defined]
    engine.handle_timer(now=60)  # 3 left: 3*4 = 12 < 4*3 = 12 is false
    assert dest_status(engine, 1).overloaded  # type: ignore[attr-defined]
    engine.handle_timer(now=61)  # 2 left: 8 < 12
    assert not dest_status(engine, 1).overloaded  # type: ignore[attr-defined]


def test_edit_dest_raising_threshold_clears_overload() -> None:
    svc = tcp_service(dest(1, u=1))
    engine = make_engine(svc)
    Client(engine, "10.9.0.1", 1).send(SYN, now=0)
    assert dest_status(engine, 1).overloaded  # type: ignore[attr-defined]
    assert Client(engine, "10.9.0.1", 2).send(SYN, now=0).action is Action.REJECT
    engine.edit_dest(svc.key, dest(1, u=10), now=1)
    assert not dest_status(engine, 1).overloaded  # type: ignore[attr-defined]


def test_udp_entries_are_inactive_and_live_300s() -> None:
    """§3.4: UDP entries never count as active; 300 s idle timeout (`--set ... udp`)."""
    engine = make_engine(udp_service(dest(1, port=53)))
    c = Client(engine, "10.9.0.1", 5353, vport=53, protocol=IpProto.UDP)
    assert c.send(0, now=0).daddr == rs(1)
    assert c.state() == "UDP"
    c.reply(0, now=10)
    st = dest_status(engine, 1)
    assert (st.activeconns, st.inactconns) == (0, 1)  # type: ignore[attr-defined]
    engine.handle_timer(now=309.9)
    assert c.state() == "UDP"
    engine.handle_timer(now=310)
    assert c.state() is None
    engine.set_timeouts(IpvsTimeouts(tcp=0, tcpfin=0, udp=30))
    c.send(0, now=400)
    engine.handle_timer(now=430)
    assert c.state() is None


def test_one_packet_scheduling_udp() -> None:
    """§4.6: each datagram of an OPS service is scheduled on its own; no entry remains."""
    engine = make_engine(udp_service(dest(1, port=53), dest(2, port=53), one_packet=True))
    c = Client(engine, "10.9.0.1", 5353, vport=53, protocol=IpProto.UDP)
    picks = [c.send(0, now=0).daddr for _ in range(4)]
    assert picks == [rs(2), rs(1), rs(2), rs(1)]
    assert engine.conn_count() == 0 and list(engine.connections(now=0)) == []
    st = dest_status(engine, 1)
    assert (st.inactconns, st.stats.conns) == (0, 2)  # type: ignore[attr-defined]


def test_sctp_association() -> None:
    """§3.4 SCTP: INIT creates, ESTABLISHED is the only active state."""
    svc = VirtualService(key=ServiceKey.for_address(IpProto.SCTP, VIP, 3868), scheduler="rr",
                         destinations=(dest(1, port=3868),))
    engine = make_engine(svc)

    def pkt(direction: int, chunk: int) -> PacketInfo:
        return PacketInfo(family=AF_INET, protocol=132, saddr=IPv4Address("10.9.0.1"),
                          sport=2000, daddr=VIP, dport=3868, direction=direction,
                          sctp_chunk=chunk)

    assert engine.receive_packet(pkt(DIR_IN, 0), now=0).action is Action.PASS  # DATA
    assert engine.receive_packet(pkt(DIR_IN, SCTP_CHUNK_INIT), now=0).daddr == rs(1)
    states = []
    for direction, chunk in ((DIR_OUT, 2), (DIR_IN, 10), (DIR_OUT, 11)):
        engine.receive_packet(pkt(direction, chunk), now=0)
        states.append(next(iter(engine.connections(now=0))).state)
    assert states == ["C-SENT", "C-REPLIED", "ESTABLISHED"]
    st = dest_status(engine, 1)
    assert (st.activeconns, st.inactconns) == (1, 0)  # type: ignore[attr-defined]
    engine.receive_packet(pkt(DIR_IN, 7), now=1)  # SHUTDOWN
    assert next(iter(engine.connections(now=1))).state == "S-RECEIVED"
    st = dest_status(engine, 1)
    assert (st.activeconns, st.inactconns) == (0, 1)  # type: ignore[attr-defined]


def test_ipv6_service() -> None:
    vip6 = IPv6Address("2001:db8::1")
    svc = VirtualService(
        key=ServiceKey.for_address(IpProto.TCP, vip6, 443), scheduler="rr",
        destinations=(Destination(addr=IPv6Address("2001:db8::10"), port=443),),
    )
    engine = make_engine(svc)
    client = IPv6Address("2001:db8::99")
    syn = PacketInfo(family=AF_INET6, protocol=6, saddr=client, sport=1000, daddr=vip6,
                     dport=443, tcp_flags=SYN)
    v = engine.receive_packet(syn, now=0)
    assert v.daddr == IPv6Address("2001:db8::10")
    [conn] = engine.connections(now=0)
    assert (conn.caddr, conn.vaddr, conn.state) == (client, vip6, "SYN_RECV")
    # An IPv4 packet with the same low 32 bits never matches the IPv6 entry.
    v4 = PacketInfo(family=AF_INET, protocol=6, saddr=IPv4Address(int(client) & 0xFFFFFFFF),
                    sport=1000, daddr=IPv4Address(int(vip6) & 0xFFFFFFFF), dport=443,
                    tcp_flags=ACK)
    assert engine.receive_packet(v4, now=0).action is Action.PASS


def test_drop_packet_defense_mode_3() -> None:
    """§7.1: drop_packet=3 drops one of every am_droprate new connections."""
    engine = make_engine(tcp_service(dest(1)), sysctl=IpvsSysctl(drop_packet=3, am_droprate=4))
    verdicts = [Client(engine, "10.9.0.1", p).send(SYN, now=0).action for p in range(2001, 2009)]
    assert verdicts.count(Action.DROP) == 2
    assert verdicts[0] is Action.DROP and verdicts[4] is Action.DROP
    assert engine.counters()["drop_packet_defense"] == 2


def test_automatic_defense_follows_memory() -> None:
    """§7.1 modes 1/2: switch on when available memory falls below amemthresh."""
    engine = make_engine(tcp_service(dest(1)),
                         sysctl=IpvsSysctl(secure_tcp=1, drop_packet=1, amemthresh=1000))
    assert engine.pop_events() == []
    engine.set_available_memory(500)
    engine.handle_timer(now=engine.next_deadline() or 0.0)
    assert engine.pop_events() == [
        DefenseChanged("drop_packet", True),
        DefenseChanged("secure_tcp", True),
    ]
    assert engine.sysctl().secure_tcp == 2 and engine.sysctl().drop_packet == 2
    assert engine.defense_state()["drop_packet_rate"] == 2  # 1000 // (1000 - 500)
    # secure_tcp: a NAT SYN-ACK now moves SYN_RECV to SYNACK (dos table).
    c = Client(engine, "10.9.0.1", 1)
    if c.send(SYN, now=1).action is Action.DROP:
        c.send(SYN, now=1)
    c.reply(SYN | ACK, now=1)
    assert c.state() == "SYNACK"
    engine.set_available_memory(5000)
    engine.handle_timer(now=2)
    assert engine.sysctl().secure_tcp == 1
    assert engine.defense_state() == {
        "drop_entry": False, "drop_packet_rate": 0, "secure_tcp": False,
    }


def test_drop_entry_defense_drops_half_open_entries() -> None:
    engine = make_engine(tcp_service(dest(1)), sysctl=IpvsSysctl(drop_entry=3))
    for p in range(1000, 1050):
        Client(engine, "10.9.0.1", p).send(SYN, now=0)
    established = Client(engine, "10.9.0.2", 1)
    established.send(SYN, now=0)
    established.send(ACK, now=0)
    engine.handle_timer(now=1)
    dropped = engine.counters().get("drop_entry", 0)
    assert dropped > 0
    assert engine.conn_count() == 51 - dropped
    assert established.state() == "ESTABLISHED"  # busy < 60 s: never dropped


def test_client_port_20_is_never_scheduled() -> None:
    """§6.0: a packet from client port 20 (active FTP data) is left to the local stack."""
    engine = make_engine(tcp_service(dest(1)))
    v = Client(engine, "10.9.0.1", 20).send(SYN, now=0)
    assert v.action is Action.PASS and v.reason == "ftp_data_not_scheduled"


def test_rate_estimator() -> None:
    """§8.8: 2-second EWMA with the kernel's fixed-point scaling."""
    engine = make_engine(tcp_service(dest(1)))
    # 20 new connections with one 100-byte SYN each in the first 2 s.
    for p in range(20):
        Client(engine, "10.9.0.1", 1000 + p).send(SYN, now=0.5, length=100)
    engine.handle_timer(now=2)
    rates = engine.services()[0].rates
    # avg_cps = (20 << 9) >> 2 = 2560 -> (2560 + 511) >> 10 = 2 conn/s
    # avg_bps = (2000 << 4) >> 2 = 8000 -> (8000 + 15) >> 5 = 250 B/s
    assert (rates.cps, rates.inpps, rates.outpps, rates.inbps, rates.outbps) == (
        2, 2, 0, 250, 0,
    )
    engine.handle_timer(now=4)  # nothing new: the average decays by a quarter
    rates = engine.services()[0].rates
    assert (rates.cps, rates.inbps) == (2, 187)  # 1920 -> 2; (6000 + 15) >> 5 = 187


def test_cache_bypass_for_fwmark_service_without_destination() -> None:
    """§6.0 ip_vs_leave: fwmark service + cache_bypass=1 + no dest -> BYPASS entry that
    forwards to the original destination."""
    from hactl.ipvs.model import FwdMethod

    key = ServiceKey.for_fwmark(5)
    engine = make_engine(VirtualService(key=key, scheduler="rr"),
                         sysctl=IpvsSysctl(cache_bypass=1))
    target = IPv4Address("203.0.113.7")
    syn = PacketInfo(family=AF_INET, protocol=6, saddr=IPv4Address("10.9.0.1"), sport=1000,
                     daddr=target, dport=80, tcp_flags=SYN, fwmark=5)
    v = engine.receive_packet(syn, now=0)
    assert (v.action, v.daddr, v.dport, v.fwd) == (Action.FORWARD, target, 80, FwdMethod.BYPASS)
    ack = syn._replace(tcp_flags=ACK)
    assert engine.receive_packet(ack, now=1).daddr == target
    [conn] = engine.connections(now=1)
    assert conn.state == "ESTABLISHED" and conn.daddr == target
    engine.set_sysctl(IpvsSysctl())
    other = syn._replace(sport=1001)
    assert engine.receive_packet(other, now=2).action is Action.REJECT


def test_ftp_service_catches_data_ports() -> None:
    """§6.0 step 3: with a port-21 service on the VIP, unprivileged ports reach it; a
    non-persistent FTP service passes them to the local stack (ip_vs_leave)."""
    svc = tcp_service(dest(1, port=21), port=21, persistence=60)
    engine = make_engine(svc)
    v = Client(engine, "10.9.0.1", 3000, vport=40000).send(SYN, now=0)
    assert v.action is Action.FORWARD and v.daddr == rs(1) and v.dport == 40000
    assert Client(engine, "10.9.0.1", 3001, vport=80).send(SYN, now=0).reason == "no_service"
    plain = make_engine(tcp_service(dest(1, port=21), port=21))
    v = Client(plain, "10.9.0.1", 3000, vport=40000).send(SYN, now=0)
    assert v.action is Action.PASS and v.reason == "ftp_vip_other_port"


def test_edit_service_changes_scheduler_and_keeps_connections() -> None:
    import dataclasses

    svc = tcp_service(dest(1), dest(2))
    engine = make_engine(svc)
    c = Client(engine, "10.9.0.1", 1000)
    c.send(SYN, now=0)
    c.send(ACK, now=0)
    engine.edit_service(dataclasses.replace(svc, scheduler="wlc"), now=1)
    assert engine.services()[0].service.scheduler == "wlc"
    assert c.send(ACK, now=2).daddr == rs(2)
    # wlc: rs(2) has one active connection, rs(1) none.
    assert Client(engine, "10.9.0.2", 1000).send(SYN, now=3).daddr == rs(1)


def test_ipv6_persistence_prefix() -> None:
    vip6 = IPv6Address("2001:db8::1")
    svc = VirtualService(
        key=ServiceKey.for_address(IpProto.TCP, vip6, 80), scheduler="rr",
        persistence_timeout=60, netmask=64,
        destinations=(Destination(addr=IPv6Address("2001:db8::a"), port=80),
                      Destination(addr=IPv6Address("2001:db8::b"), port=80)),
    )
    engine = make_engine(svc)

    def syn(client: str) -> PacketInfo:
        return PacketInfo(family=AF_INET6, protocol=6, saddr=IPv6Address(client), sport=1000,
                          daddr=vip6, dport=80, tcp_flags=SYN)

    a = engine.receive_packet(syn("2001:db8:1:1::5"), now=0).daddr
    assert engine.receive_packet(syn("2001:db8:1:1::9"), now=0).daddr == a
    assert engine.receive_packet(syn("2001:db8:1:2::5"), now=0).daddr != a
    nets = sorted(str(c.caddr) for c in engine.connections(now=0) if c.cport == 0)
    assert nets == ["2001:db8:1:1::", "2001:db8:1:2::"]
