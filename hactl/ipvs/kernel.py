"""`KernelIpvs`: the `IpvsBackend` over the Linux kernel's IPVS (generic netlink family "IPVS").

Owns:
* the netlink message layout of the IPVS family (`IpvsMessage`), complete where pyroute2's
  is not: typed timeout attributes for `IPVS_CMD_SET_CONFIG` / `GET_CONFIG` and the sync
  daemon attributes (pyroute2 types both `hex`), raw address attributes decoded with their
  family, and the service netmask carried as the kernel reads it (see below);
* the pure translation model <-> attributes (`service_attrs`, `dest_attrs`, `service_key_attrs`,
  `service_from_nla`, `dest_from_nla`, `netmask_to_wire`, `netmask_from_wire`) and
  errno -> `KernelError` (`kernel_error`);
* the adapter itself, `KernelIpvs`: `dump`, `apply`, `services`, `connections`, timeouts,
  tunables (`/proc/sys/net/ipv4/vs`), `lvs_flush` and `lvs_flush_on_stop`, the kernel's own
  sync daemons (start, stop, list), and the ownership of services (what hactl installed, the
  only services it reads back in `dump()` and the only ones it removes);
* `kernel_ipvs_available()`: whether the "IPVS" generic netlink family resolves here.

Pitfalls of pyroute2 0.9.7 this module avoids, each verified on a 6.1 kernel:
* pyroute2's `service("update")` / `dest("update")` send `IPVS_CMD_DEL_*`: they delete.
  This module never uses pyroute2's IPVS verbs; it sends `IPVS_CMD_SET_SERVICE` /
  `IPVS_CMD_SET_DEST` itself to modify in place.
* `IPVSDest` defaults to forwarding method 3 (direct routing): every destination sent here
  carries its method explicitly.
* A fwmark service needs a netmask attribute like any other (EINVAL without one): it is
  always sent.
* The netmask attribute is a `__be32` the kernel reads as a network-order mask for IPv4 and
  as a plain prefix length (1..128, host order) for IPv6. pyroute2 types it as an IPv4
  address, which makes a correct IPv6 value unrepresentable ("0.0.0.128" is rejected);
  here it is a host-order u32 and `netmask_to_wire` computes its value per family.

Invariants:
* Operations are idempotent: adding what exists converges it to the desired state (the add
  is retried as a set), deleting what is missing succeeds. Every other refusal raises
  `KernelError(op, errno)` naming the service or destination; an unknown scheduler or
  persistence engine, and a missing IPVS family, raise `NotSupported`.
* `dump()` returns the services hactl owns (added, or adopted with `adopt()`), destinations
  in add order (the kernel lists them newest first); `services()` returns the whole table in
  the kernel's order, counters included.
* Netlink I/O runs on the event loop (pyroute2's asyncio socket), one request at a time (the
  kernel refuses a second dump on a socket with EBUSY while one runs, so concurrent callers,
  such as a status read during a reconcile, are serialized); /proc I/O runs in a worker
  thread. Operations of one `apply()` are sent one at a time, in order.

The only module of hactl that imports pyroute2's netlink classes for IPVS; `Any` stays here.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, assert_never

from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    genlmsg,
    nla,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import AsyncGenericNetlinkSocket

from hactl.errors import KernelError, LinkNotFound, NotSupported
from hactl.ipvs.ipvsadm import SyncDaemonStatus
from hactl.ipvs.model import (
    AF_INET,
    AF_INET6,
    IP_VS_SVC_F_ONEPACKET,
    IP_VS_SVC_F_PERSISTENT,
    IP_VS_SVC_F_SCHED1,
    IP_VS_SVC_F_SCHED2,
    IP_VS_SVC_F_SCHED3,
    ConnStatus,
    Destination,
    DestStatus,
    FwdMethod,
    IPAddress,
    IpProto,
    IpvsSysctl,
    IpvsTable,
    IpvsTimeouts,
    Rates,
    ServiceKey,
    ServiceStatus,
    Stats,
    VirtualService,
)
from hactl.ipvs.plan import AddDest, AddService, DelDest, DelService, EditDest, EditService, IpvsOp
from hactl.ipvs.procfs import IpvsProcFs

if TYPE_CHECKING:
    from hactl.ipvs.backend import KernelIpvsBackend

__all__ = [
    "GENL_NAME",
    "IpvsMessage",
    "KernelIpvs",
    "build_message",
    "daemon_attrs",
    "daemon_from_nla",
    "describe_dest",
    "describe_service",
    "dest_attrs",
    "dest_from_nla",
    "dest_key_attrs",
    "kernel_error",
    "kernel_ipvs_available",
    "netmask_from_wire",
    "netmask_to_wire",
    "service_attrs",
    "service_flags",
    "service_from_nla",
    "service_key_attrs",
    "timeouts_attrs",
    "timeouts_from_message",
]

GENL_NAME = "IPVS"
GENL_VERSION = 1

# include/uapi/linux/ip_vs.h: commands.
IPVS_CMD_NEW_SERVICE = 1
IPVS_CMD_SET_SERVICE = 2
IPVS_CMD_DEL_SERVICE = 3
IPVS_CMD_GET_SERVICE = 4
IPVS_CMD_NEW_DEST = 5
IPVS_CMD_SET_DEST = 6
IPVS_CMD_DEL_DEST = 7
IPVS_CMD_GET_DEST = 8
IPVS_CMD_NEW_DAEMON = 9
IPVS_CMD_DEL_DAEMON = 10
IPVS_CMD_GET_DAEMON = 11
IPVS_CMD_SET_CONFIG = 12
IPVS_CMD_GET_CONFIG = 13
IPVS_CMD_FLUSH = 17

# Flag bits a service is configured with; the kernel adds IP_VS_SVC_F_HASHED on its own.
_SVC_CONFIG_FLAGS = (
    IP_VS_SVC_F_PERSISTENT
    | IP_VS_SVC_F_ONEPACKET
    | IP_VS_SVC_F_SCHED1
    | IP_VS_SVC_F_SCHED2
    | IP_VS_SVC_F_SCHED3
)
_SCHED_FLAGS = IP_VS_SVC_F_SCHED1 | IP_VS_SVC_F_SCHED2 | IP_VS_SVC_F_SCHED3
_FLAGS_MASK_ALL = 0xFFFFFFFF  # as ipvsadm sends it: every bit comes from the request

_REQ = NLM_F_REQUEST | NLM_F_ACK
_CREATE = _REQ | NLM_F_CREATE | NLM_F_EXCL
_DUMP = NLM_F_REQUEST | NLM_F_DUMP
# A request with a one-message reply asks for no ACK: pyroute2 0.9 ends the request at the
# reply, and the ACK's datagram, arriving after, stays for good in the socket's queue of
# unsolicited messages (nothing reads it). Errors are reported either way.
_GET = NLM_F_REQUEST


# ---------------------------------------------------------------------------------------------
# Message layout (include/uapi/linux/ip_vs.h).


class _Stats(nla):  # type: ignore[misc]
    prefix = "IPVS_STATS_ATTR_"
    nla_map = (
        ("IPVS_STATS_ATTR_UNSPEC", "none"),
        ("IPVS_STATS_ATTR_CONNS", "uint32"),
        ("IPVS_STATS_ATTR_INPKTS", "uint32"),
        ("IPVS_STATS_ATTR_OUTPKTS", "uint32"),
        ("IPVS_STATS_ATTR_INBYTES", "uint64"),
        ("IPVS_STATS_ATTR_OUTBYTES", "uint64"),
        ("IPVS_STATS_ATTR_CPS", "uint32"),
        ("IPVS_STATS_ATTR_INPPS", "uint32"),
        ("IPVS_STATS_ATTR_OUTPPS", "uint32"),
        ("IPVS_STATS_ATTR_INBPS", "uint32"),
        ("IPVS_STATS_ATTR_OUTBPS", "uint32"),
        ("IPVS_STATS_ATTR_PAD", "none"),
    )


class _Stats64(nla):  # type: ignore[misc]
    prefix = "IPVS_STATS_ATTR_"
    nla_map = tuple((name, "none" if kind == "none" else "uint64") for name, kind in _Stats.nla_map)


class IpvsMessage(genlmsg):  # type: ignore[misc]  # pyroute2 is untyped
    """A generic netlink message of the IPVS family, every attribute typed."""

    prefix = "IPVS_CMD_ATTR_"
    nla_map = (
        ("IPVS_CMD_ATTR_UNSPEC", "none"),
        ("IPVS_CMD_ATTR_SERVICE", "service"),
        ("IPVS_CMD_ATTR_DEST", "dest"),
        ("IPVS_CMD_ATTR_DAEMON", "daemon"),
        ("IPVS_CMD_ATTR_TIMEOUT_TCP", "uint32"),
        ("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN", "uint32"),
        ("IPVS_CMD_ATTR_TIMEOUT_UDP", "uint32"),
    )

    # pyroute2 finds the class of a nested attribute by the type name given in nla_map.
    class service(nla):  # type: ignore[misc]
        prefix = "IPVS_SVC_ATTR_"
        nla_map = (
            ("IPVS_SVC_ATTR_UNSPEC", "none"),
            ("IPVS_SVC_ATTR_AF", "uint16"),
            ("IPVS_SVC_ATTR_PROTOCOL", "uint16"),
            ("IPVS_SVC_ATTR_ADDR", "cdata"),
            ("IPVS_SVC_ATTR_PORT", "be16"),
            ("IPVS_SVC_ATTR_FWMARK", "uint32"),
            ("IPVS_SVC_ATTR_SCHED_NAME", "asciiz"),
            ("IPVS_SVC_ATTR_FLAGS", "flags"),
            ("IPVS_SVC_ATTR_TIMEOUT", "uint32"),
            ("IPVS_SVC_ATTR_NETMASK", "uint32"),
            ("IPVS_SVC_ATTR_STATS", "stats"),
            ("IPVS_SVC_ATTR_PE_NAME", "asciiz"),
            ("IPVS_SVC_ATTR_STATS64", "stats64"),
        )

        class flags(nla):  # type: ignore[misc]
            fields = (("flags", "I"), ("mask", "I"))

        stats = _Stats
        stats64 = _Stats64

    class daemon(nla):  # type: ignore[misc]
        prefix = "IPVS_DAEMON_ATTR_"
        nla_map = (
            ("IPVS_DAEMON_ATTR_UNSPEC", "none"),
            ("IPVS_DAEMON_ATTR_STATE", "uint32"),
            ("IPVS_DAEMON_ATTR_MCAST_IFN", "asciiz"),
            ("IPVS_DAEMON_ATTR_SYNC_ID", "uint32"),
            ("IPVS_DAEMON_ATTR_SYNC_MAXLEN", "uint16"),
            ("IPVS_DAEMON_ATTR_MCAST_GROUP", "cdata"),
            ("IPVS_DAEMON_ATTR_MCAST_GROUP6", "cdata"),
            ("IPVS_DAEMON_ATTR_MCAST_PORT", "uint16"),  # host byte order
            ("IPVS_DAEMON_ATTR_MCAST_TTL", "uint8"),
        )

    class dest(nla):  # type: ignore[misc]
        prefix = "IPVS_DEST_ATTR_"
        nla_map = (
            ("IPVS_DEST_ATTR_UNSPEC", "none"),
            ("IPVS_DEST_ATTR_ADDR", "cdata"),
            ("IPVS_DEST_ATTR_PORT", "be16"),
            ("IPVS_DEST_ATTR_FWD_METHOD", "uint32"),
            ("IPVS_DEST_ATTR_WEIGHT", "uint32"),
            ("IPVS_DEST_ATTR_U_THRESH", "uint32"),
            ("IPVS_DEST_ATTR_L_THRESH", "uint32"),
            ("IPVS_DEST_ATTR_ACTIVE_CONNS", "uint32"),
            ("IPVS_DEST_ATTR_INACT_CONNS", "uint32"),
            ("IPVS_DEST_ATTR_PERSIST_CONNS", "uint32"),
            ("IPVS_DEST_ATTR_STATS", "stats"),
            ("IPVS_DEST_ATTR_ADDR_FAMILY", "uint16"),
            ("IPVS_DEST_ATTR_STATS64", "stats64"),
            ("IPVS_DEST_ATTR_TUN_TYPE", "uint8"),
            ("IPVS_DEST_ATTR_TUN_PORT", "be16"),
            ("IPVS_DEST_ATTR_TUN_FLAGS", "uint16"),
        )

        stats = _Stats
        stats64 = _Stats64


Attrs = list[tuple[str, Any]]


def build_message(cmd: int, attrs: Attrs) -> Any:
    """An `IpvsMessage` for command `cmd` with top-level attributes `attrs` (not yet encoded)."""
    msg = IpvsMessage()
    msg["cmd"] = cmd
    msg["version"] = GENL_VERSION
    msg["attrs"] = attrs
    return msg


# ---------------------------------------------------------------------------------------------
# Pure translation: model -> attributes.


def _family(addr: IPAddress) -> int:
    return AF_INET if addr.version == 4 else AF_INET6


def netmask_to_wire(family: int, prefix: int) -> int:
    """The value of IPVS_SVC_ATTR_NETMASK (a host-order u32 on the wire) for a prefix length.

    IPv4: the mask in network byte order, as the kernel compares it with addresses.
    IPv6: the prefix length itself; the kernel accepts 1..128.

    Raises:
        ValueError: prefix out of range for the family.
    """
    if family == AF_INET6:
        if not 1 <= prefix <= 128:
            raise ValueError(f"IPv6 persistence netmask /{prefix} out of range 1..128")
        return prefix
    if not 0 <= prefix <= 32:
        raise ValueError(f"IPv4 persistence netmask /{prefix} out of range 0..32")
    mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    return int.from_bytes(mask.to_bytes(4, "big"), sys.byteorder)


def netmask_from_wire(family: int, value: int) -> int:
    """The prefix length carried by an IPVS_SVC_ATTR_NETMASK value (see `netmask_to_wire`).

    Raises:
        ValueError: an IPv4 mask that is not contiguous.
    """
    if family == AF_INET6:
        return value
    mask = int.from_bytes(value.to_bytes(4, sys.byteorder), "big")
    prefix = 32 - ((~mask & 0xFFFFFFFF).bit_length())
    if mask != (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF:
        raise ValueError(f"non-contiguous IPv4 netmask {ipaddress.IPv4Address(mask)}")
    return prefix


def service_key_attrs(key: ServiceKey) -> Attrs:
    """The attributes that identify a service: (af, protocol, addr, port) or (af, fwmark)."""
    if key.is_fwmark:
        return [("IPVS_SVC_ATTR_AF", key.family), ("IPVS_SVC_ATTR_FWMARK", key.fwmark)]
    if key.addr is None:
        raise ValueError(f"service {key} has neither an address nor a fwmark")
    return [
        ("IPVS_SVC_ATTR_AF", key.family),
        ("IPVS_SVC_ATTR_PROTOCOL", int(key.protocol)),
        ("IPVS_SVC_ATTR_ADDR", key.addr.packed),
        ("IPVS_SVC_ATTR_PORT", key.port),
    ]


def service_flags(svc: VirtualService) -> int:
    """The IP_VS_SVC_F_* bits `svc` is configured with."""
    flags = svc.sched_flags & _SCHED_FLAGS
    if svc.persistence_timeout is not None:
        flags |= IP_VS_SVC_F_PERSISTENT
    if svc.one_packet:
        flags |= IP_VS_SVC_F_ONEPACKET
    return flags


def service_attrs(svc: VirtualService) -> Attrs:
    """Every attribute of a service for IPVS_CMD_NEW_SERVICE / IPVS_CMD_SET_SERVICE.

    The kernel requires scheduler, flags, timeout and netmask on both commands; the flags
    mask covers every bit, so a set replaces the flags (persistence off clears the bit).

    Raises:
        ValueError: a netmask out of range for the family.
    """
    timeout = 0 if svc.persistence_timeout is None else int(svc.persistence_timeout)
    attrs = service_key_attrs(svc.key)
    attrs += [
        ("IPVS_SVC_ATTR_SCHED_NAME", svc.scheduler),
        ("IPVS_SVC_ATTR_FLAGS", {"flags": service_flags(svc), "mask": _FLAGS_MASK_ALL}),
        ("IPVS_SVC_ATTR_TIMEOUT", timeout),
        ("IPVS_SVC_ATTR_NETMASK", netmask_to_wire(svc.key.family, svc.netmask)),
    ]
    if svc.pe_name:
        attrs.append(("IPVS_SVC_ATTR_PE_NAME", svc.pe_name))
    return attrs


def dest_attrs(dest: Destination) -> Attrs:
    """Every attribute of a destination for IPVS_CMD_NEW_DEST / IPVS_CMD_SET_DEST.

    The forwarding method is always sent: the kernel has no default, pyroute2's is "route".
    """
    return [
        ("IPVS_DEST_ATTR_ADDR", dest.addr.packed),
        ("IPVS_DEST_ATTR_ADDR_FAMILY", _family(dest.addr)),
        ("IPVS_DEST_ATTR_PORT", dest.port),
        ("IPVS_DEST_ATTR_FWD_METHOD", int(dest.fwd)),
        ("IPVS_DEST_ATTR_WEIGHT", dest.weight),
        ("IPVS_DEST_ATTR_U_THRESH", dest.u_threshold),
        ("IPVS_DEST_ATTR_L_THRESH", dest.l_threshold),
    ]


def dest_key_attrs(addr: IPAddress, port: int) -> Attrs:
    """The attributes that identify a destination (IPVS_CMD_DEL_DEST)."""
    return [
        ("IPVS_DEST_ATTR_ADDR", addr.packed),
        ("IPVS_DEST_ATTR_ADDR_FAMILY", _family(addr)),
        ("IPVS_DEST_ATTR_PORT", port),
    ]


def timeouts_attrs(timeouts: IpvsTimeouts) -> Attrs:
    """IPVS_CMD_SET_CONFIG attributes (seconds; 0 leaves a timeout unchanged)."""
    return [
        ("IPVS_CMD_ATTR_TIMEOUT_TCP", timeouts.tcp),
        ("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN", timeouts.tcpfin),
        ("IPVS_CMD_ATTR_TIMEOUT_UDP", timeouts.udp),
    ]


_DAEMON_STATES = {"master": 1, "backup": 2}


def daemon_attrs(daemon: SyncDaemonStatus) -> Attrs:
    """IPVS_CMD_NEW_DAEMON attributes; zero / None fields are left to the kernel's defaults
    (maxlen from the interface MTU, group 224.0.0.81, port 8848, ttl 1)."""
    attrs: Attrs = [
        ("IPVS_DAEMON_ATTR_STATE", _DAEMON_STATES[daemon.state]),
        ("IPVS_DAEMON_ATTR_MCAST_IFN", daemon.mcast_ifn),
        ("IPVS_DAEMON_ATTR_SYNC_ID", daemon.syncid),
    ]
    if daemon.maxlen:
        attrs.append(("IPVS_DAEMON_ATTR_SYNC_MAXLEN", daemon.maxlen))
    if daemon.group is not None:
        name = "GROUP" if daemon.group.version == 4 else "GROUP6"
        attrs.append((f"IPVS_DAEMON_ATTR_MCAST_{name}", daemon.group.packed))
    if daemon.port:
        attrs.append(("IPVS_DAEMON_ATTR_MCAST_PORT", daemon.port))
    if daemon.ttl:
        attrs.append(("IPVS_DAEMON_ATTR_MCAST_TTL", daemon.ttl))
    return attrs


def daemon_from_nla(nested: Any) -> SyncDaemonStatus:
    """A running sync daemon from a decoded IPVS_CMD_ATTR_DAEMON (a GET_DAEMON reply).

    Raises:
        ValueError: an unknown state.
    """
    state = int(nested.get("IPVS_DAEMON_ATTR_STATE") or 0)
    names = {v: k for k, v in _DAEMON_STATES.items()}
    if state not in names:
        raise ValueError(f"unknown sync daemon state {state}")
    group: IPAddress | None = None
    raw6 = nested.get("IPVS_DAEMON_ATTR_MCAST_GROUP6")
    raw4 = nested.get("IPVS_DAEMON_ATTR_MCAST_GROUP")
    if raw6 is not None and any(bytes(raw6[:16])):
        group = ipaddress.IPv6Address(bytes(raw6[:16]))
    elif raw4 is not None:
        group = ipaddress.IPv4Address(bytes(raw4[:4]))
    return SyncDaemonStatus(
        state="master" if names[state] == "master" else "backup",
        mcast_ifn=str(nested.get("IPVS_DAEMON_ATTR_MCAST_IFN") or ""),
        syncid=int(nested.get("IPVS_DAEMON_ATTR_SYNC_ID") or 0),
        maxlen=int(nested.get("IPVS_DAEMON_ATTR_SYNC_MAXLEN") or 0),
        group=group,
        port=int(nested.get("IPVS_DAEMON_ATTR_MCAST_PORT") or 0),
        ttl=int(nested.get("IPVS_DAEMON_ATTR_MCAST_TTL") or 0),
    )


# ---------------------------------------------------------------------------------------------
# Pure translation: attributes -> model.


def _raw_addr(raw: bytes | None, family: int) -> IPAddress:
    if raw is None:
        raise ValueError("address attribute missing")
    # The kernel always sends the whole union nf_inet_addr (16 bytes).
    if family == AF_INET6:
        if len(raw) < 16:
            raise ValueError(f"IPv6 address attribute of {len(raw)} bytes")
        return ipaddress.IPv6Address(bytes(raw[:16]))
    if len(raw) < 4:
        raise ValueError(f"IPv4 address attribute of {len(raw)} bytes")
    return ipaddress.IPv4Address(bytes(raw[:4]))


def _stats(nested: Any) -> tuple[Stats, Rates]:
    if nested is None:
        return Stats(), Rates()

    def get(name: str) -> int:
        return int(nested.get("IPVS_STATS_ATTR_" + name) or 0)

    stats = Stats(get("CONNS"), get("INPKTS"), get("OUTPKTS"), get("INBYTES"), get("OUTBYTES"))
    rates = Rates(get("CPS"), get("INPPS"), get("OUTPPS"), get("INBPS"), get("OUTBPS"))
    return stats, rates


def _nla_stats(nested: Any, prefix: str) -> tuple[Stats, Rates]:
    stats64 = nested.get(prefix + "STATS64")
    return _stats(stats64 if stats64 is not None else nested.get(prefix + "STATS"))


def service_from_nla(svc: Any) -> tuple[VirtualService, Stats, Rates]:
    """A service (no destinations), its counters and rates, from a decoded service attribute.

    Raises:
        ValueError: attributes the kernel always sends are missing or malformed.
    """
    family = int(svc.get("IPVS_SVC_ATTR_AF"))
    fwmark = int(svc.get("IPVS_SVC_ATTR_FWMARK") or 0)
    if fwmark:
        key = ServiceKey.for_fwmark(fwmark, family=family)
    else:
        addr = _raw_addr(svc.get("IPVS_SVC_ATTR_ADDR"), family)
        protocol = IpProto(int(svc.get("IPVS_SVC_ATTR_PROTOCOL")))
        key = ServiceKey.for_address(protocol, addr, int(svc.get("IPVS_SVC_ATTR_PORT")))
    flags_attr = svc.get("IPVS_SVC_ATTR_FLAGS")
    flags = int(flags_attr["flags"]) if flags_attr is not None else 0
    timeout = int(svc.get("IPVS_SVC_ATTR_TIMEOUT") or 0)
    netmask_value = svc.get("IPVS_SVC_ATTR_NETMASK")
    netmask = (
        netmask_from_wire(family, int(netmask_value))
        if netmask_value is not None
        else (128 if family == AF_INET6 else 32)
    )
    service = VirtualService(
        key=key,
        scheduler=str(svc.get("IPVS_SVC_ATTR_SCHED_NAME") or ""),
        sched_flags=flags & _SCHED_FLAGS,
        persistence_timeout=float(timeout) if flags & IP_VS_SVC_F_PERSISTENT else None,
        netmask=netmask,
        pe_name=str(svc.get("IPVS_SVC_ATTR_PE_NAME") or ""),
        one_packet=bool(flags & IP_VS_SVC_F_ONEPACKET),
    )
    stats, rates = _nla_stats(svc, "IPVS_SVC_ATTR_")
    return service, stats, rates


def dest_from_nla(dest: Any, *, service_family: int) -> DestStatus:
    """A destination with its counters from a decoded destination attribute.

    The destination's family is its own attribute when the kernel sends it (4.3 and later),
    else the service's. `overloaded` is False: generic netlink does not carry the flag.

    Raises:
        ValueError: attributes the kernel always sends are missing or malformed.
    """
    family = int(dest.get("IPVS_DEST_ATTR_ADDR_FAMILY") or service_family)
    addr = _raw_addr(dest.get("IPVS_DEST_ATTR_ADDR"), family)
    model = Destination(
        addr=addr,
        port=int(dest.get("IPVS_DEST_ATTR_PORT")),
        weight=int(dest.get("IPVS_DEST_ATTR_WEIGHT") or 0),
        fwd=FwdMethod(int(dest.get("IPVS_DEST_ATTR_FWD_METHOD") or 0) & 0x7),
        u_threshold=int(dest.get("IPVS_DEST_ATTR_U_THRESH") or 0),
        l_threshold=int(dest.get("IPVS_DEST_ATTR_L_THRESH") or 0),
    )
    stats, rates = _nla_stats(dest, "IPVS_DEST_ATTR_")
    return DestStatus(
        dest=model,
        activeconns=int(dest.get("IPVS_DEST_ATTR_ACTIVE_CONNS") or 0),
        inactconns=int(dest.get("IPVS_DEST_ATTR_INACT_CONNS") or 0),
        persistconns=int(dest.get("IPVS_DEST_ATTR_PERSIST_CONNS") or 0),
        stats=stats,
        rates=rates,
    )


def timeouts_from_message(msg: Any) -> IpvsTimeouts:
    """`IpvsTimeouts` from an IPVS_CMD_GET_CONFIG reply."""
    return IpvsTimeouts(
        tcp=int(msg.get("IPVS_CMD_ATTR_TIMEOUT_TCP") or 0),
        tcpfin=int(msg.get("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN") or 0),
        udp=int(msg.get("IPVS_CMD_ATTR_TIMEOUT_UDP") or 0),
    )


# ---------------------------------------------------------------------------------------------
# Errors.


def describe_service(key: ServiceKey) -> str:
    """A service as ipvsadm names it: "TCP 10.0.0.1:80", "TCP [2001:db8::1]:80", "FWM 7"."""
    if key.is_fwmark:
        return f"FWM {key.fwmark}" + (" IPv6" if key.family == AF_INET6 else "")
    addr = f"[{key.addr}]" if key.family == AF_INET6 else str(key.addr)
    return f"{key.protocol.name} {addr}:{key.port}"


def describe_dest(key: ServiceKey, addr: IPAddress, port: int) -> str:
    """A destination of a service: "TCP 10.0.0.1:80 -> 192.168.1.2:80"."""
    text = f"[{addr}]" if addr.version == 6 else str(addr)
    return f"{describe_service(key)} -> {text}:{port}"


# Per operation, the errno values that mean "not supported here" rather than a refusal: the
# kernel answers ENOENT when it cannot load the requested scheduler or persistence engine.
_UNSUPPORTED_ALWAYS = frozenset({errno.EOPNOTSUPP, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT})
_UNSUPPORTED_BY_OP = {
    "add_service": frozenset({errno.ENOENT}),
    "edit_service": frozenset({errno.ENOENT}),
}


def kernel_error(op: str, code: int, target: str = "") -> KernelError:
    """The hactl error for errno `code` returned by operation `op` on `target`.

    `NotSupported` for what the kernel cannot do at all (an unknown scheduler or persistence
    engine on add/edit service, address families or protocols it lacks), `KernelError`
    otherwise; the message names the operation, the target and the errno's text.
    """
    text = f"{op} {target}: {os.strerror(code)}" if target else f"{op}: {os.strerror(code)}"
    if code == errno.ENODEV and op == "start_sync_daemon":
        return LinkNotFound(op, code, text)
    if code in _UNSUPPORTED_ALWAYS or code in _UNSUPPORTED_BY_OP.get(op, frozenset()):
        if op in _UNSUPPORTED_BY_OP and code == errno.ENOENT:
            text += " (scheduler or persistence engine not available in this kernel)"
        return NotSupported(op, code, text)
    return KernelError(op, code, text)


# ---------------------------------------------------------------------------------------------
# The socket.


class _IpvsSocket(AsyncGenericNetlinkSocket):  # type: ignore[misc]  # pyroute2 is untyped
    module_err_level = "debug"  # a missing family is an answer here, not an error to log

    async def setup_endpoint(self) -> None:
        if getattr(self.local, "transport", None) is not None:
            return
        await super().setup_endpoint()
        await self.bind(GENL_NAME, IpvsMessage)


async def _open_socket() -> _IpvsSocket:
    sock = _IpvsSocket()
    try:
        await sock.setup_endpoint()
    except NetlinkError as exc:
        sock.close()
        if exc.code == errno.ENOENT:
            raise NotSupported(
                "open", errno.ENOENT, 'open: the generic netlink family "IPVS" is not available'
            ) from None
        raise kernel_error("open", exc.code) from None
    except OSError:
        sock.close()
        raise
    return sock


async def kernel_ipvs_available() -> bool:
    """Whether this network namespace has the kernel's IPVS (the "IPVS" genl family resolves).

    Resolving the family makes the kernel load the ip_vs module when it is installed.
    """
    try:
        sock = await _open_socket()
    except (KernelError, OSError):
        return False
    sock.close()
    return True


# ---------------------------------------------------------------------------------------------
# The adapter.

_IDEMPOTENT_DELETE = {
    "del_service": frozenset({errno.ESRCH}),
    # ENOENT: no such destination; ESRCH: its service is gone too.
    "del_dest": frozenset({errno.ENOENT, errno.ESRCH}),
}


class KernelIpvs:
    """The kernel's IPVS table behind the `IpvsBackend` port.

    Build with `await KernelIpvs.open()` (or `async with await KernelIpvs.open() as ipvs`),
    in the network namespace whose table it should drive; `close()` releases the socket.

    Args:
        proc: where procfs is mounted (the connection table, the tunables).
    """

    def __init__(self, sock: _IpvsSocket, *, proc: Path = Path("/proc")) -> None:
        self._sock = sock
        self._procfs = IpvsProcFs(proc)
        self._owned: set[ServiceKey] = set()
        self._lock = asyncio.Lock()  # one apply() / flush at a time
        # One request at a time on the socket: the kernel runs one dump per netlink socket and
        # answers a second one started meanwhile with EBUSY (a status read during a reconcile).
        self._io = asyncio.Lock()

    @classmethod
    async def open(cls, *, proc: Path = Path("/proc")) -> KernelIpvs:
        """Connect to the kernel's IPVS (loading the module when it is installed).

        Raises:
            NotSupported: the kernel has no IPVS.
            KernelError: the family could not be resolved for another reason.
        """
        return cls(await _open_socket(), proc=proc)

    def close(self) -> None:
        """Release the netlink socket (the kernel table is left as it is)."""
        self._sock.close()

    async def __aenter__(self) -> KernelIpvs:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- low level ------------------------------------------------------------------------

    async def _request(self, cmd: int, attrs: Attrs, flags: int) -> list[Any]:
        msg = build_message(cmd, attrs)
        async with self._io:
            return list(await self._sock._do_request(msg, msg_flags=flags))

    async def _service_messages(self) -> list[Any]:
        try:
            return await self._request(IPVS_CMD_GET_SERVICE, [], _DUMP)
        except NetlinkError as exc:
            raise kernel_error("dump_services", exc.code) from None

    async def _dest_messages(self, key: ServiceKey) -> list[Any]:
        attrs: Attrs = [("IPVS_CMD_ATTR_SERVICE", {"attrs": service_key_attrs(key)})]
        try:
            return await self._request(IPVS_CMD_GET_DEST, attrs, _DUMP)
        except NetlinkError as exc:
            if exc.code == errno.ESRCH:  # removed between the two dumps
                return []
            raise kernel_error("dump_dests", exc.code, describe_service(key)) from None

    async def _read_table(self, only: frozenset[ServiceKey] | None = None) -> list[ServiceStatus]:
        """The kernel's services (those in `only`, when given) with their destinations."""
        table = []
        for msg in await self._service_messages():
            svc, stats, rates = service_from_nla(msg.get("IPVS_CMD_ATTR_SERVICE"))
            if only is not None and svc.key not in only:
                continue
            dests = tuple(
                dest_from_nla(d.get("IPVS_CMD_ATTR_DEST"), service_family=svc.key.family)
                for d in await self._dest_messages(svc.key)
            )
            service = replace(svc, destinations=tuple(ds.dest for ds in reversed(dests)))
            table.append(ServiceStatus(service=service, dests=dests, stats=stats, rates=rates))
        return table

    # -- the table --------------------------------------------------------------------------

    @property
    def owned(self) -> frozenset[ServiceKey]:
        """The services hactl installed or adopted (the only ones `dump()` and stop remove)."""
        return frozenset(self._owned)

    def adopt(self, keys: Iterable[ServiceKey]) -> None:
        """Declare services hactl is responsible for although this instance did not add them.

        Used at start-up with the configured services, so that those left by a previous run
        are reconciled (their stale destinations removed) rather than ignored.
        """
        self._owned.update(keys)

    async def dump(self) -> IpvsTable:
        """The services hactl owns, destinations in add order (the planner's "actual").

        Raises:
            KernelError: the dump failed.
        """
        owned = frozenset(self._owned)
        return IpvsTable(tuple(st.service for st in await self._read_table(owned)))

    async def services(self) -> tuple[ServiceStatus, ...]:
        """Every service of the kernel's table with counters, in the kernel's order.

        Destinations are listed newest first, as the kernel (and `ipvsadm --nosort`) does;
        `service.destinations` holds them in add order.

        Raises:
            KernelError: the dump failed.
        """
        return tuple(await self._read_table())

    async def apply(self, ops: Sequence[IpvsOp]) -> None:
        """Apply `ops` in order; adding what exists converges it, deleting what is missing
        succeeds.

        Raises:
            NotSupported: an unknown scheduler or persistence engine.
            KernelError: any other refusal; the operations before it stay applied.
            ValueError: an operation that cannot be expressed (a netmask out of range).
        """
        async with self._lock:
            for op in ops:
                await self._apply_one(op)

    async def _apply_one(self, op: IpvsOp) -> None:
        if isinstance(op, AddService):
            await self._add_service(op.service)
        elif isinstance(op, EditService):
            await self._set_service(op.service)
        elif isinstance(op, DelService):
            await self._del_service(op.key)
        elif isinstance(op, AddDest):
            await self._add_dest(op.service, op.dest)
        elif isinstance(op, EditDest):
            await self._set_dest("edit_dest", op.service, op.dest)
        elif isinstance(op, DelDest):
            await self._del_dest(op.service, op.addr, op.port)
        else:
            assert_never(op)

    async def _add_service(self, svc: VirtualService) -> None:
        attrs: Attrs = [("IPVS_CMD_ATTR_SERVICE", {"attrs": service_attrs(svc)})]
        try:
            await self._request(IPVS_CMD_NEW_SERVICE, attrs, _CREATE)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise kernel_error("add_service", exc.code, describe_service(svc.key)) from None
            # Already there (a previous run, an operator): make it what was asked for.
            await self._set_service(svc, op="add_service")
        self._owned.add(svc.key)

    async def _set_service(self, svc: VirtualService, *, op: str = "edit_service") -> None:
        attrs: Attrs = [("IPVS_CMD_ATTR_SERVICE", {"attrs": service_attrs(svc)})]
        try:
            await self._request(IPVS_CMD_SET_SERVICE, attrs, _REQ)
        except NetlinkError as exc:
            raise kernel_error(op, exc.code, describe_service(svc.key)) from None

    async def _del_service(self, key: ServiceKey) -> None:
        attrs: Attrs = [("IPVS_CMD_ATTR_SERVICE", {"attrs": service_key_attrs(key)})]
        try:
            await self._request(IPVS_CMD_DEL_SERVICE, attrs, _REQ)
        except NetlinkError as exc:
            if exc.code not in _IDEMPOTENT_DELETE["del_service"]:
                raise kernel_error("del_service", exc.code, describe_service(key)) from None
        self._owned.discard(key)

    async def _add_dest(self, key: ServiceKey, dest: Destination) -> None:
        attrs: Attrs = [
            ("IPVS_CMD_ATTR_SERVICE", {"attrs": service_key_attrs(key)}),
            ("IPVS_CMD_ATTR_DEST", {"attrs": dest_attrs(dest)}),
        ]
        try:
            await self._request(IPVS_CMD_NEW_DEST, attrs, _CREATE)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                target = describe_dest(key, dest.addr, dest.port)
                raise kernel_error("add_dest", exc.code, target) from None
            await self._set_dest("add_dest", key, dest)

    async def _set_dest(self, op: str, key: ServiceKey, dest: Destination) -> None:
        attrs: Attrs = [
            ("IPVS_CMD_ATTR_SERVICE", {"attrs": service_key_attrs(key)}),
            ("IPVS_CMD_ATTR_DEST", {"attrs": dest_attrs(dest)}),
        ]
        try:
            await self._request(IPVS_CMD_SET_DEST, attrs, _REQ)
        except NetlinkError as exc:
            raise kernel_error(op, exc.code, describe_dest(key, dest.addr, dest.port)) from None

    async def _del_dest(self, key: ServiceKey, addr: IPAddress, port: int) -> None:
        attrs: Attrs = [
            ("IPVS_CMD_ATTR_SERVICE", {"attrs": service_key_attrs(key)}),
            ("IPVS_CMD_ATTR_DEST", {"attrs": dest_key_attrs(addr, port)}),
        ]
        try:
            await self._request(IPVS_CMD_DEL_DEST, attrs, _REQ)
        except NetlinkError as exc:
            if exc.code not in _IDEMPOTENT_DELETE["del_dest"]:
                raise kernel_error("del_dest", exc.code, describe_dest(key, addr, port)) from None

    # -- flushing -----------------------------------------------------------------------------

    async def lvs_flush(self) -> None:
        """keepalived's `lvs_flush`: empty the whole table (every service, whoever added it).

        Raises:
            KernelError: the kernel refused.
        """
        async with self._lock:
            try:
                await self._request(IPVS_CMD_FLUSH, [], _REQ)
            except NetlinkError as exc:
                raise kernel_error("flush", exc.code) from None
            self._owned.clear()

    async def lvs_flush_on_stop(self, *, everything: bool = False) -> None:
        """keepalived's `lvs_flush_onstop`: at shutdown, remove the services hactl owns
        (`everything=True`: the whole table, as `lvs_flush_onstop ALL`).

        Every owned service is attempted even when one fails; the first error is raised after.

        Raises:
            KernelError: a removal failed.
        """
        if everything:
            await self.lvs_flush()
            return
        first: KernelError | None = None
        async with self._lock:
            for key in sorted(self._owned, key=describe_service):
                try:
                    await self._del_service(key)
                except KernelError as exc:
                    first = first or exc
        if first is not None:
            raise first

    # -- the kernel's sync daemons --------------------------------------------------------------

    async def sync_daemons(self) -> tuple[SyncDaemonStatus, ...]:
        """The kernel's running sync daemons (`ipvsadm -L --daemon`).

        Raises:
            KernelError: the kernel refused.
        """
        try:
            replies = await self._request(IPVS_CMD_GET_DAEMON, [], _DUMP)
        except NetlinkError as exc:
            raise kernel_error("get_sync_daemons", exc.code) from None
        return tuple(
            daemon_from_nla(msg.get("IPVS_CMD_ATTR_DAEMON"))
            for msg in replies
            if msg.get("IPVS_CMD_ATTR_DAEMON") is not None
        )

    async def start_sync_daemon(self, daemon: SyncDaemonStatus) -> None:
        """Start the kernel's master or backup sync daemon (`ipvsadm --start-daemon`).

        Starting a daemon that already runs on the same interface with the same sync id
        succeeds; one of that state configured otherwise is a refusal (EEXIST).

        Raises:
            LinkNotFound: no such interface.
            KernelError: the kernel refused.
        """
        target = f"{daemon.state} mcast={daemon.mcast_ifn} syncid={daemon.syncid}"
        attrs: Attrs = [("IPVS_CMD_ATTR_DAEMON", {"attrs": daemon_attrs(daemon)})]
        try:
            await self._request(IPVS_CMD_NEW_DAEMON, attrs, _REQ)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST and any(
                d.state == daemon.state
                and d.mcast_ifn == daemon.mcast_ifn
                and d.syncid == daemon.syncid
                for d in await self.sync_daemons()
            ):
                return
            raise kernel_error("start_sync_daemon", exc.code, target) from None

    async def stop_sync_daemon(self, state: Literal["master", "backup"]) -> None:
        """Stop the kernel's master or backup sync daemon; stopping none succeeds.

        Raises:
            KernelError: the kernel refused.
        """
        attrs: Attrs = [
            ("IPVS_CMD_ATTR_DAEMON", {"attrs": [("IPVS_DAEMON_ATTR_STATE", _DAEMON_STATES[state])]})
        ]
        try:
            await self._request(IPVS_CMD_DEL_DAEMON, attrs, _REQ)
        except NetlinkError as exc:
            if exc.code != errno.ESRCH:
                raise kernel_error("stop_sync_daemon", exc.code, state) from None

    # -- connections, timeouts, tunables ---------------------------------------------------

    async def connections(self) -> tuple[ConnStatus, ...]:
        """The connection table, templates included, from /proc/net/ip_vs_conn."""
        return await asyncio.to_thread(self._procfs.read_conn_table)

    async def conn_tab_size(self) -> int:
        """The connection hash table size (`ipvsadm -Ln`'s "size=")."""
        return await asyncio.to_thread(self._procfs.read_conn_tab_size)

    async def get_timeouts(self) -> IpvsTimeouts:
        """`ipvsadm -l --timeout` over IPVS_CMD_GET_CONFIG.

        Raises:
            KernelError: the kernel refused.
        """
        try:
            # _GET: this runs every 0.5 s (the status refresh); with an ACK each call left
            # one queued behind, and the daemon's memory grew without end
            replies = await self._request(IPVS_CMD_GET_CONFIG, [], _GET)
        except NetlinkError as exc:
            raise kernel_error("get_timeouts", exc.code) from None
        if not replies:
            raise KernelError("get_timeouts", errno.EIO, "get_timeouts: empty reply")
        return timeouts_from_message(replies[0])

    async def set_timeouts(self, timeouts: IpvsTimeouts) -> None:
        """`ipvsadm --set tcp tcpfin udp` over IPVS_CMD_SET_CONFIG (0 leaves a value as it is).

        Raises:
            KernelError: the kernel refused (EINVAL for a value over INT_MAX / HZ).
        """
        try:
            await self._request(IPVS_CMD_SET_CONFIG, timeouts_attrs(timeouts), _REQ)
        except NetlinkError as exc:
            raise kernel_error("set_timeouts", exc.code) from None

    async def get_sysctl(self) -> IpvsSysctl:
        """The /proc/sys/net/ipv4/vs tunables (those this kernel lacks keep their defaults)."""
        sysctl, _absent = await asyncio.to_thread(self._procfs.read_sysctl)
        return sysctl

    async def set_sysctl(self, sysctl: IpvsSysctl) -> None:
        """Write every tunable of `sysctl` whose value differs from the kernel's.

        `sync_qlen_max` 0 means "the kernel's default" and is never written.

        Raises:
            NotSupported: a tunable to change does not exist on this kernel.
            KernelError: the kernel refused a value.
        """
        await self.write_sysctl(sysctl, names=None)

    async def write_sysctl(self, sysctl: IpvsSysctl, *, names: Iterable[str] | None) -> None:
        """Write the tunables `names` of `sysctl` (None: those that differ from the kernel's).

        This is keepalived's `ipvs_sysctl` block: only what the configuration names is
        written, in the order given.

        Raises:
            NotSupported: a named tunable does not exist on this kernel.
            KernelError: the kernel refused a value.
            ValueError: a name that is not an IPVS tunable.
        """

        def work() -> None:
            current, absent = self._procfs.read_sysctl()
            if names is None:
                chosen = [n for n in _changed(current, sysctl) if n not in absent]
                missing = [n for n in _changed(IpvsSysctl(), sysctl) if n in absent]
                chosen += missing  # asked to differ from the default on a kernel without it
            else:
                chosen = list(names)
            chosen = [n for n in chosen if not (n == "sync_qlen_max" and sysctl.sync_qlen_max == 0)]
            self._procfs.write_sysctl(sysctl, chosen)

        await asyncio.to_thread(work)


def _changed(current: IpvsSysctl, wanted: IpvsSysctl) -> list[str]:
    out = []
    for name in IpvsSysctl.names():
        if name == "sync_threshold":
            if (current.sync_threshold, current.sync_period) != (
                wanted.sync_threshold,
                wanted.sync_period,
            ):
                out.append(name)
        elif getattr(current, name) != getattr(wanted, name):
            out.append(name)
    return out


if TYPE_CHECKING:
    # KernelIpvs implements the kernel backend port (checked by mypy, costs nothing at run time).
    def _is_backend(ipvs: KernelIpvs) -> KernelIpvsBackend:
        return ipvs
