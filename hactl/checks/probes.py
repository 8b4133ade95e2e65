"""The probes: one coroutine per checker kind, each returning a `ProbeResult` value.

`run_probe(spec, addr, port, ...)` is the single entry point. It bounds the probe by its
deadline (`asyncio.timeout_at`; a probe that overruns is cancelled, its sockets closed and
its script's process group killed), measures the elapsed time, and turns every expected
failure (OSError including ICMP errors and TLS errors, timeouts, malformed answers, scripts
that cannot start) into `ProbeResult(ok=False, detail=...)`. It never raises for a failed
probe; `CancelledError` and bugs propagate.

All network probes open their own non-blocking socket so that keepalived's connection
options apply: `bindto`/`bind_port` (bind), `bind_if` (SO_BINDTODEVICE), `fwmark` (SO_MARK).
HTTP/SSL, SMTP, DNS and ICMP are spoken by hand (codecs in `wire.py`): one short exchange
per probe needs no client library. At scale, `CheckRunner` runs TCP_CHECK and plain HTTP_GET
on `fastpath` instead (callbacks, no task per probe), which reuses this module's request
writer, response parser, verdict and failure texts so that both paths report alike.

This module holds I/O but no decisions: what a result means for the server (retries, rise,
weights) is the tracker's business.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import os
import random
import re
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable

from hactl import __version__
from hactl.checks.events import ProbeResult
from hactl.checks.model import (
    CheckKind,
    CheckSpec,
    ConnectOptions,
    DnsCheck,
    FileCheck,
    HttpGetCheck,
    MiscCheck,
    SmtpCheck,
    SslGetCheck,
    TlsOptions,
    UdpCheck,
    UrlSpec,
)
from hactl.checks.scripts import ScriptError, ScriptExecutor
from hactl.checks.wire import (
    IncompleteResponse,
    WireError,
    check_dns_response,
    encode_dns_query,
    encode_echo_request,
    match_reply,
    parse_echo_reply,
    parse_http_status_body,
)
from hactl.ipvs.model import IPAddress

__all__ = ["ProbeFailure", "ProbeResult", "run_probe", "tls_context"]

_SO_MARK = getattr(socket, "SO_MARK", 36)
_RECV = 65536


class ProbeFailure(Exception):
    """Raised inside a probe to end it with a failed result carrying `args[0]`."""


_Probe = Callable[["_Ctx"], Awaitable[ProbeResult | None]]


class _Ctx:
    """What one probe needs: its spec, resolved target and the shared script executor."""

    __slots__ = ("addr", "loop", "port", "rs_addr", "rs_port", "scripts", "spec")

    def __init__(self, spec: CheckSpec, rs_addr: IPAddress, rs_port: int,
                 scripts: ScriptExecutor | None) -> None:
        self.spec = spec
        opts = spec.connect
        self.rs_addr = rs_addr
        self.rs_port = rs_port
        self.addr: IPAddress = opts.connect_ip if opts.connect_ip is not None else rs_addr
        self.port: int = opts.connect_port if opts.connect_port is not None else rs_port
        self.scripts = scripts
        self.loop = asyncio.get_running_loop()

    @property
    def family(self) -> int:
        return socket.AF_INET6 if self.addr.version == 6 else socket.AF_INET

    @property
    def sockaddr(self) -> tuple[str, int]:
        return (str(self.addr), self.port)

    def socket(self, kind: int, proto: int = 0) -> socket.socket:
        return open_socket(self.family, kind, proto, self.spec.connect)


async def run_probe(
    spec: CheckSpec,
    addr: IPAddress,
    port: int,
    *,
    scripts: ScriptExecutor | None = None,
    deadline: float | None = None,
) -> ProbeResult:
    """Probe real server `addr`:`port` as `spec` says.

    Args:
        deadline: loop time at which the probe is cancelled and counted failed
            (default: now + spec.timeout).
        scripts: the executor for MISC_CHECK (required for that kind).

    Returns:
        The result; `elapsed` is the probe's duration in seconds.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    if deadline is None:
        deadline = started + spec.timeout
    probe = _PROBES.get(spec.kind)
    if probe is None:
        return ProbeResult(False, f"{spec.kind} is not implemented", 0.0)
    ctx = _Ctx(spec, addr, port, scripts)
    try:
        async with asyncio.timeout_at(deadline):
            result = await probe(ctx)
    except TimeoutError:
        return ProbeResult(False, f"timeout after {deadline - started:.3g}s",
                           loop.time() - started)
    except ProbeFailure as exc:
        return ProbeResult(False, str(exc.args[0]), loop.time() - started)
    except (OSError, WireError, ScriptError, UnicodeError) as exc:
        return ProbeResult(False, _describe(exc), loop.time() - started)
    elapsed = loop.time() - started
    if result is None:
        return ProbeResult(True, "ok", elapsed)
    return ProbeResult(result.ok, result.detail, elapsed, result.value)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # asyncio wraps it as "Connect call failed (...)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def open_socket(family: int, kind: int, proto: int, opts: ConnectOptions) -> socket.socket:
    """A non-blocking socket with keepalived's connection options applied."""
    sock = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, proto)
    try:
        if opts.fwmark:
            sock.setsockopt(socket.SOL_SOCKET, _SO_MARK, opts.fwmark)
        if opts.bind_if:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                            opts.bind_if.encode() + b"\0")
        if opts.bindto is not None or opts.bind_port:
            if opts.bind_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            host = str(opts.bindto) if opts.bindto is not None else (
                "::" if family == socket.AF_INET6 else "0.0.0.0"
            )
            sock.bind((host, opts.bind_port or 0))
    except BaseException:
        sock.close()
        raise
    return sock


# -- TCP_CHECK ------------------------------------------------------------------------------


_LINGER_ABORT = struct.pack("ii", 1, 0)


def _abort(sock: socket.socket) -> None:
    """Close a TCP probe socket with a reset instead of a FIN.

    A director checking thousands of servers a second would otherwise keep every probe's
    port in TIME_WAIT on its side (60 s), and the kernel's ephemeral port search slows down
    under that pile. HAProxy closes its health-check connections the same way; keepalived
    closes gracefully.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
    sock.close()


async def _tcp(ctx: _Ctx) -> None:
    sock = ctx.socket(socket.SOCK_STREAM)
    try:
        await ctx.loop.sock_connect(sock, ctx.sockaddr)
    finally:
        _abort(sock)


# -- HTTP_GET / SSL_GET -------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def tls_context(opts: TlsOptions) -> ssl.SSLContext:
    """The client context for `opts`; keepalived verifies nothing unless told (hactl `verify`)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if opts.verify:
        ctx.check_hostname = opts.verify_hostname is not None
        ctx.verify_mode = ssl.CERT_REQUIRED
        if opts.ca_file:
            ctx.load_verify_locations(cafile=opts.ca_file)
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if opts.cert_file:
        ctx.load_cert_chain(opts.cert_file, opts.key_file, password=opts.password)
    return ctx


@functools.lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[bytes]:
    return re.compile(pattern.encode())


def _host_header(addr: IPAddress, port: int, spec: HttpGetCheck, url: UrlSpec) -> str:
    vhost = url.virtualhost or spec.virtualhost
    if vhost:
        return vhost
    host = f"[{addr}]" if addr.version == 6 else str(addr)
    default = 443 if isinstance(spec, SslGetCheck) else 80
    return host if port == default else f"{host}:{port}"


def _request(addr: IPAddress, port: int, spec: HttpGetCheck, url: UrlSpec) -> bytes:
    """The request bytes for `url` on the connect address (shared with `fastpath`)."""
    version = "1.1" if spec.http_protocol == "1.1" else "1.0"
    lines = [
        f"{spec.method} {url.path} HTTP/{version}",
        f"Host: {_host_header(addr, port, spec, url)}",
        f"User-Agent: hactl/{__version__}",
    ]
    # man 5 keepalived.conf, http_protocol: 1.0C adds "Connection: close", which 1.1 has
    # by default.
    if spec.http_protocol != "1.0":
        lines.append("Connection: close")
    if spec.basic_auth is not None:
        token = base64.b64encode(f"{spec.basic_auth[0]}:{spec.basic_auth[1]}".encode()).decode()
        lines.append(f"Authorization: Basic {token}")
    lines.extend(f"{name}: {value}" for name, value in spec.headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _judge(url: UrlSpec, status: int, body: bytes) -> str | None:
    """Why the response fails `url`, or None when it passes."""
    if not url.status_ok(status):
        return f"HTTP status {status}"
    if url.digest is not None:
        digest = hashlib.md5(body, usedforsecurity=False).hexdigest()
        if digest != url.digest:
            return f"digest mismatch ({digest})"
    if url.regex is not None:
        found = _regex(url.regex).search(body) is not None
        if found == url.regex_no_match:
            return "regex matched" if found else "regex did not match"
    return None


async def _http_fetch_plain(ctx: _Ctx, request: bytes, head: bool, limit: int) -> tuple[int, bytes]:
    sock = ctx.socket(socket.SOCK_STREAM)
    try:
        loop = ctx.loop
        await loop.sock_connect(sock, ctx.sockaddr)
        await loop.sock_sendall(sock, request)
        buf = b""
        while True:
            chunk = await loop.sock_recv(sock, _RECV)
            buf += chunk
            if len(buf) > limit:
                raise ProbeFailure("HTTP response too large")
            try:
                return parse_http_status_body(buf, eof=not chunk, head=head)
            except IncompleteResponse:
                continue
    finally:
        _abort(sock)


async def _http_fetch_tls(
    ctx: _Ctx, spec: SslGetCheck, url: UrlSpec, request: bytes, head: bool, limit: int
) -> tuple[int, bytes]:
    sock = ctx.socket(socket.SOCK_STREAM)
    writer: asyncio.StreamWriter | None = None
    try:
        await ctx.loop.sock_connect(sock, ctx.sockaddr)
        vhost = url.virtualhost or spec.virtualhost
        if spec.tls.verify and spec.tls.verify_hostname is not None:
            server_hostname = spec.tls.verify_hostname
        elif spec.enable_sni and vhost:
            server_hostname = vhost
        else:
            server_hostname = ""  # no SNI (keepalived sends it only with enable_sni)
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=tls_context(spec.tls), server_hostname=server_hostname
        )
        writer.write(request)
        buf = b""
        while True:
            try:
                chunk = await reader.read(_RECV)
            except ssl.SSLError as exc:
                # A server that closes without close_notify: tolerated unless tls_compliant.
                truncated = isinstance(exc, ssl.SSLEOFError) or (
                    exc.reason == "UNEXPECTED_EOF_WHILE_READING"
                )
                if spec.tls_compliant or not truncated:
                    raise
                chunk = b""
            buf += chunk
            if len(buf) > limit:
                raise ProbeFailure("HTTP response too large")
            try:
                return parse_http_status_body(buf, eof=not chunk, head=head)
            except IncompleteResponse:
                continue
    finally:
        if writer is not None:
            if spec.tls_compliant:
                # an orderly TLS shutdown (close_notify), bounded by the probe's deadline
                writer.close()
                with contextlib.suppress(OSError):  # ssl.SSLError is an OSError
                    await writer.wait_closed()
            else:
                writer.transport.abort()
        else:
            sock.close()


async def _http(ctx: _Ctx) -> ProbeResult | None:
    spec = ctx.spec
    assert isinstance(spec, HttpGetCheck)
    head = spec.method == "HEAD"
    # hactl checks every url in each probe (keepalived spreads them over delay loops
    # unless fast_recovery is set): one probe, one verdict on the whole list.
    for url in spec.urls:
        request = _request(ctx.addr, ctx.port, spec, url)
        limit = spec.max_body + 65536
        if isinstance(spec, SslGetCheck):
            status, body = await _http_fetch_tls(ctx, spec, url, request, head, limit)
        else:
            status, body = await _http_fetch_plain(ctx, request, head, limit)
        why = _judge(url, status, body)
        if why is not None:
            return ProbeResult(False, f"{url.path}: {why}")
    return None


# -- SMTP_CHECK ---------------------------------------------------------------------------------


class _LineReader:
    def __init__(self, ctx: _Ctx, sock: socket.socket) -> None:
        self._ctx = ctx
        self._sock = sock
        self._buf = b""

    async def reply(self) -> tuple[int, str]:
        """One SMTP reply (RFC 5321 §4.2: "xyz-" continues, "xyz " ends)."""
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > 8192:
                    raise ProbeFailure("SMTP line too long")
                chunk = await self._ctx.loop.sock_recv(self._sock, 4096)
                if not chunk:
                    raise ProbeFailure("SMTP connection closed")
                self._buf += chunk
                continue
            line = self._buf[:end].rstrip(b"\r").decode("latin-1")
            self._buf = self._buf[end + 1:]
            if len(line) < 3 or not line[:3].isdigit():
                raise ProbeFailure(f"bad SMTP reply {line[:40]!r}")
            if len(line) > 3 and line[3] == "-":
                continue
            return int(line[:3]), line


async def _smtp(ctx: _Ctx) -> ProbeResult | None:
    spec = ctx.spec
    assert isinstance(spec, SmtpCheck)
    sock = ctx.socket(socket.SOCK_STREAM)
    try:
        loop = ctx.loop
        await loop.sock_connect(sock, ctx.sockaddr)
        lines = _LineReader(ctx, sock)
        code, text = await lines.reply()
        if code != 220:
            return ProbeResult(False, f"SMTP banner: {text[:80]}")
        await loop.sock_sendall(sock, f"HELO {spec.helo_name}\r\n".encode())
        code, text = await lines.reply()
        if code != 250:
            return ProbeResult(False, f"SMTP HELO: {text[:80]}")
        await loop.sock_sendall(sock, b"QUIT\r\n")
        return None
    finally:
        _abort(sock)


# -- DNS_CHECK ----------------------------------------------------------------------------------


async def _dns(ctx: _Ctx) -> ProbeResult | None:
    spec = ctx.spec
    assert isinstance(spec, DnsCheck)
    query = encode_dns_query(random.getrandbits(16), spec.name, spec.query_type)
    sock = ctx.socket(socket.SOCK_DGRAM)
    try:
        loop = ctx.loop
        sock.connect(ctx.sockaddr)  # a datagram connect() only sets the peer: never blocks
        await loop.sock_sendall(sock, query)
        while True:
            data = await loop.sock_recv(sock, _RECV)
            try:
                check_dns_response(data, query)
            except WireError as exc:
                if exc.args[0] == "DNS id mismatch":
                    continue  # a late answer to an earlier query: keep waiting
                return ProbeResult(False, str(exc))
            return None
    finally:
        sock.close()


# -- UDP_CHECK ----------------------------------------------------------------------------------


async def _udp(ctx: _Ctx) -> ProbeResult | None:
    spec = ctx.spec
    assert isinstance(spec, UdpCheck)
    payload = spec.payload if spec.payload is not None else random.randbytes(16)
    sock = ctx.socket(socket.SOCK_DGRAM)
    try:
        loop = ctx.loop
        sock.connect(ctx.sockaddr)  # a datagram connect() only sets the peer: never blocks
        await loop.sock_sendall(sock, payload)
        if not spec.require_reply:
            # man 5 keepalived.conf, UDP_CHECK: success unless an ICMP error (port, host or
            # network unreachable) comes back within connect_timeout.
            try:
                async with asyncio.timeout(spec.connect.connect_timeout):
                    await loop.sock_recv(sock, _RECV)
            except TimeoutError:
                pass
            return None
        reply = await loop.sock_recv(sock, _RECV)
        if not spec.min_reply_length <= len(reply) <= spec.max_reply_length:
            return ProbeResult(False, f"reply length {len(reply)}")
        if spec.reply_pattern is not None and not match_reply(
            reply, spec.reply_pattern, spec.reply_mask
        ):
            return ProbeResult(False, "reply does not match")
        return None
    finally:
        sock.close()


# -- PING_CHECK ---------------------------------------------------------------------------------


def _icmp_socket(ctx: _Ctx) -> tuple[socket.socket, bool]:
    """The unprivileged ICMP datagram socket, or a raw one where that is refused."""
    proto = socket.IPPROTO_ICMPV6 if ctx.addr.version == 6 else socket.IPPROTO_ICMP
    try:
        return ctx.socket(socket.SOCK_DGRAM, proto), False
    except PermissionError:
        # net.ipv4.ping_group_range excludes us: a raw socket needs root (CAP_NET_RAW).
        return ctx.socket(socket.SOCK_RAW, proto), True


async def _ping(ctx: _Ctx) -> ProbeResult | None:
    v6 = ctx.addr.version == 6
    sock, raw = _icmp_socket(ctx)
    try:
        loop = ctx.loop
        ident = random.getrandbits(16)
        seq = random.getrandbits(16)
        payload = b"hactl" + struct.pack("!d", loop.time())
        sock.connect((str(ctx.addr), 0))  # never blocks; filters replies by source
        await loop.sock_sendall(sock, encode_echo_request(ident, seq, payload, v6=v6))
        reply_type = 129 if v6 else 0
        while True:
            data = await loop.sock_recv(sock, _RECV)
            try:
                kind, rid, rseq, rpayload = parse_echo_reply(data, v6=v6, strip_ip=raw and not v6)
            except WireError:
                continue
            # datagram sockets: the kernel rewrites the id and demultiplexes replies itself
            if kind == reply_type and rseq == seq and rpayload == payload and (
                rid == ident or not raw
            ):
                return None
    finally:
        sock.close()


# -- MISC_CHECK -------------------------------------------------------------------------------


async def _misc(ctx: _Ctx) -> ProbeResult | None:
    spec = ctx.spec
    assert isinstance(spec, MiscCheck)
    if ctx.scripts is None:
        raise ScriptError("no script executor")
    # The deadline of run_probe is misc_timeout: when it strikes, the executor's
    # cancellation path kills the script's process group.
    outcome = await ctx.scripts.run(spec.script, time_limit=None)
    detail = outcome.describe()
    if outcome.status is None:
        return ProbeResult(False, detail)
    return ProbeResult(outcome.status == 0, detail, value=outcome.status)


# -- FILE_CHECK ---------------------------------------------------------------------------------


async def _file(ctx: _Ctx) -> ProbeResult | None:
    spec = ctx.spec
    assert isinstance(spec, FileCheck)
    # In a worker thread: the file may sit on a slow or hung file system.
    try:
        text = await asyncio.to_thread(_read_head, spec.path)
    except FileNotFoundError:
        # keepalived reads a missing track file as 0 (see init_file to create one)
        return ProbeResult(True, "no file: 0", value=0)
    words = text.split()
    try:
        value = int(words[0]) if words else 0
    except ValueError:
        return ProbeResult(False, f"{spec.path}: not a number")
    return ProbeResult(True, f"value {value}", value=value)


def _read_head(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(64)


_PROBES: dict[CheckKind, _Probe] = {
    CheckKind.TCP_CHECK: _tcp,
    CheckKind.HTTP_GET: _http,
    CheckKind.SSL_GET: _http,
    CheckKind.SMTP_CHECK: _smtp,
    CheckKind.DNS_CHECK: _dns,
    CheckKind.UDP_CHECK: _udp,
    CheckKind.PING_CHECK: _ping,
    CheckKind.MISC_CHECK: _misc,
    CheckKind.FILE_CHECK: _file,
}
