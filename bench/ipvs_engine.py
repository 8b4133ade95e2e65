"""Benchmark of the embedded IPVS engine: scheduling decisions per second, bytes per entry.

Run: python bench/ipvs_engine.py [--conns N] [--decisions N]

What is measured:

* decisions/s: `IpvsEngine.receive_packet()` on a client SYN with no existing entry, for a
  TCP service with 10 destinations of weights 1-3 (rr and wlc, the targets of issue 3, then
  lc, sed, nq and wrr; `--scheds` picks). One decision = connection-table lookup
  (miss) + service lookup + scheduler call + creation of the entry (binding it to the
  destination, counters, statistics, state transition NONE -> SYN_RECV, timer arming) and
  the returned verdict. These SYNs take the engine's new-connection fast path (the
  default; `EngineOptions(fast_path=False)` forces the general path, which a differential
  test holds to the same results). The SYN packets (PacketInfo objects) are built before
  the clock starts, because the data plane builds them whatever the engine does; the time
  to build one is printed separately. Every decision creates a new entry: the table grows during
  the run, as it does under a connection flood; the best of `--repeat` runs is printed with
  their median, each run with a calibration reading taken around it. Time is this thread's CPU time
  (`time.thread_time`), so the figure is per core even on a busy machine; the cyclic
  garbage collector is paused during the timed loop (its cost depends on everything else
  the process holds, not on the engine).
* packets/s on established entries: an ACK for each of those entries (lookup hit,
  statistics, state update, timer re-arm, verdict), for the data plane's per-event cost.
* bytes per entry: tracemalloc's traced memory after minus before creating N entries
  (SYN packets through the engine), divided by N. Included: the entry object, its key
  tuple, its expiry float, the table's dict slot, the timer wheel's slot and everything
  else the engine allocates. Excluded: the client address objects (2,000 clients are
  created up front; each opens N/2000 connections, as real clients reuse an address) and
  the packet objects, which are freed after each call.

Instruction counts, which unlike CPU time do not depend on the machine's load:
`--count SCHED --decisions N` runs only the decision loop (no timing, no teardown); run it
under `valgrind --tool=callgrind` with N and with 0 (N <= 10,000; both build the same 10,000
packets) and divide the difference of the totals by N.

Prints figures; this is not a test and has no pass/fail threshold.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import time
import tracemalloc
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hactl.ipvs.engine import IpvsEngine, PacketInfo
from hactl.ipvs.model import AF_INET, Destination, IpProto, ServiceKey, VirtualService
from hactl.ipvs.proto import TH_SYN

VIP = IPv4Address("10.0.0.1")
N_CLIENTS = 2000


def make_engine(sched: str) -> IpvsEngine:
    engine = IpvsEngine(rng=random.Random(1))
    engine.add_service(
        VirtualService(
            key=ServiceKey.for_address(IpProto.TCP, VIP, 80),
            scheduler=sched,
            destinations=tuple(
                Destination(addr=IPv4Address(f"192.168.1.{i}"), port=80, weight=1 + i % 3)
                for i in range(1, 11)
            ),
        ),
        now=0.0,
    )
    return engine


def packets(clients: list[IPv4Address], n: int) -> list[PacketInfo]:
    out = []
    for i in range(n):
        out.append(
            PacketInfo(
                family=AF_INET,
                protocol=6,
                saddr=clients[i % len(clients)],
                sport=1024 + (i // len(clients)) % 64000,
                daddr=VIP,
                dport=80,
                tcp_flags=TH_SYN,
                length=60,
            )
        )
    return out


def bench_decisions(sched: str, n: int, clients: list[IPv4Address]) -> float:
    engine = make_engine(sched)
    pkts = packets(clients, n)
    receive = engine.receive_packet
    gc.collect()
    gc.disable()
    try:
        t0 = time.thread_time()
        now = 0.0
        for pkt in pkts:
            receive(pkt, now=now)
            now += 0.000001
        elapsed = time.thread_time() - t0
    finally:
        gc.enable()
    assert engine.conn_count() == n, engine.conn_count()
    return n / elapsed


def bench_established(n: int, clients: list[IPv4Address]) -> float:
    """Packets/s on existing entries: lookup hit, stats, state update, timer, verdict."""
    engine = make_engine("rr")
    for pkt in packets(clients, n):
        engine.receive_packet(pkt, now=0.0)
    acks = [p._replace(tcp_flags=0x10) for p in packets(clients, n)]
    receive = engine.receive_packet
    gc.collect()
    gc.disable()
    try:
        t0 = time.thread_time()
        for pkt in acks:
            receive(pkt, now=1.0)
        elapsed = time.thread_time() - t0
    finally:
        gc.enable()
    return n / elapsed


def bench_packet_build(n: int, clients: list[IPv4Address]) -> float:
    t0 = time.thread_time()
    packets(clients, n)
    return (time.thread_time() - t0) / n


def bench_memory(n: int, clients: list[IPv4Address]) -> float:
    engine = make_engine("rr")
    ncl = len(clients)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    receive = engine.receive_packet
    now = 0.0
    for i in range(n):
        receive(
            PacketInfo(
                family=AF_INET,
                protocol=6,
                saddr=clients[i % ncl],
                sport=1024 + (i // ncl),
                daddr=VIP,
                dport=80,
                tcp_flags=TH_SYN,
                length=60,
            ),
            now=now,
        )
        now += 0.0001
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert engine.conn_count() == n
    return (after - before) / n


def count_decisions(sched: str, n: int, clients: list[IPv4Address]) -> None:
    """Make n decisions and leave at once, for an instruction counter (see the docstring)."""
    engine = make_engine(sched)
    pkts = packets(clients, 10_000)[:n]
    gc.collect()
    gc.disable()
    receive = engine.receive_packet
    now = 0.0
    for pkt in pkts:
        receive(pkt, now=now)
        now += 0.000001
    sys.stdout.flush()
    os._exit(0)  # freeing the entries is not part of a decision


def calibration_ns() -> float:
    """CPU time of one iteration of a trivial loop: compare figures across machines."""
    x = 0
    t0 = time.thread_time()
    for i in range(2_000_000):
        x += i
    return (time.thread_time() - t0) / 2_000_000 * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conns", type=int, default=1_000_000)
    parser.add_argument("--decisions", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scheds", default="rr,wlc,lc,sed,nq,wrr")
    parser.add_argument("--count", metavar="SCHED", help="decision loop only (callgrind)")
    args = parser.parse_args()
    clients = [IPv4Address(0x0B000000 + i) for i in range(N_CLIENTS)]
    if args.count:
        count_decisions(args.count, min(args.decisions, 10_000), clients)
    print(f"python {sys.version.split()[0]}")
    print(f"calibration: {calibration_ns():.1f} ns per `x += i` loop iteration (CPU time)")
    build = bench_packet_build(args.decisions, clients)
    print(f"building one PacketInfo (excluded below): {build * 1e9:.0f} ns")
    for sched in args.scheds.split(","):
        # Best of `--repeat` runs, each with its own calibration reading (a shared machine's
        # load changes the CPU time of everything, the calibration loop included).
        runs = []
        for _ in range(args.repeat):
            before = calibration_ns()
            rate = bench_decisions(sched, args.decisions, clients)
            runs.append((rate, (before + calibration_ns()) / 2))
        rate, calib = max(runs)
        median = statistics.median(r for r, _ in runs)
        print(
            f"{sched:>3}: {rate:,.0f} new-connection decisions/s, median {median:,.0f} "
            f"({1e6 / rate:.2f} us each = {1e9 / rate / calib:.0f} calibration "
            f"iterations at {calib:.0f} ns; 10 dests, {args.decisions:,} new entries)"
        )
    rate = bench_established(args.decisions, clients)
    print(f"established: {rate:,.0f} packets/s on existing entries ({1e6 / rate:.2f} us each)")
    per_entry = bench_memory(args.conns, clients)
    print(f"memory: {per_entry:.1f} bytes per connection entry ({args.conns:,} entries)")


if __name__ == "__main__":
    main()
