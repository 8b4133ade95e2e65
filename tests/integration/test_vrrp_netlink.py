"""The pyroute2 address/route/rule adapter against a real kernel, in a throwaway namespace."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from hactl.errors import LinkNotFound
from hactl.net.netlink import NetlinkAddressPort
from hactl.net.ports import Family, Route, Rule
from tests.integration.netns import PRIORITY, REPO, Segment, addresses, ip, segment

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]


@pytest.fixture
def seg() -> Iterator[Segment]:
    with segment(["a"]) as s:
        yield s


@pytest.mark.asyncio
async def test_idempotent_addresses_routes_and_rules(seg: Segment) -> None:
    netns = seg["a"].netns
    port = NetlinkAddressPort(netns=netns)
    vip = IPv4Interface("10.200.0.100/24")
    route = Route(
        destination=IPv4Network("10.50.0.0/24"),
        gateway=IPv4Address("10.200.0.254"),
        interface="eth0",
        table=100,
        metric=7,
    )
    rule = Rule(table=100, source=IPv4Network("10.200.0.100/32"), priority=1000)
    try:
        async with asyncio.timeout(20):
            assert await port.link_is_up("eth0")
            assert await port.primary_address("eth0", Family.INET) == IPv4Address("10.200.0.1")
            for _ in range(2):  # the second add is a success, not an error
                await port.add_address("eth0", vip)
                await port.add_route(route)
                await port.add_rule(rule)
            assert "10.200.0.100" in addresses(netns)
            assert vip in await port.list_addresses("eth0")
            routes = ip("-n", netns, "route", "show", "table", "100").stdout
            assert "10.50.0.0/24 via 10.200.0.254 dev eth0" in routes and "metric 7" in routes
            assert "from 10.200.0.100 lookup 100" in ip("-n", netns, "rule").stdout
            # a VIP added after the interface address is not the primary address
            assert await port.primary_address("eth0", Family.INET) == IPv4Address("10.200.0.1")
            for _ in range(2):  # removing what is gone is a success too
                await port.remove_rule(rule)
                await port.remove_route(route)
                await port.remove_address("eth0", vip)
            assert "10.200.0.100" not in addresses(netns)
            assert ip("-n", netns, "route", "show", "table", "100").stdout.strip() == ""
            assert "lookup 100" not in ip("-n", netns, "rule").stdout
            with pytest.raises(LinkNotFound):
                await port.add_address("nope0", vip)
            ip("-n", netns, "link", "set", "eth0", "down")
            assert not await port.link_is_up("eth0")
    finally:
        await port.close()


# Runs inside the namespace (the announcer's packet socket and the sysctls act on the
# namespace of the process): a use_vmac macvlan deleted and created again under its name,
# as a reload can do, with the adapters that cache per-link state by name.
_RELINK = r"""
import asyncio, errno, json, sys
from ipaddress import IPv4Interface
from hactl.net.macvlan import NetlinkVmacPort
from hactl.net.netlink import NetlinkAddressPort
from hactl.vrrp.announce import PacketAnnouncer

VIP = IPv4Interface("10.200.0.100/24")


async def main():
    vmacs, port, announcer = NetlinkVmacPort(), NetlinkAddressPort(), PacketAnnouncer()
    out = {}
    try:
        await vmacs.add_vmac(base="eth0", name="vrrp.51", mac="00:00:5e:00:01:33")
        out["first"] = await port.link_index("vrrp.51")
        await port.add_address("vrrp.51", VIP)
        await announcer.announce("vrrp.51", (VIP,), repeat=1, interval=0)
        # another MAC: the macvlan is replaced (a new link under the same name)
        await vmacs.add_vmac(base="eth0", name="vrrp.51", mac="00:00:5e:00:01:34")
        # the address port finds out by itself (ENODEV on the cached index)
        await port.add_address("vrrp.51", VIP)
        out["second"] = await port.link_index("vrrp.51")
        try:
            await announcer.announce("vrrp.51", (VIP,), repeat=1, interval=0)
            out["stale"] = 0
        except OSError as err:
            out["stale"] = err.errno
        announcer.forget_link("vrrp.51")
        port.forget_link("vrrp.51")
        assert await port.link_index("vrrp.51") == out["second"]
        await announcer.announce("vrrp.51", (VIP,), repeat=2, interval=0)
        await port.remove_address("vrrp.51", VIP)
        await vmacs.remove_vmac(base="eth0", name="vrrp.51")
    finally:
        announcer.close()
        await port.close()
        await vmacs.close()
    print(json.dumps(out), flush=True)


asyncio.run(main())
"""

# Counts gratuitous ARPs for 10.200.0.100 per source MAC, until killed (prints on SIGTERM).
_GARPS = r"""
import collections, json, signal, socket, sys
counts = collections.Counter()
def done(*_):
    print(json.dumps(counts), flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind(("eth0", 0))
print("ready", flush=True)
while True:
    frame = s.recv(2048)
    arp = frame[14:]
    if arp[14:18] == arp[24:28] == socket.inet_aton("10.200.0.100"):
        counts[frame[6:12].hex(":")] += 1
"""


def test_recreated_vmac_is_looked_up_again() -> None:
    with segment(["a", "b"]) as seg2:
        env = dict(os.environ, PYTHONPATH=REPO)
        capture = subprocess.Popen(
            ["ip", "netns", "exec", seg2["b"].netns, *PRIORITY, sys.executable, "-c", _GARPS],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert capture.stdout is not None
            assert capture.stdout.readline().strip() == "ready"
            run = subprocess.run(
                ["ip", "netns", "exec", seg2["a"].netns, sys.executable, "-c", _RELINK],
                capture_output=True,
                text=True,
                env=env,
                cwd=REPO,
                timeout=30,
            )
            assert run.returncode == 0, run.stderr
            out = json.loads(run.stdout.strip().splitlines()[-1])
            capture.send_signal(signal.SIGTERM)
            garps = json.loads(capture.communicate(timeout=10)[0].strip().splitlines()[-1])
        finally:
            if capture.poll() is None:
                capture.kill()
                capture.wait()
    assert out["second"] != out["first"]
    # the socket bound to the deleted link cannot send (the bug, without forget_link)
    assert out["stale"] in (errno.ENXIO, errno.ENODEV)
    # before and after: the GARPs left from the link of the moment, with its MAC
    assert garps == {"00:00:5e:00:01:33": 1, "00:00:5e:00:01:34": 2}, garps
