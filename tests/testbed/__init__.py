"""The reliability testbed: namespaces, real servers with fault modes, director pairs and
bounded client load (see docs/reliability.md)."""

from __future__ import annotations

import os

from tests.testbed.load import Summary

__all__ = ["record"]


def record(scenario: str, summary: Summary, *, bound: str, passed: bool,
           detail: str = "") -> str:
    """Print the scenario's result line, and append it to $HACTL_RELIABILITY_RESULTS."""
    line = (f"{summary.line(scenario)} bound={bound.replace(' ', '_')} "
            f"result={'pass' if passed else 'FAIL'} detail={detail.replace(' ', '_') or '-'}")
    print(line)
    path = os.environ.get("HACTL_RELIABILITY_RESULTS")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    return line
