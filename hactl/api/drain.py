"""The drain lifecycle of one real server, sans-IO.

Rules (the sequence users ask for, PRODUCT §7 item 1):
1. `start`: quiesce (weight 0: the scheduler sends no new connection) and, with
   `expire_templates`, expire the server's persistence templates so persistent clients are
   rescheduled elsewhere too.
2. The shell polls the server's connection counts every `poll_interval` and feeds them to
   `record_connections`. The server is drained when ActiveConn + InActConn reach 0, plus
   PersistConn when templates were not expired (a template still routes its client here).
3. At the deadline (`timeout`; None waits forever) the drain ends TIMED_OUT.
4. DRAINED or TIMED_OUT: `RemoveServer` unless `remove` is False (it then stays quiesced).
   CANCELLED: nothing more; the server stays quiesced until the operator enables it.

Invariants: exactly one `DrainFinished`, always last; no event after it; `Progress` only when
the counts change (plus one for the first reading), so a watcher sees the connections fall.

Must not import: asyncio, time, socket, structlog.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hactl.api.model import RsKey
from hactl.errors import StateError
from hactl.ipvs.model import ServiceKey

__all__ = [
    "ConnCounts",
    "Drain",
    "DrainEvent",
    "DrainFinished",
    "DrainOptions",
    "DrainOutcome",
    "DrainProgress",
    "ExpireTemplates",
    "Quiesce",
    "RemoveServer",
]


class DrainOutcome(enum.StrEnum):
    DRAINED = "drained"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainOptions:
    timeout: float | None = None  # seconds; None: until drained or cancelled
    expire_templates: bool = False
    remove: bool = True  # False: leave the server quiesced at the end
    poll_interval: float = 1.0

    def __post_init__(self) -> None:
        if self.timeout is not None and self.timeout < 0:
            raise ValueError("timeout must be >= 0")
        if self.poll_interval <= 0:
            raise ValueError("poll_interval must be > 0")


@dataclass(frozen=True, slots=True)
class ConnCounts:
    active: int
    inactive: int
    persistent: int

    def remaining(self, *, templates_expired: bool) -> int:
        persistent = 0 if templates_expired else self.persistent
        return self.active + self.inactive + persistent


# Effects (the shell carries them out) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Quiesce:
    vs: ServiceKey
    rs: RsKey


@dataclass(frozen=True, slots=True)
class ExpireTemplates:
    vs: ServiceKey
    rs: RsKey


@dataclass(frozen=True, slots=True)
class RemoveServer:
    vs: ServiceKey
    rs: RsKey


# Facts -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainProgress:
    vs: ServiceKey
    rs: RsKey
    counts: ConnCounts | None  # None: not read yet
    elapsed: float
    deadline_in: float | None  # seconds left; None: no deadline


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainFinished:
    vs: ServiceKey
    rs: RsKey
    outcome: DrainOutcome
    counts: ConnCounts | None
    elapsed: float
    removed: bool


DrainEvent = Quiesce | ExpireTemplates | RemoveServer | DrainProgress | DrainFinished


class Drain:
    """One real server's drain. Construct with `now`; the first events are the quiesce
    effects. Feed `record_connections` and `handle_timer`; pull `pop_events`."""

    def __init__(
        self, vs: ServiceKey, rs: RsKey, options: DrainOptions, *, now: float,
        elapsed: float = 0.0,
    ) -> None:
        """`elapsed` > 0 resumes a drain begun earlier (after a daemon restart): the
        deadline keeps counting from the original start."""
        self.vs = vs
        self.rs = rs
        self.options = options
        self._started = now - elapsed
        self._deadline = None if options.timeout is None else self._started + options.timeout
        self._next_poll = now
        self._counts: ConnCounts | None = None
        self._finished: DrainFinished | None = None
        self._events: list[DrainEvent] = [Quiesce(vs, rs)]
        if options.expire_templates:
            self._events.append(ExpireTemplates(vs, rs))

    # ---- state -------------------------------------------------------------------------

    @property
    def finished(self) -> DrainFinished | None:
        return self._finished

    @property
    def started_at(self) -> float:
        return self._started

    def progress(self, *, now: float) -> DrainProgress:
        """The current progress (what an idempotent second `drain` returns)."""
        left = None if self._deadline is None else max(0.0, self._deadline - now)
        return DrainProgress(
            vs=self.vs, rs=self.rs, counts=self._counts, elapsed=now - self._started,
            deadline_in=left,
        )

    def next_deadline(self) -> float | None:
        """When the shell must call `handle_timer`: the next poll, or the drain deadline."""
        if self._finished is not None:
            return None
        if self._deadline is None:
            return self._next_poll
        return min(self._next_poll, self._deadline)

    def poll_due(self, *, now: float) -> bool:
        """True when the shell should read the counts and call `record_connections`."""
        return self._finished is None and now >= self._next_poll

    # ---- inputs ------------------------------------------------------------------------

    def record_connections(self, counts: ConnCounts, *, now: float) -> None:
        """The server's connection counts, read at `now`. Ignored after the end."""
        if self._finished is not None:
            return
        self._next_poll = now + self.options.poll_interval
        if counts != self._counts:
            self._counts = counts
            self._events.append(self.progress(now=now))
        if counts.remaining(templates_expired=self.options.expire_templates) == 0:
            self._finish(DrainOutcome.DRAINED, now=now)
        elif self._deadline is not None and now >= self._deadline:
            self._finish(DrainOutcome.TIMED_OUT, now=now)

    def handle_timer(self, *, now: float) -> None:
        """Call once `now >= next_deadline()`: ends the drain at its deadline. Polls are the
        shell's (it reads counts when `poll_due`), so a due poll alone changes nothing here."""
        if self._finished is None and self._deadline is not None and now >= self._deadline:
            self._finish(DrainOutcome.TIMED_OUT, now=now)

    def cancel(self, *, now: float) -> None:
        """Stop waiting; the server stays quiesced. Raises StateError after the end."""
        if self._finished is not None:
            raise StateError(f"drain of {self.rs} already finished: {self._finished.outcome}")
        self._finish(DrainOutcome.CANCELLED, now=now)

    def pop_events(self) -> list[DrainEvent]:
        events, self._events = self._events, []
        return events

    # ---- internals ---------------------------------------------------------------------

    def _finish(self, outcome: DrainOutcome, *, now: float) -> None:
        remove = self.options.remove and outcome is not DrainOutcome.CANCELLED
        if remove:
            self._events.append(RemoveServer(self.vs, self.rs))
        self._finished = DrainFinished(
            vs=self.vs, rs=self.rs, outcome=outcome, counts=self._counts,
            elapsed=now - self._started, removed=remove,
        )
        self._events.append(self._finished)
