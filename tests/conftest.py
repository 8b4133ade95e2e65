"""Test-suite wide settings: markers, skips with reasons, and the integration guard."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-soak", action="store_true", help="also run soak and long fuzz tests (marked soak)"
    )


def _netns_usable() -> str | None:
    """None when namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"unshare -n failed: {probe.stderr.decode(errors='replace').strip()}"
    return None


NETNS_SKIP_REASON = _netns_usable()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_soak = config.getoption("--run-soak")
    for item in items:
        if "soak" in item.keywords and not run_soak:
            item.add_marker(pytest.mark.skip(reason="soak test: run with --run-soak"))
        if "netns" in item.keywords and NETNS_SKIP_REASON:
            item.add_marker(pytest.mark.skip(reason=NETNS_SKIP_REASON))
        if "keepalived" in item.keywords and shutil.which("keepalived") is None:
            item.add_marker(
                pytest.mark.skip(reason="keepalived not installed (apt-get install keepalived)")
            )


_integration = {"ran": 0, "skipped": 0}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/integration/" not in report.nodeid.replace(os.sep, "/"):
        return
    if report.when == "call" and not report.skipped:
        _integration["ran"] += 1
    elif report.skipped and report.when in ("setup", "call"):
        _integration["skipped"] += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # CI runs as root: there the integration tests must run, not skip.
    if os.environ.get("HACTL_REQUIRE_INTEGRATION") != "1" or exitstatus != 0:
        return
    if session.config.option.collectonly or session.config.getoption("-k", default=""):
        return
    if _integration["ran"] == 0:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                "FAILED: every integration test was skipped although HACTL_REQUIRE_INTEGRATION=1",
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared (keepalived corpus and specs) is not present beside the repo")
    return SHARED
