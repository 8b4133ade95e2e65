"""Rendering of diagnostics: the exact text layout, the JSON schema, and robustness."""

from __future__ import annotations

import json
from pathlib import Path

from hactl.config.report import SourceLines, render_json, render_text, summary
from hactl.errors import Diagnostic, Severity, SourcePos

SOURCE = "vrrp_instance VI_1 {\n\tlb_alog rr\n    priority 300\n}\n"


def diag(
    line: int, col: int, end: int, message: str, *, sev: Severity = Severity.ERROR, **kw: str
) -> Diagnostic:
    return Diagnostic(sev, SourcePos("k.conf", line, col, line, end), message, **kw)


def test_text_layout_with_excerpt_caret_and_hint() -> None:
    found = [
        diag(3, 14, 17, "priority 300 is out of range 1..255", code="range"),
        diag(
            2,
            2,
            9,
            "unknown keyword 'lb_alog'",
            code="unknown-keyword",
            hint="did you mean 'lb_algo'?",
        ),
    ]
    text = render_text(found, sources=SourceLines({"k.conf": SOURCE}))
    assert text == (
        "k.conf:2:2: error: unknown keyword 'lb_alog' [unknown-keyword]\n"
        " 2 |  lb_alog rr\n"
        "   |  ^^^^^^^\n"
        "   = did you mean 'lb_algo'?\n"
        "k.conf:3:14: error: priority 300 is out of range 1..255 [range]\n"
        " 3 |     priority 300\n"
        "   |              ^^^\n"
        "2 errors, 0 warnings\n"
    )


def test_warning_and_summary_wording() -> None:
    found = [diag(1, 1, 14, "deprecated", sev=Severity.WARNING, code="deprecated")]
    text = render_text(found, sources=SourceLines({"k.conf": SOURCE}))
    assert text.splitlines()[0] == "k.conf:1:1: warning: deprecated [deprecated]"
    assert text.splitlines()[-1] == "0 errors, 1 warning"
    assert summary([]) == "0 errors, 0 warnings"
    assert render_text([], with_summary=False) == ""


def test_source_is_read_from_the_file_when_not_given(tmp_path: Path) -> None:
    f = tmp_path / "a.conf"
    f.write_text("x\nrouter_id  bad value\n")
    d = Diagnostic(Severity.ERROR, SourcePos(str(f), 2, 12, 2, 15), "bad")
    assert render_text([d], with_summary=False).splitlines()[1:] == [
        " 2 | router_id  bad value",
        "   |            ^^^",
    ]


def test_missing_source_or_position_out_of_range_loses_only_the_excerpt(tmp_path: Path) -> None:
    gone = Diagnostic(Severity.ERROR, SourcePos(str(tmp_path / "gone.conf"), 1, 1), "m", hint="h")
    beyond = diag(99, 1, 2, "beyond")
    past_end = diag(2, 80, 81, "past end of line")
    text = render_text([gone, beyond, past_end], sources=SourceLines({"k.conf": SOURCE}))
    assert text.splitlines() == [
        f"{tmp_path}/gone.conf:1:1: error: m",
        "  = h",
        "k.conf:2:80: error: past end of line",
        "k.conf:99:1: error: beyond",
        "3 errors, 0 warnings",
    ]


def test_control_characters_and_long_lines_are_made_safe() -> None:
    line = "a\x1b[31mred\x07 " + "x" * 500 + " target"
    d = diag(1, len(line) - 5, len(line) + 1, "here")
    text = render_text([d], sources=SourceLines({"k.conf": line}), with_summary=False)
    excerpt, carets = text.splitlines()[1:3]
    assert "\x1b" not in text and "\x07" not in text
    assert len(excerpt) < 200
    assert excerpt[carets.index("^") :].startswith("target")
    assert carets.endswith("^^^^^^")


def test_multi_line_span_underlines_to_the_end_of_the_first_line() -> None:
    d = Diagnostic(Severity.ERROR, SourcePos("k.conf", 1, 15, 4, 2), "block")
    text = render_text([d], sources=SourceLines({"k.conf": SOURCE}), with_summary=False)
    assert text.splitlines()[2] == "   |               ^^^^^^"


def test_json_schema() -> None:
    found = [
        diag(2, 2, 9, "unknown keyword 'lb_alog'", code="unknown-keyword", hint="did you mean"),
        Diagnostic(Severity.WARNING, SourcePos("a.conf", 1, 1), "w", "c"),
    ]
    data = json.loads(render_json(found))
    assert data == [
        {
            "path": "a.conf",
            "line": 1,
            "column": 1,
            "end_line": 0,
            "end_column": 0,
            "severity": "warning",
            "code": "c",
            "message": "w",
            "hint": "",
        },
        {
            "path": "k.conf",
            "line": 2,
            "column": 2,
            "end_line": 2,
            "end_column": 9,
            "severity": "error",
            "code": "unknown-keyword",
            "message": "unknown keyword 'lb_alog'",
            "hint": "did you mean",
        },
    ]
    assert json.loads(render_json([])) == []


def test_undecodable_file_names_print_safely() -> None:
    d = Diagnostic(Severity.WARNING, SourcePos("conf.d/\udcff.conf", 1, 1), "odd \udcfe name")
    text = render_text([d], with_summary=False)
    text.encode("utf-8")  # would raise on a surrogate
    assert text == "conf.d/?.conf:1:1: warning: odd ? name\n"
