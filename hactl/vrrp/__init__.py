"""VRRP (RFC 3768 v2, RFC 5798 v3) as keepalived 2.2.7 speaks it.

Layout (STYLE §8.2): `model` (frozen configuration slice), `packet` (codec), `router`
(sans-IO state machine, sync groups), `events` (outputs), `track` (vrrp_script / track_file),
`socket` (raw sockets), `transport` (UDP development transport), `announce` (GARP / NA),
`notify` (scripts and FIFO), `firewall` (accept mode rules), `vmac` (the `use_vmac`
port), `service` (asyncio shell). `python -m hactl.vrrp` runs a
service from a JSON file until `hactl run` exists.
"""

from __future__ import annotations

from hactl.vrrp.events import (
    AddAddresses,
    AddRoutes,
    AdvertisementDropped,
    AnnounceAddresses,
    GroupStateChanged,
    MasterReceivedLowerPriority,
    PriorityChanged,
    RemoveAddresses,
    RemoveRoutes,
    SendAdvertisement,
    SplitBrainDetected,
    StateChanged,
    VrrpEvent,
    VrrpState,
)
from hactl.vrrp.model import (
    AuthType,
    Family,
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
from hactl.vrrp.packet import Advertisement, DropReason, ReceivePolicy, decode, decode_ipv4, encode
from hactl.vrrp.router import RouterStatus, SyncGroupCore, TrackKind, VirtualRouter
from hactl.vrrp.service import ServiceStatus, VrrpService

__all__ = [
    "AddAddresses",
    "AddRoutes",
    "Advertisement",
    "AdvertisementDropped",
    "AnnounceAddresses",
    "AuthType",
    "DropReason",
    "Family",
    "GarpSettings",
    "GroupStateChanged",
    "InitialState",
    "MasterReceivedLowerPriority",
    "NotifyScripts",
    "PriorityChanged",
    "ReceivePolicy",
    "RemoveAddresses",
    "RemoveRoutes",
    "Route",
    "RouterStatus",
    "Rule",
    "SendAdvertisement",
    "ServiceStatus",
    "SplitBrainDetected",
    "StateChanged",
    "SyncGroup",
    "SyncGroupCore",
    "TrackFile",
    "TrackInterface",
    "TrackKind",
    "TrackScript",
    "UnicastPeer",
    "VirtualRouter",
    "VrrpConfig",
    "VrrpEvent",
    "VrrpInstance",
    "VrrpScript",
    "VrrpService",
    "VrrpState",
    "decode",
    "decode_ipv4",
    "encode",
]
