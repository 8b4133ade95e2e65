"""Operator overrides that survive reloads, restarts and failovers.

Owns: `OverrideStore` (the overrides by stable key, with last-writer-wins merging of peer
updates), the state file (JSON, written atomically: temp file + fsync + rename + directory
fsync) and the peer propagation message (`encode_message` / `decode_message`).

Keys are the stable text forms of `hactl.api.model` (`tcp:VIP:PORT`, `RIP:PORT`): a reload
that keeps a server keeps its override, and one that drops the server keeps the override
dormant (listed as orphaned) so that putting the server back restores it.

Merging: every entry carries `updated_at` (wall clock seconds) and `origin` (the director's
router id). An incoming entry replaces the local one iff `(updated_at, origin)` is greater:
a total order, so both directors converge whatever the delivery order. Clearing an override
("enable") is a tombstone (`override` None) so that an older "drain" arriving later cannot
resurrect it; tombstones older than `TOMBSTONE_TTL` are pruned when the file is written.

Propagation message (UTF-8 JSON, one object; the daemon sends it to the peer director over
the sync channel or its API, on every change and in full when a peer is (re)discovered):

    {"type": "hactl.overrides", "version": 1, "origin": "lb1", "entries": [ENTRY, ...]}
    ENTRY = {"vs": "tcp:10.0.0.1:80", "rs": "10.0.0.2:80",
             "override": {"kind": "drain"|"disable"|"weight", "weight": N?, "reason": ""}|null,
             "updated_at": 1763800000.25, "origin": "lb1", "drain": DRAIN|null}
    DRAIN = {"timeout": S|null, "expire_templates": bool, "remove": bool,
             "started_at": WALL, "outcome": null|"drained"|"timed_out"|"cancelled"}

The state file holds the same entries: `{"version": 1, "entries": [ENTRY, ...]}`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hactl.api.drain import DrainOutcome
from hactl.api.model import (
    AddressError,
    Override,
    OverrideKind,
    RsKey,
    format_rs,
    format_vs,
    parse_rs,
    parse_vs,
)
from hactl.ipvs.model import Destination, ServiceKey

__all__ = [
    "DEFAULT_STATE_PATH",
    "MESSAGE_TYPE",
    "MESSAGE_VERSION",
    "TOMBSTONE_TTL",
    "DrainRecord",
    "OverrideEntry",
    "OverrideStore",
    "StateFileError",
    "decode_message",
    "encode_message",
    "fold_overrides",
    "load_state",
    "save_state",
]

DEFAULT_STATE_PATH = Path("/var/lib/hactl/overrides.json")
MESSAGE_TYPE = "hactl.overrides"
MESSAGE_VERSION = 1
STATE_VERSION = 1
TOMBSTONE_TTL = 7 * 86400.0


class StateFileError(ValueError):
    """The state file (or a peer message) is not what this version writes. `where` names the
    bad part of a peer message for the API's error (`body.entries[2]`), None when unknown."""

    def __init__(self, message: str, *, where: str | None = None) -> None:
        super().__init__(message)
        self.where = where


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainRecord:
    """A drain as persisted: enough to resume it after a restart (deadline from `started_at`)."""

    timeout: float | None
    expire_templates: bool
    remove: bool
    started_at: float  # wall clock
    outcome: DrainOutcome | None = None  # None: still running


@dataclass(frozen=True, slots=True, kw_only=True)
class OverrideEntry:
    vs: ServiceKey
    rs: RsKey
    override: Override | None  # None: tombstone of a cleared override
    updated_at: float
    origin: str
    drain: DrainRecord | None = None

    @property
    def key(self) -> tuple[ServiceKey, RsKey]:
        return (self.vs, self.rs)

    def _order(self) -> tuple[float, str]:
        return (self.updated_at, self.origin)


class OverrideStore:
    """The overrides of one director. Pure: callers pass wall-clock `now` and do the I/O."""

    def __init__(self, origin: str, entries: Iterable[OverrideEntry] = ()) -> None:
        self.origin = origin
        self._entries: dict[tuple[ServiceKey, RsKey], OverrideEntry] = {}
        for entry in entries:
            self._entries[entry.key] = entry

    def get(self, vs: ServiceKey, rs: RsKey) -> OverrideEntry | None:
        """The live entry for a server (tombstones read as None)."""
        entry = self._entries.get((vs, rs))
        return entry if entry is not None and entry.override is not None else None

    def active(self) -> dict[tuple[ServiceKey, RsKey], Override]:
        """Every override in force: what the daemon folds into its desired IPVS state."""
        return {k: e.override for k, e in self._entries.items() if e.override is not None}

    def entries(self) -> list[OverrideEntry]:
        """All entries, tombstones included (for the state file and a full peer sync)."""
        return list(self._entries.values())

    def set(
        self, vs: ServiceKey, rs: RsKey, override: Override | None, *, now: float,
        drain: DrainRecord | None = None,
    ) -> OverrideEntry:
        """A local operator change: stamped with `now` and this director as origin.

        `now` is forced past the current entry's stamp so a local change always wins over
        what it replaces, even when the wall clock stepped back.
        """
        current = self._entries.get((vs, rs))
        if current is not None and now <= current.updated_at:
            now = current.updated_at + 1e-3
        entry = OverrideEntry(
            vs=vs, rs=rs, override=override, updated_at=now, origin=self.origin, drain=drain
        )
        self._entries[entry.key] = entry
        return entry

    def update_drain(self, vs: ServiceKey, rs: RsKey, outcome: DrainOutcome) -> None:
        """Record how a drain ended, without changing the override's stamp."""
        entry = self._entries.get((vs, rs))
        if entry is not None and entry.drain is not None:
            self._entries[entry.key] = replace(entry, drain=replace(entry.drain, outcome=outcome))

    def merge(self, incoming: Iterable[OverrideEntry]) -> list[OverrideEntry]:
        """Merge a peer's entries (last writer wins); returns those that changed here."""
        changed: list[OverrideEntry] = []
        for entry in incoming:
            current = self._entries.get(entry.key)
            if current is None or entry._order() > current._order():
                self._entries[entry.key] = entry
                changed.append(entry)
        return changed

    def prune(self, *, now: float) -> None:
        """Forget tombstones older than TOMBSTONE_TTL."""
        for key, entry in list(self._entries.items()):
            if entry.override is None and now - entry.updated_at > TOMBSTONE_TTL:
                del self._entries[key]


def fold_overrides(
    vs: ServiceKey,
    destinations: Iterable[Destination],
    overrides: Mapping[tuple[ServiceKey, RsKey], Override],
) -> tuple[Destination, ...]:
    """Health's destinations for `vs` with the operator's overrides folded in: the rule the
    daemon applies when it computes the desired IPVS table (and the fake director too).

    `destinations` is what health wants (a failed server absent, or present with weight 0
    under inhibit_on_failure). Then:
    * DISABLE: absent;
    * DRAIN: weight 0 if present (a failed, absent server stays absent: nothing to drain);
    * WEIGHT N: weight N if present with a non-zero weight (an inhibited server stays 0);
    * no override: unchanged.
    Order is kept, so reloads and restarts produce the same table.
    """
    out: list[Destination] = []
    for dest in destinations:
        override = overrides.get((vs, dest.key))
        if override is None:
            out.append(dest)
        elif override.kind is OverrideKind.DISABLE:
            continue
        elif override.kind is OverrideKind.DRAIN:
            out.append(replace(dest, weight=0))
        elif dest.weight > 0:
            assert override.weight is not None  # WEIGHT overrides always carry one
            out.append(replace(dest, weight=override.weight))
        else:
            out.append(dest)
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# JSON forms


def _drain_json(record: DrainRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "timeout": record.timeout,
        "expire_templates": record.expire_templates,
        "remove": record.remove,
        "started_at": record.started_at,
        "outcome": None if record.outcome is None else record.outcome.value,
    }


def entry_json(entry: OverrideEntry) -> dict[str, Any]:
    return {
        "vs": format_vs(entry.vs),
        "rs": format_rs(entry.rs),
        "override": None if entry.override is None else entry.override.to_json(),
        "updated_at": entry.updated_at,
        "origin": entry.origin,
        "drain": _drain_json(entry.drain),
    }


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StateFileError(f"{what} must be a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise StateFileError(f"{what} must be a finite number")
    return number


def _entry_from_json(data: object) -> OverrideEntry:
    if not isinstance(data, dict):
        raise StateFileError("an entry must be an object")
    try:
        vs = parse_vs(str(data["vs"]))
        rs = parse_rs(str(data["rs"]))
        raw = data.get("override")
        if raw is not None and not isinstance(raw, dict):
            raise StateFileError("override must be an object or null")
        override = None if raw is None else Override.from_json(raw)
        drain_raw = data.get("drain")
        drain = None
        if drain_raw is not None and not isinstance(drain_raw, dict):
            raise StateFileError("drain must be an object or null")
        if drain_raw is not None:
            timeout = drain_raw.get("timeout")
            outcome = drain_raw.get("outcome")
            drain = DrainRecord(
                timeout=None if timeout is None else _number(timeout, "drain.timeout"),
                expire_templates=bool(drain_raw["expire_templates"]),
                remove=bool(drain_raw["remove"]),
                started_at=_number(drain_raw["started_at"], "drain.started_at"),
                outcome=None if outcome is None else DrainOutcome(outcome),
            )
        origin = data["origin"]
        if not isinstance(origin, str):
            raise StateFileError("origin must be a string")
        return OverrideEntry(
            vs=vs, rs=rs, override=override,
            updated_at=_number(data["updated_at"], "updated_at"), origin=origin, drain=drain,
        )
    except StateFileError:
        raise
    except KeyError as exc:
        raise StateFileError(f"bad override entry: {exc.args[0]} is missing") from None
    except (AddressError, TypeError, ValueError, AttributeError) as exc:
        raise StateFileError(f"bad override entry: {exc}") from None


def encode_message(origin: str, entries: Iterable[OverrideEntry]) -> bytes:
    """The propagation message for `entries` (see the module docstring)."""
    doc = {
        "type": MESSAGE_TYPE,
        "version": MESSAGE_VERSION,
        "origin": origin,
        "entries": [entry_json(e) for e in entries],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_message(data: bytes) -> tuple[str, list[OverrideEntry]]:
    """(origin, entries) of a propagation message. Raises StateFileError on anything else."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise StateFileError("override message is not JSON") from None
    if not isinstance(doc, dict):
        raise StateFileError("not an override message (not an object)", where="body")
    if doc.get("type") != MESSAGE_TYPE:
        raise StateFileError(f"not an override message (type must be {MESSAGE_TYPE!r})",
                             where="body.type")
    if doc.get("version") != MESSAGE_VERSION:
        raise StateFileError(f"override message version {doc.get('version')!r} not supported",
                             where="body.version")
    origin = doc.get("origin")
    entries = doc.get("entries")
    if not isinstance(origin, str):
        raise StateFileError("override message needs origin (a string)", where="body.origin")
    if not isinstance(entries, list):
        raise StateFileError("override message needs entries (an array)", where="body.entries")
    out = []
    for i, entry in enumerate(entries):
        try:
            out.append(_entry_from_json(entry))
        except StateFileError as exc:
            raise StateFileError(f"entries[{i}]: {exc}", where=f"body.entries[{i}]") from None
    return origin, out


# ---------------------------------------------------------------------------------------------
# State file


def load_state(path: Path, *, origin: str) -> OverrideStore:
    """The store saved at `path`; an empty one when the file does not exist.

    Raises:
        StateFileError: the file exists but is not a state file (the daemon refuses to start
            rather than silently forgetting drains).
        OSError: it cannot be read.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return OverrideStore(origin)
    try:
        doc = json.loads(text)
    except ValueError:
        raise StateFileError(f"{path}: not JSON") from None
    if not isinstance(doc, Mapping) or doc.get("version") != STATE_VERSION:
        raise StateFileError(f"{path}: not a version {STATE_VERSION} override state file")
    raw = doc.get("entries")
    if not isinstance(raw, list):
        raise StateFileError(f"{path}: entries must be a list")
    try:
        return OverrideStore(origin, (_entry_from_json(e) for e in raw))
    except StateFileError as exc:
        raise StateFileError(f"{path}: {exc}") from None


def save_state(path: Path, store: OverrideStore, *, now: float) -> None:
    """Write the store atomically: a reader (or a crash) sees the old file or the new one.

    temp file in the same directory (rename is atomic only within a filesystem), fsync it,
    rename over the target, then fsync the directory so the rename itself is durable.
    """
    store.prune(now=now)
    doc = {"version": STATE_VERSION, "entries": [entry_json(e) for e in store.entries()]}
    data = json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
