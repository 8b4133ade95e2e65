"""Cross-object rules over a built model, collecting every violation.

`validate(config)` returns a list of `ConfigValueError`s (empty when the model is coherent).
Each rule is a small function over the whole model; all of them run, so one `hactl check`
reports everything (miniwdl's multi-error collection). Local ranges are `build.py`'s job.

Environment-only facts (does interface eth1 exist on this host?) are deliberately not checked:
`hactl check` must give the same verdict on a laptop and on the director.

Pure: no I/O. Imports only `errors`, `config.keywords`, `config.model`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address

from hactl.config import model as m
from hactl.config.keywords import AuthType, CheckerKind, LvsMethod, Protocol, VrrpState
from hactl.errors import ConfigError, ConfigValueError, SourcePos

__all__ = ["RULES", "validate"]


def _err(pos: SourcePos, message: str, code: str, hint: str = "") -> ConfigValueError:
    return ConfigValueError(message, pos, code=code, hint=hint)


def _duplicate_names(config: m.Config) -> Iterator[ConfigError]:
    kinds: tuple[
        tuple[
            str,
            tuple[
                m.VrrpScript | m.TrackFile | m.SyncGroup | m.VrrpInstance | m.VirtualServerGroup,
                ...,
            ],
        ],
        ...,
    ] = (
        ("vrrp_script", config.vrrp_scripts),
        ("track_file", config.track_files),
        ("vrrp_sync_group", config.sync_groups),
        ("vrrp_instance", config.vrrp_instances),
        ("virtual_server_group", config.virtual_server_groups),
    )
    for what, items in kinds:
        first: dict[str, SourcePos] = {}
        for item in items:
            if item.name in first:
                yield _err(
                    item.pos,
                    f"{what} {item.name} is defined twice (first at line {first[item.name].line})",
                    "duplicate",
                )
            else:
                first[item.name] = item.pos


def _vrid_per_interface(config: m.Config) -> Iterator[ConfigError]:
    # man (virtual_router_id): unique per interface and address family, except unicast
    # instances whose peers do not overlap, and multicast ones on different groups.
    seen: dict[tuple[str | None, int, int, object], m.VrrpInstance] = {}
    for inst in config.vrrp_instances:
        if not inst.virtual_router_id:
            continue  # missing: already reported by build
        channel: object = inst.mcast_dst_ip
        if inst.unicast_peers:
            channel = frozenset(p.address for p in inst.unicast_peers)
        key = (inst.interface, inst.family, inst.virtual_router_id, None)
        other = seen.get(key)
        if other is not None:
            mine = channel
            theirs: object = other.mcast_dst_ip
            if other.unicast_peers:
                theirs = frozenset(p.address for p in other.unicast_peers)
            disjoint = (
                isinstance(mine, frozenset)
                and isinstance(theirs, frozenset)
                and not (mine & theirs)
            ) or (
                not isinstance(mine, frozenset)
                and not isinstance(theirs, frozenset)
                and mine != theirs
            )
            if not disjoint:
                yield _err(
                    inst.at("virtual_router_id"),
                    f"vrrp_instance {inst.name}: virtual_router_id {inst.virtual_router_id} is "
                    f"already used on {inst.interface or 'the default interface'} (IPv"
                    f"{inst.family}) by vrrp_instance {other.name} "
                    f"(line {other.at('virtual_router_id').line})",
                    "duplicate-vrid",
                )
                continue
        seen[key] = inst


def _instance_rules(config: m.Config) -> Iterator[ConfigError]:
    scripts = {s.name for s in config.vrrp_scripts}
    files = {f.name for f in config.track_files}
    for inst in config.vrrp_instances:
        where = f"vrrp_instance {inst.name}"
        for ref in inst.track_script:
            if ref.name not in scripts:
                yield _err(
                    ref.pos,
                    f"{where}: track_script `{ref.name}` names no vrrp_script",
                    "unknown-ref",
                    _near(ref.name, scripts),
                )
        for ref in inst.track_file:
            if ref.name not in files:
                yield _err(
                    ref.pos,
                    f"{where}: track_file `{ref.name}` names no track_file",
                    "unknown-ref",
                    _near(ref.name, files),
                )
        if inst.nopreempt and inst.state is VrrpState.MASTER:
            # man (nopreempt): "For this to work, the initial state must not be MASTER."
            yield _err(
                inst.at("nopreempt"),
                f"{where}: nopreempt needs `state BACKUP` (state is MASTER)",
                "nopreempt-master",
            )
        if inst.accept and inst.no_accept:
            yield _err(inst.at("no_accept"), f"{where}: both `accept` and `no_accept`", "conflict")
        if inst.version == 2 and inst.advert_int != int(inst.advert_int):
            # keepalived rounds this up silently (issue #1615); VRRPv2 carries whole seconds.
            yield _err(
                inst.at("advert_int"),
                f"{where}: advert_int {inst.advert_int:g} needs `version 3` "
                "(VRRPv2 advertises whole seconds)",
                "advert-int",
            )
        centis = inst.advert_int * 100
        if inst.version == 3 and abs(centis - round(centis)) > 1e-6:
            # RFC 5798 §5.2.7: Max Adver Int is in centiseconds; no silent rounding.
            yield _err(
                inst.at("advert_int"),
                f"{where}: advert_int {inst.advert_int:g} is not a whole number of centiseconds "
                "(the VRRPv3 unit)",
                "advert-int",
            )
        families = {v.address.version for v in inst.virtual_ipaddress}
        if len(families) > 1:
            # man (virtual_ipaddress_excluded): all addresses in virtual_ipaddress must be of
            # the same family.
            yield _err(
                inst.at("virtual_ipaddress"),
                f"{where}: virtual_ipaddress mixes IPv4 and IPv6; move one "
                "family to virtual_ipaddress_excluded",
                "vip-family",
            )
        peers = {p.address.version for p in inst.unicast_peers}
        if inst.unicast_src_ip is not None and peers and peers != {inst.unicast_src_ip.version}:
            yield _err(
                inst.at("unicast_src_ip"),
                f"{where}: unicast_src_ip and unicast_peer families differ",
                "unicast-family",
            )
        auth = inst.authentication
        if auth is not None and auth.auth_type is not None and not auth.auth_pass:
            yield _err(auth.pos, f"{where}: authentication needs `auth_pass`", "missing")
        if auth is not None and auth.auth_type is AuthType.AH and inst.version == 3:
            yield _err(auth.pos, f"{where}: AH authentication is VRRPv2 only", "conflict")


def _near(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else ""


def _sync_groups(config: m.Config) -> Iterator[ConfigError]:
    instances = {i.name for i in config.vrrp_instances}
    member_of: dict[str, m.SyncGroup] = {}
    scripts = {s.name for s in config.vrrp_scripts}
    for group in config.sync_groups:
        for name in group.group:
            if name not in instances:
                yield _err(
                    group.at(f"group:{name}"),
                    f"vrrp_sync_group {group.name}: `{name}` names no vrrp_instance",
                    "unknown-ref",
                    _near(name, instances),
                )
            elif name in member_of and member_of[name] is not group:
                yield _err(
                    group.at(f"group:{name}"),
                    f"vrrp_sync_group {group.name}: vrrp_instance {name} is "
                    f"already in vrrp_sync_group {member_of[name].name}",
                    "duplicate",
                )
            else:
                member_of[name] = group
        for ref in group.track_script:
            if ref.name not in scripts:
                yield _err(
                    ref.pos,
                    f"vrrp_sync_group {group.name}: track_script `{ref.name}` names no vrrp_script",
                    "unknown-ref",
                )


def _vip_overlap(config: m.Config) -> Iterator[ConfigError]:
    owner: dict[m.IPAddress, m.VrrpInstance] = {}
    for inst in config.vrrp_instances:
        for vip in (*inst.virtual_ipaddress, *inst.virtual_ipaddress_excluded):
            ip = vip.address.ip
            other = owner.get(ip)
            if other is not None and other is not inst:
                yield _err(
                    vip.pos,
                    f"vrrp_instance {inst.name}: {ip} is already a virtual "
                    f"address of vrrp_instance {other.name} (line {other.pos.line})",
                    "vip-overlap",
                )
            owner.setdefault(ip, inst)


def _lvs_sync(config: m.Config) -> Iterator[ConfigError]:
    glob = config.global_defs
    sync = glob.lvs_sync_daemon
    names = {i.name for i in config.vrrp_instances}
    if sync is not None and sync.instance is not None and sync.instance not in names:
        yield _err(
            sync.pos,
            f"lvs_sync_daemon: `{sync.instance}` names no vrrp_instance",
            "unknown-ref",
            _near(sync.instance, names),
        )
    if glob.sync_auth_key is not None and sync is None:
        yield _err(
            glob.at("sync_auth_key"),
            "sync_auth_key is set but there is no lvs_sync_daemon",
            "missing",
        )


def _virtual_servers(config: m.Config) -> Iterator[ConfigError]:
    by_name = {g.name: g for g in config.virtual_server_groups}
    groups = set(by_name)
    files = {f.name for f in config.track_files}
    first: dict[m.Key, m.VirtualServer] = {}
    # Labels are made only for a message: a large file has tens of thousands of services.
    for vs in config.virtual_servers:
        other = first.setdefault(vs.key, vs)  # one hashing of the key, which holds an address
        if other is not vs:
            yield _err(
                vs.pos,
                f"{_vs_where(vs)} is defined twice (first at line {other.pos.line})",
                "duplicate",
            )
        if vs.group is not None and vs.group not in groups:
            yield _err(
                vs.pos,
                f"{_vs_where(vs)}: `{vs.group}` names no virtual_server_group",
                "unknown-ref",
                _near(vs.group, groups),
            )
        yield from _service_flags(vs, by_name)
        seen_rs: dict[tuple[type, int, int], m.RealServer] = {}
        for rs in vs.real_servers:
            # rs.key without its first item, the service's key, the same for all of them.
            # The address as its class and number: equal keys exactly when the addresses
            # are equal, without ipaddress's __hash__ (a hex string made per call).
            address = rs.address
            seen = seen_rs.setdefault((type(address), int(address), rs.port or 0), rs)
            if seen is not rs:
                yield _err(
                    rs.pos,
                    f"{_vs_where(vs)}: {_rs_label(rs)} is defined twice "
                    f"(first at line {seen.pos.line})",
                    "duplicate",
                )
            if rs.port is None and _has_ports(vs, by_name):
                # keepalived would use port 0 here, which IPVS rejects for a port service.
                yield _err(
                    rs.pos,
                    f"{_vs_where(vs)}: {_rs_label(rs)} needs a port (the service is not fwmark)",
                    "missing-port",
                )
            if (
                vs.address is not None
                # rs.address.version != vs.address.version, without two property calls
                and isinstance(address, IPv4Address) is not isinstance(vs.address, IPv4Address)
                and rs.lvs_method.method is not LvsMethod.TUN
            ):
                yield _err(
                    rs.pos,
                    f"{_vs_where(vs)}: {_rs_label(rs)} is not of the virtual server's address "
                    "family (only TUN may mix families)",
                    "family",
                )
            for check in rs.checkers:
                if (
                    check.kind is CheckerKind.FILE_CHECK
                    and isinstance(check, m.FileCheck)
                    and check.track_file
                    and check.track_file not in files
                ):
                    yield _err(
                        check.pos,
                        f"FILE_CHECK: track_file `{check.track_file}` names no track_file",
                        "unknown-ref",
                        _near(check.track_file, files),
                    )


def _service_flags(
    vs: m.VirtualServer, groups: dict[str, m.VirtualServerGroup]
) -> Iterator[ConfigError]:
    # keepalived (check_data.c validate_check_config) "resets" or "clears" these and logs;
    # hactl refuses them, so the running service is the one written.
    fwmark = vs.fwmark is not None or (
        vs.group is not None
        and vs.group in groups
        and all(member.fwmark is not None for member in groups[vs.group].members)
    )
    if vs.ops and not fwmark and vs.protocol is not Protocol.UDP:
        yield _err(
            vs.at("ops"),
            f"{_vs_where(vs)}: `ops` (one-packet scheduling) needs protocol UDP or a fwmark "
            "service",
            "conflict",
        )
    if vs.ha_suspend and fwmark:
        yield _err(
            vs.at("ha_suspend"),
            f"{_vs_where(vs)}: `ha_suspend` cannot be used with fwmarks",
            "conflict",
        )
    if vs.address is not None and vs.port == 0 and vs.persistence_timeout is None:
        yield _err(
            vs.pos, f"{_vs_where(vs)}: port 0 (all ports) needs `persistence_timeout`", "missing"
        )


def _has_ports(vs: m.VirtualServer, groups: dict[str, m.VirtualServerGroup]) -> bool:
    """Whether the service is port-based, so its real servers need a port."""
    if vs.address is not None:
        return vs.port != 0
    group = groups.get(vs.group or "")
    return group is not None and any(member.port for member in group.members)


def _vs_where(vs: m.VirtualServer) -> str:
    return "virtual_server " + _vs_label(vs)


def _rs_label(rs: m.RealServer) -> str:
    return f"real_server {rs.address}" + (f" {rs.port}" if rs.port is not None else "")


def _vs_label(vs: m.VirtualServer) -> str:
    if vs.fwmark is not None:
        return f"fwmark {vs.fwmark}"
    if vs.group is not None:
        return f"group {vs.group}"
    return f"{vs.address} {vs.port}"


RULES: tuple[Callable[[m.Config], Iterator[ConfigError]], ...] = (
    _duplicate_names,
    _vrid_per_interface,
    _instance_rules,
    _sync_groups,
    _vip_overlap,
    _lvs_sync,
    _virtual_servers,
)


def validate(config: m.Config) -> list[ConfigError]:
    """Every cross-object violation in `config` (empty when coherent)."""
    return [error for rule in RULES for error in rule(config)]
