"""Derivation: the configuration model -> each subsystem's runtime model (pure functions).

`derive(config)` maps what the user wrote (`hactl.config.model`, keepalived's vocabulary)
onto what each core runs:

* `checks`: one `VirtualServerSpec` per virtual_server (health policy, real servers,
  checkers), keyed by a `ServiceKey`;
* `table`: the configured IPVS table (`IpvsTable`): every service with its scheduler,
  persistence and flags, and every configured destination at its configured weight;
* `members`: which table services follow which health spec (a `virtual_server_group` is
  checked once and expands into one IPVS service per member address, range and fwmark);
* `vrrp`: the VRRP slice (`VrrpConfig`), `sync`: the `lvs_sync_daemon` settings, and the
  IPVS tunables (`IpvsSysctl`, `IpvsTimeouts`);
* for the kernel's table, what keepalived writes there: the tunables the `ipvs_sysctl` block
  names (`sysctl_names`; the others stay as the kernel has them), the timeouts
  `lvs_timeouts` gives (`kernel_timeouts`, 0 for those it leaves unchanged), `lvs_flush` and
  `lvs_flush_on_stop`.

`desired_table(derived, views, overrides)` is the reconciler's function: the configured
table, with each service's destinations replaced by what health wants (removed or quiesced
servers, sorry server, quorum) and operator overrides (`hactl.api.overrides.fold_overrides`)
applied last.

Anything the configuration carries that the runtime does not act on, and that
`hactl.config` does not already report as `not-implemented`, becomes a `DeriveWarning`
here: the daemon logs every one at start and on reload. Nothing is dropped silently.

Pure: no I/O, no logging, no clock. Imports the models (and the pure override rule) only.
"""

from __future__ import annotations

import enum
import ipaddress
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TypedDict

from hactl import checks as hc
from hactl.api.model import Override, ReloadChange, RsKey, format_rs, format_vs
from hactl.api.overrides import fold_overrides
from hactl.config import model as cm
from hactl.config.keywords import (
    AuthType as CfgAuthType,
)
from hactl.config.keywords import (
    FlushOnStop,
    IpFamily,
    LvsMethod,
    SchedFlag,
    TunnelType,
)
from hactl.config.keywords import (
    Protocol as CfgProtocol,
)
from hactl.config.keywords import (
    VrrpState as CfgVrrpState,
)
from hactl.ipvs.model import (
    AF_INET,
    AF_INET6,
    IP_VS_SVC_F_SCHED1,
    IP_VS_SVC_F_SCHED2,
    IP_VS_SVC_F_SCHED3,
    Destination,
    FwdMethod,
    IPAddress,
    IpProto,
    IpvsSysctl,
    IpvsTable,
    IpvsTimeouts,
    ServiceKey,
    VirtualService,
)
from hactl.sync.model import SyncDaemonConfig
from hactl.vrrp import model as vm

__all__ = [
    "DeriveWarning",
    "Derived",
    "DestKey",
    "derive",
    "desired_table",
    "fwd_method",
    "netmask_prefix",
    "reload_changes",
    "service_label",
]

DestKey = tuple[ServiceKey, IPAddress, int]
"""An operator override's target: (service, real server address, port)."""

_FWD = {LvsMethod.NAT: FwdMethod.MASQ, LvsMethod.DR: FwdMethod.DROUTE,
        LvsMethod.TUN: FwdMethod.TUNNEL}
_PROTO = {CfgProtocol.TCP: IpProto.TCP, CfgProtocol.UDP: IpProto.UDP,
          CfgProtocol.SCTP: IpProto.SCTP}
# ipvsadm -b: sh-*/mh-* are names of flag-1 / flag-2 (ip_vs.h IP_VS_SVC_F_SCHED_*).
_SCHED_FLAGS = {
    SchedFlag.FLAG_1: IP_VS_SVC_F_SCHED1,
    SchedFlag.SH_FALLBACK: IP_VS_SVC_F_SCHED1,
    SchedFlag.MH_FALLBACK: IP_VS_SVC_F_SCHED1,
    SchedFlag.FLAG_2: IP_VS_SVC_F_SCHED2,
    SchedFlag.SH_PORT: IP_VS_SVC_F_SCHED2,
    SchedFlag.MH_PORT: IP_VS_SVC_F_SCHED2,
    SchedFlag.FLAG_3: IP_VS_SVC_F_SCHED3,
}


@dataclass(frozen=True, slots=True)
class DeriveWarning:
    """A configured value the runtime does not act on (logged as `config.not_applied`)."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Derived:
    """Every subsystem's runtime model, derived from one configuration."""

    checks: tuple[hc.VirtualServerSpec, ...]
    table: IpvsTable
    # health spec key -> the table services that follow it (a group: several).
    members: Mapping[ServiceKey, tuple[ServiceKey, ...]]
    vrrp: vm.VrrpConfig | None
    sync: SyncDaemonConfig | None
    sysctl: IpvsSysctl
    timeouts: IpvsTimeouts | None
    proxy_protocol: frozenset[ServiceKey] = frozenset()
    warnings: tuple[DeriveWarning, ...] = ()
    labels: Mapping[ServiceKey, str] = field(default_factory=dict)
    # The kernel backend (keepalived's semantics): the tunables named in `ipvs_sysctl`, in
    # the order written; the timeouts as `IPVS_CMD_SET_CONFIG` takes them (0: unchanged);
    # flush the whole table at start; at stop, flush the whole table (ALL) or remove only
    # hactl's services (VS or None).
    sysctl_names: tuple[str, ...] = ()
    kernel_timeouts: IpvsTimeouts | None = None
    lvs_flush: bool = False
    lvs_flush_on_stop: FlushOnStop | None = None


# --------------------------------------------------------------------------- small mappings


def fwd_method(fwd: cm.Forwarding) -> FwdMethod:
    """keepalived lvs_method -> the IPVS forwarding method."""
    return _FWD[fwd.method]


def netmask_prefix(granularity: str | None, *, family: int) -> int | None:
    """persistence_granularity (a netmask or a prefix length) -> a prefix length.

    None when not given (per client address). Raises ValueError on a non-contiguous mask
    (config validation refuses those first; the check here keeps the function total).
    """
    if granularity is None:
        return None
    if granularity.isdigit():
        return int(granularity)
    if family == AF_INET6:
        net6 = ipaddress.IPv6Network(f"::/{granularity}")
        return net6.prefixlen
    net4 = ipaddress.IPv4Network(f"0.0.0.0/{granularity}")
    return net4.prefixlen


def service_label(key: ServiceKey) -> str:
    """`TCP 10.0.0.1:80`, `TCP [2001:db8::1]:80`, `FWM 7` (log and API label)."""
    if key.is_fwmark:
        return f"FWM {key.fwmark}"
    host = f"[{key.addr}]" if key.family == AF_INET6 else str(key.addr)
    return f"{key.protocol.name} {host}:{key.port}"


def _argv(script: cm.NotifyScript | None) -> hc.ScriptSpec | None:
    if script is None:
        return None
    return hc.ScriptSpec(argv=tuple(shlex.split(script.script)), user=script.user,
                         group=script.group)


def _argv_tuple(script: cm.NotifyScript | None) -> tuple[str, ...] | None:
    return None if script is None else tuple(shlex.split(script.script))


class _Warnings:
    def __init__(self) -> None:
        self.items: list[DeriveWarning] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(DeriveWarning(where, message))


# --------------------------------------------------------------------------- IPVS services


def _expand_group(group: cm.VirtualServerGroup, vs: cm.VirtualServer) -> list[ServiceKey]:
    keys: list[ServiceKey] = []
    proto = _PROTO[vs.protocol]
    for member in group.members:
        if member.fwmark is not None:
            family = AF_INET6 if member.family is IpFamily.INET6 else AF_INET
            keys.append(ServiceKey.for_fwmark(member.fwmark, family=family))
            continue
        assert member.first is not None
        last = member.last if member.last is not None else member.first
        port = member.port if member.port is not None else vs.port
        # keepalived expands a range into one IPVS service per address (ip_vs has no ranges).
        first = int(member.first)
        for offset in range(int(last) - first + 1):
            keys.append(ServiceKey.for_address(proto, member.first + offset, port))
    return keys


def _service_keys(vs: cm.VirtualServer, groups: Mapping[str, cm.VirtualServerGroup]
                  ) -> list[ServiceKey]:
    if vs.fwmark is not None:
        family = AF_INET6 if vs.ip_family is IpFamily.INET6 else AF_INET
        return [ServiceKey.for_fwmark(vs.fwmark, family=family)]
    if vs.group is not None:
        return _expand_group(groups[vs.group], vs)
    assert vs.address is not None
    return [ServiceKey.for_address(_PROTO[vs.protocol], vs.address, vs.port)]


def _virtual_service(vs: cm.VirtualServer, key: ServiceKey,
                     destinations: tuple[Destination, ...]) -> VirtualService:
    flags = 0
    for flag in vs.sched_flags:
        flags |= _SCHED_FLAGS[flag]
    prefix = netmask_prefix(vs.persistence_granularity, family=key.family)
    svc = VirtualService(
        key=key,
        scheduler=vs.lvs_sched.value,
        sched_flags=flags,
        persistence_timeout=(None if vs.persistence_timeout is None
                             else float(vs.persistence_timeout)),
        pe_name=vs.persistence_engine or "",
        one_packet=vs.ops,
        destinations=destinations,
    )
    return svc if prefix is None else replace(svc, netmask=prefix)


def _rs_where(vs_label: str, rs: cm.RealServer) -> str:
    return f"{vs_label} real_server {rs.address}:{rs.port or 0}"


# --------------------------------------------------------------------------- checkers


def _connect(ck: cm.TcpCheck | cm.HttpGet | cm.SmtpCheck | cm.DnsCheck | cm.UdpCheck
             | cm.PingCheck) -> hc.ConnectOptions:
    return hc.ConnectOptions(
        connect_ip=ck.connect_ip, connect_port=ck.connect_port, bindto=ck.bindto,
        bind_port=ck.bind_port, bind_if=ck.bind_if, fwmark=ck.fwmark or 0,
        connect_timeout=ck.connect_timeout,
    )


class _TimingKw(TypedDict):
    delay_loop: float
    retry: int
    delay_before_retry: float | None
    warmup: float | None
    alpha: bool
    rise: int


def _timing(ck: cm.TcpCheck | cm.HttpGet | cm.MiscCheck | cm.SmtpCheck | cm.DnsCheck
            | cm.UdpCheck | cm.PingCheck) -> _TimingKw:
    return {
        "delay_loop": ck.delay_loop, "retry": ck.retry,
        "delay_before_retry": ck.delay_before_retry, "warmup": ck.warmup,
        "alpha": ck.alpha, "rise": ck.rise,
    }


def _http(ck: cm.HttpGet, where: str, warn: _Warnings) -> hc.HttpGetCheck:
    urls = ck.urls or (cm.Url(),)
    first = urls[0]
    # The runtime spec has one method/headers/auth per checker; keepalived has none of them
    # (hactl extension), so differing per-url values cannot be honoured: say so.
    for url in urls[1:]:
        if (url.method, url.headers, url.basic_auth) != (first.method, first.headers,
                                                        first.basic_auth):
            warn.add(where, "url blocks differ in method/header/basic_auth; the first url's "
                     "values are used for every url of this checker")
            break
    if ck.fast_recovery:
        warn.add(where, "fast_recovery is not acted on (checks keep their delay_loop)")
    specs = tuple(
        hc.UrlSpec(path=u.path, digest=u.digest, status_codes=u.status_codes, regex=u.regex,
                   regex_no_match=u.regex_no_match, virtualhost=u.virtualhost)
        for u in urls
    )
    auth = None if first.basic_auth is None else (first.basic_auth.user,
                                                   first.basic_auth.password)
    if isinstance(ck, cm.SslGet):
        return hc.SslGetCheck(
            **_timing(ck), connect=_connect(ck), urls=specs, virtualhost=ck.virtualhost,
            http_protocol=ck.http_protocol.value, method=first.method.value,
            headers=first.headers, basic_auth=auth, enable_sni=ck.enable_sni,
        )
    return hc.HttpGetCheck(
        **_timing(ck), connect=_connect(ck), urls=specs, virtualhost=ck.virtualhost,
        http_protocol=ck.http_protocol.value, method=first.method.value,
        headers=first.headers, basic_auth=auth,
    )


def _tls(config: cm.Config) -> hc.TlsOptions:
    ssl = config.ssl
    if ssl is None:
        return hc.TlsOptions()
    return hc.TlsOptions(ca_file=ssl.ca, cert_file=ssl.certificate, key_file=ssl.key,
                         password=ssl.password)


def _checker(ck: cm.Checker, config: cm.Config, where: str, warn: _Warnings
             ) -> hc.CheckSpec | None:
    if isinstance(ck, cm.SslGet):
        spec = _http(ck, where, warn)
        assert isinstance(spec, hc.SslGetCheck)
        return replace(spec, tls=_tls(config))
    if isinstance(ck, cm.HttpGet):
        return _http(ck, where, warn)
    if isinstance(ck, cm.TcpCheck):
        return hc.TcpCheck(connect=_connect(ck), **_timing(ck))
    if isinstance(ck, cm.MiscCheck):
        user = ck.user
        script = hc.ScriptSpec(argv=tuple(shlex.split(ck.misc_path)),
                               user=None if user is None else user.user,
                               group=None if user is None else user.group)
        return hc.MiscCheck(script=script, misc_timeout=ck.misc_timeout,
                            misc_dynamic=ck.misc_dynamic, **_timing(ck))
    if isinstance(ck, cm.SmtpCheck):
        return hc.SmtpCheck(connect=_connect(ck), helo_name=ck.helo_name or "localhost",
                            **_timing(ck))
    if isinstance(ck, cm.DnsCheck):
        return hc.DnsCheck(connect=_connect(ck), query_type=ck.type.value, name=ck.name,
                           **_timing(ck))
    if isinstance(ck, cm.UdpCheck):
        pattern: bytes | None = None
        mask: bytes | None = None
        if ck.require_reply_data is not None:
            pattern, mask = _hex_pattern(ck.require_reply_data)
        return hc.UdpCheck(connect=_connect(ck), payload=ck.payload,
                           require_reply=ck.require_reply, reply_pattern=pattern,
                           reply_mask=mask, min_reply_length=ck.min_reply_length,
                           max_reply_length=ck.max_reply_length, **_timing(ck))
    if isinstance(ck, cm.PingCheck):
        return hc.PingCheck(connect=_connect(ck), **_timing(ck))
    if isinstance(ck, cm.FileCheck):
        files = {f.name: f for f in config.track_files}
        tf = files.get(ck.track_file)
        if tf is None:  # validate reports unknown references; stay total anyway
            warn.add(where, f"FILE_CHECK track_file {ck.track_file!r} is not defined")
            return None
        return hc.FileCheck(path=tf.file, weight=ck.weight, reverse=ck.weight_reverse,
                            dynamic=ck.dynamic)
    return hc.BfdCheck(name=ck.name, alpha=ck.alpha)


def _hex_pattern(text: str) -> tuple[bytes, bytes]:
    """`require_reply` hex with x/X wildcard nibbles -> (pattern, mask of wildcard bits)."""
    digits = text if len(text) % 2 == 0 else text + "x"
    pattern = bytearray()
    mask = bytearray()
    for i in range(0, len(digits), 2):
        pair = digits[i:i + 2]
        value = 0
        wild = 0
        for shift, ch in ((4, pair[0]), (0, pair[1])):
            if ch in "xX":
                wild |= 0xF << shift
            else:
                value |= int(ch, 16) << shift
        pattern.append(value)
        mask.append(wild)
    return bytes(pattern), bytes(mask)


# --------------------------------------------------------------------------- virtual servers


def _virtual_servers(config: cm.Config, warn: _Warnings) -> tuple[
        list[hc.VirtualServerSpec], list[VirtualService], dict[ServiceKey, tuple[ServiceKey, ...]],
        set[ServiceKey], dict[ServiceKey, str]]:
    groups = {g.name: g for g in config.virtual_server_groups}
    specs: list[hc.VirtualServerSpec] = []
    services: list[VirtualService] = []
    members: dict[ServiceKey, tuple[ServiceKey, ...]] = {}
    proxy: set[ServiceKey] = set()
    labels: dict[ServiceKey, str] = {}
    for vs in config.virtual_servers:
        keys = _service_keys(vs, groups)
        if not keys:
            continue
        health_key = keys[0]
        label = (f"group {vs.group}" if vs.group is not None else service_label(health_key))
        labels[health_key] = label
        rs_specs: list[hc.RealServerSpec] = []
        dests: list[Destination] = []
        for rs in vs.real_servers:
            where = _rs_where(label, rs)
            fwd = fwd_method(rs.lvs_method)
            _warn_tunnel(rs.lvs_method, where, warn)
            checks = tuple(c for c in (_checker(ck, config, where, warn) for ck in rs.checkers)
                           if c is not None)
            rs_specs.append(hc.RealServerSpec(
                addr=rs.address, port=rs.port or 0, weight=rs.weight, fwd=fwd,
                u_threshold=rs.uthreshold, l_threshold=rs.lthreshold,
                inhibit_on_failure=rs.inhibit_on_failure, notify_up=_argv(rs.notify_up),
                notify_down=_argv(rs.notify_down), checks=checks,
            ))
            dests.append(Destination(addr=rs.address, port=rs.port or 0, weight=rs.weight,
                                     fwd=fwd, u_threshold=rs.uthreshold,
                                     l_threshold=rs.lthreshold))
        sorry: hc.SorryServerSpec | None = None
        if vs.sorry_server is not None:
            sorry_fwd = vs.sorry_server_lvs_method or vs.lvs_method
            _warn_tunnel(sorry_fwd, f"{label} sorry_server", warn)
            sorry = hc.SorryServerSpec(addr=vs.sorry_server.address,
                                       port=vs.sorry_server.port or 0,
                                       fwd=fwd_method(sorry_fwd), inhibit=vs.sorry_server_inhibit)
        specs.append(hc.VirtualServerSpec(
            key=health_key, real_servers=tuple(rs_specs), quorum=vs.quorum,
            hysteresis=vs.hysteresis, quorum_up=_argv(vs.quorum_up),
            quorum_down=_argv(vs.quorum_down), sorry_server=sorry,
            ha_suspend=vs.ha_suspend, omega=vs.omega,
        ))
        members[health_key] = tuple(keys)
        for key in keys:
            labels.setdefault(key, service_label(key))
            services.append(_virtual_service(vs, key, tuple(dests)))
            if vs.proxy_protocol is not None:
                proxy.add(key)
    return specs, services, members, proxy, labels


def _warn_tunnel(fwd: cm.Forwarding, where: str, warn: _Warnings) -> None:
    # The IPVS model (like ipvsadm before tunnel types) carries only the method: a GUE/GRE
    # tunnel or a checksum option would silently become plain IPIP.
    if fwd.method is LvsMethod.TUN and (
        (fwd.tunnel_type not in (None, TunnelType.IPIP)) or fwd.tunnel_csum is not None
    ):
        warn.add(where, "tunnel type/checksum options are not applied: TUN forwards as "
                 "plain IPIP")


# --------------------------------------------------------------------------- VRRP


def _vrrp(config: cm.Config, warn: _Warnings) -> vm.VrrpConfig | None:
    if not config.vrrp_instances:
        return None
    g = config.global_defs
    if g.vrrp_mcast_group4 != ipaddress.IPv4Address("224.0.0.18") or \
            g.vrrp_mcast_group6 != ipaddress.IPv6Address("ff02::12"):
        warn.add("global_defs", "vrrp_mcast_group4/6 is not applied: adverts use the RFC "
                 "groups 224.0.0.18 / ff02::12")
    track_files = {t.name: t for t in config.track_files}
    scripts = {s.name: s for s in config.vrrp_scripts}
    instances = tuple(_instance(inst, config, track_files, scripts, warn)
                      for inst in config.vrrp_instances)
    groups = []
    for sg in config.sync_groups:
        where = f"vrrp_sync_group {sg.name}"
        if sg.track_interface or sg.track_script or sg.track_file:
            warn.add(where, "track_* on a sync group is not applied; track on the member "
                     "instances instead")
        groups.append(vm.SyncGroup(name=sg.name, members=sg.group, notify=_notify(sg)))
    vscripts = tuple(
        vm.VrrpScript(name=s.name, command=tuple(shlex.split(s.script)), interval=s.interval,
                      timeout=s.timeout, weight=s.weight, weight_reverse=s.weight_reverse,
                      rise=s.rise, fall=s.fall,
                      user=None if s.user is None else s.user.user, init_fail=s.init_fail)
        for s in config.vrrp_scripts
    )
    script_user = None if g.script_user is None else g.script_user.user
    return vm.VrrpConfig(instances=instances, sync_groups=tuple(groups), scripts=vscripts,
                         script_user=script_user)


def _notify(obj: cm.VrrpInstance | cm.SyncGroup) -> vm.NotifyScripts:
    return vm.NotifyScripts(master=_argv_tuple(obj.notify_master),
                            backup=_argv_tuple(obj.notify_backup),
                            fault=_argv_tuple(obj.notify_fault),
                            stop=_argv_tuple(obj.notify_stop),
                            generic=_argv_tuple(obj.notify))


def _instance(inst: cm.VrrpInstance, config: cm.Config, track_files: Mapping[str, cm.TrackFile],
              scripts: Mapping[str, cm.VrrpScript], warn: _Warnings) -> vm.VrrpInstance:
    where = f"vrrp_instance {inst.name}"
    interface = inst.interface or config.global_defs.default_interface or ""
    if inst.mcast_dst_ip is not None:
        warn.add(where, "mcast_dst_ip is not applied: adverts use the RFC group")
    for vip in (*inst.virtual_ipaddress, *inst.virtual_ipaddress_excluded):
        if (vip.brd, vip.scope, vip.label, vip.peer) != (None, None, None, None) or \
                vip.options or (vip.dev is not None and vip.dev != interface):
            warn.add(where, f"virtual_ipaddress {vip.address}: only the address/prefix is "
                     "applied (dev, brd, scope, label, peer and options are not)")
    auth = inst.authentication
    auth_type = vm.AuthType.NONE
    auth_pass = b""
    if auth is not None and auth.auth_type is not None:
        auth_type = vm.AuthType.PASS if auth.auth_type is CfgAuthType.PASS else vm.AuthType.AH
        auth_pass = (auth.auth_pass or "").encode()
    tfiles = []
    for ref in inst.track_file:
        tf = track_files.get(ref.name)
        tfiles.append(vm.TrackFile(
            name=ref.name, path=tf.file if tf is not None else "",
            weight=ref.weight if ref.weight is not None else (tf.weight if tf else 1),
            reverse=ref.reverse or (tf.weight_reverse if tf is not None else False)))
    tscripts = tuple(vm.TrackScript(name=r.name, weight=r.weight, reverse=r.reverse)
                     for r in inst.track_script)
    garp = vm.GarpSettings(
        master_delay=inst.garp_master_delay, master_repeat=inst.garp_master_repeat,
        master_refresh=inst.garp_master_refresh,
        master_refresh_repeat=inst.garp_master_refresh_repeat,
        # keepalived: vrrp_garp_interval paces IPv4 GARPs, vrrp_gna_interval IPv6 NAs.
        interval=(config.global_defs.vrrp_gna_interval if inst.family == 6
                  else config.global_defs.vrrp_garp_interval),
    )
    return vm.VrrpInstance(
        name=inst.name, interface=interface, vrid=inst.virtual_router_id,
        priority=inst.priority, advert_interval=inst.advert_int, version=inst.version,
        state=(vm.InitialState.MASTER if inst.state is CfgVrrpState.MASTER
               else vm.InitialState.BACKUP),
        nopreempt=inst.nopreempt, preempt_delay=inst.preempt_delay,
        vips=tuple(v.address for v in inst.virtual_ipaddress),
        excluded_vips=tuple(v.address for v in inst.virtual_ipaddress_excluded),
        unicast_src_ip=inst.unicast_src_ip,
        unicast_peers=tuple(vm.UnicastPeer(address=p.address, min_ttl=p.min_ttl or 0,
                                           max_ttl=255 if p.max_ttl is None else p.max_ttl)
                            for p in inst.unicast_peers),
        unicast_ttl=255 if inst.unicast_ttl is None else inst.unicast_ttl,
        check_unicast_src=inst.check_unicast_src or config.global_defs.vrrp_check_unicast_src,
        auth_type=auth_type, auth_pass=auth_pass,
        track_interfaces=tuple(vm.TrackInterface(name=t.name, weight=t.weight,
                                                 reverse=t.reverse)
                               for t in inst.track_interface),
        track_scripts=tscripts, track_files=tuple(tfiles),
        dont_track_primary=inst.dont_track_primary, garp=garp,
        # keepalived's default is accept unless no_accept (strict mode aside).
        accept=not inst.no_accept, down_timer_adverts=inst.down_timer_adverts,
        use_vmac=inst.use_vmac is not None,
        vmac_name=inst.use_vmac[0] if inst.use_vmac else None,
        vmac_mac=inst.use_vmac[1].lower() if inst.use_vmac and len(inst.use_vmac) > 1 else None,
        notify=_notify(inst),
    )


# --------------------------------------------------------------------------- sync


def _sync(config: cm.Config, sysctl: IpvsSysctl) -> SyncDaemonConfig | None:
    lsd = config.global_defs.lvs_sync_daemon
    if lsd is None:
        return None
    syncid = lsd.sync_id
    if syncid is None:
        # keepalived: the VRID of the instance named, 0 without one.
        vrids = {i.name: i.virtual_router_id for i in config.vrrp_instances}
        syncid = vrids.get(lsd.instance or "", 0)
    key = config.global_defs.sync_auth_key
    base = SyncDaemonConfig(
        interface=lsd.interface, instance=lsd.instance or "", syncid=syncid,
        maxlen=lsd.maxlen, port=lsd.port, group=lsd.group, sync_ports=sysctl.sync_ports,
        version=sysctl.sync_version, sock_size=sysctl.sync_sock_size,
        auth_key=None if key is None else key.encode(),
    )
    if lsd.ttl is not None:
        base = replace(base, ttl=lsd.ttl)
    if sysctl.sync_qlen_max > 0:
        base = replace(base, qlen_max=sysctl.sync_qlen_max)
    return base


def _timeouts(config: cm.Config) -> IpvsTimeouts | None:
    t = config.global_defs.lvs_timeouts
    if (t.tcp, t.tcpfin, t.udp) == (None, None, None):
        return None
    base = IpvsTimeouts()
    return IpvsTimeouts(tcp=base.tcp if t.tcp is None else t.tcp,
                        tcpfin=base.tcpfin if t.tcpfin is None else t.tcpfin,
                        udp=base.udp if t.udp is None else t.udp)


def _kernel_timeouts(config: cm.Config) -> IpvsTimeouts | None:
    # keepalived sends only the timeouts given; IPVS_CMD_SET_CONFIG leaves a 0 unchanged.
    t = config.global_defs.lvs_timeouts
    if (t.tcp, t.tcpfin, t.udp) == (None, None, None):
        return None
    return IpvsTimeouts(tcp=t.tcp or 0, tcpfin=t.tcpfin or 0, udp=t.udp or 0)


def _sysctl_names(g: cm.GlobalDefs) -> tuple[str, ...]:
    """The tunables the `ipvs_sysctl` block names, in the order they are written."""
    # The block's keywords are recorded where they were written, in the order of the file.
    prefix = "ipvs_sysctl."
    known = set(IpvsSysctl.names())
    return tuple(key.removeprefix(prefix) for key in g.keyword_pos
                 if key.startswith(prefix) and key.removeprefix(prefix) in known)


# --------------------------------------------------------------------------- entry points


def derive(config: cm.Config) -> Derived:
    """Every runtime model of `config` (see the module docstring).

    Raises:
        ValueError: a value a runtime model refuses (the configuration's validation is
            meant to catch these first; the daemon reports it like a configuration error).
    """
    warn = _Warnings()
    g = config.global_defs
    if g.vrrp_min_garp:
        warn.add("global_defs", "vrrp_min_garp is not applied: the garp_* timers are used "
                 "as configured")
    specs, services, members, proxy, labels = _virtual_servers(config, warn)
    sysctl = g.ipvs_sysctl
    return Derived(
        checks=tuple(specs),
        table=IpvsTable(tuple(services)),
        members=members,
        vrrp=_vrrp(config, warn),
        sync=_sync(config, sysctl),
        sysctl=sysctl,
        timeouts=_timeouts(config),
        proxy_protocol=frozenset(proxy),
        warnings=tuple(warn.items),
        labels=labels,
        sysctl_names=_sysctl_names(g),
        kernel_timeouts=_kernel_timeouts(config),
        lvs_flush=g.lvs_flush,
        lvs_flush_on_stop=g.lvs_flush_on_stop,
    )


def desired_table(
    derived: Derived,
    views: Mapping[ServiceKey, hc.VirtualServerView],
    overrides: Mapping[tuple[ServiceKey, RsKey], Override] | None = None,
) -> IpvsTable:
    """The IPVS table the reconciler makes real.

    Each service gets the destinations health wants for its spec (`views`, keyed by the
    health key; every member of a group follows it). A service whose spec has no view yet
    keeps the configured destinations. Operator overrides (drain, disable, weight; keyed by
    table service and `(addr, port)`) are folded in last by `fold_overrides`, the one rule
    the API documents: an override never adds a destination health removed.
    """
    follow: dict[ServiceKey, hc.VirtualServerView] = {}
    for health_key, keys in derived.members.items():
        view = views.get(health_key)
        if view is not None:
            for key in keys:
                follow[key] = view
    services: list[VirtualService] = []
    for svc in derived.table.services:
        view = follow.get(svc.key)
        dests = svc.destinations if view is None else view.destinations
        if overrides:
            dests = fold_overrides(svc.key, dests, overrides)
        services.append(replace(svc, destinations=dests))
    return IpvsTable(tuple(services))


def reload_changes(old: Derived, new: Derived) -> tuple[ReloadChange, ...]:
    """The keyed difference between two derivations: what a reload adds, removes and changes
    (virtual servers and real servers by `ServiceKey` and `(addr, port)`, VRRP instances by
    name). Unchanged objects do not appear; `hactl reload --dry-run` prints this list."""
    out: list[ReloadChange] = []
    before = {s.key: s for s in old.table.services}
    after = {s.key: s for s in new.table.services}
    for key, svc in after.items():
        label = f"virtual_server {_api_key(key)}"
        was = before.get(key)
        if was is None:
            out.append(ReloadChange(action="add", subject=label,
                                    detail=_count(len(svc.destinations), "real server")))
            continue
        attrs = [f"{name} {getattr(was, name)} -> {getattr(svc, name)}"
                 for name in _SERVICE_FIELDS if getattr(was, name) != getattr(svc, name)]
        if attrs:
            out.append(ReloadChange(action="change", subject=label, detail=", ".join(attrs)))
        old_dests = {d.key: d for d in was.destinations}
        new_dests = {d.key: d for d in svc.destinations}
        for dkey, dest in new_dests.items():
            subject = f"real_server {_api_key(key)} {_rs_label(dkey)}"
            prev = old_dests.get(dkey)
            if prev is None:
                out.append(ReloadChange(action="add", subject=subject,
                                        detail=f"weight {dest.weight}"))
            elif prev != dest:
                detail = (f"weight {prev.weight} -> {dest.weight}" if prev.weight != dest.weight
                          else "forwarding or thresholds")
                out.append(ReloadChange(action="change", subject=subject, detail=detail))
        out.extend(ReloadChange(action="remove",
                                subject=f"real_server {_api_key(key)} {_rs_label(dkey)}")
                   for dkey in old_dests if dkey not in new_dests)
    out.extend(ReloadChange(action="remove", subject=f"virtual_server {_api_key(key)}")
               for key in before if key not in after)
    old_vrrp = {i.name: i for i in old.vrrp.instances} if old.vrrp else {}
    new_vrrp = {i.name: i for i in new.vrrp.instances} if new.vrrp else {}
    for name, inst in new_vrrp.items():
        if name not in old_vrrp:
            out.append(ReloadChange(action="add", subject=f"vrrp_instance {name}",
                                    detail="started (INIT, then BACKUP or MASTER)"))
        elif old_vrrp[name] != inst:
            out.append(ReloadChange(action="change", subject=f"vrrp_instance {name}",
                                    detail=_vrrp_detail(old_vrrp[name], inst)))
    out.extend(ReloadChange(action="remove", subject=f"vrrp_instance {name}",
                            detail="leaves (priority-0 advert if master, VIPs removed)")
               for name in old_vrrp if name not in new_vrrp)
    old_groups = {g.name: g for g in old.vrrp.sync_groups} if old.vrrp else {}
    new_groups = {g.name: g for g in new.vrrp.sync_groups} if new.vrrp else {}
    for name, group in new_groups.items():
        was_group = old_groups.get(name)
        if was_group is None:
            out.append(ReloadChange(action="add", subject=f"vrrp_sync_group {name}",
                                    detail="members " + ", ".join(group.members)))
        elif was_group != group:
            detail = (f"members {', '.join(was_group.members)} -> {', '.join(group.members)}"
                      if was_group.members != group.members else "settings")
            out.append(ReloadChange(action="change", subject=f"vrrp_sync_group {name}",
                                    detail=detail))
    out.extend(ReloadChange(action="remove", subject=f"vrrp_sync_group {name}")
               for name in old_groups if name not in new_groups)
    if old.sync != new.sync:
        out.append(ReloadChange(action="change", subject="lvs_sync_daemon"))
    return tuple(out)


def _vrrp_detail(old: vm.VrrpInstance, new: vm.VrrpInstance) -> str:
    """What changes in a VRRP instance, as `hactl reload --dry-run` shows it."""
    if (old.interface, old.family, old.vrid, old.unicast_src_ip) != (
            new.interface, new.family, new.vrid, new.unicast_src_ip):
        moved = [f"{name} {getattr(old, name)} -> {getattr(new, name)}"
                 for name in ("interface", "vrid", "family", "unicast_src_ip")
                 if getattr(old, name) != getattr(new, name)]
        return "replaced (leaves, then starts): " + ", ".join(moved)
    parts: list[str] = []
    for f in fields(vm.VrrpInstance):
        was, now = getattr(old, f.name), getattr(new, f.name)
        if was == now:
            continue
        if f.name == "vips":
            gone = [str(v) for v in was if v not in now]
            came = [str(v) for v in now if v not in was]
            parts.append("vips " + " ".join([*(f"+{v}" for v in came), *(f"-{v}" for v in gone)]))
        elif f.name == "auth_pass":
            parts.append("auth_pass changed")
        elif isinstance(was, bool | int | float | str | enum.Enum) or was is None:
            shown = [x.value if isinstance(x, enum.Enum) else x for x in (was, now)]
            parts.append(f"{f.name} {shown[0]} -> {shown[1]}")
        else:
            parts.append(f"{f.name} changed")
    return ", ".join(parts)


_SERVICE_FIELDS = ("scheduler", "sched_flags", "persistence_timeout", "netmask", "pe_name",
                   "one_packet")


def _api_key(key: ServiceKey) -> str:
    return format_vs(key)


def _rs_label(key: RsKey) -> str:
    return format_rs(key)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
