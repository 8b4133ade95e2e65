"""The comparison with keepalived in the directors (issue 9: the testbed starts `hactl run`
"or keepalived, for comparisons"): the same topology, client load and kill -9 of the master,
once with a hactl pair and once with a keepalived 2.2.7 pair, each printing its
RELIABILITY line (failed / total, outage, takeover) so tools/reliability.sh tabulates them
side by side.

This kernel has no IPVS, so keepalived runs VRRP only (`-P`) and each keepalived director
answers for the VIP with a small web server of its own, killed with it; hactl forwards
through its embedded data plane to the real servers. What is compared is the failover: the
takeover time and the outage clients see, against the same VRRP bound.
"""

from __future__ import annotations

import time

import pytest

from tests.integration.test_reliability import BACKUP, CLIENT_TIMEOUT, MASTER, _outside, _warm
from tests.testbed import record
from tests.testbed.directors import KeepalivedDirector
from tests.testbed.fixtures import bed, topology
from tests.testbed.load import ClientLoad, summarize
from tests.testbed.pair import start_pair, vrrp_takeover_bound, wait_for
from tests.testbed.topology import Testbed

__all__ = ["bed", "topology"]

pytestmark = [pytest.mark.netns, pytest.mark.soak, pytest.mark.timeout(150)]


def _keepalived_pair(bed: Testbed) -> tuple[KeepalivedDirector, KeepalivedDirector]:
    d1 = KeepalivedDirector(bed, bed.directors[0], MASTER)
    d2 = KeepalivedDirector(bed, bed.directors[1], BACKUP)
    d1.start()
    assert wait_for(d1.holds_vip, 3 * MASTER.advert_int + 5) is not None, d1.log_text()[-2000:]
    d2.start()
    assert wait_for(lambda: d2.state() == "BACKUP", 10) is not None, d2.log_text()[-2000:]
    return d1, d2


@pytest.mark.keepalived
@pytest.mark.parametrize("impl", ["hactl", "keepalived"])
def test_kill9_of_the_master_hactl_and_keepalived(bed: Testbed, impl: str) -> None:
    if impl == "keepalived":
        d1, d2 = _keepalived_pair(bed)
        kill, takes_over = d1.kill9, d2.holds_vip
    else:
        pair = start_pair(bed, MASTER, BACKUP)
        kill, takes_over = pair.d1.kill9, pair.d2.holds_vip
    load = ClientLoad(bed, duration=40, timeout=CLIENT_TIMEOUT)
    _warm(load, bed)
    time.sleep(1)
    killed = time.monotonic()
    kill()
    takeover = wait_for(takes_over, 10, step=0.01)
    assert takeover is not None, f"{impl}: the backup did not take over"
    time.sleep(3)
    records = load.stop()
    summary = summarize(records)
    bound = vrrp_takeover_bound(BACKUP.advert_int, BACKUP.priority)
    late = _outside(summary.failures, [(killed - CLIENT_TIMEOUT, killed + takeover + 0.5)])
    passed = takeover <= bound and summary.outage_ms <= bound * 1000 and not late
    record(f"compare_kill9_{impl}", summary, bound=f"outage<={bound * 1000:.0f}ms",
           passed=passed, detail=f"takeover {takeover:.2f}s")
    assert takeover <= bound, takeover
    assert summary.outage_ms <= bound * 1000, summary.outage_ms
    assert not late, [(round(r["t"] - killed, 3), r["src"], r["error"]) for r in late][:10]
