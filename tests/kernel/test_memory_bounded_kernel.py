"""The kernel backend's status refresh keeps memory flat (inside the kernel VM).

With the kernel backend the daemon reads the IPVS timeouts every 0.5 s (`get_timeouts`,
IPVS_CMD_GET_CONFIG). Asked with an acknowledgement, each reply left that ACK queued in
pyroute2's socket for good, as the link polls did (tests/shell/test_memory_bounded_netlink.py).
"""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import pytest

pytestmark = [pytest.mark.asyncio, pytest.mark.kernel_ipvs]

CALLS = 1500  # 12.5 minutes of the 0.5 s status refresh
WARM_UP = 500  # pyroute2's state that turns over at a constant size fills up first
BOUND = 32 * 1024  # before the fix: about 75 bytes a call (110 KiB here)


async def test_status_refresh_keeps_memory_bounded(kipvs: Any) -> None:
    tracemalloc.start()
    try:
        for _ in range(WARM_UP):
            await kipvs.get_timeouts()
        gc.collect()
        before, _peak = tracemalloc.get_traced_memory()
        for _ in range(CALLS):
            await kipvs.get_timeouts()
        gc.collect()
        after, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    kept = after - before
    assert kept < BOUND, f"{CALLS} get_timeouts left {kept} more bytes alive"
