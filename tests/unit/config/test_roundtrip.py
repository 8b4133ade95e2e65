"""Property: model -> fmt -> parse gives the same model.

The strategies build valid configurations directly as models (unique names and VRIDs,
references that resolve, values in range), covering global_defs with the sync daemon and
ipvs_sysctl, vrrp_script, vrrp_instance, sync groups, and virtual servers with real servers
and most checkers. `fmt` must write them so that the parser reads back exactly the same
values, including those it would otherwise inherit or default.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hactl import config
from hactl.config import model as m
from hactl.config.dump import to_json
from hactl.config.fmt import format_config
from hactl.config.keywords import (
    AuthType,
    DnsType,
    HttpProtocol,
    LvsMethod,
    LvsSched,
    Protocol,
    SchedFlag,
    VrrpState,
)
from hactl.ipvs.model import IpvsSysctl

# A name alone on a line (a sync group member, a tracked script) cannot be an include word:
# keepalived reads such a line as an include directive, so no file can say it.
INCLUDE_WORDS = {"include", "includer", "includem", "includew", "includeb", "includea"}
NAME = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789_-.", min_size=1, max_size=12).filter(
    lambda s: s[0].isalpha() and s not in INCLUDE_WORDS
)
WORDS = st.lists(
    st.text("abcdefghijklmnop/._-0123456789", min_size=1, max_size=8), min_size=1, max_size=3
).map(" ".join)
MICROS = st.integers(1, 86_400_000_000).map(lambda us: us / 1_000_000)
SECONDS = st.integers(1, 3600).map(float) | MICROS.filter(lambda t: t <= 3600)
IPV4 = st.integers(0x0A000001, 0x0AFFFFFE).map(ipaddress.IPv4Address)
PORT = st.integers(1, 65535)


def uniques(strategy: st.SearchStrategy[Any], n: int) -> st.SearchStrategy[list[Any]]:
    return st.lists(strategy, min_size=0, max_size=n, unique=True)


@st.composite
def global_defs(draw: st.DrawFn, instance_names: list[str]) -> m.GlobalDefs:
    sync = None
    wants_sync: bool = draw(st.booleans())
    if instance_names and wants_sync:
        sync = m.LvsSyncDaemon(
            interface=draw(NAME),
            instance=draw(st.sampled_from(instance_names)),
            sync_id=draw(st.none() | st.integers(0, 255)),
            maxlen=draw(st.none() | st.integers(1, 65507)),
            port=draw(PORT),
            ttl=draw(st.none() | st.integers(1, 255)),
        )
    threshold = draw(st.integers(0, 100))
    sysctl = IpvsSysctl(
        conn_reuse_mode=draw(st.integers(0, 3)),
        expire_nodest_conn=draw(st.integers(0, 1)),
        expire_quiescent_template=draw(st.integers(0, 1)),
        sync_threshold=threshold,
        sync_period=draw(st.just(0) | st.integers(threshold + 1, threshold + 200)),
        sync_ports=draw(st.sampled_from([1, 2, 4, 8])),
    )
    timeouts = m.LvsTimeouts(
        tcp=draw(st.none() | st.integers(1, 2678400)),
        udp=draw(st.none() | st.integers(1, 2678400)),
    )
    return m.GlobalDefs(
        router_id=draw(st.none() | NAME),
        vrrp_version=draw(st.sampled_from([2, 3])),
        vrrp_garp_master_delay=draw(st.integers(0, 20).map(float)),
        lvs_sync_daemon=sync,
        sync_auth_key=draw(st.text("abcdef0123456789", min_size=16, max_size=32)) if sync else None,
        lvs_timeouts=timeouts,
        lvs_flush=draw(st.booleans()),
        ipvs_sysctl=sysctl,
    )


@st.composite
def vrrp_instance(
    draw: st.DrawFn, name: str, vrid: int, vip: ipaddress.IPv4Address, scripts: list[str]
) -> m.VrrpInstance:
    version = draw(st.sampled_from([2, 3]))
    advert = (
        draw(st.integers(1, 10).map(float))
        if version == 2
        else draw(st.integers(1, 4000).map(lambda cs: cs / 100))
    )
    state = draw(st.sampled_from(VrrpState))
    peers = draw(uniques(IPV4, 3))
    return m.VrrpInstance(
        name=name,
        state=state,
        interface=draw(NAME),
        virtual_router_id=vrid,
        priority=draw(st.integers(1, 255)),
        advert_int=advert,
        version=version,
        unicast_src_ip=draw(IPV4) if peers else None,
        unicast_peers=tuple(m.UnicastPeer(address=p) for p in peers),
        authentication=draw(
            st.none()
            | st.builds(m.Authentication, auth_type=st.just(AuthType.PASS), auth_pass=NAME)
        ),
        virtual_ipaddress=(
            m.VirtualIpAddress(
                address=ipaddress.IPv4Interface(f"{vip}/{draw(st.integers(8, 32))}"),
                dev=draw(st.none() | NAME),
            ),
        ),
        track_script=tuple(
            m.TrackRef(name=s, weight=draw(st.none() | st.integers(-253, 253)))
            for s in draw(
                st.lists(st.sampled_from(scripts), max_size=2) if scripts else st.just([])
            )
        ),
        notify_master=draw(st.none() | st.builds(m.NotifyScript, script=WORDS)),
        nopreempt=state is VrrpState.BACKUP and draw(st.booleans()),
        preempt_delay=draw(st.integers(0, 1000).map(float)),
        garp_master_repeat=draw(st.integers(1, 255)),
    )


@st.composite
def checker(draw: st.DrawFn) -> m.Checker:
    timing: dict[str, Any] = {
        "delay_loop": draw(SECONDS),
        "retry": draw(st.integers(0, 10)),
        "delay_before_retry": draw(SECONDS),
        "rise": draw(st.integers(1, 10)),
    }
    conn: dict[str, Any] = {
        "connect_timeout": draw(SECONDS),
        "connect_port": draw(st.none() | PORT),
        **timing,
    }
    kind = draw(st.sampled_from(["tcp", "http", "misc", "dns", "udp", "ping"]))
    if kind == "tcp":
        return m.TcpCheck(**conn)
    if kind == "http":
        url = m.Url(
            path="/" + draw(st.text("abcxyz/", max_size=8)),
            status_codes=((200, 299),) if draw(st.booleans()) else ((200, 200), (301, 302)),
            digest=draw(st.none() | st.text("0123456789abcdef", min_size=32, max_size=32)),
        )
        return m.HttpGet(urls=(url,), http_protocol=draw(st.sampled_from(HttpProtocol)), **conn)
    if kind == "misc":
        return m.MiscCheck(misc_path=draw(WORDS), misc_dynamic=draw(st.booleans()), **timing)
    if kind == "dns":
        return m.DnsCheck(type=draw(st.sampled_from(DnsType)), name=draw(NAME), **conn)
    if kind == "udp":
        return m.UdpCheck(payload=draw(st.none() | st.binary(min_size=1, max_size=8)), **conn)
    return m.PingCheck(**conn)


@st.composite
def virtual_server(draw: st.DrawFn, address: ipaddress.IPv4Address, port: int) -> m.VirtualServer:
    vs = m.VirtualServer(
        address=address,
        port=port,
        protocol=draw(st.sampled_from([Protocol.TCP, Protocol.UDP])),
        lvs_sched=draw(st.sampled_from(LvsSched)),
        sched_flags=frozenset(draw(st.sets(st.sampled_from(SchedFlag), max_size=2))),
        lvs_method=m.Forwarding(method=draw(st.sampled_from([LvsMethod.NAT, LvsMethod.DR]))),
        persistence_timeout=draw(st.none() | st.integers(1, 86400)),
        quorum=draw(st.integers(1, 5)),
        delay_loop=draw(SECONDS),
        connect_timeout=draw(SECONDS),
        retry=draw(st.none() | st.integers(0, 5)),
        inhibit_on_failure=draw(st.booleans()),
        alpha=draw(st.booleans()),
    )
    servers = []
    for rs_addr in draw(uniques(IPV4, 4)):
        rs = m.RealServer(
            address=rs_addr,
            port=draw(PORT),
            weight=draw(st.integers(0, 100)),
            lvs_method=draw(st.sampled_from([vs.lvs_method, m.Forwarding(method=LvsMethod.DR)])),
            inhibit_on_failure=draw(st.booleans()),
            alpha=vs.alpha,
            retry=vs.retry,
            delay_before_retry=vs.delay_before_retry,
            warmup=vs.warmup,
            connect_timeout=draw(st.sampled_from([vs.connect_timeout, 2.5])),
            delay_loop=draw(st.sampled_from([vs.delay_loop, 7.0])),
            checkers=tuple(draw(st.lists(checker(), max_size=3))),
        )
        servers.append(rs)
    return m.VirtualServer(**{**_fields(vs), "real_servers": tuple(servers)})


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__ if name != "pos"}


@st.composite
def fwmark_server(draw: st.DrawFn, mark: int) -> m.VirtualServer:
    vs = m.VirtualServer(
        fwmark=mark,
        lvs_sched=draw(st.sampled_from(LvsSched)),
        lvs_method=m.Forwarding(method=LvsMethod.DR),
        persistence_timeout=draw(st.none() | st.integers(1, 3600)),
        persistence_granularity=draw(st.none() | st.sampled_from(["255.255.255.0", "24"])),
    )
    servers = tuple(
        m.RealServer(address=a, lvs_method=vs.lvs_method, weight=draw(st.integers(0, 9)))
        for a in draw(uniques(IPV4, 3))
    )
    return m.VirtualServer(**{**_fields(vs), "real_servers": servers})


@st.composite
def server_group(draw: st.DrawFn, name: str) -> m.VirtualServerGroup:
    members = []
    for base in draw(uniques(st.integers(0x0A000001, 0x0AFFFF00), 3)):
        first = ipaddress.IPv4Address(base)
        span = draw(st.integers(0, 20))
        last = ipaddress.IPv4Address(base + span)
        text = str(first) if span == 0 else f"{first}-{int(last) & 0xFF}"
        if span and (int(last) >> 8) != (int(first) >> 8):
            text = f"{first}-{last}"
        members.append(m.VsgMember(first=first, last=last, port=draw(PORT), text=text))
    if draw(st.booleans()):
        members.append(m.VsgMember(fwmark=draw(st.integers(1, 1000))))
    return m.VirtualServerGroup(name=name, members=tuple(members))


@st.composite
def configs(draw: st.DrawFn) -> m.Config:
    scripts = draw(uniques(NAME, 3))
    names = draw(uniques(NAME, 4))
    vrids = draw(
        st.lists(st.integers(1, 255), min_size=len(names), max_size=len(names), unique=True)
    )
    vips = draw(st.lists(IPV4, min_size=len(names), max_size=len(names), unique=True))
    instances = [
        draw(vrrp_instance(n, v, a, scripts)) for n, v, a in zip(names, vrids, vips, strict=True)
    ]
    groups = []
    if len(names) >= 2 and draw(st.booleans()):
        groups.append(m.SyncGroup(name="G_" + names[0], group=tuple(names[:2])))
    endpoints = draw(uniques(st.tuples(IPV4, PORT), 4))
    marks = draw(uniques(st.integers(1, 2**32 - 1), 2))
    group_names = draw(uniques(NAME, 2))
    groups_vs = [
        m.VirtualServer(
            group=g,
            protocol=Protocol.TCP,
            real_servers=(m.RealServer(address=ipaddress.IPv4Address("10.9.9.9"), port=80),),
        )
        for g in group_names
    ]
    return m.Config(
        virtual_server_groups=tuple(draw(server_group(g)) for g in group_names),
        global_defs=draw(global_defs(names)),
        vrrp_scripts=tuple(
            m.VrrpScript(name=s, script=draw(WORDS), interval=draw(SECONDS)) for s in scripts
        ),
        sync_groups=tuple(groups),
        vrrp_instances=tuple(instances),
        virtual_servers=(
            *(draw(virtual_server(a, p)) for a, p in endpoints),
            *(draw(fwmark_server(mark)) for mark in marks),
            *groups_vs,
        ),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_fmt_then_parse_gives_the_same_model(cfg: m.Config) -> None:
    text = format_config(cfg)
    loaded = config.parse_text(text)
    assert loaded.config == cfg, text
    # and formatting is stable: a second pass writes the same text
    assert format_config(loaded.config) == text


@settings(max_examples=20, deadline=None)
@given(configs())
def test_dump_is_json_for_any_model(cfg: m.Config) -> None:
    assert to_json(cfg).startswith("{")
