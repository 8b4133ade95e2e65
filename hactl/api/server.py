"""The control API: an aiohttp application over the `Director` port and `Operations`.

Owns: the routes under /api/v1 (documented in openapi.yaml beside this file), /metrics, the
status page at /, authentication, JSON errors, and the listening sockets.

Rules:
* Every error is a JSON object `{"error": {"status": N, "code": "...", "message": "..."}}`,
  never a traceback: the error middleware maps HTTP errors, bad input and UnknownServer,
  and logs anything else as `api.internal_error` before answering 500. A 400 also says
  where the bad input is (`"where"`): `body:LINE:COL` (not JSON), `body` (the whole body),
  `body.FIELD` / `body.entries[I]` (one value), `path.vs` / `path.rs`, `query.NAME`.
* Unix socket (the default): no token; the socket's mode (0600, owner = the daemon's user)
  is the access control, as for the Docker and containerd sockets.
* TCP: a bearer token is required for every mutating call (POST/PUT/DELETE), compared in
  constant time; reads (GET) are open unless `token_for_reads`, so Prometheus and the status
  page work without secrets. A TCP listener without a token is refused at start.
* Request bodies are limited to `MAX_BODY` bytes (413).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from hactl.api import metrics
from hactl.api.director import UnknownServer
from hactl.api.drain import DrainFinished, DrainOptions, DrainProgress
from hactl.api.model import (
    AddressError,
    Override,
    OverrideKind,
    RsKey,
    conn_json,
    format_rs,
    format_vs,
    parse_rs,
    parse_vs,
    real_server_json,
    service_json,
    virtual_server_json,
    vrrp_json,
)
from hactl.api.operations import Operations
from hactl.api.overrides import StateFileError, entry_json
from hactl.ipvs import ipvsadm
from hactl.ipvs.model import ServiceKey

__all__ = [
    "MAX_BODY",
    "OPENAPI_PATH",
    "STATIC_DIR",
    "ApiServer",
    "SocketInUse",
    "drain_update_json",
    "make_app",
]

log = structlog.get_logger("hactl.api")

MAX_BODY = 64 * 1024
STATIC_DIR = Path(__file__).parent / "static"
OPENAPI_PATH = Path(__file__).parent / "openapi.yaml"
_MUTATING = frozenset({"POST", "PUT", "DELETE", "PATCH"})

@dataclass(frozen=True, slots=True)
class _Auth:
    token: bytes | None
    token_for_reads: bool


_OPS_KEY = web.AppKey("operations", Operations)
_AUTH_KEY = web.AppKey("auth", _Auth)
_POLL_KEY = web.AppKey("poll_interval", float)


class _BadRequest(Exception):
    """Malformed input: becomes a 400 JSON error with this message and `where` it is."""

    def __init__(self, message: str, *, where: str) -> None:
        super().__init__(message)
        self.where = where


def _error(status: int, code: str, message: str, *, where: str | None = None) -> web.Response:
    err: dict[str, Any] = {"status": status, "code": code, "message": message}
    if where is not None:
        err["where"] = where
    return web.json_response({"error": err}, status=status)


_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
    413: "body_too_large", 415: "unsupported_media_type",
}


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except asyncio.CancelledError:
        raise
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.reason if exc.status != 413 else f"request body larger than {MAX_BODY} bytes"
        response = _error(exc.status, code, message)
        if "Allow" in exc.headers:  # 405: say which methods the path takes
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except _BadRequest as exc:
        return _error(400, "bad_request", str(exc), where=exc.where)
    except UnknownServer as exc:
        return _error(404, "not_found", str(exc.args[0]) if exc.args else "not found")
    except Exception as exc:
        log.exception("api.internal_error", path=request.path, error=repr(exc))
        return _error(500, "internal_error", "internal error; see the daemon log")


def _bearer(request: web.Request) -> bytes | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip().encode() if scheme.lower() == "bearer" and value.strip() else None


@web.middleware
async def _authenticate(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    auth: _Auth = request.app[_AUTH_KEY]
    # Unix-socket requests need no token: the socket's mode guards them. Anything that is not
    # provably a unix socket is treated as network traffic.
    sock = None if request.transport is None else request.transport.get_extra_info("socket")
    is_unix = sock is not None and sock.family == socket.AF_UNIX
    needs = not is_unix and (request.method in _MUTATING or auth.token_for_reads)
    if needs and request.path not in ("/api/v1/health",):
        given = _bearer(request)
        # hmac.compare_digest: constant time, so the token cannot be guessed byte by byte.
        if auth.token is None or given is None or not hmac.compare_digest(given, auth.token):
            response = _error(401, "unauthorized", "a valid bearer token is required")
            response.headers["WWW-Authenticate"] = 'Bearer realm="hactl"'
            return response
    return await handler(request)


# ---------------------------------------------------------------------------------------------
# Input


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()  # raises HTTPRequestEntityTooLarge beyond client_max_size
    if not raw.strip():
        return {}
    doc = _json(raw)
    if not isinstance(doc, dict):
        raise _BadRequest(
            f"request body must be a JSON object, not {_json_type(doc)}", where="body"
        )
    return doc


def _json(raw: bytes) -> Any:
    """The parsed body. Raises _BadRequest saying where parsing stopped."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _BadRequest(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            where=f"body:{exc.lineno}:{exc.colno}",
        ) from None
    except UnicodeDecodeError as exc:
        raise _BadRequest(
            f"request body is not UTF-8 text (byte {exc.start})", where="body"
        ) from None
    except RecursionError:
        # The C scanner recurses per nesting level: a 64 KiB body of "[" overflows it.
        raise _BadRequest("request body is nested too deeply", where="body") from None
    except ValueError as exc:  # e.g. an integer beyond the str-to-int digit limit
        raise _BadRequest(f"request body is not usable JSON: {exc}", where="body") from None


_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
    (list, "an array"), (dict, "an object"),
)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    for kind, name in _JSON_TYPES:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _field(doc: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = doc.get(name, default)
    if value is default:
        return value
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        wanted = " or ".join(dict(_JSON_TYPES)[k] for k in kinds)
        raise _BadRequest(f"{name} must be {wanted}, not {_json_type(value)}",
                          where=f"body.{name}")
    return value


def _vs_key(request: web.Request) -> ServiceKey:
    try:
        return parse_vs(request.match_info["vs"])
    except AddressError as exc:
        raise _BadRequest(str(exc), where="path.vs") from None


def _keys(request: web.Request) -> tuple[ServiceKey, RsKey]:
    vs = _vs_key(request)
    try:
        return vs, parse_rs(request.match_info["rs"])
    except AddressError as exc:
        raise _BadRequest(str(exc), where="path.rs") from None


def _query_flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name)
    if value is None:
        return False
    if value.lower() in ("", "1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise _BadRequest(f"query parameter {name} must be true or false", where=f"query.{name}")


# ---------------------------------------------------------------------------------------------
# Handlers


def _ops(request: web.Request) -> Operations:
    return request.app[_OPS_KEY]


async def _health(request: web.Request) -> web.Response:
    info = _ops(request).director.info()
    return web.json_response({"status": "ok", "version": info.version})


async def _info(request: web.Request) -> web.Response:
    info = _ops(request).director.info()
    return web.json_response({
        "version": info.version, "config_path": info.config_path,
        "config_loaded_at": info.config_loaded_at, "started_at": info.started_at,
        "backend": info.backend, "router_id": info.router_id,
    })


async def _vrrp(request: web.Request) -> web.Response:
    return web.json_response(
        {"instances": [vrrp_json(i) for i in _ops(request).director.vrrp_instances()]}
    )


async def _virtual_servers(request: web.Request) -> web.Response:
    return web.json_response({
        "virtual_servers": [
            virtual_server_json(vs) for vs in _ops(request).director.virtual_servers()
        ]
    })


async def _virtual_server(request: web.Request) -> web.Response:
    vs_key = _vs_key(request)
    for vs in _ops(request).director.virtual_servers():
        if vs.key == vs_key:
            return web.json_response(virtual_server_json(vs))
    raise UnknownServer(f"no virtual server {format_vs(vs_key)}")


async def _real_server(request: web.Request) -> web.Response:
    vs, rs = _keys(request)
    ops = _ops(request)
    doc = real_server_json(ops.real_server(vs, rs))
    state = ops.drain_state(vs, rs)
    doc["drain"] = None if state is None else drain_update_json(state)
    return web.json_response(doc)


async def _ipvs_services(request: web.Request) -> web.Response:
    services = await _ops(request).director.ipvs_services()
    return web.json_response({"services": [service_json(s) for s in services]})


async def _ipvs_connections(request: web.Request) -> web.Response:
    conns = await _ops(request).director.ipvs_connections()
    return web.json_response({"connections": [conn_json(c) for c in conns]})


_FORMATS = {f.value: f for f in ipvsadm.ListFormat}


async def _ipvs_text(request: web.Request) -> web.Response:
    """ipvsadm-identical text, rendered here from the daemon's own snapshots so every client
    (the CLI, curl, scripts) gets byte-for-byte what ipvsadm would print."""
    director = _ops(request).director
    view = request.query.get("view", "list")
    exact, nosort = _query_flag(request, "exact"), _query_flag(request, "nosort")
    if view == "list":
        fmt_word = request.query.get("format", "default")
        if fmt_word not in _FORMATS:
            raise _BadRequest(f"format must be one of {', '.join(sorted(_FORMATS))}",
                              where="query.format")
        fmt = _FORMATS[fmt_word]
        services = await director.ipvs_services()
        if "service" in request.query:
            try:
                key = parse_vs(request.query["service"])
            except AddressError as exc:
                raise _BadRequest(str(exc), where="query.service") from None
            for st in services:
                if st.service.key == key:
                    text = ipvsadm.list_service(st, fmt=fmt, exact=exact, nosort=nosort)
                    break
            else:
                raise UnknownServer(f"no virtual service {format_vs(key)} in IPVS")
        else:
            text = ipvsadm.list_all(services, fmt=fmt, exact=exact, nosort=nosort)
    elif view == "save":
        text = ipvsadm.save(await director.ipvs_services(), nosort=nosort)
    elif view == "connections":
        text = ipvsadm.list_conn(
            await director.ipvs_connections(),
            persistent_conn=_query_flag(request, "persistent_conn"),
        )
    elif view == "timeout":
        text = ipvsadm.list_timeout(director.ipvs_timeouts())
    else:
        raise _BadRequest("view must be list, save, connections or timeout", where="query.view")
    return web.Response(text=text, content_type="text/plain")


async def _sync(request: web.Request) -> web.Response:
    stats = _ops(request).director.sync_stats()
    if stats is None:
        return web.json_response({"configured": False})
    s = stats.sender
    return web.json_response({
        "configured": True,
        "role": stats.role.value,
        "send_errors": stats.send_errors,
        "receive_errors": stats.receive_errors,
        "sender": {
            "entries_added": s.entries_added, "entries_sent": s.entries_sent,
            "datagrams_sent": s.datagrams_sent, "bytes_sent": s.bytes_sent,
            "entries_pending": s.entries_pending, "queue_depth": s.queue_depth,
            "datagrams_dropped": s.datagrams_dropped, "entries_dropped": dict(s.entries_dropped),
        },
        "peers": [
            {
                "peer": p.peer, "syncid": p.syncid, "version": p.version, "lag": p.lag,
                "first_message_at": p.first_message_at, "last_message_at": p.last_message_at,
                "datagrams": p.datagrams, "datagrams_dropped": dict(p.datagrams_dropped),
                "entries_received": p.entries_received, "entries_applied": p.entries_applied,
                "entries_failed": p.entries_failed, "entries_dropped": dict(p.entries_dropped),
            }
            for p in stats.peers
        ],
    })


async def _overrides(request: web.Request) -> web.Response:
    ops = _ops(request)
    known = {
        (vs.key, rs.key) for vs in ops.director.virtual_servers() for rs in vs.real_servers
    }
    out = []
    for entry in ops.store.entries():
        if entry.override is None:
            continue
        doc = entry_json(entry)
        doc["orphaned"] = entry.key not in known
        out.append(doc)
    return web.json_response({"overrides": out})


def drain_update_json(update: DrainProgress | DrainFinished) -> dict[str, Any]:
    counts = update.counts
    doc: dict[str, Any] = {
        "vs": format_vs(update.vs),
        "rs": format_rs(update.rs),
        "elapsed": round(update.elapsed, 3),
        "connections": None if counts is None else {
            "active": counts.active, "inactive": counts.inactive,
            "persistent": counts.persistent,
        },
    }
    if isinstance(update, DrainFinished):
        doc.update(event="finished", outcome=update.outcome.value, removed=update.removed)
    else:
        doc.update(event="progress", deadline_in=update.deadline_in)
    return doc


async def _drain(request: web.Request) -> web.StreamResponse:
    vs, rs = _keys(request)
    body = await _body(request)
    wait = _field(body, "wait", bool, False)
    timeout = _field(body, "timeout", (int, float), None)
    try:
        timeout = None if timeout is None else float(timeout)
    except OverflowError:  # an integer beyond the float range
        timeout = math.inf
    if timeout is not None and not (math.isfinite(timeout) and timeout >= 0):
        raise _BadRequest("timeout must be a finite number >= 0", where="body.timeout")
    options = DrainOptions(
        timeout=timeout,
        expire_templates=_field(body, "expire_templates", bool, False),
        remove=_field(body, "remove", bool, True),
        poll_interval=request.app[_POLL_KEY],
    )
    ops = _ops(request)
    state = await ops.drain(vs, rs, options)
    if not wait:
        status = 200 if isinstance(state, DrainFinished) else 202
        return web.json_response(drain_update_json(state), status=status)
    # wait: newline-delimited JSON, one object per change, the last one "finished".
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    if isinstance(state, DrainFinished):  # nothing to wait for (already drained or disabled)
        await response.write(json.dumps(drain_update_json(state)).encode() + b"\n")
    else:
        try:
            async for update in ops.watch(vs, rs):
                await response.write(json.dumps(drain_update_json(update)).encode() + b"\n")
        except ConnectionResetError:
            # The client went away (Ctrl-C on `hactl drain --wait`); the drain goes on.
            return response
    await response.write_eof()
    return response


async def _drain_get(request: web.Request) -> web.Response:
    vs, rs = _keys(request)
    ops = _ops(request)
    ops.real_server(vs, rs)
    state = ops.drain_state(vs, rs)
    if state is None:
        raise UnknownServer(f"no drain of {format_rs(rs)} in {format_vs(vs)}")
    return web.json_response(drain_update_json(state))


async def _drain_cancel(request: web.Request) -> web.Response:
    vs, rs = _keys(request)
    ops = _ops(request)
    ops.real_server(vs, rs)
    return web.json_response(drain_update_json(await ops.cancel_drain(vs, rs)))


async def _set(request: web.Request, override: Override | None) -> web.Response:
    vs, rs = _keys(request)
    ops = _ops(request)
    await ops.set_override(vs, rs, override)
    return web.json_response(real_server_json(ops.real_server(vs, rs)))


async def _enable(request: web.Request) -> web.Response:
    await _body(request)
    vs, rs = _keys(request)
    ops = _ops(request)
    await ops.set_override(vs, rs, None)
    try:
        return web.json_response(real_server_json(ops.real_server(vs, rs)))
    except UnknownServer:
        # An orphaned override was cleared: there is no server to describe.
        return web.json_response({"id": format_rs(rs), "override": None, "orphaned": True})


async def _disable(request: web.Request) -> web.Response:
    body = await _body(request)
    reason = _field(body, "reason", str, "")
    return await _set(request, Override(kind=OverrideKind.DISABLE, reason=reason))


async def _weight(request: web.Request) -> web.Response:
    body = await _body(request)
    weight = _field(body, "weight", int, None)
    if weight is None:
        raise _BadRequest("weight is required", where="body.weight")
    if not 0 <= weight <= 65535:
        raise _BadRequest("weight must be 0-65535", where="body.weight")
    reason = _field(body, "reason", str, "")
    return await _set(request, Override(kind=OverrideKind.WEIGHT, weight=weight, reason=reason))


async def _reload(request: web.Request) -> web.Response:
    body = await _body(request)
    dry_run = _field(body, "dry_run", bool, False)
    result = await _ops(request).director.reload(dry_run=dry_run)
    return web.json_response(result.to_json(), status=200 if result.ok else 422)


async def _peer_overrides(request: web.Request) -> web.Response:
    data = await request.read()
    _json(data)  # a syntax error is reported with its position; the message is parsed below
    try:
        changed = await _ops(request).receive_peer_message(data)
    except StateFileError as exc:
        raise _BadRequest(str(exc), where=exc.where or "body") from None
    return web.json_response({"changed": len(changed)})


async def _metrics(request: web.Request) -> web.Response:
    director = _ops(request).director
    body = metrics.render(
        info=director.info(),
        vrrp=director.vrrp_instances(),
        virtual_servers=director.virtual_servers(),
        services=await director.ipvs_services(),
        sync=director.sync_stats(),
    )
    return web.Response(body=body.encode(), headers={"Content-Type": metrics.CONTENT_TYPE})


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def _openapi(request: web.Request) -> web.FileResponse:
    return web.FileResponse(OPENAPI_PATH, headers={"Content-Type": "application/yaml"})


def make_app(
    operations: Operations,
    *,
    token: str | None = None,
    token_for_reads: bool = False,
    poll_interval: float = 1.0,
) -> web.Application:
    """The aiohttp application (no sockets: `ApiServer` or a test client serves it)."""
    app = web.Application(middlewares=[_errors, _authenticate], client_max_size=MAX_BODY)
    app[_OPS_KEY] = operations
    app[_AUTH_KEY] = _Auth(None if token is None else token.encode(), token_for_reads)
    app[_POLL_KEY] = poll_interval
    rs_path = "/api/v1/virtual-servers/{vs}/real-servers/{rs}"
    app.router.add_get("/api/v1/health", _health)
    app.router.add_get("/api/v1/info", _info)
    app.router.add_get("/api/v1/vrrp/instances", _vrrp)
    app.router.add_get("/api/v1/virtual-servers", _virtual_servers)
    app.router.add_get("/api/v1/virtual-servers/{vs}", _virtual_server)
    app.router.add_get(rs_path, _real_server)
    app.router.add_post(rs_path + "/drain", _drain)
    app.router.add_get(rs_path + "/drain", _drain_get)
    app.router.add_delete(rs_path + "/drain", _drain_cancel)
    app.router.add_post(rs_path + "/enable", _enable)
    app.router.add_post(rs_path + "/disable", _disable)
    app.router.add_put(rs_path + "/weight", _weight)
    app.router.add_get("/api/v1/ipvs/services", _ipvs_services)
    app.router.add_get("/api/v1/ipvs/connections", _ipvs_connections)
    app.router.add_get("/api/v1/ipvs/text", _ipvs_text)
    app.router.add_get("/api/v1/sync", _sync)
    app.router.add_get("/api/v1/overrides", _overrides)
    app.router.add_post("/api/v1/peer/overrides", _peer_overrides)
    app.router.add_post("/api/v1/reload", _reload)
    app.router.add_get("/api/v1/openapi.yaml", _openapi)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/", _index)
    app.router.add_static("/static/", STATIC_DIR)
    return app


# ---------------------------------------------------------------------------------------------
# Listening


class SocketInUse(OSError):
    """The unix socket path exists and a server answers on it (another daemon runs)."""


def _prepare_unix_socket(path: Path) -> socket.socket:
    """A listening unix socket at `path`, mode 0600 from its creation.

    An existing path: a live socket (something accepts) is SocketInUse; a stale socket is
    removed; anything else is refused. The socket is bound under a temporary name with umask
    0o177 (so no moment exists where it is group- or world-accessible) and renamed into place,
    so clients never see a half-made socket.
    """
    if path.exists() or path.is_symlink():
        mode = path.lstat().st_mode
        if not stat.S_ISSOCK(mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)  # stale: left by a daemon that died
        else:
            raise SocketInUse(f"{path}: another hactl answers on this socket")
        finally:
            probe.close()
    # /run/hactl normally comes from systemd (RuntimeDirectory=); make it for manual runs.
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(tmp))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    try:
        os.chmod(tmp, 0o600)  # explicit, whatever umask semantics the filesystem has
        sock.listen(128)
        os.rename(tmp, path)
    except BaseException:
        sock.close()
        tmp.unlink(missing_ok=True)
        raise
    sock.setblocking(False)
    return sock


class ApiServer:
    """Serves the app on a unix socket and/or a TCP address; `start()` then `stop()`."""

    def __init__(
        self,
        operations: Operations,
        *,
        unix_path: Path | None,
        tcp: tuple[str, int] | None = None,
        token: str | None = None,
        token_for_reads: bool = False,
        poll_interval: float = 1.0,
    ) -> None:
        if tcp is not None and not token:
            raise ValueError("a TCP listener needs a bearer token (mutating calls require it)")
        if unix_path is None and tcp is None:
            raise ValueError("nothing to listen on")
        self._app = make_app(
            operations, token=token, token_for_reads=token_for_reads, poll_interval=poll_interval
        )
        self._unix_path = unix_path
        self._tcp = tcp
        self._runner: web.AppRunner | None = None
        self._unix_sock: socket.socket | None = None
        self._unix_ino: int | None = None
        self._tcp_sock: socket.socket | None = None
        self.tcp_port: int | None = None

    async def start(self) -> None:
        """Raises SocketInUse, OSError (bind), ValueError; nothing is left listening then."""
        # A short shutdown grace: the daemon must stop within seconds (drain streams are ended
        # by Operations.aclose() before this runs).
        runner = web.AppRunner(self._app, access_log=None, handle_signals=False,
                               shutdown_timeout=2.0)
        await runner.setup()
        try:
            if self._unix_path is not None:
                self._unix_sock = _prepare_unix_socket(self._unix_path)
                self._unix_ino = os.stat(self._unix_path).st_ino
                await web.SockSite(runner, self._unix_sock).start()
            if self._tcp is not None:
                # Our own socket, so that port 0 (tests) reports the port actually bound.
                self._tcp_sock = socket.create_server(self._tcp, reuse_port=False)
                self._tcp_sock.setblocking(False)
                self.tcp_port = self._tcp_sock.getsockname()[1]
                await web.SockSite(runner, self._tcp_sock).start()
        except BaseException:
            await runner.cleanup()
            self._remove_socket()
            raise
        self._runner = runner
        log.info("api.listening", unix=str(self._unix_path) if self._unix_path else None,
                 tcp=None if self._tcp is None else f"{self._tcp[0]}:{self.tcp_port}")

    async def stop(self) -> None:
        try:
            if self._runner is not None:
                await self._runner.cleanup()
        finally:
            self._runner = None
            self._remove_socket()

    def _remove_socket(self) -> None:
        if self._tcp_sock is not None:
            self._tcp_sock.close()
            self._tcp_sock = None
        if self._unix_path is not None and self._unix_sock is not None:
            # Only our own socket: a successor may already have replaced the path.
            with contextlib.suppress(OSError):
                if os.stat(self._unix_path).st_ino == self._unix_ino:
                    os.unlink(self._unix_path)
            self._unix_sock.close()
            self._unix_sock = None
