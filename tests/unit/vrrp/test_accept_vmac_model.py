"""Accept mode and VMAC in the pure parts: the model's derived names, the router's effects,
the nft rule set text, and the configuration keywords through to the runtime model."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv6Interface

import pytest

from hactl.config import parse_text
from hactl.config.fmt import format_config
from hactl.derive import derive
from hactl.errors import ConfigErrors
from hactl.vrrp.events import AddAddresses, AnnounceAddresses, RemoveAddresses
from hactl.vrrp.firewall import ruleset
from hactl.vrrp.model import Family, InitialState, UnicastPeer, VrrpInstance
from hactl.vrrp.router import VirtualRouter
from hactl.vrrp.vmac import vmac_address

VIP = IPv4Interface("10.200.0.100/24")
ME = IPv4Address("10.200.0.1")


def cfg(**kw: object) -> VrrpInstance:
    base: dict[str, object] = {"name": "VI_1", "interface": "eth0", "vrid": 51, "vips": (VIP,)}
    base.update(kw)
    return VrrpInstance(**base)  # type: ignore[arg-type]


def test_vmac_address_is_the_rfc_virtual_router_mac() -> None:
    assert vmac_address(51, Family.INET) == "00:00:5e:00:01:33"
    assert vmac_address(1, Family.INET6) == "00:00:5e:00:02:01"
    assert vmac_address(255, Family.INET) == "00:00:5e:00:01:ff"
    with pytest.raises(ValueError):
        vmac_address(0, Family.INET)


@pytest.mark.parametrize(
    ("kw", "vip_if", "advert_if"),
    [
        ({}, "eth0", "eth0"),
        ({"use_vmac": True}, "vrrp.51", "vrrp.51"),
        ({"use_vmac": True, "vmac_name": "vip51"}, "vip51", "vip51"),
        # unicast adverts are addressed to the base interface's MAC: they stay on it
        (
            {"use_vmac": True, "unicast_peers": (UnicastPeer(address=IPv4Address("10.0.0.2")),)},
            "vrrp.51",
            "eth0",
        ),
        ({"vmac_name": "ignored"}, "eth0", "eth0"),  # a name without use_vmac changes nothing
    ],
)
def test_interfaces(kw: dict[str, object], vip_if: str, advert_if: str) -> None:
    inst = cfg(**kw)
    assert (inst.vip_interface, inst.advert_interface) == (vip_if, advert_if)


def test_vmac_name_length_is_checked() -> None:
    with pytest.raises(ValueError, match=r"1\.\.15"):
        cfg(use_vmac=True, vmac_name="a-very-long-name-x")


@pytest.mark.parametrize(
    ("priority", "accept", "accepts"),
    [(100, True, True), (100, False, False), (255, False, True), (255, True, True)],
)
def test_accept_mode(priority: int, accept: bool, accepts: bool) -> None:
    # RFC 5798 §6.4.3: the owner always accepts; keepalived's default is accept
    assert cfg(priority=priority, accept=accept).accepts is accepts


def _master(inst: VrrpInstance) -> VirtualRouter:
    router = VirtualRouter(inst, primary_address=ME)
    router.start(now=0.0)
    router.pop_events()
    router.handle_timer(now=10.0)
    return router


def test_router_asks_for_blocked_vips_on_the_vmac() -> None:
    router = _master(cfg(accept=False, use_vmac=True))
    events = router.pop_events()
    (add,) = [e for e in events if isinstance(e, AddAddresses)]
    assert (add.interface, add.addresses, add.accept) == ("vrrp.51", (VIP,), False)
    (announce,) = [e for e in events if isinstance(e, AnnounceAddresses)]
    assert announce.interface == "vrrp.51"  # GARPs leave with the virtual MAC
    router.shutdown(now=11.0)
    (remove,) = [e for e in router.pop_events() if isinstance(e, RemoveAddresses)]
    assert remove.interface == "vrrp.51"


def test_owner_with_no_accept_still_accepts() -> None:
    router = VirtualRouter(
        cfg(priority=255, accept=False, state=InitialState.MASTER), primary_address=ME
    )
    router.start(now=0.0)
    (add,) = [e for e in router.pop_events() if isinstance(e, AddAddresses)]
    assert add.accept


def test_changing_the_vmac_is_a_new_identity() -> None:
    router = VirtualRouter(cfg(), primary_address=ME)
    assert router.same_identity(cfg(priority=120))
    assert not router.same_identity(cfg(use_vmac=True))
    vmac = VirtualRouter(cfg(use_vmac=True), primary_address=ME)
    assert not vmac.same_identity(cfg(use_vmac=True, vmac_name="other"))


def test_ruleset_drops_both_directions_and_spares_neighbour_discovery() -> None:
    text = ruleset("t")
    assert "table ip t {" in text and "table ip6 t {" in text
    for rule in ("ip daddr @vips drop", "ip saddr @vips drop", "ip6 daddr @vips drop"):
        assert rule in text
    assert text.count("nd-neighbor-solicit, nd-neighbor-advert } accept") == 2
    assert text.count("priority filter - 1; policy accept;") == 4
    assert 'meta oifkind "macvlan" dup to ip daddr device oif map @vmacs drop' in text


_CONF = """vrrp_instance VI_1 {{
    interface eth0
    virtual_router_id 51
    priority 100
    {extra}
    virtual_ipaddress {{
        10.200.0.100/24
    }}
}}
"""


@pytest.mark.parametrize(
    ("extra", "use_vmac", "name", "mac", "accept"),
    [
        ("", False, None, None, True),
        ("no_accept", False, None, None, False),
        ("use_vmac", True, None, None, True),
        ("use_vmac vip51", True, "vip51", None, True),
        ("use_vmac vip51 02:00:5E:00:00:01", True, "vip51", "02:00:5e:00:00:01", True),
    ],
)
def test_configuration_to_runtime(
    extra: str, use_vmac: bool, name: str | None, mac: str | None, accept: bool
) -> None:
    loaded = parse_text(_CONF.format(extra=extra))
    assert [w for w in loaded.warnings if w.code == "not-implemented"] == []
    derived = derive(loaded.config)
    assert derived.vrrp is not None
    (inst,) = derived.vrrp.instances
    assert (inst.use_vmac, inst.vmac_name, inst.vmac_mac, inst.accept) == (
        use_vmac,
        name,
        mac,
        accept,
    )
    # `hactl fmt` writes it back as it was read
    again = parse_text(format_config(loaded.config))
    assert again.config.vrrp_instances[0].use_vmac == loaded.config.vrrp_instances[0].use_vmac


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("use_vmac a-very-long-name-x", "not 1..15 characters"),
        ("use_vmac vip51 notamac", "not a MAC address"),
        ("use_vmac a b c", "at most 2 arguments"),
    ],
)
def test_configuration_errors(extra: str, message: str) -> None:
    with pytest.raises(ConfigErrors, match=message):
        parse_text(_CONF.format(extra=extra))


def test_ipv6_vmac_address() -> None:
    inst = cfg(vips=(IPv6Interface("fd00::1/64"),), version=3, use_vmac=True)
    assert inst.family is Family.INET6
    assert vmac_address(inst.vrid, inst.family) == "00:00:5e:00:02:33"
