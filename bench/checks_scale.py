"""Health checking at scale: TCP_CHECK and HTTP_GET against 10,000 real servers on loopback.

The real servers are a few listening sockets in separate processes (so their CPU is not
counted against the checker), served by a raw epoll loop: each listener binds
0.0.0.0:<port> restricted to the loopback device (SO_BINDTODEVICE "lo"), with SO_REUSEPORT
across processes, so every 127.x address reaches it and nothing outside the host can. Real
server i is 127.10.x.y:<port i mod P>.

The checker is the production CheckRunner with the production probes: by default the
callback fast path the runner uses for TCP_CHECK and HTTP_GET (`--path fast`), or
`--path task`, one coroutine task per probe (`run_probe`, the path of every other kind and
the only one before the fast path existed). Printed per kind: checks completed per second,
CPU seconds of the checker process per 1,000 checks, the cores it used and would use at
10,000 checks a second, how long it waited for a CPU (run-queue delay), the p50/p99/max
lateness of probe starts against their schedule, the event loop's longest stall and the
garbage collector's pauses (wall-clock and CPU time), how many servers were checked fewer
times than the delay loop allows, and the real servers' own CPU.

On a machine busy with other work, wall-clock figures (rate, lateness) say as much about the
neighbours as about the checker; CPU seconds per check (getrusage of this process) is the
figure to compare, and the run-queue wait says how much of the lateness was spent waiting for
a CPU. To see the checker with a core of its own, pin it and the real servers apart and give
their session the CPU (as keepalived's checker_priority would):

    setsid sh -c 'echo -15 > /proc/self/autogroup; exec "$0" "$@"' \\
        python bench/checks_scale.py --checker-cpu 0 --server-cpus 1

By default the long-lived objects are frozen out of the garbage collector (gc.freeze) once
every check has run, as a daemon should after startup; --no-gc-freeze leaves them.

    python bench/checks_scale.py                 # both kinds, 10,000 servers, 60 s each
    python bench/checks_scale.py --kind tcp --duration 10
    python bench/checks_scale.py --kind scheduler  # heap loop vs one task per server
    python bench/checks_scale.py --uvloop          # checker on uvloop (the 'fast' extra)
    python bench/checks_scale.py --path task       # the coroutine probe path, for comparison

Lateness is measured by the runner itself (ProbeStats): the moment the probe really starts
minus the time the tracker scheduled it. CPU is the checker process's own (the real servers
run in children); on loopback it includes the kernel work of the servers' side of each
connection, which runs in the context of the process that sent the packet.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import ipaddress
import logging
import multiprocessing
import os
import random
import resource
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hactl.checks import (
    CheckEvent,
    CheckKey,
    CheckRunner,
    CheckSpec,
    ConnectOptions,
    HttpGetCheck,
    ProbeResult,
    RealServerSpec,
    ScriptExecutor,
    TcpCheck,
    UrlSpec,
    VirtualServerSpec,
    run_probe,
)
from hactl.ipvs.model import IPAddress, IpProto, ServiceKey

HTTP_RESPONSE = (
    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nbackend ok\r\n"
)


# -- the real servers (child processes) ----------------------------------------------------------
#
# Each child runs one epoll loop over its listeners and the connections it accepted, on raw
# file descriptors: about a third of the CPU per connection of an asyncio Protocol per
# connection (transport, protocol, handles), so that the servers keep up with 10,000 checks a
# second on a shared machine and what the checker reports is its own.


def _listener(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo\0")
    s.bind(("0.0.0.0", port))
    s.listen(4096)
    s.setblocking(False)
    return s


def _serve(kind: str, ports: list[int], ready: multiprocessing.synchronize.Event,
           cpus: set[int] | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _raise_nofile()
    if cpus:
        os.sched_setaffinity(0, cpus)
    listeners = {s.fileno(): s for s in map(_listener, ports)}
    ep = select.epoll()
    for fd in listeners:
        ep.register(fd, select.EPOLLIN)
    http = kind == "http"
    pending: dict[int, bytes] = {}  # HTTP connections still waiting for their request
    ready.set()

    def answer(fd: int, data: bytes) -> bool:
        """Reply if the request head is complete (True), else False."""
        if b"\r\n\r\n" not in data:
            return False
        with contextlib.suppress(OSError):
            os.write(fd, HTTP_RESPONSE)
        return True

    while True:
        for fd, _ in ep.poll():
            lsock = listeners.get(fd)
            if lsock is not None:
                for _ in range(256):
                    try:
                        conn, _addr = lsock._accept()  # type: ignore[attr-defined]
                    except OSError:
                        break
                    if not http:
                        os.close(conn)  # TCP_CHECK: the handshake was the check
                        continue
                    os.set_blocking(conn, False)
                    try:
                        data = os.read(conn, 4096)
                    except BlockingIOError:
                        pending[conn] = b""
                        ep.register(conn, select.EPOLLIN)
                        continue
                    except OSError:
                        data = b""
                    if not data or answer(conn, data):
                        os.close(conn)
                    else:
                        pending[conn] = data
                        ep.register(conn, select.EPOLLIN)
                continue
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            data = pending[fd] + chunk
            if not chunk or answer(fd, data):
                del pending[fd]
                os.close(fd)  # which takes it out of the epoll set
            else:
                pending[fd] = data


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 1 << 20)) if hard != resource.RLIM_INFINITY else 1 << 20
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# -- the checker ----------------------------------------------------------------------------------


@dataclass
class Figures:
    kind: str
    servers: int
    duration: float
    checks: int
    failed: int
    cpu: float
    sys_cpu: float
    p50: float
    p99: float
    worst: float
    under_checked: int
    expected_per_server: int
    server_cpu: float = 0.0
    runq_wait: float = 0.0
    stall_max: float = 0.0
    stall_max_cpu: float = 0.0
    stall_cpu_max: float = 0.0
    gc_pauses: int = 0
    gc_pause_max: float = 0.0
    gc_pause_max_cpu: float = 0.0
    gc_pause_total: float = 0.0

    def lines(self) -> list[str]:
        rate = self.checks / self.duration
        return [
            f"[{self.kind}] {self.servers} real servers, delay_loop 1 s, {self.duration:.0f} s",
            f"  checks completed per second : {rate:,.0f} ({self.failed} failed)",
            f"  CPU s per 1,000 checks      : {1000 * self.cpu / max(1, self.checks):.3f}"
            f" (kernel {1000 * self.sys_cpu / max(1, self.checks):.3f})",
            f"  checker CPU                 : {self.cpu / self.duration:.2f} cores"
            f" (at 10,000 checks/s: {10_000 * self.cpu / max(1, self.checks):.2f} cores);"
            f" waited for a CPU {self.runq_wait / self.duration:.0%} of the time",
            f"  probe start lateness        : p50 {1000 * self.p50:.1f} ms, "
            f"p99 {1000 * self.p99:.1f} ms, max {1000 * self.worst:.1f} ms",
            f"  event loop stalls           : longest {1000 * self.stall_max:.0f} ms"
            f" ({1000 * self.stall_max_cpu:.0f} ms of it on a CPU);"
            f" most CPU between 10 ms heartbeats {1000 * self.stall_cpu_max:.0f} ms",
            f"  garbage collector           : {self.gc_pauses} collections, longest"
            f" {1000 * self.gc_pause_max:.1f} ms ({1000 * self.gc_pause_max_cpu:.1f} ms CPU),"
            f" total {1000 * self.gc_pause_total:.0f} ms",
            f"  servers checked < {self.expected_per_server} times: {self.under_checked}",
            f"  real servers (other processes): {self.server_cpu / self.duration:.2f} cores",
        ]


def _runq_wait() -> float:
    """Seconds this process's threads spent runnable but waiting for a CPU (schedstat)."""
    try:
        return int(Path("/proc/self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class _LoopWatch:
    """How late a 10 ms heartbeat callback runs (the event loop's longest stall) and the
    garbage collector's pauses, while `on` is set. Each is measured twice: wall-clock, and
    the CPU time this process used meanwhile. On a busy machine the difference is time
    spent waiting for a CPU: the neighbours' doing, not the checker's."""

    PERIOD = 0.01

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.on = False
        self.stall_max = 0.0
        self.stall_max_cpu = 0.0  # CPU used between the beats around that stall
        self.stall_cpu_max = 0.0  # the most CPU used between two beats
        self.gc_pauses = 0
        self.gc_max = 0.0
        self.gc_max_cpu = 0.0
        self.gc_total = 0.0
        self._gc_t0 = 0.0
        self._gc_c0 = 0.0
        self._at = loop.time() + self.PERIOD
        self._cpu = time.process_time()
        self._timer = loop.call_at(self._at, self._beat)
        gc.callbacks.append(self._gc)

    def _beat(self) -> None:
        now = self.loop.time()
        cpu = time.process_time()
        if self.on:
            late = now - self._at
            used = cpu - self._cpu  # CPU used since the previous beat
            if late > self.stall_max:
                self.stall_max, self.stall_max_cpu = late, used
            self.stall_cpu_max = max(self.stall_cpu_max, used)
        self._at = now + self.PERIOD
        self._cpu = cpu
        self._timer = self.loop.call_at(self._at, self._beat)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
            self._gc_c0 = time.process_time()
        elif self.on:
            pause = time.perf_counter() - self._gc_t0
            self.gc_pauses += 1
            self.gc_max = max(self.gc_max, pause)
            self.gc_max_cpu = max(self.gc_max_cpu, time.process_time() - self._gc_c0)
            self.gc_total += pause

    def close(self) -> None:
        self._timer.cancel()
        gc.callbacks.remove(self._gc)


def _proc_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by processes `pids` (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (proc(5) fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


def server_address(i: int, ports: int) -> tuple[IPAddress, int]:
    return ipaddress.IPv4Address(0x7F0A0000 + 1 + i // ports), i % ports


def build_specs(kind: str, n: int, base_port: int, ports: int, per_vs: int,
                timeout: float) -> list[VirtualServerSpec]:
    opts = ConnectOptions(connect_timeout=timeout)
    check: CheckSpec
    if kind == "tcp":
        check = TcpCheck(connect=opts, delay_loop=1.0, retry=1, delay_before_retry=1.0)
    else:
        check = HttpGetCheck(connect=opts, delay_loop=1.0, retry=1, delay_before_retry=1.0,
                             urls=(UrlSpec(path="/health", regex="backend ok"),))
    specs = []
    for v in range(0, n, per_vs):
        key = ServiceKey.for_address(IpProto.TCP, ipaddress.IPv4Address(0x0A630000 + v), 80)
        servers = []
        for i in range(v, min(n, v + per_vs)):
            addr, slot = server_address(i, ports)
            servers.append(RealServerSpec(addr=addr, port=base_port + slot, checks=(check,)))
        specs.append(VirtualServerSpec(key=key, real_servers=tuple(servers)))
    return specs


async def measure(kind: str, args: argparse.Namespace, server_pids: list[int]) -> Figures:
    specs = build_specs(kind, args.servers, args.base_port, args.ports, args.per_vs,
                        args.connect_timeout)
    counts: collections.Counter[CheckKey] = collections.Counter()
    counting = False
    reasons: collections.Counter[str] = collections.Counter()

    async def task_probe(spec: CheckSpec, addr: IPAddress, port: int, *,
                         scripts: ScriptExecutor | None = None,
                         deadline: float | None = None) -> ProbeResult:
        # any probe other than run_probe itself makes the runner use tasks
        return await run_probe(spec, addr, port, scripts=scripts, deadline=deadline)

    down: list[CheckEvent] = []

    def emit(event: CheckEvent) -> None:
        if type(event).__name__ == "HealthChanged":
            down.append(event)

    runner = CheckRunner(specs, emit=emit, rng=random.Random(42),
                         probe=run_probe if args.path == "fast" else task_probe)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0)  # run() builds its cores in its first step
    # Every result reaches its core's record_result, whichever path ran the probe: counting
    # there leaves the runner's choice of path alone. (A bench-only wrapper; the instance
    # attribute shadows the method.)
    for key in runner.views():
        core = runner.core(key)
        original = core.record_result

        def record(check: CheckKey, result: ProbeResult, *, now: float,
                   _original: Callable[..., None] = original) -> None:
            # (tally inlined: this runs in the measured process for every result)
            if counting:
                counts[check] += 1
                if not result.ok:
                    reasons[result.detail.split(" after ")[0]] += 1
            _original(check, result, now=now)

        core.record_result = record  # type: ignore[method-assign]
    # warm up: the first probes are spread over one delay loop by warmup
    await asyncio.sleep(2.0)
    if args.gc_freeze:
        # What a daemon does once it has started and every check has run once (see
        # docs/checks.md, Scale): configuration, cores, probe plans and probe objects move to
        # the permanent generation, so the collector's full passes no longer walk tens of
        # thousands of long-lived objects.
        gc.freeze()
    watch = _LoopWatch(asyncio.get_running_loop())
    stats = runner.stats
    stats.lateness_ms = [0] * len(stats.lateness_ms)
    stats.lateness_max = 0.0
    done0, failed0 = stats.completed, stats.failed
    counting = True
    watch.on = True
    cpu0 = time.process_time()
    sys0 = os.times().system
    srv0 = _proc_cpu(server_pids)
    wait0 = _runq_wait()
    t0 = time.monotonic()
    await asyncio.sleep(args.duration)
    cpu = time.process_time() - cpu0
    sys_cpu = os.times().system - sys0
    server_cpu = _proc_cpu(server_pids) - srv0
    runq_wait = _runq_wait() - wait0
    elapsed = time.monotonic() - t0
    counting = False
    watch.on = False
    watch.close()
    checks = stats.completed - done0
    figures = Figures(
        kind=kind,
        servers=args.servers,
        duration=elapsed,
        checks=checks,
        failed=stats.failed - failed0,
        cpu=cpu,
        sys_cpu=sys_cpu,
        p50=stats.lateness_quantile(0.50),
        p99=stats.lateness_quantile(0.99),
        worst=stats.lateness_max,
        under_checked=0,
        expected_per_server=int(args.duration) - 1,
        server_cpu=server_cpu,
        runq_wait=runq_wait,
        stall_max=watch.stall_max,
        stall_max_cpu=watch.stall_max_cpu,
        stall_cpu_max=watch.stall_cpu_max,
        gc_pauses=watch.gc_pauses,
        gc_pause_max=watch.gc_max,
        gc_pause_max_cpu=watch.gc_max_cpu,
        gc_pause_total=watch.gc_total,
    )
    want = int(args.duration) - 1
    figures.under_checked = sum(
        1 for spec in specs for rs in spec.real_servers
        if sum(counts[ck] for ck in rs.check_keys(spec.key)) < want
    )
    runner.stop()
    await task
    gc.unfreeze()  # the next kind starts afresh
    if down:
        print(f"  note: {len(down)} health transitions during the run", file=sys.stderr)
    for reason, count in reasons.most_common(3):
        print(f"  failures: {count} x {reason}", file=sys.stderr)
    return figures


async def compare_schedulers(args: argparse.Namespace) -> list[str]:
    """The runner's heap-driven loop against one long-lived task per server, both feeding
    the same cores with a probe that costs nothing (so only scheduling is measured)."""
    ok = ProbeResult(True, "ok")

    async def free_probe(spec: CheckSpec, addr: IPAddress, port: int, *,
                         scripts: ScriptExecutor | None = None,
                         deadline: float | None = None) -> ProbeResult:
        await asyncio.sleep(0)
        return ok

    specs = build_specs("tcp", args.servers, args.base_port, args.ports, args.per_vs, 2.0)
    loop = asyncio.get_running_loop()
    lines = []

    # (1) CheckRunner
    runner = CheckRunner(specs, emit=lambda e: None, rng=random.Random(1), probe=free_probe)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(2.0)
    stats = runner.stats
    stats.lateness_ms = [0] * len(stats.lateness_ms)
    stats.lateness_max = 0.0
    n0, c0 = stats.completed, time.process_time()
    await asyncio.sleep(args.duration)
    n, cpu = stats.completed - n0, time.process_time() - c0
    runner.stop()
    await task
    lines.append(f"[scheduler: heap loop]     {n / args.duration:,.0f} checks/s, "
                 f"{1000 * cpu / max(1, n):.3f} CPU s/1,000, "
                 f"p99 lateness {1000 * stats.lateness_quantile(0.99):.1f} ms")

    # (2) one task per real server, each sleeping until its tracker's next deadline
    from hactl.checks import HealthTracker, StartProbe

    late = runner.stats.__class__()
    done = 0
    measuring = False

    async def per_server(vs: ServiceKey, rs: RealServerSpec, rng: random.Random) -> None:
        nonlocal done
        tracker = HealthTracker(vs, rs, rng=rng, now=loop.time())
        while True:
            at = tracker.next_deadline()
            assert at is not None
            await asyncio.sleep(max(0.0, at - loop.time()))
            now = loop.time()
            tracker.handle_timer(now=now)
            for ev in tracker.pop_events():
                if isinstance(ev, StartProbe):
                    if measuring:
                        late.record_start(now - ev.scheduled_at)
                    result = await free_probe(ev.spec, rs.addr, rs.port)
                    tracker.record_result(ev.check, result, now=loop.time())
                    done += 1
            tracker.pop_events()

    rng = random.Random(1)
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(per_server(spec.key, rs, rng))
                 for spec in specs for rs in spec.real_servers]
        await asyncio.sleep(2.0)
        measuring = True
        n0, c0 = done, time.process_time()
        await asyncio.sleep(args.duration)
        n, cpu = done - n0, time.process_time() - c0
        for t in tasks:
            t.cancel()
    lines.append(f"[scheduler: task per check] {n / args.duration:,.0f} checks/s, "
                 f"{1000 * cpu / max(1, n):.3f} CPU s/1,000, "
                 f"p99 lateness {1000 * late.lateness_quantile(0.99):.1f} ms")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=("tcp", "http", "both", "scheduler"), default="both",
                    help="'scheduler' compares the two scheduling designs with free probes")
    ap.add_argument("--servers", type=int, default=10_000)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds measured per kind")
    ap.add_argument("--ports", type=int, default=8, help="listening ports (servers per address)")
    ap.add_argument("--base-port", type=int, default=21080)
    ap.add_argument("--server-procs", type=int, default=2)
    ap.add_argument("--per-vs", type=int, default=100, help="real servers per virtual server")
    ap.add_argument("--connect-timeout", type=float, default=2.0)
    ap.add_argument("--path", choices=("fast", "task"), default="fast",
                    help="probe path: the runner's callback fast path, or one task per probe")
    ap.add_argument("--uvloop", action="store_true",
                    help="run the checker on uvloop (the optional 'fast' extra)")
    ap.add_argument("--checker-cpu", type=int, default=None,
                    help="pin the checker process to this CPU (as taskset -c N)")
    ap.add_argument("--server-cpus", type=str, default=None,
                    help="pin the real servers to these CPUs, e.g. '1' or '1,2'")
    ap.add_argument("--no-gc-freeze", dest="gc_freeze", action="store_false",
                    help="leave the long-lived objects to the garbage collector")
    ap.add_argument("--nice", type=int, default=0,
                    help="the checker's nice value (negative needs root; keepalived's "
                         "checker_priority does the same)")
    args = ap.parse_args()
    if args.duration < 2:
        ap.error("--duration must be at least 2 s")
    _raise_nofile()
    if args.checker_cpu is not None:
        os.sched_setaffinity(0, {args.checker_cpu})
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    server_cpus = ({int(c) for c in args.server_cpus.split(",")}
                   if args.server_cpus else None)
    # Health transitions are logged at info; a benchmark prints only its figures.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.kind == "scheduler":
        print("\n".join(asyncio.run(compare_schedulers(args))))
        return
    kinds = ["tcp", "http"] if args.kind == "both" else [args.kind]
    ports = [args.base_port + i for i in range(args.ports)]
    ctx = multiprocessing.get_context("spawn")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"loop {'uvloop' if args.uvloop else 'asyncio'}, {args.path} path, "
          f"load {os.getloadavg()[0]:.1f}, checker on CPUs "
          f"{sorted(os.sched_getaffinity(0))} nice {os.getpriority(os.PRIO_PROCESS, 0)}, "
          f"real servers on CPUs {sorted(server_cpus) if server_cpus else 'any'}, "
          f"gc.freeze {'on' if args.gc_freeze else 'off'}")
    for kind in kinds:
        ready = ctx.Event()
        procs = [ctx.Process(target=_serve, args=(kind, ports, ready, server_cpus),
                             daemon=True)
                 for _ in range(args.server_procs)]
        for p in procs:
            p.start()
        pids = [p.pid for p in procs if p.pid is not None]
        if not ready.wait(20):
            sys.exit("real servers did not start")
        time.sleep(0.5)
        try:
            if args.uvloop:
                import uvloop

                figures = uvloop.run(measure(kind, args, pids))
            else:
                figures = asyncio.run(measure(kind, args, pids))
        finally:
            for p in procs:
                p.terminate()
                p.join(5)
        print("\n".join(figures.lines()), flush=True)


if __name__ == "__main__":
    main()
