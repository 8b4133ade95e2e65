"""VirtualServerHealth: the health of one virtual server and its desired IPVS view (sans-IO).

It owns one `HealthTracker` per real server, schedules them (a heap of their next probe
times, so `next_deadline()` stays cheap with thousands of servers) and turns their verdicts
into a `VirtualServerView` (man 5 keepalived.conf, "Virtual server(s)"; keepalived
ipwrapper.c perform_svr_state / update_quorum_state, restated):

* An alive server is in the pool with its effective weight. A failed one is removed, or,
  with `inhibit_on_failure`, kept with weight 0 (quiesced: existing connections stay).
* Quorum: the sum of the weights of alive servers. It starts up iff the sum reaches
  `quorum + hysteresis`. While up it is lost when the sum drops below
  `quorum - hysteresis` (or to 0); while down it is gained when the sum reaches
  `quorum + hysteresis`. Each change runs `quorum_up` / `quorum_down`.
* `sorry_server`: while quorum is down it is the only server in the pool (alive servers are
  taken out, or quiesced if inhibit_on_failure). With `sorry_server_inhibit` it stays in the
  table with weight 0 while quorum is up. keepalived runs quorum_down at start only when a
  sorry server is configured; so do we.
* A server that comes up runs its `notify_up`, one that goes down its `notify_down`, with no
  extra arguments (keepalived's notify_exec).
* `ha_suspend`: no probes while this director is not master (`set_master`); health state
  is frozen meanwhile.
* `omega`: `shutdown()` runs notify_down of each alive server, then quorum_down.

Must not import asyncio, socket, time, os or structlog.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable

from hactl.checks.events import (
    CheckEvent,
    DesiredChanged,
    HealthChanged,
    ProbeResult,
    QuorumChanged,
    RunScript,
    VirtualServerView,
    WeightChanged,
)
from hactl.checks.model import CheckKey, RealServerKey, RealServerSpec, VirtualServerSpec
from hactl.checks.tracker import HealthTracker
from hactl.errors import StateError
from hactl.ipvs.model import Destination, IPAddress

__all__ = ["VirtualServerHealth"]


class VirtualServerHealth:
    """Health checking core of one virtual server.

    Args:
        spec: the virtual server's health policy and real servers.
        rng: source of warmup delays (shared with the trackers).
        now: construction time.
        master: whether this director is VRRP master (matters only with ha_suspend).
    """

    def __init__(
        self,
        spec: VirtualServerSpec,
        *,
        rng: random.Random,
        now: float,
        master: bool = True,
    ) -> None:
        self.spec = spec
        self._rng = rng
        self._master = master
        self._events: list[CheckEvent] = []
        self._heap: list[tuple[float, int, HealthTracker]] = []
        self._seq = 0
        self._trackers: dict[RealServerKey, HealthTracker] = {}
        # (spec, tracker) in configuration order: the view is built from it without lookups
        self._members: list[tuple[RealServerSpec, HealthTracker]] = []
        self._stopped = False
        self._dirty = False
        self._contrib: dict[HealthTracker, int] = {}
        self._live_weight = 0
        for rs in spec.real_servers:
            self._members.append((rs, self._add_tracker(rs, now)))
        self._recount_weight()
        # ipwrapper.c set_quorum_states: up iff the live weight reaches quorum + hysteresis.
        weight_sum = self._live_weight
        self._quorum_up = weight_sum >= spec.quorum + spec.hysteresis
        self._events.append(
            QuorumChanged(spec.key, self._quorum_up, weight_sum,
                          spec.quorum + spec.hysteresis, initial=True)
        )
        if not self._quorum_up and spec.sorry_server is not None and spec.quorum_down:
            # update_quorum_state(init): "We are starting up and need to add the sorry server".
            self._events.append(RunScript(spec.quorum_down, "quorum_down", self._vs_label()))
        self._view = self._compute_view()
        self._events.append(DesiredChanged(self._view))

    # -- state -----------------------------------------------------------------------------

    @property
    def view(self) -> VirtualServerView:
        self._flush_view()
        return self._view

    @property
    def quorum_up(self) -> bool:
        return self._quorum_up

    @property
    def checks_enabled(self) -> bool:
        return self._master or not self.spec.ha_suspend

    def tracker(self, rs: RealServerKey) -> HealthTracker:
        return self._trackers[rs]

    def trackers(self) -> Iterable[HealthTracker]:
        return self._trackers.values()

    # -- time ------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The earliest probe start among the servers (stale heap entries dropped here)."""
        heap = self._heap
        while heap:
            at, _, tracker = heap[0]
            if not tracker.retired and tracker.due == at:
                return at
            heapq.heappop(heap)
        return None

    def handle_timer(self, *, now: float) -> None:
        """Start the probes that are due (StartProbe events)."""
        heap = self._heap
        events = self._events
        while heap and heap[0][0] <= now:
            at, _, tracker = heapq.heappop(heap)
            if tracker.retired or tracker.due != at:
                continue
            tracker.handle_timer(now=now)
            events.extend(tracker.pop_events())
            due = tracker.due
            if due is not None:  # (`_schedule` inlined: this runs for every probe)
                self._push(due, tracker)

    # -- inputs ----------------------------------------------------------------------------

    def record_result(self, check: CheckKey, result: ProbeResult, *, now: float) -> None:
        """Feed a probe result; results of servers removed by a reload are ignored."""
        tracker = self._trackers.get(check.rs)
        if tracker is None:
            return
        tracker.record_result(check, result, now=now)
        due = tracker.due
        if due is not None and not self._stopped:  # `_schedule`, inlined
            self._push(due, tracker)
        if tracker.has_events:  # most results change nothing
            self._absorb(tracker.pop_events())

    def set_master(self, master: bool, *, now: float) -> None:
        """This director became VRRP master (True) or stopped being it (False)."""
        if master == self._master:
            return
        self._master = master
        if not self.spec.ha_suspend:
            return
        for tracker in self._trackers.values():
            tracker.set_enabled(master, now=now)
            self._schedule(tracker)

    def apply(self, spec: VirtualServerSpec, *, now: float) -> None:
        """Take a new configuration of the same virtual server (reload).

        Real servers whose key is unchanged keep their health; new ones start as at startup
        (without changing quorum state by themselves until re-evaluated below); removed ones
        leave the view. Quorum is re-evaluated against the new settings.

        Raises:
            StateError: `spec` is another virtual server.
        """
        if spec.key != self.spec.key:
            raise StateError(f"apply of {spec.key} to {self.spec.key}")
        self.spec = spec
        old = self._trackers
        self._trackers = {}
        self._members = []
        kept: list[HealthTracker] = []
        for rs in spec.real_servers:
            key = rs.key(spec.key)
            tracker = old.pop(key, None)
            if tracker is None:
                tracker = self._add_tracker(rs, now)
            else:
                tracker.apply(rs, now=now)
                tracker.set_enabled(self.checks_enabled, now=now)
                self._trackers[key] = tracker
                self._schedule(tracker)
                kept.append(tracker)
            self._members.append((rs, tracker))
        for gone in old.values():
            gone.retired = True
        self._recount_weight()
        for tracker in kept:
            self._absorb(tracker.pop_events())
        self._update_quorum()
        self._refresh_view()

    def shutdown(self) -> None:
        """Stop: with omega, run notify_down of each alive server, then quorum_down."""
        if self._stopped:
            return
        self._stopped = True
        self._heap.clear()
        if not self.spec.omega:
            return
        for rs, tracker in self._members:
            if tracker.up and rs.notify_down is not None:
                self._events.append(
                    RunScript(rs.notify_down, "notify_down", str(tracker.key), stopping=True)
                )
        if self.spec.quorum_down is not None:
            self._events.append(
                RunScript(self.spec.quorum_down, "quorum_down", self._vs_label(), stopping=True)
            )

    def pop_events(self) -> list[CheckEvent]:
        """The events since the last call; a changed view comes last, once per call."""
        self._flush_view()
        events, self._events = self._events, []
        return events

    # -- internals -------------------------------------------------------------------------

    def _add_tracker(self, rs: RealServerSpec, now: float) -> HealthTracker:
        tracker = HealthTracker(
            self.spec.key, rs, rng=self._rng, now=now, enabled=self.checks_enabled
        )
        self._trackers[tracker.key] = tracker
        self._schedule(tracker)
        return tracker

    def _schedule(self, tracker: HealthTracker) -> None:
        due = tracker.due
        if due is not None and not self._stopped:
            self._push(due, tracker)

    def _push(self, at: float, tracker: HealthTracker) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, tracker))

    def _absorb(self, events: list[CheckEvent]) -> None:
        changed = False
        for event in events:
            self._events.append(event)
            if isinstance(event, HealthChanged):
                tracker = self._trackers[event.rs]
                self._track_weight(tracker)
                spec = tracker.spec
                script = spec.notify_up if event.up else spec.notify_down
                if script is not None:
                    reason = "notify_up" if event.up else "notify_down"
                    self._events.append(RunScript(script, reason, str(event.rs)))
                changed = changed or not event.initial
            elif isinstance(event, WeightChanged):
                self._track_weight(self._trackers[event.rs])
                changed = True
        if changed:
            self._update_quorum()
            self._refresh_view()

    def _track_weight(self, tracker: HealthTracker) -> None:
        """Keep the live weight sum current in O(1) per transition."""
        new = tracker.weight if tracker.up else 0
        self._live_weight += new - self._contrib.get(tracker, 0)
        self._contrib[tracker] = new

    def _recount_weight(self) -> None:
        self._contrib = {t: (t.weight if t.up else 0) for t in self._trackers.values()}
        self._live_weight = sum(self._contrib.values())

    def _update_quorum(self) -> None:
        spec = self.spec
        weight_sum = self._live_weight
        # ipwrapper.c update_quorum_state: the threshold moves by hysteresis away from the
        # current state, so a pool hovering at `quorum` does not flap.
        sign = -1 if self._quorum_up else 1
        threshold = spec.quorum + sign * spec.hysteresis
        if not self._quorum_up and weight_sum >= threshold:
            self._quorum_up = True
            script, reason = spec.quorum_up, "quorum_up"
        elif self._quorum_up and (weight_sum == 0 or weight_sum < threshold):
            self._quorum_up = False
            script, reason = spec.quorum_down, "quorum_down"
        else:
            return
        self._events.append(QuorumChanged(spec.key, self._quorum_up, weight_sum, threshold))
        if script is not None:
            self._events.append(RunScript(script, reason, self._vs_label()))

    def _refresh_view(self) -> None:
        # Built lazily (at pop_events or `view`): a burst of transitions costs one O(n) build.
        self._dirty = True

    def _flush_view(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        view = self._compute_view()
        if view != self._view:
            self._view = view
            self._events.append(DesiredChanged(view))

    def _compute_view(self) -> VirtualServerView:
        spec = self.spec
        sorry = spec.sorry_server
        sorry_active = sorry is not None and not self._quorum_up
        dests: dict[tuple[IPAddress, int], Destination] = {}
        for rs, tracker in self._members:
            if tracker.up and not sorry_active:
                weight = tracker.weight
            elif rs.inhibit_on_failure:
                weight = 0  # man 5 keepalived.conf: "Set weight to 0 when ... failure"
            else:
                continue
            dests[(rs.addr, rs.port)] = Destination(
                addr=rs.addr, port=rs.port, weight=weight, fwd=rs.fwd,
                u_threshold=rs.u_threshold, l_threshold=rs.l_threshold,
            )
        if sorry is not None:
            key = (sorry.addr, sorry.port)
            if sorry_active:
                dests[key] = Destination(addr=sorry.addr, port=sorry.port, weight=sorry.weight,
                                         fwd=sorry.fwd)
            elif sorry.inhibit and key not in dests:
                dests[key] = Destination(addr=sorry.addr, port=sorry.port, weight=0,
                                         fwd=sorry.fwd)
        return VirtualServerView(
            key=spec.key, destinations=tuple(dests.values()),
            quorum_up=self._quorum_up, sorry_active=sorry_active,
        )

    def _vs_label(self) -> str:
        key = self.spec.key
        if key.is_fwmark:
            return f"FWM {key.fwmark}"
        host = f"[{key.addr}]" if key.addr is not None and key.addr.version == 6 else key.addr
        return f"{host}:{key.port}"

