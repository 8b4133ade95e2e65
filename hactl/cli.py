"""The `hactl` command line: argparse front end; each subcommand lives in its package.

Configuration commands (`check`, `dump`, `fmt`) share one loading path and one promise: no
Python traceback reaches the user for any input. Bad input is a diagnostic (exit 1), an
unreadable file is one message (exit 2). Handlers import their packages lazily so that
`hactl --help` stays fast and works whatever a subsystem's state.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from hactl import __version__
from hactl.errors import ConfigErrors, Diagnostic, HactlError, Severity

if TYPE_CHECKING:
    from hactl.config import Config

__all__ = ["DEFAULT_CONFIG_PATHS", "build_parser", "default_config_path", "main"]

# hactl's own file first; a keepalived installation works unchanged.
DEFAULT_CONFIG_PATHS = (Path("/etc/hactl/hactl.conf"), Path("/etc/keepalived/keepalived.conf"))

EXIT_OK = 0
EXIT_CONFIG_ERRORS = 1
EXIT_UNREADABLE = 2
EXIT_INTERNAL = 3

_STDIN = "-"


def default_config_path() -> Path:
    """`/etc/hactl/hactl.conf` if it exists, else `/etc/keepalived/keepalived.conf`."""
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.exists():
            return candidate
    return DEFAULT_CONFIG_PATHS[-1]


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True, slots=True)
class _Outcome:
    """A load: the model when there is no error, every diagnostic, and their sources."""

    config: Config | None
    diagnostics: tuple[Diagnostic, ...]
    texts: dict[str, str]

    @property
    def has_errors(self) -> bool:
        return any(d.severity is Severity.ERROR for d in self.diagnostics)


class _Unreadable(Exception):
    """The top-level configuration file cannot be read (exit 2)."""


def _load(args: argparse.Namespace) -> _Outcome:
    from hactl import config as hconfig

    texts: dict[str, str] = {}
    try:
        if args.file == _STDIN:
            data = sys.stdin.buffer.read()
            text = data.decode("utf-8", errors="replace")
            texts["<stdin>"] = text
            if b"\0" in data:
                # Same verdict as for a file: binary input is one diagnostic.
                from hactl.config.preprocess import decode_config_bytes

                found: list[Diagnostic] = []
                decode_config_bytes(data, "<stdin>", found)
                return _Outcome(None, tuple(found), texts)
            loaded = hconfig.parse_text(
                text, path="<stdin>", config_id=args.config_id, base_dir=Path.cwd()
            )
        else:
            path = Path(args.file) if args.file else default_config_path()
            args.file = str(path)
            if path.is_dir():
                raise _Unreadable(f"{path}: is a directory")
            loaded = hconfig.load(path, config_id=args.config_id)
    except ConfigErrors as exc:
        return _Outcome(None, exc.diagnostics, texts)
    except OSError as exc:
        name = exc.filename if exc.filename is not None else args.file
        raise _Unreadable(f"{name}: {exc.strerror or exc}") from None
    return _Outcome(loaded.config, tuple(loaded.warnings), texts)


def _print_diagnostics(outcome: _Outcome, out: TextIO, *, with_summary: bool) -> None:
    from hactl.config.report import SourceLines, render_text

    if outcome.diagnostics or with_summary:
        text = render_text(
            outcome.diagnostics, sources=SourceLines(outcome.texts), with_summary=with_summary
        )
        out.write(text)


# --------------------------------------------------------------------------- commands


def _keep(args: argparse.Namespace, outcome: _Outcome) -> _Outcome:
    """The outcome, held by `args` until `main` returns: a `check` or `dump` process then
    ends without freeing the model object by object (`_end_process`)."""
    args.outcome = outcome
    return outcome


def _cmd_check(args: argparse.Namespace) -> int:
    outcome = _keep(args, _load(args))
    if args.format == "json":
        from hactl.config.report import render_json

        sys.stdout.write(render_json(outcome.diagnostics) + "\n")
    else:
        _print_diagnostics(outcome, sys.stdout, with_summary=True)
    return EXIT_CONFIG_ERRORS if outcome.has_errors else EXIT_OK


def _cmd_dump(args: argparse.Namespace) -> int:
    outcome = _keep(args, _load(args))
    _print_diagnostics(outcome, sys.stderr, with_summary=outcome.has_errors)
    if outcome.config is None:
        return EXIT_CONFIG_ERRORS
    from hactl.config.dump import to_json

    sys.stdout.write(to_json(outcome.config).rstrip("\n") + "\n")
    return EXIT_OK


def _cmd_fmt(args: argparse.Namespace) -> int:
    outcome = _load(args)
    _print_diagnostics(outcome, sys.stderr, with_summary=outcome.has_errors)
    if outcome.config is None:
        return EXIT_CONFIG_ERRORS
    from hactl.config.fmt import format_config

    sys.stdout.write(format_config(outcome.config))
    return EXIT_OK


# --------------------------------------------------------------------------- parser


def _add_config_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "-f",
        "--config-file",
        "--use-file",  # keepalived's spelling
        dest="file",
        metavar="PATH",
        default=None,
        help="configuration file; '-' reads standard input (default: "
        f"{DEFAULT_CONFIG_PATHS[0]} if it exists, else {DEFAULT_CONFIG_PATHS[1]})",
    )
    sub.add_argument(
        "-i",
        "--config-id",
        dest="config_id",
        metavar="ID",
        default=None,
        help="the name @ID / @^ID lines are compared with, as keepalived's -i "
        "(default: the short host name)",
    )


def raise_nofile_limit(wanted: int) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE to at least `wanted` descriptors where the system allows it.

    The soft limit goes up to `wanted` (never down). When the hard limit is lower, a process
    with CAP_SYS_RESOURCE (root) raises it too, up to fs.nr_open, as HAProxy does for its
    maxconn; otherwise the soft limit stops at the hard one. systemd units set LimitNOFILE=
    (etc/hactl.service), which makes this a no-op there. Returns the (soft, hard) in force.
    """
    import resource

    kind, infinity = resource.RLIMIT_NOFILE, resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(kind)
    if soft == infinity or soft >= wanted:
        return soft, hard
    if hard == infinity or hard >= wanted:
        attempts = [(wanted, hard)]
    else:
        try:
            cap = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            cap = wanted
        attempts = [(min(wanted, cap), min(wanted, cap)), (hard, hard)]
    for new in attempts:
        try:
            resource.setrlimit(kind, new)
        except (OSError, ValueError):
            continue
        return new
    return soft, hard


def _add_run_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`hactl run`: the director in the foreground (its logic lives in `hactl.daemon`)."""

    def handler(args: argparse.Namespace) -> int:
        from hactl.daemon import run_command
        from hactl.ipvs.dataplane import DataPlaneSettings

        # The embedded data plane holds two descriptors per proxied connection
        # (docs/dataplane.md); the rest covers listeners, checks, sync and VRRP sockets.
        raise_nofile_limit(2 * DataPlaneSettings().max_connections + 4096)
        return run_command(args)

    run = subparsers.add_parser(
        "run",
        help="run the director in the foreground",
        description="Run health checks, the IPVS table (kernel or embedded engine with its "
        "data plane), VRRP and connection sync in the foreground. SIGTERM/SIGINT stop "
        "cleanly; SIGHUP reloads the configuration (an invalid one is rejected and the "
        "running state kept). Logs go to standard error. Exit status: 0 clean stop, 1 "
        "configuration errors or a configuration this build cannot run, 2 unreadable file.",
    )
    _add_config_options(run)
    run.add_argument("--log-format", choices=("console", "json"), default="console",
                     help="console (default) or json lines")
    run.add_argument("--log-level", default="info", metavar="LEVELS",
                     help="default level and per-subsystem levels, e.g. 'info,vrrp=debug' "
                     "(subsystems: daemon, config, check, ipvs, dataplane, vrrp, sync)")
    run.add_argument("--pid-file", default=None, metavar="PATH",
                     help="write the process id there (removed at exit)")
    run.add_argument("--backend", choices=("auto", "embedded", "kernel"), default="auto",
                     help="IPVS table: the kernel's (netlink) or the embedded engine with its "
                     "userspace data plane; auto (default) picks the kernel when its IPVS "
                     "netlink family is present, and logs the choice")
    run.add_argument("--api", action="append", default=None, metavar="ADDR",
                     help="serve the control API on ADDR: a unix socket path (default "
                     "/run/hactl/api.sock, mode 0600), or tcp:HOST:PORT / http://HOST:PORT "
                     "(needs --api-token-file); give it twice for both, 'none' for no API")
    run.add_argument("--api-token-file", default=None, metavar="PATH",
                     help="bearer token (first line) required for mutating calls over TCP")
    run.add_argument("--state-file", default="/var/lib/hactl/overrides.json", metavar="PATH",
                     help="operator overrides (drain, disable, weight), kept across restarts "
                     "(default %(default)s)")
    run.add_argument("--peer-api", default=None, metavar="URL",
                     help="the peer director's API (http://HOST:PORT): overrides are "
                     "propagated to it, so a failover does not undo a drain")
    run.add_argument("--peer-token-file", default=None, metavar="PATH",
                     help="bearer token for --peer-api")
    run.set_defaults(handler=handler)


def build_parser(*, operator_commands: bool = True) -> argparse.ArgumentParser:
    """The `hactl` parser. Without `operator_commands` (status, ipvs, drain ...; their module
    pulls in asyncio) it parses the configuration commands alike, for a faster `check`."""
    parser = argparse.ArgumentParser(
        prog="hactl",
        description="Health-checking HA controller for Linux load-balancer directors "
        "(keepalived-compatible configuration, IPVS, VRRP, connection sync).",
    )
    parser.add_argument("--version", action="version", version=f"hactl {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = subs.add_parser(
        "check",
        help="check a configuration and report every problem",
        description="Parse and validate a keepalived-compatible configuration (includes, "
        "@conditionals, $variables and ~SEQ expanded) and report every error and warning at "
        "once, sorted, as PATH:LINE:COL: SEVERITY: MESSAGE with a source excerpt and a hint. "
        "Exit status: 0 no errors (warnings allowed), 1 errors, 2 the file cannot be read.",
    )
    _add_config_options(check)
    check.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text (default) or json: a list of {path, line, column, end_line, end_column, "
        "severity, code, message, hint}",
    )
    check.set_defaults(handler=_cmd_check)

    dump = subs.add_parser(
        "dump",
        help="print the resolved configuration model as JSON",
        description="Print the resolved model (includes and variables expanded, defaults "
        "filled) as JSON on standard output. Diagnostics go to standard error; with errors "
        "nothing is printed and the exit status is 1 (2 when the file cannot be read).",
    )
    _add_config_options(dump)
    dump.set_defaults(handler=_cmd_dump)

    fmt = subs.add_parser(
        "fmt",
        help="print the configuration in canonical keepalived syntax",
        description="Print the configuration in canonical keepalived syntax (modern keyword "
        "spellings, consistent indentation); parsing the output gives the same model. "
        "Diagnostics go to standard error; with errors nothing is printed and the exit "
        "status is 1 (2 when the file cannot be read).",
    )
    _add_config_options(fmt)
    fmt.set_defaults(handler=_cmd_fmt)
    _add_run_parser(subs)
    if operator_commands:
        from hactl.api.cli import add_parsers as add_api_parsers

        add_api_parsers(subs)
    return parser


# Commands whose process ends without the interpreter's teardown (`_end_process`).
_QUICK_EXIT = frozenset({"check", "dump"})


def _end_process(code: int) -> None:
    """End a `check` or `dump` process now, its output flushed.

    What these commands load is the whole model: for a large configuration, hundreds of
    thousands of objects. Freed when the command returns, they cost 0.05-0.08 s of CPU for
    the 10,000-service benchmark; still held at the interpreter's exit (`_keep`), about 1 s,
    its last collections walking them. The operating system frees them at once. These
    commands hold no other resource and register no exit handler. When the output cannot
    be flushed this returns, and the ordinary exit reports it.
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """The `hactl` program. With `argv` None (the console script, `python -m hactl`)
    `check` and `dump` end the process themselves (`_end_process`); a caller that passes
    `argv` always gets the exit status back."""
    words = sys.argv[1:] if argv is None else argv
    # `check` and `dump` load a whole configuration, often in scripts and CI: their parser
    # leaves the operator commands out (same parse, 50 ms less start-up).
    parser = build_parser(operator_commands=not (words and words[0] in _QUICK_EXIT))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    handler = args.handler
    try:
        result: int = handler(args)
    except _Unreadable as exc:
        print(f"hactl {args.command}: cannot read {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    except HactlError as exc:
        print(f"hactl {args.command}: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERRORS
    except (BrokenPipeError, KeyboardInterrupt):
        return 130 if sys.exc_info()[0] is KeyboardInterrupt else EXIT_OK
    except Exception as exc:  # a bug in hactl; the user gets one line, not a traceback
        if os.environ.get("HACTL_DEBUG"):
            raise
        print(
            f"hactl {args.command}: internal error ({type(exc).__name__}: {exc}); "
            "set HACTL_DEBUG=1 for a traceback and please report it",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    if argv is None and args.command in _QUICK_EXIT:
        _end_process(result)
    return result
