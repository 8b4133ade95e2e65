"""Benchmark of the embedded data plane against HAProxy (mode tcp, one thread), on loopback.

One run measures, against the same nginx backend (a static file server on 127.0.0.1 with a
config written to a temporary directory; a small Python backend when nginx is absent):

* direct to the backend, through HAProxy (`mode tcp`, `nbthread 1`), and through hactl's
  data plane running in a separate process (uvloop when installed);
* requests/s with keep-alive (wrk, small object), new connections/s (wrk with
  `Connection: close`), bulk throughput of a 10 MB object, and the process memory (RSS) per
  idle proxied connection for 10,000 idle connections;
* each proxy figure as a ratio to HAProxy, and the targets: bulk >= 1.0x, keep-alive
  >= 0.85x, new connections >= 0.6x, <= 4 KiB per idle connection.

Usage: python bench/dataplane.py [--duration S] [--idle N] [--connections C]
Needs `wrk` (Debian package) and `haproxy`; every load loop is bounded in count and time,
and every process and file it starts is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from a checkout: make `hactl` importable
    sys.path.insert(0, str(REPO))
SMALL_SIZE = 128
BULK_SIZE = 10 * 1024 * 1024
NOFILE = 65536


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))


def _default_idle() -> int:
    _raise_nofile()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return min(10_000, (soft - 200) // 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# ------------------------------------------------------------------------------------------
# The hactl side: a data plane serving one service, in its own process.


def _make_table(vip: ipaddress.IPv4Address, port: int, backend: int):  # type: ignore[no-untyped-def]
    """The production flow table (the engine adapter) with one rr service; and a label."""
    from hactl.ipvs.flows import EngineFlowTable
    from hactl.ipvs.model import Destination, IpProto, ServiceKey, VirtualService

    svc = VirtualService(
        key=ServiceKey.for_address(IpProto.TCP, vip, port),
        scheduler="rr",
        destinations=(Destination(addr=ipaddress.IPv4Address("127.0.0.1"), port=backend),),
    )
    return svc, EngineFlowTable.for_services([svc]), "engine"


def serve(port: int, backend: int, splice: bool, loop: str, pipe_size: int) -> None:
    """Run a data plane for 127.0.0.1:port -> 127.0.0.1:backend until SIGTERM."""
    _raise_nofile()
    from hactl.ipvs.dataplane import loop_runner

    runner, loop_name = loop_runner()
    if loop == "asyncio":
        runner, loop_name = asyncio.run, "asyncio"

    async def main() -> None:
        import structlog

        from hactl.ipvs.dataplane import DataPlane, DataPlaneSettings

        structlog.configure(
            wrapper_class=structlog.make_filtering_bound_logger(30),  # warnings and up
        )
        svc, table, label = _make_table(ipaddress.IPv4Address("127.0.0.1"), port, backend)
        settings = DataPlaneSettings(splice=splice, max_connections=100_000, pipe_size=pipe_size)
        plane = DataPlane(table, settings)
        plane.apply([svc])
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print(f"READY {loop_name} table={label}", flush=True)
        await stop.wait()
        plane.close()

    runner(main())


# ------------------------------------------------------------------------------------------
# Peers: nginx backend, HAProxy, hactl


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _start_nginx(tmp: Path, port: int) -> Proc:
    root = tmp / "www"
    root.mkdir()
    (root / "small").write_bytes(b"s" * SMALL_SIZE)
    (root / "big").write_bytes(os.urandom(BULK_SIZE))
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
worker_rlimit_nofile {NOFILE};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 30000; multi_accept on; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_header_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root};
    }}
}}
"""
    )
    popen = subprocess.Popen(
        ["nginx", "-c", str(conf), "-p", str(tmp), "-g", "daemon off; user root;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_port(port)
    return Proc("nginx", popen)


def _start_haproxy(tmp: Path, port: int, backend: int) -> Proc:
    conf = tmp / "haproxy.cfg"
    conf.write_text(
        f"""
global
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server s1 127.0.0.1:{backend}
"""
    )
    popen = subprocess.Popen(
        ["haproxy", "-db", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _wait_port(port)
    return Proc("haproxy", popen)


def _start_hactl(
    port: int, backend: int, splice: bool, loop: str, pipe_size: int
) -> tuple[Proc, str]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--serve",
        str(port),
        str(backend),
        "--loop",
        loop,
        "--pipe-size",
        str(pipe_size),
    ]
    if not splice:
        cmd.append("--no-splice")
    popen = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert popen.stdout is not None
    line = popen.stdout.readline().decode().strip()
    if not line.startswith("READY"):
        popen.kill()
        raise RuntimeError(f"hactl data plane did not start: {line!r}")
    _wait_port(port)
    return Proc("hactl", popen), line.removeprefix("READY ").strip()


# ------------------------------------------------------------------------------------------
# Load


_UNITS = {
    "": 1,
    "k": 1e3,
    "K": 1e3,
    "M": 1e6,
    "m": 1e6,
    "G": 1e9,
    "B": 1,
    "KB": 1024,
    "MB": 1024**2,
    "GB": 1024**3,
}


@dataclass
class WrkResult:
    rps: float  # requests per second
    bps: float  # bytes per second
    requests: int
    nbytes: float
    cpu: float | None  # CPU seconds the proxy process used during the run


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(
    port: int,
    path: str,
    *,
    duration: float,
    connections: int,
    close: bool = False,
    proc: Proc | None = None,
) -> WrkResult:
    """One wrk run (one thread), with the CPU time `proc` spent meanwhile."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s"]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    cpu_before = _cpu_seconds(proc.pid) if proc is not None else 0.0
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=duration + 30, check=True
    ).stdout
    cpu = _cpu_seconds(proc.pid) - cpu_before if proc is not None else None
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    tps = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    if rps is None or tps is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"wrk saw {non2xx.group(1)} bad responses through port {port}")
    if errors and close is False:
        print(f"    (wrk socket errors on {path}: {errors.group(1)})")
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", out)
    if total is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    return WrkResult(
        rps=float(rps.group(1)),
        bps=float(tps.group(1)) * _UNITS[tps.group(2)],
        requests=int(total.group(1)),
        nbytes=float(total.group(4)) * _UNITS[total.group(5)],
        cpu=cpu,
    )


def _idle_client(port: int, count: int, ready_w: int, hold_r: int) -> None:
    """Child process: open `count` idle connections, report, hold them until told."""
    _raise_nofile()
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.connect(("127.0.0.1", port))
            socks.append(s)
        os.write(ready_w, b"1")
        os.read(hold_r, 1)
    finally:
        for s in socks:
            s.close()
        os._exit(0)


def _backend_legs(backend: int) -> int:
    """Established TCP connections towards 127.0.0.1:backend (the proxies' server legs)."""
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( dport = :{backend} )"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return sum(1 for line in out.splitlines() if line.strip())


def _idle_rss(proc: Proc, port: int, backend: int, count: int, settle: float) -> float:
    """KiB of RSS per idle proxied connection for `count` connections (fresh process).

    Measured before any throughput run, so memory freed by earlier runs (and kept by the
    allocator) cannot hide the cost; every backend leg is confirmed established first.
    """
    with _held_connections(port, 200, settle, backend):  # warm up allocator and pools
        pass
    time.sleep(settle)
    before = _rss_kib(proc.pid)
    with _held_connections(port, count, settle, backend):
        after = _rss_kib(proc.pid)
    return (after - before) / count


@contextlib.contextmanager
def _held_connections(port: int, count: int, settle: float, backend: int) -> Iterator[None]:
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _idle_client(port, count, ready_w, hold_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise RuntimeError("idle client failed")
        deadline = time.monotonic() + 30
        while _backend_legs(backend) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        if _backend_legs(backend) < count:
            raise RuntimeError(f"the proxy on port {port} did not connect {count} backend legs")
        time.sleep(settle)
        yield
    finally:
        os.write(hold_w, b"1")
        os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, hold_r, hold_w):
            os.close(fd)


@dataclass
class Row:
    keepalive_rps: float = 0.0
    newconn_cps: float = 0.0
    bulk_bps: float = 0.0
    idle_kib: float | None = None
    # CPU the proxy process spends per operation (load-independent where throughput is not)
    keepalive_cpu_us: float | None = None  # per request
    newconn_cpu_us: float | None = None  # per connection (one request each)
    bulk_cpu_ms_per_gb: float | None = None


def _median(values: list[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return statistics.median(found) if found else None


def _measure(
    targets: dict[str, tuple[int, Proc | None]], args: argparse.Namespace
) -> dict[str, Row]:
    """Every metric for every target, rounds interleaved, median per target.

    Interleaving (direct, haproxy, hactl, direct, ...) and taking medians keeps a burst of
    unrelated load on the machine from landing on one target only.
    """
    idle = {
        name: _idle_rss(proc, port, args.backend, args.idle, args.settle)
        for name, (port, proc) in targets.items()
        if proc is not None and args.idle
    }
    runs: dict[str, dict[str, list[WrkResult]]] = {
        name: {"ka": [], "nc": [], "bulk": []} for name in targets
    }
    for port, _ in targets.values():
        _wrk(port, "/small", duration=1, connections=args.connections)  # warm-up
    for _ in range(args.rounds):
        for name, (port, proc) in targets.items():
            runs[name]["ka"].append(
                _wrk(
                    port, "/small", duration=args.duration, connections=args.connections, proc=proc
                )
            )
        for name, (port, proc) in targets.items():
            runs[name]["nc"].append(
                _wrk(
                    port,
                    "/small",
                    duration=args.duration,
                    connections=args.connections,
                    close=True,
                    proc=proc,
                )
            )
            time.sleep(0.5)  # let TIME_WAIT churn settle a little
        for name, (port, proc) in targets.items():
            runs[name]["bulk"].append(
                _wrk(port, "/big", duration=args.duration, connections=4, proc=proc)
            )
    rows = {}
    for name in targets:
        got = runs[name]
        rows[name] = Row(
            keepalive_rps=statistics.median(r.rps for r in got["ka"]),
            newconn_cps=statistics.median(r.rps for r in got["nc"]),
            bulk_bps=statistics.median(r.bps for r in got["bulk"]),
            idle_kib=idle.get(name),
            keepalive_cpu_us=_median(
                [r.cpu / r.requests * 1e6 if r.cpu is not None else None for r in got["ka"]]
            ),
            newconn_cpu_us=_median(
                [r.cpu / r.requests * 1e6 if r.cpu is not None else None for r in got["nc"]]
            ),
            bulk_cpu_ms_per_gb=_median(
                [r.cpu / r.nbytes * 1e12 if r.cpu is not None else None for r in got["bulk"]]
            ),
        )
    return rows


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _ratio(value: float | None, ref: float | None) -> str:
    if value is None or not ref:
        return "   -  "
    return f"{value / ref:5.2f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds per metric; the median is reported",
    )
    parser.add_argument(
        "--idle",
        type=int,
        default=_default_idle(),
        help="idle connections (0: skip); default 10,000 or what fits in "
        "RLIMIT_NOFILE (a proxy needs two descriptors per connection)",
    )
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before RSS reads")
    parser.add_argument("--no-splice", action="store_true", help="hactl copies only")
    parser.add_argument(
        "--pipe-size", type=int, default=1024 * 1024, help="hactl's splice pipe size in bytes"
    )
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="hactl's event loop (uvloop falls back to asyncio if missing)",
    )
    parser.add_argument(
        "--serve", nargs=2, type=int, metavar=("PORT", "BACKEND"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve[0], args.serve[1], not args.no_splice, args.loop, args.pipe_size)
        return 0
    for tool in ("wrk", "haproxy", "nginx"):
        if shutil.which(tool) is None:
            print(f"missing {tool}: apt-get install -y {tool}", file=sys.stderr)
            return 2
    _raise_nofile()
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="hactl-bench-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            backend = _free_port()
            procs.append(_start_nginx(tmp, backend))
            haproxy_port, hactl_port = _free_port(), _free_port()
            haproxy = _start_haproxy(tmp, haproxy_port, backend)
            procs.append(haproxy)
            hactl, label = _start_hactl(
                hactl_port, backend, not args.no_splice, args.loop, args.pipe_size
            )
            procs.append(hactl)
            print(
                f"loopback, {os.cpu_count()} CPUs; backend nginx; hactl: {label}, "
                f"splice={'off' if args.no_splice else 'auto'}; wrk -t1 -c{args.connections}, "
                f"{args.duration:g}s per run, median of {args.rounds} interleaved rounds; "
                f"idle connections: {args.idle}; load average {os.getloadavg()[0]:.1f}"
            )
            args.backend = backend
            rows = _measure(
                {
                    "direct": (backend, None),
                    "haproxy": (haproxy_port, haproxy),
                    "hactl": (hactl_port, hactl),
                },
                args,
            )
        finally:
            for proc in reversed(procs):
                proc.stop()
    ref = rows["haproxy"]
    print()
    print(
        f"{'':8} {'keep-alive req/s':>22} {'new conn/s':>20} {'bulk MB/s (10 MB)':>22} "
        f"{'KiB/idle conn':>18}"
    )
    for name, row in rows.items():
        idle = f"{row.idle_kib:7.2f}" if row.idle_kib is not None else "      -"
        print(
            f"{name:8} {row.keepalive_rps:12.0f} {_ratio(row.keepalive_rps, ref.keepalive_rps)}"
            f"   {row.newconn_cps:10.0f} {_ratio(row.newconn_cps, ref.newconn_cps)}"
            f"   {row.bulk_bps / 1e6:12.1f} {_ratio(row.bulk_bps, ref.bulk_bps)}"
            f"   {idle} {_ratio(row.idle_kib, ref.idle_kib)}"
        )
    print()
    print("CPU used by the proxy process per operation (lower is better; robust to load):")
    print(f"{'':8} {'us/keep-alive req':>22} {'us/new conn':>20} {'ms/GB bulk':>22}")
    for name in ("haproxy", "hactl"):
        row = rows[name]
        print(
            f"{name:8} {_num(row.keepalive_cpu_us):>12} "
            f"{_ratio(row.keepalive_cpu_us, ref.keepalive_cpu_us)}"
            f"   {_num(row.newconn_cpu_us):>10} {_ratio(row.newconn_cpu_us, ref.newconn_cpu_us)}"
            f"   {_num(row.bulk_cpu_ms_per_gb):>12} "
            f"{_ratio(row.bulk_cpu_ms_per_gb, ref.bulk_cpu_ms_per_gb)}"
        )
    h = rows["hactl"]
    checks = [
        ("bulk >= 1.0x HAProxy", h.bulk_bps >= 1.0 * ref.bulk_bps),
        ("keep-alive >= 0.85x HAProxy", h.keepalive_rps >= 0.85 * ref.keepalive_rps),
        ("new conn/s >= 0.6x HAProxy", h.newconn_cps >= 0.6 * ref.newconn_cps),
        ("<= 4 KiB per idle connection", h.idle_kib is not None and h.idle_kib <= 4.0),
    ]
    print()
    for text, ok in checks:
        print(f"  [{'met' if ok else 'MISSED'}] {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
