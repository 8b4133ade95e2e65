"""The drain core, scripted over an explicit clock (aioquic style)."""

from __future__ import annotations

import ipaddress

import pytest

from hactl.api.drain import (
    ConnCounts,
    Drain,
    DrainFinished,
    DrainOptions,
    DrainOutcome,
    DrainProgress,
    ExpireTemplates,
    Quiesce,
    RemoveServer,
)
from hactl.errors import StateError
from hactl.ipvs.model import IpProto, ServiceKey

VS = ServiceKey.for_address(IpProto.TCP, ipaddress.ip_address("10.0.0.1"), 80)
RS = (ipaddress.ip_address("10.0.1.2"), 80)


def test_start_quiesces_and_polls_at_once() -> None:
    drain = Drain(VS, RS, DrainOptions(timeout=30.0), now=100.0)
    assert drain.pop_events() == [Quiesce(VS, RS)]
    assert drain.next_deadline() == 100.0
    assert drain.poll_due(now=100.0)


def test_expire_templates_is_an_effect_after_quiesce() -> None:
    drain = Drain(VS, RS, DrainOptions(expire_templates=True), now=0.0)
    assert drain.pop_events() == [Quiesce(VS, RS), ExpireTemplates(VS, RS)]


def test_connections_falling_then_drained_and_removed() -> None:
    now = 0.0
    drain = Drain(VS, RS, DrainOptions(timeout=60.0, poll_interval=1.0), now=now)
    drain.pop_events()
    drain.record_connections(ConnCounts(5, 3, 0), now=now)
    assert drain.pop_events() == [
        DrainProgress(vs=VS, rs=RS, counts=ConnCounts(5, 3, 0), elapsed=0.0, deadline_in=60.0)
    ]
    assert drain.next_deadline() == 1.0
    now = 1.0
    drain.record_connections(ConnCounts(5, 3, 0), now=now)
    assert drain.pop_events() == []  # unchanged counts: no progress event
    now = 2.0
    drain.record_connections(ConnCounts(1, 0, 0), now=now)
    [progress] = drain.pop_events()
    assert isinstance(progress, DrainProgress) and progress.counts == ConnCounts(1, 0, 0)
    now = 3.0
    drain.record_connections(ConnCounts(0, 0, 0), now=now)
    events = drain.pop_events()
    assert events[-2:] == [
        RemoveServer(VS, RS),
        DrainFinished(vs=VS, rs=RS, outcome=DrainOutcome.DRAINED, counts=ConnCounts(0, 0, 0),
                      elapsed=3.0, removed=True),
    ]
    assert drain.next_deadline() is None
    drain.record_connections(ConnCounts(9, 9, 9), now=4.0)
    assert drain.pop_events() == []


def test_persistent_connections_hold_the_drain_unless_templates_expired() -> None:
    held = Drain(VS, RS, DrainOptions(), now=0.0)
    held.record_connections(ConnCounts(0, 0, 2), now=0.0)
    assert held.finished is None
    expired = Drain(VS, RS, DrainOptions(expire_templates=True), now=0.0)
    expired.record_connections(ConnCounts(0, 0, 2), now=0.0)
    assert expired.finished is not None and expired.finished.outcome is DrainOutcome.DRAINED


def test_deadline_times_out_and_still_removes() -> None:
    drain = Drain(VS, RS, DrainOptions(timeout=2.5, poll_interval=1.0), now=10.0)
    drain.pop_events()
    drain.record_connections(ConnCounts(4, 0, 0), now=10.0)
    drain.pop_events()
    assert drain.next_deadline() == 11.0
    drain.record_connections(ConnCounts(4, 0, 0), now=11.0)
    drain.record_connections(ConnCounts(4, 0, 0), now=12.0)
    assert drain.next_deadline() == 12.5  # the deadline comes before the next poll
    drain.handle_timer(now=12.5)
    events = drain.pop_events()
    assert events == [
        RemoveServer(VS, RS),
        DrainFinished(vs=VS, rs=RS, outcome=DrainOutcome.TIMED_OUT,
                      counts=ConnCounts(4, 0, 0), elapsed=2.5, removed=True),
    ]


def test_keep_leaves_the_server_quiesced() -> None:
    drain = Drain(VS, RS, DrainOptions(remove=False), now=0.0)
    drain.pop_events()
    drain.record_connections(ConnCounts(0, 0, 0), now=0.0)
    events = drain.pop_events()
    assert not any(isinstance(e, RemoveServer) for e in events)
    assert isinstance(events[-1], DrainFinished) and not events[-1].removed


def test_cancel_keeps_quiesced_and_cannot_repeat() -> None:
    drain = Drain(VS, RS, DrainOptions(timeout=5.0), now=0.0)
    drain.pop_events()
    drain.cancel(now=1.0)
    [finished] = drain.pop_events()
    assert isinstance(finished, DrainFinished)
    assert finished.outcome is DrainOutcome.CANCELLED and not finished.removed
    with pytest.raises(StateError):
        drain.cancel(now=2.0)


def test_no_timeout_never_times_out() -> None:
    drain = Drain(VS, RS, DrainOptions(timeout=None, poll_interval=5.0), now=0.0)
    drain.record_connections(ConnCounts(1, 0, 0), now=0.0)
    drain.handle_timer(now=1e9)
    assert drain.finished is None
    assert drain.next_deadline() == 5.0


def test_resume_keeps_original_deadline() -> None:
    drain = Drain(VS, RS, DrainOptions(timeout=10.0), now=500.0, elapsed=7.0)
    assert drain.progress(now=500.0).deadline_in == pytest.approx(3.0)
    drain.handle_timer(now=503.0)
    assert drain.finished is not None and drain.finished.outcome is DrainOutcome.TIMED_OUT
    assert drain.finished.elapsed == pytest.approx(10.0)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError):
        DrainOptions(timeout=-1)
    with pytest.raises(ValueError):
        DrainOptions(poll_interval=0)
