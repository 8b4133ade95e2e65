"""`hactl run --backend kernel` on a real kernel: the daemon process programs the kernel's table
from a configuration, its health checks drive it with real NAT traffic, and keepalived's global
IPVS settings act on it.

Topology, built once for the module inside the VM:

    ns hc (client) 10.40.0.2 --veth-- 10.40.0.1  ns hd (director: hactl, VIP 10.42.0.1 on lo)
                                      10.41.0.1 --veth-- 10.41.0.2, 10.41.0.3  ns hr (servers)
                                      10.43.0.1 --veth-- 10.43.0.2  ns hs (VRRP / sync segment)

The real servers are TCP listeners opened by this process in ns hr (one thread each, each
answering with its name); "stopping" one closes its listening socket, so connections to it
are refused. Clients are sockets this process opens in ns hc, through the kernel's NAT. The
daemon is a child process in ns hd; its JSON log lines are read to follow what it does.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pyroute2 import netns as pynetns

from tests.kernel.conftest import IN_VM, REPO, sh, sh_input

pytestmark = [pytest.mark.kernel_ipvs]

VIP = "10.42.0.1"
SERVERS = {"rs1": "10.41.0.2", "rs2": "10.41.0.3"}
RS_PORT = 8080
STALE = "10.41.0.9"  # a server a previous run left in the configured service
T = TypeVar("T")


def hd(*cmd: str) -> str:
    return sh("ip", "netns", "exec", "hd", *cmd)


def eventually(read: Callable[[], T], ok: Callable[[T], bool], *, within: float) -> T:
    """Read until `ok` holds; fails with the last reading after `within` seconds."""
    deadline = time.monotonic() + within
    value = read()
    while not ok(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s; last reading:\n{value}")
        time.sleep(0.3)
        value = read()
    return value


class TcpServer:
    """A real server in ns hr: accepts, sends its name, closes."""

    def __init__(self, name: str, addr: str) -> None:
        self.name, self.addr = name, addr
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        pynetns.pushns("hr")
        try:
            sock = socket.socket()
        finally:
            pynetns.popns()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.addr, RS_PORT))
        sock.listen(64)
        sock.settimeout(0.2)
        self._sock, self._stop = sock, threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(sock, self._stop), daemon=True)
        self._thread.start()

    def _serve(self, sock: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(self.name.encode() + b"\n")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
        self._sock = self._thread = None


def fetch(port: int = 80) -> str:
    """One client connection from ns hc to VIP:port; the answering server's name, or the
    error."""
    pynetns.pushns("hc")
    try:
        sock = socket.socket()
    finally:
        pynetns.popns()
    sock.settimeout(5)
    try:
        sock.connect((VIP, port))
        return sock.recv(100).decode().strip() or "closed"
    except OSError as exc:
        return f"error: {exc}"
    finally:
        sock.close()


_T0 = [time.monotonic()]


def phase(name: str) -> None:
    """Print how long the phase before took (shown with -rP): the VM is slow, budgets matter."""
    now = time.monotonic()
    print(f"{now - _T0[0]:6.1f}s  {name}")
    _T0[0] = now


def answers(n: int = 6) -> list[str]:
    return [fetch() for _ in range(n)]


@pytest.fixture(scope="module")
def topology() -> Iterator[dict[str, TcpServer]]:
    if not IN_VM:
        pytest.skip("runs inside the kernel VM only")
    root = """link add hc1 type veth peer name hc0 netns hc
link add hr1 type veth peer name hr0 netns hr
link add hds type veth peer name hs0 netns hs
link set hc1 netns hd
link set hr1 netns hd
link set hds netns hd
"""
    spaces = {
        "hd": (
            "link set lo up\nlink set hc1 up\nlink set hr1 up\nlink set hds up\n"
            "addr add 10.40.0.1/24 dev hc1\naddr add 10.41.0.1/24 dev hr1\n"
            f"addr add 10.43.0.1/24 dev hds\naddr add {VIP}/32 dev lo\n"
        ),
        "hc": "link set lo up\nlink set hc0 up\naddr add 10.40.0.2/24 dev hc0\n"
        "route add default via 10.40.0.1\n",
        "hr": "link set lo up\nlink set hr0 up\n"
        + "".join(f"addr add {a}/24 dev hr0\n" for a in SERVERS.values())
        + "route add default via 10.41.0.1\n",
        "hs": "link set lo up\nlink set hs0 up\naddr add 10.43.0.2/24 dev hs0\n",
    }
    servers = {name: TcpServer(name, addr) for name, addr in SERVERS.items()}
    subprocess.run(["modprobe", "ip_vs"], capture_output=True, check=False)
    try:
        for name in spaces:
            sh("ip", "netns", "add", name)
        sh_input(root, "ip", "-batch", "-")
        for name, batch in spaces.items():
            sh_input(batch, "ip", "-n", name, "-batch", "-")
        hd("sysctl", "-qw", "net.ipv4.ip_forward=1")
        for server in servers.values():
            server.start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()
        for name in spaces:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


class Daemon:
    """`hactl run --backend kernel` in ns hd, its JSON log lines collected as they come."""

    def __init__(self, workdir: Path, config: str) -> None:
        self.workdir = workdir
        self.conf = workdir / "hactl.conf"
        self.conf.write_text(config)
        self.api = workdir / "api.sock"
        self.logs: list[dict[str, Any]] = []
        self.raw: list[str] = []
        args = ["run", "-f", str(self.conf), "--backend", "kernel", "--log-format", "json",
                "--api", str(self.api), "--state-file", str(workdir / "state.json")]  # fmt: skip
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", "hd", sys.executable, "-m", "hactl", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.raw.append(line)
            with contextlib.suppress(ValueError):
                self.logs.append(json.loads(line))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in list(self.logs) if e.get("event") == name]

    def wait_event(self, name: str, *, count: int = 1, within: float = 90) -> dict[str, Any]:
        def read() -> list[dict[str, Any]]:
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"hactl exited ({self.proc.returncode}):\n{self.output()}")
            return self.events(name)

        try:
            found = eventually(read, lambda found: len(found) >= count, within=within)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nhactl's output:\n{self.output()}") from None
        return found[count - 1]

    def output(self) -> str:
        return "".join(self.raw[-60:])

    def stop(self, *, within: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return rc


@contextlib.contextmanager
def daemon(config: str) -> Iterator[Daemon]:
    # /run is a tmpfs in the VM (/tmp an overlay): the API's unix socket lives there.
    with tempfile.TemporaryDirectory(prefix="hactl-kd-", dir="/run") as tmp:
        run = Daemon(Path(tmp), config)
        try:
            run.wait_event("daemon.started", within=180)  # a loaded host: a minute or more
            yield run
        finally:
            run.stop()


def hactl_ipvs(run: Daemon, *args: str) -> str:
    """`hactl ipvs ARGS` against the daemon's API (in this process: a Python start is slow)."""
    from hactl.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["ipvs", *args, "--api", str(run.api)])
    assert rc == 0, f"{out.getvalue()}\n{sorted(os.listdir(run.workdir))}\n{run.output()}"
    return out.getvalue()


def real_servers() -> dict[str, int]:
    """The kernel's destinations of VIP:80 (`ipvsadm -Ln`): address -> weight."""
    out: dict[str, int] = {}
    for line in hd("ipvsadm", "-Ln", "-t", f"{VIP}:80").splitlines():
        words = line.split()
        if words[:1] == ["->"] and words[1].endswith(f":{RS_PORT}"):
            out[words[1].rsplit(":", 1)[0]] = int(words[3])
    return out


def config(
    *,
    inhibit: bool = False,
    scheduler: str = "rr",
    udp_timeout: int = 50,
    flush_on_stop: bool = False,
) -> str:
    checks = "".join(
        f"""
    real_server {addr} {RS_PORT} {{
        weight 1
        {"inhibit_on_failure" if inhibit and name == "rs2" else ""}
        TCP_CHECK {{
            connect_timeout 2
            retry 0
        }}
    }}"""
        for name, addr in SERVERS.items()
    )
    return f"""
global_defs {{
    {"lvs_flush_on_stop" if flush_on_stop else ""}
    lvs_timeouts tcp 7200 udp {udp_timeout}
    lvs_sync_daemon hds VI_D id 17
    ipvs_sysctl {{
        expire_nodest_conn 1
        sync_threshold 4 60
    }}
}}
vrrp_instance VI_D {{
    state BACKUP
    interface hds
    virtual_router_id 77
    priority 100
    advert_int 1
    virtual_ipaddress {{
        10.43.0.100/32
    }}
}}
virtual_server {VIP} 80 {{
    protocol TCP
    lvs_sched {scheduler}
    lvs_method NAT
    delay_loop 1
{checks}
}}
"""


# Health is decided within delay_loop + connect_timeout (3 s); under emulation on a busy host
# a process is slow to be scheduled, so the test allows much more.
HEALTH_BOUND = 45


def test_hactl_run_drives_the_kernel(topology: dict[str, TcpServer]) -> None:
    """Start (adopting what a previous run left, beside a foreign service), health checks
    with clients through the kernel's NAT, reload, the kernel's sync daemon on VRRP
    transitions, and a stop with `lvs_flush_on_stop` that empties the whole table.

    One daemon run for all of it: each Python start costs tens of seconds under emulation.
    `lvs_flush` at start and the default stop (only hactl's services) are wired by the same
    code, tested with a fake of the port (tests/shell/test_kernel_daemon.py); the kernel's
    flush itself is tested in test_kernel_backend.py."""
    # What a previous run and an operator left: the configured service with another
    # scheduler and a server no longer configured; a foreign service; a tunable set by hand.
    hd("ipvsadm", "-C")
    hd("ipvsadm", "-A", "-t", f"{VIP}:80", "-s", "wlc")
    hd("ipvsadm", "-a", "-t", f"{VIP}:80", "-r", f"{STALE}:{RS_PORT}", "-m")
    hd("ipvsadm", "-A", "-t", f"{VIP}:81", "-s", "rr")
    hd("sysctl", "-qw", "net.ipv4.vs.amemthresh=2048")
    phase("before start")
    with daemon(config()) as run:
        phase("daemon started")
        # The table: adopted and reconciled, foreign service untouched.
        saved = hd("ipvsadm", "-Sn").splitlines()
        assert sorted(saved) == sorted(
            [
                f"-A -t {VIP}:80 -s rr",
                f"-a -t {VIP}:80 -r 10.41.0.2:{RS_PORT} -m -w 1",
                f"-a -t {VIP}:80 -r 10.41.0.3:{RS_PORT} -m -w 1",
                f"-A -t {VIP}:81 -s rr",
            ]
        ), saved
        # Tunables: the named ones written, the others as the system had them; timeouts.
        vs = "/proc/sys/net/ipv4/vs/"
        assert hd("cat", vs + "expire_nodest_conn").split() == ["1"]
        assert hd("cat", vs + "sync_threshold").split() == ["4", "60"]
        assert hd("cat", vs + "amemthresh").split() == ["2048"]
        timeouts = hd("ipvsadm", "-l", "--timeout").strip()
        assert timeouts == "Timeout (tcp tcpfin udp): 7200 120 50"
        eventually(lambda: hactl_ipvs(run, "--timeout").strip(), timeouts.__eq__, within=20)
        # hactl's rendering of its own service equals ipvsadm's.
        service = ("-Ln", "-t", f"{VIP}:80")
        eventually(
            lambda: (hactl_ipvs(run, *service), hd("ipvsadm", *service)),
            lambda pair: pair[0] == pair[1],
            within=20,
        )
        assert sorted(set(answers())) == ["rs1", "rs2"]
        phase("table, tunables, ipvs -Ln, clients")

        # VRRP: no peer answers, the instance becomes MASTER; the kernel's sync daemon
        # was a backup from the start and is now the master.
        run.wait_event("vrrp.state_changed", count=2)
        daemons = eventually(
            lambda: hd("ipvsadm", "-L", "--daemon"), lambda out: "master" in out, within=30
        )
        assert "master sync daemon (mcast=hds, syncid=17" in daemons
        assert "backup" not in daemons
        started = [e["state"] for e in run.events("sync.kernel_daemon_started")]
        assert started == ["backup", "master"]
        phase("vrrp master, sync daemon")

        # rs2 stops: removed from the kernel table; clients reach rs1 only.
        topology["rs2"].stop()
        eventually(real_servers, lambda rs: set(rs) == {"10.41.0.2"}, within=HEALTH_BOUND)
        assert set(answers()) == {"rs1"}
        phase("rs2 removed")
        # rs2 comes back: re-added.
        topology["rs2"].start()
        eventually(real_servers, lambda rs: len(rs) == 2, within=HEALTH_BOUND)
        assert sorted(set(answers())) == ["rs1", "rs2"]
        phase("rs2 re-added")

        # Reload: inhibit_on_failure for rs2, another scheduler, another udp timeout, and
        # lvs_flush_on_stop (ALL).
        run.conf.write_text(
            config(inhibit=True, scheduler="wrr", udp_timeout=60, flush_on_stop=True)
        )
        run.proc.send_signal(signal.SIGHUP)
        run.wait_event("config.reloaded")
        assert hd("ipvsadm", "-Sn").splitlines()[0] == f"-A -t {VIP}:80 -s wrr"
        assert hd("ipvsadm", "-l", "--timeout").split()[-1] == "60"
        phase("reloaded")
        # rs2 stops again: now quiesced (weight 0), still listed; clients reach rs1 only.
        topology["rs2"].stop()
        eventually(
            real_servers,
            lambda rs: rs == {"10.41.0.2": 1, "10.41.0.3": 0},
            within=HEALTH_BOUND,
        )
        assert set(answers()) == {"rs1"}
        phase("rs2 quiesced")
        topology["rs2"].start()
        eventually(real_servers, lambda rs: rs.get("10.41.0.3") == 1, within=HEALTH_BOUND)
        hd("ipvsadm", "-A", "-t", f"{VIP}:82", "-s", "rr")  # someone adds one meanwhile
        phase("rs2 back")
        rc = run.stop()
        assert rc == 0, run.output()
        phase("stopped")
    # Stopped with lvs_flush_on_stop: the whole table is empty (foreign services included),
    # and the kernel's sync daemon is gone.
    assert hd("ipvsadm", "-Sn") == ""
    assert "sync daemon" not in hd("ipvsadm", "-L", "--daemon")
    assert [e["reason"] for e in run.events("ipvs.flushed")] == ["lvs_flush_on_stop"]
