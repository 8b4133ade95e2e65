"""Probes in a fresh network namespace, where the defaults differ from the host's.

A new namespace has `net.ipv4.ping_group_range = 1 0`: nobody may open the unprivileged
ICMP datagram socket, so PING_CHECK must fall back to a raw socket (root). The namespace
comes from `unshare -n` around a child interpreter, so nothing outlives the test.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import asyncio, ipaddress, socket, subprocess
    from hactl.checks import ConnectOptions, PingCheck, UdpCheck, run_probe

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    print("range", open("/proc/sys/net/ipv4/ping_group_range").read().split())
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP).close()
        print("dgram allowed")
    except PermissionError:
        print("dgram refused")

    async def main():
        fast = ConnectOptions(connect_timeout=1.0)
        for addr in ("127.0.0.1", "::1"):
            r = await run_probe(PingCheck(connect=fast), ipaddress.ip_address(addr), 0)
            print("ping", addr, r.ok, r.detail)
        # nothing listens in the new namespace: ICMP port unreachable
        r = await run_probe(UdpCheck(connect=fast), ipaddress.ip_address("127.0.0.1"), 9)
        print("udp", r.ok, r.detail)

    asyncio.run(main())
    """
)


def test_ping_falls_back_to_a_raw_socket_in_a_new_namespace() -> None:
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", CHILD],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "range ['1', '0']"
    assert lines[1] == "dgram refused"
    assert lines[2] == "ping 127.0.0.1 True ok"
    assert lines[3] == "ping ::1 True ok"
    assert lines[4].startswith("udp False") and "refused" in lines[4].lower()
