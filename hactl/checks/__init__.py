"""Health checking: keepalived's checkers on asyncio, decisions in sans-IO cores.

* `model`: frozen runtime specs (checkers, real and virtual servers) and stable keys.
* `tracker`: `HealthTracker`, one real server's up/down state (retry, rise, alpha, warmup).
* `vserver`: `VirtualServerHealth`, the pool of one virtual server (inhibit, quorum,
  hysteresis, sorry server, ha_suspend, notify and omega scripts) -> `VirtualServerView`.
* `probes` / `scripts` / `wire`: the I/O: one probe per checker kind, script execution,
  and the hand-written codecs.
* `fastpath`: TCP_CHECK and plain HTTP_GET as callback-driven probes (no task per probe),
  which the runner uses for those kinds at scale; same results as `probes`.
* `runner`: `CheckRunner`, the asyncio shell.
"""

from __future__ import annotations

from hactl.checks.events import (
    CheckChanged,
    CheckEvent,
    DesiredChanged,
    HealthChanged,
    ProbeFailed,
    ProbeResult,
    QuorumChanged,
    RunScript,
    StartProbe,
    VirtualServerView,
    WeightChanged,
    apply_views,
)
from hactl.checks.model import (
    BfdCheck,
    CheckKey,
    CheckKind,
    CheckSpec,
    ConnectOptions,
    DnsCheck,
    FileCheck,
    HttpGetCheck,
    MiscCheck,
    PingCheck,
    RealServerKey,
    RealServerSpec,
    ScriptSpec,
    SmtpCheck,
    SorryServerSpec,
    SslGetCheck,
    TcpCheck,
    TlsOptions,
    UdpCheck,
    UrlSpec,
    VirtualServerSpec,
)
from hactl.checks.probes import run_probe
from hactl.checks.runner import CheckRunner, ProbeStats
from hactl.checks.scripts import ScriptError, ScriptExecutor, ScriptOutcome
from hactl.checks.tracker import HealthTracker
from hactl.checks.vserver import VirtualServerHealth

__all__ = [
    "BfdCheck",
    "CheckChanged",
    "CheckEvent",
    "CheckKey",
    "CheckKind",
    "CheckRunner",
    "CheckSpec",
    "ConnectOptions",
    "DesiredChanged",
    "DnsCheck",
    "FileCheck",
    "HealthChanged",
    "HealthTracker",
    "HttpGetCheck",
    "MiscCheck",
    "PingCheck",
    "ProbeFailed",
    "ProbeResult",
    "ProbeStats",
    "QuorumChanged",
    "RealServerKey",
    "RealServerSpec",
    "RunScript",
    "ScriptError",
    "ScriptExecutor",
    "ScriptOutcome",
    "ScriptSpec",
    "SmtpCheck",
    "SorryServerSpec",
    "SslGetCheck",
    "StartProbe",
    "TcpCheck",
    "TlsOptions",
    "UdpCheck",
    "UrlSpec",
    "VirtualServerHealth",
    "VirtualServerSpec",
    "VirtualServerView",
    "WeightChanged",
    "apply_views",
    "run_probe",
]
