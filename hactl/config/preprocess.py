"""Line-level preprocessing of keepalived configuration text: files in, logical lines out.

This module owns everything keepalived's `read_line()` does before a line is split into
words (keepalived 2.2.7 lib/parser.c; `man 5 keepalived.conf`, "ADVANCED CONFIGURATION"):

* physical lines, `#`/`!` comments outside double quotes, `\\#`/`\\!` escapes (`decomment`);
* `@ID`/`@^ID` conditional lines, compared with the config id (`-i`);
* `$NAME=value` definitions, multi-line definitions (lines ending with `\\`), and `$NAME` /
  `${NAME}` substitution (recursive, done at use time), with the pre-defined `_PWD`,
  `_INSTANCE`, `_RANDOM`, `_HASH` and `_BANG`;
* `~SEQ(var, start, step, end)`, `~SEQx(...)` and `~LST(...)` repetition;
* `include` (and includer/m/w/b/a) with glob and csh-style brace patterns, relative to the
  directory of the including file.

Invariants:
* Nothing here raises for user input: every problem becomes a `Diagnostic` in the list the
  caller passes in, and processing goes on with the next line.
* Every character of a logical line knows where it came from: text read from a file keeps its
  own line and column; text produced by substitution is placed at the `$NAME` use.
* Expansion is bounded (substitutions per line, generated lines, include depth), so a
  recursive definition or an include loop is an error, not a hang.

Imports nothing from hactl but `hactl.errors`; file system access is limited to reading
included files (and listing directories for their glob patterns).
"""

from __future__ import annotations

import difflib
import glob
import os
import random
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from hactl.errors import Diagnostic, Severity, SourcePos

__all__ = [
    "INCLUDE_DEPTH_LIMIT",
    "KEEPALIVED_MAX_LINE",
    "MAX_FILE_SIZE",
    "MAX_GENERATED_LINES",
    "Line",
    "PlainRun",
    "decode_config_bytes",
    "expand_braces",
    "preprocess",
    "preprocess_runs",
]

# Bounds that turn runaway expansion into an error instead of a hang or a memory blow-up.
INCLUDE_DEPTH_LIMIT = 32
# keepalived's own 65,024-instance ~SEQ example (about 800,000 lines) fits easily.
MAX_GENERATED_LINES = 2_000_000
MAX_FILE_SIZE = 256 << 20  # an included file this large is not a configuration
KEEPALIVED_MAX_LINE = 1023  # bytes of a line keepalived reads at once (MAXBUF - 1)
_LONG_LINE_CHARS = KEEPALIVED_MAX_LINE // 4  # below this many characters, no need to encode
_MAX_SUBSTITUTIONS_PER_LINE = 1_000
_MAX_LINE_LENGTH = 1_000_000

Span = tuple[int, int]  # (column, end_column), 1-based, end exclusive


class Line(NamedTuple):
    """One logical line, ready to be split into words.

    `spans is None` means character i sits at column `base + i` of `line` in `path`;
    otherwise `spans[i]` is the (column, end_column) of character i on that line.
    `continued` is True when the line ended with a `\\` outside a definition.
    """

    path: str
    line: int
    text: str
    base: int
    spans: list[Span] | None
    continued: bool = False


class PlainRun(NamedTuple):
    """Lines `start`..`stop-1` (0-based indexes into `lines`) of `path`, taken as written.

    None of them needs preprocessing: each stands for `Line(path, i + 1, body, lead + 1)`
    where `body` is the raw line without outer blanks (" \t\r"), `lead` the blanks before
    it, and blank lines stand for nothing (see `PlainRun.to_lines`). The tokenizer reads
    runs directly, which spares a `Line` per line of a large, plain file.
    """

    path: str
    lines: list[str]
    start: int
    stop: int

    def to_lines(self) -> list[Line]:
        path = self.path
        found: list[Line] = []
        for i in range(self.start, self.stop):
            raw = self.lines[i]
            body = raw.strip(" \t\r")
            if body:
                found.append(Line(path, i + 1, body, raw.index(body[0]) + 1, None, False))
        return found


@dataclass(slots=True)
class _Text:
    """A line being preprocessed, with the origin of every character (see `Line`)."""

    s: str
    path: str
    line: int
    base: int = 1
    spans: list[Span] | None = None
    continued: bool = False
    word_comment: int = 0  # column of a '#'/'!' glued to the word before it, else 0

    def span_list(self) -> list[Span]:
        if self.spans is not None:
            return self.spans
        base = self.base
        return [(base + i, base + i + 1) for i in range(len(self.s))]

    def span_of(self, i: int, j: int) -> Span:
        """Columns covered by characters [i, j) (j > i)."""
        if self.spans is None:
            return (self.base + i, self.base + j)
        return (self.spans[i][0], max(c[1] for c in self.spans[i:j]))

    def pos(self, i: int, j: int) -> SourcePos:
        if not self.s:
            return SourcePos(self.path, self.line, self.base, self.line, self.base)
        i = min(i, len(self.s) - 1)
        j = max(min(j, len(self.s)), i + 1)
        col, end = self.span_of(i, j)
        return SourcePos(self.path, self.line, col, self.line, end)

    def tail(self, i: int) -> _Text:
        """Characters from i on, leading blanks removed."""
        while i < len(self.s) and self.s[i] in " \t":
            i += 1
        if self.spans is None:
            return _Text(self.s[i:], self.path, self.line, self.base + i, None, self.continued)
        return _Text(self.s[i:], self.path, self.line, 1, self.spans[i:], self.continued)

    def replace(self, i: int, j: int, value: str, span: Span) -> _Text:
        spans = self.span_list()
        return _Text(
            self.s[:i] + value + self.s[j:],
            self.path,
            self.line,
            1,
            spans[:i] + [span] * len(value) + spans[j:],
            self.continued,
        )

    def to_line(self) -> Line:
        return Line(self.path, self.line, self.s, self.base, self.spans, self.continued)


# --------------------------------------------------------------------------- decoding


def decode_config_bytes(data: bytes, path: str, diagnostics: list[Diagnostic]) -> str | None:
    """Bytes of a configuration file -> text, or None when it is not a text file at all.

    A NUL byte means a binary file: one error, and the content is ignored (reading it as
    configuration would only bury the real problem under hundreds of unknown keywords).
    Invalid UTF-8 is one error at the first bad byte; the rest is read with U+FFFD.
    """
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        col = nul - (data.rfind(b"\n", 0, nul) + 1) + 1
        diagnostics.append(
            Diagnostic(
                Severity.ERROR,
                SourcePos(path, line, col, line, col + 1),
                "not a text file (NUL byte); a configuration file must be UTF-8 text",
                code="binary-file",
            )
        )
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = exc.start
        line = data.count(b"\n", 0, bad) + 1
        start = data.rfind(b"\n", 0, bad) + 1
        col = len(data[start:bad].decode("utf-8", errors="replace")) + 1
        diagnostics.append(
            Diagnostic(
                Severity.ERROR,
                SourcePos(path, line, col, line, col + 1),
                f"invalid UTF-8 byte 0x{data[bad]:02x}; a configuration file must be UTF-8 text",
                code="invalid-utf8",
            )
        )
        return data.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------- decomment

_DECOMMENT_SPECIAL = re.compile(r'[!#"\\]')


def _decomment(raw: str, path: str, lineno: int) -> _Text:
    """keepalived's `decomment()`: strip comments, `\\#`/`\\!` escapes and outer blanks.

    Comments start at `#` or `!` outside double quotes, anywhere on a line (man page,
    DESCRIPTION). A `\\` before `#`/`!` (outside quotes) is dropped and the character kept.
    A `\\` ending the line is kept, blanks before it removed, and `continued` is set: it
    continues a `$NAME=` definition (parser.c `decomment`).
    """
    lead = len(raw) - len(raw.lstrip(" \t"))
    if _DECOMMENT_SPECIAL.search(raw, lead) is None:
        return _Text(raw[lead:].rstrip(" \t"), path, lineno, lead + 1)
    s = raw
    removed: list[int] = []
    quote = False
    skip = -1
    cont = -1
    p = lead
    n = len(s)
    while True:
        m = _DECOMMENT_SPECIAL.search(s, p)
        if m is None:
            break
        p = m.start()
        ch = s[p]
        if ch == '"':
            if skip < 0:
                quote = not quote
            p += 1
        elif ch == "\\":
            if p + 1 < n:
                if not quote and s[p + 1] in "#!":
                    removed.append(p)
                p += 2
            else:
                cont = p
                break
        else:
            if not quote and skip < 0:
                skip = p
            p += 1
    end = n
    if cont >= 0:
        end = cont
    if skip >= 0:
        end = min(end, skip)
    while end > lead and s[end - 1] in " \t":
        end -= 1
    keep = [i for i in range(lead, end) if not removed or i not in removed]
    if cont >= 0:
        keep.append(cont)
    glued = skip + 1 if skip > lead and s[skip - 1] not in " \t" else 0
    if not removed and (cont < 0 or cont == end):
        return _Text(
            s[lead:end] + ("\\" if cont >= 0 else ""),
            path,
            lineno,
            lead + 1,
            None,
            cont >= 0,
            glued,
        )
    return _Text(
        "".join(s[i] for i in keep),
        path,
        lineno,
        1,
        [(i + 1, i + 2) for i in keep],
        cont >= 0,
        glued,
    )


# --------------------------------------------------------------------------- definitions


@dataclass(slots=True)
class _Def:
    value: str
    multiline: bool = False
    max_params: int = 0
    fn: Callable[[tuple[int, ...]], str] | None = None


_DEFINITION = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)=[ \t]*")
_BLANK = re.compile(r"[ \t]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BRACED_PARAMS = re.compile(r"((?: |[0-9])*)\}")
_SEQ_HEAD = re.compile(r"~(SEQ|LST)(x?)[ \t]*\(")
_INCLUDE = re.compile(r"include([rmwba]?)(?:[ \t\f\v]|$)")
# A line without any of these (and not an include) is taken as written, bar outer blanks.
# Besides the preprocessor's own characters: the blanks other than " \t\f\v\r" that
# str.split() would take as separators (keepalived does not), so that the tokenizer may
# split a plain line with str.split().
_PLAIN_LINE_SPECIAL = re.compile(
    '[!#"\\\\$@~\x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]'
)
_GLOB_CHARS = re.compile(r"[*?\[]")
# The characters of _PLAIN_LINE_SPECIAL an ASCII text may hold (see `_FileSource.special`).
_ASCII_SPECIAL = '!#"\\$@~\x1c\x1d\x1e\x1f'


# --------------------------------------------------------------------------- line sources


@dataclass(slots=True)
class _FileSource:
    path: str
    directory: Path
    text: str
    lines: list[str]  # text.split("\n")
    real: str
    index: int = 0  # of the next line to read
    # A line and the offset in `text` where it starts, for `_plain_lines`.
    offset_line: int = 0
    offset: int = 0
    # For an ASCII text: where each character of _ASCII_SPECIAL is next found, as last
    # looked up (-1: nowhere after), for `special`.
    next_special: dict[str, int] | None = None

    def special(self, offset: int) -> int:
        """Where the first character of _PLAIN_LINE_SPECIAL at or after `offset` is, or -1.

        An ASCII text (nearly every configuration) is searched for each character with
        str.find, a memchr scan, many times faster than the regular expression's
        character-class test per character; the place found is kept until `offset` passes
        it, so that each character's scans cover the text once however many times this is
        called. `offset` never goes back between calls: the file is read forward.
        """
        text = self.text
        if not text.isascii():  # O(1): CPython knows
            found = _PLAIN_LINE_SPECIAL.search(text, offset)
            return -1 if found is None else found.start()
        memo = self.next_special
        if memo is None:
            memo = self.next_special = {}
        first = -1
        for char in _ASCII_SPECIAL:
            at = memo.get(char)
            if at is None or 0 <= at < offset:
                at = memo[char] = text.find(char, offset)
            if at >= 0 and (first < 0 or at < first):
                first = at
        return first

    def offset_of(self, index: int) -> int:
        """Where line `index` (not before `offset_line`) starts in `text`."""
        offset = self.offset
        lines = self.lines
        for i in range(self.offset_line, index):
            offset += len(lines[i]) + 1
        self.offset_line = index
        self.offset = offset
        return offset


@dataclass(slots=True)
class _ExpansionSource:
    """The remaining lines of a multi-line definition, all placed at the `$NAME` use."""

    lines: list[str]
    path: str
    line: int
    span: Span
    index: int = 0


@dataclass(slots=True)
class _SeqSource:
    """`~SEQ`/`~LST`: the rest of the line, repeated with variables set (man page)."""

    text: _Text
    assignments: list[list[tuple[str, str]]]
    index: int = 0


_Source = _FileSource | _ExpansionSource | _SeqSource


@dataclass
class _Preprocessor:
    config_id: str
    diagnostics: list[Diagnostic]
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    out: list[Line | PlainRun] = field(default_factory=list)
    stack: list[_Source] = field(default_factory=list)
    defs: dict[str, _Def] = field(default_factory=dict)
    collecting: tuple[str, _Text] | None = None
    generated: int = 0
    overflow_reported: bool = False

    def __post_init__(self) -> None:
        self.defs["_PWD"] = _Def("", fn=lambda _params: os.path.abspath(self._current_dir()))
        self.defs["_INSTANCE"] = _Def(self.config_id)
        self.defs["_RANDOM"] = _Def("", max_params=2, fn=self._random)
        self.defs["_HASH"] = _Def("#")
        self.defs["_BANG"] = _Def("!")

    # ---- diagnostics

    def error(self, pos: SourcePos, message: str, *, code: str = "", hint: str = "") -> None:
        self.diagnostics.append(Diagnostic(Severity.ERROR, pos, message, code, hint))

    def warning(self, pos: SourcePos, message: str, *, code: str, hint: str = "") -> None:
        self.diagnostics.append(Diagnostic(Severity.WARNING, pos, message, code, hint))

    # ---- helpers

    def _current_dir(self) -> Path:
        for src in reversed(self.stack):
            if isinstance(src, _FileSource):
                return src.directory
        return Path.cwd()

    def _random(self, params: tuple[int, ...]) -> str:
        # man page "Pre-defined definitions": ${_RANDOM [MIN [MAX]]}, defaults 0 and 32767.
        # Seeded, so that checking the same file twice gives the same result.
        low = params[0] if params else 0
        high = params[1] if len(params) > 1 else 32767
        if high < low:
            low, high = high, low
        return str(self.rng.randint(low, high))

    # ---- the main loop

    def run_file(self, path: str, text: str, directory: Path, real: str) -> list[Line | PlainRun]:
        self.stack.append(_FileSource(path, directory, text, text.split("\n"), real))
        while self.stack:
            if self.collecting is None and isinstance(self.stack[-1], _FileSource):
                self._plain_lines(self.stack[-1])
                if not self.stack:
                    break
            item = self._next_text()
            if item is not None:
                self._process(item)
        if self.collecting is not None:
            self._finish_definition()
        return self.out

    def _plain_lines(self, src: _FileSource) -> None:
        """Emit the file's lines that need none of the preprocessing, as fast as possible.

        Stops (leaving the line unread) at the first line with a character that matters to
        preprocessing, which then goes through `_next_text` and `_process` as usual. The
        lines passed over are emitted as one `PlainRun`.
        """
        lines = src.lines
        text = src.text
        start = src.index
        offset = src.offset_of(start)
        # The first special character, searched in the whole text at once (a per-line loop
        # took a tenth of the load time of a large file); its line is the first one left.
        found = src.special(offset)
        end = len(text) if found < 0 else found
        # An include line, also left: "include" after nothing but blanks on its line.
        at = text.find("include", offset, end)
        while at >= 0:
            head = max(text.rfind("\n", offset, at) + 1, offset)
            if not text[head:at].strip(" \t\r"):
                end = head
                break
            at = text.find("include", at + 7, end)
        stop = min(start + text.count("\n", offset, end), len(lines))
        if found < 0 and at < 0:
            stop = len(lines)
        # A line too long to be sure it fits keepalived's buffer is left too.
        if stop > start and max(map(len, lines[start:stop])) > _LONG_LINE_CHARS:
            stop = next(i for i in range(start, stop) if len(lines[i]) > _LONG_LINE_CHARS)
        if stop > start:
            self.out.append(PlainRun(src.path, lines, start, stop))
        src.index = stop

    def _next_text(self) -> _Text | None:
        """The next line from the top source (decommented), or None when it had nothing."""
        src = self.stack[-1]
        if isinstance(src, _FileSource):
            if src.index >= len(src.lines):
                self.stack.pop()
                return None
            lineno = src.index + 1
            raw = src.lines[src.index]
            src.index += 1
            raw = raw.rstrip("\r")
            if len(raw) > _LONG_LINE_CHARS and len(raw.encode()) > KEEPALIVED_MAX_LINE:
                # parser.c reads lines with fgets(buf, MAXBUF=1024): a longer line is cut and
                # its tail read as a line of its own.
                self.warning(
                    SourcePos(src.path, lineno, 1, lineno, len(raw) + 1),
                    f"line longer than keepalived's limit of {KEEPALIVED_MAX_LINE} bytes; "
                    "keepalived would read its tail as a separate line",
                    code="line-too-long",
                    hint="split it, e.g. move a long script command into a script file",
                )
            if not raw:
                # An empty line ends a multi-line definition (parser.c read_line).
                if self.collecting is not None:
                    self._finish_definition()
                return None
            text = _decomment(raw, src.path, lineno)
            if text.word_comment:
                col = text.word_comment
                char = raw[col - 1]
                self.warning(
                    SourcePos(src.path, lineno, col, lineno, col + 1),
                    f"'{char}' starts a comment here, in the middle of a word: the rest of the "
                    "line is ignored",
                    code="comment-in-word",
                    hint=f"quote the value (\"...{char}...\") to keep the '{char}', or write "
                    f"'\\{char}'",
                )
            return text if text.s else None
        if isinstance(src, _ExpansionSource):
            if src.index >= len(src.lines):
                self.stack.pop()
                return None
            s = src.lines[src.index]
            src.index += 1
            return _Text(s, src.path, src.line, 1, [src.span] * len(s))
        # _SeqSource
        if src.index >= len(src.assignments):
            self.stack.pop()
            return None
        for name, value in src.assignments[src.index]:
            self.defs[name] = _Def(value)
        src.index += 1
        if not self._count_generated(src.text):
            self.stack.pop()
            return None
        t = src.text
        return _Text(t.s, t.path, t.line, t.base, t.spans, t.continued)

    def _count_generated(self, where: _Text) -> bool:
        self.generated += 1
        if self.generated <= MAX_GENERATED_LINES:
            return True
        if not self.overflow_reported:
            self.overflow_reported = True
            self.error(
                where.pos(0, len(where.s)),
                f"expansion produces more than {MAX_GENERATED_LINES:,} lines; stopped here",
                code="expansion-limit",
            )
        return False

    def _process(self, t: _Text) -> None:
        if self.collecting is not None:
            self._collect(t)
            return
        for _ in range(_MAX_SUBSTITUTIONS_PER_LINE):
            recheck = False
            if t.s.startswith("@"):
                kept = self._conditional(t)
                if kept is None:
                    return
                t = kept
            if t.s.startswith("$") and self._definition(t):
                return
            if t.s.startswith("~"):
                if t.s.startswith(("~SEQ", "~LST")):
                    self._sequence(t)
                    return
                break  # parser.c: any other '~' line is taken as written
            if "$" in t.s:
                replaced = self._substitute(t)
                if replaced is None:
                    break
                t = replaced
                recheck = t.s.startswith("@") or "$" in t.s
            if not recheck:
                break
        if not t.s:
            return
        m = _INCLUDE.match(t.s)
        if m is not None:
            self._include(t, m.group(1), m.end())
            return
        self.out.append(t.to_line())

    # ---- @conditionals (man page "Conditional configuration and configuration id")

    def _conditional(self, t: _Text) -> _Text | None:
        negate = t.s.startswith("@^")
        start = 2 if negate else 1
        m = _BLANK.search(t.s)
        if m is None:
            return None  # parser.c: nothing after the id, the line is dropped
        ident = t.s[start : m.start()]
        if (ident == self.config_id) == negate:
            return None
        return t.tail(m.end())

    # ---- $NAME=value definitions (man page "Parameter substitution")

    def _definition(self, t: _Text) -> bool:
        m = _DEFINITION.match(t.s)
        if m is None:
            return False
        name = m.group(1)
        value = t.s[m.end() :]
        if t.continued and value.endswith("\\"):
            value = value[:-1].rstrip(" \t")
            self.defs[name] = _Def(value + "\n" if value else "", multiline=True)
            self.collecting = (name, t)
            return True
        self.defs[name] = _Def(value)
        return True

    def _collect(self, t: _Text) -> None:
        name, _ = self.collecting or ("", t)
        d = self.defs[name]
        s = t.s
        more = t.continued and s.endswith("\\")
        if more:
            s = s[:-1].rstrip(" \t") + "\n"
        if len(s) >= 2 or (s and not more):
            d.value += s
        if not more:
            self._finish_definition()

    def _finish_definition(self) -> None:
        if self.collecting is None:
            return
        name, _ = self.collecting
        self.collecting = None
        d = self.defs[name]
        d.value = d.value.rstrip("\n")
        if not d.value:
            d.multiline = False

    # ---- substitution (parser.c replace_param / find_definition)

    def _lookup(self, s: str, i: int) -> tuple[_Def, int, tuple[int, ...]] | None:
        """The definition used at s[i] == '$', the end of the reference, and its params."""
        braces = s.startswith("{", i + 1)
        m = _NAME.match(s, i + 2 if braces else i + 1)
        if m is None:
            return None
        name = m.group(0)
        end = m.end()
        params: tuple[int, ...] = ()
        if braces:
            pm = _BRACED_PARAMS.match(s, end)
            if pm is None:
                return None
            raw = pm.group(1)
            if raw.strip():
                if raw.endswith(" "):
                    return None
                params = tuple(int(x) for x in raw.split())
            end = pm.end()
        elif end < len(s) and s[end] not in " \t,)":
            return None
        d = self.defs.get(name)
        if d is None:
            return None
        if d.multiline and end != len(s):
            return None  # a multi-line definition must end the line (man page)
        if params and not d.max_params:
            return None
        return d, end, params[: d.max_params]

    def _explain_unsubstituted(self, t: _Text, i: int) -> _Text | None:
        """Diagnose a `$` that is not substituted although it looks meant to be.

        `$NAME` directly followed by anything but a blank, ',' or ')' is left as written by
        keepalived even when NAME is defined: a warning suggests `${NAME}`. An undefined
        `${NAME}` outside quotes would be cut at its braces into a stray block: an error,
        and the reference is removed so that one mistake gives one message. Returns the
        new text when it changed. (`$` inside quotes may well be for a script's shell.)
        """
        s = t.s
        braces = s.startswith("{", i + 1)
        m = _NAME.match(s, i + 2 if braces else i + 1)
        if m is None:
            return None
        name = m.group(0)
        if not braces:
            d = self.defs.get(name)
            if d is not None and not d.multiline and m.end() < len(s):
                self.warning(
                    t.pos(i, m.end()),
                    f"'${name}' is followed by '{s[m.end()]}', so it is not substituted",
                    code="unsubstituted-variable",
                    hint=f"write '${{{name}}}' to substitute it here",
                )
            return None
        close = s.find("}", m.end())
        if name in self.defs or close < 0 or s.count('"', 0, i) % 2:
            return None
        known = [n for n in self.defs if not n.startswith("_")]
        close_matches = difflib.get_close_matches(name, known, n=1)
        self.error(
            t.pos(i, close + 1),
            f"undefined variable '{name}'",
            code="undefined-variable",
            hint=f"did you mean '{close_matches[0]}'?"
            if close_matches
            else f"define it first with ${name}=VALUE",
        )
        return t.replace(i, close + 1, "", t.span_of(i, close + 1))

    def _substitute(self, t: _Text) -> _Text | None:
        s = t.s
        pos = 0
        changed = False
        count = 0
        while True:
            i = s.find("$", pos)
            if i < 0 or i == len(s) - 1:
                break
            found = self._lookup(s, i)
            if found is None:
                fixed = self._explain_unsubstituted(t, i)
                if fixed is not None:
                    t, s, changed = fixed, fixed.s, True
                pos = i + 1
                continue
            d, end, params = found
            count += 1
            if count > _MAX_SUBSTITUTIONS_PER_LINE or len(s) > _MAX_LINE_LENGTH:
                self.error(
                    t.pos(i, end),
                    f"substitution of '{s[i:end]}' does not terminate",
                    code="recursive-definition",
                    hint="a definition refers to itself, directly or through others",
                )
                return None
            value = d.fn(params) if d.fn is not None else d.value
            span = t.span_of(i, end)
            if d.multiline:
                first, _, rest = value.partition("\n")
                value = first
                if rest:
                    self.stack.append(_ExpansionSource(rest.split("\n"), t.path, t.line, span))
            t = t.replace(i, end, value, span)
            s = t.s
            changed = True
            # Replacement is recursive: rescan from the same place (man page).
            if value.lstrip(" \t").startswith("~"):
                break
        return t if changed else None

    # ---- ~SEQ / ~LST (man page "Sequence blocks", "List blocks")

    def _sequence(self, t: _Text) -> None:
        m = _SEQ_HEAD.match(t.s)
        if m is None:
            self.error(
                t.pos(0, len(t.s)),
                f"invalid {t.s[:4]} specification",
                code="bad-sequence",
                hint="~SEQ(var, [start, [step,]] end)",
            )
            return
        kind, hexa = m.group(1), bool(m.group(2))
        close = t.s.find(")", m.end())
        if kind == "LST":
            close = _find_lst_close(t.s, m.end())
        if close < 0:
            self.error(t.pos(0, len(t.s)), f"~{kind} has no closing ')'", code="bad-sequence")
            return
        inner = t.s[m.end() : close]
        # Parameters of ~SEQ may themselves be definitions (parser.c add_seq).
        sub = self._substitute(_Text(inner, t.path, t.line, 1, t.span_list()[m.end() : close]))
        if sub is not None:
            inner = sub.s
        where = t.pos(0, close + 1)
        if kind == "SEQ":
            assignments = self._seq_assignments(inner, hexa, where, t.s[: close + 1])
        else:
            assignments = self._lst_assignments(inner, where)
        if assignments is None:
            return
        rest = t.tail(close + 1)
        if rest.s and assignments:
            self.stack.append(_SeqSource(rest, assignments))

    def _seq_assignments(
        self, inner: str, hexa: bool, where: SourcePos, spec: str
    ) -> list[list[tuple[str, str]]] | None:
        parts = [p.strip(" \t") for p in inner.split(",")]
        var = parts[0]
        if not _NAME.fullmatch(var) or not 2 <= len(parts) <= 4:
            self.error(
                where,
                f"invalid ~SEQ specification '{spec}'",
                code="bad-sequence",
                hint="~SEQ(var, [start, [step,]] end)",
            )
            return None
        try:
            nums = [_c_long(p) for p in parts[1:]]
        except ValueError:
            self.error(
                where,
                f"invalid ~SEQ specification '{spec}'",
                code="bad-sequence",
                hint="start, step and end are integers (0x.. for hexadecimal)",
            )
            return None
        if len(nums) == 1:
            end = nums[0]
            step = -1 if end < 1 else 1
            start = -1 if end < 0 else 1
        elif len(nums) == 2:
            start, end = nums
            step = 1 if start <= end else -1
        else:
            start, step, end = nums
            if step == 0 or (start < end and step < 0) or (start > end and step > 0):
                self.error(
                    where,
                    f"invalid ~SEQ values '{spec}'",
                    code="bad-sequence",
                    hint="step must be non-zero and go from start towards end",
                )
                return None
        if hexa and (start < 0 or end < 0):
            self.error(
                where, f"~SEQx is only valid for non-negative numbers '{spec}'", code="bad-sequence"
            )
            return None
        count = (end - start) // step + 1 if (end - start) * step >= 0 else 1
        if count > MAX_GENERATED_LINES:
            self.error(
                where,
                f"~SEQ produces {count:,} lines, more than the limit of {MAX_GENERATED_LINES:,}",
                code="expansion-limit",
            )
            return None
        values = range(start, end + (1 if step > 0 else -1), step)
        fmt = "{:x}" if hexa else "{:d}"
        return [[(var, fmt.format(v))] for v in values]

    def _lst_assignments(self, inner: str, where: SourcePos) -> list[list[tuple[str, str]]] | None:
        groups = _split_lst(inner)
        if groups is None or len(groups) < 2:
            self.error(
                where,
                "invalid ~LST specification",
                code="bad-sequence",
                hint="~LST(var, v1, v2, ...) or ~LST({A, B}, {a1, b1}, {a2, b2})",
            )
            return None
        names = groups[0]
        if not names or not all(_NAME.fullmatch(n) for n in names):
            self.error(where, "invalid ~LST variable list", code="bad-sequence")
            return None
        result: list[list[tuple[str, str]]] = []
        for values in groups[1:]:
            if len(values) != len(names):
                self.error(
                    where,
                    f"~LST value set {{{', '.join(values)}}} does not have {len(names)} values",
                    code="bad-sequence",
                )
                return None
            result.append(list(zip(names, values, strict=True)))
        return result

    # ---- include (man page DESCRIPTION; parser.c check_include / open_and_check_glob)

    def _include(self, t: _Text, variant: str, start: int) -> None:
        rest = t.tail(start)
        pattern = rest.s
        where = rest.pos(0, len(pattern))
        if len(pattern) >= 2 and pattern[0] == pattern[-1] == '"':
            pattern = pattern[1:-1]  # quotes are not part of the name
        if not pattern:
            self.error(t.pos(0, len(t.s)), "include needs a file name or pattern", code="include")
            return
        depth = sum(1 for s in self.stack if isinstance(s, _FileSource))
        if depth >= INCLUDE_DEPTH_LIMIT:
            self.error(
                where, f"includes nested more than {INCLUDE_DEPTH_LIMIT} deep", code="include-depth"
            )
            return
        directory = self._current_dir()
        patterns = expand_braces(pattern)
        has_wild = any(_GLOB_CHARS.search(p) for p in patterns)
        matches: list[str] = []
        missing: list[str] = []
        for p in patterns:
            full = p if os.path.isabs(p) else os.path.join(str(directory), p)
            if _GLOB_CHARS.search(p):
                # glob(3) results are sorted; hidden files need an explicit '.' as in glibc.
                matches.extend(sorted(glob.glob(full)))
            elif os.path.lexists(full):
                matches.append(full)
            else:
                missing.append(p)
        for p in missing:
            # Stricter than keepalived, whose plain `include` only logs a missing file:
            # a file that is named but absent silently changes the configuration's meaning.
            self.error(
                where,
                f"included file '{p}' does not exist",
                code="include-missing",
                hint=_similar_file(p, directory),
            )
        if not matches:
            if has_wild and not missing:
                if variant in ("w", "a"):
                    self.error(where, f"no file matches '{pattern}'", code="include-no-match")
                else:
                    # keepalived: an empty wildcard match is not an error (conf.d/* idiom).
                    self.warning(where, f"no file matches '{pattern}'", code="include-no-match")
            return
        # Push in reverse so that the first match is read first.
        for full in reversed(matches):
            self._open_included(full, where)

    def _open_included(self, full: str, where: SourcePos) -> None:
        shown = os.path.normpath(full)
        if os.path.isdir(full):
            self.warning(
                where,
                f"'{shown}' is a directory; skipped (as keepalived does)",
                code="include-skipped",
            )
            return
        try:
            st = os.stat(full)
        except (OSError, ValueError) as exc:
            self.error(
                where,
                f"cannot read included file '{shown}': {getattr(exc, 'strerror', None) or exc}",
                code="include-unreadable",
            )
            return
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o111:
            # keepalived skips these ("not a regular non-executable file - skipping").
            self.warning(
                where,
                f"'{shown}' is not a regular non-executable file; skipped (as keepalived does)",
                code="include-skipped",
            )
            return
        if st.st_size > MAX_FILE_SIZE:
            self.error(
                where,
                f"included file '{shown}' is larger than {MAX_FILE_SIZE >> 20} MiB",
                code="include-too-large",
            )
            return
        real = os.path.realpath(full)
        for src in self.stack:
            if isinstance(src, _FileSource) and src.real == real:
                self.error(
                    where, f"include loop: '{shown}' is already being read", code="include-loop"
                )
                return
        try:
            data = Path(full).read_bytes()
        except (OSError, ValueError) as exc:
            self.error(
                where,
                f"cannot read included file '{shown}': {getattr(exc, 'strerror', None) or exc}",
                code="include-unreadable",
            )
            return
        text = decode_config_bytes(data, shown, self.diagnostics)
        if text is None:
            return
        self.stack.append(_FileSource(shown, Path(full).parent, text, text.split("\n"), real))


def _similar_file(missing: str, directory: Path) -> str:
    """A did-you-mean for a missing include, from the files next to where it should be."""
    full = missing if os.path.isabs(missing) else os.path.join(str(directory), missing)
    parent, name = os.path.split(full)
    try:
        names = os.listdir(parent or ".")
    except (OSError, ValueError):
        return ""
    close = difflib.get_close_matches(name, names, n=1)
    if not close:
        return ""
    head = os.path.split(missing)[0]
    return f"did you mean '{os.path.join(head, close[0])}'?"


def _c_long(text: str) -> int:
    """strtol(text, 0): decimal, 0x hexadecimal or 0 octal, as ~SEQ reads its numbers."""
    t = text.strip(" \t")
    neg = t.startswith("-")
    body = t[1:] if t[:1] in "+-" else t
    if body.lower().startswith("0x"):
        value = int(body[2:], 16)
    elif len(body) > 1 and body.startswith("0"):
        value = int(body[1:], 8)
    else:
        if not body.isdigit():
            raise ValueError(text)
        value = int(body)
    return -value if neg else value


def _find_lst_close(s: str, start: int) -> int:
    depth = 0
    for i in range(start, len(s)):
        if s[i] == "{":
            depth += 1
        elif s[i] == "}":
            depth -= 1
        elif s[i] == ")" and depth == 0:
            return i
    return -1


def _split_lst(inner: str) -> list[list[str]] | None:
    """`A, 1, 2` -> [[A], [1], [2]]; `{A, B}, {1, 2}` -> [[A, B], [1, 2]]."""
    groups: list[list[str]] = []
    i = 0
    n = len(inner)
    while i < n:
        while i < n and inner[i] in " \t":
            i += 1
        if i < n and inner[i] == "{":
            close = inner.find("}", i)
            if close < 0:
                return None
            groups.append([v.strip(" \t") for v in inner[i + 1 : close].split(",")])
            i = close + 1
            while i < n and inner[i] in " \t":
                i += 1
            if i < n and inner[i] != ",":
                return None
            i += 1
        else:
            comma = inner.find(",", i)
            if comma < 0:
                comma = n
            groups.append([inner[i:comma].strip(" \t")])
            i = comma + 1
    return groups


def expand_braces(pattern: str) -> list[str]:
    """csh-style brace expansion, as glob(GLOB_BRACE): `a{b,c{d,e}}` -> abd... in order.

    A `\\` escapes the next character; a brace without a matching close is literal.
    """
    depth = 0
    start = -1
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                alternatives = _split_top_commas(pattern[start + 1 : i])
                head, tail = pattern[:start], pattern[i + 1 :]
                out: list[str] = []
                for alt in alternatives:
                    out.extend(expand_braces(head + alt + tail))
                return out
        i += 1
    return [pattern]


def _split_top_commas(s: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    last = 0
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(s[last:i])
            last = i + 1
        i += 1
    parts.append(s[last:])
    return parts


def preprocess(
    text: str,
    *,
    path: str,
    config_id: str,
    base_dir: Path,
    diagnostics: list[Diagnostic],
) -> list[Line]:
    """Run the line-level pass over one top-level file (and what it includes).

    Args:
        text: the decoded content of the top-level file.
        path: the name diagnostics use for it.
        config_id: compared with `@ID` / `@^ID` prefixes; also `${_INSTANCE}`.
        base_dir: the directory relative includes (and `${_PWD}`) resolve against.
        diagnostics: problems are appended here; nothing is raised for user input.

    Returns:
        The logical lines, in reading order, each with the origin of every character.
    """
    found: list[Line] = []
    for item in preprocess_runs(
        text, path=path, config_id=config_id, base_dir=base_dir, diagnostics=diagnostics
    ):
        if isinstance(item, PlainRun):
            found.extend(item.to_lines())
        else:
            found.append(item)
    return found


def preprocess_runs(
    text: str,
    *,
    path: str,
    config_id: str,
    base_dir: Path,
    diagnostics: list[Diagnostic],
) -> list[Line | PlainRun]:
    """`preprocess`, with runs of lines that need no preprocessing left as `PlainRun`s."""
    real = os.path.realpath(path) if not path.startswith("<") else path
    pre = _Preprocessor(config_id, diagnostics)
    return pre.run_file(path, text, base_dir, real)
