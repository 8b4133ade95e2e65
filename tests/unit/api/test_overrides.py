"""Override store: last-writer-wins merging, tombstones, the state file and peer messages."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

import pytest

from hactl.api.drain import DrainOutcome
from hactl.api.model import Override, OverrideKind, parse_vs
from hactl.api.overrides import (
    TOMBSTONE_TTL,
    DrainRecord,
    OverrideStore,
    StateFileError,
    decode_message,
    encode_message,
    fold_overrides,
    load_state,
    save_state,
)
from hactl.ipvs.model import Destination

VS = parse_vs("tcp:10.0.0.1:80")
RS = (ipaddress.ip_address("10.0.1.2"), 80)
RS2 = (ipaddress.ip_address("10.0.1.3"), 80)
DRAIN = Override(kind=OverrideKind.DRAIN)
DISABLE = Override(kind=OverrideKind.DISABLE, reason="maintenance")


def test_set_get_and_active() -> None:
    store = OverrideStore("lb1")
    store.set(VS, RS, DRAIN, now=10.0)
    store.set(VS, RS2, Override(kind=OverrideKind.WEIGHT, weight=5), now=11.0)
    assert store.get(VS, RS) is not None
    assert store.active() == {(VS, RS): DRAIN,
                              (VS, RS2): Override(kind=OverrideKind.WEIGHT, weight=5)}
    store.set(VS, RS, None, now=12.0)
    assert store.get(VS, RS) is None
    assert len(store.entries()) == 2  # the tombstone stays


def test_local_change_wins_even_if_the_clock_stepped_back() -> None:
    store = OverrideStore("lb1")
    first = store.set(VS, RS, DRAIN, now=100.0)
    second = store.set(VS, RS, None, now=50.0)
    assert second.updated_at > first.updated_at


def test_merge_is_last_writer_wins_and_order_independent() -> None:
    a, b = OverrideStore("lb1"), OverrideStore("lb2")
    drain = a.set(VS, RS, DRAIN, now=10.0)
    enable = b.set(VS, RS, None, now=20.0)  # later: the operator re-enabled on lb2
    assert a.merge([enable]) == [enable]
    assert b.merge([drain]) == []  # older: does not resurrect the drain
    assert a.get(VS, RS) is None and b.get(VS, RS) is None
    # Equal stamps: the origin breaks the tie the same way on both sides.
    x = OverrideStore("lb1").set(VS, RS2, DRAIN, now=30.0)
    y = OverrideStore("lb2").set(VS, RS2, DISABLE, now=30.0)
    s1, s2 = OverrideStore("n1", [x]), OverrideStore("n2", [y])
    s1.merge([y])
    s2.merge([x])
    assert s1.get(VS, RS2) == s2.get(VS, RS2)
    assert s1.active()[(VS, RS2)] == DISABLE


def test_message_round_trip() -> None:
    store = OverrideStore("lb1")
    record = DrainRecord(timeout=30.0, expire_templates=True, remove=True, started_at=5.0)
    store.set(VS, RS, DRAIN, now=10.0, drain=record)
    store.set(VS, RS2, None, now=11.0)
    origin, entries = decode_message(encode_message("lb1", store.entries()))
    assert origin == "lb1"
    assert entries == store.entries()
    doc = json.loads(encode_message("lb1", store.entries()))
    assert doc["type"] == "hactl.overrides" and doc["version"] == 1
    assert doc["entries"][0]["vs"] == "tcp:10.0.0.1:80"
    assert doc["entries"][0]["drain"]["expire_templates"] is True


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"type": "other", "version": 1}',
        b'{"type": "hactl.overrides", "version": 2, "origin": "x", "entries": []}',
        b'{"type": "hactl.overrides", "version": 1, "origin": "x", "entries": [{"vs": "x"}]}',
        b'{"type": "hactl.overrides", "version": 1, "origin": "x", "entries": [{"vs": '
        b'"tcp:10.0.0.1:80", "rs": "10.0.1.2:80", "override": {"kind": "bogus"}, '
        b'"updated_at": 1, "origin": "x"}]}',
        b'{"type": "hactl.overrides", "version": 1, "origin": "x", "entries": [{"vs": '
        b'"tcp:10.0.0.1:80", "rs": "10.0.1.2:80", "override": null, '
        b'"updated_at": "soon", "origin": "x"}]}',
    ],
)
def test_malformed_messages_are_rejected(data: bytes) -> None:
    with pytest.raises(StateFileError):
        decode_message(data)


def test_state_file_round_trip_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "overrides.json"
    assert load_state(path, origin="lb1").entries() == []
    store = OverrideStore("lb1")
    store.set(VS, RS, DRAIN, now=1000.0, drain=DrainRecord(
        timeout=None, expire_templates=False, remove=False, started_at=999.0))
    store.update_drain(VS, RS, DrainOutcome.DRAINED)
    save_state(path, store, now=1000.0)
    loaded = load_state(path, origin="lb1")
    assert loaded.entries() == store.entries()
    record = loaded.entries()[0].drain
    assert record is not None and record.outcome is DrainOutcome.DRAINED
    # No temporary file is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overrides.json"]


def test_save_prunes_old_tombstones(tmp_path: Path) -> None:
    path = tmp_path / "overrides.json"
    store = OverrideStore("lb1")
    store.set(VS, RS, None, now=0.0)
    store.set(VS, RS2, None, now=TOMBSTONE_TTL)
    save_state(path, store, now=TOMBSTONE_TTL + 1.0)
    assert [e.rs for e in load_state(path, origin="lb1").entries()] == [RS2]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "overrides.json"
    store = OverrideStore("lb1")
    store.set(VS, RS, DRAIN, now=1.0)
    save_state(path, store, now=1.0)
    before = path.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    store.set(VS, RS, None, now=2.0)
    with pytest.raises(OSError, match="No space"):
        save_state(path, store, now=2.0)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overrides.json"]


@pytest.mark.parametrize(
    "text",
    ["", "{", "[]", '{"version": 9, "entries": []}', '{"version": 1, "entries": {}}',
     '{"version": 1, "entries": [{"vs": "nonsense"}]}'],
)
def test_bad_state_files_refuse_to_load(tmp_path: Path, text: str) -> None:
    path = tmp_path / "overrides.json"
    path.write_text(text)
    with pytest.raises(StateFileError, match=r"overrides\.json"):
        load_state(path, origin="lb1")


def _dest(last: int, weight: int) -> Destination:
    return Destination(addr=ipaddress.ip_address(f"10.0.1.{last}"), port=80, weight=weight)


def test_fold_overrides_rules() -> None:
    health = (_dest(2, 3), _dest(3, 3), _dest(4, 0), _dest(5, 3), _dest(6, 3))
    overrides = {
        (VS, _dest(2, 0).key): DRAIN,
        (VS, _dest(3, 0).key): DISABLE,
        (VS, _dest(4, 0).key): Override(kind=OverrideKind.WEIGHT, weight=9),  # inhibited
        (VS, _dest(5, 0).key): Override(kind=OverrideKind.WEIGHT, weight=9),
        (VS, _dest(7, 0).key): DRAIN,  # down and absent: stays absent
        (parse_vs("udp:10.0.0.1:80"), _dest(6, 0).key): DISABLE,  # another service
    }
    assert fold_overrides(VS, health, overrides) == (
        _dest(2, 0), _dest(4, 0), _dest(5, 9), _dest(6, 3),
    )
    assert fold_overrides(VS, health, {}) == health
