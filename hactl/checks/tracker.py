"""HealthTracker: the up/down state of one real server and its checkers (sans-IO).

Rules (keepalived check_tcp.c/check_misc.c epilogues and ipwrapper.c
update_svr_checker_state, restated; man 5 keepalived.conf, real_server and CHECKER_TYPE):

* Regular probes keep a fixed cadence: they start at `anchor + k * delay_loop`, where the
  anchor is the checker's first (warmup) start. keepalived waits delay_loop after each
  probe ends, so its probes drift by their own duration and, after a stall, bunch up for
  good; a cadence checks every server once per delay loop and keeps the warmup spread. A
  probe that overruns slots skips them (one probe in flight per checker, always).
* A checker that is up and fails is retried `retry` more times, each retry
  `delay_before_retry` after the previous probe ended (keepalived); the failure that finds
  no retry left declares it down. So a server that dies is declared down by the probe that
  starts at most `delay_loop` after the death plus `retry` retries: within
  `connect_timeout + retry * (delay_before_retry + connect_timeout) + delay_loop`.
  A success while up resets the retry count; the next probe is the next cadence slot.
* A checker that is down is probed every `delay_loop`. It comes back up after `rise`
  consecutive successes (hactl extension; keepalived has rise only for vrrp_script, its
  behaviour is rise 1). A failure resets the count.
* `alpha`: the checker starts down (the server out of the pool) until it succeeds; without
  alpha it starts up. The first verdict of an alpha server that stays down is reported
  (`HealthChanged(initial=True)`) so that its notify_down runs (keepalived runs it then
  for checkers with retry 0 only).
* `warmup`: the first probe of each checker starts after a random delay in [0, warmup]
  (default: up to delay_loop), drawn from the injected `rng`: the probes of many servers
  spread over the delay loop instead of firing together.
* A real server is alive iff every checker is up (BFD_CHECK, not implemented, counts as
  up). Its effective weight is the configured weight plus the dynamic adjustments of its
  checkers (misc_dynamic: exit status - 2 replaces the weight; FILE_CHECK dynamic: value *
  weight is added), clamped to [0, 2**31 - 1] as keepalived's real_weight() does. An
  adjustment is dropped when its checker is declared down.
* A checker never has two probes in flight: it is rescheduled only when its result comes in.
  Different checkers of one server are independent, as in keepalived.
* While disabled (`ha_suspend` on a director that is not master) nothing is probed; on
  re-enable each checker starts again after a random delay in [0, warmup].

Inputs: `handle_timer`, `record_result`, `set_enabled`, `apply` (reload, state kept by
CheckKey). Outputs: `pop_events()` (StartProbe effects; CheckChanged, ProbeFailed,
HealthChanged, WeightChanged facts), `next_deadline()`.

Must not import asyncio, socket, time, os or structlog.
"""

from __future__ import annotations

import math
import random

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
    IPVS_WEIGHT_MAX,
    BfdCheck,
    CheckKey,
    CheckSpec,
    FileCheck,
    MiscCheck,
    RealServerKey,
    RealServerSpec,
)
from hactl.errors import StateError
from hactl.ipvs.model import ServiceKey

__all__ = ["HealthTracker", "interpret_result"]

# keepalived IPVS_WEIGHT_FAULT: a FILE_CHECK adjustment at or below this is a failure.
_WEIGHT_FAULT = -(2**31)


def interpret_result(spec: CheckSpec, rs_weight: int, result: ProbeResult) -> tuple[bool, int]:
    """(success, weight adjustment) of one probe result, by the checker's rules.

    MISC_CHECK misc_dynamic: exit status 2-255 is a success that sets the server's weight to
    status - 2 (an adjustment of status - 2 - configured weight); status 0 is a success with
    no adjustment (man 5 keepalived.conf, MISC_CHECK). FILE_CHECK: with weight 0 a non-zero
    value is a failure; otherwise value * weight (negated with `reverse`) at or below -2**31
    is a failure and, with `dynamic`, the adjustment (man 5 keepalived.conf, "Track files").
    """
    if isinstance(spec, MiscCheck):
        status = result.value
        if spec.misc_dynamic and status is not None and 2 <= status <= 255:
            return True, status - 2 - rs_weight
        return result.ok and status in (None, 0), 0
    if isinstance(spec, FileCheck):
        if not result.ok or result.value is None:
            return False, 0
        if spec.weight == 0:
            return result.value == 0, 0
        adjust = result.value * spec.weight * (-1 if spec.reverse else 1)
        if adjust <= _WEIGHT_FAULT:
            return False, 0
        return True, adjust if spec.dynamic else 0
    return result.ok, 0


class _Checker:
    """Mutable per-checker state; owned by one HealthTracker."""

    __slots__ = (
        "adjust",
        "anchor",
        "has_run",
        "in_flight",
        "key",
        "next_at",
        "retry_it",
        "rise_count",
        "spec",
        "up",
    )

    def __init__(self, key: CheckKey, spec: CheckSpec, next_at: float | None) -> None:
        self.key = key
        self.spec = spec
        self.up = not spec.alpha
        self.has_run = False
        self.retry_it = 0
        self.rise_count = 0
        self.adjust = 0
        self.in_flight = False
        self.next_at = next_at
        # The checker's cadence: regular probes start at anchor + k * delay_loop.
        self.anchor = next_at if next_at is not None else 0.0

    def next_slot(self, now: float) -> float:
        """The first cadence slot after `now`."""
        period = self.spec.delay_loop
        return self.anchor + (math.floor((now - self.anchor) / period) + 1) * period


class HealthTracker:
    """Health of one real server of one virtual server.

    Args:
        vs: the virtual service the server belongs to (part of every key).
        spec: the real server and its checkers.
        rng: source of the warmup delays.
        now: construction time; first probes are scheduled from it.
        enabled: False to start suspended (ha_suspend on a backup director).
    """

    __slots__ = ("_alive", "_checkers", "_enabled", "_events", "_initial_reported", "_rng",
                 "_weight", "due", "key", "retired", "spec")

    def __init__(
        self,
        vs: ServiceKey,
        spec: RealServerSpec,
        *,
        rng: random.Random,
        now: float,
        enabled: bool = True,
    ) -> None:
        self.key: RealServerKey = spec.key(vs)
        self.spec = spec
        self._rng = rng
        self._enabled = enabled
        self._events: list[CheckEvent] = []
        self._checkers: dict[CheckKey, _Checker] = {}
        for key, check in zip(spec.check_keys(vs, self.key), spec.checks, strict=True):
            self._checkers[key] = _Checker(key, check, self._first_probe_at(check, now))
        self._alive = self._compute_alive()
        self._weight = self._compute_weight()
        self._initial_reported = False
        # Set by the owner when a reload drops this server; its pending timers are void.
        self.retired = False
        # `next_probe_at()`, kept current by every input (read for each probe by the owner's
        # heap, several times: an attribute rather than a loop over the checkers each time)
        self.due: float | None = None
        self._update_due()

    # -- state -----------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        """True while every checker is up."""
        return self._alive

    @property
    def weight(self) -> int:
        """The effective weight: configured weight plus dynamic adjustments, clamped."""
        return self._weight

    @property
    def enabled(self) -> bool:
        return self._enabled

    def checker_up(self, check: CheckKey) -> bool:
        return self._checkers[check].up

    def check_keys(self) -> tuple[CheckKey, ...]:
        return tuple(self._checkers)

    # -- time ------------------------------------------------------------------------------

    def next_probe_at(self) -> float | None:
        """When the earliest idle checker is due; None if nothing is scheduled (also the
        attribute `due`)."""
        return self.due

    def next_deadline(self) -> float | None:
        return self.next_probe_at()

    def handle_timer(self, *, now: float) -> None:
        """Start every checker whose time has come (emits StartProbe, marks it in flight)."""
        if not self._enabled:
            return
        for c in self._checkers.values():
            if c.in_flight or c.next_at is None or c.next_at > now:
                continue
            c.in_flight = True
            self._events.append(
                StartProbe(c.key, c.spec, scheduled_at=c.next_at, deadline=now + c.spec.timeout)
            )
            c.next_at = None
        self._update_due()

    # -- inputs ----------------------------------------------------------------------------

    def record_result(self, check: CheckKey, result: ProbeResult, *, now: float) -> None:
        """Feed the result of the probe started for `check`.

        Results for checkers removed by `apply` while their probe ran are ignored.

        Raises:
            StateError: `check` has no probe in flight.
        """
        c = self._checkers.get(check)
        if c is None:
            return
        if not c.in_flight:
            raise StateError(f"result for {check} without a probe in flight")
        c.in_flight = False
        spec = c.spec
        ok, adjust = interpret_result(spec, self.spec.weight, result)
        retry_delay: float | None = None
        was_first = not c.has_run
        c.has_run = True
        was_up, was_adjust = c.up, c.adjust
        if ok:
            c.retry_it = 0
            c.adjust = adjust
            if not c.up:
                c.rise_count += 1
                if c.rise_count >= spec.rise:
                    c.rise_count = 0
                    c.up = True
                    self._events.append(CheckChanged(check, True, result.detail))
        else:
            c.rise_count = 0
            if c.up:
                if c.retry_it < spec.retry:
                    # man 5 keepalived.conf: "Retry count to make additional checks if check
                    # of an alive server fails", each after delay_before_retry.
                    c.retry_it += 1
                    retry_delay = spec.effective_delay_before_retry
                    if spec.log_all_failures:
                        left = spec.retry - c.retry_it + 1
                        self._events.append(ProbeFailed(check, result.detail, left))
                else:
                    c.retry_it = 0
                    c.up = False
                    c.adjust = 0  # check_misc.c: the dynamic weight goes with the checker
                    self._events.append(CheckChanged(check, False, result.detail))
            elif was_first and spec.alpha and not self._initial_reported:
                self._initial_reported = True
                self._events.append(
                    HealthChanged(self.key, False, self._weight, result.detail, initial=True)
                )
        # Retries follow the failed probe by delay_before_retry (keepalived); regular probes
        # keep the checker's cadence, skipping slots a slow probe overran.
        c.next_at = now + retry_delay if retry_delay is not None else c.next_slot(now)
        self._update_due()
        if c.up != was_up or c.adjust != was_adjust:
            self._refresh(result.detail)

    def set_enabled(self, enabled: bool, *, now: float) -> None:
        """Suspend or resume probing (ha_suspend). State is kept while suspended."""
        if enabled == self._enabled:
            return
        self._enabled = enabled
        if enabled:
            for c in self._checkers.values():
                if not c.in_flight and c.next_at is not None:
                    at = self._first_probe_at(c.spec, now)
                    c.next_at = at
                    if at is not None:
                        c.anchor = at
        self._update_due()

    def apply(self, spec: RealServerSpec, *, now: float) -> None:
        """Take a new configuration of the same real server (reload).

        Checkers whose key is unchanged keep their state (up/down, retry and rise counts,
        schedule, a probe in flight) and take the new options; new checkers start as at
        startup; removed ones are forgotten.

        Raises:
            StateError: `spec` is a different real server.
        """
        if spec.key(self.key.vs) != self.key:
            raise StateError(f"apply of {spec.addr}:{spec.port} to {self.key}")
        self.spec = spec
        old = self._checkers
        self._checkers = {}
        for key, check in zip(spec.check_keys(self.key.vs, self.key), spec.checks, strict=True):
            c = old.get(key)
            if c is None:
                c = _Checker(key, check, self._first_probe_at(check, now))
            else:
                shorter = check.delay_loop < c.spec.delay_loop
                if shorter and not c.in_flight and c.next_at is not None:
                    c.next_at = min(c.next_at, now + check.delay_loop)
                if check.delay_loop != c.spec.delay_loop and c.next_at is not None:
                    c.anchor = c.next_at  # a new cadence from the next probe on
                c.spec = check
                c.retry_it = min(c.retry_it, check.retry)
            self._checkers[key] = c
        self._update_due()
        self._refresh("configuration changed")

    @property
    def has_events(self) -> bool:
        """Whether `pop_events()` would return anything."""
        return bool(self._events)

    def pop_events(self) -> list[CheckEvent]:
        """The events since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    # -- internals -------------------------------------------------------------------------

    def _first_probe_at(self, check: CheckSpec, now: float) -> float | None:
        if isinstance(check, BfdCheck):
            return None
        warmup = check.effective_warmup
        # man 5 keepalived.conf, warmup: "random delay to start the initial check for
        # maximum N seconds ... Specify 0 to disable".
        return now + warmup * self._rng.random() if warmup > 0 else now

    def _update_due(self) -> None:
        """Recompute `due`: the earliest idle checker's next probe, None while disabled."""
        best: float | None = None
        if self._enabled:
            for c in self._checkers.values():
                at = c.next_at
                if at is not None and not c.in_flight and (best is None or at < best):
                    best = at
        self.due = best

    def _compute_alive(self) -> bool:
        return all(c.up for c in self._checkers.values())

    def _compute_weight(self) -> int:
        total = self.spec.weight + sum(c.adjust for c in self._checkers.values())
        return max(0, min(IPVS_WEIGHT_MAX, total))

    def _refresh(self, detail: str) -> None:
        alive = self._compute_alive()
        weight = self._compute_weight()
        if alive != self._alive:
            self._alive = alive
            self._weight = weight
            self._initial_reported = True
            self._events.append(HealthChanged(self.key, alive, weight, detail))
        elif weight != self._weight:
            self._weight = weight
            self._events.append(WeightChanged(self.key, weight))
