"""Text forms of server keys: the API's path segments, the CLI's arguments, the state file."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hactl.api.model import (
    AddressError,
    Override,
    OverrideKind,
    format_rs,
    format_vs,
    parse_rs,
    parse_vs,
)
from hactl.ipvs.model import AF_INET6, IpProto, ServiceKey

V4 = ipaddress.ip_address("10.0.0.1")
V6 = ipaddress.ip_address("2001:db8::1")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("tcp:10.0.0.1:80", ServiceKey.for_address(IpProto.TCP, V4, 80)),
        ("udp:[2001:db8::1]:53", ServiceKey.for_address(IpProto.UDP, V6, 53)),
        ("sctp:10.0.0.1:9", ServiceKey.for_address(IpProto.SCTP, V4, 9)),
        ("fwm:12", ServiceKey.for_fwmark(12)),
        ("fwm6:12", ServiceKey.for_fwmark(12, family=AF_INET6)),
    ],
)
def test_vs_round_trip(text: str, key: ServiceKey) -> None:
    assert parse_vs(text) == key
    assert format_vs(key) == text


def test_cli_form_defaults_to_tcp() -> None:
    assert parse_vs("10.0.0.1:80", default_protocol=IpProto.TCP) == parse_vs("tcp:10.0.0.1:80")
    assert parse_vs("UDP:10.0.0.1:53", default_protocol=IpProto.TCP).protocol is IpProto.UDP
    assert parse_vs("[2001:db8::1]:80", default_protocol=IpProto.TCP).addr == V6


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.1:80", "expected tcp|udp|sctp"),
        ("tcp:10.0.0.1", "expected ADDRESS:PORT"),
        ("tcp:10.0.0.1:http", "port must be a number"),
        ("tcp:10.0.0.1:70000", "port must be a number"),
        ("tcp:host:80", "is not an IP address"),
        ("tcp:2001:db8::1:80", "[ADDRESS]:PORT"),
        ("tcp:[2001:db8::1]80", "expected [IPv6]:PORT"),
        ("fwm:0", "fwmark must be"),
        ("fwm:x", "fwmark must be"),
    ],
)
def test_vs_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(AddressError, match=message.replace("[", r"\[").replace("|", r"\|")):
        parse_vs(text)


def test_rs_forms() -> None:
    assert parse_rs("10.0.1.2:8080") == (ipaddress.ip_address("10.0.1.2"), 8080)
    assert format_rs((V6, 443)) == "[2001:db8::1]:443"
    with pytest.raises(AddressError):
        parse_rs("10.0.1.2")


@given(st.ip_addresses(), st.integers(0, 65535), st.sampled_from(list(IpProto)[1:]))
def test_round_trip_property(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int,
                             proto: IpProto) -> None:
    key = ServiceKey.for_address(proto, addr, port)
    assert parse_vs(format_vs(key)) == key
    assert parse_rs(format_rs((addr, port))) == (addr, port)


def test_override_invariants() -> None:
    assert Override.from_json({"kind": "weight", "weight": 3}).weight == 3
    with pytest.raises(ValueError):
        Override(kind=OverrideKind.WEIGHT)
    with pytest.raises(ValueError):
        Override(kind=OverrideKind.DRAIN, weight=1)
    with pytest.raises(ValueError):
        Override(kind=OverrideKind.WEIGHT, weight=70000)
    with pytest.raises(ValueError):
        Override.from_json({"kind": "weight", "weight": True})
    with pytest.raises(ValueError):
        Override.from_json({"kind": "nuke"})
