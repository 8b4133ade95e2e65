"""Accounting invariants under random traffic and configuration changes (hypothesis).

After any sequence of packets, timer runs, quiesces, removals and re-adds:
* every destination's activeconns / inactconns / persistconns equal the number of entries
  bound to it without INACTIVE / with INACTIVE / as templates (§3.3, §3.4, §4);
* OVERLOAD is never set on a destination without an upper threshold (§6.1);
* the connection table holds exactly the listed entries;
* once time passes, every entry (templates included) drains: nothing leaks a count or a
  controlled-connection reference.
"""

from __future__ import annotations

from collections import Counter

from engine_support import ACK, FIN, RST, SYN, SYNACK, Client, dest, make_engine, rs, tcp_service
from hypothesis import given, settings
from hypothesis import strategies as st

from hactl.ipvs.engine import IpvsEngine
from hactl.ipvs.model import (
    IP_VS_CONN_F_INACTIVE,
    IP_VS_CONN_F_TEMPLATE,
    FwdMethod,
    IpvsSysctl,
)

_FLAGS = [SYN, ACK, FIN, RST, SYNACK, 0]

_actions = st.lists(
    st.one_of(
        st.tuples(
            st.just("pkt"),
            st.integers(0, 5),  # client
            st.sampled_from(_FLAGS),
            st.booleans(),  # reply?
        ),
        st.tuples(st.just("time"), st.floats(0.1, 400.0)),
        st.tuples(st.just("weight"), st.integers(1, 3), st.integers(0, 2)),
        st.tuples(st.just("del"), st.integers(1, 3)),
        st.tuples(st.just("add"), st.integers(1, 3)),
    ),
    max_size=60,
)


def check_invariants(engine: IpvsEngine, now: float) -> None:
    listed = list(engine.connections(now=now))
    templates = [c for c in listed if c.flags & IP_VS_CONN_F_TEMPLATE]
    assert len(listed) - len(templates) == engine.conn_count()
    assert len({(c.caddr, c.cport, c.vaddr, c.vport, c.protocol) for c in listed}) <= len(
        listed
    )
    seen: dict[object, Counter[str]] = {}
    for c in listed:
        kind = (
            "persist"
            if c.flags & IP_VS_CONN_F_TEMPLATE
            else "inact"
            if c.flags & IP_VS_CONN_F_INACTIVE
            else "active"
        )
        # Every real server here listens on port 80, so the address names the dest (an
        # invalidated template shows dport 0xffff but still counts on its dest, §4.2).
        seen.setdefault(c.daddr, Counter())[kind] += 1
    for svc in engine.services():
        for d in svc.dests:
            got = seen.get(d.dest.addr, Counter())
            assert (d.activeconns, d.inactconns, d.persistconns) == (
                got["active"], got["inact"], got["persist"],
            ), (d, got)
            if not d.dest.u_threshold:
                assert not d.overloaded


@settings(max_examples=150, deadline=None)
@given(
    actions=_actions,
    persistent=st.booleans(),
    dr=st.booleans(),
    reuse=st.sampled_from([0, 1, 2]),
    nodest=st.sampled_from([0, 1]),
    conntrack=st.sampled_from([0, 1]),
    sloppy=st.sampled_from([0, 1]),
)
def test_accounting_invariants(
    actions: list[tuple[object, ...]],
    persistent: bool,
    dr: bool,
    reuse: int,
    nodest: int,
    conntrack: int,
    sloppy: int,
) -> None:
    fwd = FwdMethod.DROUTE if dr else FwdMethod.MASQ
    svc = tcp_service(
        dest(1, fwd=fwd), dest(2, fwd=fwd, u=3, l=1), dest(3, fwd=fwd),
        persistence=120 if persistent else None, netmask=31,
    )
    engine = make_engine(
        svc,
        sysctl=IpvsSysctl(conn_reuse_mode=reuse, expire_nodest_conn=nodest,
                          conntrack=conntrack, sloppy_tcp=sloppy,
                          expire_quiescent_template=nodest),
    )
    clients = [Client(engine, f"10.9.0.{i // 2}", 40000 + i) for i in range(6)]
    present = {1, 2, 3}
    now = 0.0
    for action in actions:
        kind = action[0]
        if kind == "pkt":
            _, i, flags, reply = action
            c = clients[i]  # type: ignore[index]
            (c.reply if reply else c.send)(flags, now=now)  # type: ignore[arg-type]
        elif kind == "time":
            now += action[1]  # type: ignore[operator]
            engine.handle_timer(now=now)
        elif kind == "weight" and action[1] in present:
            n, w = action[1], action[2]
            engine.edit_dest(svc.key, dest(n, weight=w, fwd=fwd, u=3 if n == 2 else 0,  # type: ignore[arg-type]
                                           l=1 if n == 2 else 0), now=now)
        elif kind == "del" and action[1] in present:
            engine.del_dest(svc.key, rs(action[1]), 80, now=now)  # type: ignore[arg-type]
            present.discard(action[1])  # type: ignore[arg-type]
        elif kind == "add" and action[1] not in present:
            engine.add_dest(svc.key, dest(action[1], fwd=fwd), now=now)  # type: ignore[arg-type]
            present.add(action[1])  # type: ignore[arg-type]
        check_invariants(engine, now)
    # Everything drains once time passes: no leaked entry, no leaked count.
    for _ in range(40):
        now += 120
        engine.handle_timer(now=now)
    assert list(engine.connections(now=now)) == []
    check_invariants(engine, now)
