"""`hactl run` refusals, as a process: exit status and one readable line, never a traceback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "hactl", "run", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30, check=False)


def test_configuration_errors_exit_1_with_every_diagnostic(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("virtual_server 127.0.0.1 80 {\n    lvs_sched nope\n    delay_loop -1\n}\n")
    result = _run("-f", str(bad))
    assert result.returncode == 1
    assert f"{bad}:2:" in result.stderr and f"{bad}:3:" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreadable_file_exits_2(tmp_path: Path) -> None:
    result = _run("-f", str(tmp_path / "missing.conf"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr and "Traceback" not in result.stderr


def test_kernel_backend_without_kernel_ipvs_is_refused() -> None:
    from hactl.ipvs.kernel import kernel_ipvs_available

    if asyncio.run(kernel_ipvs_available()):
        pytest.skip("this kernel has IPVS: the refusal cannot be observed here")
    result = _run("-f", "etc/demo-loopback.conf", "--backend", "kernel", "--log-format", "json")
    assert result.returncode == 1
    assert 'hactl run: [Errno 2] open: the generic netlink family "IPVS"' in result.stderr
    assert "Traceback" not in result.stderr
