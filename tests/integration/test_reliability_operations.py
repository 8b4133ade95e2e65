"""Drain and reload under load, repeated (issue 9, from issue 8's "must show"): the real
`hactl run` director pair, the real client load, and the operator's cycle through the
control API, many times in a row:

1. drain a real server (`expire_templates`, a 1 s deadline: the connections the proxy keeps
   in TIME_WAIT would hold a drain for two minutes, docs/operations.md), and wait until it is
   out of IPVS;
2. reload a changed configuration (another server's weight toggled; a fourth real server
   added on even rounds (and enabled: the override of its last drain outlives its removal
   from the configuration), and on odd rounds drained first and then removed);
3. enable the drained server, and wait until it is back.

Asserted over the whole run: zero failed client requests, no VRRP transition on either
director, every reload accepted with the planned changes, health state kept (no check
transition of the servers that stayed), and no new connection to a drained server from the
moment its drain was answered until it was enabled (persistent clients included). The
default run does 3 rounds; the soak run the issue's 20. Both directors' RSS, before and after
the rounds, stays within 15% (the short memory check of the default suite).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest

from tests.integration.test_reliability import CLIENT_TIMEOUT, _warm
from tests.testbed import record
from tests.testbed.directors import DirectorSpec, HactlDirector
from tests.testbed.fixtures import bed
from tests.testbed.load import ClientLoad, summarize
from tests.testbed.pair import start_pair, wait_for
from tests.testbed.topology import Testbed, Topology

__all__ = ["bed", "topology"]

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

VS = "tcp:10.200.0.100:80"


@pytest.fixture
def topology() -> Topology:
    return Topology(real_servers=4)


def _rs_path(rs: str) -> str:
    return f"/api/v1/virtual-servers/{VS}/real-servers/{rs}:80"


def _in_ipvs(director: HactlDirector, rs: str) -> bool | None:
    status, doc = director.api("GET", _rs_path(rs))
    return None if status == 404 else bool(doc["in_ipvs"])


def _drain(director: HactlDirector, rs: str) -> float:
    """Start the drain; returns when the API answered (the quiesce is in force then)."""
    status, doc = director.api("POST", _rs_path(rs) + "/drain",
                               {"timeout": 1.0, "expire_templates": True})
    assert status in (200, 202), (status, doc)
    return time.monotonic()


def _drained(director: HactlDirector, rs: str) -> None:
    def finished() -> bool:
        status, doc = director.api("GET", _rs_path(rs) + "/drain")
        return status == 200 and doc.get("event") == "finished"

    assert wait_for(finished, 10, step=0.1) is not None, director.api("GET", _rs_path(rs))
    assert _in_ipvs(director, rs) is False


def _reload(director: HactlDirector, spec: DirectorSpec) -> dict[str, Any]:
    director.write_config(spec)
    status, doc = director.api("POST", "/api/v1/reload", {})
    assert status == 200 and doc["ok"], (status, doc)
    return dict(doc)


def _cycles(bed: Testbed, rounds: int) -> None:
    base = DirectorSpec(priority=150, servers=3)
    pair = start_pair(bed, base, replace(base, priority=100))
    d1, d2 = pair.d1, pair.d2
    addr = {h.name: str(h.address) for h in bed.real_servers}
    load = ClientLoad(bed, duration=30 + rounds * 8, timeout=CLIENT_TIMEOUT,
                      max_requests=50_000)
    _warm(load, bed)
    transitions = (d1.count("vrrp.state_changed"), d2.count("vrrp.state_changed"))
    rss_before = (d1.rss_kib(), d2.rss_kib())
    health_before = d1.count("check.health_changed")
    quiet: list[tuple[str, float, float]] = []  # (server, drained from, until)
    reloads = 0
    spec = base
    start = time.monotonic()
    for i in range(rounds):
        victim = f"rs{i % 3 + 1}"
        drains = [(victim, _drain(d1, addr[victim]))]
        with_rs4 = spec.servers == 4
        if with_rs4:
            drains.append(("rs4", _drain(d1, addr["rs4"])))
        for name, _ in drains:
            _drained(d1, addr[name])
        # Another server's weight toggles every round; rs4 comes and goes.
        weights = tuple(2 if j == (i + 1) % 3 else 1 for j in range(4))
        spec = replace(spec, servers=3 if with_rs4 else 4, weights=weights)
        for director in (d1, d2):
            doc = _reload(director, spec if director is d1 else replace(spec, priority=100))
            subjects = " ".join(c["subject"] for c in doc["changes"])
            assert ("10.200.0.14" in subjects) and doc["changes"], doc
        reloads += 2
        if not with_rs4:
            # Back in the configuration: the override its last drain left (disabled) still
            # holds, by design (docs/operations.md); the operator enables it.
            if i > 0:
                status, doc = d1.api("POST", _rs_path(addr["rs4"]) + "/enable")
                assert status == 200, doc
            assert wait_for(lambda: _in_ipvs(d1, addr["rs4"]) is True, 5, step=0.1) is not None, (
                d1.api("GET", _rs_path(addr["rs4"])), d1.ipvs("-Ln"), d1.log_text()[-6000:])
        status, doc = d1.api("POST", _rs_path(addr[victim]) + "/enable")
        assert status == 200, doc
        enabled = time.monotonic()
        for name, at in drains:
            quiet.append((name, at, enabled))
        assert wait_for(lambda v=victim: _in_ipvs(d1, addr[v]) is True, 5, step=0.1) is not None
        time.sleep(0.3)
    elapsed = time.monotonic() - start
    rss_after = (d1.rss_kib(), d2.rss_kib())
    growth = [(b - a) / a for a, b in zip(rss_before, rss_after, strict=True)]
    time.sleep(1.0)
    records = load.stop()
    summary = summarize(records)
    vrrp_moves = (d1.count("vrrp.state_changed") - transitions[0],
                  d2.count("vrrp.state_changed") - transitions[1])
    health_moves = d1.count("check.health_changed") - health_before
    # A new connection from the exact (address, port) of one the table still holds (closed,
    # TIME_WAIT: 120 s) continues that entry to its old server, as IPVS does for connections
    # under a persistence template (docs/operations.md); the load's ports are the kernel's
    # choice, so such reuse is counted apart, not as a leak.
    seen: dict[tuple[str, int], list[tuple[float, str]]] = {}
    for r in records:
        if r["ok"] and r.get("port"):
            seen.setdefault((r["src"], r["port"]), []).append((r["t"], r["server"]))

    def reused(r: dict[str, Any]) -> bool:
        return any(t < r["t"] and server == r["server"] and r["t"] - t < 120
                   for t, server in seen.get((r["src"], r.get("port")), []))

    late = [r for r in records if r["ok"]
            for name, a, b in quiet if r["server"] == name and a + 0.05 < r["t"] < b]
    leaks = [(r["server"], r["src"], r.get("port")) for r in late if not reused(r)]
    port_reuse = len(late) - len(leaks)
    scenario = f"drain_reload_x{rounds}"
    passed = summary.failed == 0 and vrrp_moves == (0, 0) and not leaks and max(growth) < 0.15
    record(scenario, summary, bound="0_failed,_no_transition", passed=passed,
           detail=f"{rounds} drains+enables, {reloads} reloads in {elapsed:.1f}s, "
           f"{len(quiet)} drained windows without new connections"
           + (f" ({port_reuse} continued TIME_WAIT entries)" if port_reuse else "")
           + f", RSS d1 {growth[0]:+.1%} d2 {growth[1]:+.1%}")
    assert summary.failed == 0, [(round(r["t"] - start, 2), r["src"], r["error"])
                                 for r in summary.failures[:10]]
    assert vrrp_moves == (0, 0), vrrp_moves
    assert not leaks, f"new connections to drained servers: {leaks[:10]}"
    # The short memory check (the 10-minute one is test_rss_soak_10_minutes): reloads,
    # drains and load together leave no gross growth.
    assert max(growth) < 0.15, (rss_before, rss_after)
    # rs4's checks start and stop with it; the three that stayed never changed health.
    assert health_moves <= rounds, d1.count("check.health_changed")


def test_drain_and_reload_under_load_repeated(bed: Testbed) -> None:
    _cycles(bed, 3)


@pytest.mark.soak
def test_drain_and_reload_under_load_repeated_20_times(bed: Testbed) -> None:
    _cycles(bed, 20)
