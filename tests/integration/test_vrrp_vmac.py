"""`use_vmac` in network namespaces: the virtual router MAC on the wire.

Segment a (priority 150), b (priority 100) and a client; both routers use a VMAC (macvlan
`vrrp.51` in mode private, 00:00:5e:00:01:33). Checked, for hactl + hactl and for hactl
with keepalived 2.2.7 in either role:

1. the master's VIP sits on its macvlan (not on eth0), with keepalived's sysctls;
2. the client sees the virtual MAC as the source of the adverts (captured on its eth0), and
   its ARP request for the VIP is answered with the virtual MAC only;
3. after a crash of a, b answers on the VIP, with the same MAC;
4. a restarts (reusing the macvlan its crashed run left), preempts back; on a graceful stop
   its macvlan is deleted.

The adapter alone (`NetlinkVmacPort`) is checked in a fresh namespace too: idempotent add
and remove, the base interface's ARP sysctls restored after its last macvlan, and a link
of the same name that is not a macvlan left alone.
"""

from __future__ import annotations

import json
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
    addresses,
    closed_after,
    ip,
    ns_exec,
    ping,
    run_script,
    segment,
    wait_until,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

VIP = "10.200.0.100"
VMAC = "00:00:5e:00:01:33"
STARTUP = 3.0


class VmacHactl(HactlPeer):
    def config(self) -> dict[str, object]:
        doc = super().config()
        for inst in doc["instances"]:  # type: ignore[attr-defined]
            inst["use_vmac"] = True
        return doc

    def holds(self, vip: str) -> bool:
        return vip in addresses(self.node.netns, "vrrp.51")


class VmacKeepalived(KeepalivedPeer):
    def config(self) -> str:
        text = super().config()
        return text.replace("    virtual_ipaddress {", "    use_vmac\n    virtual_ipaddress {", 1)

    def holds(self, vip: str) -> bool:
        return vip in addresses(self.node.netns, "vrrp.51")


_SNIFF = r"""
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind(("eth0", 0)); s.settimeout(0.2)
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    try:
        f = s.recv(2048)
    except socket.timeout:
        continue
    if len(f) > 30 and f[23] == 112:
        print(f[6:12].hex(":"), socket.inet_ntoa(f[26:30]), flush=True)
        sys.exit(0)
sys.exit(1)
"""


def _advert_source(netns: str, *, within: float = 3.0) -> tuple[str, str] | None:
    """(Ethernet source, IPv4 source) of the next VRRP advert seen on `netns`'s eth0."""
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", _SNIFF, str(within)],
        capture_output=True,
        text=True,
        timeout=within + 10,
    )
    if proc.returncode != 0:
        return None
    mac, src = proc.stdout.split()
    return mac, src


def _sysctl(netns: str, path: str) -> str:
    return ns_exec(netns, "cat", f"/proc/sys/net/{path}", check=False).stdout.strip()


def _link(netns: str, name: str) -> dict[str, object] | None:
    out = ip("-n", netns, "-d", "-j", "link", "show", name, check=False)
    if out.returncode != 0:
        return None
    (link,) = json.loads(out.stdout)
    return dict(link)


_WHO_HAS = r"""
import socket, struct, sys, time
vip, mine = socket.inet_aton(sys.argv[1]), socket.inet_aton(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind(("eth0", 0)); s.settimeout(0.1)
mac = s.getsockname()[4]
arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, mine, b"\0" * 6, vip)
s.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)
seen, deadline = set(), time.monotonic() + 1.0
while time.monotonic() < deadline:
    try:
        f = s.recv(2048)
    except socket.timeout:
        continue
    if f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02" and f[28:32] == vip:
        seen.add(f[22:28].hex(":"))
print(" ".join(sorted(seen)))
"""


def _arp_answers(netns: str, vip: str, source: str) -> set[str]:
    """The sender MACs of every ARP reply to one who-has for `vip` sent from `netns`."""
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", _WHO_HAS, vip, source],
        capture_output=True,
        text=True,
        timeout=15,
        check=True,
    )
    return set(proc.stdout.split())


@pytest.fixture
def seg() -> Iterator[Segment]:
    with segment(["a", "b", "client"]) as s:
        yield s


def _macvlan_works() -> bool:
    name = "hvmacprobe"
    try:
        ip("netns", "add", name)
        ip("-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        made = ip(
            "-n", name, "link", "add", "link", "v0", "name", "m0", "type", "macvlan", check=False
        )
        return made.returncode == 0
    except subprocess.CalledProcessError:
        return False
    finally:
        ip("netns", "del", name, check=False)


@pytest.mark.parametrize(
    ("kind_a", "kind_b"),
    [
        ("hactl", "hactl"),
        pytest.param("hactl", "keepalived", marks=pytest.mark.keepalived),
        pytest.param("keepalived", "hactl", marks=pytest.mark.keepalived),
    ],
)
def test_vmac_master_uses_the_virtual_mac(
    seg: Segment, tmp_path: Path, kind_a: str, kind_b: str
) -> None:
    if not _macvlan_works():
        pytest.skip("this kernel cannot create macvlan links")
    kinds = {"hactl": VmacHactl, "keepalived": VmacKeepalived}
    a = kinds[kind_a](seg["a"], PeerSpec(priority=150), str(tmp_path / "a"))
    b = kinds[kind_b](seg["b"], PeerSpec(priority=100), str(tmp_path / "b"))
    na, nb, client = seg["a"].netns, seg["b"].netns, seg["client"].netns
    with closed_after(a, b):
        b.start()
        a.start()
        b.wait_ready()
        a.wait_ready()
        assert wait_until(lambda: a.holds(VIP) and not b.holds(VIP), limit=STARTUP + 8)

        # 1. the macvlan as keepalived makes it; the VIP on it, not on eth0
        link = _link(na, "vrrp.51")
        assert link is not None
        assert link["address"] == VMAC
        info = link["linkinfo"]
        assert isinstance(info, dict) and info["info_kind"] == "macvlan"
        assert info["info_data"]["mode"] == "private"
        assert VIP not in addresses(na, "eth0")
        if kind_a == "hactl":
            for key, want in (
                ("ipv4/conf/vrrp.51/arp_ignore", "1"),
                ("ipv4/conf/vrrp.51/accept_local", "1"),
                ("ipv4/conf/vrrp.51/rp_filter", "0"),
                ("ipv4/conf/eth0/arp_ignore", "1"),
                ("ipv4/conf/eth0/arp_filter", "1"),
                ("ipv6/conf/vrrp.51/disable_ipv6", "1"),
            ):
                assert _sysctl(na, key) == want, key

        # 2. on the wire: adverts from the virtual MAC, ARP for the VIP answered with it
        assert _advert_source(client) == (VMAC, str(seg["a"].address.ip))
        client_ip = str(seg["client"].address.ip)
        assert _arp_answers(client, VIP, client_ip) == {VMAC}  # not eth0's MAC too
        assert ping(client, VIP)

        # 3. crash of a: b takes over, the client keeps the same MAC for the VIP
        a.crash()
        assert wait_until(lambda: b.holds(VIP), limit=6) is not None
        assert ping(client, VIP)
        assert _advert_source(client) == (VMAC, str(seg["b"].address.ip))
        assert _arp_answers(client, VIP, client_ip) == {VMAC}

        # 4. a comes back, preempts, then leaves gracefully and cleans up
        a.start()
        a.wait_ready()
        assert wait_until(lambda: a.holds(VIP) and not b.holds(VIP), limit=STARTUP + 8)
        time.sleep(0.3)
        assert ping(client, VIP)
        a.terminate()
        assert wait_until(lambda: b.holds(VIP), limit=5) is not None
        a.wait()
        assert ping(client, VIP)
        assert _link(na, "vrrp.51") is None, "a left its macvlan behind"
        b.stop()
        assert _link(nb, "vrrp.51") is None, "b left its macvlan behind"


def test_macvlan_adapter(seg: Segment) -> None:
    if not _macvlan_works():
        pytest.skip("this kernel cannot create macvlan links")
    script = r"""
import asyncio, pathlib
from hactl.errors import KernelError, LinkNotFound
from hactl.net.macvlan import NetlinkVmacPort
def sysctl(path):
    return pathlib.Path("/proc/sys/net", path).read_text().strip()
async def main():
    port = NetlinkVmacPort()
    for _ in range(2):  # the second add finds the macvlan and keeps it
        await port.add_vmac(base="eth0", name="vrrp.51", mac="00:00:5e:00:01:33")
    await port.add_vmac(base="eth0", name="vm52", mac="00:00:5e:00:01:34")
    assert sysctl("ipv4/conf/eth0/arp_ignore") == "1" and sysctl("ipv4/conf/eth0/arp_filter") == "1"
    assert sysctl("ipv4/conf/vrrp.51/arp_ignore") == "1"
    # a macvlan of that name with another MAC is replaced
    await port.add_vmac(base="eth0", name="vm52", mac="00:00:5e:00:01:35")
    await port.remove_vmac(base="eth0", name="vrrp.51")
    assert sysctl("ipv4/conf/eth0/arp_ignore") == "1"  # vm52 still uses eth0
    await port.remove_vmac(base="eth0", name="vm52")
    await port.remove_vmac(base="eth0", name="vm52")  # gone already: fine
    assert sysctl("ipv4/conf/eth0/arp_ignore") == "0" and sysctl("ipv4/conf/eth0/arp_filter") == "0"
    try:
        await port.add_vmac(base="lo", name="eth0", mac="00:00:5e:00:01:36")
    except KernelError as err:
        assert "not a macvlan" in str(err), err
    else:
        raise AssertionError("eth0 was taken for a macvlan")
    try:
        await port.add_vmac(base="nope0", name="vrrp.9", mac="00:00:5e:00:01:09")
    except LinkNotFound:
        pass
    else:
        raise AssertionError("a missing base link was accepted")
    await port.close()
    print("ok")
asyncio.run(main())
"""
    out = run_script(seg["a"].netns, script)
    assert out.stdout.strip() == "ok", out.stderr
    assert "vrrp.51" not in ip("-n", seg["a"].netns, "link").stdout
