"""VirtualServerHealth: pool, quorum/hysteresis, sorry server, ha_suspend, notify, omega."""

from __future__ import annotations

import dataclasses
import ipaddress
import random
from typing import Any

import pytest

from hactl.checks.events import (
    CheckEvent,
    DesiredChanged,
    HealthChanged,
    ProbeResult,
    QuorumChanged,
    RunScript,
    StartProbe,
    apply_views,
)
from hactl.checks.model import (
    ConnectOptions,
    RealServerSpec,
    ScriptSpec,
    SorryServerSpec,
    TcpCheck,
    VirtualServerSpec,
)
from hactl.checks.vserver import VirtualServerHealth
from hactl.errors import StateError
from hactl.ipvs.model import (
    Destination,
    FwdMethod,
    IpProto,
    IpvsTable,
    ServiceKey,
    VirtualService,
)

VS = ServiceKey.for_address(IpProto.TCP, ipaddress.ip_address("10.0.0.1"), 80)
OK = ProbeResult(True, "ok")
FAIL = ProbeResult(False, "refused")
CHECK = TcpCheck(delay_loop=10.0, warmup=0.0, retry=0, connect=ConnectOptions(connect_timeout=1.0))


def ip(n: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(f"192.168.0.{n}")


def script(name: str) -> ScriptSpec:
    return ScriptSpec(argv=(f"/usr/local/bin/{name}", "arg"))


def rs(n: int, *, weight: int = 1, **kw: object) -> RealServerSpec:
    kw.setdefault("checks", (CHECK,))
    return RealServerSpec(addr=ip(n), port=80, weight=weight, **kw)  # type: ignore[arg-type]


def make(*servers: RealServerSpec, master: bool = True, **kw: object) -> VirtualServerHealth:
    spec = VirtualServerSpec(key=VS, real_servers=servers, **kw)  # type: ignore[arg-type]
    return VirtualServerHealth(spec, rng=random.Random(1), now=0.0, master=master)


def weights(v: VirtualServerHealth) -> dict[int, int]:
    return {int(str(d.addr).rsplit(".", 1)[1]): d.weight for d in v.view.destinations}


def feed(v: VirtualServerHealth, now: float, results: dict[int, ProbeResult]) -> list[CheckEvent]:
    """Start every due probe at `now`, answer the listed servers as told and the others
    with their current checker state (no change), and return the events but StartProbe."""
    v.handle_timer(now=now)
    starts = [e for e in v.pop_events() if isinstance(e, StartProbe)]
    for s in starts:
        n = int(str(s.check.rs.addr).rsplit(".", 1)[1])
        same = OK if v.tracker(s.check.rs).checker_up(s.check) else FAIL
        v.record_result(s.check, results.get(n, same), now=now)
    return [e for e in v.pop_events() if not isinstance(e, StartProbe)]


def of(events: list[CheckEvent], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


class TestPool:
    def test_failed_server_is_removed_and_restored(self) -> None:
        v = make(rs(1, weight=3), rs(2))
        initial = v.pop_events()
        assert of(initial, DesiredChanged) == [DesiredChanged(v.view)]
        assert weights(v) == {1: 3, 2: 1}
        events = feed(v, 0.0, {1: FAIL, 2: OK})
        assert weights(v) == {2: 1}
        assert of(events, DesiredChanged) == [DesiredChanged(v.view)]
        feed(v, 10.0, {1: OK, 2: OK})
        assert weights(v) == {1: 3, 2: 1}

    def test_inhibit_on_failure_quiesces(self) -> None:
        v = make(rs(1, weight=3, inhibit_on_failure=True), rs(2))
        feed(v, 0.0, {1: FAIL, 2: OK})
        assert weights(v) == {1: 0, 2: 1}
        feed(v, 10.0, {1: OK})
        assert weights(v) == {1: 3, 2: 1}

    def test_view_maps_onto_the_ipvs_service(self) -> None:
        v = make(rs(1, weight=2, fwd=FwdMethod.DROUTE, u_threshold=5))
        svc = v.view.apply_to(VirtualService(key=VS, scheduler="rr"))
        assert svc.scheduler == "rr"
        assert svc.destinations == (
            Destination(addr=ip(1), port=80, weight=2, fwd=FwdMethod.DROUTE, u_threshold=5),
        )
        other = ServiceKey.for_address(IpProto.TCP, ip(9), 80)
        with pytest.raises(ValueError):
            v.view.apply_to(VirtualService(key=other))

    def test_views_fill_a_configured_table(self) -> None:
        v = make(rs(1), rs(2))
        feed(v, 0.0, {1: FAIL, 2: OK})
        other = VirtualService(key=ServiceKey.for_address(IpProto.UDP, ip(9), 53),
                               destinations=(Destination(addr=ip(9), port=53),))
        table = IpvsTable((VirtualService(key=VS, scheduler="wrr"), other))
        desired = apply_views(table, {VS: v.view})
        assert desired.services[1] is other
        assert desired.services[0].scheduler == "wrr"
        assert [d.addr for d in desired.services[0].destinations] == [ip(2)]

    def test_alpha_servers_start_out_of_the_pool(self) -> None:
        alpha = dataclasses.replace(CHECK, alpha=True)
        v = make(rs(1, checks=(alpha,)), rs(2, checks=(alpha,), inhibit_on_failure=True))
        assert weights(v) == {2: 0}
        assert not v.quorum_up
        feed(v, 0.0, {1: OK})
        assert weights(v) == {1: 1, 2: 0} and v.quorum_up


class TestNotify:
    def test_notify_scripts_on_transitions(self) -> None:
        v = make(rs(1, notify_up=script("up"), notify_down=script("down")), rs(2))
        v.pop_events()
        events = feed(v, 0.0, {1: FAIL, 2: OK})
        assert of(events, RunScript) == [
            RunScript(script("down"), "notify_down", "192.168.0.1:80")
        ]
        events = feed(v, 10.0, {1: OK})
        assert of(events, RunScript) == [RunScript(script("up"), "notify_up", "192.168.0.1:80")]

    def test_alpha_first_failure_runs_notify_down(self) -> None:
        alpha = dataclasses.replace(CHECK, alpha=True, retry=3)
        v = make(rs(1, checks=(alpha,), notify_down=script("down")))
        v.pop_events()
        events = feed(v, 0.0, {1: FAIL})
        assert of(events, HealthChanged)[0].initial
        assert of(events, RunScript) == [
            RunScript(script("down"), "notify_down", "192.168.0.1:80")
        ]
        assert of(events, DesiredChanged) == []
        assert of(feed(v, 10.0, {1: FAIL}), RunScript) == []


class TestQuorum:
    def test_quorum_with_hysteresis(self) -> None:
        """quorum 4, hysteresis 1: lost below 3, regained at 5."""
        v = make(*(rs(n, weight=1) for n in range(1, 7)), quorum=4, hysteresis=1,
                 quorum_up=script("qup"), quorum_down=script("qdown"))
        initial = v.pop_events()
        assert of(initial, QuorumChanged) == [QuorumChanged(VS, True, 6, 5, initial=True)]
        assert of(initial, RunScript) == []
        results = {n: OK for n in range(1, 7)}
        results[1] = results[2] = results[3] = FAIL
        events = feed(v, 0.0, results)  # live weight 3: not below 3
        assert v.quorum_up and of(events, QuorumChanged) == []
        events = feed(v, 10.0, {4: FAIL})  # live 2 < 4 - 1
        assert of(events, QuorumChanged) == [QuorumChanged(VS, False, 2, 3)]
        assert of(events, RunScript) == [RunScript(script("qdown"), "quorum_down", "10.0.0.1:80")]
        events = feed(v, 20.0, {1: OK, 2: OK})  # live 4: not yet 4 + 1
        assert not v.quorum_up and of(events, QuorumChanged) == []
        events = feed(v, 30.0, {3: OK})  # live 5
        assert of(events, QuorumChanged) == [QuorumChanged(VS, True, 5, 5)]
        assert of(events, RunScript) == [RunScript(script("qup"), "quorum_up", "10.0.0.1:80")]

    def test_quorum_weighs_effective_weights(self) -> None:
        v = make(rs(1, weight=5), rs(2, weight=1), quorum=5)
        feed(v, 0.0, {1: FAIL, 2: OK})
        assert not v.quorum_up
        # without a sorry server the remaining servers stay in the pool
        assert weights(v) == {2: 1}


class TestSorryServer:
    SORRY = SorryServerSpec(addr=ip(99), port=80, weight=7)

    def test_sorry_server_replaces_the_pool_when_quorum_is_lost(self) -> None:
        v = make(rs(1), rs(2, inhibit_on_failure=True), quorum=2, sorry_server=self.SORRY)
        assert weights(v) == {1: 1, 2: 1}
        feed(v, 0.0, {1: FAIL, 2: OK})
        # quorum lost: the alive server 2 is taken out (quiesced, it has inhibit)
        assert weights(v) == {2: 0, 99: 7}
        assert v.view.sorry_active
        feed(v, 10.0, {1: OK})
        assert weights(v) == {1: 1, 2: 1}
        assert not v.view.sorry_active

    def test_sorry_server_inhibit_keeps_it_at_weight_zero(self) -> None:
        sorry = dataclasses.replace(self.SORRY, inhibit=True)
        v = make(rs(1), sorry_server=sorry)
        assert weights(v) == {1: 1, 99: 0}
        feed(v, 0.0, {1: FAIL})
        assert weights(v) == {99: 7}

    def test_start_without_quorum_uses_sorry_and_runs_quorum_down(self) -> None:
        alpha = dataclasses.replace(CHECK, alpha=True)
        v = make(rs(1, checks=(alpha,)), sorry_server=self.SORRY, quorum_down=script("qd"))
        events = v.pop_events()
        assert of(events, RunScript) == [RunScript(script("qd"), "quorum_down", "10.0.0.1:80")]
        assert weights(v) == {99: 7}

    def test_start_without_quorum_and_no_sorry_runs_no_script(self) -> None:
        alpha = dataclasses.replace(CHECK, alpha=True)
        v = make(rs(1, checks=(alpha,)), quorum_down=script("qd"))
        assert of(v.pop_events(), RunScript) == []


class TestHaSuspend:
    def test_no_probes_while_not_master(self) -> None:
        v = make(rs(1), rs(2), ha_suspend=True, master=False)
        assert v.next_deadline() is None
        v.handle_timer(now=100.0)
        assert of(v.pop_events(), StartProbe) == []
        v.set_master(True, now=100.0)
        assert v.next_deadline() == 100.0  # warmup 0
        v.handle_timer(now=100.0)
        assert len(of(v.pop_events(), StartProbe)) == 2
        v.set_master(False, now=101.0)
        assert v.next_deadline() is None

    def test_without_ha_suspend_mastership_does_not_matter(self) -> None:
        v = make(rs(1), master=False)
        assert v.next_deadline() == 0.0
        v.set_master(True, now=0.0)
        v.set_master(False, now=0.0)
        assert v.next_deadline() == 0.0


class TestShutdownAndReload:
    def test_omega_runs_down_scripts_on_shutdown(self) -> None:
        v = make(rs(1, notify_down=script("d1")), rs(2, notify_down=script("d2")),
                 omega=True, quorum_down=script("qd"))
        feed(v, 0.0, {2: FAIL})
        v.pop_events()
        v.shutdown()
        assert v.pop_events() == [
            RunScript(script("d1"), "notify_down", "192.168.0.1:80", stopping=True),
            RunScript(script("qd"), "quorum_down", "10.0.0.1:80", stopping=True),
        ]
        assert v.next_deadline() is None

    def test_without_omega_shutdown_is_silent(self) -> None:
        v = make(rs(1, notify_down=script("d1")), quorum_down=script("qd"))
        v.pop_events()
        v.shutdown()
        assert v.pop_events() == []

    def test_reload_keeps_health_by_key(self) -> None:
        v = make(rs(1), rs(2))
        feed(v, 0.0, {1: FAIL, 2: OK})
        assert weights(v) == {2: 1}
        new = VirtualServerSpec(key=VS, real_servers=(rs(1, weight=4), rs(3)), quorum=1)
        v.apply(new, now=5.0)
        # 1 is still down (its state survived), 2 left, 3 is new and presumed up
        assert weights(v) == {3: 1}
        assert of(v.pop_events(), DesiredChanged)
        feed(v, 10.0, {1: OK, 3: OK})
        assert weights(v) == {1: 4, 3: 1}

    def test_reload_can_change_quorum(self) -> None:
        v = make(rs(1), rs(2), quorum=1, quorum_down=script("qd"))
        v.pop_events()
        v.apply(dataclasses.replace(v.spec, quorum=5), now=1.0)
        events = v.pop_events()
        assert of(events, QuorumChanged) == [QuorumChanged(VS, False, 2, 5)]
        assert of(events, RunScript) == [RunScript(script("qd"), "quorum_down", "10.0.0.1:80")]

    def test_apply_other_vs_is_a_bug(self) -> None:
        v = make(rs(1))
        other = ServiceKey.for_address(IpProto.TCP, ip(9), 80)
        with pytest.raises(StateError):
            v.apply(VirtualServerSpec(key=other), now=0.0)

    def test_many_servers_schedule_cheaply(self) -> None:
        spec = VirtualServerSpec(
            key=VS,
            real_servers=tuple(
                RealServerSpec(addr=ipaddress.IPv4Address(0x0A000000 + i), port=80,
                               checks=(dataclasses.replace(CHECK, warmup=10.0),))
                for i in range(2000)
            ),
        )
        v = VirtualServerHealth(spec, rng=random.Random(3), now=0.0)
        started = 0
        now = 0.0
        while now < 10.0:
            nd = v.next_deadline()
            assert nd is not None
            now = nd
            v.handle_timer(now=now)
            for e in v.pop_events():
                if isinstance(e, StartProbe):
                    started += 1
                    assert e.scheduled_at <= now
                    v.record_result(e.check, OK, now=now)
        assert started >= 2000
