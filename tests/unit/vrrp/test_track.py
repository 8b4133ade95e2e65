"""vrrp_script debounce (rise/fall/init_fail), its runner, and track_file parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from hactl.vrrp.model import VrrpScript
from hactl.vrrp.track import (
    ScriptStateChanged,
    ScriptTracker,
    read_track_file,
)


def spec(**kw: object) -> VrrpScript:
    fields: dict[str, object] = {"name": "chk", "command": ("true",), "interval": 2.0}
    fields.update(kw)
    return VrrpScript(**fields)  # type: ignore[arg-type]


def test_fall_needs_consecutive_failures() -> None:
    t = ScriptTracker(spec(fall=3, rise=2), now=0.0)
    assert t.ok
    for ok in (False, False, True, False, False):
        t.record_result(ok, now=0.0)
    assert t.ok and t.pop_events() == []
    t.record_result(False, now=0.0)
    assert not t.ok
    assert t.pop_events() == [ScriptStateChanged(name="chk", ok=False)]
    t.record_result(True, now=0.0)
    assert not t.ok
    t.record_result(True, now=0.0)
    assert t.ok
    assert t.pop_events() == [ScriptStateChanged(name="chk", ok=True)]


def test_init_fail_starts_down() -> None:
    t = ScriptTracker(spec(init_fail=True), now=0.0)
    assert not t.ok
    t.record_result(True, now=0.0)
    assert t.ok


def test_schedule_is_interval_from_start() -> None:
    t = ScriptTracker(spec(), now=5.0)
    assert t.next_run_at() == 5.0
    t.started(now=5.0)
    assert t.next_run_at() == 7.0


def test_timeout_defaults_to_interval() -> None:
    assert spec().effective_timeout == 2.0
    assert spec(timeout=0.5).effective_timeout == 0.5


@pytest.mark.parametrize(
    ("content", "value"),
    [
        (b"", 0),
        (b"12\n", 12),
        (b"  -3", -3),
        (b"0x10", 16),
        (b"010", 8),
        (b"abc", 0),
        (b"7 junk", 7),
    ],
)
def test_read_track_file(tmp_path: Path, content: bytes, value: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(content)
    assert read_track_file(str(path)) == value


def test_missing_track_file_reads_zero(tmp_path: Path) -> None:
    assert read_track_file(str(tmp_path / "missing")) == 0


def test_user_kwargs() -> None:
    import os

    from hactl.vrrp.track import user_kwargs

    assert user_kwargs(None) == {}
    assert user_kwargs("no-such-user-hactl") == {}
    if os.geteuid() == 0:
        assert user_kwargs("root") == {"user": 0, "group": 0}
    else:
        assert user_kwargs("root") == {}  # only root can switch users
