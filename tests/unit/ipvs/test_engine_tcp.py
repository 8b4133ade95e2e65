"""TCP through the engine: state machine, ActiveConn/InActConn, timeouts, expiry (spec §3)."""

from __future__ import annotations

import pytest
from engine_support import (
    ACK,
    FIN,
    RST,
    SYN,
    SYNACK,
    Client,
    dest,
    make_engine,
    rs,
    tcp_service,
)

from hactl.ipvs.engine import Action, EngineOptions
from hactl.ipvs.model import FwdMethod, IpvsTimeouts
from hactl.ipvs.proto import TCP_STATES, TCP_STATES_DOS, TcpState


def counters(engine: object, n: int = 1) -> tuple[int, int]:
    """(ActiveConn, InActConn) of real server n."""
    for status in engine.services()[0].dests:  # type: ignore[attr-defined]
        if status.dest.addr == rs(n):
            return status.activeconns, status.inactconns
    raise AssertionError(f"no dest {n}")


def test_nat_lifecycle_accounting() -> None:
    """§3.3 typical NAT flow, §3.4 new entries start in InActConn, §3.1 active states."""
    engine = make_engine(tcp_service(dest(1)))
    c = Client(engine, "10.9.0.1", 40001)
    now = 0.0
    v = c.send(SYN, now=now)
    assert v.action is Action.FORWARD and v.daddr == rs(1) and v.dport == 80
    assert c.state() == "SYN_RECV" and counters(engine) == (1, 0)
    c.reply(SYNACK, now=now + 0.01)
    assert c.state() == "SYN_RECV" and counters(engine) == (1, 0)
    c.send(ACK, now=now + 0.02)
    assert c.state() == "ESTABLISHED" and counters(engine) == (1, 0)
    c.send(FIN, now=now + 5)  # client closes first
    assert c.state() == "CLOSE_WAIT" and counters(engine) == (0, 1)
    c.reply(FIN, now=now + 5.01)
    assert c.state() == "TIME_WAIT" and counters(engine) == (0, 1)
    c.send(ACK, now=now + 5.02)
    assert c.state() == "TIME_WAIT"
    # TIME_WAIT keeps the entry 120 s after the last packet, then it goes (§3.5).
    engine.handle_timer(now=now + 5.02 + 119.9)
    assert c.state() == "TIME_WAIT"
    engine.handle_timer(now=now + 5.02 + 120)
    assert c.state() is None and counters(engine) == (0, 0)


def test_dr_lifecycle_input_only() -> None:
    """§3.3: DR entries have NOOUTPUT and use the INPUT_ONLY rows; client FIN -> FIN_WAIT."""
    engine = make_engine(tcp_service(dest(1, fwd=FwdMethod.DROUTE)))
    c = Client(engine, "10.9.0.1", 40001)
    v = c.send(SYN, now=0.0)
    assert v.fwd is FwdMethod.DROUTE
    assert v.conn is not None and v.conn.flags == 0x83  # DR | NOOUTPUT, active (§1.7)
    c.send(ACK, now=0.1)
    assert c.state() == "ESTABLISHED" and counters(engine) == (1, 0)
    c.send(FIN, now=1.0)
    assert c.state() == "FIN_WAIT" and counters(engine) == (0, 1)
    assert v.conn.flags == 0x183
    c.send(ACK, now=1.1)
    assert c.state() == "FIN_WAIT"  # INPUT_ONLY ack from FW stays FW
    c.send(RST, now=2.0)
    assert c.state() == "CLOSE"


def test_server_initiated_close() -> None:
    engine = make_engine(tcp_service(dest(1)))
    c = Client(engine, "10.9.0.1", 40001)
    c.send(SYN, now=0)
    c.reply(SYNACK, now=0)
    c.send(ACK, now=0)
    c.reply(FIN, now=1)
    assert c.state() == "FIN_WAIT"
    c.send(FIN, now=1)
    assert c.state() == "TIME_WAIT"


def test_ssh_idle_connection_expires_after_established_timeout() -> None:
    """An idle ESTABLISHED entry lives 900 s after its last packet (§3.1, §3.5, §9.1)."""
    engine = make_engine(tcp_service(dest(1)))
    c = Client(engine, "10.9.0.1", 50022)
    c.send(SYN, now=0)
    c.reply(SYNACK, now=0)
    c.send(ACK, now=0)
    c.send(ACK, now=100)  # last keystroke at t=100
    status = engine.conn_status(engine.find_conn(6, c.addr, c.port, c.vip, 80), now=100)
    assert status.expires_in == 900
    engine.handle_timer(now=999.5)
    assert c.state() == "ESTABLISHED"
    deadline = engine.next_deadline()
    assert deadline is not None and 1000 <= deadline <= 1001  # wheel granularity 1 s
    engine.handle_timer(now=deadline)
    assert c.state() is None
    assert counters(engine) == (0, 0)
    # The next packet of that client is no longer part of any connection: a bare ACK
    # cannot create an entry (§5.5), it is passed to the local stack.
    v = c.send(ACK, now=deadline + 1)
    assert v.action is Action.PASS and v.reason == "not_schedulable"


def test_lvs_timeouts_tcp_applies_at_next_state_update() -> None:
    """§3.2: `--set tcp` changes ESTABLISHED only, read again at every packet."""
    engine = make_engine(tcp_service(dest(1)))
    c = Client(engine, "10.9.0.1", 50022)
    c.send(SYN, now=0)
    c.send(ACK, now=0)
    engine.set_timeouts(IpvsTimeouts(tcp=7200, tcpfin=0, udp=0))
    assert engine.timeouts() == IpvsTimeouts(tcp=7200, tcpfin=120, udp=300)
    cp = engine.find_conn(6, c.addr, c.port, c.vip, 80)
    assert cp is not None
    assert engine.conn_status(cp, now=0).expires_in == 900  # existing timer untouched
    c.send(ACK, now=10)
    assert engine.conn_status(cp, now=10).expires_in == 7200
    engine.handle_timer(now=10 + 7199)
    assert c.state() == "ESTABLISHED"
    engine.handle_timer(now=10 + 7200)
    assert c.state() is None


def test_lvs_timeouts_tcpfin() -> None:
    engine = make_engine(tcp_service(dest(1, fwd=FwdMethod.DROUTE)))
    engine.set_timeouts(IpvsTimeouts(tcp=0, tcpfin=30, udp=0))
    c = Client(engine, "10.9.0.1", 1234)
    c.send(SYN, now=0)
    c.send(ACK, now=0)
    c.send(FIN, now=1)
    engine.handle_timer(now=30.9)
    assert c.state() == "FIN_WAIT"
    engine.handle_timer(now=31)
    assert c.state() is None


def test_no_flags_means_close() -> None:
    """§3.3 quirk: a segment without SYN/FIN/ACK/RST moves the entry to CLOSE."""
    engine = make_engine(tcp_service(dest(1)))
    c = Client(engine, "10.9.0.1", 1234)
    c.send(SYN, now=0)
    c.send(ACK, now=0)
    c.send(0, now=1)
    assert c.state() == "CLOSE" and counters(engine) == (0, 1)


def test_new_entry_timeout_is_three_seconds_until_first_transition() -> None:
    engine = make_engine(tcp_service(dest(1)))
    c = Client(engine, "10.9.0.1", 1234)
    c.send(SYN, now=0)
    cp = engine.find_conn(6, c.addr, c.port, c.vip, 80)
    assert cp is not None and cp.timeout == 60  # SYN_RECV after the first packet


def test_rst_never_creates_and_sloppy_tcp() -> None:
    """§5.5: only SYN without RST creates an entry; sloppy_tcp accepts any non-RST."""
    from hactl.ipvs.model import IpvsSysctl

    engine = make_engine(tcp_service(dest(1)))
    c = Client(engine, "10.9.0.1", 1234)
    assert c.send(ACK, now=0).action is Action.PASS
    assert c.send(SYN | RST, now=0).action is Action.PASS
    assert engine.conn_count() == 0
    engine.set_sysctl(IpvsSysctl(sloppy_tcp=1))
    assert c.send(RST, now=0).action is Action.PASS
    v = c.send(ACK, now=0)  # mid-stream pickup (a backup after takeover)
    assert v.action is Action.FORWARD and c.state() == "ESTABLISHED"
    assert counters(engine) == (1, 0)


def test_legacy_active_states_option() -> None:
    """§3.1: older kernels counted only ESTABLISHED as active."""
    engine = make_engine(tcp_service(dest(1)), options=EngineOptions(legacy_active_states=True))
    c = Client(engine, "10.9.0.1", 1234)
    c.send(SYN, now=0)
    assert c.state() == "SYN_RECV" and counters(engine) == (0, 1)
    c.send(ACK, now=0)
    assert counters(engine) == (1, 0)


@pytest.mark.parametrize(
    ("table", "direction", "event", "state", "expected"),
    [
        # A few cells of each §3.3 table, read back against the spec's rows.
        (TCP_STATES, 0, 2, TcpState.NONE, TcpState.ESTABLISHED),  # INPUT ack from NO
        (TCP_STATES, 0, 3, TcpState.SYN_RECV, TcpState.SYN_RECV),  # INPUT rst in SR
        (TCP_STATES, 1, 1, TcpState.CLOSE_WAIT, TcpState.TIME_WAIT),  # OUTPUT fin in CW
        (TCP_STATES, 1, 2, TcpState.LISTEN, TcpState.ESTABLISHED),  # OUTPUT ack in LI
        (TCP_STATES, 2, 1, TcpState.ESTABLISHED, TcpState.FIN_WAIT),  # IN_ONLY fin in ES
        (TCP_STATES, 2, 3, TcpState.SYNACK, TcpState.CLOSE),  # IN_ONLY rst in SA
        (TCP_STATES_DOS, 0, 0, TcpState.SYNACK, TcpState.SYNACK),  # INPUT syn in SA
        (TCP_STATES_DOS, 0, 2, TcpState.SYN_RECV, TcpState.SYN_RECV),  # INPUT ack in SR
        (TCP_STATES_DOS, 1, 0, TcpState.SYN_RECV, TcpState.SYNACK),  # OUTPUT syn in SR
        (TCP_STATES_DOS, 2, 0, TcpState.NONE, TcpState.SYNACK),  # IN_ONLY syn from NO
    ],
)
def test_state_table_cells(
    table: tuple[tuple[tuple[int, ...], ...], ...],
    direction: int,
    event: int,
    state: int,
    expected: int,
) -> None:
    assert table[direction][event][state] == expected


def test_reply_without_entry_is_passed() -> None:
    engine = make_engine(tcp_service(dest(1)))
    c = Client(engine, "10.9.0.1", 1234)
    v = c.reply(ACK, now=0)
    assert v.action is Action.PASS and v.reason == "reply_without_conn"


def test_reply_verdict_goes_back_to_client_and_counts_out_stats() -> None:
    engine = make_engine(tcp_service(dest(1)))
    c = Client(engine, "10.9.0.1", 1234)
    c.send(SYN, now=0, length=60)
    v = c.reply(SYNACK, now=0, length=1500)
    assert v.action is Action.FORWARD and v.daddr == c.addr and v.dport == 1234
    [svc] = engine.services()
    assert svc.stats.conns == 1
    assert (svc.stats.inpkts, svc.stats.inbytes, svc.stats.outpkts, svc.stats.outbytes) == (
        1, 60, 1, 1500,
    )
    assert svc.dests[0].stats == svc.stats
    assert engine.total_stats()[0] == svc.stats


def test_proxy_helpers_follow_spec_9_2_mapping() -> None:
    """§9.2: accept = INPUT syn, backend connected = OUTPUT syn, data = ack per direction."""
    from ipaddress import IPv4Address

    from hactl.ipvs.engine import DIR_IN, DIR_OUT

    engine = make_engine(tcp_service(dest(1)))
    client = IPv4Address("10.9.0.1")
    v = engine.open_connection(6, client, 40000, IPv4Address("10.0.0.1"), 80, now=0)
    assert v.action is Action.FORWARD and v.conn is not None
    cp = v.conn
    engine.record_segment(cp, direction=DIR_OUT, tcp_flags=SYNACK, now=0.01)
    engine.record_segment(cp, direction=DIR_IN, tcp_flags=ACK, length=100, now=0.02)
    assert engine.conn_status(cp, now=0.02).state == "ESTABLISHED"
    engine.record_segment(cp, direction=DIR_IN, tcp_flags=FIN, now=1)
    engine.record_segment(cp, direction=DIR_OUT, tcp_flags=FIN, now=1)
    assert engine.conn_status(cp, now=1).state == "TIME_WAIT"
    engine.handle_timer(now=121)
    gone = engine.record_segment(cp, direction=DIR_IN, tcp_flags=ACK, now=122)
    assert gone.action is Action.PASS and gone.reason == "conn_gone"
