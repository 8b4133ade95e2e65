"""Golden configuration files: every bad file pins its exact diagnostics, positions included.

`data/bad/NAME.conf` has a sibling `NAME.errors`: one line per diagnostic (errors and
warnings, sorted), `PATH:LINE:COL: SEVERITY: MESSAGE [CODE]` with PATH relative to `data/`,
followed by `    HINT` when the diagnostic has a hint. Regenerate a golden after a deliberate
change with `HACTL_REGEN_GOLDEN=1` and review the diff.

`data/good/*.conf` must load without errors; `test_build.py` asserts what they mean.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hactl import config
from hactl.errors import ConfigErrors, Diagnostic

DATA = Path(__file__).parent / "data"
BAD = sorted((DATA / "bad").glob("*.conf"))
GOOD = sorted((DATA / "good").glob("*.conf"))


def render(diagnostics: tuple[Diagnostic, ...]) -> str:
    lines = []
    prefix = str(DATA) + os.sep
    for diag in diagnostics:
        lines.append(str(diag).replace(prefix, "", 1))
        if diag.hint:
            lines.append(f"    {diag.hint}")
    return "\n".join(lines) + "\n"


def diagnostics_of(path: Path) -> tuple[Diagnostic, ...]:
    try:
        loaded = config.load(path, config_id="lb1")
    except ConfigErrors as exc:
        return exc.diagnostics
    return loaded.warnings


def test_there_are_goldens() -> None:
    assert len(BAD) >= 8
    assert len(GOOD) >= 9


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_config_reports_exactly_the_golden_lines(path: Path) -> None:
    golden = path.with_suffix(".errors")
    actual = render(diagnostics_of(path))
    if os.environ.get("HACTL_REGEN_GOLDEN") == "1":
        golden.write_text(actual)
    assert golden.exists(), f"missing golden {golden.name}"
    assert actual == golden.read_text()


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_config_raises_with_errors(path: Path) -> None:
    with pytest.raises(ConfigErrors) as info:
        config.load(path, config_id="lb1")
    assert info.value.errors
    positions = [e.diagnostic.sort_key() for e in info.value.errors]
    assert positions == sorted(positions)


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_good_config_loads(path: Path) -> None:
    loaded = config.load(path, config_id="lb1")
    assert all(w.severity == "warning" for w in loaded.warnings)
