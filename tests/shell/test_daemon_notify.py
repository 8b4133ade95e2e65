"""The service-manager side: sd_notify datagrams, `hactl run` API options, etc/hactl.service."""

from __future__ import annotations

import configparser
import shlex
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from hactl.cli import build_parser
from hactl.daemon import api_settings, sd_notify

REPO = Path(__file__).resolve().parents[2]


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    return sock


def test_sd_notify_to_a_path_and_to_an_abstract_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with _receiver(path) as sock:
        assert sd_notify("READY=1\nSTATUS=ok", environ={"NOTIFY_SOCKET": path})
        assert sock.recv(100) == b"READY=1\nSTATUS=ok"
    name = f"hactl-test-{id(tmp_path)}"
    with _receiver("\0" + name) as sock:
        assert sd_notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"STOPPING=1"


def test_sd_notify_without_a_manager_or_with_a_dead_socket(tmp_path: Path) -> None:
    assert not sd_notify("READY=1", environ={})
    # a socket path nobody listens on: logged, never raised
    assert not sd_notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone")})


def _args(*argv: str) -> SimpleNamespace:
    return SimpleNamespace(**vars(build_parser().parse_args(["run", *argv])))


def test_api_options(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc\n")
    default = api_settings(_args())
    assert default is not None and not default.required
    assert default.unix_path == Path("/run/hactl/api.sock") and default.tcp is None
    assert default.state_path == Path("/var/lib/hactl/overrides.json")
    assert api_settings(_args("--api", "none")) is None
    both = api_settings(_args("--api", str(tmp_path / "a.sock"), "--api", "tcp:127.0.0.1:0",
                              "--api-token-file", str(token), "--peer-api",
                              "http://10.0.0.3:8080"))
    assert both is not None and both.required
    assert both.unix_path == tmp_path / "a.sock" and both.tcp == ("127.0.0.1", 0)
    assert both.token == "abc" and both.peer_api == "http://10.0.0.3:8080"
    http = api_settings(_args("--api", "http://[::1]:8080/", "--api-token-file", str(token)))
    assert http is not None and http.tcp == ("::1", 8080) and http.unix_path is None
    with pytest.raises(ValueError, match="token"):
        api_settings(_args("--api", "tcp:127.0.0.1:8080"))
    with pytest.raises(ValueError, match="tcp:HOST:PORT"):
        api_settings(_args("--api", "tcp:127.0.0.1:http", "--api-token-file", str(token)))
    with pytest.raises(ValueError, match="TLS"):
        api_settings(_args("--api", "https://127.0.0.1:8443"))
    with pytest.raises(OSError):
        api_settings(_args("--api", "tcp:127.0.0.1:1", "--api-token-file",
                           str(tmp_path / "missing")))


def test_systemd_unit_is_type_notify_and_its_commands_parse() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(REPO / "etc" / "hactl.service")
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["RuntimeDirectory"] == "hactl" and service["StateDirectory"] == "hactl"
    start = shlex.split(service["ExecStart"].replace("\\\n", " "))
    assert start[0].endswith("/hactl") and start[1] == "run"
    args = _args(*start[2:])
    settings = api_settings(args)
    assert settings is not None and settings.unix_path == Path("/run/hactl/api.sock")
    assert settings.state_path == Path("/var/lib/hactl/overrides.json")
    check = shlex.split(service["ExecStartPre"])
    assert build_parser().parse_args(check[1:]).command == "check"
