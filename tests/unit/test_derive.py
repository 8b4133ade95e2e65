"""Derivation: configuration text -> runtime models, and the desired-table function."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, ip_address
from pathlib import Path

import pytest

from hactl import checks as hc
from hactl.api.model import Override, OverrideKind
from hactl.config import load, parse_text
from hactl.derive import (
    Derived,
    derive,
    desired_table,
    netmask_prefix,
    reload_changes,
    service_label,
)
from hactl.ipvs.model import (
    AF_INET6,
    IP_VS_SVC_F_SCHED1,
    IP_VS_SVC_F_SCHED2,
    Destination,
    FwdMethod,
    IpProto,
    IpvsTimeouts,
    ServiceKey,
)
from hactl.ipvs.plan import plan
from hactl.sync.model import SyncDaemonConfig
from hactl.vrrp import model as vm

REPO = Path(__file__).resolve().parents[2]


def _derive(text: str) -> Derived:
    return derive(parse_text(text).config)


VS = ServiceKey.for_address(IpProto.TCP, IPv4Address("10.0.0.1"), 80)


BASIC = """
virtual_server 10.0.0.1 80 {
    protocol TCP
    delay_loop 3
    lvs_sched wrr
    lvs_method DR
    persistence_timeout 300
    persistence_granularity 255.255.255.0
    quorum 2
    hysteresis 1
    sorry_server 10.0.9.9 80
    sorry_server_inhibit
    real_server 10.0.1.1 80 {
        weight 5
        inhibit_on_failure
        uthreshold 100
        TCP_CHECK {
            connect_timeout 2
            retry 2
        }
    }
    real_server 10.0.1.2 8080 {
        lvs_method NAT
        HTTP_GET {
            url {
                path /health
                status_code 200
            }
            url {
                path /ready
            }
        }
    }
}
"""


def test_ipvs_service_from_virtual_server() -> None:
    d = _derive(BASIC)
    (svc,) = d.table.services
    assert svc.key == VS
    assert svc.scheduler == "wrr"
    assert svc.persistence_timeout == 300.0
    assert svc.netmask == 24
    assert svc.destinations == (
        Destination(addr=IPv4Address("10.0.1.1"), port=80, weight=5, fwd=FwdMethod.DROUTE,
                    u_threshold=100),
        Destination(addr=IPv4Address("10.0.1.2"), port=8080, weight=1, fwd=FwdMethod.MASQ),
    )
    assert d.members == {VS: (VS,)}
    assert d.warnings == ()


def test_check_specs_carry_policy_and_checkers() -> None:
    (spec,) = _derive(BASIC).checks
    assert spec.key == VS
    assert (spec.quorum, spec.hysteresis) == (2, 1)
    assert spec.sorry_server == hc.SorryServerSpec(addr=IPv4Address("10.0.9.9"), port=80,
                                                   fwd=FwdMethod.DROUTE, inhibit=True)
    rs1, rs2 = spec.real_servers
    assert rs1.inhibit_on_failure and rs1.weight == 5 and rs1.fwd is FwdMethod.DROUTE
    (tcp,) = rs1.checks
    assert isinstance(tcp, hc.TcpCheck)
    assert (tcp.delay_loop, tcp.retry, tcp.connect.connect_timeout) == (3.0, 2, 2.0)
    (http,) = rs2.checks
    assert isinstance(http, hc.HttpGetCheck)
    assert [u.path for u in http.urls] == ["/health", "/ready"]
    assert http.urls[0].status_codes == ((200, 200),)
    assert http.effective_delay_before_retry == 3.0  # keepalived's HTTP_GET default


def test_desired_table_follows_health_views_and_overrides() -> None:
    d = _derive(BASIC)
    rs1 = Destination(addr=IPv4Address("10.0.1.1"), port=80, weight=0, fwd=FwdMethod.DROUTE,
                      u_threshold=100)
    view = hc.VirtualServerView(key=VS, destinations=(rs1,), quorum_up=True, sorry_active=False)
    table = desired_table(d, {VS: view})
    assert table.services[0].destinations == (rs1,)
    assert table.services[0].scheduler == "wrr"  # service attributes stay configured
    up = replace(rs1, weight=5)
    healthy = hc.VirtualServerView(key=VS, destinations=(up,), quorum_up=True,
                                   sorry_active=False)
    weight = Override(kind=OverrideKind.WEIGHT, weight=7)
    overridden = desired_table(d, {VS: healthy}, {(VS, (rs1.addr, 80)): weight})
    assert overridden.services[0].destinations[0].weight == 7
    # an inhibited (weight 0) server stays at 0 under a weight override
    assert desired_table(d, {VS: view}, {(VS, (rs1.addr, 80)): weight}) == table
    drained = desired_table(d, {VS: healthy},
                            {(VS, (rs1.addr, 80)): Override(kind=OverrideKind.DRAIN)})
    assert drained.services[0].destinations == (replace(up, weight=0),)
    disabled = desired_table(d, {VS: healthy},
                             {(VS, (rs1.addr, 80)): Override(kind=OverrideKind.DISABLE)})
    assert disabled.services[0].destinations == ()
    # an override never resurrects a destination health removed
    gone = desired_table(d, {VS: view}, {(VS, (IPv4Address("10.0.1.2"), 8080)): weight})
    assert len(gone.services[0].destinations) == 1
    # without a view yet the configured destinations stand
    assert desired_table(d, {}).services[0].destinations == d.table.services[0].destinations


def test_real_health_core_removes_and_quiesces() -> None:
    """The derived spec drives the real core: a failed inhibit_on_failure server is
    quiesced (weight 0), a failed plain one removed; plan() turns that into two ops."""
    d = _derive(BASIC)
    (spec,) = d.checks
    spec = hc.VirtualServerSpec(key=spec.key, real_servers=spec.real_servers, quorum=1)
    import random

    core = hc.VirtualServerHealth(spec, rng=random.Random(1), now=0.0)
    now = 0.0
    while now < 60.0:  # every probe fails until both servers are out
        deadline = core.next_deadline()
        now = max(now, deadline if deadline is not None else now)
        core.handle_timer(now=now)
        for event in core.pop_events():
            if isinstance(event, hc.StartProbe):
                core.record_result(event.check, hc.ProbeResult(False, "refused"), now=now)
        if not core.view.destinations or all(x.weight == 0 for x in core.view.destinations):
            break
    desired = desired_table(d, {VS: core.view})
    dests = desired.services[0].destinations
    assert [(str(x.addr), x.weight) for x in dests] == [("10.0.1.1", 0)]
    ops = plan(desired, d.table)
    assert [type(op).__name__ for op in ops] == ["DelDest", "EditDest"]


def test_virtual_server_group_expands_and_is_checked_once() -> None:
    d = _derive("""
virtual_server_group G {
    10.0.0.1-3 80
    10.0.0.9 8080
    fwmark 7
}
virtual_server group G {
    lvs_sched rr
    protocol TCP
    real_server 10.0.1.1 80 {
        TCP_CHECK {
        }
    }
}
""")
    keys = [s.key for s in d.table.services]
    assert keys == [
        ServiceKey.for_address(IpProto.TCP, IPv4Address("10.0.0.1"), 80),
        ServiceKey.for_address(IpProto.TCP, IPv4Address("10.0.0.2"), 80),
        ServiceKey.for_address(IpProto.TCP, IPv4Address("10.0.0.3"), 80),
        ServiceKey.for_address(IpProto.TCP, IPv4Address("10.0.0.9"), 8080),
        ServiceKey.for_fwmark(7),
    ]
    (spec,) = d.checks
    assert d.members[spec.key] == tuple(keys)
    view = hc.VirtualServerView(key=spec.key, destinations=(), quorum_up=False,
                                sorry_active=False)
    assert all(s.destinations == () for s in desired_table(d, {spec.key: view}).services)


def test_fwmark_ipv6_scheduler_flags_and_ops() -> None:
    d = _derive("""
virtual_server fwmark 5 {
    ip_family inet6
    lvs_sched sh
    sh-fallback
    sh-port
    ops
    persistence_granularity 64
    persistence_timeout 60
    real_server 2001:db8::1 {
        weight 2
    }
}
""")
    (svc,) = d.table.services
    assert svc.key == ServiceKey.for_fwmark(5, family=AF_INET6)
    assert svc.sched_flags == IP_VS_SVC_F_SCHED1 | IP_VS_SVC_F_SCHED2
    assert svc.one_packet
    assert svc.netmask == 64
    assert svc.destinations[0].port == 0
    assert service_label(svc.key) == "FWM 5"


def test_netmask_prefix() -> None:
    assert netmask_prefix(None, family=2) is None
    assert netmask_prefix("255.255.0.0", family=2) == 16
    assert netmask_prefix("24", family=2) == 24
    assert netmask_prefix("48", family=AF_INET6) == 48


def test_tunables_timeouts_and_sync_from_the_example() -> None:
    d = derive(load(REPO / "etc" / "hactl.conf.example").config)
    assert d.timeouts == IpvsTimeouts(tcp=7500, tcpfin=120, udp=300)
    assert d.sync == SyncDaemonConfig(interface="eth1", instance="VI_WEB", syncid=51,
                                      auth_key=b"change-me-to-a-long-random-shared-secret")
    assert d.vrrp is not None
    inst = d.vrrp.instances[0]
    assert inst.vrid == 51 and inst.auth_type is vm.AuthType.PASS
    assert inst.vips == (IPv4Interface("192.0.2.10/24"),)
    assert inst.notify.generic == ("/etc/hactl/notify.sh",)


def test_vrrp_instance_mapping() -> None:
    d = _derive("""
vrrp_script chk {
    script "/bin/true"
    interval 2
    weight -10
}
vrrp_instance VI_1 {
    state MASTER
    interface lo
    virtual_router_id 7
    priority 150
    advert_int 1
    unicast_src_ip 127.0.0.21
    unicast_peer {
        127.0.0.22
    }
    virtual_ipaddress {
        127.0.0.100/32
    }
    track_script {
        chk
    }
    notify_master "/bin/echo master"
}
""")
    assert d.vrrp is not None
    (inst,) = d.vrrp.instances
    assert inst.state is vm.InitialState.MASTER
    assert (inst.interface, inst.vrid, inst.priority) == ("lo", 7, 150)
    assert inst.unicast_peers == (vm.UnicastPeer(address=ip_address("127.0.0.22")),)
    assert inst.notify.master == ("/bin/echo", "master")
    assert d.vrrp.scripts[0].command == ("/bin/true",) and d.vrrp.scripts[0].weight == -10
    assert inst.accept  # keepalived: accept unless no_accept


_VI = """vrrp_instance V {{
    interface lo
    virtual_router_id 1
    virtual_ipaddress {{
        {vip}
    }}
}}
"""


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("global_defs {\n vrrp_min_garp\n}\n", "vrrp_min_garp is not applied"),
        ("global_defs {\n vrrp_mcast_group4 224.0.0.19\n}\n" + _VI.format(vip="10.1.1.1"),
         "vrrp_mcast_group4/6 is not applied"),
        (_VI.format(vip="10.1.1.1/24 label lo:1"), "only the address/prefix"),
    ],
)
def test_values_not_acted_on_are_warned(snippet: str, expected: str) -> None:
    d = _derive(snippet)
    assert any(expected in w.message for w in d.warnings), d.warnings


def test_demo_config_is_a_runnable_loopback_service() -> None:
    d = derive(load(REPO / "etc" / "demo-loopback.conf").config)
    (svc,) = d.table.services
    assert svc.key.addr is not None and svc.key.addr.is_loopback
    assert 2 <= len(svc.destinations) <= 3
    assert all(x.addr.is_loopback for x in svc.destinations)
    assert d.vrrp is None and d.sync is None and d.warnings == ()
    (spec,) = d.checks
    assert all(rs.checks and rs.checks[0].delay_loop <= 2 for rs in spec.real_servers)


def test_reload_changes_is_the_keyed_difference() -> None:
    old = _derive(BASIC)
    assert reload_changes(old, old) == ()
    assert reload_changes(old, _derive(BASIC.replace("delay_loop 3", "delay_loop 5"))) == ()
    new_text = (
        BASIC.replace("weight 5", "weight 7")
        .replace("lvs_sched wrr", "lvs_sched rr")
        .replace("    real_server 10.0.1.2 8080 {", "    real_server 10.0.1.3 80 {\n"
                 "        weight 2\n    }\n    real_server 10.0.1.2 8080 {", 1)
        + "virtual_server 10.0.0.2 443 {\n    protocol TCP\n"
        "    real_server 10.0.1.1 443 {\n    }\n}\n"
        + "vrrp_instance VI_1 {\n    interface eth0\n    virtual_router_id 51\n"
        "    virtual_ipaddress {\n        10.0.0.1/24\n    }\n}\n"
    )
    changes = [(c.action, c.subject, c.detail) for c in reload_changes(old, _derive(new_text))]
    assert changes == [
        ("change", "virtual_server tcp:10.0.0.1:80", "scheduler wrr -> rr"),
        ("change", "real_server tcp:10.0.0.1:80 10.0.1.1:80", "weight 5 -> 7"),
        ("add", "real_server tcp:10.0.0.1:80 10.0.1.3:80", "weight 2"),
        ("add", "virtual_server tcp:10.0.0.2:443", "1 real server"),
        ("add", "vrrp_instance VI_1", "started (INIT, then BACKUP or MASTER)"),
    ]
    back = [(c.action, c.subject) for c in reload_changes(_derive(new_text), old)]
    assert back == [
        ("change", "virtual_server tcp:10.0.0.1:80"),
        ("change", "real_server tcp:10.0.0.1:80 10.0.1.1:80"),
        ("remove", "real_server tcp:10.0.0.1:80 10.0.1.3:80"),
        ("remove", "virtual_server tcp:10.0.0.2:443"),
        ("remove", "vrrp_instance VI_1"),
    ]


_VRRP = """vrrp_instance VI_1 {
    interface eth0
    virtual_router_id 51
    priority 100
    virtual_ipaddress {
        10.0.0.1/24
    }
}
vrrp_instance VI_2 {
    interface eth0
    virtual_router_id 52
    virtual_ipaddress {
        10.0.0.2/24
    }
}
"""


def test_reload_changes_lists_the_vrrp_changes_that_will_be_applied() -> None:
    old = _derive(BASIC + _VRRP)
    assert reload_changes(old, _derive(BASIC + _VRRP)) == ()
    new_text = BASIC + _VRRP.replace("priority 100", "priority 150\n    nopreempt").replace(
        "10.0.0.1/24", "10.0.0.1/24\n        10.0.0.3/24") + (
        "vrrp_instance VI_3 {\n    interface eth0\n    virtual_router_id 53\n"
        "    virtual_ipaddress {\n        10.0.0.9/24\n    }\n}\n"
        "vrrp_sync_group G {\n    group {\n        VI_1\n        VI_3\n    }\n}\n")
    changes = [(c.action, c.subject, c.detail) for c in reload_changes(old, _derive(new_text))]
    assert changes == [
        ("change", "vrrp_instance VI_1", "priority 100 -> 150, nopreempt False -> True, "
         "vips +10.0.0.3/24"),
        ("add", "vrrp_instance VI_3", "started (INIT, then BACKUP or MASTER)"),
        ("add", "vrrp_sync_group G", "members VI_1, VI_3"),
    ]
    moved = _derive(BASIC + _VRRP.replace("virtual_router_id 52", "virtual_router_id 60"))
    assert [(c.action, c.subject, c.detail) for c in reload_changes(old, moved)] == [
        ("change", "vrrp_instance VI_2", "replaced (leaves, then starts): vrid 52 -> 60")]
    gone = _derive(BASIC + _VRRP[:_VRRP.index("vrrp_instance VI_2")])
    assert [(c.action, c.subject, c.detail) for c in reload_changes(old, gone)] == [
        ("remove", "vrrp_instance VI_2", "leaves (priority-0 advert if master, VIPs removed)")]
