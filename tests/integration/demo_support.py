"""What the tests that run the loopback demo share: its addresses, and ways to talk to it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
VIP = ("127.0.0.100", 8080)
SERVERS = [("127.0.0.11", 8081, "web1"), ("127.0.0.12", 8081, "web2"), ("127.0.0.13", 8081, "web3")]


def busy(host: str, port: int) -> bool:
    """True when something already listens on host:port (another demo, for instance)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def get(host: str, port: int) -> str:
    """One HTTP/1.0 GET; the body, which the demo servers fill with their name."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1].decode().strip()


def env(**extra: str) -> dict[str, str]:
    """The environment for `python -m hactl ...`: this checkout first, no inherited API."""
    out = dict(os.environ)
    out["PYTHONPATH"] = str(REPO) + os.pathsep + out.get("PYTHONPATH", "")
    out.pop("HACTL_API", None)
    out.update(extra)
    return out


def events(log: Path) -> list[dict[str, Any]]:
    """The JSON log events a daemon started with `--log-format json` wrote so far."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def hactl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hactl", *args], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=timeout, check=False)
