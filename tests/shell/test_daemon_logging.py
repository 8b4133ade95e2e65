"""The daemon's log configuration: JSON lines, stable event names, levels per subsystem."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from hactl.logging import configure, parse_levels


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_parse_levels() -> None:
    assert parse_levels("warning,vrrp=debug,check=error") == (30, {"vrrp": 10, "check": 40})
    assert parse_levels("") == (20, {})
    with pytest.raises(ValueError, match="unknown log level"):
        parse_levels("vrrp=loud")
    with pytest.raises(ValueError, match="missing subsystem"):
        parse_levels("=debug")


def test_json_lines_filtered_per_subsystem(restore_structlog: None) -> None:
    del restore_structlog
    out = io.StringIO()
    configure("json", levels="info,vrrp=debug,check=warning", stream=out, stdlib=False)
    log = structlog.get_logger("hactl.test")
    log.debug("vrrp.advert_received", vrid=51)  # vrrp at debug: kept
    log.debug("ipvs.op_planned")  # default info: dropped
    log.info("check.health_changed", rs="10.0.0.1:80", up=False)  # check at warning: dropped
    log.warning("check.script_failed", script="/bin/false")
    log.info("ipvs.dest_removed", vs="TCP 10.0.0.1:80", rs="10.0.0.2:80")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["event"], e["level"]) for e in lines] == [
        ("vrrp.advert_received", "debug"),
        ("check.script_failed", "warning"),
        ("ipvs.dest_removed", "info"),
    ]
    assert lines[0]["vrid"] == 51 and lines[2]["rs"] == "10.0.0.2:80"
    assert all(e["timestamp"].endswith("Z") for e in lines)


def test_console_format_and_bad_format(restore_structlog: None) -> None:
    del restore_structlog
    out = io.StringIO()
    configure("console", stream=out, stdlib=False)
    structlog.get_logger().info("daemon.started", services=1)
    text = out.getvalue()
    assert "daemon.started" in text and "services=1" in text and "\x1b[" not in text
    with pytest.raises(ValueError, match="unknown log format"):
        configure("xml", stream=out, stdlib=False)
