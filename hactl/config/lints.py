"""Lints: warnings drawn from LVS operating experience, over a valid model.

Each lint has a stable id (the diagnostic `code`, documented in docs/configuration.md) and a
one-line reason (the diagnostic `hint`). Lints never make a configuration invalid; they point
at settings that are legal but known to hurt. Pure functions over the model: facts about the
running system (the TCP keepalive time) come in as parameters.

Imports only `errors`, `config.keywords`, `config.model`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hactl.config import model as m
from hactl.config.keywords import Protocol
from hactl.errors import Diagnostic, Severity, SourcePos
from hactl.ipvs.model import IpvsTimeouts

__all__ = ["DEFAULT_TCP_KEEPALIVE_TIME", "LINTS", "SLOW_DETECTION_FACTOR", "Lint", "lint"]

# Linux net.ipv4.tcp_keepalive_time default (keepalive 7200/75/9).
DEFAULT_TCP_KEEPALIVE_TIME = 7200.0
# `slow-failure-detection` fires when delay_loop exceeds this many times the time one failed
# check takes to be declared (connect_timeout per attempt, retries and their delays), and
# is over SLOW_DETECTION_MIN seconds: below that, detection is quick whatever the ratio.
SLOW_DETECTION_FACTOR = 10.0
SLOW_DETECTION_MIN = 30.0


@dataclass(frozen=True, slots=True)
class Lint:
    id: str
    reason: str


LINTS: dict[str, Lint] = {
    lint.id: lint
    for lint in (
        Lint(
            "tcp-timeout-below-keepalive",
            "idle TCP connections expire in IPVS before the clients' keepalives refresh them, "
            "so long-lived idle sessions (ssh) hang",
        ),
        Lint(
            "conntrack-reuse-delay",
            "with conntrack 1 and conn_reuse_mode rescheduling, new connections reusing a "
            "client port are dropped once and see a one-second SYN retransmit delay",
        ),
        Lint(
            "persistence-quiescent-template",
            "persistence templates of a quiesced (weight 0) server survive while "
            "expire_quiescent_template is 0, so persistent clients keep reaching the failed "
            "server",
        ),
        Lint(
            "slow-failure-detection",
            "delay_loop is long compared with the time one check takes to fail, so a dead "
            "real server keeps receiving traffic for most of a delay_loop",
        ),
        Lint(
            "sync-group-advert-mismatch",
            "instances of one sync group on different advert intervals time out at different "
            "moments, so the group splits during failover",
        ),
        Lint(
            "sorry-server-is-real-server",
            "the sorry server is also a real server, so when quorum is lost traffic goes to "
            "a server the checks consider failed",
        ),
    )
}


def _warn(lint_id: str, pos: SourcePos, message: str) -> Diagnostic:
    return Diagnostic(Severity.WARNING, pos, message, lint_id, LINTS[lint_id].reason)


def _tcp_timeout(config: m.Config, keepalive: float) -> Iterator[Diagnostic]:
    tcp_services = [
        vs for vs in config.virtual_servers if vs.fwmark is not None or vs.protocol is Protocol.TCP
    ]
    if not tcp_services:
        return
    timeouts = config.global_defs.lvs_timeouts
    tcp = timeouts.tcp if timeouts.tcp is not None else IpvsTimeouts().tcp
    if tcp < keepalive:
        pos = timeouts.pos if timeouts.tcp is not None else tcp_services[0].pos
        where = "lvs_timeouts tcp" if timeouts.tcp is not None else "the IPVS default tcp timeout"
        yield _warn(
            "tcp-timeout-below-keepalive",
            pos,
            f"{where} ({tcp} s) is shorter than the TCP keepalive time ({keepalive:g} s); "
            f"set `lvs_timeouts tcp {int(keepalive) + 300}` or shorten the clients' keepalive",
        )


def _conntrack(config: m.Config, keepalive: float) -> Iterator[Diagnostic]:
    sysctl = config.global_defs.ipvs_sysctl
    # spec/ipvs.md §5.3-5.4: any non-zero conn_reuse_mode reschedules port reuse (2 implies 1),
    # and with conntrack the rescheduled SYN is dropped once (kernels before 5.9 always).
    if sysctl.conntrack == 1 and sysctl.conn_reuse_mode != 0:
        yield _warn(
            "conntrack-reuse-delay",
            config.global_defs.at("ipvs_sysctl.conntrack"),
            f"ipvs_sysctl: conntrack 1 with conn_reuse_mode {sysctl.conn_reuse_mode}",
        )


def _quiescent(config: m.Config, keepalive: float) -> Iterator[Diagnostic]:
    if config.global_defs.ipvs_sysctl.expire_quiescent_template:
        return
    for vs in config.virtual_servers:
        if vs.persistence_timeout is None:
            continue
        if any(rs.inhibit_on_failure for rs in vs.real_servers):
            yield _warn(
                "persistence-quiescent-template",
                vs.at("persistence_timeout"),
                "persistence with inhibit_on_failure while ipvs_sysctl "
                "expire_quiescent_template is 0",
            )


def _detection_time(check: m.Checker) -> float | None:
    connect = getattr(check, "connect_timeout", None)
    retry = getattr(check, "retry", None)
    delay_before_retry = getattr(check, "delay_before_retry", None)
    if connect is None or retry is None or delay_before_retry is None:
        return None
    return float(connect * (retry + 1) + retry * delay_before_retry)


def _too_slow(check: m.Checker) -> float | None:
    """The time a failing check takes, when delay_loop dwarfs it; else None."""
    loop = float(getattr(check, "delay_loop", 0.0))
    if loop <= SLOW_DETECTION_MIN:
        return None  # the common case, told before the failing time is worked out
    fail = _detection_time(check)
    if fail is None or loop <= SLOW_DETECTION_FACTOR * fail:
        return None
    return fail


def _slow_detection(config: m.Config, keepalive: float) -> Iterator[Diagnostic]:
    for vs in config.virtual_servers:  # one warning per virtual server, not per checker
        hit = next(
            (
                (check, fail)
                for rs in vs.real_servers
                for check in rs.checkers
                if (fail := _too_slow(check)) is not None
            ),
            None,
        )
        if hit is not None:
            check, fail = hit
            yield _warn(
                "slow-failure-detection",
                check.pos,
                f"{check.kind.value}: delay_loop {getattr(check, 'delay_loop', 0.0):g} s "
                f"is over {SLOW_DETECTION_FACTOR:g}x the {fail:g} s a failing check takes",
            )


def _sync_group_adverts(config: m.Config, keepalive: float) -> Iterator[Diagnostic]:
    by_name = {i.name: i for i in config.vrrp_instances}
    for group in config.sync_groups:
        members = [by_name[n] for n in group.group if n in by_name]
        intervals = sorted({i.advert_int for i in members})
        if len(intervals) > 1:
            listing = ", ".join(f"{i.name} {i.advert_int:g}" for i in members)
            yield _warn(
                "sync-group-advert-mismatch",
                group.pos,
                f"vrrp_sync_group {group.name}: members advertise at different intervals "
                f"({listing})",
            )


def _sorry_server(config: m.Config, keepalive: float) -> Iterator[Diagnostic]:
    for vs in config.virtual_servers:
        sorry = vs.sorry_server
        if sorry is None:
            continue
        for rs in vs.real_servers:
            if rs.address == sorry.address and (sorry.port or vs.port) == (rs.port or vs.port):
                yield _warn(
                    "sorry-server-is-real-server",
                    sorry.pos,
                    f"sorry_server {sorry.address} is also real_server {rs.address} "
                    f"(line {rs.pos.line})",
                )
                break


LINT_RULES: tuple[Callable[[m.Config, float], Iterator[Diagnostic]], ...] = (
    _tcp_timeout,
    _conntrack,
    _quiescent,
    _slow_detection,
    _sync_group_adverts,
    _sorry_server,
)


def lint(
    config: m.Config, *, tcp_keepalive_time: float = DEFAULT_TCP_KEEPALIVE_TIME
) -> list[Diagnostic]:
    """Every lint warning for `config`, in rule order (callers sort by position)."""
    return [d for rule in LINT_RULES for d in rule(config, tcp_keepalive_time)]
