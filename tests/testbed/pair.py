"""A started director pair with real servers, and the bounds the scenarios assert."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.testbed.directors import DirectorSpec, HactlDirector, RealServerProc, start_real_servers
from tests.testbed.topology import Testbed

__all__ = ["Pair", "masters", "start_pair", "vrrp_takeover_bound", "wait_for"]

# Scheduling slack of a loaded CI machine on top of the protocol's own times.
MARGIN = 1.0


def vrrp_takeover_bound(advert_int: float, backup_priority: int) -> float:
    """Master_Down_Interval of RFC 3768 (3 x advert + skew) plus `MARGIN`."""
    return 3 * advert_int + (256 - backup_priority) / 256 * advert_int + MARGIN


def wait_for(predicate: Callable[[], bool], limit: float, step: float = 0.02) -> float | None:
    """Seconds until `predicate()` holds, or None when `limit` passed first."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > limit:
            return None
        time.sleep(step)
    return time.monotonic() - start


@dataclass
class Pair:
    bed: Testbed
    d1: HactlDirector
    d2: HactlDirector
    servers: list[RealServerProc]

    def server_address(self, name: str) -> str:
        return str(self.bed.hosts[name].address)


def masters(pair: Pair) -> list[str]:
    """The directors that hold the VIP right now."""
    return [d.host.name for d in (pair.d1, pair.d2) if d.holds_vip()]


def start_pair(bed: Testbed, first: DirectorSpec, second: DirectorSpec) -> Pair:
    """Real servers, then d1 (until it holds the VIP), then d2 (until it is BACKUP)."""
    servers = start_real_servers(bed)
    d1 = HactlDirector(bed, bed.directors[0], first)
    d2 = HactlDirector(bed, bed.directors[1], second)
    d1.start()
    d1.wait_started()
    limit = 3 * first.advert_int + 3
    if wait_for(d1.holds_vip, limit) is None:
        raise TimeoutError(f"d1 not master within {limit}s: {d1.log_text()[-2000:]}")
    d2.start()
    d2.wait_started()
    if wait_for(lambda: d2.state() == "BACKUP", 5) is None:
        raise TimeoutError(f"d2 not backup: {d2.log_text()[-2000:]}")
    return Pair(bed, d1, d2, servers)
