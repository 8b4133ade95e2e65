"""Connection synchronisation between directors, wire-compatible with the Linux IPVS sync
daemon (UDP 8848; spec/ipvs.md §1).

Layers: `wire` (codec, pure), `channel` (SyncSender / SyncReceiver, sans-IO), `service`
(asyncio shell), `kernel` (finds the kernel's own sync daemons). The decision of when a
connection is synced and how a backup applies an entry belong to the engine; it meets this
package through `SyncConn` values and the `SyncSink` port.
"""

from __future__ import annotations

from hactl.sync.channel import SyncReceiver, SyncSender
from hactl.sync.events import ApplySyncEntries, SendDatagram, SyncDropped
from hactl.sync.model import (
    PeerStats,
    SenderStats,
    SyncDaemonConfig,
    SyncRole,
    SyncStats,
    max_sync_len,
    parse_lvs_sync_daemon,
)
from hactl.sync.service import SyncConflictError, SyncService, SyncSink
from hactl.sync.wire import SyncDropReason, SyncMessage, decode_message, encode_message

__all__ = [
    "ApplySyncEntries",
    "PeerStats",
    "SendDatagram",
    "SenderStats",
    "SyncConflictError",
    "SyncDaemonConfig",
    "SyncDropReason",
    "SyncDropped",
    "SyncMessage",
    "SyncReceiver",
    "SyncRole",
    "SyncSender",
    "SyncService",
    "SyncSink",
    "SyncStats",
    "decode_message",
    "encode_message",
    "max_sync_len",
    "parse_lvs_sync_daemon",
]
