"""Issue 7's end-to-end test: two `hactl run` directors with VRRP and connection sync, three
real servers, persistent clients from six source addresses; kill -9 of the master.

Before the failover, the backup's own table (`hactl ipvs -Lnc` against its control API
socket) must hold a persistence template for each client, to the real server that client
was using on the master; a passive observer in the backup's namespace
(`tests.testbed.syncwatch`) shows the same templates on the wire, decoded in the kernel's
format. After the takeover every client must land on that same real server again.
"""

from __future__ import annotations

import time

import pytest

from tests.testbed import record
from tests.testbed.directors import DirectorSpec
from tests.testbed.fixtures import bed, topology
from tests.testbed.load import ClientLoad, summarize
from tests.testbed.pair import start_pair, vrrp_takeover_bound, wait_for
from tests.testbed.syncwatch import SyncWatch, templates
from tests.testbed.topology import Testbed, Topology

__all__ = ["bed", "topology"]

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]


def _servers_by_source(records: list[dict[str, object]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in records:
        if r["ok"]:
            out.setdefault(str(r["src"]), set()).add(str(r["server"]))
    return out


# Sync on the service segment (eth0), and on a segment of its own (eth1, `lvs_sync_daemon
# eth1`), with VRRP and the clients on eth0.
@pytest.mark.parametrize("topology", [Topology(), Topology(sync_segment=True)],
                         ids=["shared-segment", "sync-segment"])
def test_kill9_master_backup_takes_over_with_synced_persistence(bed: Testbed) -> None:
    master_spec, backup_spec = DirectorSpec(priority=150), DirectorSpec(priority=100)
    pair = start_pair(bed, master_spec, backup_spec)
    sync_dev = "eth1" if bed.topology.sync_segment else "eth0"
    watch = SyncWatch(bed, bed.directors[1], syncid=backup_spec.sync_id, dev=sync_dev)
    sources = {str(a) for a in bed.client.extra}
    load = ClientLoad(bed, duration=25)
    try:
        # Each client is served a few times by the master before it dies.
        assert wait_for(lambda: all(
            len(v) and sum(1 for r in load.records() if r["src"] == s and r["ok"]) >= 3
            for s, v in {s: [1] for s in sources}.items()), 10) is not None
        before = _servers_by_source(load.records())
        assert set(before) == sources
        assert all(len(v) == 1 for v in before.values()), f"persistence broken: {before}"
        expected = {src: pair.server_address(next(iter(v))) for src, v in before.items()}
        # The backup received every client's template, to that client's real server, and
        # holds them in its table.
        on_wire = wait_for(lambda: templates(watch.records()) == expected, 5)
        assert on_wire is not None, (templates(watch.records()), expected)
        held = wait_for(lambda: pair.d2.templates() == expected, 5, step=0.2)
        assert held is not None, (pair.d2.ipvs("-Lnc"), expected)

        killed = time.monotonic()
        pair.d1.kill9()
        takeover = wait_for(pair.d2.holds_vip, 10, step=0.01)
        assert takeover is not None, pair.d2.log_text()[-3000:]
        bound = vrrp_takeover_bound(backup_spec.advert_int, backup_spec.priority)
        # The clients keep going for a few seconds on the new master.
        time.sleep(4)
        records = load.stop()
    finally:
        watch.stop()
    summary = summarize(records)
    window_end = killed + takeover + 0.5
    late = [r for r in summary.failures if r["t"] > window_end]
    after = _servers_by_source([r for r in records if r["t"] > window_end])
    passed = takeover <= bound and summary.outage_ms <= bound * 1000 and not late
    scenario = "failover_kill9_sync" + ("_segment" if bed.topology.sync_segment else "")
    record(scenario, summary, bound=f"outage<={bound * 1000:.0f}ms", passed=passed,
           detail=f"takeover {takeover:.2f}s, templates on backup before kill")
    assert takeover <= bound, f"takeover {takeover:.2f}s > {bound:.2f}s"
    assert summary.outage_ms <= bound * 1000
    assert not late, ("requests failed after the takeover window (s after kill, source, error):",
                      [(round(r["t"] - killed, 3), r["src"], r["error"]) for r in late][:10],
                      f"takeover after {takeover:.3f}s")
    assert set(after) == sources, f"some clients got no answer after takeover: {after}"
    moved = {s: (before[s], after[s]) for s in sources if after[s] != before[s]}
    assert not moved, f"clients moved to another real server: {moved}"
    assert pair.d2.state() == "MASTER"
    roles = [e["new"] for e in pair.d2.events() if e.get("event") == "sync.role_changed"]
    assert roles[-1] == "master", roles
