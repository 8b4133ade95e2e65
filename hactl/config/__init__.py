"""hactl's configuration: keepalived 2.2.7's language, parsed into a typed, immutable model.

One entry point per source: `load(path)` for a file (includes followed) and `parse_text(text)`
for a string. Both run the whole pipeline (syntax -> build -> validate -> lints) and either
return a `Loaded` (the model and its warnings) or raise `ConfigErrors` carrying every error of
every stage, sorted by position, with the warnings found alongside. A model is never returned
when there is an error, so no subsystem ever sees a default substituted for a bad value.

The model types are re-exported here; subsystems import them from `hactl.config`.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hactl.config import build as _build
from hactl.config import lints as _lints
from hactl.config import syntax as _syntax
from hactl.config import validate as _validate
from hactl.config.keywords import (
    AuthType,
    CheckerKind,
    DnsType,
    FlushOnStop,
    HttpMethod,
    HttpProtocol,
    IpFamily,
    LvsMethod,
    LvsSched,
    Protocol,
    ProxyProtocol,
    SchedFlag,
    Scope,
    TunnelCsum,
    TunnelType,
    VrrpState,
)
from hactl.config.model import (
    NOPOS,
    Authentication,
    BasicAuth,
    BfdCheck,
    Checker,
    Config,
    DnsCheck,
    FileCheck,
    Forwarding,
    GlobalDefs,
    HttpGet,
    InitFile,
    Key,
    LvsSyncDaemon,
    LvsTimeouts,
    MiscCheck,
    NotifyScript,
    PingCheck,
    RawStmt,
    RealServer,
    Route,
    Rule,
    SmtpCheck,
    SmtpServer,
    SorryServer,
    SslConfig,
    SslGet,
    SyncGroup,
    TcpCheck,
    TrackFile,
    TrackInterface,
    TrackRef,
    UdpCheck,
    UnicastPeer,
    Url,
    UserSpec,
    VirtualIpAddress,
    VirtualServer,
    VirtualServerGroup,
    VrrpInstance,
    VrrpScript,
    VsgMember,
)
from hactl.errors import ConfigError, ConfigErrors, ConfigSyntaxError, Diagnostic, Severity

__all__ = [
    "NOPOS",
    "AuthType",
    "Authentication",
    "BasicAuth",
    "BfdCheck",
    "Checker",
    "CheckerKind",
    "Config",
    "DnsCheck",
    "DnsType",
    "FileCheck",
    "FlushOnStop",
    "Forwarding",
    "GlobalDefs",
    "HttpGet",
    "HttpMethod",
    "HttpProtocol",
    "InitFile",
    "IpFamily",
    "Key",
    "Loaded",
    "LvsMethod",
    "LvsSched",
    "LvsSyncDaemon",
    "LvsTimeouts",
    "MiscCheck",
    "NotifyScript",
    "PingCheck",
    "Protocol",
    "ProxyProtocol",
    "RawStmt",
    "RealServer",
    "Route",
    "Rule",
    "SchedFlag",
    "Scope",
    "SmtpCheck",
    "SmtpServer",
    "SorryServer",
    "SslConfig",
    "SslGet",
    "SyncGroup",
    "TcpCheck",
    "TrackFile",
    "TrackInterface",
    "TrackRef",
    "TunnelCsum",
    "TunnelType",
    "UdpCheck",
    "UnicastPeer",
    "Url",
    "UserSpec",
    "VirtualIpAddress",
    "VirtualServer",
    "VirtualServerGroup",
    "VrrpInstance",
    "VrrpScript",
    "VrrpState",
    "VsgMember",
    "load",
    "parse_text",
]


@dataclass(frozen=True, slots=True)
class Loaded:
    """A configuration that has no errors, and the warnings found in it (sorted)."""

    config: Config
    warnings: tuple[Diagnostic, ...]


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a configuration is parsed.

    Parsing allocates hundreds of thousands of small acyclic objects; each generational
    collection rescans the growing heap, which made large configurations (the 10,000-service
    benchmark) markedly slower than linear. Reference counting still frees everything; the
    collector resumes (if it was on) when parsing ends. The switch is process-wide: parsing
    is synchronous, so nothing else runs meanwhile in an asyncio daemon.
    """
    enabled = gc.isenabled()
    # Whether someone else uses the permanent generation (gc.freeze before forking): then
    # it is left alone, at the price of the collection described below.
    frozen_by_others = gc.get_freeze_count() > 0
    gc.disable()
    try:
        yield
    finally:
        if not frozen_by_others:
            # What parsing made and kept is the model, long-lived. Left in the youngest
            # generation, the first collection after `enable` would traverse all of it (about
            # a second for the 10,000-service benchmark), and again as it ages. freeze +
            # unfreeze moves every tracked object to the oldest generation and resets the
            # young count: two list splices, and the model is scanned only by the occasional
            # full collection, like any long-lived data.
            gc.freeze()
            gc.unfreeze()
        if enabled:
            gc.enable()


def _finish(result: _syntax.SyntaxResult, *, tcp_keepalive_time: float) -> Loaded:
    errors: list[ConfigError] = []
    warnings: list[Diagnostic] = []
    for diag in result.diagnostics:
        if diag.severity is Severity.ERROR:
            errors.append(ConfigSyntaxError(diag.message, diag.pos, code=diag.code, hint=diag.hint))
        else:
            warnings.append(diag)
    # The statements are handed over, so that build frees them as it goes (the callers
    # keep no reference to `result`).
    nodes = list(result.nodes)
    del result
    built = _build.build(nodes, consume=True)
    errors.extend(built.errors)
    warnings.extend(built.warnings)
    # Cross-object rules run on the partial model too, so one run reports everything; the
    # model itself is only returned when there is no error at all.
    errors.extend(_validate.validate(built.config))
    if not errors:
        warnings.extend(_lints.lint(built.config, tcp_keepalive_time=tcp_keepalive_time))
    if errors:
        raise ConfigErrors(errors, warnings)
    return Loaded(built.config, tuple(sorted(warnings, key=Diagnostic.sort_key)))


def load(
    path: Path,
    *,
    config_id: str | None = None,
    tcp_keepalive_time: float = _lints.DEFAULT_TCP_KEEPALIVE_TIME,
) -> Loaded:
    """Load a configuration file, following its includes.

    Args:
        path: the top-level file.
        config_id: the active name for `@name` / `@^name` lines (keepalived `-i`); None means
            the short host name.
        tcp_keepalive_time: the system's net.ipv4.tcp_keepalive_time, for the
            `tcp-timeout-below-keepalive` lint.

    Returns:
        The model and its warnings.

    Raises:
        ConfigErrors: every error of the file (syntax, values, cross-object rules), sorted.
        OSError: the top-level file cannot be read.
    """
    with _gc_paused():
        return _finish(
            _syntax.parse_file(path, config_id=config_id), tcp_keepalive_time=tcp_keepalive_time
        )


def parse_text(
    text: str,
    *,
    path: str = "<string>",
    config_id: str | None = None,
    base_dir: Path | None = None,
    tcp_keepalive_time: float = _lints.DEFAULT_TCP_KEEPALIVE_TIME,
) -> Loaded:
    """Parse configuration text; `path` names it in diagnostics, includes resolve from
    `base_dir` (default: the current directory). Same results and errors as `load`."""
    with _gc_paused():
        return _finish(
            _syntax.parse_text(text, path=path, config_id=config_id, base_dir=base_dir),
            tcp_keepalive_time=tcp_keepalive_time,
        )
