"""Events the embedded IPVS engine emits, pulled with `IpvsEngine.pop_events()`.

Effects the shell must carry out have imperative names (`SyncConnNeeded`: hand the entry to
the sync daemon); facts have past-tense names (`ConnExpired`, `DefenseChanged`,
`DestFreed`). All are frozen; none holds a reference the shell could use to mutate the
engine (`ConnExpired.handle` is opaque and only compared by identity).

Pure data: imports nothing from hactl but the model.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hactl.ipvs.model import IPAddress, ServiceKey, SyncConn

__all__ = [
    "ConnExpired",
    "DefenseChanged",
    "DestFreed",
    "ExpiryReason",
    "IpvsEvent",
    "SyncConnNeeded",
]


@dataclass(frozen=True, slots=True)
class SyncConnNeeded:
    """The sync decision (spec §2.3) chose this connection or template: send it to backups."""

    conn: SyncConn


class ExpiryReason(enum.StrEnum):
    """Why a connection entry left the table (a stable label for logs and counters)."""

    TIMEOUT = "timeout"  # its timer ran out (spec §3.5)
    NODEST = "nodest"  # expire_nodest_conn: its destination is gone (spec §5.2)
    REUSE = "reuse"  # a new connection reused its ports and was rescheduled (spec §5.3)
    DEFENSE = "defense"  # dropped by the drop_entry defense (spec §7.1)
    SYNC = "sync"  # replaced by a sync message naming another real server (spec §1.10)


@dataclass(frozen=True, slots=True)
class ConnExpired:
    """A connection entry (not a template) left the table; emitted only when the engine was
    built with `report_expiry=True` (the data plane closes the matching sockets).

    `handle` is the entry itself (the `conn` of the verdicts), compared by identity."""

    handle: object
    reason: ExpiryReason


# The engine builds one ConnExpired per entry that leaves the table (every connection of the
# data plane), so it builds them without the frozen __init__, whose `object.__setattr__` per
# field costs twice as much as setting the two slots directly. Same class, same fields.
_new_object = object.__new__
_set_handle = ConnExpired.__dict__["handle"].__set__
_set_reason = ConnExpired.__dict__["reason"].__set__


def conn_expired(handle: object, reason: ExpiryReason) -> ConnExpired:
    """`ConnExpired(handle, reason)`, built the cheap way (for the engine's expiry path)."""
    event = _new_object(ConnExpired)
    _set_handle(event, handle)
    _set_reason(event, reason)
    return event


@dataclass(frozen=True, slots=True)
class DefenseChanged:
    """A defense strategy (spec §7.1) switched on or off on its own (automatic modes 1/2)."""

    strategy: str  # "drop_entry", "drop_packet" or "secure_tcp"
    active: bool


@dataclass(frozen=True, slots=True)
class DestFreed:
    """A removed destination left the trash for good (spec §5.2); re-adding it now starts
    from zero counters."""

    service: ServiceKey
    addr: IPAddress
    port: int


IpvsEvent = SyncConnNeeded | ConnExpired | DefenseChanged | DestFreed
