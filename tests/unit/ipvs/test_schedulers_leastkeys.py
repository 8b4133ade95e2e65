"""lc/wlc/sed/nq as "first least key" (`least_keys`) against the schedulers' own walks.

The engine's new-connection fast path does not run `schedule()` of lc, wlc, sed and nq: it
keeps per-candidate integer keys up to date as the connection counters move and takes the
first index of the least key (spec §6.4-§6.7). These properties hold that restatement to the
reference walks (ip_vs_lc_schedule, ip_vs_wlc_schedule, ip_vs_sed_schedule,
ip_vs_nq_schedule) over random weights, counters and quiesced destinations, both for keys
computed from scratch and for keys moved by the per-connection increments.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hactl.ipvs.schedulers import (
    SCHEDULER_NAMES,
    LeastKeys,
    SchedPacket,
    least_keys,
    make_scheduler,
)

LEAST = ["lc", "wlc", "sed", "nq"]
PKT = SchedPacket(2, 6, IPv4Address("10.9.0.1"), 1000, IPv4Address("10.0.0.1"), 80)


@dataclass(eq=False, slots=True)
class D:
    addr: IPv4Address
    port: int
    weight: int
    activeconns: int
    inactconns: int
    persistconns: int = 0
    overloaded: bool = False


def _dests(spec: list[tuple[int, int, int]]) -> list[D]:
    return [D(IPv4Address(0xC0A80101 + i), 80, w, a, n) for i, (w, a, n) in enumerate(spec)]


def _choice(plan: LeastKeys[Any], keys: list[int]) -> Any:
    """The fast path's decision, written plainly: nq's first idle, else the first least."""
    if not keys:
        return None
    if plan.idle:
        for i, k in enumerate(keys):
            if k == plan.base[i]:
                return plan.dests[i]
    return plan.dests[keys.index(min(keys))]


def _keys(plan: LeastKeys[Any]) -> list[int]:
    return [
        d.activeconns * a + d.inactconns * i + b
        for d, a, i, b in zip(plan.dests, plan.act, plan.inact, plan.base, strict=True)
    ]


# Weights: often all equal (the "plain" farm), often with quiesced (0) ones, sometimes large
# (kernel weights go up to 65535, so the lcm of the multipliers can be big).
_weight = st.one_of(st.integers(0, 5), st.sampled_from([0, 1, 1, 100, 65534, 65535]))
_dest = st.tuples(
    _weight,
    st.one_of(st.integers(0, 4), st.integers(0, 10**6)),  # activeconns
    st.one_of(st.integers(0, 600), st.integers(0, 10**6)),  # inactconns
)
_farm = st.one_of(
    st.lists(_dest, max_size=12),
    # All weights equal, counters close together: ties everywhere.
    st.tuples(
        st.integers(1, 3),
        st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3)), min_size=1, max_size=10),
    ).map(lambda t: [(t[0], a, n) for a, n in t[1]]),
)


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(LEAST), spec=_farm)
def test_least_key_choice_is_the_schedulers_choice(
    name: str, spec: list[tuple[int, int, int]]
) -> None:
    dests = _dests(spec)
    sched = make_scheduler(name, sched_flags=0, rng=random.Random(0))
    sched.update_dests(dests)
    plan = least_keys(sched, dests)
    assert plan is not None
    assert list(plan.dests) == [d for d in dests if d.weight > 0]
    assert _choice(plan, _keys(plan)) is sched.schedule(dests, PKT, now=0.0)


# One connection event on destination `i`: open (inactive, as ip_vs_bind_dest leaves it),
# activate, deactivate, close an active one, close an inactive one.
_move = st.tuples(st.integers(0, 11), st.sampled_from(["open", "up", "down", "close_a", "close_i"]))


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(LEAST),
    spec=st.lists(
        st.tuples(_weight, st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=12
    ),
    moves=st.lists(_move, max_size=60),
)
def test_incremental_keys_follow_the_counters(
    name: str, spec: list[tuple[int, int, int]], moves: list[tuple[int, str]]
) -> None:
    """Keys moved by `act` / `inact` per connection, as the engine moves them, stay equal to
    keys computed from the counters, and every decision matches the scheduler's walk."""
    dests = _dests(spec)
    sched = make_scheduler(name, sched_flags=0, rng=random.Random(0))
    sched.update_dests(dests)
    plan = least_keys(sched, dests)
    assert plan is not None
    keys = _keys(plan)
    pos = {id(d): i for i, d in enumerate(plan.dests)}
    for n, move in moves:
        d = dests[n % len(dests)]
        da = dn = 0
        if move == "open":
            dn = 1
        elif move == "up" and d.inactconns:
            da, dn = 1, -1
        elif move == "down" and d.activeconns:
            da, dn = -1, 1
        elif move == "close_a" and d.activeconns:
            da = -1
        elif move == "close_i" and d.inactconns:
            dn = -1
        d.activeconns += da
        d.inactconns += dn
        i = pos.get(id(d))
        if i is not None:
            keys[i] += da * plan.act[i] + dn * plan.inact[i]
        assert keys == _keys(plan)
        assert _choice(plan, keys) is sched.schedule(dests, PKT, now=0.0)


def test_least_keys_only_for_the_least_family() -> None:
    dests = _dests([(1, 0, 0), (2, 0, 0)])
    for name in SCHEDULER_NAMES:
        sched = make_scheduler(name, sched_flags=0, rng=random.Random(0))
        sched.update_dests(dests)
        assert (least_keys(sched, dests) is not None) == (name in LEAST), name


def test_least_keys_by_hand() -> None:
    """§6.5: weights 2, 3, 0, 1 -> lcm 6, multipliers 3, 2, 1; wlc weighs an active
    connection 256 inactive ones; sed/nq count active connections + 1; lc ignores weights."""
    dests = _dests([(2, 1, 5), (3, 0, 0), (0, 9, 9), (1, 0, 1)])
    a, b, _, d = dests
    by_name = {}
    for name in LEAST:
        sched = make_scheduler(name, sched_flags=0, rng=random.Random(0))
        plan = least_keys(sched, dests)
        assert plan is not None and plan.dests == (a, b, d)
        by_name[name] = (plan.act, plan.inact, plan.base, plan.idle, _keys(plan))
    assert by_name["wlc"] == ((768, 512, 1536), (3, 2, 6), (0, 0, 0), False, [783, 0, 6])
    assert by_name["lc"] == ((256, 256, 256), (1, 1, 1), (0, 0, 0), False, [261, 0, 1])
    assert by_name["sed"] == ((3, 2, 6), (0, 0, 0), (3, 2, 6), False, [6, 2, 6])
    assert by_name["nq"] == ((3, 2, 6), (0, 0, 0), (3, 2, 6), True, [6, 2, 6])
