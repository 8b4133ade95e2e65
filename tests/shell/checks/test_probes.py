"""Each probe against a real peer on loopback: success, the failures it must see, and
clean cancellation at its deadline."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import pwd
import socket
import ssl
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hactl.checks.model import (
    ConnectOptions,
    DnsCheck,
    FileCheck,
    HttpGetCheck,
    MiscCheck,
    PingCheck,
    ScriptSpec,
    SmtpCheck,
    SslGetCheck,
    TcpCheck,
    TlsOptions,
    UdpCheck,
    UrlSpec,
)
from hactl.checks.probes import run_probe
from hactl.checks.scripts import ScriptExecutor
from hactl.checks.wire import parse_hex_pattern

from .conftest import DatagramPeer, HttpBehaviour, HttpPeer, SmtpPeer, start_http

LO = ipaddress.IPv4Address("127.0.0.1")
FAST = ConnectOptions(connect_timeout=1.0)
pytestmark = pytest.mark.timeout(30)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- TCP ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_tcp_connects_and_refused_fails(http_peer: HttpPeer) -> None:
    ok = await run_probe(TcpCheck(connect=FAST), LO, http_peer.port)
    assert ok.ok and ok.elapsed < 1.0
    bad = await run_probe(TcpCheck(connect=FAST), LO, free_port())
    assert not bad.ok and "refused" in bad.detail.lower()


@pytest.mark.asyncio
async def test_tcp_connect_overrides_and_bindto(http_peer: HttpPeer) -> None:
    opts = ConnectOptions(connect_ip=LO, connect_port=http_peer.port,
                          bindto=ipaddress.IPv4Address("127.0.0.9"), fwmark=7,
                          connect_timeout=1.0)
    # the real server address is a decoy: connect_ip/connect_port win
    result = await run_probe(TcpCheck(connect=opts), ipaddress.IPv4Address("127.0.0.200"), 1)
    assert result.ok
    http = HttpGetCheck(connect=opts)
    assert (await run_probe(http, LO, 1)).ok
    assert http_peer.behaviour.requests[-1].remote == "127.0.0.9"


@pytest.mark.asyncio
async def test_bind_port_sets_the_source_port(http_peer: HttpPeer) -> None:
    port = free_port()
    opts = ConnectOptions(bindto=ipaddress.IPv4Address("127.0.0.7"), bind_port=port,
                          connect_timeout=1.0)
    for _ in range(2):  # the abortive close leaves no TIME_WAIT: the port is free again
        assert (await run_probe(HttpGetCheck(connect=opts), LO, http_peer.port)).ok
        assert http_peer.behaviour.peers[-1] == ("127.0.0.7", port)


@pytest.mark.asyncio
async def test_bind_if_loopback(http_peer: HttpPeer) -> None:
    opts = ConnectOptions(bind_if="lo", connect_timeout=1.0)
    assert (await run_probe(TcpCheck(connect=opts), LO, http_peer.port)).ok
    bogus = ConnectOptions(bind_if="nosuchif0", connect_timeout=1.0)
    result = await run_probe(TcpCheck(connect=bogus), LO, http_peer.port)
    assert not result.ok and result.detail


# -- HTTP_GET ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_http_status_ranges(http_peer: HttpPeer) -> None:
    spec = HttpGetCheck(connect=FAST)
    assert (await run_probe(spec, LO, http_peer.port)).ok
    http_peer.behaviour.status = 500
    result = await run_probe(spec, LO, http_peer.port)
    assert not result.ok and result.detail == "/: HTTP status 500"
    ranged = HttpGetCheck(connect=FAST, urls=(UrlSpec(status_codes=((200, 299), (500, 503))),))
    assert (await run_probe(ranged, LO, http_peer.port)).ok


@pytest.mark.asyncio
async def test_http_digest_and_regex(http_peer: HttpPeer) -> None:
    body = http_peer.behaviour.body
    digest = hashlib.md5(body).hexdigest()
    spec = HttpGetCheck(connect=FAST, urls=(UrlSpec(path="/health", digest=digest,
                                                     regex=r"all\s+good"),))
    assert (await run_probe(spec, LO, http_peer.port)).ok
    http_peer.behaviour.body = b"<html>all   good, changed</html>"
    result = await run_probe(spec, LO, http_peer.port)
    assert not result.ok and "digest mismatch" in result.detail
    regex_only = HttpGetCheck(connect=FAST, urls=(UrlSpec(regex="all good$"),))
    result = await run_probe(regex_only, LO, http_peer.port)
    assert not result.ok and result.detail == "/: regex did not match"
    inverted = HttpGetCheck(connect=FAST, urls=(UrlSpec(regex="changed", regex_no_match=True),))
    assert (await run_probe(inverted, LO, http_peer.port)).detail == "/: regex matched"


@pytest.mark.asyncio
async def test_http_every_url_must_pass(http_peer: HttpPeer) -> None:
    spec = HttpGetCheck(connect=FAST, urls=(UrlSpec(path="/a"), UrlSpec(path="/b", regex="x")))
    result = await run_probe(spec, LO, http_peer.port)
    assert not result.ok and result.detail.startswith("/b:")
    assert [r.path for r in http_peer.behaviour.requests] == ["/a", "/b"]


@pytest.mark.asyncio
async def test_http_extensions_and_headers(http_peer: HttpPeer) -> None:
    spec = HttpGetCheck(
        connect=FAST, http_protocol="1.1", method="POST", virtualhost="www.example.test",
        headers=(("X-Probe", "hactl"),), basic_auth=("ops", "s3cret"),
        urls=(UrlSpec(path="/status?full=1"),),
    )
    assert (await run_probe(spec, LO, http_peer.port)).ok
    req = http_peer.behaviour.requests[-1]
    seen = http_peer.behaviour.seen_headers[-1]
    assert req.method == "POST" and req.path_qs == "/status?full=1"
    assert seen["Host"] == "www.example.test"
    assert seen["X-Probe"] == "hactl"
    assert seen["Authorization"] == "Basic b3BzOnMzY3JldA=="
    assert seen["Connection"] == "close"
    # default Host is the address with its port
    await run_probe(HttpGetCheck(connect=FAST), LO, http_peer.port)
    assert http_peer.behaviour.seen_headers[-1]["Host"] == f"127.0.0.1:{http_peer.port}"


@pytest.mark.asyncio
async def test_http_chunked_and_head(http_peer: HttpPeer) -> None:
    http_peer.behaviour.chunked = True
    spec = HttpGetCheck(connect=FAST, http_protocol="1.1", urls=(UrlSpec(regex="all good"),))
    assert (await run_probe(spec, LO, http_peer.port)).ok
    http_peer.behaviour.chunked = False
    head = HttpGetCheck(connect=FAST, method="HEAD")
    assert (await run_probe(head, LO, http_peer.port)).ok


@pytest.mark.asyncio
async def test_stuck_http_is_cancelled_at_its_deadline(http_peer: HttpPeer) -> None:
    http_peer.behaviour.delay = 5.0
    spec = HttpGetCheck(connect=ConnectOptions(connect_timeout=0.3))
    result = await run_probe(spec, LO, http_peer.port)
    assert not result.ok and result.detail.startswith("timeout")
    assert 0.25 <= result.elapsed < 1.0


@pytest.mark.asyncio
async def test_not_http_is_a_failure() -> None:
    async def ssh(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(ssh, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        result = await run_probe(HttpGetCheck(connect=FAST), LO, port)
        assert not result.ok and "status line" in result.detail
    finally:
        server.close()
        await server.wait_closed()


# -- SSL_GET -----------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("compliant", [False, True])
async def test_ssl_get(server_tls: ssl.SSLContext, cert_files: tuple[Path, Path],
                       compliant: bool) -> None:
    peer = await start_http(HttpBehaviour(), ssl_context=server_tls)
    try:
        spec = SslGetCheck(connect=FAST, tls_compliant=compliant, enable_sni=True,
                           virtualhost="rs.example.test", urls=(UrlSpec(regex="good"),))
        assert (await run_probe(spec, LO, peer.port)).ok
        # verification (hactl extension): against the right CA and name it passes ...
        verified = SslGetCheck(connect=FAST, tls_compliant=compliant, tls=TlsOptions(
            verify=True, ca_file=str(cert_files[0]), verify_hostname="rs.example.test"))
        assert (await run_probe(verified, LO, peer.port)).ok
        # ... and with the wrong name it fails
        wrong = SslGetCheck(connect=FAST, tls=TlsOptions(
            verify=True, ca_file=str(cert_files[0]), verify_hostname="other.test"))
        result = await run_probe(wrong, LO, peer.port)
        assert not result.ok and result.detail.startswith("TLS")
        peer.behaviour.status = 503
        assert not (await run_probe(spec, LO, peer.port)).ok
    finally:
        await peer.stop()


@pytest.mark.asyncio
async def test_ssl_get_against_plain_http_fails(http_peer: HttpPeer) -> None:
    result = await run_probe(SslGetCheck(connect=FAST), LO, http_peer.port)
    assert not result.ok


# -- SMTP_CHECK --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_smtp(smtp_peer: SmtpPeer) -> None:
    spec = SmtpCheck(connect=FAST, helo_name="director.example.test")
    assert (await run_probe(spec, LO, smtp_peer.port)).ok
    assert smtp_peer.helos == ["HELO director.example.test"]
    smtp_peer.helo_reply = b"550 go away\r\n"
    result = await run_probe(spec, LO, smtp_peer.port)
    assert not result.ok and "550" in result.detail
    smtp_peer.banner = b"554 no service\r\n"
    result = await run_probe(spec, LO, smtp_peer.port)
    assert not result.ok and "banner" in result.detail


# -- DNS_CHECK ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_dns(dns_peer: DatagramPeer) -> None:
    spec = DnsCheck(connect=FAST, query_type="A", name="www.example.test")
    assert (await run_probe(spec, LO, dns_peer.port)).ok
    assert b"\x03www\x07example\x04test\x00" in dns_peer.received[-1]
    dns_peer.rcode = 2
    result = await run_probe(spec, LO, dns_peer.port)
    assert not result.ok and result.detail == "DNS rcode 2"
    dns_peer.silent = True
    result = await run_probe(spec, LO, dns_peer.port)
    assert not result.ok and result.detail.startswith("timeout")


@pytest.mark.asyncio
async def test_dns_port_unreachable() -> None:
    result = await run_probe(DnsCheck(connect=FAST), LO, free_port(socket.SOCK_DGRAM))
    assert not result.ok and "refused" in result.detail.lower()
    assert result.elapsed < 0.5


# -- UDP_CHECK ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_udp_require_reply(udp_peer: DatagramPeer) -> None:
    pattern, mask = parse_hex_pattern("5048 4f4e x5")
    spec = UdpCheck(connect=FAST, payload=b"PHONE", require_reply=True,
                    reply_pattern=pattern, reply_mask=mask, min_reply_length=3)
    assert (await run_probe(spec, LO, udp_peer.port)).ok  # echoed "PHONE" matches "PHON?5"
    assert udp_peer.received[-1] == b"PHONE"
    udp_peer.reply = b"PHAT!"
    result = await run_probe(spec, LO, udp_peer.port)
    assert not result.ok and result.detail == "reply does not match"
    udp_peer.reply = b"PH"
    assert (await run_probe(spec, LO, udp_peer.port)).detail == "reply length 2"


@pytest.mark.asyncio
async def test_udp_icmp_port_unreachable_fails() -> None:
    spec = UdpCheck(connect=FAST, payload=b"x")
    result = await run_probe(spec, LO, free_port(socket.SOCK_DGRAM))
    assert not result.ok and "refused" in result.detail.lower()
    assert result.elapsed < 0.5


@pytest.mark.asyncio
async def test_udp_silent_listener_without_require_reply_passes(udp_peer: DatagramPeer) -> None:
    udp_peer.silent = True
    spec = UdpCheck(connect=ConnectOptions(connect_timeout=0.3))
    result = await run_probe(spec, LO, udp_peer.port)
    assert result.ok and 0.25 <= result.elapsed < 0.8
    assert len(udp_peer.received[-1]) == 16  # random payload when none is configured
    required = UdpCheck(connect=ConnectOptions(connect_timeout=0.3), require_reply=True)
    assert not (await run_probe(required, LO, udp_peer.port)).ok


# -- PING_CHECK --------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("addr", ["127.0.0.1", "::1"])
async def test_ping_loopback(addr: str) -> None:
    result = await run_probe(PingCheck(connect=FAST), ipaddress.ip_address(addr), 0)
    assert result.ok, result.detail


@pytest.mark.asyncio
async def test_ping_unreachable_times_out() -> None:
    # TEST-NET-1 through an interface-bound socket on lo: never answered
    opts = ConnectOptions(bind_if="lo", connect_timeout=0.3)
    result = await run_probe(PingCheck(connect=opts), ipaddress.IPv4Address("192.0.2.1"), 0)
    assert not result.ok


# -- MISC_CHECK --------------------------------------------------------------------------------


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.mark.asyncio
async def test_misc_exit_codes(tmp_path: Path) -> None:
    ex = ScriptExecutor()
    script = write_script(tmp_path / "check.sh", 'exit "$1"\n')
    for code, ok in [(0, True), (1, False), (7, False)]:
        spec = MiscCheck(script=ScriptSpec(argv=(str(script), str(code))), misc_timeout=2.0)
        result = await run_probe(spec, LO, 80, scripts=ex)
        assert (result.ok, result.value) == (ok, code)
    missing = MiscCheck(script=ScriptSpec(argv=(str(tmp_path / "nope"),)))
    result = await run_probe(missing, LO, 80, scripts=ex)
    assert not result.ok and "cannot start" in result.detail


def group_alive(pgid: int) -> list[int]:
    """Members of process group `pgid` that are not zombies."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat_line = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat_line.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry))
    return alive


@pytest.mark.asyncio
async def test_misc_hang_is_killed_with_its_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    script = write_script(
        tmp_path / "hang.sh", f'sleep 30 &\necho $$ > {pidfile}\nwait\n'
    )
    spec = MiscCheck(script=ScriptSpec(argv=(str(script),)), misc_timeout=0.5)
    result = await run_probe(spec, LO, 80, scripts=ScriptExecutor())
    assert not result.ok and result.detail.startswith("timeout")
    assert 0.45 <= result.elapsed < 1.5
    pgid = int(pidfile.read_text())
    for _ in range(50):
        if not group_alive(pgid):
            break
        await asyncio.sleep(0.02)
    assert group_alive(pgid) == []


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory another user can enter (pytest's tmp_path sits under a 0700 one)."""
    with tempfile.TemporaryDirectory(prefix="hactl-misc-") as d:
        Path(d).chmod(0o777)
        yield Path(d)


@pytest.mark.asyncio
@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_misc_runs_as_script_user(shared_tmp: Path) -> None:
    tmp_path = shared_tmp
    out = tmp_path / "uid"
    script = write_script(tmp_path / "who.sh", f"id -u > {out}\n")
    spec = MiscCheck(script=ScriptSpec(argv=(str(script),), user="nobody"))
    assert (await run_probe(spec, LO, 80, scripts=ScriptExecutor())).ok
    assert out.read_text().strip() == str(pwd.getpwnam("nobody").pw_uid)
    # the executor's default user applies to scripts that name none
    spec2 = MiscCheck(script=ScriptSpec(argv=(str(script),)))
    out.unlink()
    assert (await run_probe(spec2, LO, 80, scripts=ScriptExecutor(default_user="nobody"))).ok
    assert out.read_text().strip() != "0"
    # keepalived's default: keepalived_script when that user exists, else ourselves
    try:
        expected = pwd.getpwnam("keepalived_script").pw_uid
    except KeyError:
        expected = os.geteuid()
    out.unlink()
    assert (await run_probe(spec2, LO, 80, scripts=ScriptExecutor.from_config())).ok
    assert out.read_text().strip() == str(expected)
    named = ScriptExecutor.from_config("nobody")
    out.unlink(missing_ok=True)
    assert (await run_probe(spec2, LO, 80, scripts=named)).ok
    assert out.read_text().strip() == str(pwd.getpwnam("nobody").pw_uid)
    unknown = MiscCheck(script=ScriptSpec(argv=(str(script),), user="no-such-user-x"))
    result = await run_probe(unknown, LO, 80, scripts=ScriptExecutor())
    assert not result.ok and "unknown user" in result.detail


# -- FILE_CHECK --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_file_check_reads_the_number(tmp_path: Path) -> None:
    f = tmp_path / "maint"
    spec = FileCheck(path=str(f), weight=0)
    assert (await run_probe(spec, LO, 80)).value == 0  # missing reads as 0
    f.write_text("3\n")
    assert (await run_probe(spec, LO, 80)).value == 3
    f.write_text("drain")
    result = await run_probe(spec, LO, 80)
    assert not result.ok and "not a number" in result.detail
