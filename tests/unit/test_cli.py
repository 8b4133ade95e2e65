"""The `hactl` command line: exit statuses, output streams, formats, and no tracebacks."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hactl import __version__, cli
from hactl.cli import main

GOOD = """\
global_defs {
    router_id LB1
    lvs_timeouts tcp 7500
}
virtual_server 10.0.0.1 80 {
    delay_loop 6
    lb_algo rr
    lb_kind NAT
    protocol TCP
    real_server 192.168.1.1 80 {
        weight 1
        TCP_CHECK {
            connect_timeout 3
        }
    }
}
"""

BAD = """\
global_defs {
    router_id LB1
}
virtual_server 10.0.0.1 80 {
    lb_alog rr
"""


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.conf"
    path.write_text(GOOD)
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.conf"
    path.write_text(BAD)
    return path


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"hactl {__version__}"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--help"], "check"),
        (["check", "--help"], "Exit status: 0 no errors"),
        (["dump", "--help"], "as JSON"),
        (["fmt", "--help"], "canonical keepalived syntax"),
    ],
)
def test_help(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert needle in out
    if argv[0] != "--help":
        assert "/etc/hactl/hactl.conf if it exists, else /etc/keepalived/keepalived.conf" in out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: hactl" in capsys.readouterr().err


def test_check_good(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-f", str(good)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("0 errors, ")


def test_check_bad_reports_every_problem_with_excerpts(
    bad: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "-f", str(bad)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert f"{bad}:4:1: error: the block of 'virtual_server' is never closed [unclosed-block]" in (
        lines
    )
    unknown = [i for i, line in enumerate(lines) if line.startswith(f"{bad}:5:5: error: ")]
    assert len(unknown) == 1
    i = unknown[0]
    assert "lb_alog" in lines[i]
    assert lines[i + 1 : i + 3] == [" 5 |     lb_alog rr", "   |     ^^^^^^^"]
    assert "lb_algo" in lines[i + 3]  # the did-you-mean hint
    assert lines[-1].startswith(("2 errors", "3 errors", "4 errors"))


def test_check_json(bad: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-f", str(bad), "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert {d["severity"] for d in data} >= {"error"}
    first = data[0]
    assert set(first) == {
        "path",
        "line",
        "column",
        "end_line",
        "end_column",
        "severity",
        "code",
        "message",
        "hint",
    }
    assert (first["path"], first["line"], first["column"]) == (str(bad), 4, 1)


def test_check_json_clean(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-f", str(good), "--format", "json"]) == 0
    assert all(d["severity"] == "warning" for d in json.loads(capsys.readouterr().out))


def test_unreadable_file_exits_2_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for target in (tmp_path / "missing.conf", tmp_path):
        for command in ("check", "dump", "fmt"):
            assert main([command, "-f", str(target)]) == 2
            captured = capsys.readouterr()
            assert captured.out == ""
            assert captured.err.startswith(f"hactl {command}: cannot read {target}")
            assert "Traceback" not in captured.err


def test_binary_file_is_a_diagnostic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bin.conf"
    path.write_bytes(bytes(range(256)) * 4)
    assert main(["check", "-f", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:1:1: error: not a text file (NUL byte)" in out
    assert out.splitlines()[-1] == "1 error, 0 warnings"


def test_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(BAD.encode()))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["check", "-f", "-"]) == 1
    out = capsys.readouterr().out
    assert "<stdin>:5:5: error:" in out
    assert " 5 |     lb_alog rr" in out


def test_config_id_selects_conditional_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.conf"
    path.write_text(
        GOOD.replace("    router_id LB1\n", "    @lb1 router_id LB1\n    @lb2 nonsense\n")
    )
    assert main(["check", "-f", str(path), "-i", "lb1"]) == 0
    capsys.readouterr()
    assert main(["check", "-f", str(path), "--config-id", "lb2"]) == 1
    assert f"{path}:3:10: error:" in capsys.readouterr().out


def test_default_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "hactl.conf", tmp_path / "keepalived.conf"
    monkeypatch.setattr(cli, "DEFAULT_CONFIG_PATHS", (first, second))
    assert cli.default_config_path() == second
    assert main(["check"]) == 2
    assert f"cannot read {second}" in capsys.readouterr().err
    first.write_text(GOOD)
    assert cli.default_config_path() == first
    assert main(["check"]) == 0


def test_dump_prints_json(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dump", "-f", str(good)]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert "LB1" in json.dumps(data)
    assert "Traceback" not in captured.err


def test_fmt_output_checks_clean(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fmt", "-f", str(good)]) == 0
    formatted = capsys.readouterr().out
    again = tmp_path / "again.conf"
    again.write_text(formatted)
    assert main(["fmt", "-f", str(again)]) == 0
    assert capsys.readouterr().out == formatted


@pytest.mark.parametrize("command", ["dump", "fmt"])
def test_dump_and_fmt_refuse_a_broken_config(
    command: str, bad: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "-f", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{bad}:5:5: error:" in captured.err
    assert re.fullmatch(r"[1-9]\d* errors?, \d+ warnings?", captured.err.splitlines()[-1])


def test_internal_errors_are_one_line(
    good: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("kaput")

    from hactl import config

    monkeypatch.setattr(config, "load", boom)
    monkeypatch.delenv("HACTL_DEBUG", raising=False)
    assert main(["check", "-f", str(good)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("hactl check: internal error (RuntimeError: kaput)")
    assert "Traceback" not in err


def test_python_dash_m_hactl(bad: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hactl", "check", "-f", str(bad)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 1
    assert f"{bad}:5:5: error:" in proc.stdout
    assert proc.stderr == ""


@pytest.mark.parametrize(
    ("command", "status", "stream", "needle"),
    [
        ("check", 0, "stdout", "0 errors"),
        ("dump", 0, "stdout", '"virtual_servers"'),
    ],
)
def test_program_check_and_dump_end_with_output_flushed(
    good: Path, command: str, status: int, stream: str, needle: str
) -> None:
    # As a program these commands end with os._exit (no interpreter teardown): the whole
    # output still reaches a pipe, and the status is the command's.
    proc = subprocess.run(
        [sys.executable, "-m", "hactl", command, "-f", str(good)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == status, proc.stderr
    assert needle in getattr(proc, stream)
    if command == "dump":
        json.loads(proc.stdout)


def test_program_check_ends_the_process_after_flushing(
    bad: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ended: list[int] = []

    def fake_exit(code: int) -> None:
        ended.append(code)

    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.setattr(sys, "argv", ["hactl", "check", "-f", str(bad)])
    assert main() == 1  # the fake returns; the real one never does
    assert ended == [1]
    assert f"{bad}:5:5: error:" in capsys.readouterr().out


def test_main_with_argv_returns_its_status(
    good: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A caller that passes argv (tests, embedding) keeps its process.
    monkeypatch.setattr(cli.os, "_exit", lambda code: pytest.fail("os._exit called"))
    assert main(["check", "-f", str(good)]) == 0
    assert main(["dump", "-f", str(good)]) == 0
    capsys.readouterr()


def test_config_commands_parse_without_the_operator_commands(good: Path) -> None:
    for argv in (["check", "-f", str(good), "--format", "json"], ["dump", "-f", str(good)]):
        full = vars(cli.build_parser().parse_args(argv))
        lean = vars(cli.build_parser(operator_commands=False).parse_args(argv))
        assert lean == full
    # ... and so `check` does not import them (nor asyncio, which they pull in).
    code = (
        "import sys; from hactl import cli; "
        f"status = cli.main(['check', '-f', {str(good)!r}]); "
        "print(status, 'hactl.api.cli' in sys.modules, 'asyncio' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert proc.stdout.splitlines()[-1] == "0 False False"
