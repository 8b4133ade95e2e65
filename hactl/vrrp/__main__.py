"""A small runner: `python -m hactl.vrrp CONFIG.json` runs a VrrpService.

It exists so that integration tests, the benchmark and the single-machine demo can run an
hactl VRRP node before `hactl run` exists (a later step replaces it). The JSON document
mirrors `hactl.vrrp.model` field by field (see `config_from_json`).

Transports: the raw sockets by default (root / CAP_NET_RAW), or `--udp [PORT]` for the
unprivileged UDP development transport, which also keeps the VIPs in memory instead of
touching the kernel (nothing to add without privileges).

Logs are JSON lines on stderr (`event`, `timestamp` as monotonic and wall time); SIGTERM
and SIGINT stop gracefully (priority-0 advert, VIPs removed).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import sys
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import fields
from ipaddress import ip_address, ip_interface, ip_network
from pathlib import Path
from typing import Any

import structlog

from hactl.clock import LoopClock
from hactl.net.macvlan import NetlinkVmacPort
from hactl.net.netlink import NetlinkAddressPort
from hactl.net.ports import AddressPort, NeighbourPort
from hactl.testing.fakes import InMemoryAddressPort, RecordingNeighbourPort
from hactl.vrrp.announce import PacketAnnouncer
from hactl.vrrp.firewall import FirewallPort, InMemoryFirewall, NftablesFirewall
from hactl.vrrp.model import (
    AuthType,
    GarpSettings,
    InitialState,
    NotifyScripts,
    Route,
    Rule,
    SyncGroup,
    TrackFile,
    TrackInterface,
    TrackScript,
    UnicastPeer,
    VrrpConfig,
    VrrpInstance,
    VrrpScript,
)
from hactl.vrrp.notify import Notifier
from hactl.vrrp.service import VrrpService
from hactl.vrrp.socket import ChannelFactory, RawChannelFactory
from hactl.vrrp.transport import DEFAULT_UDP_PORT, UdpChannelFactory
from hactl.vrrp.vmac import InMemoryVmacPort, VmacPort

__all__ = ["config_from_json", "main"]


def _notify(data: Mapping[str, Any]) -> NotifyScripts:
    return NotifyScripts(**{k: tuple(v) for k, v in data.items()})


def _route(data: Mapping[str, Any]) -> Route:
    kw: dict[str, Any] = dict(data)
    kw["destination"] = ip_network(kw["destination"])
    for key in ("gateway", "source"):
        if kw.get(key) is not None:
            kw[key] = ip_address(kw[key])
    return Route(**kw)


def _rule(data: Mapping[str, Any]) -> Rule:
    kw: dict[str, Any] = dict(data)
    for key in ("source", "destination"):
        if kw.get(key) is not None:
            kw[key] = ip_network(kw[key])
    return Rule(**kw)


def _instance(data: Mapping[str, Any]) -> VrrpInstance:
    known = {f.name for f in fields(VrrpInstance)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown vrrp instance keys: {sorted(unknown)}")
    kw: dict[str, Any] = dict(data)
    converters: dict[str, Any] = {
        "state": InitialState,
        "vips": lambda v: tuple(ip_interface(x) for x in v),
        "excluded_vips": lambda v: tuple(ip_interface(x) for x in v),
        "unicast_src_ip": ip_address,
        "unicast_peers": lambda v: tuple(
            UnicastPeer(address=ip_address(p))
            if isinstance(p, str)
            else UnicastPeer(**{**p, "address": ip_address(p["address"])})
            for p in v
        ),
        "auth_type": lambda v: AuthType[v] if isinstance(v, str) else AuthType(v),
        "auth_pass": lambda v: v.encode(),
        "track_interfaces": lambda v: tuple(TrackInterface(**t) for t in v),
        "track_scripts": lambda v: tuple(TrackScript(**t) for t in v),
        "track_files": lambda v: tuple(TrackFile(**t) for t in v),
        "garp": lambda v: GarpSettings(**v),
        "virtual_routes": lambda v: tuple(_route(r) for r in v),
        "virtual_rules": lambda v: tuple(_rule(r) for r in v),
        "notify": _notify,
    }
    for key, convert in converters.items():
        if key in kw and kw[key] is not None:
            kw[key] = convert(kw[key])
    return VrrpInstance(**kw)


def config_from_json(data: Mapping[str, Any]) -> VrrpConfig:
    """Build a `VrrpConfig` from a JSON document shaped like the model.

    Raises:
        ValueError / TypeError: unknown keys or invalid values (the model's own checks).
    """
    return VrrpConfig(
        instances=tuple(_instance(i) for i in data.get("instances", ())),
        sync_groups=tuple(
            SyncGroup(
                name=g["name"],
                members=tuple(g["members"]),
                notify=_notify(g.get("notify", {})),
                sync_group_tracking_weight=g.get("sync_group_tracking_weight", False),
            )
            for g in data.get("sync_groups", ())
        ),
        scripts=tuple(
            VrrpScript(**{**s, "command": tuple(s["command"])}) for s in data.get("scripts", ())
        ),
        notify_fifo=data.get("notify_fifo"),
        script_user=data.get("script_user"),
    )


def _configure_logging(level: str) -> None:
    def add_times(_: Any, __: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        event["mono"] = round(time.monotonic(), 6)
        event["wall"] = round(time.time(), 6)
        return event

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            add_times,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


async def _run(config: VrrpConfig, *, udp_port: int | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    addresses: AddressPort
    neighbours: NeighbourPort
    channels: ChannelFactory
    firewall: FirewallPort
    vmacs: VmacPort
    netlink: NetlinkAddressPort | None = None
    announcer: PacketAnnouncer | None = None
    macvlans: NetlinkVmacPort | None = None
    if udp_port is not None:
        memory = InMemoryAddressPort({i.interface: () for i in config.instances})
        addresses = memory
        neighbours = RecordingNeighbourPort()
        channels = UdpChannelFactory(port=udp_port)
        firewall = InMemoryFirewall()
        vmacs = InMemoryVmacPort(memory)
    else:
        addresses = netlink = NetlinkAddressPort()
        neighbours = announcer = PacketAnnouncer()
        channels = RawChannelFactory()
        firewall = NftablesFirewall()
        vmacs = macvlans = NetlinkVmacPort()
    log = structlog.get_logger("hactl.vrrp")
    notifier = Notifier(
        fifo=config.notify_fifo,
        user=config.script_user,
        on_error=lambda what, err: log.warning("vrrp.notify_failed", what=what, error=str(err)),
    )
    service = VrrpService(
        config,
        addresses=addresses,
        neighbours=neighbours,
        channels=channels,
        clock=LoopClock(),
        notifier=notifier,
        firewall=firewall,
        vmacs=vmacs,
    )
    # everything imported and configured is long-lived: keep it out of the collector's
    # generations so a collection never pauses the advert timer for long
    gc.freeze()
    try:
        await service.run(shutdown_trigger=stop.wait)
    finally:
        if announcer is not None:
            announcer.close()
        if netlink is not None:
            await netlink.close()
        if macvlans is not None:
            await macvlans.close()
        status = service.status()
        log.info(
            "vrrp.stopped",
            unknown_vrid=status.unknown_vrid,
            send_errors=status.send_errors,
            address_errors=status.address_errors,
            firewall_errors=status.firewall_errors,
            routers=[
                {
                    "name": r.name,
                    "state": r.state.name,
                    "adverts_received": r.adverts_received,
                    "adverts_sent": r.adverts_sent,
                    "drops": dict(r.drops),
                    "split_brain": r.split_brain,
                }
                for r in status.routers
            ],
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hactl.vrrp", description=__doc__)
    parser.add_argument("config", type=Path, help="JSON file shaped like hactl.vrrp.model")
    parser.add_argument(
        "--udp",
        nargs="?",
        const=DEFAULT_UDP_PORT,
        type=int,
        metavar="PORT",
        help="unprivileged UDP development transport (VIPs kept in memory)",
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    _configure_logging(args.log_level)
    try:
        config = config_from_json(json.loads(args.config.read_text()))
    except (OSError, ValueError, TypeError, KeyError) as err:
        print(f"{args.config}: {err}", file=sys.stderr)
        return 2
    asyncio.run(_run(config, udp_port=args.udp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
