"""Elections of 2-3 routers on a LoopbackWire (adverts go through the real codec)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

import pytest

from hactl.testing.fakes import LoopbackWire
from hactl.vrrp.events import AdvertisementDropped, SplitBrainDetected, StateChanged, VrrpState
from hactl.vrrp.model import AuthType, SyncGroup, TrackScript, VrrpInstance
from hactl.vrrp.router import SyncGroupCore, TrackKind, VirtualRouter

VIP = IPv4Interface("10.200.0.100/24")
VIP2 = IPv4Interface("10.200.1.100/24")
A, B, C = (IPv4Address(f"10.200.0.{i}") for i in (1, 2, 3))


def router(name: str, address: IPv4Address, priority: int, **kw: object) -> VirtualRouter:
    fields: dict[str, object] = {
        "name": name,
        "interface": "eth0",
        "vrid": 51,
        "priority": priority,
        "vips": (VIP,),
    }
    fields.update(kw)
    return VirtualRouter(VrrpInstance(**fields), primary_address=address)  # type: ignore[arg-type]


def became_master_at(wire: LoopbackWire, name: str) -> list[float]:
    return [
        t
        for t, e in wire.events(StateChanged, instance=name)
        if isinstance(e, StateChanged) and e.new is VrrpState.MASTER
    ]


@pytest.mark.parametrize("version", [2, 3])
def test_two_routers_elect_the_higher_priority(version: int) -> None:
    wire = LoopbackWire()
    wire.attach(router("a", A, 150, version=version), router("b", B, 100, version=version))
    wire.start()
    wire.run_until(10.0)
    assert wire.states() == {"a": VrrpState.MASTER, "b": VrrpState.BACKUP}
    assert became_master_at(wire, "a") == [3.414062]  # Master_Down_Interval at 150
    assert wire.holders(VIP) == ["a"]
    assert not wire.events(AdvertisementDropped, instance="b")


def test_crash_takeover_after_three_adverts_plus_skew() -> None:
    wire = LoopbackWire()
    wire.attach(router("a", A, 150), router("b", B, 100))
    wire.start()
    wire.run_until(10.0)
    last_advert = 9.414062  # a advertises at 3.414062 + k
    wire.crash("a")
    wire.run_until(20.0)
    (t,) = became_master_at(wire, "b")
    # spec §9: takeover = 3 x advert + Skew(backup priority), counted from the last advert
    assert t == pytest.approx(last_advert + 3.609375)
    # a crashed: its VIP lingers there (as with keepalived), and b holds it too
    assert wire.holders(VIP) == ["a", "b"]


def test_priority_zero_handover_after_skew_only() -> None:
    wire = LoopbackWire()
    wire.attach(router("a", A, 150), router("b", B, 100))
    wire.start()
    wire.run_until(10.0)
    wire.shutdown("a")
    wire.run_until(20.0)
    (t,) = became_master_at(wire, "b")
    assert t == pytest.approx(10.0 + 0.609375)
    assert wire.holders(VIP) == ["b"]


def test_v3_priority_zero_skew_scales_with_interval() -> None:
    wire = LoopbackWire()
    wire.attach(
        router("a", A, 150, version=3, advert_interval=0.1),
        router("b", B, 100, version=3, advert_interval=0.1),
    )
    wire.start()
    wire.run_until(5.0)
    wire.shutdown("a")
    wire.run_until(6.0)
    (t,) = became_master_at(wire, "b")
    assert t == pytest.approx(5.0 + 0.060937)


def test_higher_priority_node_preempts_when_it_returns() -> None:
    wire = LoopbackWire()
    wire.attach(router("a", A, 150), router("b", B, 100))
    wire.start("b")
    wire.run_until(10.0)
    assert wire.states()["b"] is VrrpState.MASTER
    wire.replace(router("a", A, 150))
    wire.start("a")
    wire.run_until(20.0)
    assert wire.states() == {"a": VrrpState.MASTER, "b": VrrpState.BACKUP}
    # a discards b's lower adverts and takes over after its own down interval (spec §6.3)
    assert became_master_at(wire, "a") == [pytest.approx(10.0 + 3.414062)]
    assert wire.holders(VIP) == ["a"]


def test_nopreempt_keeps_the_lower_priority_master() -> None:
    wire = LoopbackWire()
    wire.attach(router("a", A, 150, nopreempt=True), router("b", B, 100))
    wire.start("b")
    wire.run_until(10.0)
    wire.start("a")
    wire.run_until(60.0)
    assert wire.states() == {"a": VrrpState.BACKUP, "b": VrrpState.MASTER}


def test_preempt_delay_postpones_preemption() -> None:
    wire = LoopbackWire()
    wire.attach(router("a", A, 150, preempt_delay=2.0), router("b", B, 100))
    wire.start("b")
    wire.run_until(10.0)  # b master, adverts at 3.609375 + k
    wire.start("a")
    wire.run_until(30.0)
    (t,) = became_master_at(wire, "a")
    # the first lower advert (10.609375) starts the 2 s delay; the one at 11.609375 is
    # still accepted, the one at 12.609375 (delay over) is not, so a times out 3.414062
    # after 11.609375: about one advert period later than without the delay (spec §9)
    assert t == pytest.approx(11.609375 + 3.414062)


def test_three_routers_and_cascade() -> None:
    wire = LoopbackWire()
    wire.attach(router("a", A, 200), router("b", B, 150), router("c", C, 100))
    wire.start()
    wire.run_until(10.0)
    assert wire.states()["a"] is VrrpState.MASTER
    wire.crash("a")
    wire.run_until(20.0)
    assert wire.states()["b"] is VrrpState.MASTER and wire.states()["c"] is VrrpState.BACKUP
    wire.shutdown("b")
    wire.run_until(30.0)
    assert wire.states()["c"] is VrrpState.MASTER


def test_equal_priority_higher_address_wins() -> None:
    wire = LoopbackWire()
    wire.attach(router("a", A, 100), router("b", B, 100))
    wire.start()
    wire.run_until(20.0)
    assert wire.states() == {"a": VrrpState.BACKUP, "b": VrrpState.MASTER}


def test_ipv6_election() -> None:
    vip6 = IPv6Interface("fd00:200::100/64")
    wire = LoopbackWire()
    for name, prio, last in (("a", 150, 1), ("b", 100, 2)):
        wire.attach(
            VirtualRouter(
                VrrpInstance(
                    name=name,
                    interface="eth0",
                    vrid=51,
                    priority=prio,
                    version=3,
                    vips=(IPv6Interface("fe80::1:51/64"), vip6),
                ),
                primary_address=IPv6Address(f"fe80::{last}"),
            )
        )
    wire.start()
    wire.run_until(10.0)
    assert wire.holders(vip6) == ["a"]


def test_mismatched_vip_list_is_a_split_brain() -> None:
    wire = LoopbackWire()
    wire.attach(router("a", A, 150), router("b", B, 100, vips=(VIP, VIP2)))
    wire.start()
    wire.run_until(10.0)
    # spec §4.2 check 10: b rejects a's adverts, so both become master
    assert wire.states() == {"a": VrrpState.MASTER, "b": VrrpState.MASTER}
    drops = wire.events(AdvertisementDropped, instance="b")
    assert drops and all(
        isinstance(e, AdvertisementDropped) and e.reason.value == "address_count" for _, e in drops
    )


def test_split_brain_is_counted_when_two_masters_meet() -> None:
    wire = LoopbackWire()
    a, b = router("a", A, 150), router("b", B, 100)
    wire.attach(a, b)
    wire.partition("a", "b")
    wire.start()
    wire.run_until(10.5)
    assert wire.states() == {"a": VrrpState.MASTER, "b": VrrpState.MASTER}
    assert wire.holders(VIP) == ["a", "b"]
    # heal between a's advert (x.414) and b's (x.609): a hears the lower master first,
    # counts the split brain and answers at once, so b yields without waiting
    wire.heal()
    wire.run_until(12.0)
    assert wire.states() == {"a": VrrpState.MASTER, "b": VrrpState.BACKUP}
    assert [(t, e) for t, e in wire.events(SplitBrainDetected)] == [
        (
            10.609375,
            SplitBrainDetected(instance="a", src=B, their_priority=100, our_priority=150, count=1),
        )
    ]
    assert [t for t, e in wire.events(StateChanged, instance="b")][-1] == 10.609375
    assert wire.holders(VIP) == ["a"]


@pytest.mark.parametrize("auth", [AuthType.PASS, AuthType.AH])
def test_v2_authentication_elections(auth: AuthType) -> None:
    wire = LoopbackWire()
    wire.attach(
        router("a", A, 150, auth_type=auth, auth_pass=b"secret12"),
        router("b", B, 100, auth_type=auth, auth_pass=b"secret12"),
    )
    wire.start()
    wire.run_until(10.0)
    assert wire.states() == {"a": VrrpState.MASTER, "b": VrrpState.BACKUP}
    assert not wire.events(AdvertisementDropped, instance="b")


def test_wrong_password_means_both_master() -> None:
    wire = LoopbackWire()
    wire.attach(
        router("a", A, 150, auth_type=AuthType.PASS, auth_pass=b"one"),
        router("b", B, 100, auth_type=AuthType.PASS, auth_pass=b"two"),
    )
    wire.start()
    wire.run_until(10.0)
    assert wire.states() == {"a": VrrpState.MASTER, "b": VrrpState.MASTER}


def _group_pair(name: str, address: IPv4Address, priority: int) -> tuple[VirtualRouter, ...]:
    r1 = router(f"{name}1", address, priority)
    r2 = router(
        f"{name}2",
        address,
        priority,
        vrid=52,
        vips=(VIP2,),
        track_scripts=(TrackScript(name="chk", weight=-100),),
    )
    return r1, r2


def test_sync_group_moves_members_together() -> None:
    wire = LoopbackWire()
    a1, a2 = _group_pair("a", A, 150)
    b1, b2 = _group_pair("b", B, 100)
    wire.attach(a1, a2, b1, b2)
    group_a = SyncGroupCore(SyncGroup(name="GA", members=("a1", "a2")), (a1, a2))
    group_b = SyncGroupCore(SyncGroup(name="GB", members=("b1", "b2")), (b1, b2))
    wire.add_group(group_a)
    wire.add_group(group_b)
    wire.start()
    wire.run_until(10.0)
    assert wire.states() == {
        "a1": VrrpState.MASTER,
        "a2": VrrpState.MASTER,
        "b1": VrrpState.BACKUP,
        "b2": VrrpState.BACKUP,
    }
    # a member going FAULT pulls its partner to FAULT; the peers' group takes over both
    a1.set_track(TrackKind.INTERFACE, "eth0", False, now=wire.now)
    wire.pump()
    assert a2.state is VrrpState.FAULT
    wire.run_until(12.0)
    assert wire.states()["b1"] is VrrpState.MASTER and wire.states()["b2"] is VrrpState.MASTER
    assert wire.holders(VIP) == ["b1"] and wire.holders(VIP2) == ["b2"]
    # recovery: both a members come back and preempt together
    a1.set_track(TrackKind.INTERFACE, "eth0", True, now=wire.now)
    wire.pump()
    assert a1.state is VrrpState.BACKUP and a2.state is VrrpState.BACKUP
    wire.run_until(20.0)
    assert wire.states() == {
        "a1": VrrpState.MASTER,
        "a2": VrrpState.MASTER,
        "b1": VrrpState.BACKUP,
        "b2": VrrpState.BACKUP,
    }


def test_sync_group_member_seeing_higher_priority_pulls_group_to_backup() -> None:
    wire = LoopbackWire()
    a1, a2 = _group_pair("a", A, 100)
    wire.attach(a1, a2)
    wire.add_group(SyncGroupCore(SyncGroup(name="GA", members=("a1", "a2")), (a1, a2)))
    wire.start()
    wire.run_until(10.0)
    assert a1.state is VrrpState.MASTER and a2.state is VrrpState.MASTER
    # only vrid 51 sees a higher-priority router; vrid 52 follows through the group
    wire.attach(router("x", C, 200))
    wire.start("x")
    wire.run_until(15.0)
    assert wire.states() == {"a1": VrrpState.BACKUP, "a2": VrrpState.BACKUP, "x": VrrpState.MASTER}
    assert wire.holders(VIP2) == []
