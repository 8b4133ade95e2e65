"""Outputs of the sync cores (`hactl.sync.channel`): effects the shell carries out, and facts.

* `SendDatagram` (effect, from `SyncSender.pop_datagrams`): send `data` to the group on
  `port + port_offset` (§1.1 sync_ports).
* `ApplySyncEntries` (effect, from `SyncReceiver.pop_events`): hand each entry to the engine's
  `apply_sync` (§1.10); flags are already masked as the kernel receiver masks them (§1.9).
* `SyncDropped` (fact): a datagram, the rest of one, or single entries were not applied.

Frozen data only; imports nothing from hactl but the domain model and the codec's reasons.
"""

from __future__ import annotations

from dataclasses import dataclass

from hactl.ipvs.model import SyncConn
from hactl.sync.wire import SyncDropReason

__all__ = ["ApplySyncEntries", "SendDatagram", "SyncDropped", "SyncReceiverEvent"]


@dataclass(frozen=True, slots=True)
class SendDatagram:
    """Send one sync message; `entries` is how many connections it carries."""

    port_offset: int
    data: bytes
    entries: int


@dataclass(frozen=True, slots=True)
class ApplySyncEntries:
    """Apply these entries, in order, as coming from `peer` (one event per datagram)."""

    peer: str
    entries: tuple[SyncConn, ...]
    version: int


@dataclass(frozen=True, slots=True)
class SyncDropped:
    """`entries` entries from `peer` were not applied for `reason`.

    `whole_datagram` is True when the datagram was discarded before any entry was looked at
    (then `entries` is the count its header announced, when it had a readable one).
    """

    peer: str
    reason: SyncDropReason
    entries: int
    whole_datagram: bool
    detail: str = ""


SyncReceiverEvent = ApplySyncEntries | SyncDropped
