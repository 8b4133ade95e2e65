"""Micro-benchmark of the IPVS schedulers: new-connection decisions per second.

Usage: python bench/ipvs_schedulers.py [--dests N] [--decisions N]

For every scheduler, builds one service with N destinations (varied weights and loads) and
times `schedule()` over a stream of distinct clients, plus the cost of a table rebuild
(`update_dests`) for the table-driven schedulers. Target (issue 3): at least 300,000
decisions per second per core for rr and wlc.

This times the schedulers' own walks, which the engine's general path runs; new flows of
plain lc/wlc/sed/nq services take the engine's fast path instead, which keeps per-dest keys
and does not call `schedule()` (bench/ipvs_engine.py measures that). Time is this process's
CPU time (`time.process_time`), so the figures hold per core on a busy machine; each figure
is the best of `--repeat` runs, with the median beside it.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hactl.ipvs.schedulers import (
    IP_VS_SVC_F_SCHED1,
    SCHEDULER_NAMES,
    SchedPacket,
    make_scheduler,
)


@dataclass(eq=False, slots=True)
class BenchDest:
    addr: IPv4Address
    port: int
    weight: int
    activeconns: int
    inactconns: int
    persistconns: int
    overloaded: bool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dests", type=int, default=10)
    parser.add_argument("--decisions", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    rng = random.Random(1)
    dests = [
        BenchDest(
            IPv4Address(0xC0A80100 + i + 1),
            80,
            rng.randint(1, 5),
            rng.randint(0, 50),
            rng.randint(0, 500),
            0,
            False,
        )
        for i in range(args.dests)
    ]
    packets = [
        SchedPacket(
            2,
            6,
            IPv4Address(0x0A000000 + i),
            1024 + i % 60000,
            IPv4Address(0x0A640001 + i % 4096),
            80,
        )
        for i in range(4096)
    ]
    print(f"{args.dests} destinations, {args.decisions} decisions per scheduler")
    print(f"{'scheduler':<10} {'decisions/s':>12} {'(median)':>12} {'rebuild ms':>11}")
    for name in SCHEDULER_NAMES:
        sched = make_scheduler(name, sched_flags=IP_VS_SVC_F_SCHED1, rng=random.Random(2))
        t0 = time.process_time()
        sched.update_dests(dests)
        rebuild = (time.process_time() - t0) * 1000
        n = args.decisions
        schedule = sched.schedule
        rates = []
        for _ in range(args.repeat):
            t0 = time.process_time()
            for i in range(n):
                schedule(dests, packets[i & 4095], now=0.0)
            rates.append(n / (time.process_time() - t0))
        print(
            f"{name:<10} {max(rates):>12,.0f} {statistics.median(rates):>12,.0f} {rebuild:>11.2f}"
        )


if __name__ == "__main__":
    main()
