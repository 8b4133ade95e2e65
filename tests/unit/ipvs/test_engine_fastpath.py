"""The new-connection fast path against the general path (differential, hypothesis).

Two engines get the same random sequence of packets, timer runs, configuration edits and
sysctl changes; one takes the fast path where it applies (`EngineOptions.fast_path`, the
default), the other always the general path. After every step both must agree on the
verdict, the entry it names, the counters, the events, the table, every service's and
destination's counters and statistics, and the next deadline.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest
from engine_support import ACK, FIN, RST, SYN, SYNACK, VIP, dest
from hypothesis import given, settings
from hypothesis import strategies as st

from hactl.ipvs.conntable import Conn
from hactl.ipvs.engine import DIR_IN, DIR_OUT, EngineOptions, IpvsEngine, PacketInfo, Verdict
from hactl.ipvs.events import ConnExpired, IpvsEvent
from hactl.ipvs.model import (
    AF_INET,
    AF_INET6,
    Destination,
    FwdMethod,
    IpProto,
    IpvsTimeouts,
    ServiceKey,
    SyncConn,
    VirtualService,
)
from hactl.ipvs.proto import SCTP_CHUNK_DATA, SCTP_CHUNK_INIT
from hactl.ipvs.schedulers import least_keys

VIP6 = IPv6Address("2001:db8::100")
FWMARK = 7

# (protocol, vip, port): the services of the scenario; port 90 has none (port-0 service).
TCP80 = (IpProto.TCP, VIP, 80)
TCP81 = (IpProto.TCP, VIP, 81)
UDP53 = (IpProto.UDP, VIP, 53)
TCP6 = (IpProto.TCP, VIP6, 80)
SCTP9 = (IpProto.SCTP, VIP, 9)
TCP0 = (IpProto.TCP, VIP, 0)
TARGETS = [TCP80, TCP81, UDP53, TCP6, SCTP9, (IpProto.TCP, VIP, 90), (IpProto.UDP, VIP, 54)]
SCHEDULERS = ["rr", "wlc", "wrr", "lc", "sh", "lblc", "sed", "nq"]


def _key(target: tuple[IpProto, IPv4Address | IPv6Address, int]) -> ServiceKey:
    return ServiceKey.for_address(*target)


def _dests(v6: bool) -> tuple[Destination, ...]:
    if v6:
        return tuple(
            Destination(addr=IPv6Address(f"2001:db8:1::{n}"), port=80) for n in (1, 2, 3)
        )
    return (dest(1), dest(2, weight=2), dest(3, weight=3))


def _services(sched: str) -> list[VirtualService]:
    return [
        VirtualService(key=_key(TCP80), scheduler=sched, destinations=_dests(False)),
        VirtualService(key=_key(TCP81), scheduler="wlc", destinations=_dests(False)),
        VirtualService(key=_key(UDP53), scheduler="rr", destinations=_dests(False)),
        VirtualService(key=_key(TCP6), scheduler="wlc", destinations=_dests(True)),
        VirtualService(key=_key(SCTP9), scheduler="rr", destinations=_dests(False)),
        VirtualService(key=_key(TCP0), scheduler="rr", destinations=(dest(4),)),
        VirtualService(
            key=ServiceKey.for_fwmark(FWMARK), scheduler="rr", destinations=(dest(5, port=0),)
        ),
    ]


_TCP_FLAGS = [SYN, SYN, SYN, SYN | ACK, SYN | RST, SYN | FIN, ACK, FIN, RST, SYNACK, 0]

_packet = st.tuples(
    st.just("pkt"),
    st.sampled_from(TARGETS),
    st.integers(0, 3),  # client address
    st.sampled_from([20, 1000, 1001, 1002]),  # client port (20: FTP data)
    st.sampled_from(_TCP_FLAGS),
    st.booleans(),  # reply
    st.sampled_from([0, 0, 0, FWMARK, 9]),  # fwmark
    st.integers(0, 1500),  # length
)
_config = st.one_of(
    st.tuples(st.just("time"), st.floats(0.01, 200.0)),
    st.tuples(st.just("weight"), st.sampled_from(TARGETS[:4]), st.integers(1, 3),
              st.integers(0, 3)),
    st.tuples(st.just("threshold"), st.sampled_from(TARGETS[:4]), st.integers(1, 3),
              st.integers(0, 3)),
    st.tuples(st.just("fwd"), st.sampled_from(TARGETS[:4]), st.integers(1, 3),
              st.sampled_from([FwdMethod.MASQ, FwdMethod.DROUTE, FwdMethod.TUNNEL])),
    st.tuples(st.just("del"), st.sampled_from(TARGETS[:4]), st.integers(1, 3)),
    st.tuples(st.just("add"), st.sampled_from(TARGETS[:4]), st.integers(1, 3)),
    st.tuples(st.just("service"), st.sampled_from(TARGETS[:3]), st.sampled_from(SCHEDULERS),
              st.sampled_from([None, None, 60.0]), st.booleans()),
    st.tuples(st.just("sysctl"), st.sampled_from([
        ("conntrack", 0), ("conntrack", 1), ("secure_tcp", 0), ("secure_tcp", 3),
        ("drop_packet", 0), ("drop_packet", 3), ("sloppy_tcp", 1), ("sloppy_tcp", 0),
        ("conn_reuse_mode", 0), ("conn_reuse_mode", 1), ("expire_nodest_conn", 1),
        ("backup_only", 1), ("backup_only", 0), ("cache_bypass", 1),
    ])),
    st.tuples(st.just("sync"), st.booleans(), st.booleans()),
    st.tuples(st.just("timeouts"), st.sampled_from([0, 5, 900]), st.sampled_from([0, 7])),
    # A synced entry (§1.10) creates, moves or flips the activity of an entry on the side,
    # one more place where a destination's counters change.
    st.tuples(st.just("synced"), st.sampled_from(TARGETS[:2]), st.integers(0, 3),
              st.sampled_from([1000, 1001]), st.integers(1, 3),
              st.sampled_from([(0x0, 1), (0x100, 4), (0x100, 7)])),
)
# Mostly packets (one_of would flatten the config choices and make packets a minority), and
# among the rest the switches that decide whether the fast path applies.
_toggle = st.tuples(st.just("sysctl"), st.sampled_from([
    ("conntrack", 0), ("conntrack", 1), ("secure_tcp", 0), ("secure_tcp", 3),
    ("drop_packet", 0), ("drop_packet", 3), ("sync_threshold", 1), ("sync_threshold", 3),
])) | st.tuples(st.just("sync"), st.booleans(), st.just(False)) | st.tuples(
    st.just("timeouts"), st.sampled_from([0, 5]), st.sampled_from([0, 7, 300])
)
_action = st.integers(0, 19).flatmap(
    lambda i: _packet if i < 15 else _toggle if i < 17 else _config
)
_actions = st.lists(_action, min_size=10, max_size=50)
# A starting configuration, so that every example runs many packets against its own mix.
_setup = st.tuples(
    st.lists(st.tuples(st.just("service"), st.sampled_from(TARGETS[:3]),
                       st.sampled_from(SCHEDULERS), st.sampled_from([None, 60.0]),
                       st.booleans()), max_size=3),
    st.lists(st.tuples(st.just("fwd"), st.sampled_from(TARGETS[:4]), st.integers(1, 3),
                       st.sampled_from([FwdMethod.DROUTE, FwdMethod.TUNNEL])), max_size=2),
    st.lists(st.tuples(st.just("threshold"), st.sampled_from(TARGETS[:4]), st.integers(1, 3),
                       st.integers(1, 3)), max_size=1),
    st.lists(_toggle, max_size=3),
)


def _conn(cp: Conn | None) -> tuple[Any, ...] | None:
    if cp is None:
        return None
    dest = cp.dest
    return (
        cp.key, cp.dport, cp.flags, cp.state, cp.timeout, cp.expires, cp.in_pkts,
        None if dest is None else (dest.addr, dest.port), cp.tb is not None,
    )


def _verdict(v: Verdict) -> tuple[Any, ...]:
    return (v.action, _conn(v.conn), v.daddr, v.dport, v.fwd, v.reason)


def _event(e: IpvsEvent) -> object:
    if isinstance(e, ConnExpired):
        return ("expired", _conn(e.handle), e.reason)
    return e


def _state(engine: IpvsEngine, now: float) -> tuple[Any, ...]:
    return (
        [_event(e) for e in engine.pop_events()],
        engine.counters(),
        engine.services(),
        engine.total_stats(),
        sorted(repr(c) for c in engine.connections(now=now)),
        engine.conn_count(),
        engine.template_count(),
        engine.next_deadline(),
        engine.sysctl(),
        engine.defense_state(),
    )


class Pair:
    """The same scenario on a fast-path engine and a general-path one."""

    def __init__(self, sched: str) -> None:
        self.engines = [
            IpvsEngine(rng=random.Random(3), options=EngineOptions(report_expiry=True)),
            IpvsEngine(
                rng=random.Random(3),
                options=EngineOptions(report_expiry=True, fast_path=False),
            ),
        ]
        self.services = {svc.key: svc for svc in _services(sched)}
        for engine in self.engines:
            for svc in self.services.values():
                engine.add_service(svc, now=0.0)
        self.dests = {key: {d.addr: d for d in svc.destinations}
                      for key, svc in self.services.items()}

    def both(self, call: Any) -> list[Any]:
        out = []
        for engine in self.engines:
            try:
                out.append(("ok", call(engine)))
            except Exception as exc:  # a refused edit must be refused by both alike
                out.append(("raised", type(exc), str(exc)))
        outcomes = [o if o[0] == "raised" else o[:1] for o in out]
        assert outcomes[0] == outcomes[1]
        return out

    def receive(self, pkt: PacketInfo, now: float) -> None:
        fast, general = (engine.receive_packet(pkt, now=now) for engine in self.engines)
        assert _verdict(fast) == _verdict(general), pkt

    def timer(self, now: float) -> None:
        for engine in self.engines:
            engine.handle_timer(now=now)

    def check(self, now: float) -> None:
        fast, general = (_state(engine, now) for engine in self.engines)
        assert fast == general
        for engine in self.engines:
            _check_least_keys(engine)


def _check_least_keys(engine: IpvsEngine) -> None:
    """The fast path's lc/wlc/sed/nq keys equal keys recomputed from the counters, and only
    the current candidates hold one (white box: a drifting key shows here at once, long
    before it changes a decision)."""
    holders = 0
    for svc in engine._services.values():
        plan = least_keys(svc.scheduler, svc.dests) if svc.scheduler is not None else None
        if svc.lkeys is None:
            assert svc.ldests == []
        else:
            assert plan is not None and svc.ldests == list(plan.dests)
            assert svc.lkeys == [
                d.activeconns * a + d.inactconns * i + b
                for d, a, i, b in zip(plan.dests, plan.act, plan.inact, plan.base, strict=True)
            ]
            assert all(d.lkeys is svc.lkeys for d in svc.ldests)
            holders += len(svc.ldests)
    dests = [d for svc in engine._services.values() for d in svc.dests]
    assert sum(d.lkeys is not None for d in dests) == holders


def _packet_info(action: tuple[Any, ...]) -> PacketInfo:
    _, (proto, vip, vport), client, sport, tflags, reply, fwmark, length = action
    v6 = vip.version == 6
    caddr: IPv4Address | IPv6Address = (
        IPv6Address(f"2001:db8:9::{client + 1}") if v6 else IPv4Address(f"10.9.0.{client + 1}")
    )
    chunk = SCTP_CHUNK_DATA
    if proto == IpProto.SCTP and tflags & SYN:
        chunk = SCTP_CHUNK_INIT
    return PacketInfo(
        AF_INET6 if v6 else AF_INET, int(proto), caddr, sport, vip, vport,
        DIR_OUT if reply else DIR_IN, tflags if proto == IpProto.TCP else 0, chunk, length,
        fwmark,
    )


def _apply_config(pair: Pair, action: tuple[Any, ...], now: float) -> float:
    kind = action[0]
    if kind == "time":
        now += action[1]
        pair.timer(now)
        return now
    if kind in ("weight", "threshold", "fwd", "del", "add"):
        target, n = action[1], action[2]
        key = _key(target)
        addr = _dests(target[1].version == 6)[n - 1].addr
        current = pair.dests[key]
        if kind == "del":
            if addr in current:
                del current[addr]
                pair.both(lambda e: e.del_dest(key, addr, 80, now=now))
            return now
        if kind == "add":
            if addr not in current:
                d = current[addr] = Destination(addr=addr, port=80)
                pair.both(lambda e: e.add_dest(key, d, now=now))
            return now
        if addr not in current:
            return now
        old = current[addr]
        if kind == "weight":
            d = dataclasses.replace(old, weight=action[3])
        elif kind == "threshold":
            d = dataclasses.replace(old, u_threshold=action[3], l_threshold=action[3] // 2)
        else:
            d = dataclasses.replace(old, fwd=action[3])
        current[addr] = d
        pair.both(lambda e: e.edit_dest(key, d, now=now))
        return now
    if kind == "service":
        _, target, sched, persistence, one_packet = action
        key = _key(target)
        vs = dataclasses.replace(
            pair.services[key], scheduler=sched, persistence_timeout=persistence,
            one_packet=one_packet and target[0] == IpProto.UDP,
        )
        pair.services[key] = vs
        pair.both(lambda e: e.edit_service(vs, now=now))
        return now
    if kind == "sysctl":
        name, value = action[1]
        pair.both(lambda e: e.set_sysctl(
            dataclasses.replace(e.sysctl(), **{name: value, "am_droprate": 3})
        ))
        return now
    if kind == "sync":
        pair.both(lambda e: e.set_sync_state(master=action[1], backup=action[2]))
        return now
    if kind == "timeouts":
        t = IpvsTimeouts(tcp=action[1], tcpfin=action[1], udp=action[2])
        pair.both(lambda e: e.set_timeouts(t))
        return now
    if kind == "synced":
        _, (proto, vip, vport), client, cport, n, (flags, state) = action
        entry = SyncConn(
            family=AF_INET, protocol=int(proto), flags=flags, state=state, cport=cport,
            vport=vport, dport=80, fwmark=0, timeout=900,
            caddr=IPv4Address(f"10.9.0.{client + 1}"), vaddr=vip,
            daddr=_dests(False)[n - 1].addr,
        )
        pair.both(lambda e: e.apply_sync(entry, now=now))
        return now
    raise AssertionError(kind)


def _play(pair: Pair, actions: Iterable[tuple[Any, ...]]) -> float:
    """Feed the actions to both engines from time 0, packets 0.25 s apart, checking that they
    agree after each; returns the time reached."""
    now = 0.0
    for action in actions:
        if action[0] == "pkt":
            pair.receive(_packet_info(action), now)
            now += 0.25
        else:
            now = _apply_config(pair, action, now)
        pair.check(now)
    return now


@settings(max_examples=150, deadline=None)
@given(setup=_setup, actions=_actions, sched=st.sampled_from(SCHEDULERS))
def test_fast_path_matches_general_path(
    setup: tuple[list[tuple[Any, ...]], ...], actions: list[tuple[Any, ...]], sched: str
) -> None:
    pair = Pair(sched)
    now = _play(pair, [*setup[0], *setup[1], *setup[2], *setup[3], *actions])
    for _ in range(8):  # and they drain alike
        now += 600.0
        pair.timer(now)
        pair.check(now)


def test_flood_of_syns_matches_general_path() -> None:
    """Many new flows of each plain kind (the fast path's own case), long enough for rr
    cursors to wrap and wlc to spread the load, on both families and protocols."""
    pair = Pair("rr")
    now = 0.0
    for i in range(400):
        for target in (TCP80, TCP81, UDP53, TCP6):
            action = ("pkt", target, i % 4, 1024 + i, SYN, False, 0, 60)
            pair.receive(_packet_info(action), now)
        if i % 50 == 0:
            pair.timer(now)
            pair.check(now)
        now += 0.5
    pair.check(now)


def _syn(target: tuple[Any, ...], client: int, sport: int = 1000) -> tuple[Any, ...]:
    return ("pkt", target, client, sport, SYN, False, 0, 60)


def _life(target: tuple[Any, ...], client: int, sport: int = 1000) -> list[tuple[Any, ...]]:
    """A whole TCP connection, ending with its entry in TIME_WAIT."""
    return [
        ("pkt", target, client, sport, flags, reply, 0, 60)
        for flags, reply in ((SYN, False), (SYNACK, True), (ACK, False), (FIN | ACK, False),
                             (FIN | ACK, True), (ACK, False))
    ]


# Scripted cases of what the random search reaches only rarely: a switch flipped between two
# new flows, after the first has filled the fast path's per-flags transition cache.
SCRIPTS = {
    "udp_timeout_change": [_syn(UDP53, 0), ("timeouts", 0, 7), _syn(UDP53, 1)],
    "tcp_timeout_change": [_syn(TCP80, 0), ("timeouts", 5, 0), _syn(TCP80, 1)],
    "secure_tcp_on_dr": [
        ("fwd", TCP80, 1, FwdMethod.DROUTE), ("fwd", TCP80, 2, FwdMethod.DROUTE),
        ("fwd", TCP80, 3, FwdMethod.DROUTE), _syn(TCP80, 0),
        ("sysctl", ("secure_tcp", 3)), _syn(TCP80, 1), ("sysctl", ("secure_tcp", 0)),
        _syn(TCP80, 2),
    ],
    "sync_master_first_packet": [
        ("sysctl", ("sync_threshold", 1)), _syn(UDP53, 0), ("sync", True, False),
        _syn(UDP53, 1), _syn(TCP80, 1), ("sync", False, False), _syn(UDP53, 2),
    ],
    "conntrack_toggle": [
        _syn(TCP80, 0), ("sysctl", ("conntrack", 1)), _syn(TCP80, 1),
        ("sysctl", ("conntrack", 0)), _syn(TCP80, 2),
    ],
    "drop_packet_toggle": [
        _syn(TCP80, 0), ("sysctl", ("drop_packet", 3)), *[_syn(TCP80, 1, p) for p in range(5)],
        ("sysctl", ("drop_packet", 0)), _syn(TCP80, 2),
    ],
    "persistence_and_one_packet": [
        _syn(UDP53, 0), ("service", UDP53, "rr", None, True), _syn(UDP53, 1),
        ("service", TCP80, "wlc", 60.0, False), _syn(TCP80, 0), _syn(TCP80, 0, 1001),
        ("service", TCP80, "wlc", None, False), _syn(TCP80, 1),
    ],
    "scheduler_switch": [
        *[_syn(TCP81, c) for c in range(3)], ("service", TCP81, "rr", None, False),
        *[_syn(TCP81, c, 1001) for c in range(4)], ("service", TCP81, "wlc", None, False),
        *[_syn(TCP81, c, 1002) for c in range(4)],
    ],
    "wlc_dest_edits": [
        *[_syn(TCP81, c) for c in range(3)], ("weight", TCP81, 3, 0),
        *[_syn(TCP81, c, 1001) for c in range(3)], ("weight", TCP81, 1, 3),
        *[_syn(TCP81, c, 1002) for c in range(3)], ("del", TCP81, 2),
        *[_syn(TCP81, c, 1003) for c in range(3)], ("add", TCP81, 2),
        *[_syn(TCP81, c, 1004) for c in range(3)], ("threshold", TCP81, 1, 2),
        *[_syn(TCP81, c, 1005) for c in range(3)], ("threshold", TCP81, 1, 0),
        *[_syn(TCP81, c, 1006) for c in range(3)],
    ],
    # Port reuse (§5.3) of an entry in TIME_WAIT or CLOSE, the steady state of a busy
    # client; and the cases that must not take the shortcut: conn_reuse_mode 0, an entry
    # with old conntrack (NFCT), a quiesced dest with expire_nodest_conn, a due entry.
    "port_reuse": [
        *_life(TCP80, 0), *_life(TCP80, 0), *_life(TCP6, 1), *_life(TCP6, 1),
        *_life(TCP81, 2), _syn(TCP81, 2), ("pkt", TCP80, 3, 1000, RST, False, 0, 60),
        _syn(TCP80, 3), *_life(TCP80, 3, 1001), ("sysctl", ("conn_reuse_mode", 0)),
        _syn(TCP80, 3, 1001), *_life(TCP80, 0, 1002), ("sysctl", ("conn_reuse_mode", 1)),
        _syn(TCP80, 0, 1002), ("sysctl", ("conntrack", 1)), *_life(TCP80, 1, 1003),
        ("sysctl", ("conntrack", 0)), _syn(TCP80, 1, 1003), _syn(TCP80, 1, 1003),
        *_life(TCP81, 1, 1004), ("sysctl", ("expire_nodest_conn", 1)), ("weight", TCP81, 1, 0),
        ("weight", TCP81, 2, 0), ("weight", TCP81, 3, 0), _syn(TCP81, 1, 1004),
        ("weight", TCP81, 1, 1), *_life(TCP80, 2, 1005), ("time", 119.9), _syn(TCP80, 2, 1005),
        *_life(TCP80, 2, 1006), ("time", 200.0), _syn(TCP80, 2, 1006),
    ],
    "thresholds": [
        ("threshold", TCP81, 3, 1), *[_syn(TCP81, c, p) for c in range(4) for p in (1, 2)],
    ],
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_scripted_switches_match_general_path(name: str) -> None:
    _play(Pair("rr"), SCRIPTS[name])


# lc/wlc/sed/nq: the fast path keeps per-destination keys moved at every counter change
# (IpvsEngine._update_least_keys) instead of walking the destinations. Many clients and
# ports, so that counters grow and ties occur; weights (0 = quiesced) edited on the way.
LEAST = ["lc", "wlc", "sed", "nq"]
_least_packet = st.tuples(
    st.just("pkt"),
    st.sampled_from([TCP80, TCP81, TCP6]),
    st.integers(0, 3),
    st.sampled_from([1000, 1001, 1002, 1003, 1004, 1005]),
    st.sampled_from([SYN, SYN, SYN, ACK, FIN, RST, SYNACK]),
    st.booleans(),
    st.just(0),
    st.just(60),
)
_least_config = st.one_of(
    st.tuples(st.just("time"), st.floats(0.5, 150.0)),
    st.tuples(st.just("weight"), st.sampled_from([TCP80, TCP81, TCP6]), st.integers(1, 3),
              st.integers(0, 4)),
    st.tuples(st.just("threshold"), st.sampled_from([TCP80, TCP81]), st.integers(1, 3),
              st.sampled_from([0, 0, 2])),
    st.tuples(st.just("del"), st.sampled_from([TCP80, TCP81, TCP6]), st.integers(1, 3)),
    st.tuples(st.just("add"), st.sampled_from([TCP80, TCP81, TCP6]), st.integers(1, 3)),
    st.tuples(st.just("service"), st.just(TCP80), st.sampled_from(LEAST), st.just(None),
              st.just(False)),
    st.tuples(st.just("synced"), st.sampled_from([TCP80, TCP81]), st.integers(0, 3),
              st.sampled_from([1000, 1001]), st.integers(1, 3),
              st.sampled_from([(0x0, 1), (0x100, 4), (0x100, 7)])),
)


@settings(max_examples=120, deadline=None)
@given(
    sched=st.sampled_from(LEAST),
    weights=st.lists(st.tuples(st.just("weight"), st.sampled_from([TCP80, TCP81, TCP6]),
                               st.integers(1, 3), st.integers(0, 4)), max_size=4),
    actions=st.lists(
        st.integers(0, 9).flatmap(lambda i: _least_packet if i < 8 else _least_config),
        min_size=20, max_size=80,
    ),
)
def test_least_family_matches_general_path(
    sched: str, weights: list[tuple[Any, ...]], actions: list[tuple[Any, ...]]
) -> None:
    pair = Pair(sched)
    now = _play(pair, [*weights, *actions])
    for _ in range(4):
        now += 600.0
        pair.timer(now)
        pair.check(now)


@pytest.mark.parametrize("sched", LEAST)
def test_least_family_flood_matches_general_path(sched: str) -> None:
    """A SYN flood that closes some connections on the way (FIN, RST) and quiesces and
    restores a destination: the keys follow every counter move."""
    pair = Pair(sched)
    now = 0.0
    for i in range(300):
        for target in (TCP80, TCP81, TCP6):
            pair.receive(_packet_info(("pkt", target, i % 4, 1024 + i, SYN, False, 0, 60)), now)
            if i % 3 == 0:
                pair.receive(_packet_info(("pkt", target, i % 4, 1024 + i, ACK, False, 0, 60)),
                             now)
            if i % 5 == 0:
                flags = FIN if i % 10 else RST
                pair.receive(
                    _packet_info(("pkt", target, (i - 5) % 4, 1019 + i, flags, False, 0, 60)),
                    now,
                )
        if i == 100:
            now = _apply_config(pair, ("weight", TCP80, 2, 0), now)
        if i == 200:
            now = _apply_config(pair, ("weight", TCP80, 2, 5), now)
        if i % 50 == 0:
            pair.timer(now)
            pair.check(now)
        now += 0.5
    pair.check(now)


class ConnPacketPair(Pair):
    """The data plane's per-event entry against `receive_packet`: the first engine gets every
    packet of a tuple it has seen an entry for through `receive_conn_packet`, the second
    through `receive_packet`. Both take the fast path for new flows. Every third packet goes
    with the tuple's previous entry when there is one: the adapter still holds a flow's entry
    after the engine ended it (expired, replaced by port reuse, its dest removed) until its
    next tick, and the late events of that flow must do what `receive_packet` does."""

    def __init__(self, sched: str) -> None:
        super().__init__(sched)
        self.engines = [
            IpvsEngine(rng=random.Random(3), options=EngineOptions(report_expiry=True))
            for _ in range(2)
        ]
        for engine in self.engines:
            for svc in self.services.values():
                engine.add_service(svc, now=0.0)
        self.handles: dict[tuple[Any, ...], list[Conn]] = {}
        self.fed = 0  # packets that went through receive_conn_packet
        self.stale = 0  # ... with an entry no longer in the table

    def receive(self, pkt: PacketInfo, now: float) -> None:
        tup = (pkt.protocol, pkt.saddr, pkt.sport, pkt.daddr, pkt.dport)
        conn_path, general = self.engines
        expected = general.receive_packet(pkt, now=now)
        seen = self.handles.setdefault(tup, [])
        if not seen:
            got = conn_path.receive_packet(pkt, now=now)
            assert _verdict(got) == _verdict(expected), pkt
        else:
            handle = seen[-2] if len(seen) > 1 and self.fed % 3 == 0 else seen[-1]
            self.stale += not handle.alive
            conn_path.receive_conn_packet(handle, pkt, now=now)
            self.fed += 1
        current = conn_path.find_conn(pkt.protocol, pkt.saddr, pkt.sport, pkt.daddr, pkt.dport)
        if current is not None and (not seen or seen[-1] is not current):
            seen.append(current)


@settings(max_examples=150, deadline=None)
@given(setup=_setup, actions=_actions, sched=st.sampled_from(SCHEDULERS))
def test_conn_packets_match_receive_packet(
    setup: tuple[list[tuple[Any, ...]], ...], actions: list[tuple[Any, ...]], sched: str
) -> None:
    pair = ConnPacketPair(sched)
    now = _play(pair, [*setup[0], *setup[1], *setup[2], *setup[3], *actions])
    for _ in range(4):
        now += 600.0
        pair.timer(now)
        pair.check(now)


def test_conn_packets_of_proxied_flows_match_receive_packet() -> None:
    """The data plane's sequence per connection (SYN; SYN-ACK and ACK; data; both FINs; a
    reset now and then), for NAT and DR destinations, through expiry and port reuse."""
    pair = ConnPacketPair("wlc")
    now = _apply_config(pair, ("fwd", TCP81, 2, FwdMethod.DROUTE), 0.0)
    for i in range(300):
        for target in (TCP80, TCP81, TCP6, UDP53):
            sport = 1000 + i % 10  # ports come back while their entries still live
            seq: list[tuple[int, bool]] = [(SYN, False), (SYNACK, True), (ACK, False),
                                           (ACK, False), (ACK, True)]
            seq += [(RST, i % 2 == 0)] if i % 7 == 0 else [(FIN | ACK, True), (FIN | ACK, False)]
            for flags, reply in seq:
                pair.receive(_packet_info(("pkt", target, i % 2, sport, flags, reply, 0, 90)),
                             now)
            now += 0.3
        if i % 25 == 0:
            now = _apply_config(pair, ("time", 40.0), now)
        if i == 150:
            now = _apply_config(pair, ("weight", TCP80, 1, 0), now)
            now = _apply_config(pair, ("sysctl", ("expire_nodest_conn", 1)), now)
            now = _apply_config(pair, ("del", TCP80, 2), now)
        pair.check(now)
    assert pair.fed > 3000 and pair.stale > 300  # both kinds of entry were really used
