"""Rendering of configuration diagnostics for people (text) and tools (JSON).

Text form, one block per diagnostic, sorted by position:

    keepalived.conf:12:5: error: unknown keyword 'lb_alog' [unknown-keyword]
       12 |     lb_alog rr
          |     ^^^^^^^
          = did you mean 'lb_algo'?

then a summary line ("2 errors, 1 warning"). The first line is `str(Diagnostic)`, the
`path:line:col: severity: message [code]` form editors and CI annotate.

JSON form (`--format json`): a list, sorted the same way, of objects with exactly these keys:
`path` (str), `line`, `column`, `end_line`, `end_column` (int, 1-based; the end column is
exclusive, 0 when unknown), `severity` ("error" | "warning"), `code` (str, "" when none),
`message` (str), `hint` (str, "" when none).

Invariants: rendering never raises for any diagnostic (a source file that cannot be read,
or a position beyond its end, just loses its excerpt), and the output contains only
printable characters (control characters of a broken file are shown as '?').
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from hactl.errors import Diagnostic, Severity

__all__ = ["SourceLines", "render_json", "render_text", "summary"]

_MAX_EXCERPT = 160  # characters of a source line shown around the column


class SourceLines:
    """Lines of the files diagnostics point into, read lazily and at most once each.

    `texts` supplies sources that are not files (e.g. `<string>` or standard input).
    """

    def __init__(self, texts: Mapping[str, str] | None = None) -> None:
        self._lines: dict[str, list[str] | None] = {
            path: text.split("\n") for path, text in (texts or {}).items()
        }

    def line(self, path: str, number: int) -> str | None:
        if path not in self._lines:
            try:
                data = Path(path).read_bytes()
            except (OSError, ValueError):
                self._lines[path] = None
            else:
                self._lines[path] = data.decode("utf-8", errors="replace").split("\n")
        lines = self._lines[path]
        if lines is None or not 1 <= number <= len(lines):
            return None
        return lines[number - 1].rstrip("\r")


def _printable(text: str) -> str:
    # One output character per input character, so that carets stay aligned.
    # Surrogates (undecodable file names) cannot be written to a UTF-8 terminal.
    return "".join(
        " "
        if ch == "\t"
        else "?"
        if (ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0 or 0xD800 <= ord(ch) < 0xE000)
        else ch
        for ch in text
    )


def _excerpt(diag: Diagnostic, sources: SourceLines) -> list[str]:
    pos = diag.pos
    source = sources.line(pos.path, pos.line)
    if source is None:
        return []
    start = max(pos.column, 1)
    if start > len(source) + 1:
        return []
    end = pos.end_column if pos.end_line in (0, pos.line) else len(source) + 1
    end = min(max(end, start + 1), max(len(source) + 1, start + 1))
    # Keep long lines readable: a window around the column.
    offset = 0
    if len(source) > _MAX_EXCERPT:
        offset = max(0, min(start - 1 - _MAX_EXCERPT // 4, len(source) - _MAX_EXCERPT))
        source = source[offset : offset + _MAX_EXCERPT]
    shown = _printable(source)
    gutter = str(pos.line)
    pad = " " * len(gutter)
    caret_at = start - 1 - offset
    width = max(1, min(end - start, len(shown) - caret_at))
    return [
        f" {gutter} | {shown}",
        f" {pad} | {' ' * caret_at}{'^' * width}",
    ]


def render_text(
    diagnostics: Iterable[Diagnostic],
    *,
    sources: SourceLines | None = None,
    with_summary: bool = True,
) -> str:
    """Every diagnostic with its excerpt and hint, then (optionally) the summary line."""
    sources = sources or SourceLines()
    ordered = sorted(diagnostics, key=Diagnostic.sort_key)
    out: list[str] = []
    for diag in ordered:
        out.append(_printable(str(diag)))
        excerpt = _excerpt(diag, sources)
        out.extend(excerpt)
        if diag.hint:
            pad = " " * (len(str(diag.pos.line)) + 1) if excerpt else " "
            out.append(f"{pad} = {_printable(diag.hint)}")
    if with_summary:
        out.append(summary(ordered))
    return "\n".join(out) + ("\n" if out else "")


def summary(diagnostics: Sequence[Diagnostic]) -> str:
    """`N errors, M warnings`, with singulars where they belong."""
    errors = sum(1 for d in diagnostics if d.severity is Severity.ERROR)
    warnings = len(diagnostics) - errors

    def count(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    return f"{count(errors, 'error')}, {count(warnings, 'warning')}"


def render_json(diagnostics: Iterable[Diagnostic]) -> str:
    """The JSON list documented in this module's banner."""
    return json.dumps(
        [
            {
                "path": d.pos.path,
                "line": d.pos.line,
                "column": d.pos.column,
                "end_line": d.pos.end_line,
                "end_column": d.pos.end_column,
                "severity": str(d.severity),
                "code": d.code,
                "message": d.message,
                "hint": d.hint,
            }
            for d in sorted(diagnostics, key=Diagnostic.sort_key)
        ],
        indent=2,
    )
