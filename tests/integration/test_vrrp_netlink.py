"""The pyroute2 address/route/rule adapter against a real kernel, in a throwaway namespace."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from hactl.errors import LinkNotFound
from hactl.net.netlink import NetlinkAddressPort
from hactl.net.ports import Family, Route, Rule
from tests.integration.netns import Segment, addresses, ip, segment

pytestmark = [pytest.mark.netns, pytest.mark.asyncio, pytest.mark.timeout(60)]


@pytest.fixture
def seg() -> Iterator[Segment]:
    with segment(["a"]) as s:
        yield s


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
