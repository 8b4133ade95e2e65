"""Operations end to end, as a user runs them: `python -m hactl run --api SOCK -f
etc/demo-loopback.conf` as a process under a fake service manager (NOTIFY_SOCKET), the demo
real servers, and `python -m hactl status / ipvs -Ln / drain --wait / enable` as processes."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.demo_support import REPO, SERVERS, VIP
from tests.integration.demo_support import env as _env
from tests.integration.demo_support import events as _events
from tests.integration.demo_support import get as _get
from tests.integration.demo_support import hactl as _hactl

pytestmark = pytest.mark.timeout(90)


class NotifyListener:
    """The service manager's side of sd_notify(3): a datagram socket collecting messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str | None = None, *, limit: float = 15) -> dict[str, str]:
        deadline = time.monotonic() + limit
        seen = len(self.messages)
        while True:
            for message in self.messages[seen:]:
                if key in message and (value is None or message[key] == value):
                    return message
            seen = len(self.messages)
            assert time.monotonic() < deadline, f"no {key} in {self.messages}"
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            self.messages.append(fields)

    def close(self) -> None:
        self.sock.close()


def test_run_with_api_drain_by_cli_and_service_manager_protocol(
        demo_servers: subprocess.Popen[bytes], tmp_path: Path) -> None:
    del demo_servers
    api = tmp_path / "run" / "api.sock"
    state = tmp_path / "overrides.json"
    notify = NotifyListener(tmp_path / "notify.sock")
    log = tmp_path / "hactl.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hactl", "run", "--api", str(api), "--state-file",
             str(state), "-f", "etc/demo-loopback.conf", "--backend", "embedded"],
            cwd=REPO, env=_env(NOTIFY_SOCKET=str(notify.path)), stdout=subprocess.DEVNULL,
            stderr=out)
    try:
        ready = notify.wait_for("READY", "1")
        assert ready.get("MAINPID") == str(proc.pid)
        assert stat.S_IMODE(os.stat(api).st_mode) == 0o600

        status = _hactl("status", "--api", str(api))
        assert status.returncode == 0, status.stderr
        assert "tcp:127.0.0.100:8080" in status.stdout
        for host, port, _ in SERVERS:
            assert f"{host}:{port}" in status.stdout
        table = _hactl("ipvs", "-Ln", "--api", str(api))
        assert table.returncode == 0, table.stderr
        assert "TCP  127.0.0.100:8080 rr" in table.stdout.splitlines()
        assert table.stdout.count("Masq    1") == 3

        # Drained before any client came: nothing to wait for. (A server that served
        # clients keeps InActConn, TIME_WAIT entries, for up to 120 s as in the kernel;
        # tests/shell/test_daemon_api.py drains under load.)
        drained = _hactl("drain", "--api", str(api), "127.0.0.100:8080", "127.0.0.12:8081",
                         "--wait", "--timeout", "20")
        assert drained.returncode == 0, drained.stdout + drained.stderr
        assert "removed from IPVS" in drained.stdout
        assert {_get(*VIP) for _ in range(6)} == {"web1", "web3"}
        # a timed-out drain is exit status 1 and says what was left
        timed = _hactl("drain", "--api", str(api), "127.0.0.100:8080", "127.0.0.13:8081",
                       "--wait", "--timeout", "1", "--keep")
        assert timed.returncode == 1, timed.stdout + timed.stderr
        assert "timed out" in timed.stdout and "inactive" in timed.stdout
        assert {_get(*VIP) for _ in range(6)} == {"web1"}
        enabled = _hactl("enable", "--api", str(api), "127.0.0.100:8080", "127.0.0.13:8081")
        assert enabled.returncode == 0, enabled.stderr
        table = _hactl("ipvs", "-Ln", "--api", str(api))
        assert "127.0.0.12:8081" not in table.stdout
        assert '"disable"' in state.read_text()

        unknown = _hactl("drain", "--api", str(api), "127.0.0.100:8080", "127.0.0.99:8081")
        assert unknown.returncode == 4, unknown.stderr

        plan = _hactl("reload", "--dry-run", "--api", str(api))
        assert plan.returncode == 0, plan.stderr
        assert "dry run" in plan.stdout
        # SIGHUP: RELOADING=1 with the monotonic time, then READY=1 again; the drain stays
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        proc.send_signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING", "1")
        assert int(reloading["MONOTONIC_USEC"]) >= before
        notify.wait_for("READY", "1")
        assert {_get(*VIP) for _ in range(6)} == {"web1", "web3"}

        enabled = _hactl("enable", "--api", str(api), "127.0.0.100:8080", "127.0.0.12:8081")
        assert enabled.returncode == 0, enabled.stderr
        assert {_get(*VIP) for _ in range(6)} == {"web1", "web2", "web3"}

        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING", "1")
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
    assert not api.exists()
    unreachable = _hactl("status", "--api", str(api))
    assert unreachable.returncode == 3


def test_an_override_survives_a_restart(
        demo_servers: subprocess.Popen[bytes], tmp_path: Path) -> None:
    del demo_servers
    api = tmp_path / "api.sock"
    state = tmp_path / "overrides.json"
    args = [sys.executable, "-m", "hactl", "run", "--api", str(api), "--state-file",
            str(state), "-f", "etc/demo-loopback.conf", "--backend", "embedded",
            "--log-format", "json"]
    for round_ in range(2):
        log = tmp_path / f"hactl{round_}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                                    stderr=out)
        try:
            deadline = time.monotonic() + 15
            while b'"daemon.started"' not in log.read_bytes():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            if round_ == 0:
                done = _hactl("disable", "--api", str(api), "127.0.0.100:8080",
                              "127.0.0.11:8081")
                assert done.returncode == 0, done.stderr
            assert {_get(*VIP) for _ in range(6)} == {"web2", "web3"}
            if round_ == 1:
                # the restarted daemon never installed the disabled server, not even at start
                added = [e for e in _events(log) if e["event"] == "ipvs.dest_added"]
                assert sorted(e["rs"] for e in added) == ["127.0.0.12:8081", "127.0.0.13:8081"]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(5) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
