"""CheckRunner: the asyncio shell that drives the health-check cores.

Shape (STYLE §8.4): one scheduler loop waits for the earliest core deadline (plus a few ms
of timer slack, see `_TIMER_SLACK`) or a wake-up, feeds `handle_timer(now=...)`, drains the
events and carries out the effects: `StartProbe` becomes a probe, `RunScript` a script task.
Probe results are fed back (`record_result`) in batches by one callback per loop turn.
No step holds the loop for long: at most `_START_BATCH` starts and `_FEED_BATCH` results per
loop turn, so answers are read while they are fresh even when a stall left thousands of
probes due at once (an overloaded checker checks less often; it does not fail healthy
servers as timeouts).

Two probe paths. TCP_CHECK and plain HTTP_GET run on `fastpath.FastProbe`, one per check,
started again for each of its probes: socket callbacks from one shared epoll set and one
deadline wheel, no task, delivering the result through a callback; at 10,000 servers that
cut CPU per check by 60-70% against tasks (docs/checks.md, Scale). Every
other kind (and any `probe` a caller passes instead of `run_probe`, such as a test's
scripted probe) runs as a coroutine task in the runner's TaskGroup. Both produce the same
`ProbeResult`s (tests/shell/checks/test_fastpath.py). Facts go to the `emit` callback and
to the log; decisions stay in the cores.

Why one loop over a heap of core deadlines rather than one long-lived task per check: due
probes start in batches from one wake-up instead of one wake-up (a future and a timer) per
check, idle checks hold no task, and lateness (probe start minus its schedule) is measured
in one place. `bench/checks_scale.py --kind scheduler` compares both with the same cores at
10,000 servers: the heap loop needs about 20% less CPU per check.

Timers run on the event loop's clock (`loop.time()`), which is also the `now` given to the
cores. Reload (`apply`) is keyed: cores, trackers and checkers whose keys survive keep their
state; in-flight probes of removed checks are cancelled. `stop()` ends `run()` in order:
probes cancelled (scripts' process groups killed), omega scripts run (bounded), return.
"""

from __future__ import annotations

import asyncio
import heapq
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from hactl.checks.events import (
    CheckChanged,
    CheckEvent,
    HealthChanged,
    ProbeFailed,
    ProbeResult,
    QuorumChanged,
    RunScript,
    StartProbe,
    VirtualServerView,
    WeightChanged,
)
from hactl.checks.fastpath import FastProbe, Poller, ProbePlan, supports
from hactl.checks.model import BfdCheck, CheckKey, CheckSpec, VirtualServerSpec
from hactl.checks.probes import run_probe
from hactl.checks.scripts import ScriptError, ScriptExecutor
from hactl.checks.vserver import VirtualServerHealth
from hactl.errors import StateError
from hactl.ipvs.model import IPAddress, ServiceKey

__all__ = ["CheckRunner", "ProbeFn", "ProbeStats"]

_log = structlog.get_logger("hactl.checks")

# keepalived waits TIMER_HZ (1 s) for notify scripts run at shutdown (omega).
_STOP_SCRIPT_LIMIT = 1.0

# Timer slack (as Linux timerslack or systemd's AccuracySec): the scheduler wakes up to this
# long after the earliest due probe, so one wake-up starts every probe due within the slack.
# Probes of a large pool are spread evenly over the delay loop, so without slack the loop
# would wake once per probe; 5 ms is 1/20 of the lateness the issue allows.
_TIMER_SLACK = 0.005

# At most this many probes start in one go before the scheduler lets the event loop run
# (about 5 ms of connects; checked after each virtual server, whose due probes start
# together). In steady state a wake-up finds fewer: 10,000 checks a second are 50 per
# 5 ms. After a stall (a busy CPU, a long collection) thousands of probes are due at once;
# started in one go, the answers to the first ones would wait behind the connects of the
# last ones, and probes whose answer sat unread past their deadline failed as timeouts: on
# a loaded machine that cascaded into thousands of false failures a second.
_START_BATCH = 64
# Likewise results are fed to the cores at most this many per loop turn (about 5 ms).
_FEED_BATCH = 256


class ProbeFn(Protocol):
    def __call__(
        self,
        spec: CheckSpec,
        addr: IPAddress,
        port: int,
        *,
        scripts: ScriptExecutor | None = None,
        deadline: float | None = None,
    ) -> Awaitable[ProbeResult]: ...


@dataclass(slots=True)
class ProbeStats:
    """Counters and a lateness histogram (1 ms buckets up to 10 s, then an overflow max)."""

    started: int = 0
    completed: int = 0
    failed: int = 0
    lateness_ms: list[int] = field(default_factory=lambda: [0] * 10_001)
    lateness_max: float = 0.0

    def record_start(self, lateness: float) -> None:
        self.started += 1
        bucket = min(10_000, max(0, int(lateness * 1000.0)))
        self.lateness_ms[bucket] += 1
        if lateness > self.lateness_max:
            self.lateness_max = lateness

    def lateness_quantile(self, q: float) -> float:
        """The q-quantile of probe-start lateness in seconds (upper edge of its bucket)."""
        total = sum(self.lateness_ms)
        if not total:
            return 0.0
        rank = q * total
        seen = 0
        for ms, count in enumerate(self.lateness_ms):
            seen += count
            if seen >= rank and count:
                return min((ms + 1) / 1000.0, self.lateness_max)
        return self.lateness_max


class _Slot:
    """A core and its entry in the runner's heap (heap entries hold the slot, not a key,
    so scheduling never hashes addresses)."""

    __slots__ = ("core", "live", "pushed")

    def __init__(self, core: VirtualServerHealth) -> None:
        self.core = core
        self.live = True
        self.pushed: float | None = None


class _SlotProbe(FastProbe):
    """A check's fast probe and what the runner needs when it reports: its check and the
    slot of its virtual server (built once per check, started for each of its probes).

    It reports itself along with the result, through `report` rather than a callback that
    holds the probe: a probe and its callback would form a reference cycle, which only the
    garbage collector frees (and never, once frozen with gc.freeze)."""

    __slots__ = ("_to_runner", "check", "slot")

    def __init__(self, plan: ProbePlan, slot: _Slot, check: CheckKey,
                 to_runner: Callable[[_SlotProbe, ProbeResult], None], poller: Poller) -> None:
        super().__init__(plan, done=_unused, poller=poller)
        self._to_runner = to_runner
        self.slot = slot
        self.check = check

    def report(self, result: ProbeResult) -> None:
        self._to_runner(self, result)


def _unused(result: ProbeResult) -> None:
    raise AssertionError("_SlotProbe reports through report()")


class CheckRunner:
    """Runs the health checks of a set of virtual servers.

    Args:
        specs: the virtual servers to check.
        emit: receives every fact (HealthChanged, DesiredChanged, QuorumChanged, ...) and the
            RunScript effects the runner carries out; called from the event loop.
        rng: source of warmup delays.
        scripts: executor for MISC_CHECK and notify scripts.
        master: initial VRRP mastership (matters for ha_suspend virtual servers).
        probe: the probe coroutine (tests may pass a scripted one).
        notify_time_limit: notify/quorum scripts are killed after this long.
    """

    def __init__(
        self,
        specs: Iterable[VirtualServerSpec],
        *,
        emit: Callable[[CheckEvent], None],
        rng: random.Random,
        scripts: ScriptExecutor | None = None,
        master: bool = True,
        probe: ProbeFn = run_probe,
        notify_time_limit: float = 60.0,
    ) -> None:
        self._specs = tuple(specs)
        self._emit = emit
        self._rng = rng
        self._scripts = scripts if scripts is not None else ScriptExecutor()
        self._master = master
        self._probe = probe
        self._notify_time_limit = notify_time_limit
        self._slots: dict[ServiceKey, _Slot] = {}
        self._heap: list[tuple[float, int, _Slot]] = []
        self._seq = 0
        self._inflight: dict[CheckKey, asyncio.Task[None]] = {}  # coroutine probes
        # The fast path runs only the production probe: a caller's own `probe` must see
        # every call.
        self._use_fast = probe is run_probe
        # the fast probe of each check, started again for each of its probes; rebuilt when
        # the check's spec object or its virtual server's slot changes
        self._fast: dict[CheckKey, _SlotProbe] = {}
        # Results wait here for one callback per loop turn (`_flush`), which feeds them in
        # batches: one drain (and at most one view rebuild) per core, however many came
        # back. The scheduler task is woken only if a result brings a deadline forward.
        self._results: list[tuple[_Slot, CheckKey, ProbeResult]] = []
        self._flush_scheduled = False
        self._crash: BaseException | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: Poller | None = None
        # the scheduler's sleep: a future its timer or `_poke` resolves
        self._waiter: asyncio.Future[None] | None = None
        self._sleeping_until: float | None = None
        self._stopping = False
        self._starts = 0  # probes launched (a task's probe starts when the task runs)
        self.stats = ProbeStats()

    # -- public API ------------------------------------------------------------------------

    def views(self) -> dict[ServiceKey, VirtualServerView]:
        """The current desired view of every virtual server."""
        return {key: slot.core.view for key, slot in self._slots.items()}

    def core(self, key: ServiceKey) -> VirtualServerHealth:
        return self._slots[key].core

    async def run(self) -> None:
        """Check until `stop()`; then cancel probes, run omega scripts and return."""
        loop = self._loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                if self._use_fast:
                    self._poller = Poller(loop)
                for spec in self._specs:
                    # each core's warmup spread starts when it exists: with thousands of
                    # servers, building them all takes long enough to bunch up the first
                    # probes (and keepalived's completion-relative timers keep them bunched)
                    self._add_core(spec, loop.time())
                self._warn_unimplemented(self._specs)
                await self._schedule_loop(loop)
                self._cancel_inflight()
                stop_scripts: list[RunScript] = []
                for slot in self._slots.values():
                    slot.core.shutdown()
                    stop_scripts.extend(
                        e for e in slot.core.pop_events() if isinstance(e, RunScript)
                    )
                for event in stop_scripts:
                    self._emit(event)
                    tg.create_task(self._run_script(event, _STOP_SCRIPT_LIMIT))
        finally:
            self._tg = None
            self._loop = None
            # fast probes are no tasks: the group does not cancel them if run() is cancelled
            self._cancel_inflight()
            if self._poller is not None:
                self._poller.close()
                self._poller = None
                self._fast.clear()  # they belong to that poller

    def _cancel_inflight(self) -> None:
        inflight, self._inflight = self._inflight, {}
        for task in inflight.values():
            task.cancel()
        for probe in self._fast.values():
            probe.cancel()  # a finished one has nothing to stop

    def stop(self) -> None:
        """Ask `run()` to finish (see its docstring)."""
        self._stopping = True
        self._poke(None)

    def apply(self, specs: Iterable[VirtualServerSpec], *, now: float) -> None:
        """Reload: keep state by key, add new servers, drop removed ones."""
        self._specs = tuple(specs)
        if self._tg is None:
            return  # not running yet: run() installs them
        self._feed_results(now)  # results of the old configuration first
        new = {spec.key: spec for spec in self._specs}
        for key in list(self._slots):
            if key not in new:
                self._slots.pop(key).live = False
        for key, spec in new.items():
            slot = self._slots.get(key)
            if slot is None:
                self._add_core(spec, now)
            else:
                slot.core.apply(spec, now=now)
                self._drain(slot, now)
        live = {ck for spec in self._specs for rs in spec.real_servers
                for ck in rs.check_keys(spec.key)}
        for ck, task in list(self._inflight.items()):
            if ck not in live:
                task.cancel()
                del self._inflight[ck]
        for ck, probe in self._fast.items():
            if ck not in live:
                probe.cancel()
        self._fast = {ck: probe for ck, probe in self._fast.items() if ck in live}
        self._warn_unimplemented(self._specs)
        self._poke(None)

    def set_master(self, master: bool, *, now: float) -> None:
        """This director became VRRP master or backup (ha_suspend input)."""
        self._master = master
        for slot in self._slots.values():
            slot.core.set_master(master, now=now)
            self._drain(slot, now)
        self._poke(None)

    # -- scheduling ------------------------------------------------------------------------

    def _add_core(self, spec: VirtualServerSpec, now: float) -> None:
        slot = _Slot(VirtualServerHealth(spec, rng=self._rng, now=now, master=self._master))
        self._slots[spec.key] = slot
        self._drain(slot, now)

    def _push(self, slot: _Slot) -> None:
        at = slot.core.next_deadline()
        if at is None or slot.pushed == at:
            return
        slot.pushed = at
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, slot))
        self._poke(at)

    def _poke(self, at: float | None) -> None:
        """Wake the scheduler if `at` is earlier than what it sleeps towards (None: always).
        While it is awake it recomputes its target anyway."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if at is None or self._sleeping_until is None or at < self._sleeping_until:
            waiter.set_result(None)

    async def _schedule_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        heap = self._heap
        while not self._stopping:
            if self._crash is not None:
                raise self._crash  # a bug met in _flush: crash run() as it would have here
            now = loop.time()
            self._feed_some(now)
            budget = self._starts + _START_BATCH
            while heap and heap[0][0] <= now:
                at, _, slot = heapq.heappop(heap)
                if not slot.live or slot.pushed != at:
                    continue  # stale: a later push superseded it
                slot.pushed = None
                slot.core.handle_timer(now=now)
                self._drain(slot, now)
                if self._starts >= budget:
                    break
            if self._starts >= budget or self._results:
                # Let the loop deliver answers before starting more (see _START_BATCH), or
                # feed the results still waiting (see _FEED_BATCH) after one loop turn.
                await asyncio.sleep(0)
                continue
            # A bare future and one timer: an asyncio.Event under asyncio.timeout_at costs
            # several objects and callbacks per wake-up, and this loop wakes often.
            target = heap[0][0] if heap else None
            waiter = self._waiter = loop.create_future()
            self._sleeping_until = target
            timer = None if target is None else loop.call_at(
                target + _TIMER_SLACK, _resolve, waiter
            )
            try:
                await waiter
            finally:
                self._waiter = None
                self._sleeping_until = None
                if timer is not None:
                    timer.cancel()

    def _result_arrived(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._tg is None or self._stopping or self._loop is None:
            return
        try:
            self._feed_some(self._loop.time())
        except Exception as exc:
            # Not ours to swallow: hand it to the scheduler task, which raises it out of run().
            self._crash = exc
            self._poke(None)

    def _feed_some(self, now: float) -> None:
        """Feed at most `_FEED_BATCH` results now; the rest at the next loop turn."""
        results = self._results
        if len(results) <= _FEED_BATCH:
            self._feed_results(now)
            return
        self._results, rest = results[:_FEED_BATCH], results[_FEED_BATCH:]
        self._feed_results(now)
        # (one check never has two results waiting: order between checks is free)
        self._results.extend(rest)
        self._result_arrived()

    def _feed_results(self, now: float) -> None:
        if not self._results:
            return
        batch, self._results = self._results, []
        touched: dict[int, _Slot] = {}
        for slot, check, result in batch:
            if slot.live:
                slot.core.record_result(check, result, now=now)
                touched[id(slot)] = slot
        for slot in touched.values():
            self._drain(slot, now)

    # -- effects and facts -----------------------------------------------------------------

    def _drain(self, slot: _Slot, now: float) -> None:
        for event in slot.core.pop_events():
            if isinstance(event, StartProbe):
                self._start_probe(slot, event, now)
                continue
            self._emit(event)
            if isinstance(event, RunScript):
                self._spawn_script(event)
            else:
                _log_fact(event)
        self._push(slot)

    def _start_probe(self, slot: _Slot, event: StartProbe, now: float) -> None:
        self._starts += 1
        probe = self._fast.get(event.check)
        if probe is not None or (self._poller is not None and supports(event.spec)):
            self._start_fast(slot, event, probe)
            return
        assert self._tg is not None
        task = self._tg.create_task(self._probe_task(slot, event))
        self._inflight[event.check] = task

    async def _probe_task(self, slot: _Slot, event: StartProbe) -> None:
        rs = event.check.rs
        started = asyncio.get_running_loop().time()
        # lateness is measured when the probe really starts: here, not when it was queued
        self.stats.record_start(started - event.scheduled_at)
        # The full timeout from the moment the probe really starts: on a busy loop a task
        # may start late, and that lateness must not turn into false failures.
        deadline = max(event.deadline, started + event.spec.timeout)
        result = await self._probe(
            event.spec, rs.addr, rs.port, scripts=self._scripts, deadline=deadline
        )
        if self._inflight.get(event.check) is asyncio.current_task():
            del self._inflight[event.check]
        self.stats.completed += 1
        if not result.ok:
            self.stats.failed += 1
        if slot.live and not self._stopping:
            self._results.append((slot, event.check, result))
            self._result_arrived()

    def _start_fast(self, slot: _Slot, event: StartProbe, probe: _SlotProbe | None) -> None:
        check, spec = event.check, event.spec
        if probe is None or probe.plan.spec is not spec or probe.slot is not slot:
            assert self._poller is not None
            probe = _SlotProbe(ProbePlan(spec, check.rs.addr, check.rs.port), slot, check,
                               self._probe_done, self._poller)
            self._fast[check] = probe
        elif not probe.finished:
            # still running: a probe cancelled by a reload comes back finished, so this is
            # a second start of one check, which the tracker never asks for
            raise StateError(f"{check}: probe started while one is in flight")
        # (Fast probes are not entered in _inflight: `_fast` holds each one, running or not,
        # and cancelling a finished one does nothing. That spares three dict operations per
        # probe.)
        # The full timeout from the real start, as in _probe_task: a batch of starts takes
        # a while, so that is not the `now` the core saw.
        probe.start(event.deadline, full_timeout=True)
        self.stats.record_start(probe.started - event.scheduled_at)

    def _probe_done(self, probe: _SlotProbe, result: ProbeResult) -> None:
        slot = probe.slot
        stats = self.stats
        stats.completed += 1
        if not result.ok:
            stats.failed += 1
        if slot.live and not self._stopping:
            self._results.append((slot, probe.check, result))
            if not self._flush_scheduled:
                self._result_arrived()

    def _spawn_script(self, event: RunScript) -> None:
        if self._tg is not None and not self._stopping:
            self._tg.create_task(self._run_script(event, self._notify_time_limit))

    async def _run_script(self, event: RunScript, limit: float) -> None:
        try:
            outcome = await self._scripts.run(event.script, time_limit=limit)
        except ScriptError as exc:
            _log.warning("check.script_failed", script=event.script.argv[0],
                         reason=event.reason, subject=event.subject, error=str(exc))
            return
        if outcome.status != 0:
            _log.warning("check.script_failed", script=event.script.argv[0],
                         reason=event.reason, subject=event.subject, outcome=outcome.describe())

    def _warn_unimplemented(self, specs: Iterable[VirtualServerSpec]) -> None:
        for spec in specs:
            for rs in spec.real_servers:
                for check in rs.checks:
                    if isinstance(check, BfdCheck):
                        _log.warning("check.not_implemented", vs=str(spec.key.addr),
                                     rs=f"{rs.addr}:{rs.port}", check="BFD_CHECK",
                                     note="treated as always up")


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _log_fact(event: CheckEvent) -> None:
    if isinstance(event, HealthChanged):
        _log.info("check.health_changed", rs=str(event.rs), vs=str(event.rs.vs.addr),
                  up=event.up, weight=event.weight, detail=event.detail, initial=event.initial)
    elif isinstance(event, CheckChanged):
        _log.info("check.changed", check=str(event.check), up=event.up, detail=event.detail)
    elif isinstance(event, ProbeFailed):
        _log.info("check.probe_failed", check=str(event.check), detail=event.detail,
                  retries_left=event.retries_left)
    elif isinstance(event, WeightChanged):
        _log.info("check.weight_changed", rs=str(event.rs), weight=event.weight)
    elif isinstance(event, QuorumChanged):
        _log.info("check.quorum_changed", vs=str(event.vs.addr), up=event.up,
                  weight_sum=event.weight_sum, threshold=event.threshold, initial=event.initial)
