"""Directors and real servers on a `Testbed`: generated configurations and processes.

`DirectorSpec` describes one director of the pair once; `hactl_config()` renders it as a
keepalived-compatible file, which `HactlDirector` runs with `hactl run` (embedded backend).

The pair shares VRRP instance VI_1 (VRID 51, VIP on eth0), one virtual server VIP:80 with
persistence over every real server's HTTP port (HTTP_GET or TCP_CHECK), and
`lvs_sync_daemon` on the segment (eth1 with a sync segment, else eth0) with a syncid.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.testbed.topology import Host, Testbed, ip

__all__ = [
    "REPO",
    "DirectorSpec",
    "HactlDirector",
    "KeepalivedDirector",
    "RealServerProc",
    "start_real_servers",
]

REPO = str(Path(__file__).resolve().parents[2])
# Directors run at a raised CPU priority (as in tests/integration/netns.py): measured
# takeover times then reflect the protocol, not a busy run queue.
PRIORITY = ("nice", "-n", "-10")


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = REPO + os.pathsep + out.get("PYTHONPATH", "")
    out["PYTHONUNBUFFERED"] = "1"
    out["HACTL_DEBUG"] = "1"  # a crash shows its traceback in the log
    return out


@dataclass(frozen=True)
class DirectorSpec:
    priority: int
    advert_int: float = 1.0
    nopreempt: bool = False
    persistence_timeout: int = 300
    check: str = "HTTP_GET"  # or TCP_CHECK
    delay_loop: float = 0.5
    connect_timeout: float = 0.5
    retry: int = 1
    delay_before_retry: float = 0.2
    rise: int = 1
    sync_id: int = 42
    scheduler: str = "rr"
    auth_pass: str | None = None  # VRRPv2 `auth_type PASS` with this password
    servers: int | None = None  # configure only the first N real servers (None: all)
    weights: tuple[int, ...] = ()  # per real server, in order (missing: 1)
    extra_config: str = ""  # appended to the rendered file (more virtual servers)
    sync_auth_key: str | None = None  # hactl's HMAC trailer on sync datagrams


def _vrrp_instance(bed: Testbed, spec: DirectorSpec, *, auth: bool) -> str:
    """The `vrrp_instance VI_1` block both directors' configurations share; `auth` adds
    `spec.auth_pass` (when set) as VRRPv2 `auth_type PASS`."""
    return (
        "vrrp_instance VI_1 {\n"
        "    state BACKUP\n"
        "    interface eth0\n"
        "    virtual_router_id 51\n"
        f"    priority {spec.priority}\n"
        f"    advert_int {spec.advert_int:g}\n"
        + ("    nopreempt\n" if spec.nopreempt else "")
        + (f"    authentication {{\n        auth_type PASS\n        auth_pass {spec.auth_pass}\n"
           "    }\n" if auth and spec.auth_pass else "")
        + "    virtual_ipaddress {\n"
        f"        {bed.vip}/24\n"
        "    }\n"
        "}\n"
    )


def hactl_config(bed: Testbed, host: Host, spec: DirectorSpec) -> str:
    sync_dev = "eth1" if host.sync_address is not None else "eth0"
    checks = []
    rise = f"            rise {spec.rise}\n" if spec.rise != 1 else ""
    servers = bed.real_servers if spec.servers is None else bed.real_servers[:spec.servers]
    for i, rs in enumerate(servers):
        weight = spec.weights[i] if i < len(spec.weights) else 1
        if spec.check == "TCP_CHECK":
            probe = (f"        TCP_CHECK {{\n            connect_timeout {spec.connect_timeout:g}\n"
                     f"            retry {spec.retry}\n{rise}"
                     f"            delay_before_retry {spec.delay_before_retry:g}\n"
                     "        }\n")
        else:
            probe = ("        HTTP_GET {\n            url {\n                path /\n"
                     "                status_code 200\n            }\n"
                     f"            connect_timeout {spec.connect_timeout:g}\n"
                     f"            retry {spec.retry}\n{rise}"
                     f"            delay_before_retry {spec.delay_before_retry:g}\n"
                     "        }\n")
        checks.append(f"    real_server {rs.address} 80 {{\n        weight {weight}\n{probe}"
                      "    }\n")
    return (
        "global_defs {\n"
        f"    router_id {host.name}\n"
        f"    lvs_sync_daemon {sync_dev} VI_1 id {spec.sync_id}\n"
        + (f"    sync_auth_key {spec.sync_auth_key}\n" if spec.sync_auth_key else "")
        + "}\n"
        + _vrrp_instance(bed, spec, auth=True)
        + f"virtual_server {bed.vip} 80 {{\n"
        f"    delay_loop {spec.delay_loop:g}\n"
        f"    lb_algo {spec.scheduler}\n"
        "    lb_kind NAT\n"
        f"    persistence_timeout {spec.persistence_timeout}\n"
        "    protocol TCP\n"
        + "".join(checks)
        + "}\n"
        + spec.extra_config
    )


class HactlDirector:
    """`python -m hactl run` (embedded backend, JSON logs) in a director namespace."""

    def __init__(self, bed: Testbed, host: Host, spec: DirectorSpec) -> None:
        self.bed, self.host, self.spec = bed, host, spec
        self.conf = bed.path(f"{host.name}.conf")
        self.log_path = bed.path(f"{host.name}.log")
        self.api_socket = bed.path(f"{host.name}.api.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    def start(self, spec: DirectorSpec | None = None) -> None:
        if spec is not None:
            self.spec = spec
        self.write_config()
        self._log_start = self._size()
        self.proc = self.bed.spawn(
            self.host,
            [*PRIORITY, sys.executable, "-m", "hactl", "run", "-f", self.conf,
             "--log-format", "json", "--backend", "embedded", "--log-level", "info",
             "--api", self.api_socket,
             "--state-file", self.bed.path(f"{self.host.name}.state.json")],
            log=f"{self.host.name}.log", env=env(), cwd=REPO, stdout=subprocess.DEVNULL)

    def write_config(self, spec: DirectorSpec | None = None) -> None:
        """Render the configuration file (of `spec`, which becomes this director's)."""
        if spec is not None:
            self.spec = spec
        Path(self.conf).write_text(hactl_config(self.bed, self.host, self.spec))

    def _size(self) -> int:
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def events(self, *, this_run: bool = True) -> list[dict[str, Any]]:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start if this_run else 0)
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def count(self, event: str, **fields: object) -> int:
        """How many `event` lines (with these field values) this run logged."""
        return sum(1 for e in self.events() if e.get("event") == event
                   and all(e.get(k) == v for k, v in fields.items()))

    def wait_event(self, event: str, limit: float, *, at_least: int = 1,
                   **fields: object) -> float | None:
        """Seconds until this run logged `event` `at_least` times; None when `limit` passed."""
        start = time.monotonic()
        while self.count(event, **fields) < at_least:
            if time.monotonic() - start > limit:
                return None
            time.sleep(0.02)
        return time.monotonic() - start

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def wait_started(self, limit: float = 20.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if any(e.get("event") == "daemon.started" for e in self.events()):
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"hactl on {self.host.name} exited: {self.log_text()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"hactl on {self.host.name} did not start: {self.log_text()[-3000:]}")

    def holds_vip(self) -> bool:
        out = ip("-n", self.host.netns, "-o", "addr", "show", "dev", "eth0", check=False).stdout
        return f" {self.bed.vip}/" in out

    def state(self) -> str | None:
        """The last VRRP state this run logged (MASTER, BACKUP, FAULT), None before any."""
        states = [e["new"] for e in self.events() if e.get("event") == "vrrp.state_changed"]
        return states[-1] if states else None

    def ipvs(self, *args: str) -> str:
        """`hactl ipvs ARGS` against this daemon's control API (a unix socket)."""
        out = subprocess.run([sys.executable, "-m", "hactl", "ipvs", *args, "--api",
                              self.api_socket],
                             capture_output=True, text=True, env=env(), cwd=REPO, timeout=20,
                             check=False)
        if out.returncode != 0:
            raise RuntimeError(f"hactl ipvs {' '.join(args)}: {out.returncode} {out.stderr}")
        return out.stdout

    def api(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        """One request to this daemon's control API (its unix socket): (status, JSON)."""
        payload = b"" if body is None else json.dumps(body).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(20)
            s.connect(self.api_socket)
            s.sendall(f"{method} {path} HTTP/1.0\r\nHost: hactl\r\nContent-Type: "
                      f"application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                      + payload)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, raw = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), json.loads(raw) if raw.strip() else None

    def api_get(self, path: str) -> Any:
        """GET `path` from the control API; the decoded JSON (raises unless 200)."""
        status, doc = self.api("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {doc}")
        return doc

    def rss_kib(self) -> int:
        """The daemon's resident set size (VmRSS), in KiB."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def templates(self) -> dict[str, str]:
        """client address -> real server address of the persistence templates in this
        daemon's table (the control API's connection list, which `hactl ipvs -Lnc` prints;
        a template is the entry with client port 0)."""
        out: dict[str, str] = {}
        for conn in self.api_get("/api/v1/ipvs/connections")["connections"]:
            client, _, port = conn["client"].rpartition(":")
            if port == "0":
                out[client] = conn["destination"].rpartition(":")[0]
        return out

    def kill9(self) -> None:
        """SIGKILL the daemon (nice execs, so the Popen pid is the daemon's)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


class RealServerProc:
    """`python -m hactl.testing.realserver` in a real-server namespace, mode via its file."""

    def __init__(self, bed: Testbed, host: Host) -> None:
        self.bed, self.host = bed, host
        self.control = Path(bed.path(f"{host.name}.mode"))
        self.control.write_text("ok\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = self.bed.spawn(
            self.host,
            [sys.executable, "-m", "hactl.testing.realserver", "--name", self.host.name,
             "--listen", str(self.host.address), "--control", str(self.control)],
            log=f"{self.host.name}.log", env=env(), cwd=REPO, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if b"ready" not in line:
            raise RuntimeError(f"real server {self.host.name} did not start: {line!r}")

    def set_mode(self, mode: str) -> None:
        self.control.write_text(mode + "\n")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)


def start_real_servers(bed: Testbed) -> list[RealServerProc]:
    servers = [RealServerProc(bed, host) for host in bed.real_servers]
    for server in servers:
        server.start()
    return servers


def keepalived_config(bed: Testbed, host: Host, spec: DirectorSpec) -> str:
    """The VRRP half of `hactl_config` for keepalived (this kernel has no IPVS, so the
    virtual server stays out: the directors answer for the VIP themselves)."""
    return (
        "global_defs {\n"
        f"    router_id {host.name}\n"
        "}\n"
        + _vrrp_instance(bed, spec, auth=False)
    )


class KeepalivedDirector:
    """keepalived 2.2.7 (VRRP only, `-P`) in a director namespace, with a small HTTP server
    on the director itself answering for the VIP (`X-Real-Server: d1`): the comparison
    runs the same client load and faults against it as against `HactlDirector`."""

    def __init__(self, bed: Testbed, host: Host, spec: DirectorSpec) -> None:
        self.bed, self.host, self.spec = bed, host, spec
        self.conf = bed.path(f"{host.name}.keepalived.conf")
        self.log_path = bed.path(f"{host.name}.keepalived.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.web: subprocess.Popen[bytes] | None = None

    def _pid(self, name: str) -> str:
        return self.bed.path(f"{self.host.name}.{name}")

    def start(self) -> None:
        Path(self.conf).write_text(keepalived_config(self.bed, self.host, self.spec))
        if self.web is None:
            self.web = self.bed.spawn(
                self.host,
                [sys.executable, "-m", "hactl.testing.realserver", "--name", self.host.name,
                 "--listen", "0.0.0.0", "--control", self.bed.path(f"{self.host.name}.mode")],
                log=f"{self.host.name}.web.log", env=env(), cwd=REPO, stdout=subprocess.PIPE)
            assert self.web.stdout is not None
            if b"ready" not in self.web.stdout.readline():
                raise RuntimeError(f"web server on {self.host.name} did not start")
        for name in ("keepalived.pid", "vrrp.pid", "checker.pid", "bfd.pid"):
            Path(self._pid(name)).unlink(missing_ok=True)
        self.proc = self.bed.spawn(
            self.host,
            [*PRIORITY, "keepalived", "-n", "-l", "-D", "-P", "-f", self.conf,
             "-p", self._pid("keepalived.pid"), "-r", self._pid("vrrp.pid"),
             "-c", self._pid("checker.pid"), "-b", self._pid("bfd.pid")],
            log=f"{self.host.name}.keepalived.log", env=dict(os.environ, TMPDIR=self.bed.workdir))

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def state(self) -> str | None:
        found = re.findall(r"Entering (MASTER|BACKUP|FAULT) STATE", self.log_text())
        return found[-1] if found else None

    def holds_vip(self) -> bool:
        out = ip("-n", self.host.netns, "-o", "addr", "show", "dev", "eth0", check=False).stdout
        return f" {self.bed.vip}/" in out

    def kill9(self) -> None:
        """keepalived's crash (spec/vrrp.md §8.1): stop the parent, kill the VRRP child,
        kill the parent; the VIP stays on the dead director, as with kill -9 of hactl."""
        assert self.proc is not None
        child = int(Path(self._pid("vrrp.pid")).read_text().strip())
        os.kill(self.proc.pid, signal.SIGSTOP)
        os.kill(child, signal.SIGKILL)
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)
        # The director's service dies with it (as hactl's data plane dies with hactl): the
        # VIP left on its interface then answers with resets, not with pages.
        if self.web is not None:
            self.web.kill()
            self.web.wait(5)
