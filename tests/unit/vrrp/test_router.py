"""VirtualRouter scripts: call the core at explicit times, assert events and deadlines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface

import pytest

from hactl.errors import StateError, VrrpDecodeError
from hactl.vrrp.events import (
    AddAddresses,
    AdvertisementDropped,
    AnnounceAddresses,
    MasterReceivedLowerPriority,
    PriorityChanged,
    RemoveAddresses,
    SendAdvertisement,
    SplitBrainDetected,
    StateChanged,
    VrrpState,
)
from hactl.vrrp.model import (
    AuthType,
    GarpSettings,
    InitialState,
    SyncGroup,
    TrackFile,
    TrackInterface,
    TrackScript,
    VrrpInstance,
)
from hactl.vrrp.packet import Advertisement, DropReason
from hactl.vrrp.router import (
    SyncGroupCore,
    TrackKind,
    VirtualRouter,
    master_down_interval,
    receive_policy,
    skew_time,
)

VIP = IPv4Interface("10.200.0.100/24")
ME = IPv4Address("10.200.0.1")
PEER = IPv4Address("10.200.0.2")


def cfg(**kw: object) -> VrrpInstance:
    base: dict[str, object] = {"name": "VI_1", "interface": "eth0", "vrid": 51, "vips": (VIP,)}
    base.update(kw)
    return VrrpInstance(**base)  # type: ignore[arg-type]


def adv(priority: int, *, version: int = 2, interval_cs: int = 100) -> Advertisement:
    return Advertisement(
        version=version,
        vrid=51,
        priority=priority,
        adver_int_cs=interval_cs,
        addresses=(VIP.ip,),
        auth_data=b"\0" * 8 if version == 2 else b"",
    )


def sent(events: Sequence[object]) -> list[int]:
    return [e.advertisement.priority for e in events if isinstance(e, SendAdvertisement)]


@pytest.mark.parametrize(
    ("priority", "skew", "down"),
    [
        (1, 0.996093, 3.996093),
        (100, 0.609375, 3.609375),
        (150, 0.414062, 3.414062),
        (254, 0.007812, 3.007812),
        (255, 0.003906, 3.003906),
    ],
)
def test_timer_table_v2_and_v3_at_1s(priority: int, skew: float, down: float) -> None:
    # spec §6.1 table (keepalived's truncating microsecond arithmetic)
    for version in (2, 3):
        assert skew_time(version, priority, 100) == skew
        assert master_down_interval(version, priority, 100) == down


def test_timer_table_v3_at_50cs() -> None:
    assert skew_time(3, 100, 50) == 0.304687
    assert master_down_interval(3, 100, 50) == 1.804687
    assert master_down_interval(3, 254, 50) == 1.503906
    # v2 skew ignores the interval
    assert skew_time(2, 100, 500) == 0.609375


def test_backup_start_then_takeover_after_master_down_interval() -> None:
    r = VirtualRouter(cfg(), primary_address=ME)
    r.start(now=0.0)
    assert r.pop_events() == [
        RemoveAddresses(instance="VI_1", interface="eth0", addresses=(VIP,)),
        StateChanged(
            instance="VI_1", old=VrrpState.INIT, new=VrrpState.BACKUP, reason="init", priority=100
        ),
    ]
    assert r.next_deadline() == 3.609375
    r.handle_timer(now=3.609375)
    events = r.pop_events()
    assert [type(e) for e in events] == [
        SendAdvertisement,
        AddAddresses,
        AnnounceAddresses,
        StateChanged,
    ]
    assert events[2] == AnnounceAddresses(
        instance="VI_1", interface="eth0", addresses=(VIP,), repeat=5
    )
    assert r.state is VrrpState.MASTER
    # next: the advert timer (1 s) before the second GARP batch (5 s)
    assert r.next_deadline() == 4.609375
    r.handle_timer(now=4.609375)
    assert sent(r.pop_events()) == [100]
    for t in (5.609375, 6.609375, 7.609375):
        r.handle_timer(now=t)
        r.pop_events()
    r.handle_timer(now=8.609375)
    events = r.pop_events()
    assert sent(events) == [100]
    assert any(isinstance(e, AnnounceAddresses) and e.repeat == 5 for e in events)


def test_adverts_reset_the_down_timer() -> None:
    r = VirtualRouter(cfg(), primary_address=ME)
    r.start(now=0.0)
    r.pop_events()
    r.receive_advertisement(adv(150), src=PEER, now=2.0)
    assert r.pop_events() == []
    assert r.next_deadline() == 2.0 + 3.609375
    status = r.status()
    assert status.master_address == PEER and status.master_priority == 150
    assert (status.last_advert_source, status.last_advert_priority) == (PEER, 150)
    assert status.last_advert_at == 2.0 and status.adverts_received == 1


def test_priority_zero_gives_skew_only() -> None:
    r = VirtualRouter(cfg(), primary_address=ME)
    r.start(now=0.0)
    r.receive_advertisement(adv(150), src=PEER, now=1.0)
    r.receive_advertisement(adv(0), src=PEER, now=1.5)
    assert r.next_deadline() == 1.5 + 0.609375
    assert r.status().priority_zero_received == 1


def test_owner_with_state_master_starts_master_at_once() -> None:
    r = VirtualRouter(cfg(priority=255, state=InitialState.MASTER), primary_address=ME)
    r.start(now=0.0)
    events = r.pop_events()
    assert sent(events) == [255]
    assert r.state is VrrpState.MASTER


def test_state_master_below_255_waits_like_backup() -> None:
    r = VirtualRouter(cfg(priority=100, state=InitialState.MASTER), primary_address=ME)
    r.start(now=0.0)
    assert r.state is VrrpState.BACKUP
    assert r.next_deadline() == 3.609375


def _master(**kw: object) -> VirtualRouter:
    r = VirtualRouter(cfg(**kw), primary_address=ME)
    r.start(now=0.0)
    r.handle_timer(now=r.next_deadline() or 0.0)
    r.pop_events()
    assert r.state is VrrpState.MASTER
    return r


def test_master_yields_to_higher_priority_at_once() -> None:
    r = _master()
    r.receive_advertisement(adv(200), src=PEER, now=5.0)
    events = r.pop_events()
    assert events == [
        RemoveAddresses(instance="VI_1", interface="eth0", addresses=(VIP,)),
        StateChanged(
            instance="VI_1",
            old=VrrpState.MASTER,
            new=VrrpState.BACKUP,
            reason="higher priority advert",
            priority=100,
        ),
    ]
    assert r.next_deadline() == 5.0 + 3.609375


def test_equal_priority_tie_break_on_address() -> None:
    lower_peer = IPv4Address("10.200.0.0")
    r = _master()
    r.receive_advertisement(adv(100), src=lower_peer, now=5.0)
    assert r.state is VrrpState.MASTER
    r.pop_events()
    r.receive_advertisement(adv(100), src=PEER, now=6.0)  # 10.200.0.2 > 10.200.0.1
    assert r.state is VrrpState.BACKUP


def test_master_hearing_lower_priority_counts_split_brain_and_answers() -> None:
    r = _master()
    r.receive_advertisement(adv(50), src=PEER, now=5.0)
    events = r.pop_events()
    assert events == [
        SplitBrainDetected(instance="VI_1", src=PEER, their_priority=50, our_priority=100, count=1),
        SendAdvertisement(instance="VI_1", advertisement=adv(100)),
        AnnounceAddresses(instance="VI_1", interface="eth0", addresses=(VIP,), repeat=5),
        MasterReceivedLowerPriority(instance="VI_1", src=PEER, priority=50),
    ]
    assert r.next_deadline() == 6.0
    assert r.status().split_brain == 1


def test_lower_prio_no_advert_and_no_garp() -> None:
    r = _master(lower_prio_no_advert=True, garp=GarpSettings(lower_prio_repeat=0))
    r.receive_advertisement(adv(50), src=PEER, now=5.0)
    assert sent(r.pop_events()) == []


def test_master_answers_priority_zero_with_an_advert() -> None:
    r = _master()
    r.receive_advertisement(adv(0), src=PEER, now=5.5)
    assert sent(r.pop_events()) == [100]
    assert r.next_deadline() == 6.5


def test_shutdown_from_master_sends_priority_zero_then_removes() -> None:
    r = _master()
    r.shutdown(now=7.0)
    events = r.pop_events()
    assert sent(events) == [0]
    assert isinstance(events[1], RemoveAddresses)
    assert events[2] == StateChanged(
        instance="VI_1", old=VrrpState.MASTER, new=VrrpState.STOP, reason="shutdown", priority=0
    )
    assert r.next_deadline() is None
    with pytest.raises(StateError):
        r.receive_advertisement(adv(100), src=PEER, now=8.0)


def test_start_twice_is_a_bug() -> None:
    r = VirtualRouter(cfg(), primary_address=ME)
    r.start(now=0.0)
    with pytest.raises(StateError):
        r.start(now=1.0)


def test_preempt_discards_lower_priority_without_resetting() -> None:
    r = VirtualRouter(cfg(priority=150), primary_address=ME)
    r.start(now=0.0)
    r.pop_events()
    r.receive_advertisement(adv(100), src=PEER, now=1.0)
    assert r.pop_events() == [
        AdvertisementDropped(
            instance="VI_1", reason=DropReason.LOWER_PRIORITY, src=PEER, detail="priority 100"
        )
    ]
    assert r.next_deadline() == 3.414062


def test_nopreempt_accepts_lower_priority() -> None:
    r = VirtualRouter(cfg(priority=150, nopreempt=True), primary_address=ME)
    r.start(now=0.0)
    r.receive_advertisement(adv(100), src=PEER, now=1.0)
    assert r.next_deadline() == 1.0 + 3.414062


def test_preempt_delay_accepts_lower_priority_until_it_runs_out() -> None:
    r = VirtualRouter(cfg(priority=150, preempt_delay=2.0), primary_address=ME)
    r.start(now=0.0)
    for t in (0.5, 1.5, 2.4):
        r.receive_advertisement(adv(100), src=PEER, now=t)
        assert r.next_deadline() == pytest.approx(t + 3.414062)
    r.receive_advertisement(adv(100), src=PEER, now=2.6)  # delay started at 0.5, over at 2.5
    assert r.next_deadline() == pytest.approx(2.4 + 3.414062)


def test_v3_learns_the_masters_interval() -> None:
    r = VirtualRouter(cfg(version=3), primary_address=ME)
    r.start(now=0.0)
    r.receive_advertisement(adv(200, version=3, interval_cs=50), src=PEER, now=1.0)
    assert r.master_adver_int_cs == 50
    assert r.next_deadline() == pytest.approx(1.0 + 1.804687)


def test_v2_interval_mismatch_is_dropped_by_policy() -> None:
    policy = receive_policy(cfg())
    assert policy.adver_int_cs == 100 and policy.addresses == frozenset({VIP.ip})


def test_decode_errors_are_counted() -> None:
    r = VirtualRouter(cfg(), primary_address=ME)
    r.record_decode_error(VrrpDecodeError(DropReason.TTL, "64"), src=PEER)
    assert r.pop_events() == [
        AdvertisementDropped(instance="VI_1", reason=DropReason.TTL, src=PEER, detail="ttl: 64")
    ]
    assert r.status().drops == (("ttl", 1),)


def test_track_script_weight_arithmetic() -> None:
    r = VirtualRouter(
        cfg(
            priority=100,
            track_scripts=(TrackScript(name="up"), TrackScript(name="down", weight=-30)),
            track_interfaces=(TrackInterface(name="eth1", weight=5),),
            track_files=(TrackFile(name="f", weight=10),),
        ),
        primary_address=ME,
        script_weights={"up": 20},
    )
    r.start(now=0.0)
    r.pop_events()
    assert r.effective_priority == 100 + 20 + 5  # positive weights count while OK
    r.set_track(TrackKind.SCRIPT, "down", False, now=1.0)
    assert r.effective_priority == 95
    assert r.pop_events() == [PriorityChanged(instance="VI_1", old=125, new=95)]
    r.set_track(TrackKind.SCRIPT, "up", False, now=1.0)
    assert r.effective_priority == 75
    r.set_track(TrackKind.FILE, "f", -3, now=1.0)
    assert r.effective_priority == 45
    r.set_track(TrackKind.FILE, "f", 100, now=1.0)
    assert r.effective_priority == 254  # clamped
    r.set_track(TrackKind.FILE, "f", -25, now=1.0)
    assert r.effective_priority == 1  # 75 - 250, clamped
    assert r.state is VrrpState.BACKUP
    # keepalived: a file contribution at or below -254 is a FAULT, even with a weight
    r.set_track(TrackKind.FILE, "f", -100, now=1.0)
    assert r.state is VrrpState.FAULT
    with pytest.raises(StateError):
        r.set_track(TrackKind.SCRIPT, "unknown", True, now=1.0)


def test_owner_priority_never_changes() -> None:
    r = VirtualRouter(
        cfg(priority=255, track_scripts=(TrackScript(name="s", weight=-50),)), primary_address=ME
    )
    r.start(now=0.0)
    r.set_track(TrackKind.SCRIPT, "s", False, now=1.0)
    assert r.effective_priority == 255


def test_weight_zero_failure_is_fault_and_recovery_restarts_backup() -> None:
    r = _master(track_scripts=(TrackScript(name="chk", weight=0),))
    r.set_track(TrackKind.SCRIPT, "chk", False, now=10.0)
    events = r.pop_events()
    assert sent(events) == [0, 0]  # keepalived: two priority-0 adverts on FAULT
    assert isinstance(events[2], RemoveAddresses)
    assert r.state is VrrpState.FAULT and r.next_deadline() is None
    r.receive_advertisement(adv(100), src=PEER, now=10.5)
    assert r.pop_events()[0].reason is DropReason.NOT_LISTENING  # type: ignore[union-attr]
    r.set_track(TrackKind.SCRIPT, "chk", True, now=11.0)
    assert r.state is VrrpState.BACKUP
    assert r.next_deadline() == 11.0 + 3.609375


def test_interface_down_is_fault_unless_dont_track_primary() -> None:
    r = VirtualRouter(cfg(), primary_address=ME)
    r.start(now=0.0)
    r.set_track(TrackKind.INTERFACE, "eth0", False, now=1.0)
    assert r.state is VrrpState.FAULT
    quiet = VirtualRouter(cfg(dont_track_primary=True), primary_address=ME)
    with pytest.raises(StateError):
        quiet.set_track(TrackKind.INTERFACE, "eth0", False, now=1.0)


def test_fault_at_start() -> None:
    r = VirtualRouter(cfg(track_files=(TrackFile(name="f", weight=0),)), primary_address=ME)
    r.set_track(TrackKind.FILE, "f", 1, now=0.0)
    r.start(now=0.0)
    assert r.state is VrrpState.FAULT


def test_pass_auth_goes_into_the_advert() -> None:
    r = _master(auth_type=AuthType.PASS, auth_pass=b"secret")
    r.handle_timer(now=r.next_deadline() or 0.0)
    (event,) = [e for e in r.pop_events() if isinstance(e, SendAdvertisement)]
    assert event.advertisement.auth_data == b"secret\0\0"
    assert event.advertisement.auth_type is AuthType.PASS


def test_ah_sequence_numbers_and_replay() -> None:
    r = VirtualRouter(cfg(auth_type=AuthType.AH, auth_pass=b"k"), primary_address=ME)
    r.start(now=0.0)
    r.receive_advertisement(adv(150), src=PEER, now=1.0, ah_seq=41)
    r.receive_advertisement(adv(150), src=PEER, now=2.0, ah_seq=41)
    drops = [e for e in r.pop_events() if isinstance(e, AdvertisementDropped)]
    assert [d.reason for d in drops] == [DropReason.AH_REPLAY]
    r.handle_timer(now=10.0)
    seqs = [e.ah_seq for e in r.pop_events() if isinstance(e, SendAdvertisement)]
    assert seqs == [42]  # continues above the last one heard (spec §5.3)


def test_virtual_routes_follow_the_vips() -> None:
    from ipaddress import IPv4Network

    from hactl.vrrp.events import AddRoutes, RemoveRoutes
    from hactl.vrrp.model import Route, Rule

    route = Route(destination=IPv4Network("10.50.0.0/24"), gateway=IPv4Address("10.200.0.254"))
    rule = Rule(table=100, source=IPv4Network("10.200.0.100/32"))
    r = VirtualRouter(cfg(virtual_routes=(route,), virtual_rules=(rule,)), primary_address=ME)
    r.start(now=0.0)
    kinds = [type(e) for e in r.pop_events()]
    assert kinds[:2] == [RemoveRoutes, RemoveAddresses]  # crash leftovers, routes first
    r.handle_timer(now=10.0)
    kinds = [type(e) for e in r.pop_events()]
    assert kinds[:3] == [SendAdvertisement, AddAddresses, AddRoutes]
    r.shutdown(now=11.0)
    events = r.pop_events()
    assert [type(e) for e in events][:3] == [SendAdvertisement, RemoveRoutes, RemoveAddresses]
    assert events[1] == RemoveRoutes(instance="VI_1", routes=(route,), rules=(rule,))


def test_garp_refresh_rides_on_adverts() -> None:
    r = _master(garp=GarpSettings(master_delay=0, master_refresh=2.5, master_refresh_repeat=2))
    start = 3.609375
    announced = []
    for k in range(1, 7):
        r.handle_timer(now=start + k)
        announced += [(k, e.repeat) for e in r.pop_events() if isinstance(e, AnnounceAddresses)]
    # keepalived checks the refresh timer when it sends an advert: at +3 and +6
    assert announced == [(3, 2), (6, 2)]


def test_higher_prio_send_advert_answers_before_yielding() -> None:
    r = _master(higher_prio_send_advert=True)
    r.receive_advertisement(adv(200), src=PEER, now=5.0)
    events = r.pop_events()
    assert sent(events) == [100]
    assert r.state is VrrpState.BACKUP


def test_two_owners_lower_the_local_priority() -> None:
    r = VirtualRouter(cfg(priority=255, state=InitialState.MASTER), primary_address=ME)
    r.start(now=0.0)
    r.pop_events()
    r.receive_advertisement(adv(255), src=PEER, now=1.0)  # peer address is higher
    events = r.pop_events()
    assert PriorityChanged(instance="VI_1", old=255, new=254) in events
    assert r.effective_priority == 254 and r.state is VrrpState.BACKUP


def test_own_address_with_equal_priority_is_ignored() -> None:
    r = _master()
    r.receive_advertisement(adv(100), src=ME, now=5.0)
    assert r.state is VrrpState.MASTER
    assert sent(r.pop_events()) == []


def test_shutdown_before_start_is_silent() -> None:
    r = VirtualRouter(cfg(), primary_address=ME)
    r.shutdown(now=0.0)
    assert r.state is VrrpState.STOP and r.pop_events() == []
    r.shutdown(now=1.0)  # idempotent
    assert r.pop_events() == []


def test_skip_check_adv_addr_relaxes_only_for_the_known_master() -> None:
    r = VirtualRouter(cfg(skip_check_adv_addr=True), primary_address=ME)
    assert r.policy_for(PEER).addresses == frozenset({VIP.ip})  # INIT: full checks
    r.start(now=0.0)
    r.receive_advertisement(adv(150), src=PEER, now=1.0)
    assert r.policy_for(PEER).addresses is None
    assert r.policy_for(IPv4Address("10.200.0.9")).addresses == frozenset({VIP.ip})
    strict = VirtualRouter(cfg(), primary_address=ME)
    strict.start(now=0.0)
    strict.receive_advertisement(adv(150), src=PEER, now=1.0)
    assert strict.policy_for(PEER).addresses == frozenset({VIP.ip})


# --------------------------------------------------------------------------- reload (apply)

VIP2 = IPv4Interface("10.200.0.101/24")


def _backup(**kw: object) -> VirtualRouter:
    r = VirtualRouter(cfg(**kw), primary_address=ME)
    r.start(now=0.0)
    r.receive_advertisement(adv(200), src=PEER, now=1.0)
    r.pop_events()
    assert r.state is VrrpState.BACKUP
    return r


def test_unchanged_config_gives_no_events_at_all() -> None:
    for r in (_master(), _backup()):
        deadline = r.next_deadline()
        r.apply(cfg(), now=1.5)
        assert r.pop_events() == []
        assert r.next_deadline() == deadline


def test_priority_change_on_the_master_no_transition_next_advert_carries_it() -> None:
    r = _master()
    deadline = r.next_deadline()
    assert deadline is not None
    r.apply(cfg(priority=150), now=deadline - 0.5)
    events = r.pop_events()
    # spec §6.3: a priority change is not advertised at once; nothing else happens
    assert events == [PriorityChanged(instance="VI_1", old=100, new=150)]
    assert r.state is VrrpState.MASTER
    assert r.next_deadline() == deadline  # the Adver_Timer is carried over
    r.handle_timer(now=deadline)
    assert sent(r.pop_events()) == [150]


def test_master_priority_below_a_known_backup_follows_the_protocol() -> None:
    r = _master(priority=150)
    r.apply(cfg(priority=50), now=0.5)
    assert not [e for e in r.pop_events() if isinstance(e, StateChanged)]
    assert r.state is VrrpState.MASTER
    # RFC 5798 §6.4.3: the preempting backup (100) discards our lower advert and takes
    # over when its down timer expires; its advert then moves us to BACKUP
    r.receive_advertisement(adv(100), src=PEER, now=4.0)
    assert r.state is VrrpState.BACKUP


def test_priority_change_on_a_backup_keeps_the_down_timer() -> None:
    r = _backup()
    deadline = r.next_deadline()
    r.apply(cfg(priority=150), now=2.0)
    assert r.pop_events() == [PriorityChanged(instance="VI_1", old=100, new=150)]
    assert r.state is VrrpState.BACKUP
    assert r.next_deadline() == deadline
    # a higher priority with preemption: the 200 master still wins; at 250 we would preempt
    r.apply(cfg(priority=250), now=2.0)
    r.pop_events()
    r.receive_advertisement(adv(200), src=PEER, now=2.5)
    assert r.next_deadline() == deadline  # lower-priority advert discarded, timer not reset


def test_advert_int_change_rearms_the_timers() -> None:
    r = _master()
    r.apply(cfg(advert_interval=3.0), now=4.0)  # master since 3.609375, next advert 4.609375
    assert r.pop_events() == []
    assert r.next_deadline() == pytest.approx(7.0)  # RFC 5798 §6.4.3: Adver_Timer restarted
    r.handle_timer(now=7.0)
    assert [
        e.advertisement.adver_int_cs for e in r.pop_events() if isinstance(e, SendAdvertisement)
    ] == [300]
    b = _backup()
    b.apply(cfg(advert_interval=2.0), now=2.0)
    assert b.pop_events() == []
    assert b.next_deadline() == pytest.approx(2.0 + master_down_interval(2, 100, 200))
    assert b.state is VrrpState.BACKUP


def test_vip_change_on_the_master_adds_removes_and_announces() -> None:
    r = _master()
    r.apply(cfg(vips=(VIP2,)), now=1.0)
    events = r.pop_events()
    assert events == [
        RemoveAddresses(instance="VI_1", interface="eth0", addresses=(VIP,)),
        AddAddresses(instance="VI_1", interface="eth0", addresses=(VIP2,), accept=True),
        AnnounceAddresses(
            instance="VI_1", interface="eth0", addresses=(VIP2,), repeat=5, interval=0.0
        ),
    ]
    assert r.state is VrrpState.MASTER
    r.handle_timer(now=r.next_deadline() or 0.0)
    advert = next(e for e in r.pop_events() if isinstance(e, SendAdvertisement))
    assert advert.advertisement.addresses == (VIP2.ip,)
    # adding one keeps the other in place
    r.apply(cfg(vips=(VIP2, VIP)), now=2.0)
    assert [type(e) for e in r.pop_events()] == [AddAddresses, AnnounceAddresses]


def test_vip_change_on_a_backup_is_only_recorded() -> None:
    r = _backup()
    r.apply(cfg(vips=(VIP2,)), now=2.0)
    assert r.pop_events() == []
    assert r.policy_for(IPv4Address("10.200.0.9")).addresses == frozenset({VIP2.ip})
    r.handle_timer(now=r.next_deadline() or 0.0)
    events = r.pop_events()
    added = [e for e in events if isinstance(e, AddAddresses)]
    assert [a.addresses for a in added] == [(VIP2,)]


def test_nopreempt_and_preempt_delay_take_effect() -> None:
    r = _backup(priority=150)
    deadline = r.next_deadline()
    r.receive_advertisement(adv(100), src=PEER, now=2.0)  # preempting: discarded
    assert r.next_deadline() == deadline
    r.apply(cfg(priority=150, nopreempt=True), now=2.0)
    r.receive_advertisement(adv(100), src=PEER, now=2.5)
    assert r.next_deadline() == pytest.approx(2.5 + master_down_interval(2, 150, 100))
    r.apply(cfg(priority=150, preempt_delay=5.0), now=3.0)
    r.receive_advertisement(adv(100), src=PEER, now=3.5)  # delay starts: accepted
    assert r.next_deadline() == pytest.approx(3.5 + master_down_interval(2, 150, 100))


def test_track_change_takes_effect() -> None:
    r = _master()
    r.apply(cfg(track_interfaces=(TrackInterface(name="eth1", weight=-20),)), now=1.0)
    assert r.pop_events() == []
    r.set_track(TrackKind.INTERFACE, "eth1", False, now=1.2)
    assert r.pop_events() == [PriorityChanged(instance="VI_1", old=100, new=80)]
    # weight 0 and the object is down: RFC-less keepalived FAULT (spec §6.4)
    r.apply(cfg(track_interfaces=(TrackInterface(name="eth1"),)), now=1.5)
    events = r.pop_events()
    assert sent(events) == [0, 0]
    assert r.state is VrrpState.FAULT
    r.apply(cfg(), now=2.0)
    assert r.state is VrrpState.BACKUP


def test_auth_and_version_change_in_the_next_advert() -> None:
    r = _master()
    r.apply(cfg(auth_type=AuthType.PASS, auth_pass=b"secret"), now=0.5)
    assert r.pop_events() == []
    r.handle_timer(now=r.next_deadline() or 0.0)
    advert = next(e for e in r.pop_events() if isinstance(e, SendAdvertisement)).advertisement
    assert advert.auth_type is AuthType.PASS and advert.auth_data == b"secret\0\0"
    r.apply(cfg(version=3), now=r.next_deadline() or 0.0)
    r.handle_timer(now=r.next_deadline() or 0.0)
    advert = next(e for e in r.pop_events() if isinstance(e, SendAdvertisement)).advertisement
    assert advert.version == 3 and advert.auth_type is AuthType.NONE


def test_identity_change_is_refused() -> None:
    r = _master()
    for other in (cfg(vrid=52), cfg(interface="eth1")):
        assert not r.same_identity(other)
        with pytest.raises(StateError):
            r.apply(other, now=1.0)
    assert r.pop_events() == []


def test_sync_group_rebuilt_around_the_same_routers_keeps_states() -> None:
    a = _master()
    b = VirtualRouter(replace(cfg(), name="VI_2", vrid=52), primary_address=ME)
    b.start(now=0.0)
    b.pop_events()
    group = SyncGroupCore(SyncGroup(name="G", members=("VI_1", "VI_2")), (a, b))
    group.dissolve()
    rebuilt = SyncGroupCore(SyncGroup(name="G", members=("VI_1", "VI_2")), (a, b))
    assert a.state is VrrpState.MASTER and b.state is VrrpState.BACKUP
    assert a.pop_events() == [] and b.pop_events() == []
    # the rebuilt group works: a member pulled to BACKUP pulls the others
    a.receive_advertisement(adv(200), src=PEER, now=1.0)
    assert a.state is VrrpState.BACKUP
    assert [e.group for e in rebuilt.pop_events()] == ["G"]
