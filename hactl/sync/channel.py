"""Sans-IO cores of connection sync: `SyncSender` (master) and `SyncReceiver` (backup).

SyncSender rules (spec/ipvs.md §1.8, `ip_vs_sync_conn` and the master thread):
* Entries go to one of `ports` in-progress datagrams (a stable hash of the connection key picks
  it, §1.1 sync_ports). An entry is appended while header + entries + alignment pad + entry fit
  in `max_datagram` bytes; otherwise the datagram is queued and a new one started. A datagram
  is always allowed its first entry, however large (§1.1 "one oversized entry is sent alone").
* hactl caps a datagram at 255 entries: the kernel's one-byte `nr_conns` would wrap with a
  large maxlen (deliberate difference, it only avoids corrupt messages).
* A partial datagram is queued once it is `flush_interval` (the kernel's 2 s) old; a full one
  (no entry fits any more, or 255 entries) at once. The kernel adds a 20 ms wake-up delay
  before sending full datagrams, only to batch thread wake-ups, and queues a full datagram
  only when the next entry arrives; a user-space sender has no reason to wait.
* The queue of each port holds at most `qlen_max` datagrams. When it is full the **oldest**
  datagram is dropped and counted (the kernel drops the newest; newer entries supersede older
  ones for the same connection, so hactl keeps them).
* Changing the version flushes the in-progress datagrams first (§1.5 last point).
* With an `auth_key`, every datagram carries the hactl trailer and the room for it is reserved,
  so the datagram never exceeds `max_datagram`.

SyncReceiver rules (§1.9, §1.10):
* Every datagram is decoded by `wire.decode_message` with the backup's syncid filter; a
  datagram discarded whole, entries skipped one by one, and the tail after a fatal entry error
  become `SyncDropped` facts and per-peer counters; the entries a kernel would apply become one
  `ApplySyncEntries` effect with the kernel's accepted flags (`wire.accepted_flags`).
* Datagrams longer than `max_datagram` are dropped: the kernel reads at most sync_maxlen bytes
  and the truncated message then fails the size check.
* Peers are keyed by source address (a master's source port changes when it restarts).
* The shell reports what the sink did through `record_applied`.

Invariants: no I/O, no clock (every time-dependent call takes `now`), no logging; bad remote
input never raises out of `receive_datagram`. Misuse (negative sizes, unknown version) raises
`StateError` or `ValueError` at construction.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from hactl.errors import StateError, SyncDecodeError
from hactl.ipvs.model import AF_INET6, SyncConn
from hactl.sync import wire
from hactl.sync.events import ApplySyncEntries, SendDatagram, SyncDropped, SyncReceiverEvent
from hactl.sync.model import (
    DEFAULT_QLEN_MAX,
    FLUSH_INTERVAL,
    PeerStats,
    SenderStats,
)
from hactl.sync.wire import SyncDropReason

__all__ = ["OTHER_PEERS", "QUEUE_FULL", "V0_IPV6", "SyncReceiver", "SyncSender"]

# Sender-side drop reason (not a wire reason): version 0 cannot carry IPv6 (§1.7), and the
# kernel silently skips such connections.
V0_IPV6 = "v0_ipv6"
QUEUE_FULL = "queue_full"
# The peer record shared by sources beyond SyncReceiver's max_peers.
OTHER_PEERS = "*"


@dataclass(slots=True)
class _Pending:
    """A datagram being filled: encoded entries with their alignment pads, and its age."""

    first_at: float
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0  # header included
    count: int = 0


class SyncSender:
    """Packs entries into sync datagrams (master side).

    Args:
        syncid: the master's sync id (low 8 bits travel).
        max_datagram: the kernel's sync_maxlen (see `model.max_sync_len`), UDP payload bytes.
        version: 1, or 0 for `sync_version 0`.
        ports: sync_ports, a power of two; `SendDatagram.port_offset` is in 0..ports-1.
        qlen_max: datagrams each port may queue before the oldest is dropped.
        flush_interval: age at which a partial datagram is queued (kernel: 2 s).
        auth_key: enables the hactl authentication trailer.
    """

    def __init__(
        self,
        *,
        syncid: int,
        max_datagram: int,
        version: int = 1,
        ports: int = 1,
        qlen_max: int = DEFAULT_QLEN_MAX,
        flush_interval: float = FLUSH_INTERVAL,
        auth_key: bytes | None = None,
    ) -> None:
        if version not in (0, 1):
            raise StateError(f"unknown sync version {version}")
        if ports < 1 or ports & (ports - 1):
            raise StateError(f"sync_ports {ports} is not a power of two")
        if qlen_max < 1 or max_datagram < 1 or flush_interval <= 0:
            raise StateError("qlen_max, max_datagram and flush_interval must be positive")
        self._syncid = syncid & 0xFF
        self._version = version
        self._ports = ports
        self._qlen_max = qlen_max
        self._flush_interval = flush_interval
        self._auth_key = auth_key
        trailer = wire.AUTH_TRAILER_LEN if auth_key is not None else 0
        self._capacity = max_datagram - trailer
        self._pending: list[_Pending | None] = [None] * ports
        self._queues: list[deque[SendDatagram]] = [deque() for _ in range(ports)]
        self._entries_added = 0
        self._entries_sent = 0
        self._datagrams_sent = 0
        self._bytes_sent = 0
        self._datagrams_dropped = 0
        self._entries_dropped: dict[str, int] = {}

    # -- inputs ---------------------------------------------------------------------------------

    def add(self, entry: SyncConn, *, now: float) -> None:
        """Append one entry (the engine decided it must be synced, §2).

        Raises:
            ValueError: the entry cannot be encoded (PE data over 255 bytes, a PE name over
            16): the engine produced an impossible entry.
        """
        self._entries_added += 1
        version = self._version
        if version == 0 and entry.family == AF_INET6:
            self._count_drop(V0_IPV6, 1)
            return
        chunk = wire.encode_entry(entry, version=version)
        port = self._port_of(entry) if self._ports > 1 else 0
        buf = self._pending[port]
        pad = 0
        if buf is not None:
            pad = -buf.size & 3 if version == 1 else 0
            if buf.size + pad + len(chunk) > self._capacity or buf.count >= wire.MAX_ENTRIES:
                self._enqueue(port, buf)
                buf = None
                pad = 0
        if buf is None:
            hdr = wire.HEADER_V1_LEN if version == 1 else wire.HEADER_V0_LEN
            buf = self._pending[port] = _Pending(first_at=now, size=hdr)
        if pad:
            buf.chunks.append(b"\0" * pad)
        buf.chunks.append(chunk)
        buf.size += pad + len(chunk)
        buf.count += 1
        # A datagram no entry can join any more leaves now rather than at the next add or
        # the flush deadline (the kernel waits for one of those; the bytes are the same).
        smallest = wire.V4_ENTRY_LEN if version == 1 else wire.V0_ENTRY_LEN
        room = self._capacity - buf.size - (-buf.size & 3 if version == 1 else 0)
        if room < smallest or buf.count >= wire.MAX_ENTRIES:
            self._enqueue(port, buf)

    def add_many(self, entries: Iterable[SyncConn], *, now: float) -> None:
        for entry in entries:
            self.add(entry, now=now)

    def set_version(self, version: int, *, now: float) -> None:
        """Switch between v0 and v1 (sync_version); in-progress datagrams are queued first."""
        if version not in (0, 1):
            raise StateError(f"unknown sync version {version}")
        if version != self._version:
            self.flush(now=now)
            self._version = version

    def flush(self, *, now: float) -> None:
        """Queue every in-progress datagram now (shutdown, role change, version change)."""
        for port, buf in enumerate(self._pending):
            if buf is not None:
                self._enqueue(port, buf)

    def handle_timer(self, *, now: float) -> None:
        """Queue the in-progress datagrams that are `flush_interval` old (§1.8)."""
        for port, buf in enumerate(self._pending):
            if buf is not None and now >= buf.first_at + self._flush_interval:
                self._enqueue(port, buf)

    # -- outputs --------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When the oldest in-progress datagram becomes due, or None."""
        due = [b.first_at + self._flush_interval for b in self._pending if b is not None]
        return min(due) if due else None

    def pop_datagrams(self, limit: int | None = None) -> list[SendDatagram]:
        """Take up to `limit` queued datagrams (all by default), oldest first per port."""
        out: list[SendDatagram] = []
        for queue in self._queues:
            while queue and (limit is None or len(out) < limit):
                out.append(queue.popleft())
        for dgram in out:
            self._entries_sent += dgram.entries
            self._datagrams_sent += 1
            self._bytes_sent += len(dgram.data)
        return out

    @property
    def datagrams_dropped(self) -> int:
        """Datagrams discarded because their port's queue was full."""
        return self._datagrams_dropped

    @property
    def queue_depth(self) -> int:
        return sum(len(q) for q in self._queues)

    def stats(self) -> SenderStats:
        return SenderStats(
            entries_added=self._entries_added,
            entries_sent=self._entries_sent,
            datagrams_sent=self._datagrams_sent,
            bytes_sent=self._bytes_sent,
            entries_pending=sum(b.count for b in self._pending if b is not None),
            queue_depth=self.queue_depth,
            datagrams_dropped=self._datagrams_dropped,
            entries_dropped=MappingProxyType(dict(self._entries_dropped)),
        )

    # -- internals ------------------------------------------------------------------------------

    def _port_of(self, entry: SyncConn) -> int:
        # Any stable function of the connection key will do (§1.1 [hactl note]); hashes of
        # ints and addresses are not randomised between runs.
        key = (entry.protocol, entry.caddr, entry.cport, entry.vaddr, entry.vport)
        return hash(key) & (self._ports - 1)

    def _enqueue(self, port: int, buf: _Pending) -> None:
        self._pending[port] = None
        header = wire.pack_header(self._syncid, buf.size, buf.count, version=self._version)
        data = header + b"".join(buf.chunks)
        if self._auth_key is not None:
            data = wire.sign(data, self._auth_key)
        queue = self._queues[port]
        if len(queue) >= self._qlen_max:
            dropped = queue.popleft()
            self._datagrams_dropped += 1
            self._count_drop(QUEUE_FULL, dropped.entries)
        queue.append(SendDatagram(port, data, buf.count))

    def _count_drop(self, reason: str, n: int) -> None:
        self._entries_dropped[reason] = self._entries_dropped.get(reason, 0) + n


@dataclass(slots=True)
class _Peer:
    first_at: float
    last_at: float
    syncid: int = 0
    version: int = 1
    datagrams: int = 0
    entries_received: int = 0
    entries_applied: int = 0
    entries_failed: int = 0
    datagrams_dropped: dict[str, int] = field(default_factory=dict)
    entries_dropped: dict[str, int] = field(default_factory=dict)
    apply_results: dict[str, int] = field(default_factory=dict)


def _announced(data: bytes) -> int:
    """Entries a datagram's header announces (0 when unreadable), for drop accounting."""
    if len(data) >= wire.HEADER_V1_LEN and data[0] == 0 and data[5] == 1:
        return data[4]
    return data[0] if data else 0


class SyncReceiver:
    """Validates sync datagrams and turns them into entries to apply (backup side).

    Args:
        syncid: the backup's sync id; 0 accepts every master (§1.9 step 2).
        max_datagram: the backup's sync_maxlen (`model.max_sync_len(..., master=False)`).
        auth_key: require and verify the hactl authentication trailer.
        pe_names: persistence engines the local engine supports.
        max_peers: distinct sources tracked one by one; later ones share the record
            `OTHER_PEERS` (a segment flooded with spoofed sources cannot grow memory).
    """

    def __init__(
        self,
        *,
        syncid: int = 0,
        max_datagram: int = 65535,
        auth_key: bytes | None = None,
        pe_names: frozenset[str] = wire.DEFAULT_PE_NAMES,
        max_peers: int = 64,
    ) -> None:
        self._max_peers = max_peers
        self._syncid = syncid & 0xFF
        self._max_datagram = max_datagram
        self._auth_key = auth_key
        self._pe_names = pe_names
        self._peers: dict[str, _Peer] = {}
        self._events: list[SyncReceiverEvent] = []

    def receive_datagram(self, data: bytes, *, src: tuple[str, int], now: float) -> None:
        """Feed one UDP payload received from `src` (address, port); never raises."""
        peer_id = src[0]
        peer = self._peers.get(peer_id)
        if peer is None:
            if len(self._peers) >= self._max_peers:
                peer_id = OTHER_PEERS
                peer = self._peers.get(peer_id)
            if peer is None:
                peer = self._peers[peer_id] = _Peer(first_at=now, last_at=now)
        peer.last_at = now
        peer.datagrams += 1
        if len(data) > self._max_datagram:
            self._drop_datagram(peer_id, peer, SyncDropReason.TOO_LONG, data, f"{len(data)} B")
            return
        try:
            msg = wire.decode_message(
                data,
                syncid=self._syncid,
                auth_key=self._auth_key,
                pe_names=self._pe_names,
                accept_flags=True,
            )
        except SyncDecodeError as exc:
            reason = exc.reason
            assert isinstance(reason, SyncDropReason)
            self._drop_datagram(peer_id, peer, reason, data, str(exc))
            return
        peer.syncid = msg.syncid
        peer.version = msg.version
        peer.entries_received += msg.nr_conns
        for skip in msg.skipped:
            self._drop_entries(peer_id, peer, skip.reason, 1, f"entry {skip.index}")
        if msg.fatal is not None:
            rest = msg.nr_conns - len(msg.entries) - len(msg.skipped)
            self._drop_entries(peer_id, peer, msg.fatal, rest, "rest of the message")
        if msg.entries:
            self._events.append(ApplySyncEntries(peer_id, msg.entries, msg.version))

    def record_applied(
        self,
        peer: str,
        *,
        applied: int,
        failed: int = 0,
        outcomes: Mapping[str, int] | None = None,
    ) -> None:
        """The shell handed entries of `peer` to the sink: `applied` succeeded, `failed`
        raised; `outcomes` counts what the sink reported doing (created, updated...)."""
        record = self._peers.get(peer)
        if record is None:
            raise StateError(f"record_applied for unknown peer {peer}")
        record.entries_applied += applied
        record.entries_failed += failed
        if outcomes:
            results = record.apply_results
            for label, n in outcomes.items():
                results[label] = results.get(label, 0) + n

    def pop_events(self) -> list[SyncReceiverEvent]:
        events, self._events = self._events, []
        return events

    def stats(self, *, now: float) -> tuple[PeerStats, ...]:
        """One snapshot per peer, sorted by address text."""
        return tuple(
            PeerStats(
                peer=peer_id,
                first_message_at=p.first_at,
                last_message_at=p.last_at,
                lag=max(0.0, now - p.last_at),
                syncid=p.syncid,
                version=p.version,
                datagrams=p.datagrams,
                datagrams_dropped=MappingProxyType(dict(p.datagrams_dropped)),
                entries_received=p.entries_received,
                entries_applied=p.entries_applied,
                entries_failed=p.entries_failed,
                entries_dropped=MappingProxyType(dict(p.entries_dropped)),
                apply_results=MappingProxyType(dict(p.apply_results)),
            )
            for peer_id, p in sorted(self._peers.items())
        )

    def _drop_datagram(
        self, peer_id: str, peer: _Peer, reason: SyncDropReason, data: bytes, detail: str
    ) -> None:
        label = reason.value
        peer.datagrams_dropped[label] = peer.datagrams_dropped.get(label, 0) + 1
        self._events.append(SyncDropped(peer_id, reason, _announced(data), True, detail))

    def _drop_entries(
        self, peer_id: str, peer: _Peer, reason: SyncDropReason, n: int, detail: str
    ) -> None:
        label = reason.value
        peer.entries_dropped[label] = peer.entries_dropped.get(label, 0) + n
        self._events.append(SyncDropped(peer_id, reason, n, False, detail))

