"""Cross-object rules beyond the goldens: the exceptions keepalived documents."""

from __future__ import annotations

import pytest

from hactl import config
from hactl.errors import ConfigErrors


def codes(text: str) -> list[str]:
    try:
        config.parse_text(text)
    except ConfigErrors as exc:
        return [e.code for e in exc.errors]
    return []


def instance(name: str, vrid: int, body: str = "", iface: str = "eth0") -> str:
    return f"vrrp_instance {name} {{\n interface {iface}\n virtual_router_id {vrid}\n{body}}}\n"


def vip(addr: str) -> str:
    return f" virtual_ipaddress {{\n  {addr}\n }}\n"


def peers(*addrs: str) -> str:
    lines = "".join(f"  {a}\n" for a in addrs)
    return f" unicast_src_ip 10.9.9.9\n unicast_peer {{\n{lines} }}\n"


def test_same_vrid_on_different_interfaces_is_fine() -> None:
    assert (
        codes(instance("A", 5, vip("10.0.0.1")) + instance("B", 5, vip("10.0.0.2"), "eth1")) == []
    )


def test_same_vrid_in_different_families_is_fine() -> None:
    assert codes(instance("A", 5, vip("10.0.0.1")) + instance("B", 5, vip("2001:db8::2"))) == []


def test_same_vrid_with_disjoint_unicast_peers_is_fine() -> None:
    text = instance("A", 5, peers("10.0.0.1")) + instance("B", 5, peers("10.0.0.2"))
    assert codes(text) == []


def test_same_vrid_with_overlapping_unicast_peers_is_an_error() -> None:
    text = instance("A", 5, peers("10.0.0.1")) + instance("B", 5, peers("10.0.0.1", "10.0.0.3"))
    assert codes(text) == ["duplicate-vrid"]


def test_fractional_advert_int_needs_vrrp_v3() -> None:
    assert codes(instance("A", 5, " advert_int 0.5\n")) == ["advert-int"]
    assert codes(instance("A", 5, " advert_int 0.5\n version 3\n")) == []
    assert codes(instance("A", 5, " advert_int 0.015\n version 3\n")) == ["advert-int"]


def test_mixed_families_in_virtual_ipaddress() -> None:
    body = " virtual_ipaddress {\n  10.0.0.1\n  2001:db8::1\n }\n"
    assert codes(instance("A", 5, body)) == ["vip-family"]


def test_duplicate_names() -> None:
    script = "vrrp_script s {\n script /bin/true\n}\n"
    assert codes(script + script) == ["duplicate"]
    assert codes(instance("A", 5) + instance("A", 6)) == ["duplicate"]


def test_sync_auth_key_needs_a_sync_daemon() -> None:
    assert codes("global_defs {\n sync_auth_key 0123456789abcdef0\n}\n") == ["missing"]


def test_authentication_needs_a_password() -> None:
    assert codes(instance("A", 5, " authentication {\n  auth_type PASS\n }\n")) == ["missing"]


@pytest.mark.parametrize(
    ("vs", "rs", "expected"),
    [
        ("fwmark 1", "10.1.0.1", []),  # fwmark services take no real server port
        ("10.0.0.1 0", "10.1.0.1", ["missing"]),  # port 0 (all ports) must be persistent
        ("10.0.0.1 80", "10.1.0.1", ["missing-port"]),
        ("10.0.0.1 80", "2001:db8::1 80", ["family"]),
    ],
)
def test_real_server_ports_and_families(vs: str, rs: str, expected: list[str]) -> None:
    assert codes(f"virtual_server {vs} {{\n real_server {rs} {{\n }}\n}}\n") == expected


def test_tunnelled_real_servers_may_change_family() -> None:
    text = "virtual_server 10.0.0.1 80 {\n lvs_method TUN\n real_server 2001:db8::1 80 {\n }\n}\n"
    assert codes(text) == []


def test_an_interface_missing_on_this_host_is_not_an_error() -> None:
    assert codes(instance("A", 5, vip("10.0.0.1"), "no-such-interface-here0")) == []


def test_group_services_with_ports_need_real_server_ports() -> None:
    group = "virtual_server_group G {\n 10.0.0.1 80\n}\nvirtual_server_group F {\n fwmark 3\n}\n"
    rs = " real_server 10.1.0.1 {\n }\n"
    assert codes(group + "virtual_server group G {\n" + rs + "}\n") == ["missing-port"]
    assert codes(group + "virtual_server group F {\n" + rs + "}\n") == []


def test_port_zero_persistent_service_takes_portless_real_servers() -> None:
    text = "virtual_server 10.0.0.1 0 {\n persistence_timeout 60\n real_server 10.1.0.1 {\n }\n}\n"
    assert codes(text) == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (" protocol TCP\n ops\n", ["conflict"]),
        (" protocol UDP\n ops\n", []),
    ],
)
def test_one_packet_scheduling_needs_udp(body: str, expected: list[str]) -> None:
    text = f"virtual_server 10.0.0.1 53 {{\n{body} real_server 10.1.0.1 53 {{\n }}\n}}\n"
    assert codes(text) == expected


def test_ha_suspend_with_fwmark_is_refused() -> None:
    assert codes("virtual_server fwmark 4 {\n ha_suspend\n}\n") == ["conflict"]
