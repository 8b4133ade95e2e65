"""Outputs of the VRRP core: effects the shell carries out, and facts it logs and counts.

Effects have imperative names (`SendAdvertisement`, `AddAddresses`, `RemoveAddresses`,
`AnnounceAddresses`); facts are past tense (`StateChanged`, `AdvertisementDropped`,
`SplitBrainDetected`, ...). Every event names its instance, so one shell can drain many
routers. All are frozen; the core never calls back into the shell.

Must not import: asyncio, socket, pyroute2, structlog.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hactl.vrrp.model import IPAddress, IPInterface, Route, Rule
from hactl.vrrp.packet import Advertisement, DropReason

__all__ = [
    "AddAddresses",
    "AddRoutes",
    "AdvertisementDropped",
    "AnnounceAddresses",
    "GroupStateChanged",
    "MasterReceivedLowerPriority",
    "PriorityChanged",
    "RemoveAddresses",
    "RemoveRoutes",
    "SendAdvertisement",
    "SplitBrainDetected",
    "StateChanged",
    "VrrpEvent",
    "VrrpState",
]


class VrrpState(enum.Enum):
    """Router states; values are keepalived's JSON dump numbers (spec §6.3)."""

    INIT = 0
    BACKUP = 1
    MASTER = 2
    FAULT = 3
    STOP = 98


@dataclass(frozen=True, slots=True, kw_only=True)
class SendAdvertisement:
    """Send `advertisement` to the multicast group or to every unicast peer.

    `ah_seq` is the AH sequence number to use when the instance authenticates with AH.
    """

    instance: str
    advertisement: Advertisement
    ah_seq: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AddAddresses:
    """Install the VIPs on `interface` (idempotent). `accept` False: traffic to them is dropped
    (keepalived `no_accept`)."""

    instance: str
    interface: str
    addresses: tuple[IPInterface, ...]
    accept: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveAddresses:
    """Remove the VIPs from `interface` (idempotent: missing ones are fine)."""

    instance: str
    interface: str
    addresses: tuple[IPInterface, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AddRoutes:
    """Install the virtual routes and rules (after the VIPs they may use as source)."""

    instance: str
    routes: tuple[Route, ...]
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveRoutes:
    """Remove the virtual routes and rules (before the VIPs); idempotent."""

    instance: str
    routes: tuple[Route, ...]
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AnnounceAddresses:
    """Send `repeat` gratuitous ARPs / unsolicited NAs per VIP, `interval` seconds apart."""

    instance: str
    interface: str
    addresses: tuple[IPInterface, ...]
    repeat: int
    interval: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class StateChanged:
    instance: str
    old: VrrpState
    new: VrrpState
    reason: str
    priority: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupStateChanged:
    """A sync group moved all its members to `new` (keepalived `GROUP` notifies)."""

    group: str
    new: VrrpState
    initiator: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AdvertisementDropped:
    instance: str
    reason: DropReason
    src: IPAddress | None
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SplitBrainDetected:
    """A master heard another master's advert with the same or a lower priority."""

    instance: str
    src: IPAddress
    their_priority: int
    our_priority: int
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MasterReceivedLowerPriority:
    """keepalived's MASTER_RX_LOWER_PRI notify (FIFO line, notify_master_rx_lower_pri)."""

    instance: str
    src: IPAddress
    priority: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PriorityChanged:
    """The effective priority changed (tracking); the next periodic advert carries it."""

    instance: str
    old: int
    new: int


VrrpEvent = (
    SendAdvertisement
    | AddAddresses
    | RemoveAddresses
    | AddRoutes
    | RemoveRoutes
    | AnnounceAddresses
    | StateChanged
    | GroupStateChanged
    | AdvertisementDropped
    | SplitBrainDetected
    | MasterReceivedLowerPriority
    | PriorityChanged
)
