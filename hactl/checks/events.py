"""Values exchanged between the health-check cores and their shell (frozen dataclasses).

* `ProbeResult` is the one input value: what a probe found (probes return it, never raise).
* Effects (imperative names) the shell must carry out: `StartProbe`, `RunScript`.
* Facts (past tense) the shell logs or forwards: `ProbeFailed`, `CheckChanged`,
  `HealthChanged`, `WeightChanged`, `QuorumChanged`, `DesiredChanged`.
* `VirtualServerView` is the per-virtual-server desired state health produces; it maps
  one-to-one onto `hactl.ipvs.model.VirtualService.destinations`.

Pure data: imports nothing from hactl but the models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from hactl.checks.model import CheckKey, CheckSpec, RealServerKey, ScriptSpec
from hactl.ipvs.model import Destination, IpvsTable, ServiceKey, VirtualService

__all__ = [
    "CheckChanged",
    "CheckEvent",
    "DesiredChanged",
    "HealthChanged",
    "ProbeFailed",
    "ProbeResult",
    "QuorumChanged",
    "RunScript",
    "StartProbe",
    "VirtualServerView",
    "WeightChanged",
    "apply_views",
]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe.

    `value` carries a checker-specific number the core interprets: the exit status of a
    MISC_CHECK script, the number read by a FILE_CHECK.
    """

    ok: bool
    detail: str = ""
    elapsed: float = 0.0
    value: int | None = None


@dataclass(frozen=True, slots=True)
class StartProbe:
    """Effect: run `spec`'s probe now; it must be cancelled (and counted failed) at `deadline`.

    `scheduled_at` is when the probe was due, so the shell can measure its lateness.
    """

    check: CheckKey
    spec: CheckSpec
    scheduled_at: float
    deadline: float


@dataclass(frozen=True, slots=True)
class ProbeFailed:
    """Fact: a probe of an up checker failed; `retries_left` more tries before it is down.

    Emitted only for checkers with `log_all_failures` (keepalived's option of that name).
    """

    check: CheckKey
    detail: str
    retries_left: int


@dataclass(frozen=True, slots=True)
class CheckChanged:
    """Fact: one checker went up or down."""

    check: CheckKey
    up: bool
    detail: str


@dataclass(frozen=True, slots=True)
class HealthChanged:
    """Fact: a real server became alive (every checker up) or not.

    `initial` marks the first verdict of an `alpha` server that is confirmed down: it was
    never up, but keepalived runs its notify_down then.
    """

    rs: RealServerKey
    up: bool
    weight: int
    detail: str = ""
    initial: bool = False


@dataclass(frozen=True, slots=True)
class WeightChanged:
    """Fact: a real server's effective weight changed (misc_dynamic, FILE_CHECK dynamic)."""

    rs: RealServerKey
    weight: int


@dataclass(frozen=True, slots=True)
class QuorumChanged:
    """Fact: a virtual server gained or lost quorum (`initial`: its state at start)."""

    vs: ServiceKey
    up: bool
    weight_sum: int
    threshold: int
    initial: bool = False


@dataclass(frozen=True, slots=True)
class RunScript:
    """Effect: run a notify or quorum script. `reason` is notify_up, notify_down, quorum_up
    or quorum_down; `subject` names the server. keepalived passes no extra arguments to
    these scripts, so neither do we. `stopping` marks the omega run at shutdown, which the
    shell waits for (bounded) before exiting.
    """

    script: ScriptSpec
    reason: str
    subject: str
    stopping: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class VirtualServerView:
    """What health wants in IPVS for one virtual server.

    `destinations` in configuration order (the sorry server last). A quiesced server
    (inhibit_on_failure) is present with weight 0; a removed one is absent.
    """

    key: ServiceKey
    destinations: tuple[Destination, ...]
    quorum_up: bool
    sorry_active: bool

    def apply_to(self, service: VirtualService) -> VirtualService:
        """The configured service with these destinations."""
        if service.key != self.key:
            raise ValueError(f"view of {self.key} applied to {service.key}")
        return dataclasses.replace(service, destinations=self.destinations)


def apply_views(table: IpvsTable, views: Mapping[ServiceKey, VirtualServerView]) -> IpvsTable:
    """The configured table with health's destinations: what a reconciler hands to
    `plan(desired, actual)`. Services without a view keep their destinations."""
    return IpvsTable(tuple(
        views[svc.key].apply_to(svc) if svc.key in views else svc for svc in table.services
    ))


@dataclass(frozen=True, slots=True)
class DesiredChanged:
    """Fact: a virtual server's desired view changed; the reconciler takes it from here."""

    view: VirtualServerView


CheckEvent = (
    StartProbe
    | ProbeFailed
    | CheckChanged
    | HealthChanged
    | WeightChanged
    | QuorumChanged
    | RunScript
    | DesiredChanged
)
