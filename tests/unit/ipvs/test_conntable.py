"""The expiry wheel of the connection table (lazy re-filing, order, granularity)."""

from __future__ import annotations

import random

import pytest

from hactl.ipvs.conntable import Conn, TimerWheel


def entry(n: int) -> Conn:
    return Conn((n, 1000, 1, 80), None, None, 80, 0)


def due(wheel: TimerWheel, now: float) -> list[Conn]:
    out = []
    for bucket in wheel.pop_due(now):
        for cp in bucket:
            if cp.tb is not bucket:
                continue
            if cp.expires <= now:
                wheel.disarm(cp)
                out.append(cp)
            else:
                wheel.file(cp)
    return out


def test_arm_later_is_lazy_and_earlier_refiles() -> None:
    wheel = TimerWheel(1.0)
    a = entry(1)
    wheel.arm(a, 10.5)
    first = a.tb
    wheel.arm(a, 500.0)  # later: stays in its bucket, only `expires` moves
    assert a.tb is first and len(wheel) == 1
    assert wheel.next_deadline() == 11.0
    assert due(wheel, 11.0) == [] and a.tb is not first  # re-filed when the bucket came due
    assert wheel.next_deadline() == 501.0
    wheel.arm(a, 20.0)  # earlier: filed again, the old copy goes stale
    assert wheel.next_deadline() == 21.0
    assert due(wheel, 20.0) == [a]
    assert due(wheel, 1000.0) == []  # the stale copy is skipped
    assert wheel.next_deadline() is None


def test_partially_due_bucket_keeps_the_rest() -> None:
    wheel = TimerWheel(1.0)
    a, b = entry(1), entry(2)
    wheel.arm(a, 5.2)
    wheel.arm(b, 5.8)
    assert due(wheel, 5.5) == [a]
    assert wheel.next_deadline() == 6.0  # never earlier than now: no busy loop
    assert due(wheel, 6.0) == [b]


def test_random_schedule_matches_a_reference() -> None:
    rng = random.Random(3)
    wheel = TimerWheel(0.5)
    conns = [entry(i) for i in range(200)]
    expiry: dict[int, float] = {}
    for cp in conns:
        t = rng.uniform(0, 100)
        wheel.arm(cp, t)
        expiry[id(cp)] = t
    for _ in range(300):  # random re-arms, earlier or later
        cp = rng.choice(conns)
        t = rng.uniform(0, 100)
        wheel.arm(cp, t)
        expiry[id(cp)] = t
    fired: list[tuple[float, Conn]] = []
    now = 0.0
    while (deadline := wheel.next_deadline()) is not None:
        assert deadline > now or not fired
        now = deadline
        for cp in due(wheel, now):
            assert expiry[id(cp)] <= now < expiry[id(cp)] + 0.5 + 1e-9
            fired.append((now, cp))
    assert sorted(id(cp) for _, cp in fired) == sorted(id(cp) for cp in conns)


def test_entries_and_sample_see_only_current_copies() -> None:
    wheel = TimerWheel(1.0)
    conns = [entry(i) for i in range(10)]
    for i, cp in enumerate(conns):
        wheel.arm(cp, 100.0 + i)
        wheel.arm(cp, 50.0)  # leaves a stale copy behind
    assert sorted(id(c) for c in wheel.entries()) == sorted(id(c) for c in conns)
    assert all(cp in conns for cp in wheel.sample(random.Random(1), 50))


def test_granularity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        TimerWheel(0)
