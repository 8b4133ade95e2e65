"""Connection-sync throughput, end to end on loopback, and bytes per entry on the wire.

A master `SyncService` encodes and sends entries to the multicast group on `lo`; a backup
`SyncService` receives, validates, decodes and applies them to an in-memory sink. Two layouts:

* `--mode process` (default): the backup runs in its own process, as on a second director;
  the figure is entries applied by the backup per second of wall time, from the master's
  first submit to the backup's last apply. UDP has no flow control: a master submitting
  faster than the backup applies loses datagrams (as a kernel master would); `--rate` paces
  the master to find the rate a backup sustains without loss;
* `--mode loop`: master and backup share one event loop (one CPU does all the work).

Also printed: the codec alone (encode / decode per entry) and the wire cost per entry.
Target: 100,000 entries/s end to end; 36 bytes per IPv4 entry, as the kernel.

    python bench/sync_throughput.py [--entries N] [--mode process|loop] [--batch N] [--rate R]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import multiprocessing
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog

from hactl.clock import LoopClock
from hactl.ipvs.model import AF_INET, AF_INET6, SyncConn
from hactl.sync import wire
from hactl.sync.model import SenderStats, SyncDaemonConfig, SyncRole
from hactl.sync.service import SyncService

TARGET = 100_000


def entries(n: int) -> list[SyncConn]:
    vip = ipaddress.IPv4Address("10.0.0.1")
    rss = [ipaddress.IPv4Address(f"10.0.1.{i}") for i in range(1, 9)]
    return [
        SyncConn(
            family=AF_INET, protocol=6, flags=0x83, state=1, cport=1024 + i % 64000, vport=80,
            dport=80, fwmark=0, timeout=900, caddr=ipaddress.IPv4Address(0xC0000000 + i),
            vaddr=vip, daddr=rss[i % 8],
        )
        for i in range(n)
    ]


class CountingSink:
    def __init__(self) -> None:
        self.count = 0
        self.last_at = 0.0

    def apply_sync(self, entry: SyncConn, *, now: float, version: int) -> None:
        self.count += 1
        self.last_at = now


class NoKernelDaemons:
    def running_daemons(self) -> list[Any]:
        return []

    def kernel_sync_ports(self) -> int:
        return 1


def config(port: int) -> SyncDaemonConfig:
    return SyncDaemonConfig(interface="lo", port=port, multicast_loop=True,
                            sock_size=8 * 1024 * 1024, qlen_max=100_000)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _start(svc: SyncService, role: SyncRole) -> asyncio.Task[None]:
    task = asyncio.create_task(svc.run())
    await svc.wait_role(role)
    return task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _master(
    port: int, batch: list[list[SyncConn]], rate: float | None = None
) -> tuple[float, SenderStats]:
    """Submit the batches as an engine would, at most `rate` entries/s when given."""
    master = SyncService(config(port), sink=CountingSink(), clock=LoopClock(),
                         kernel=NoKernelDaemons(), role=SyncRole.MASTER)
    task = await _start(master, SyncRole.MASTER)
    started = time.monotonic()
    submitted = 0
    for chunk in batch:
        master.submit(chunk)
        submitted += len(chunk)
        if rate is None:
            await asyncio.sleep(0)  # let the socket and, in loop mode, the backup run
        else:
            await asyncio.sleep(max(0.0, started + submitted / rate - time.monotonic()))
    master.set_role(SyncRole.NONE)  # flush the last partial datagram
    await master.wait_role(SyncRole.NONE)
    stats = master.stats().sender
    await _stop(task)
    return started, stats


def _backup_process(port: int, expected: int, ready: Any, result: Any) -> None:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr),
                        wrapper_class=structlog.make_filtering_bound_logger(30))

    async def run() -> None:
        sink = CountingSink()
        backup = SyncService(config(port), sink=sink, clock=LoopClock(),
                             kernel=NoKernelDaemons(), role=SyncRole.BACKUP)
        task = await _start(backup, SyncRole.BACKUP)
        cpu0 = time.process_time()
        ready.set()
        # Stop once everything arrived, or 2 s after the last entry (the rest was lost).
        quiet_since, seen, give_up = time.monotonic(), 0, time.monotonic() + 60
        while sink.count < expected and time.monotonic() < give_up:
            await asyncio.sleep(0.005)
            if sink.count != seen:
                seen, quiet_since = sink.count, time.monotonic()
            elif seen and time.monotonic() - quiet_since > 2.0:
                break
        peers = backup.stats().peers
        await _stop(task)
        received = peers[0].entries_received if peers else 0
        result.put((sink.count, received, sink.last_at, time.process_time() - cpu0))

    asyncio.run(run())


def bench_process(n: int, batch_size: int, rate: float | None) -> dict[str, float]:
    # The event loop's clock is CLOCK_MONOTONIC, shared by every process of the host: the
    # backup's time of last apply and the master's start time are comparable.
    port = free_port()
    ctx = multiprocessing.get_context("fork")
    ready, result = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_backup_process, args=(port, n, ready, result))
    proc.start()
    if not ready.wait(10):
        proc.kill()
        raise RuntimeError("the backup did not start")
    work = entries(n)
    chunks = [work[i : i + batch_size] for i in range(0, n, batch_size)]
    cpu0 = time.process_time()
    started, st = asyncio.run(_master(port, chunks, rate))
    cpu_master = time.process_time() - cpu0
    applied, received, last_apply, cpu_backup = result.get(timeout=60)
    proc.join(10)
    elapsed = last_apply - started
    return {"applied": applied, "received": received, "elapsed": elapsed,
            "rate": applied / elapsed, "bytes": st.bytes_sent, "sent": st.entries_sent,
            "datagrams": st.datagrams_sent, "cpu_master": cpu_master, "cpu_backup": cpu_backup}


def bench_loop(n: int, batch_size: int, rate: float | None) -> dict[str, float]:
    async def run() -> dict[str, float]:
        port = free_port()
        sink = CountingSink()
        backup = SyncService(config(port), sink=sink, clock=LoopClock(),
                             kernel=NoKernelDaemons(), role=SyncRole.BACKUP)
        btask = await _start(backup, SyncRole.BACKUP)
        work = entries(n)
        chunks = [work[i : i + batch_size] for i in range(0, n, batch_size)]
        cpu0 = time.process_time()
        started, st = await _master(port, chunks, rate)
        deadline = time.monotonic() + 10
        while sink.count < n and time.monotonic() < deadline:  # noqa: ASYNC110 - a counter
            await asyncio.sleep(0.001)
        elapsed = sink.last_at - started
        cpu = time.process_time() - cpu0
        (peer,) = backup.stats().peers
        await _stop(btask)
        return {"applied": sink.count, "received": peer.entries_received, "elapsed": elapsed,
                "rate": sink.count / elapsed, "bytes": st.bytes_sent, "sent": st.entries_sent,
                "datagrams": st.datagrams_sent, "cpu_master": cpu, "cpu_backup": 0.0}

    return asyncio.run(run())


def bench_codec(n: int) -> tuple[float, float]:
    work = entries(n)
    msgs = [work[i : i + 40] for i in range(0, n, 40)]
    t0 = time.perf_counter()
    encoded = [wire.encode_message(1, m) for m in msgs]
    t1 = time.perf_counter()
    for data in encoded:
        wire.decode_message(data, accept_flags=True)
    t2 = time.perf_counter()
    return (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=400, help="entries per engine event batch")
    parser.add_argument("--mode", choices=("process", "loop"), default="process")
    parser.add_argument(
        "--rate", type=float, default=None,
        help="pace the master at this many entries/s (default: as fast as it can; UDP has "
             "no flow control, so a master faster than its backup loses datagrams)",
    )
    args = parser.parse_args()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr),
                        wrapper_class=structlog.make_filtering_bound_logger(30))

    enc, dec = bench_codec(min(args.entries, 100_000))
    print(f"codec: encode {enc:.2f} us/entry, decode+validate {dec:.2f} us/entry")
    v6 = SyncConn(family=AF_INET6, protocol=6, flags=0, state=1, cport=1, vport=80, dport=80,
                  fwmark=0, timeout=900, caddr=ipaddress.IPv6Address("2001:db8::1"),
                  vaddr=ipaddress.IPv6Address("2001:db8::2"),
                  daddr=ipaddress.IPv6Address("2001:db8::3"))
    print(f"wire: {wire.entry_len(entries(1)[0])} bytes per IPv4 entry, "
          f"{wire.entry_len(v6)} per IPv6 entry (as the kernel)")

    bench = bench_process if args.mode == "process" else bench_loop
    res = bench(args.entries, args.batch, args.rate)
    per_entry = res["bytes"] / res["sent"]
    print(f"end to end ({args.mode}): {res['applied']:,} of {args.entries:,} entries applied "
          f"in {res['elapsed']:.3f} s = {res['rate']:,.0f} entries/s "
          f"(target {TARGET:,}); {res['datagrams']:,} datagrams, "
          f"{per_entry:.2f} bytes/entry incl. headers; lost {args.entries - res['applied']:,}")
    cpu = res["cpu_master"] + res["cpu_backup"]
    sides = (f"master {res['cpu_master']:.3f} s, backup {res['cpu_backup']:.3f} s"
             if args.mode == "process" else f"master and backup {res['cpu_master']:.3f} s")
    print(f"cpu: {sides} = {args.entries / cpu:,.0f} entries per CPU-second for both sides "
          f"together; load average {_loadavg()}")
    return 0 if res["rate"] >= TARGET and res["applied"] == args.entries else 1


if __name__ == "__main__":
    raise SystemExit(main())
