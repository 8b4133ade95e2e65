"""Accept mode in network namespaces: `no_accept` on a master that is not the address owner
drops traffic to its VIPs (nftables), `accept` (keepalived's default) lets it through, and
the rules go with the mastership and with the process.

Segment a (priority 150, no_accept), b (priority 100, accept) and a client. Checked for
hactl, and for keepalived 2.2.7 in a's place as the reference (same client-visible
behaviour):

1. a is master: the client's ICMP echo and TCP connect to the VIP get no answer (a
   listener bound in a's namespace stays silent); a's drop set holds the VIP;
2. a crashes (SIGKILL): its rules stay with its VIP (as keepalived's), b takes over and the
   client reaches the VIP on b (accept);
3. a restarts: its start deletes the leftover tables, it preempts back and blocks again;
4. a stops gracefully: b answers again and a's namespace has no firewall table left.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.netns import (
    HactlPeer,
    KeepalivedPeer,
    PeerSpec,
    Segment,
    closed_after,
    ns_exec,
    ping,
    run_script,
    segment,
    wait_until,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

VIP = "10.200.0.100"
PORT = 8080
STARTUP = 3.0


class NoAcceptHactl(HactlPeer):
    def config(self) -> dict[str, object]:
        doc = super().config()
        for inst in doc["instances"]:  # type: ignore[attr-defined]
            inst["accept"] = False
        return doc


class NoAcceptKeepalived(KeepalivedPeer):
    def config(self) -> str:
        text = super().config()
        return text.replace("    virtual_ipaddress {", "    no_accept\n    virtual_ipaddress {", 1)


@pytest.fixture
def seg() -> Iterator[Segment]:
    with segment(["a", "b", "client"]) as s:
        yield s


_LISTENER = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16); print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[2])
s.settimeout(0.2)
while time.monotonic() < deadline:
    try:
        c, _ = s.accept(); c.sendall(b"hello"); c.close()
    except OSError:
        pass
"""

_CONNECT = r"""
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    sys.exit(0 if c.recv(5) == b"hello" else 2)
except OSError:
    sys.exit(1)
"""


@contextlib.contextmanager
def _listener(netns: str) -> Iterator[None]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", _LISTENER, str(PORT), "90"],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        yield
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _tcp(netns: str, *, within: float = 1.0) -> bool:
    cmd = ["ip", "netns", "exec", netns, sys.executable, "-c", _CONNECT, VIP, str(PORT)]
    proc = subprocess.run([*cmd, str(within)], capture_output=True, timeout=within + 10)
    return proc.returncode == 0


def _ruleset(netns: str) -> str:
    return ns_exec(netns, "nft", "list", "ruleset").stdout


def _blocks_vip(netns: str) -> bool:
    text = _ruleset(netns)
    return "@vips drop" in text and VIP in text


@pytest.mark.parametrize(
    "kind_a", ["hactl", pytest.param("keepalived", marks=pytest.mark.keepalived)]
)
def test_no_accept_master_drops_traffic_to_the_vip(
    seg: Segment, tmp_path: Path, kind_a: str
) -> None:
    if subprocess.run(["which", "nft"], capture_output=True).returncode != 0:
        pytest.skip("nft (Debian package nftables) is not installed")
    cls = NoAcceptHactl if kind_a == "hactl" else NoAcceptKeepalived
    a = cls(seg["a"], PeerSpec(priority=150), str(tmp_path / "a"))
    b = HactlPeer(seg["b"], PeerSpec(priority=100), str(tmp_path / "b"))
    client = seg["client"].netns
    with closed_after(a, b), _listener(seg["a"].netns), _listener(seg["b"].netns):
        b.start()
        a.start()
        b.wait_ready()
        a.wait_ready()
        # 1. a is master and not the owner: nothing to the VIP is answered
        assert wait_until(lambda: a.holds(VIP) and not b.holds(VIP), limit=STARTUP + 8)
        assert wait_until(lambda: _blocks_vip(seg["a"].netns), limit=2) is not None
        assert not ping(client, VIP, within=1.0), "a answered ICMP on its VIP with no_accept"
        assert not _tcp(client), "a accepted a TCP connection on its VIP with no_accept"
        assert "hactl" not in _ruleset(seg["b"].netns)  # b accepts: no rules at all

        # 2. a crashes: the rules stay with its leftover VIP; b (accept) answers
        a.crash()
        assert wait_until(lambda: b.holds(VIP), limit=6) is not None
        assert _blocks_vip(seg["a"].netns)
        assert ping(client, VIP), "b (accept) does not answer on the VIP"
        assert _tcp(client, within=3.0)

        # 3. a restarts, cleans up, preempts back and blocks again
        a.start()
        a.wait_ready()
        assert wait_until(lambda: a.holds(VIP) and not b.holds(VIP), limit=STARTUP + 8)
        assert wait_until(lambda: _blocks_vip(seg["a"].netns), limit=2) is not None
        time.sleep(0.5)  # the client's ARP entry follows a's gratuitous ARPs
        assert not ping(client, VIP, within=1.0)

        # 4. graceful stop: b answers, and a's namespace keeps no table
        a.terminate()
        assert wait_until(lambda: b.holds(VIP), limit=5) is not None
        a.wait()
        assert ping(client, VIP)
        assert _tcp(client, within=3.0)
        assert "@vips" not in _ruleset(seg["a"].netns), _ruleset(seg["a"].netns)
        b.stop()


def test_nftables_adapter_blocks_and_cleans(seg: Segment) -> None:
    """The adapter alone, run in a namespace through a tiny script (the `nft` command acts
    on the namespace of its process)."""
    if subprocess.run(["which", "nft"], capture_output=True).returncode != 0:
        pytest.skip("nft (Debian package nftables) is not installed")
    script = r"""
import asyncio, subprocess
from ipaddress import ip_address
from hactl.vrrp.firewall import NftablesFirewall
def rules():
    return subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
async def main():
    fw = NftablesFirewall()
    await fw.reset()
    assert "hactl" not in rules()
    a, b, c = ip_address("10.200.0.100"), ip_address("10.200.0.101"), ip_address("fd00::100")
    await fw.block((a, b, c))
    await fw.block((a,))  # idempotent
    text = rules()
    assert "10.200.0.100" in text and "10.200.0.101" in text and "fd00::100" in text, text
    await fw.add_vmac("eth0", "lo")  # any two links: the map only names interfaces
    await fw.unblock((b, b, ip_address("10.200.0.222")))  # twice, and never blocked
    text = rules()
    assert "10.200.0.101" not in text and "10.200.0.100" in text, text
    await fw.remove_vmac("eth0")
    await fw.remove_vmac("eth0")
    fresh = NftablesFirewall()
    await fresh.reset()  # a restart after a crash: everything goes
    assert "hactl" not in rules(), rules()
    await fw.close()
    print("ok")
asyncio.run(main())
"""
    out = run_script(seg["a"].netns, script)
    assert out.stdout.strip() == "ok", out.stderr
