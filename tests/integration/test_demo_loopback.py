"""The loopback demo end to end: `python -m hactl run -f etc/demo-loopback.conf` as a
process, with the demo real servers, a client through the VIP, and a clean SIGTERM stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.demo_support import REPO, VIP
from tests.integration.demo_support import env as _env
from tests.integration.demo_support import get as _get

pytestmark = pytest.mark.timeout(60)


def test_demo_serves_through_the_vip_and_stops_cleanly_on_sigterm(
        demo_servers: subprocess.Popen[bytes], tmp_path: Path) -> None:
    del demo_servers
    log = tmp_path / "hactl.log"
    pid_file = tmp_path / "hactl.pid"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hactl", "run", "-f", "etc/demo-loopback.conf",
             "--log-format", "json", "--backend", "embedded", "--pid-file", str(pid_file),
             "--api", str(tmp_path / "api.sock"), "--state-file", str(tmp_path / "state.json")],
            cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=out)
    try:
        deadline = time.monotonic() + 15
        while b'"daemon.started"' not in log.read_bytes():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert pid_file.read_text().strip() == str(proc.pid)
        names = [_get(*VIP) for _ in range(6)]
        assert sorted(names) == ["web1", "web1", "web2", "web2", "web3", "web3"]
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    names_logged = [e["event"] for e in events]
    assert names_logged[-1] == "daemon.stopped"
    assert "ipvs.service_removed" in names_logged
    assert not pid_file.exists()
    with pytest.raises(OSError):
        _get(*VIP)


def test_sighup_reload_applies_the_difference_and_rejects_errors(
        demo_servers: subprocess.Popen[bytes], tmp_path: Path) -> None:
    """SIGHUP with web3 removed: web3 leaves, the others stay; SIGHUP with a broken file:
    rejected with its diagnostics, the running table untouched."""
    del demo_servers
    conf = tmp_path / "demo.conf"
    text = (REPO / "etc" / "demo-loopback.conf").read_text()
    conf.write_text(text)
    log = tmp_path / "hactl.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hactl", "run", "-f", str(conf), "--log-format", "json",
             "--backend", "embedded", "--api", "none"],
            cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=out)

    def wait_for(marker: bytes, count: int = 1) -> None:
        deadline = time.monotonic() + 15
        while log.read_bytes().count(marker) < count:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)

    try:
        wait_for(b'"daemon.started"')
        assert {_get(*VIP) for _ in range(6)} == {"web1", "web2", "web3"}
        head, sep, tail = text.rpartition("    real_server 127.0.0.13 8081 {")
        assert sep
        conf.write_text(head + tail.split("    }\n", 2)[2])
        proc.send_signal(signal.SIGHUP)
        wait_for(b'"config.reloaded"')
        assert {_get(*VIP) for _ in range(6)} == {"web1", "web2"}
        conf.write_text("virtual_server 127.0.0.100 8080 {\n    lvs_sched nope\n}\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(b'"config.reload_rejected"')
        assert {_get(*VIP) for _ in range(6)} == {"web1", "web2"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    removed = [e for e in events if e["event"] == "ipvs.dest_removed"]
    assert removed[0]["rs"] == "127.0.0.13:8081"
    assert any(e["event"] == "config.error" and "nope" in e["diagnostic"] for e in events)
