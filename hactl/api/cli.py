"""The operator commands that talk to a running daemon: status, ipvs, drain, enable, disable,
weight, reload. `add_parsers(subparsers)` registers them on hactl's argparse front end.

Exit codes (scripts rely on them; docs/operations.md):
    0  done (drain: drained, or started without --wait)
    1  the operation failed: drain timed out or was cancelled, reload rejected, daemon error
    2  usage or bad input (argparse, a malformed address, the daemon answered 400/413)
    3  cannot reach the daemon (no socket, refused, timeout, not an hactl API)
    4  not found (unknown virtual or real server)
    5  authentication failed (TCP API without a valid token)

Every handler catches what it expects; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TextIO

from hactl.api.model import AddressError, RsKey, format_vs, parse_rs, parse_vs
from hactl.ipvs.model import IpProto, ServiceKey

if TYPE_CHECKING:
    # The client pulls in aiohttp's client (half a second); it is imported only when a
    # command runs, so that registering these parsers keeps `hactl --help` fast.
    from hactl.api.client import ApiClient

__all__ = [
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNAUTHORIZED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "add_parsers",
    "format_status",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4
EXIT_UNAUTHORIZED = 5

Handler = Callable[["ApiClient", argparse.Namespace], Awaitable[int]]


# ---------------------------------------------------------------------------------------------
# Plumbing


def _run(args: argparse.Namespace, body: Handler) -> int:
    """Connect, run `body`, and map every expected failure to its exit code and one line."""
    from hactl.api.client import ApiClient, ApiError, Unreachable, resolve_address, resolve_token

    name = f"hactl {args.command}"
    try:
        token = resolve_token(args.token_file)
    except OSError as exc:
        print(f"{name}: cannot read the token file: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    address = resolve_address(args.api)

    async def go() -> int:
        async with ApiClient(address, token=token) as api:
            return await body(api, args)

    try:
        return asyncio.run(go())
    except AddressError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Unreachable as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ApiError as exc:
        print(f"{name}: {exc.message}", file=sys.stderr)
        if exc.status == 404:
            return EXIT_NOT_FOUND
        if exc.status == 401:
            return EXIT_UNAUTHORIZED
        if exc.status in (400, 413):
            return EXIT_USAGE
        return EXIT_FAILED


def _keys(args: argparse.Namespace) -> tuple[ServiceKey, RsKey]:
    return parse_vs(args.vs, default_protocol=IpProto.TCP), parse_rs(args.rs)


def real_server_path(vs: ServiceKey, rs: RsKey) -> str:
    from hactl.api.client import real_server_path as path

    return path(vs, rs)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", metavar="ADDR", default=None,
                        help="the daemon's API: a unix socket path or http://host:port "
                        "(default: $HACTL_API, else /run/hactl/api.sock)")
    parser.add_argument("--token-file", metavar="PATH", default=None,
                        help="file holding the bearer token for a TCP API "
                        "(default: $HACTL_API_TOKEN)")


def _server_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vs", metavar="VIP:PORT",
                        help="virtual server: VIP:PORT (TCP), or udp:VIP:PORT, sctp:VIP:PORT, "
                        "fwm:MARK; IPv6 as [ADDR]:PORT")
    parser.add_argument("rs", metavar="RIP:PORT", help="real server: RIP:PORT or [ADDR]:PORT")


def _when(wall: float | None) -> str:
    if wall is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(wall))


# ---------------------------------------------------------------------------------------------
# status


def format_status(info: dict[str, Any], vrrp: list[dict[str, Any]],
                  servers: list[dict[str, Any]]) -> str:
    """The `hactl status` text (pure, for tests)."""
    out = [
        f"hactl {info['version']} ({info['backend']} IPVS), router {info.get('router_id') or '-'}",
        f"config {info['config_path']} loaded {_when(info['config_loaded_at'])}",
        "",
        "VRRP instances:" if vrrp else "VRRP instances: none",
    ]
    for inst in vrrp:
        out.append(
            f"  {inst['name']:<16} {inst['interface']:<10} vrid {inst['vrid']:<3} "
            f"{inst['state']:<7} prio {inst['effective_priority']}/{inst['priority']}  "
            f"master {inst['master_address'] or '-'}  transitions {inst['transitions']}  "
            f"split-brain {inst['split_brain']}"
        )
    out.append("")
    out.append("Virtual servers:" if servers else "Virtual servers: none")
    for vs in servers:
        quorum = "quorum up" if vs["quorum_up"] else "QUORUM DOWN"
        sorry = ", sorry server active" if vs["sorry_active"] else ""
        out.append(f"  {vs['id']}  {vs['scheduler']}  {quorum}{sorry}")
        for rs in vs["real_servers"]:
            conns = rs["connections"]
            override = rs["override"]
            note = ""
            if override is not None:
                note = f"  [{override['kind']}"
                if override.get("weight") is not None:
                    note += f" {override['weight']}"
                note += "]"
            if not rs["in_ipvs"]:
                note += "  (not in IPVS)"
            last = ""
            checks = rs["checks"]
            if checks and checks[0]["ok"] is not None:
                check = checks[0]
                latency = "" if check["latency"] is None else f" {check['latency'] * 1000:.1f}ms"
                last = f"  {check['kind']} {'ok' if check['ok'] else 'FAIL'}{latency}"
            out.append(
                f"    {rs['id']:<22} {rs['health']:<7} weight {rs['effective_weight']}/"
                f"{rs['configured_weight']:<4} active {conns['active']:<6} inactive "
                f"{conns['inactive']:<6} persistent {conns['persistent']:<5}{last}{note}"
            )
    return "\n".join(out) + "\n"


async def _status(api: ApiClient, args: argparse.Namespace) -> int:
    info = await api.get("/api/v1/info")
    vrrp = (await api.get("/api/v1/vrrp/instances"))["instances"]
    servers = (await api.get("/api/v1/virtual-servers"))["virtual_servers"]
    sys.stdout.write(format_status(info, vrrp, servers))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# ipvs


async def _ipvs(api: ApiClient, args: argparse.Namespace) -> int:
    params: dict[str, str] = {}
    if args.save:
        params["view"] = "save"
    elif args.connection:
        params["view"] = "connections"
        if args.persistent_conn:
            params["persistent_conn"] = "1"
    elif args.timeout:
        params["view"] = "timeout"
    else:
        params["view"] = "list"
        for flag, word in ((args.stats, "stats"), (args.rate, "rate"),
                           (args.thresholds, "thresholds"),
                           (args.persistent_conn, "persistent-conn")):
            if flag:
                params["format"] = word
        service = args.tcp_service or args.udp_service or args.fwmark_service
        if service is not None:
            proto = IpProto.UDP if args.udp_service else IpProto.TCP
            if args.fwmark_service:
                service = f"fwm:{service}"
            params["service"] = format_vs(parse_vs(service, default_protocol=proto))
    if args.exact:
        params["exact"] = "1"
    if args.nosort:
        params["nosort"] = "1"
    sys.stdout.write(await api.get_text("/api/v1/ipvs/text", params=params))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# drain / enable / disable / weight


def _progress_text(update: dict[str, Any]) -> str:
    conns = update.get("connections")
    counts = "reading connections" if conns is None else (
        f"active {conns['active']} inactive {conns['inactive']} "
        f"persistent {conns['persistent']}"
    )
    left = update.get("deadline_in")
    deadline = "" if left is None else f", {left:.0f}s left"
    elapsed = f"{update['elapsed']:.0f}s{deadline}"
    return f"draining {update['rs']} in {update['vs']}: {counts} ({elapsed})"


def _finished_text(update: dict[str, Any]) -> str:
    what = {"drained": "drained", "timed_out": "drain timed out",
            "cancelled": "drain cancelled"}[update["outcome"]]
    conns = update.get("connections")
    left = "" if conns is None or update["outcome"] == "drained" else (
        f" with active {conns['active']} inactive {conns['inactive']} "
        f"persistent {conns['persistent']} left"
    )
    end = "removed from IPVS" if update["removed"] else "left quiesced (weight 0)"
    return f"{what}: {update['rs']} in {update['vs']} after {update['elapsed']:.1f}s{left}; {end}"


def _outcome_code(update: dict[str, Any]) -> int:
    return EXIT_OK if update["outcome"] == "drained" else EXIT_FAILED


class _ProgressLine:
    """One rewritten line on a terminal; one line per change otherwise (logs, pipes)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._width = 0

    def show(self, text: str) -> None:
        if self._tty:
            pad = max(0, self._width - len(text))
            self._stream.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def done(self) -> None:
        if self._tty and self._width:
            self._stream.write("\n")
            self._stream.flush()


async def _drain(api: ApiClient, args: argparse.Namespace) -> int:
    vs, rs = _keys(args)
    body: dict[str, Any] = {"wait": args.wait, "expire_templates": args.expire_templates,
                            "remove": not args.keep}
    if args.timeout is not None:
        body["timeout"] = args.timeout
    path = real_server_path(vs, rs) + "/drain"
    if not args.wait:
        update = await api.send("POST", path, body)
        if update["event"] == "finished":
            print(_finished_text(update))
            return _outcome_code(update)
        print(_progress_text(update))
        return EXIT_OK
    line = _ProgressLine(sys.stderr)
    try:
        async for update in api.stream(path, body):
            if update["event"] == "finished":
                line.done()
                print(_finished_text(update))
                return _outcome_code(update)
            line.show(_progress_text(update))
    finally:
        line.done()
    print(f"hactl drain: the daemon closed the progress stream before {args.rs} finished "
          "draining; `hactl status` shows its state", file=sys.stderr)
    return EXIT_FAILED


def _rs_line(doc: dict[str, Any]) -> str:
    if doc.get("orphaned"):
        return f"{doc['id']}: override cleared (the server is not in the running configuration)"
    override = doc["override"]
    state = "enabled (health decides)" if override is None else override["kind"]
    if override is not None and override.get("weight") is not None:
        state += f" {override['weight']}"
    where = f"weight {doc['effective_weight']}" if doc["in_ipvs"] else "not in IPVS"
    return f"{doc['id']}: {state}; health {doc['health']}, {where}"


async def _enable(api: ApiClient, args: argparse.Namespace) -> int:
    vs, rs = _keys(args)
    print(_rs_line(await api.send("POST", real_server_path(vs, rs) + "/enable")))
    return EXIT_OK


async def _disable(api: ApiClient, args: argparse.Namespace) -> int:
    vs, rs = _keys(args)
    print(_rs_line(await api.send("POST", real_server_path(vs, rs) + "/disable",
                                  {"reason": args.reason})))
    return EXIT_OK


async def _weight(api: ApiClient, args: argparse.Namespace) -> int:
    vs, rs = _keys(args)
    doc = await api.send("PUT", real_server_path(vs, rs) + "/weight", {"weight": args.weight})
    print(_rs_line(doc))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# reload


def format_plan(doc: dict[str, Any]) -> str:
    """A reload result as text: the plan, or the diagnostics of a rejected configuration."""
    if not doc["ok"]:
        lines = ["configuration rejected; the running state is unchanged:"]
        lines.extend(doc["diagnostics"])
        return "\n".join(lines) + "\n"
    changes = doc["changes"]
    head = "plan (dry run, nothing applied):" if doc["dry_run"] else "applied:"
    if not changes:
        return f"{head} no changes\n"
    lines = [head]
    for change in changes:
        sign = {"add": "+", "remove": "-", "change": "~"}.get(change["action"], "?")
        detail = f"  ({change['detail']})" if change["detail"] else ""
        lines.append(f"  {sign} {change['subject']}{detail}")
    lines.extend(f"  note: {d}" for d in doc["diagnostics"])
    return "\n".join(lines) + "\n"


async def _reload(api: ApiClient, args: argparse.Namespace) -> int:
    status, doc = await api.send_status(
        "POST", "/api/v1/reload", {"dry_run": args.dry_run}, accept=(422,)
    )
    sys.stdout.write(format_plan(doc))
    return EXIT_OK if status == 200 and doc["ok"] else EXIT_FAILED


# ---------------------------------------------------------------------------------------------
# Registration


def _handler(body: Handler) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        return _run(args, body)

    return handler


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register status, ipvs, drain, enable, disable, weight and reload (each sets
    `handler`, hactl's dispatch convention)."""
    codes = ("Exit status: 0 ok, 1 operation failed or timed out, 2 bad input, 3 cannot reach "
             "the daemon, 4 unknown server, 5 authentication failed.")

    status = subparsers.add_parser(
        "status", help="show VRRP instances, virtual and real servers of the running daemon",
        description="Show the running director at a glance. " + codes)
    _common(status)
    status.set_defaults(handler=_handler(_status))

    ipvs = subparsers.add_parser(
        "ipvs", help="print the daemon's IPVS table as ipvsadm does",
        description="Print the running daemon's IPVS table byte for byte as ipvsadm 1.31 "
        "prints it (always numeric: -n is implied). " + codes)
    _common(ipvs)
    ipvs.add_argument("-L", "-l", "--list", action="store_true", help="list (the default)")
    ipvs.add_argument("-n", "--numeric", action="store_true",
                      help="numeric output (always on; accepted for ipvsadm habits)")
    ipvs.add_argument("-c", "--connection", action="store_true", help="list connections")
    ipvs.add_argument("--timeout", action="store_true", help="tcp tcpfin udp timeouts")
    ipvs.add_argument("-S", "--save", action="store_true", help="the table as ipvsadm rules")
    group = ipvs.add_mutually_exclusive_group()
    group.add_argument("--stats", action="store_true", help="counters")
    group.add_argument("--rate", action="store_true", help="rates")
    group.add_argument("--thresholds", action="store_true", help="upper/lower thresholds")
    group.add_argument("--persistent-conn", action="store_true",
                       help="persistent connection counts (with -c: pe data)")
    ipvs.add_argument("--exact", action="store_true", help="exact numbers in --stats/--rate")
    ipvs.add_argument("--nosort", action="store_true", help="backend order, unsorted")
    one = ipvs.add_mutually_exclusive_group()
    one.add_argument("-t", "--tcp-service", metavar="VIP:PORT", help="only this TCP service")
    one.add_argument("-u", "--udp-service", metavar="VIP:PORT", help="only this UDP service")
    one.add_argument("-f", "--fwmark-service", metavar="MARK", help="only this fwmark service")
    ipvs.set_defaults(handler=_handler(_ipvs))

    drain = subparsers.add_parser(
        "drain", help="drain a real server: weight 0, wait for its connections, remove it",
        description="Quiesce the real server (weight 0: no new connections), optionally expire "
        "its persistence templates, and, with --wait, show its connections falling until it "
        "holds none or the timeout passes; then remove it from IPVS (--keep: leave it "
        "quiesced). Draining a draining server reports its progress. The drain survives "
        "reloads, restarts and failover; `hactl enable` undoes it. Exit status: 0 drained "
        "(or started, without --wait), 1 timed out or cancelled, 2 bad input, 3 cannot reach "
        "the daemon, 4 unknown server, 5 authentication failed.")
    _common(drain)
    _server_args(drain)
    drain.add_argument("--wait", action="store_true", help="wait and show progress")
    drain.add_argument("--timeout", type=float, metavar="S", default=None,
                       help="give up waiting after S seconds (default: no deadline)")
    drain.add_argument("--expire-templates", action="store_true",
                       help="expire persistence templates so persistent clients move too")
    drain.add_argument("--keep", action="store_true",
                       help="leave the server quiesced (weight 0) instead of removing it")
    drain.set_defaults(handler=_handler(_drain))

    for name, help_text, body in (
        ("enable", "clear the operator override: health checks decide again", _enable),
        ("disable", "remove a real server from IPVS until enabled (checks keep running)",
         _disable),
    ):
        sub = subparsers.add_parser(name, help=help_text, description=help_text + ". " + codes)
        _common(sub)
        _server_args(sub)
        if name == "disable":
            sub.add_argument("--reason", default="", help="free text shown in status")
        sub.set_defaults(handler=_handler(body))

    weight = subparsers.add_parser(
        "weight", help="override a real server's weight (while it is healthy)",
        description="Set the real server's weight, overriding the configured one, while health "
        "checks report it up; `hactl enable` returns to the configured weight. " + codes)
    _common(weight)
    _server_args(weight)
    weight.add_argument("weight", type=int, metavar="N", help="0-65535")
    weight.set_defaults(handler=_handler(_weight))

    reload = subparsers.add_parser(
        "reload", help="re-read the configuration and apply the difference",
        description="Re-read the configuration; an invalid one is rejected with its "
        "diagnostics and nothing changes. --dry-run prints the plan without applying it. "
        "Exit status: 0 applied (or planned), 1 rejected, 3 cannot reach the daemon, "
        "5 authentication failed.")
    _common(reload)
    reload.add_argument("--dry-run", action="store_true", help="print the plan only")
    reload.set_defaults(handler=_handler(_reload))
