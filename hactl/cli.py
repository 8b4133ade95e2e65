"""The `hactl` command line: argparse front end; each subcommand lives in its package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hactl import __version__

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hactl",
        description="Health-checking HA controller for Linux load-balancer directors "
        "(keepalived-compatible configuration, IPVS, VRRP, connection sync).",
    )
    parser.add_argument("--version", action="version", version=f"hactl {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    handler = args.handler
    result: int = handler(args)
    return result
