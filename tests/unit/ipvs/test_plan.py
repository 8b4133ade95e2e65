"""plan(desired, actual): the ordered operations that reconcile an IPVS table."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import random
from ipaddress import IPv4Address

import pytest
from engine_support import VIP, dest, rs, tcp_service, udp_service
from hypothesis import given, settings
from hypothesis import strategies as st

from hactl.errors import KernelError
from hactl.ipvs.engine import IpvsEngine
from hactl.ipvs.model import Destination, IpProto, IpvsTable, ServiceKey, VirtualService
from hactl.ipvs.plan import AddDest, AddService, DelDest, DelService, EditDest, EditService, plan
from hactl.ipvs.userspace import UserspaceIpvs
from hactl.testing.clock import ManualClock

WEB = tcp_service(dest(1), dest(2))
DNS = udp_service(dest(1, port=53))


def bare(svc: VirtualService) -> VirtualService:
    return dataclasses.replace(svc, destinations=())


def test_identical_tables_need_nothing() -> None:
    table = IpvsTable((WEB, DNS))
    assert plan(table, table) == ()
    assert plan(IpvsTable(), IpvsTable()) == ()


def test_new_service_comes_before_its_dests_in_add_order() -> None:
    ops = plan(IpvsTable((WEB,)), IpvsTable())
    assert ops == (
        AddService(bare(WEB)),
        AddDest(WEB.key, dest(1)),
        AddDest(WEB.key, dest(2)),
    )


def test_removed_service_loses_its_dests_first() -> None:
    ops = plan(IpvsTable((WEB,)), IpvsTable((WEB, DNS)))
    assert ops == (DelDest(DNS.key, rs(1), 53), DelService(DNS.key))


def test_dest_changes_delete_edit_add() -> None:
    desired = tcp_service(dest(2, weight=0), dest(3))  # quiesce 2, remove 1, add 3
    ops = plan(IpvsTable((desired,)), IpvsTable((WEB,)))
    assert ops == (
        DelDest(WEB.key, rs(1), 80),
        EditDest(WEB.key, dest(2, weight=0)),
        AddDest(WEB.key, dest(3)),
    )


def test_service_attribute_change_is_an_edit() -> None:
    desired = dataclasses.replace(WEB, scheduler="wlc", persistence_timeout=300)
    assert plan(IpvsTable((desired,)), IpvsTable((WEB,))) == (EditService(bare(desired)),)


def test_dest_order_alone_is_not_a_change() -> None:
    """Reordering would need delete + add, which would drop connections: never planned."""
    swapped = tcp_service(dest(2), dest(1))
    assert plan(IpvsTable((swapped,)), IpvsTable((WEB,))) == ()


_ADDRS = [IPv4Address(f"192.168.1.{i}") for i in range(1, 6)]
_dests = st.lists(
    st.builds(
        Destination,
        addr=st.sampled_from(_ADDRS),
        port=st.sampled_from([80, 8080]),
        weight=st.integers(0, 3),
    ),
    max_size=6,
    unique_by=lambda d: d.key,
).map(tuple)
_services = st.lists(
    st.builds(
        VirtualService,
        key=st.sampled_from(
            [ServiceKey.for_address(IpProto.TCP, VIP, p) for p in (80, 443, 8080)]
            + [ServiceKey.for_fwmark(7)]
        ),
        scheduler=st.sampled_from(["rr", "wlc"]),
        persistence_timeout=st.sampled_from([None, 60.0]),
        destinations=_dests,
    ),
    max_size=4,
    unique_by=lambda s: s.key,
).map(lambda svcs: IpvsTable(tuple(svcs)))


def _normalise(table: IpvsTable) -> dict[ServiceKey, tuple[VirtualService, frozenset[object]]]:
    return {s.key: (bare(s), frozenset(s.destinations)) for s in table.services}


@settings(max_examples=30, deadline=None)
@given(desired=_services, actual=_services)
def test_applying_the_plan_reaches_the_desired_table(
    desired: IpvsTable, actual: IpvsTable
) -> None:
    """Through the embedded backend: apply(plan(d, a)) on a yields d, and re-planning
    finds nothing left to do."""
    clock = ManualClock()
    backend = UserspaceIpvs(IpvsEngine(rng=random.Random(1)), clock)

    async def run() -> None:
        await backend.apply(plan(actual, IpvsTable()))
        assert _normalise(await backend.dump()) == _normalise(actual)
        await backend.apply(plan(desired, await backend.dump()))
        after = await backend.dump()
        assert _normalise(after) == _normalise(desired)
        assert plan(desired, after) == ()

    asyncio.run(run())


def test_userspace_backend_idempotent_and_errors() -> None:
    clock = ManualClock(100.0)
    backend = UserspaceIpvs(IpvsEngine(rng=random.Random(1)), clock)

    async def run() -> None:
        ops = plan(IpvsTable((WEB,)), IpvsTable())
        await backend.apply(ops)
        await backend.apply(ops)  # adding what exists succeeds
        await backend.apply([DelDest(WEB.key, rs(9), 80), DelService(DNS.key)])
        with pytest.raises(KernelError) as info:
            await backend.apply([EditDest(WEB.key, dest(9))])
        assert info.value.errno == errno.ENOENT
        table = await backend.dump()
        assert table.services[0].destinations == WEB.destinations
        assert [d.dest.addr for d in (await backend.services())[0].dests] == [rs(2), rs(1)]
        assert await backend.connections() == ()
        assert (await backend.get_timeouts()).tcp == 900
        sysctl = dataclasses.replace(await backend.get_sysctl(), expire_nodest_conn=1)
        await backend.set_sysctl(sysctl)
        assert (await backend.get_sysctl()).expire_nodest_conn == 1

    asyncio.run(run())
