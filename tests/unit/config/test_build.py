"""What the configuration means: the model built from the good files and from snippets."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from hactl import config
from hactl.config import (
    CheckerKind,
    DnsCheck,
    FileCheck,
    FlushOnStop,
    HttpGet,
    HttpMethod,
    LvsMethod,
    LvsSched,
    MiscCheck,
    PingCheck,
    Protocol,
    ProxyProtocol,
    SchedFlag,
    SslGet,
    TcpCheck,
    TunnelCsum,
    TunnelType,
    UdpCheck,
    VrrpState,
)
from hactl.config.lints import LINTS
from hactl.errors import ConfigErrors

GOOD = Path(__file__).parent / "data" / "good"
ip = ipaddress.ip_address


def load(name: str, *, config_id: str = "lb1") -> config.Config:
    return config.load(GOOD / name, config_id=config_id).config


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        config.parse_text(text)
    return [f"{e.pos.line}:{e.pos.column}: {e.message}" for e in info.value.errors]


def warnings_of(text: str) -> list[str]:
    return [f"{w.pos.line}:{w.pos.column}: {w.code}" for w in config.parse_text(text).warnings]


# ---------------------------------------------------------------------------------------------
# The good files


def test_include_glob_relative_to_including_file() -> None:
    cfg = load("includes.conf")
    assert cfg.global_defs.router_id == "director-a"
    (inst,) = cfg.vrrp_instances
    assert inst.name == "VI_WEB"
    assert inst.virtual_ipaddress[0].address == ipaddress.ip_interface("192.0.2.10/24")
    assert inst.virtual_ipaddress[0].label == "eth0:web"
    (vs,) = cfg.virtual_servers
    assert vs.pos.path.endswith("conf.d/20-web.conf")
    assert vs.lvs_sched is LvsSched.WRR
    assert vs.lvs_method.method is LvsMethod.DR
    (rs,) = vs.real_servers
    assert rs.lvs_method.method is LvsMethod.DR  # inherited from the virtual server
    assert rs.weight == 3
    (check,) = rs.checkers
    assert isinstance(check, TcpCheck)
    assert check.connect_timeout == 2.5  # <TIMER> with a fraction


def test_variables_and_multiline_definitions() -> None:
    (vs,) = load("variables.conf").virtual_servers
    assert (vs.address, vs.port) == (ip("203.0.113.20"), 443)
    assert [(str(rs.address), rs.port, rs.weight) for rs in vs.real_servers] == [
        ("198.51.100.1", 443, 2),
        ("198.51.100.2", 443, 2),
    ]
    assert all(rs.checkers[0].connect_timeout == 3 for rs in vs.real_servers)  # type: ignore[union-attr]


def test_seq_expansion() -> None:
    cfg = load("sequence.conf")
    vips = [str(v.address.ip) for v in cfg.vrrp_instances[0].virtual_ipaddress]
    assert vips == ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4"]
    assert [str(rs.address) for rs in cfg.virtual_servers[0].real_servers] == [
        "198.51.100.10",
        "198.51.100.15",
        "198.51.100.20",
    ]


@pytest.mark.parametrize(
    ("config_id", "router_id", "priority", "src", "peers"),
    [
        ("lb1", "lb1", 200, "10.0.0.1", ["10.0.0.2"]),
        ("lb2", "lb2", 100, "10.0.0.2", ["10.0.0.1"]),
    ],
)
def test_conditional_lines_follow_the_config_id(
    config_id: str, router_id: str, priority: int, src: str, peers: list[str]
) -> None:
    cfg = load("conditional.conf", config_id=config_id)
    inst = cfg.vrrp_instances[0]
    assert cfg.global_defs.router_id == router_id
    assert inst.priority == priority
    assert str(inst.unicast_src_ip) == src
    assert [str(p.address) for p in inst.unicast_peers] == peers


def test_unicast_tracking_and_notify() -> None:
    cfg = load("unicast.conf")
    (script,) = cfg.vrrp_scripts
    assert script.script == "/usr/bin/pgrep -x haproxy"
    assert (script.interval, script.timeout, script.weight, script.rise, script.fall) == (
        0.5,
        2.0,
        -20,
        2,
        3,
    )
    (track,) = cfg.track_files
    assert track.init_file is not None and track.init_file.overwrite
    inst = cfg.vrrp_instances[0]
    assert inst.state is VrrpState.BACKUP and inst.nopreempt and inst.preempt_delay == 4.5
    assert (inst.version, inst.advert_int) == (3, 0.25)
    assert [(str(p.address), p.min_ttl, p.max_ttl) for p in inst.unicast_peers] == [
        ("172.31.0.11", None, None),
        ("172.31.0.12", 250, 255),
    ]
    assert inst.virtual_ipaddress_excluded[0].address.version == 6
    assert [(t.name, t.weight) for t in inst.track_interface] == [("ens5", 0), ("ens6", -10)]
    assert [(t.name, t.weight, t.reverse) for t in inst.track_script] == [
        ("chk_haproxy", None, False),
        ("chk_haproxy", 10, True),
    ]
    assert inst.notify_master is not None
    assert (inst.notify_master.script, inst.notify_master.user) == (
        "/etc/hactl/notify.sh master",
        "root",
    )
    assert inst.notify is not None and inst.notify.group == "root"
    assert inst.key == ("vrrp", "VI_CLOUD")


def test_global_lvs_sync_daemon_and_ipvs_sysctl() -> None:
    g = load("lvs_sync.conf").global_defs
    sync = g.lvs_sync_daemon
    assert sync is not None
    assert (sync.interface, sync.instance, sync.sync_id, sync.maxlen, sync.port, sync.ttl) == (
        "eth1",
        "VI_SYNC",
        42,
        1400,
        8849,
        1,
    )
    assert sync.group == ip("224.0.0.82")
    assert g.sync_auth_key == "0123456789abcdef-not-a-real-key"
    assert (g.lvs_timeouts.tcp, g.lvs_timeouts.tcpfin, g.lvs_timeouts.udp) == (7500, 60, 120)
    assert g.lvs_flush and g.lvs_flush_on_stop is FlushOnStop.VS
    s = g.ipvs_sysctl
    assert (s.conn_reuse_mode, s.expire_nodest_conn, s.expire_quiescent_template) == (0, 1, 1)
    assert (s.sync_threshold, s.sync_period, s.sync_refresh_period, s.sync_retries) == (
        2,
        40,
        10,
        2,
    )
    assert s.sync_ports == 4 and s.sloppy_tcp == 0  # unset ones keep the kernel default


def test_modern_and_legacy_scheduler_spellings() -> None:
    tun, udp, fwm = load("lvs_sched.conf").virtual_servers
    assert tun.lvs_sched is LvsSched.SH
    assert tun.sched_flags == frozenset({SchedFlag.SH_PORT, SchedFlag.SH_FALLBACK})
    fwd = tun.lvs_method
    assert (fwd.method, fwd.tunnel_type, fwd.tunnel_port, fwd.tunnel_csum) == (
        LvsMethod.TUN,
        TunnelType.GUE,
        6080,
        TunnelCsum.CSUM,
    )
    assert tun.persistence_timeout == 360  # `persistence_timeout` alone: 6 minutes
    assert tun.persistence_granularity == "255.255.255.0"
    assert tun.sorry_server is not None and tun.sorry_server.port == 8080
    assert tun.quorum == 2 and tun.hysteresis == 1
    assert tun.real_servers[0].lvs_method == fwd
    assert tun.real_servers[1].lvs_method.method is LvsMethod.DR
    assert (udp.lvs_sched, udp.lvs_method.method, udp.protocol, udp.ops) == (
        LvsSched.RR,
        LvsMethod.NAT,
        Protocol.UDP,
        True,
    )
    assert fwm.fwmark == 7 and fwm.key == ("fwmark", 7, "inet")
    assert fwm.real_servers[0].port is None


def test_every_checker_with_inherited_timing() -> None:
    cfg = load("checkers.conf")
    (group,) = cfg.virtual_server_groups
    first = group.members[0]
    assert (str(first.first), str(first.last), first.port) == ("192.0.2.100", "192.0.2.110", 80)
    assert str(group.members[2].last) == "2001:db8::ff"
    assert group.members[3].fwmark == 100
    (vs,) = cfg.virtual_servers
    assert vs.group == "WEB"
    (rs,) = vs.real_servers
    kinds = [c.kind for c in rs.checkers]
    assert kinds == list(CheckerKind)
    tcp, http, ssl, misc, _smtp, dns, udp, ping, file, bfd = rs.checkers
    assert isinstance(tcp, TcpCheck)
    # delay_loop from the real server, connect_timeout and retry from the virtual server
    assert (tcp.delay_loop, tcp.connect_timeout, tcp.retry, tcp.delay_before_retry) == (
        5,
        4,
        2,
        1,
    )
    assert tcp.key == (rs.key, "TCP_CHECK", 8080)
    assert isinstance(http, HttpGet) and not isinstance(http, SslGet)
    assert http.delay_before_retry == 3  # the HTTP_GET default
    assert http.urls[0].status_codes == ((200, 299), (301, 301), (302, 302))
    assert http.urls[0].regex == "^OK"
    assert http.urls[1].digest == "9b3a0c85a887a256d6939da88aabd8cd"
    assert http.urls[1].status_codes == ((200, 299),)
    assert isinstance(ssl, SslGet) and ssl.enable_sni
    assert isinstance(misc, MiscCheck)
    assert misc.misc_path == "/usr/local/bin/check.sh 198.51.100.20"
    assert misc.user is not None and misc.user.group == "nogroup"
    assert isinstance(dns, DnsCheck) and dns.name == "example.org"
    assert dns.delay_before_retry == 5  # DNS_CHECK: delay_loop
    assert isinstance(udp, UdpCheck)
    assert udp.payload == bytes.fromhex("0a0b0c")
    assert udp.require_reply and udp.require_reply_data == "0axx"
    assert isinstance(ping, PingCheck) and ping.retry == 4
    assert isinstance(file, FileCheck)
    assert (file.track_file, file.weight, file.weight_reverse, file.dynamic) == (
        "rs_switch",
        -5,
        True,
        True,
    )
    assert bfd.kind is CheckerKind.BFD_CHECK
    assert cfg.ssl is not None and cfg.ssl.ca == "/etc/ssl/certs/ca.pem"


def test_hactl_extensions() -> None:
    (vs,) = load("extensions.conf").virtual_servers
    assert vs.proxy_protocol is ProxyProtocol.V2
    (rs,) = vs.real_servers
    assert rs.rise == 3
    (http,) = rs.checkers
    assert isinstance(http, HttpGet)
    assert http.rise == 2
    url = http.urls[0]
    assert url.method is HttpMethod.HEAD
    assert url.headers == (("X-Probe", "hactl"), ("Accept", "*/*"))
    assert url.basic_auth is not None
    assert (url.basic_auth.user, url.basic_auth.password) == ("monitor", "s3cret word")


def test_rise_defaults_to_the_real_server_value() -> None:
    text = """
virtual_server 192.0.2.1 80 {
    real_server 198.51.100.1 80 {
        rise 4
        TCP_CHECK {
        }
    }
}
"""
    rs = config.parse_text(text).config.virtual_servers[0].real_servers[0]
    assert rs.checkers[0].rise == 4  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# Defaults, warnings and strictness


def test_defaults_are_filled() -> None:
    text = """
vrrp_instance VI_1 {
    interface eth0
    virtual_router_id 9
    virtual_ipaddress {
        2001:db8::9
    }
}
virtual_server 192.0.2.1 80 {
    real_server 198.51.100.1 80 {
        MISC_CHECK {
            misc_path /bin/true
        }
    }
}
"""
    cfg = config.parse_text(text).config
    inst = cfg.vrrp_instances[0]
    assert (inst.state, inst.priority, inst.advert_int, inst.garp_master_delay) == (
        VrrpState.BACKUP,
        100,
        1.0,
        5.0,
    )
    assert inst.version == 3  # an IPv6 instance always runs VRRPv3
    vs = cfg.virtual_servers[0]
    # keepalived 2.2.7 defaults: wlc, NAT and, for want of a protocol, UDP (check_data.c)
    assert (vs.lvs_sched, vs.lvs_method.method, vs.protocol, vs.delay_loop) == (
        LvsSched.WLC,
        LvsMethod.NAT,
        Protocol.UDP,
        60.0,
    )
    misc = vs.real_servers[0].checkers[0]
    assert isinstance(misc, MiscCheck) and misc.retry == 0  # MISC_CHECK's retry default


def test_global_garp_settings_are_inherited() -> None:
    text = """
global_defs {
    vrrp_garp_master_delay 2
    vrrp_version 3
}
vrrp_instance VI_1 {
    interface eth0
    virtual_router_id 9
    garp_master_repeat 2
}
"""
    inst = config.parse_text(text).config.vrrp_instances[0]
    assert (inst.garp_master_delay, inst.garp_master_repeat, inst.version) == (2.0, 2, 3)


def test_not_implemented_keywords_warn_and_are_kept() -> None:
    text = """
global_defs {
    enable_snmp_vrrp
    vrrp_strict
}
vrrp_instance VI_1 {
    interface eth0
    virtual_router_id 9
    use_ipvlan ipvl.9
}
"""
    loaded = config.parse_text(text)
    assert [(w.pos.line, w.code) for w in loaded.warnings] == [
        (3, "not-implemented"),
        (4, "not-implemented"),
        (9, "not-implemented"),
    ]
    assert "accepted, not implemented" in loaded.warnings[0].message
    assert [r.keyword for r in loaded.config.global_defs.unimplemented] == [
        "enable_snmp_vrrp",
        "vrrp_strict",
    ]
    raw = loaded.config.vrrp_instances[0].unimplemented[0]
    assert (raw.keyword, raw.args) == ("use_ipvlan", ("ipvl.9",))


def test_deprecated_synonyms_warn_and_map_to_the_canonical_field() -> None:
    text = """
global_defs {
    lvs_flush_onstop
}
virtual_server 192.0.2.1 80 {
    real_server 198.51.100.1 80 {
        HTTP_GET {
            nb_get_retry 4
            url {
                path /
            }
        }
    }
}
"""
    loaded = config.parse_text(text)
    assert [w.code for w in loaded.warnings if w.code == "deprecated"] == [
        "deprecated",
        "deprecated",
    ]
    assert loaded.config.global_defs.lvs_flush_on_stop is FlushOnStop.ALL
    http = loaded.config.virtual_servers[0].real_servers[0].checkers[0]
    assert http.retry == 4  # type: ignore[union-attr]


def test_repeated_keyword_warns_and_last_wins() -> None:
    text = "vrrp_instance VI_1 {\n interface eth0\n virtual_router_id 1\n priority 10\n"
    text += " priority 20\n}\n"
    loaded = config.parse_text(text)
    assert loaded.config.vrrp_instances[0].priority == 20
    assert [(w.pos.line, w.code) for w in loaded.warnings] == [(5, "duplicate-keyword")]


def test_repeated_global_defs_blocks_merge() -> None:
    text = "global_defs {\n router_id a\n}\nglobal_defs {\n lvs_flush\n}\n"
    g = config.parse_text(text).config.global_defs
    assert g.router_id == "a" and g.lvs_flush


def test_all_stages_report_together() -> None:
    """Syntax, value and cross-object errors come out of one run, sorted."""
    text = """
vrrp_instance VI_1 {
    interface eth0
    virtual_router_id 1
    priority 0
    track_script {
        nope
    }
}
virtual_server 192.0.2.1 80 {
    real_server 198.51.100.1 80 {
"""
    with pytest.raises(ConfigErrors) as info:
        config.parse_text(text)
    codes = [e.code for e in info.value.errors]
    assert "out-of-range" in codes and "unknown-ref" in codes
    assert any(type(e).__name__ == "ConfigSyntaxError" for e in info.value.errors)
    lines = [e.pos.line for e in info.value.errors]
    assert lines == sorted(lines)


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("virtual_server 192.0.2.1 80 {\n delay_loop 1e3\n}\n", "2:13: delay_loop: `1e3` is not"),
        ("virtual_server 192.0.2.1 80 {\n delay_loop inf\n}\n", "2:13: delay_loop: `inf` is not"),
        ("virtual_server 192.0.2.1 80 {\n quorum 0\n}\n", "2:9: quorum: 0 is out of range"),
        ("virtual_server fwmark 0 {\n}\n", "1:23: fwmark: 0 is out of range"),
        ("virtual_server group {\n}\n", "1:1: `virtual_server` needs 2 arguments"),
        ("virtual_server 192.0.2.1 80 {\n lvs_method TUN type gre remcsum\n}\n", "2:26: checksum"),
        ("virtual_server 192.0.2.1 80 {\n lvs_method NAT type ipip\n}\n", "2:17: lvs_method: only"),
        ("global_defs {\n lvs_sync_daemon eth0 VI_1 group 10.0.0.1\n}\n", "2:34: lvs_sync_daemon"),
        ("global_defs {\n lvs_timeouts\n}\n", "2:2: `lvs_timeouts` needs at least 2"),
        (
            "global_defs {\n vrrp_mcast_group4 ff02::12\n}\n",
            "2:20: vrrp_mcast_group4: `ff02::12` is",
        ),
    ],
)
def test_value_errors(snippet: str, expected: str) -> None:
    assert any(e.startswith(expected) for e in errors_of(snippet)), errors_of(snippet)


def test_bad_value_is_not_replaced_by_a_default() -> None:
    """keepalived logs "priority out of range" and uses 100; hactl refuses the file."""
    errs = errors_of(
        "vrrp_instance VI_1 {\n interface eth0\n virtual_router_id 1\n priority 0\n}\n"
    )
    assert errs == ["4:11: priority: 0 is out of range 1..255"]


def test_keepalived_defaults_are_said_out_loud() -> None:
    text = "virtual_server 192.0.2.1 80 {\n real_server 198.51.100.1 80 {\n }\n}\n"
    text += "virtual_server fwmark 3 {\n protocol TCP\n lvs_sched rr\n lvs_method DR\n}\n"
    warnings = [w for w in config.parse_text(text).warnings if w.code not in LINTS]
    assert [(w.pos.line, w.code) for w in warnings] == [
        (1, "keepalived-default"),
        (5, "no-real-servers"),
        (6, "ignored"),
    ]
    assert "(protocol UDP, lvs_sched wlc, lvs_method NAT)" in warnings[0].message


def test_fast_makers_build_the_same_objects() -> None:
    # build.py constructs the most numerous model objects by setting their slots directly;
    # each maker must give what the class's own constructor gives, defaults included.
    import dataclasses

    from hactl.config import build as build_module
    from hactl.config import model as m
    from hactl.errors import SourcePos

    samples: dict[str, object] = {
        "address": ipaddress.ip_address("192.0.2.1"),
        "vs_key": ("k",),
        "rs_key": ("r",),
        "index": 2,
        "pos": SourcePos("x.conf", 3, 4, 5, 6),
        "keyword_pos": {"weight": SourcePos("x.conf", 4, 1)},
        "delay_loop": 6.0,
        "path": "/health",
    }
    for cls in build_module._FAST_CLASSES:
        make = build_module._MAKE[cls]
        assert make is not cls, cls
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        for kwargs in ({}, {k: v for k, v in samples.items() if k in names}):
            if cls is m.RealServer and "address" not in kwargs:
                kwargs = {**kwargs, "address": samples["address"]}
            made, expected = make(**kwargs), cls(**kwargs)
            assert type(made) is cls
            assert made == expected
            assert hash(made) == hash(expected)
            assert repr(made) == repr(expected)
            # Made from a mutable twin (build._twin), and frozen once made.
            name = dataclasses.fields(cls)[0].name
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(made, name, None)
            with pytest.raises(AttributeError):
                made.__dict__  # noqa: B018  (slotted, like the class's own objects)
            for f in dataclasses.fields(cls):
                assert getattr(made, f.name) == getattr(expected, f.name), (cls, f.name)
        with pytest.raises(TypeError):
            make(no_such_field=1)
        twin = make.__globals__["_twin"]
        assert twin is not None, cls  # the fast way is taken
        # Assignments to the twin take the interpreter's own path: both methods of the one
        # setattr slot are object's (an inherited frozen __delattr__ would slow every one).
        assert twin.__setattr__ is object.__setattr__, cls
        assert twin.__delattr__ is object.__delattr__, cls


def test_fast_copies_are_the_objects_replace_gives() -> None:
    # build.py makes repeated real servers and checkers as copies of one made object with a
    # few fields changed: each copier must give what dataclasses.replace gives.
    import dataclasses

    from hactl.config import build as build_module
    from hactl.config import model as m
    from hactl.errors import SourcePos

    changes: dict[str, object] = {
        "address": ipaddress.ip_address("2001:db8::1"),
        "port": 8080,
        "weight": 7,
        "rs_key": ("other",),
        "index": 3,
        "pos": SourcePos("y.conf", 9, 2, 9, 12),
        "keyword_pos": {"weight": SourcePos("y.conf", 10, 3)},
        "checkers": (m.TcpCheck(connect_port=81),),
        "connect_timeout": 2.5,
        "method": m.LvsMethod.TUN,
    }
    for cls in build_module._FAST_CLASSES:
        copy = build_module._COPY[cls]
        assert copy.__globals__["_twin"] is not None, cls  # the fast way is taken
        kwargs = {"address": ipaddress.ip_address("192.0.2.1")} if cls is m.RealServer else {}
        made = build_module._MAKE[cls](**kwargs)
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        for change in ({}, {k: v for k, v in changes.items() if k in names}):
            copied, expected = copy(made, **change), dataclasses.replace(made, **change)
            assert type(copied) is cls
            assert copied == expected
            assert repr(copied) == repr(expected)
            for f in dataclasses.fields(cls):
                assert getattr(copied, f.name) is getattr(expected, f.name), (cls, f.name)
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(copied, dataclasses.fields(cls)[0].name, None)
        with pytest.raises(TypeError):
            copy(made, no_such_field=1)
