"""Benchmark of the embedded data plane against HAProxy (mode tcp, one thread), on loopback.

One run measures, against the same nginx backend (a static file server on 127.0.0.1 with a
config written to a temporary directory):

* direct to the backend, through HAProxy (`mode tcp`, `nbthread 1`), and through hactl's
  data plane running in a separate process (uvloop when installed);
* requests/s with keep-alive (wrk, small object), new connections/s (wrk with
  `Connection: close`), bulk throughput of a 10 MB object, and the process memory (RSS) per
  idle proxied connection for 10,000 idle connections;
* each proxy figure as a ratio to HAProxy, and the targets: bulk >= 1.0x, keep-alive
  >= 0.85x, new connections >= 0.6x, <= 4 KiB per idle connection.

Throughput on a shared machine is noisy, so every metric runs in several interleaved rounds
(each round runs every target back to back, in alternating order) and the report gives the
median of the per-round ratios and their range, plus the CPU each proxy spent per operation
(and, for bulk, the CPU per GB of the client and the backend too). As root, everything runs
in a private network namespace, where `--congestion-control` can set the TCP congestion
control of every socket: with BBR, which paces loopback sockets from a timer, the bulk figure
comes out very differently than with reno or cubic (docs/dataplane.md, Benchmark).

Usage: python bench/dataplane.py [--rounds N] [--duration S] [--metrics ka,nc,bulk,idle]
                                 [--congestion-control reno]
Needs `wrk`, `nginx` and `haproxy` (Debian packages; `tools/setup.sh bench` installs them,
and uvloop through the `fast` extra). Every load loop is bounded in count and time, and every
process and file it starts is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
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
INSTALL_HINT = """\
This benchmark needs wrk, nginx and haproxy (Debian packages). Install them with
    tools/setup.sh bench        (also installs hactl with the `fast` extra: uvloop)
or  apt-get install -y wrk nginx haproxy"""


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

        from hactl.ipvs.dataplane import DataPlane, DataPlaneSettings, tune_collector

        structlog.configure(
            wrapper_class=structlog.make_filtering_bound_logger(30),  # warnings and up
        )
        svc, table, label = _make_table(ipaddress.IPv4Address("127.0.0.1"), port, backend)
        settings = DataPlaneSettings(splice=splice, max_connections=100_000, pipe_size=pipe_size)
        plane = DataPlane(table, settings)
        plane.apply([svc])
        gc.freeze()  # as `hactl run` does once started (hactl.daemon.Director, freeze_heap)
        tune_collector()
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
    client_cpu: float  # CPU seconds wrk used
    backend_cpu: float | None  # CPU seconds the backend's workers used


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _worker_pids(pid: int, timeout: float = 5.0) -> list[int]:
    """The child processes of `pid` (nginx's workers), once there are any."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    deadline = time.monotonic() + timeout
    while path.exists() and time.monotonic() < deadline:
        found = [int(p) for p in path.read_text().split()]
        if found:
            return found
        time.sleep(0.05)
    return []


def _wrk(
    port: int,
    path: str,
    *,
    duration: float,
    connections: int,
    close: bool = False,
    proc: Proc | None = None,
    backend: list[int] | None = None,
) -> WrkResult:
    """One wrk run (one thread), with the CPU time `proc`, wrk and `backend` spent meanwhile.

    On loopback the client and the backend share the machine with the proxy, and part of
    the kernel's TCP work lands on whichever process happens to run, so their CPU per
    operation is reported too: it shows where a bulk transfer is bounded.
    """
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s"]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    backend = backend or []
    cpu_before = _cpu_seconds(proc.pid) if proc is not None else 0.0
    backend_before = sum(_cpu_seconds(pid) for pid in backend)
    client_before = _children_cpu()
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=duration + 30, check=True
    ).stdout
    client_cpu = _children_cpu() - client_before
    cpu = _cpu_seconds(proc.pid) - cpu_before if proc is not None else None
    backend_cpu = sum(_cpu_seconds(pid) for pid in backend) - backend_before if backend else None
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
        client_cpu=client_cpu,
        backend_cpu=backend_cpu,
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


@dataclass(frozen=True)
class Metric:
    """One throughput measure: a wrk run shape, how to read its rate and its CPU cost."""

    key: str
    label: str  # rate column heading
    cpu_label: str  # CPU-per-operation heading
    path: str
    close: bool = False
    bulk: bool = False

    def run(self, port: int, proc: Proc | None, args: argparse.Namespace) -> WrkResult:
        if self.bulk:
            conns = args.bulk_connections if self.key == "bulk" else 1
        else:
            conns = args.connections
        result = _wrk(
            port,
            self.path,
            duration=args.duration,
            connections=conns,
            close=self.close,
            proc=proc,
            backend=args.backend_pids,
        )
        if self.close:
            time.sleep(0.5)  # let TIME_WAIT churn settle a little
        return result

    def rate(self, r: WrkResult) -> float:
        """Requests/s, or MB/s for bulk."""
        return r.bps / 1e6 if self.bulk else r.rps

    def per_op(self, r: WrkResult, seconds: float | None) -> float | None:
        """CPU seconds of one run per request (us), or per GB for bulk (ms)."""
        if seconds is None:
            return None
        return seconds / r.nbytes * 1e12 if self.bulk else seconds / r.requests * 1e6

    def cpu(self, r: WrkResult) -> float | None:
        """CPU of the proxy per operation (see `per_op`); None for direct."""
        return self.per_op(r, r.cpu)


METRICS: dict[str, Metric] = {
    m.key: m
    for m in (
        Metric("ka", "keep-alive req/s", "us/keep-alive req", "/small"),
        Metric("nc", "new conn/s", "us/new conn", "/small", close=True),
        Metric("bulk", "bulk MB/s (10 MB)", "ms/GB bulk", "/big", bulk=True),
        Metric("bulk1", "bulk MB/s, 1 stream", "ms/GB, 1 stream", "/big", bulk=True),
    )
}


@dataclass
class Series:
    """One metric for every target, one entry per round (same index = same round)."""

    metric: Metric
    runs: dict[str, list[WrkResult]]

    def rates(self, name: str) -> list[float]:
        return [self.metric.rate(r) for r in self.runs[name]]

    def cpus(self, name: str) -> list[float]:
        return [c for r in self.runs[name] if (c := self.metric.cpu(r)) is not None]

    def ratios(self, name: str, ref: str = "haproxy") -> list[float]:
        """Per-round ratio to `ref`: each round's pair ran back to back."""
        return [a / b for a, b in zip(self.rates(name), self.rates(ref), strict=True) if b]

    def cpu_ratios(self, name: str, ref: str = "haproxy") -> list[float]:
        return [a / b for a, b in zip(self.cpus(name), self.cpus(ref), strict=True) if b]

    def client_cpu(self, name: str) -> float | None:
        """Median CPU of wrk per operation when it drove `name`."""
        return _median_or_none(
            [c for r in self.runs[name] if (c := self.metric.per_op(r, r.client_cpu)) is not None]
        )

    def backend_cpu(self, name: str) -> float | None:
        """Median CPU of the backend's workers per operation when `name` was driven."""
        return _median_or_none(
            [c for r in self.runs[name] if (c := self.metric.per_op(r, r.backend_cpu)) is not None]
        )


def _measure(
    targets: dict[str, tuple[int, Proc | None]], metrics: list[Metric], args: argparse.Namespace
) -> list[Series]:
    """Every metric for every target in interleaved rounds.

    Per metric, each round runs every target once, back to back, and the order alternates
    from round to round (direct, haproxy, hactl, then hactl, haproxy, direct, ...), so a
    burst of unrelated load on the shared machine, or a drift during the run, lands on both
    proxies alike. Ratios are taken per round and summarised by their median and range.
    """
    for port, _ in targets.values():
        _wrk(port, "/small", duration=1, connections=args.connections)  # warm-up
    names = list(targets)
    result = []
    for metric in metrics:
        series = Series(metric, {name: [] for name in names})
        for rnd in range(args.rounds):
            for name in names if rnd % 2 == 0 else reversed(names):
                port, proc = targets[name]
                series.runs[name].append(metric.run(port, proc, args))
            if "hactl" in names and "haproxy" in names:
                # this round's own pair: `ratios` leaves out rounds where HAProxy made 0
                ours, ref = series.rates("hactl")[-1], series.rates("haproxy")[-1]
                said = f"{ours / ref:.2f}x haproxy" if ref else "- (haproxy 0)"
                print(f"  {metric.label:<22} round {rnd + 1}/{args.rounds}: hactl {said}")
        result.append(series)
    return result


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def _summary(ratios: list[float]) -> str:
    """'0.97x (0.88-1.10x)': the median ratio and its range over the rounds."""
    if not ratios:
        return "-"
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}x)"


def _median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _report(series: list[Series], idle: dict[str, float], names: list[str]) -> list[str]:
    """Print the tables; return the target lines (`[met]`/`[MISSED]`)."""
    print()
    print(
        f"{'median of rounds':<22}"
        + "".join(f"{n:>12}" for n in names)
        + "   hactl/haproxy: median (range)"
    )
    medians: dict[str, float] = {}
    for s in series:
        cells = "".join(f"{statistics.median(s.rates(n)):12.1f}" for n in names)
        ratios = s.ratios("hactl")
        medians[s.metric.key] = statistics.median(ratios) if ratios else 0
        print(f"{s.metric.label:<22}{cells}   {_summary(ratios)}")
    if idle:
        cells = "".join(f"{_num(idle.get(n), '.2f'):>12}" for n in names)
        ratio = [idle["hactl"] / idle["haproxy"]] if idle.get("haproxy") else []
        print(f"{'KiB per idle conn':<22}{cells}   {_summary(ratio)}")
    print()
    print("CPU of the proxy process per operation (lower is better; robust to load):")
    print(f"{'median of rounds':<22}{'haproxy':>12}{'hactl':>12}   hactl/haproxy: median (range)")
    for s in series:
        cells = "".join(f"{_num(_median_or_none(s.cpus(n))):>12}" for n in ("haproxy", "hactl"))
        print(f"{s.metric.cpu_label:<22}{cells}   {_summary(s.cpu_ratios('hactl'))}")
    bulk = [s for s in series if s.metric.bulk]
    if bulk:
        print()
        print(
            "CPU per GB of bulk (ms) of every process on the path: on loopback the kernel's TCP\n"
            "work for a socket lands partly on whichever process runs, and the client (wrk) is\n"
            "often the stage that bounds the transfer, so its share shows where time goes:"
        )
        print(f"{'':22}" + "".join(f"{n:>12}" for n in names))
        for s in bulk:
            for label, get in (
                ("proxy", lambda n, s=s: _median_or_none(s.cpus(n))),
                ("client (wrk)", s.client_cpu),
                ("backend (nginx)", s.backend_cpu),
            ):
                cells = "".join(f"{_num(get(n)):>12}" for n in names)
                print(f"{s.metric.key + ' ' + label:<22}{cells}")
    checks = []
    for key, text, target in (
        ("bulk", "bulk >= 1.0x HAProxy (median of per-round ratios)", 1.0),
        ("ka", "keep-alive >= 0.85x HAProxy (median of per-round ratios)", 0.85),
        ("nc", "new conn/s >= 0.6x HAProxy (median of per-round ratios)", 0.6),
    ):
        if key in medians:
            checks.append(f"  [{'met' if medians[key] >= target else 'MISSED'}] {text}")
    if "hactl" in idle:
        ok = idle["hactl"] <= 4.0
        checks.append(f"  [{'met' if ok else 'MISSED'}] <= 4 KiB per idle connection")
    return checks


_CC_SYSCTL = Path("/proc/sys/net/ipv4/tcp_congestion_control")


def _rerun_in_netns(argv: list[str]) -> int:
    """Run this benchmark again inside a new network namespace (removed when it exits)."""
    if shutil.which("unshare") is None:
        print("unshare (util-linux) not found: run with --no-netns", file=sys.stderr)
        return 2
    cmd = ["unshare", "--net", "--", sys.executable, str(Path(__file__).resolve())]
    return subprocess.run([*cmd, *argv, "--in-netns"], check=False).returncode


def _setup_netns(congestion_control: str | None) -> None:
    """Inside the private namespace: loopback up, and the congestion control if asked."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
    if congestion_control:
        try:
            _CC_SYSCTL.write_text(congestion_control)
        except OSError as exc:
            allowed = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control").read_text()
            raise SystemExit(
                f"cannot use {congestion_control} ({exc.strerror}): outside the initial "
                f"namespace only net.ipv4.tcp_allowed_congestion_control may be the default: "
                f"{allowed.strip()}"
            ) from None


def _tcp_label(args: argparse.Namespace) -> str:
    where = "private netns" if args.in_netns else "host netns"
    try:
        cc = _CC_SYSCTL.read_text().strip()
    except OSError:
        cc = "?"
    return f"{where}, TCP congestion control {cc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=INSTALL_HINT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument(
        "--bulk-connections", type=int, default=4, help="wrk connections for the bulk runs"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="interleaved rounds per metric; the median ratio and the range are reported",
    )
    parser.add_argument(
        "--metrics",
        default="ka,nc,bulk,idle",
        help="comma-separated subset of: ka (keep-alive), nc (new connections), bulk "
        "(10 MB, --bulk-connections streams), bulk1 (10 MB, one stream), idle (RSS)",
    )
    parser.add_argument(
        "--idle",
        type=int,
        default=_default_idle(),
        help="idle connections; default 10,000 or what fits in "
        "RLIMIT_NOFILE (a proxy needs two descriptors per connection)",
    )
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before RSS reads")
    parser.add_argument("--no-direct", action="store_true", help="skip the direct-to-nginx runs")
    parser.add_argument("--no-splice", action="store_true", help="hactl copies only")
    parser.add_argument(
        "--netns",
        action=argparse.BooleanOptionalAction,
        default=os.geteuid() == 0,
        help="run everything in a private network namespace (default when root): isolated "
        "from other loopback traffic, and with its own TCP settings",
    )
    parser.add_argument(
        "--congestion-control",
        metavar="NAME",
        help="TCP congestion control for every socket of the run (set in the private "
        "namespace; needs --netns); default: the namespace inherits the host's. It matters: "
        "see docs/dataplane.md, Benchmark",
    )
    parser.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
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
    if args.netns and not args.in_netns:
        return _rerun_in_netns(argv if argv is not None else sys.argv[1:])
    if args.congestion_control and not args.in_netns:
        parser.error("--congestion-control needs --netns (and root)")
    if args.in_netns:
        _setup_netns(args.congestion_control)
    wanted = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = set(wanted) - {*METRICS, "idle"}
    if unknown or args.rounds < 1:
        parser.error(f"unknown metrics {sorted(unknown)}" if unknown else "--rounds must be >= 1")
    missing = [tool for tool in ("wrk", "haproxy", "nginx") if shutil.which(tool) is None]
    if missing:
        print(f"missing: {' '.join(missing)}\n{INSTALL_HINT}", file=sys.stderr)
        return 2
    _raise_nofile()
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="hactl-bench-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            backend = _free_port()
            procs.append(_start_nginx(tmp, backend))
            args.backend_pids = _worker_pids(procs[0].pid)
            haproxy_port, hactl_port = _free_port(), _free_port()
            haproxy = _start_haproxy(tmp, haproxy_port, backend)
            procs.append(haproxy)
            hactl, label = _start_hactl(
                hactl_port, backend, not args.no_splice, args.loop, args.pipe_size
            )
            procs.append(hactl)
            print(
                f"loopback, {os.cpu_count()} CPUs; backend nginx; hactl: {label}, "
                f"splice={'off' if args.no_splice else 'auto'}; {_tcp_label(args)}; "
                f"wrk -t1 -c{args.connections} "
                f"(bulk -c{args.bulk_connections}), {args.duration:g}s per run, "
                f"{args.rounds} interleaved round{'s' if args.rounds != 1 else ''}; "
                f"metrics {','.join(wanted)}; "
                f"load average {os.getloadavg()[0]:.1f}"
            )
            targets: dict[str, tuple[int, Proc | None]] = {
                "direct": (backend, None),
                "haproxy": (haproxy_port, haproxy),
                "hactl": (hactl_port, hactl),
            }
            if args.no_direct:
                del targets["direct"]
            # Memory first, in fresh processes: memory freed by throughput runs (and kept by
            # the allocator) must not hide the cost.
            idle = {}
            if "idle" in wanted and args.idle:
                idle = {
                    name: _idle_rss(proc, port, backend, args.idle, args.settle)
                    for name, (port, proc) in targets.items()
                    if proc is not None
                }
            series = _measure(targets, [METRICS[m] for m in wanted if m in METRICS], args)
            cpu_line = f"load average at the end {os.getloadavg()[0]:.1f}"
        finally:
            for proc in reversed(procs):
                proc.stop()
    print(cpu_line)
    checks = _report(series, idle, list(targets))
    print()
    print("\n".join(checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
