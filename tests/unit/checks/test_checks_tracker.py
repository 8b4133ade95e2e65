"""HealthTracker rules, stepped over an explicit `now` (no event loop)."""

from __future__ import annotations

import ipaddress
import random

import pytest

from hactl.checks.events import (
    CheckChanged,
    CheckEvent,
    HealthChanged,
    ProbeFailed,
    ProbeResult,
    StartProbe,
    WeightChanged,
)
from hactl.checks.model import (
    BfdCheck,
    CheckKey,
    CheckSpec,
    ConnectOptions,
    DnsCheck,
    FileCheck,
    HttpGetCheck,
    MiscCheck,
    RealServerSpec,
    ScriptSpec,
    TcpCheck,
)
from hactl.checks.tracker import HealthTracker, interpret_result
from hactl.errors import StateError
from hactl.ipvs.model import IpProto, ServiceKey

VS = ServiceKey.for_address(IpProto.TCP, ipaddress.ip_address("10.0.0.1"), 80)
RS_ADDR = ipaddress.ip_address("192.168.0.10")
OK = ProbeResult(True, "ok")
FAIL = ProbeResult(False, "refused")


def tcp(**kw: object) -> TcpCheck:
    kw.setdefault("delay_loop", 10.0)
    kw.setdefault("warmup", 0.0)
    kw.setdefault("delay_before_retry", 2.0)
    kw.setdefault("connect", ConnectOptions(connect_timeout=1.0))
    return TcpCheck(**kw)  # type: ignore[arg-type]


def make(*checks: CheckSpec, weight: int = 1, now: float = 0.0, seed: int = 1) -> HealthTracker:
    rs = RealServerSpec(addr=RS_ADDR, port=80, weight=weight, checks=checks)
    return HealthTracker(VS, rs, rng=random.Random(seed), now=now)


def start(t: HealthTracker, now: float) -> list[StartProbe]:
    assert t.next_deadline() is not None and t.next_deadline() <= now  # type: ignore[operator]
    t.handle_timer(now=now)
    events = t.pop_events()
    assert events and all(isinstance(e, StartProbe) for e in events)
    return events  # type: ignore[return-value]


def probe(
    t: HealthTracker, now: float, result: ProbeResult, key: CheckKey | None = None
) -> list[CheckEvent]:
    """Start the due probe of `key` (default: the only checker) and record `result` at `now`."""
    starts = start(t, now)
    chosen = [s for s in starts if key is None or s.check == key]
    assert len(chosen) == 1
    t.record_result(chosen[0].check, result, now=now)
    return t.pop_events()


class TestRetryCounting:
    def test_up_server_goes_down_after_retry_further_failures(self) -> None:
        t = make(tcp(retry=2))
        key = t.check_keys()[0]
        assert t.up and t.next_deadline() == 0.0
        assert probe(t, 0.0, OK) == []
        assert t.next_deadline() == 10.0
        # first failure: retry 1 of 2, scheduled after delay_before_retry
        assert probe(t, 10.0, FAIL) == []
        assert t.up and t.next_deadline() == 12.0
        assert probe(t, 12.0, FAIL) == []
        assert t.up and t.next_deadline() == 14.0
        # the failure with no retry left declares it down
        events = probe(t, 14.0, FAIL)
        assert events == [
            CheckChanged(key, False, "refused"),
            HealthChanged(t.key, False, 1, "refused"),
        ]
        assert not t.up
        # a down checker is probed every delay_loop, on the checker's cadence (0, 10, 20...)
        assert t.next_deadline() == 20.0

    def test_success_resets_the_retry_count(self) -> None:
        t = make(tcp(retry=1))
        probe(t, 0.0, FAIL)
        assert t.next_deadline() == 2.0
        assert probe(t, 2.0, OK) == []
        assert t.next_deadline() == 10.0  # back on the cadence
        assert probe(t, 10.0, FAIL) == []  # counts from zero again
        assert t.up
        assert probe(t, 12.0, FAIL)[-1] == HealthChanged(t.key, False, 1, "refused")

    def test_retry_zero_fails_at_once(self) -> None:
        t = make(tcp(retry=0))
        assert isinstance(probe(t, 0.0, FAIL)[-1], HealthChanged)
        assert not t.up and t.next_deadline() == 10.0

    def test_detection_bound(self) -> None:
        """Down within connect_timeout + retry * (delay_before_retry + connect_timeout) +
        delay_loop of the death, when every failing probe takes the full timeout."""
        spec = tcp(retry=3, delay_loop=5.0, delay_before_retry=1.5)
        t = make(spec)
        probe(t, 0.0, OK)
        death = 0.01  # just after a probe: the worst case
        now = 0.0
        while t.up:
            due = t.next_deadline()
            assert due is not None
            start(t, due)
            now = due + spec.timeout
            t.record_result(t.check_keys()[0], FAIL, now=now)
            t.pop_events()
        bound = spec.timeout + spec.retry * (1.5 + spec.timeout) + spec.delay_loop
        assert now - death <= bound

    def test_regular_probes_keep_a_fixed_cadence(self) -> None:
        """Probes start at anchor + k * delay_loop whatever their duration: a server is
        checked once per delay loop, and the warmup spread survives forever."""
        t = make(tcp(warmup=5.0), seed=3)
        anchor = t.next_deadline()
        assert anchor is not None
        (s,) = start(t, anchor)
        t.record_result(s.check, OK, now=anchor + 0.7)  # a slow probe
        assert t.next_deadline() == anchor + 10.0
        # a probe (or a stalled loop) that overran two slots skips them instead of bunching
        (s,) = start(t, anchor + 10.0)
        t.record_result(s.check, OK, now=anchor + 31.0)
        assert t.next_deadline() == anchor + 40.0

    def test_log_all_failures_reports_each_failed_try(self) -> None:
        t = make(tcp(retry=2, log_all_failures=True))
        key = t.check_keys()[0]
        assert probe(t, 0.0, FAIL) == [ProbeFailed(key, "refused", 2)]
        assert probe(t, 2.0, FAIL) == [ProbeFailed(key, "refused", 1)]
        assert isinstance(probe(t, 4.0, FAIL)[0], CheckChanged)

    def test_kind_defaults(self) -> None:
        assert HttpGetCheck().effective_delay_before_retry == 3.0
        assert DnsCheck(delay_loop=7.0).effective_delay_before_retry == 7.0
        assert DnsCheck().retry == 3
        assert MiscCheck(script=ScriptSpec(argv=("/bin/true",))).retry == 0
        assert TcpCheck().retry == 1 and TcpCheck().effective_delay_before_retry == 1.0
        assert TcpCheck(delay_loop=9.0).effective_warmup == 9.0


class TestRecovery:
    def test_down_server_returns_on_first_success(self) -> None:
        t = make(tcp(retry=0))
        probe(t, 0.0, FAIL)
        events = probe(t, 10.0, OK)
        assert events == [
            CheckChanged(t.check_keys()[0], True, "ok"),
            HealthChanged(t.key, True, 1, "ok"),
        ]
        assert t.next_deadline() == 20.0

    def test_rise_needs_consecutive_successes(self) -> None:
        t = make(tcp(retry=0, rise=3))
        probe(t, 0.0, FAIL)
        assert probe(t, 10.0, OK) == []
        assert probe(t, 20.0, OK) == []
        assert probe(t, 30.0, FAIL) == []  # breaks the run
        assert probe(t, 40.0, OK) == []
        assert probe(t, 50.0, OK) == []
        assert not t.up
        assert probe(t, 60.0, OK)[-1] == HealthChanged(t.key, True, 1, "ok")

    def test_rise_does_not_delay_failure_detection(self) -> None:
        t = make(tcp(retry=0, rise=5))
        assert t.up
        assert isinstance(probe(t, 0.0, FAIL)[-1], HealthChanged)


class TestAlpha:
    def test_alpha_starts_down_until_first_success(self) -> None:
        t = make(tcp(alpha=True))
        assert not t.up
        assert probe(t, 0.0, OK)[-1] == HealthChanged(t.key, True, 1, "ok")

    def test_alpha_first_failure_is_reported_once_as_initial(self) -> None:
        t = make(tcp(alpha=True, retry=2))
        assert probe(t, 0.0, FAIL) == [HealthChanged(t.key, False, 1, "refused", initial=True)]
        # down: no retries, delay_loop
        assert t.next_deadline() == 10.0
        assert probe(t, 10.0, FAIL) == []

    def test_without_alpha_first_success_is_silent(self) -> None:
        t = make(tcp())
        assert t.up
        assert probe(t, 0.0, OK) == []

    def test_alpha_with_rise(self) -> None:
        t = make(tcp(alpha=True, rise=2))
        assert probe(t, 0.0, OK) == []
        assert probe(t, 10.0, OK)[-1] == HealthChanged(t.key, True, 1, "ok")


class TestWarmup:
    def test_first_probe_is_spread_over_warmup_by_the_rng(self) -> None:
        spec = tcp(warmup=None, delay_loop=10.0)  # default: up to delay_loop
        starts = [make(spec, now=100.0, seed=s).next_deadline() for s in range(200)]
        assert all(100.0 <= s <= 110.0 for s in starts)  # type: ignore[operator]
        assert len(set(starts)) == 200
        # a uniform spread: each tenth of the loop gets some servers
        buckets = {int(s - 100.0) for s in starts}  # type: ignore[operator]
        assert buckets == set(range(10))

    def test_same_seed_same_schedule(self) -> None:
        spec = tcp(warmup=3.0)
        assert make(spec, seed=7).next_deadline() == make(spec, seed=7).next_deadline()
        expected = 3.0 * random.Random(7).random()
        assert make(spec, seed=7).next_deadline() == expected

    def test_warmup_zero_starts_at_once(self) -> None:
        assert make(tcp(warmup=0.0), now=5.0).next_deadline() == 5.0


class TestSeveralCheckers:
    def test_all_must_pass(self) -> None:
        a = tcp(retry=0)
        b = tcp(retry=0, connect=ConnectOptions(connect_port=8080, connect_timeout=1.0))
        t = make(a, b)
        ka, kb = t.check_keys()
        assert ka != kb
        starts = start(t, 0.0)
        assert [s.check for s in starts] == [ka, kb]
        t.record_result(kb, FAIL, now=0.5)
        assert t.pop_events() == [
            CheckChanged(kb, False, "refused"),
            HealthChanged(t.key, False, 1, "refused"),
        ]
        t.record_result(ka, OK, now=0.6)
        assert t.pop_events() == []
        assert not t.up
        # a comes back alone: still down until b does
        start(t, 10.5)
        t.record_result(kb, OK, now=10.5)
        assert t.pop_events()[-1] == HealthChanged(t.key, True, 1, "ok")

    def test_no_overlap_while_in_flight(self) -> None:
        t = make(tcp())
        start(t, 0.0)
        assert t.next_deadline() is None
        t.handle_timer(now=100.0)
        assert t.pop_events() == []
        t.record_result(t.check_keys()[0], OK, now=1.0)
        with pytest.raises(StateError):
            t.record_result(t.check_keys()[0], OK, now=1.0)

    def test_probe_deadline_is_the_timeout(self) -> None:
        t = make(tcp())
        (s,) = start(t, 3.0)
        assert s.deadline == 4.0 and s.scheduled_at == 0.0

    def test_bfd_is_never_probed_and_never_fails(self) -> None:
        t = make(BfdCheck(name="x"))
        assert t.up and t.next_deadline() is None


class TestDynamicWeight:
    def test_misc_dynamic_sets_weight_to_status_minus_two(self) -> None:
        misc = MiscCheck(script=ScriptSpec(argv=("/x",)), misc_dynamic=True, warmup=0.0,
                         delay_loop=5.0)
        t = make(misc, weight=3)
        assert probe(t, 0.0, ProbeResult(True, "", value=12)) == [WeightChanged(t.key, 10)]
        assert t.weight == 10
        assert probe(t, 5.0, ProbeResult(True, "", value=0)) == [WeightChanged(t.key, 3)]
        # failure with retry 0: down, adjustment dropped
        assert probe(t, 10.0, ProbeResult(True, "", value=12))[-1] == WeightChanged(t.key, 10)
        events = probe(t, 15.0, ProbeResult(False, "exit 1", value=1))
        assert events[-1] == HealthChanged(t.key, False, 3, "exit 1")

    def test_misc_without_dynamic_treats_2_as_failure(self) -> None:
        misc = MiscCheck(script=ScriptSpec(argv=("/x",)))
        assert interpret_result(misc, 1, ProbeResult(True, "", value=2)) == (False, 0)
        assert interpret_result(misc, 1, ProbeResult(True, "", value=0)) == (True, 0)

    def test_file_check_rules(self) -> None:
        maint = FileCheck(path="/f", weight=0)
        assert interpret_result(maint, 1, ProbeResult(True, value=0)) == (True, 0)
        assert interpret_result(maint, 1, ProbeResult(True, value=1)) == (False, 0)
        dyn = FileCheck(path="/f", weight=2, dynamic=True)
        assert interpret_result(dyn, 1, ProbeResult(True, value=5)) == (True, 10)
        rev = FileCheck(path="/f", weight=2, dynamic=True, reverse=True)
        assert interpret_result(rev, 1, ProbeResult(True, value=5)) == (True, -10)
        assert interpret_result(rev, 1, ProbeResult(True, value=2**30)) == (False, 0)
        static = FileCheck(path="/f", weight=2)
        assert interpret_result(static, 1, ProbeResult(True, value=5)) == (True, 0)
        assert interpret_result(static, 1, ProbeResult(False, "unreadable")) == (False, 0)

    def test_weight_is_clamped_at_zero(self) -> None:
        t = make(FileCheck(path="/f", weight=-1, dynamic=True), weight=3)
        assert probe(t, 0.0, ProbeResult(True, value=10)) == [WeightChanged(t.key, 0)]
        assert t.up and t.weight == 0


class TestSuspendAndReload:
    def test_disabled_tracker_schedules_nothing_and_respreads_on_enable(self) -> None:
        t = make(tcp(warmup=4.0))
        first = t.next_deadline()
        t.set_enabled(False, now=0.0)
        assert t.next_deadline() is None
        t.handle_timer(now=50.0)
        assert t.pop_events() == []
        t.set_enabled(True, now=100.0)
        nd = t.next_deadline()
        assert nd is not None and 100.0 <= nd <= 104.0 and nd != first

    def test_apply_keeps_state_of_unchanged_keys(self) -> None:
        t = make(tcp(retry=0))
        probe(t, 0.0, FAIL)
        assert not t.up
        rs = RealServerSpec(addr=RS_ADDR, port=80, weight=5, checks=(tcp(retry=0, rise=2),))
        t.apply(rs, now=1.0)
        # the configured weight changed: that is a fact even while the server is down
        assert not t.up and t.pop_events() == [WeightChanged(t.key, 5)]
        assert t.next_deadline() == 10.0
        assert probe(t, 10.0, OK) == []  # rise 2 now applies
        assert probe(t, 20.0, OK)[-1] == HealthChanged(t.key, True, 5, "ok")

    def test_apply_removing_the_failed_checker_brings_the_server_up(self) -> None:
        extra = tcp(retry=0, connect=ConnectOptions(connect_port=81, connect_timeout=1.0))
        t = make(tcp(), extra)
        starts = start(t, 0.0)
        t.record_result(starts[1].check, FAIL, now=0.0)
        t.record_result(starts[0].check, OK, now=0.0)
        assert not t.up
        t.pop_events()
        t.apply(RealServerSpec(addr=RS_ADDR, port=80, checks=(tcp(),)), now=1.0)
        assert t.up
        assert t.pop_events() == [HealthChanged(t.key, True, 1, "configuration changed")]
        # a result for the removed checker is ignored
        t.record_result(starts[1].check, OK, now=2.0)

    def test_apply_to_other_server_is_a_bug(self) -> None:
        t = make(tcp())
        with pytest.raises(StateError):
            t.apply(RealServerSpec(addr=RS_ADDR, port=81), now=0.0)
