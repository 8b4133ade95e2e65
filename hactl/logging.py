"""structlog configuration for `hactl run` (and nothing else).

Output: human-readable console lines by default, JSON lines (`--log-format json`) for log
shippers. Every event is a stable dotted name (`vrrp.state_changed`, `check.health_changed`,
`ipvs.dest_removed`, `sync.role_changed`, `daemon.started`...): treat the names and their
keys as API.

Levels are per subsystem: the subsystem is the event name's first component (`vrrp`,
`check`, `ipvs`, `dataplane`, `sync`, `config`, `daemon`). `parse_levels("info,vrrp=debug")`
gives the default level and the exceptions; events below their subsystem's level are dropped
before rendering, so a quiet subsystem costs one dictionary lookup per event.

Logs go to standard error (systemd's journal takes them from there); standard output stays
free for the demo's instructions.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

__all__ = ["LEVELS", "LogFormat", "configure", "parse_levels"]

LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
LogFormat = str  # "console" | "json"


def parse_levels(spec: str) -> tuple[int, dict[str, int]]:
    """`"info,vrrp=debug,check=warning"` -> (default level, {subsystem: level}).

    Raises:
        ValueError: an unknown level name or an empty subsystem.
    """
    default = logging.INFO
    per: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, level = part.rpartition("=")
        if level.lower() not in LEVELS:
            raise ValueError(f"unknown log level {level!r} (use {', '.join(LEVELS)})")
        if sep and not name:
            raise ValueError(f"missing subsystem before '=' in {part!r}")
        if sep:
            per[name] = LEVELS[level.lower()]
        else:
            default = LEVELS[level.lower()]
    return default, per


class _LevelFilter:
    """Drops events below their subsystem's level (the event name's first component)."""

    def __init__(self, default: int, per: Mapping[str, int]) -> None:
        self._default = default
        self._per = dict(per)

    def __call__(self, _logger: Any, method: str, event: MutableMapping[str, Any]
                 ) -> MutableMapping[str, Any]:
        name = str(event.get("event", ""))
        subsystem = name.split(".", 1)[0]
        threshold = self._per.get(subsystem, self._default)
        if LEVELS.get(method, logging.INFO) < threshold:
            raise structlog.DropEvent
        return event


def configure(fmt: LogFormat = "console", *, levels: str = "info",
              stream: TextIO | None = None, stdlib: bool = True) -> None:
    """Configure structlog (and the standard library's root logger) for the daemon.

    Args:
        fmt: "console" or "json".
        levels: see `parse_levels`.
        stream: where lines go (default standard error).
        stdlib: also send the standard library's warnings (asyncio, pyroute2) there.

    Raises:
        ValueError: an unknown format or level.
    """
    if fmt not in ("console", "json"):
        raise ValueError(f"unknown log format {fmt!r} (use console or json)")
    default, per = parse_levels(levels)
    out = stream if stream is not None else sys.stderr
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _LevelFilter(default, per),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.BoundLogger,
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    if not stdlib:
        return
    # Libraries (asyncio, aiohttp, pyroute2) log through the standard library: keep their
    # warnings and errors, on the same stream.
    logging.basicConfig(level=logging.WARNING, stream=out,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
