"""Local invariants of the VRRP configuration slice and the runner's JSON mapping."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv6Interface

import pytest

from hactl.vrrp.__main__ import config_from_json
from hactl.vrrp.events import VrrpState
from hactl.vrrp.model import (
    AuthType,
    Family,
    InitialState,
    NotifyScripts,
    SyncGroup,
    TrackScript,
    UnicastPeer,
    VrrpConfig,
    VrrpInstance,
    VrrpScript,
)
from hactl.vrrp.notify import fifo_line, script_commands


def inst(**kw: object) -> VrrpInstance:
    fields: dict[str, object] = {"name": "VI_1", "interface": "eth0", "vrid": 51}
    fields.update(kw)
    return VrrpInstance(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kw",
    [
        {"vrid": 0},
        {"vrid": 256},
        {"priority": 0},
        {"version": 4},
        {"advert_interval": 0.5},  # v2 is whole seconds
        {"version": 3, "advert_interval": 0.005},
        {"version": 3, "advert_interval": 41.0},
        {"vips": (IPv6Interface("fd00::1/64"),)},  # IPv6 needs v3
        {"vips": (IPv4Interface("10.0.0.1/24"), IPv6Interface("fd00::1/64")), "version": 3},
        {"version": 3, "auth_type": AuthType.PASS, "auth_pass": b"x"},
        {"auth_type": AuthType.PASS},
        {"auth_type": AuthType.PASS, "auth_pass": b"123456789"},
        {"nopreempt": True, "state": InitialState.MASTER},
        {"preempt_delay": 1001},
    ],
)
def test_invalid_instances(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        inst(**kw)


def test_unicast_peer_ttl_range() -> None:
    with pytest.raises(ValueError):
        UnicastPeer(address=IPv4Address("10.0.0.2"), min_ttl=9, max_ttl=3)


def test_derived_properties() -> None:
    v6 = inst(version=3, vips=(IPv6Interface("fe80::1:51/64"),))
    assert v6.family is Family.INET6 and not v6.unicast
    pw = inst(auth_type=AuthType.PASS, auth_pass=b"secret")
    assert pw.auth_key == b"secret\0\0"
    assert inst(priority=255).owner
    assert inst().key == ("vrrp", "VI_1")


def test_config_cross_checks() -> None:
    with pytest.raises(ValueError):
        VrrpConfig(instances=(inst(), inst()))
    with pytest.raises(ValueError):
        VrrpConfig(instances=(inst(),), sync_groups=(SyncGroup(name="G", members=("nope",)),))
    with pytest.raises(ValueError):
        VrrpConfig(instances=(inst(track_scripts=(TrackScript(name="missing"),)),))
    with pytest.raises(ValueError):
        VrrpScript(name="s", command=())


def test_config_from_json() -> None:
    config = config_from_json(
        {
            "instances": [
                {
                    "name": "VI_1",
                    "interface": "eth0",
                    "vrid": 51,
                    "priority": 150,
                    "version": 3,
                    "advert_interval": 0.1,
                    "vips": ["10.0.0.100/24"],
                    "unicast_src_ip": "10.0.0.1",
                    "unicast_peers": ["10.0.0.2"],
                    "track_scripts": [{"name": "chk", "weight": -20}],
                    "notify": {"master": ["/bin/true"]},
                }
            ],
            "scripts": [{"name": "chk", "command": ["/bin/true"], "interval": 2}],
            "sync_groups": [{"name": "G", "members": ["VI_1"]}],
        }
    )
    (i,) = config.instances
    assert i.vips == (IPv4Interface("10.0.0.100/24"),)
    assert i.unicast_peers == (UnicastPeer(address=IPv4Address("10.0.0.2")),)
    assert i.notify.master == ("/bin/true",)
    assert config.scripts[0].command == ("/bin/true",)
    with pytest.raises(ValueError):
        config_from_json({"instances": [{"name": "x", "interface": "e", "vrid": 1, "bogus": 1}]})


def test_notify_commands_and_fifo_lines() -> None:
    scripts = NotifyScripts(master=("/m", "a"), generic=("/g", "x"))
    assert script_commands(scripts, "INSTANCE", "VI_1", VrrpState.MASTER, 100) == [
        ("/m", "a"),
        ("/g", "x", "INSTANCE", "VI_1", "MASTER", "100"),
    ]
    assert script_commands(scripts, "INSTANCE", "VI_1", VrrpState.INIT, 100) == []
    assert script_commands(scripts, "GROUP", "G", VrrpState.FAULT, 0) == [
        ("/g", "x", "GROUP", "G", "FAULT", "0")
    ]
    assert fifo_line("INSTANCE", "VI_1", "MASTER", 100) == b'INSTANCE "VI_1" MASTER 100\n'
