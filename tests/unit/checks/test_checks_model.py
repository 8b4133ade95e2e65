"""Runtime specs: local invariants, kind defaults and stable keys."""

from __future__ import annotations

import ipaddress

import pytest

from hactl.checks.model import (
    CheckKind,
    CheckSpec,
    ConnectOptions,
    FileCheck,
    HttpGetCheck,
    MiscCheck,
    RealServerSpec,
    ScriptSpec,
    TcpCheck,
    UdpCheck,
    UrlSpec,
    VirtualServerSpec,
)
from hactl.ipvs.model import IpProto, ServiceKey

VS = ServiceKey.for_address(IpProto.TCP, ipaddress.ip_address("10.0.0.1"), 80)
RS = ipaddress.ip_address("192.168.1.1")


def test_the_base_spec_is_abstract() -> None:
    with pytest.raises(TypeError):
        CheckSpec()
    assert TcpCheck().kind is CheckKind.TCP_CHECK


@pytest.mark.parametrize(
    "build",
    [
        lambda: TcpCheck(delay_loop=0),
        lambda: TcpCheck(retry=-1),
        lambda: TcpCheck(rise=0),
        lambda: TcpCheck(warmup=-1.0),
        lambda: ConnectOptions(connect_timeout=0),
        lambda: ConnectOptions(connect_port=70000),
        lambda: UrlSpec(path="health"),
        lambda: UrlSpec(digest="xyz"),
        lambda: UrlSpec(status_codes=((300, 200),)),
        lambda: HttpGetCheck(http_protocol="2"),
        lambda: HttpGetCheck(method="get"),
        lambda: HttpGetCheck(headers=(("X-A", "b\r\nInjected: 1"),)),
        lambda: HttpGetCheck(urls=()),
        lambda: ScriptSpec(argv=()),
        lambda: RealServerSpec(addr=RS, port=80, weight=-1),
        lambda: VirtualServerSpec(key=VS, quorum=-1),
        lambda: VirtualServerSpec(key=VS, real_servers=(RealServerSpec(addr=RS, port=80),
                                                        RealServerSpec(addr=RS, port=80))),
    ],
)
def test_invalid_values_are_refused(build) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        build()


def test_url_details() -> None:
    url = UrlSpec(digest="9B3A0C85A887A256D6939DA88AABD8CD", status_codes=((200, 204), (503, 503)))
    assert url.digest == "9b3a0c85a887a256d6939da88aabd8cd"
    assert [url.status_ok(s) for s in (200, 204, 205, 503)] == [True, True, False, True]


def test_timeouts_per_kind() -> None:
    assert TcpCheck(connect=ConnectOptions(connect_timeout=2.0)).timeout == 2.0
    misc = MiscCheck(script=ScriptSpec(argv=("/x",)), delay_loop=9.0)
    assert misc.timeout == 9.0  # misc_timeout defaults to delay_loop
    assert MiscCheck(script=ScriptSpec(argv=("/x",)), misc_timeout=2.0).timeout == 2.0
    assert UdpCheck(connect=ConnectOptions(connect_timeout=2.0)).timeout == 2.5
    assert UdpCheck(connect=ConnectOptions(connect_timeout=2.0), require_reply=True).timeout == 2.0
    assert FileCheck(path="/f").retry == 0


def test_check_keys_are_stable_and_distinct() -> None:
    other_port = ConnectOptions(connect_port=8080)
    rs = RealServerSpec(addr=RS, port=80, checks=(
        TcpCheck(), TcpCheck(delay_loop=3.0), TcpCheck(connect=other_port), HttpGetCheck()))
    keys = rs.check_keys(VS)
    assert len(set(keys)) == 4
    assert [(k.kind, k.target, k.ordinal) for k in keys] == [
        (CheckKind.TCP_CHECK, "", 0), (CheckKind.TCP_CHECK, "", 1),
        (CheckKind.TCP_CHECK, ":8080", 0), (CheckKind.HTTP_GET, "", 0)]
    # options other than the target do not change a key: state survives a timing change
    rs2 = RealServerSpec(addr=RS, port=80, weight=9, checks=(
        TcpCheck(delay_loop=7.0), TcpCheck(), TcpCheck(connect=other_port), HttpGetCheck()))
    assert rs2.check_keys(VS) == keys
    assert hash(keys[0]) == hash(rs2.check_keys(VS)[0])
    assert str(keys[2]) == "192.168.1.1:80/TCP_CHECK@:8080"
