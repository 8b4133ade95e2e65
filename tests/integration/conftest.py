"""Fixtures shared by the integration tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.integration.demo_support import REPO, SERVERS, VIP, busy, env


@pytest.fixture
def demo_servers() -> Iterator[subprocess.Popen[bytes]]:
    """The loopback demo's three real servers (web1..web3), as one process."""
    taken = [f"{h}:{p}" for h, p in [*[(h, p) for h, p, _ in SERVERS], VIP] if busy(h, p)]
    if taken:
        pytest.skip(f"demo addresses in use (another demo running?): {', '.join(taken)}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hactl.testing.demo_servers",
         *[f"{h}:{p}={n}" for h, p, n in SERVERS]],
        cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        for _ in SERVERS:
            assert b"listening" in proc.stdout.readline()
        yield proc
    finally:
        proc.terminate()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
