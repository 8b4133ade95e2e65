"""The configuration's syntax layer: text -> a tree of generic statements with positions.

A keepalived configuration is a sequence of statements `keyword arg... [{ statement... }]`.
This module owns the lexical features (comments, quoting, include, @conditionals,
$VARIABLES, ~SEQ, line continuation) and produces the statement tree, in two forms: `Stmt`
trees whose every `Word` keeps its own `SourcePos`, and the compact `Node`s `build.py`
reads, whose words are plain strings with positions worked out on demand. It knows no
keyword: meaning is `build.py`'s job.

Pipeline: `preprocess.py` (keepalived's line-level pass) -> the word tokenizer here ->
brace balancing (so that one missing `}` is reported once, at the keyword whose block it
leaves open) -> the LALR(1) tables lark builds from `grammar.lark`, whose reductions make
the `Stmt`s. A file whose braces are in order (nearly every file) takes a one-pass fast path
(`_scan`) that tokenizes, matches braces and nests at once, into the tree the grammar gives
such a file; the other steps handle the rest, with their diagnostics and recovery
(test_fast_path checks that both paths give the same statements, model and diagnostics).

Invariants:
* `parse_text` / `parse_file` never raise for any user input; every problem is a
  `Diagnostic` with a position, and parsing recovers so that later problems are reported.
  `parse_file` raises `OSError` only when the top-level file cannot be read at all.
* Positions are 1-based; `end_column` is exclusive. A word produced by `$NAME`
  substitution points at the `$NAME` use; a word from an included file points into that
  file.
* Blocks nest at most `MAX_DEPTH` deep in the result, so every consumer may walk the tree
  recursively.
"""

from __future__ import annotations

import gc
import re
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from hactl.config.preprocess import Line, PlainRun, decode_config_bytes, preprocess_runs
from hactl.errors import Diagnostic, Severity, SourcePos

__all__ = [
    "MAX_DEPTH",
    "Node",
    "Stmt",
    "SyntaxResult",
    "Word",
    "default_config_id",
    "keyword_pos",
    "node_pos",
    "node_stmt",
    "node_words",
    "parse_file",
    "parse_text",
    "split_command",
    "stmt_node",
]

# keepalived's deepest real nesting is about five levels (virtual_server > real_server >
# HTTP_GET > url); anything far deeper is a broken or hostile file.
MAX_DEPTH = 100


@dataclass(frozen=True, slots=True)
class Word:
    """One token as written: its text after substitution, and where it came from."""

    text: str
    pos: SourcePos
    quoted: bool = False


@dataclass(frozen=True, slots=True)
class Stmt:
    """`keyword args... [{ block }]`; `block` is None when there were no braces."""

    keyword: Word
    args: tuple[Word, ...]
    block: tuple[Stmt, ...] | None
    pos: SourcePos


@dataclass(frozen=True, slots=True)
class SyntaxResult:
    """The statements of a configuration and the problems found reading them.

    `diagnostics` are sorted by position; when any is an error, `nodes` is the best
    recovery (still a well-formed tree), good enough to report later problems from.
    """

    nodes: tuple[Node, ...]
    diagnostics: tuple[Diagnostic, ...]

    @property
    def stmts(self) -> tuple[Stmt, ...]:
        """The statements as a `Stmt` tree (made on each call; `build` reads `nodes`)."""
        return tuple(node_stmt(node) for node in self.nodes)

    @property
    def has_errors(self) -> bool:
        return any(d.severity is Severity.ERROR for d in self.diagnostics)


def default_config_id() -> str:
    """keepalived's default for `-i`: the first part of the node name (man page)."""
    return socket.gethostname().split(".", 1)[0]


# --------------------------------------------------------------------------- fast construction

# The general path makes a position, a word and a statement per token. A frozen dataclass's
# generated __init__ sets each field through object.__setattr__, which costs about twice as
# much as setting the slots directly; these helpers build the very same objects that way
# (same class, every field set; test_syntax checks the field lists still match). A
# position, a named tuple, is made by tuple.__new__ without the Python-level __new__.
_new = object.__new__
_new_tuple = tuple.__new__


_set_text, _set_word_pos, _set_quoted = (getattr(Word, f).__set__ for f in Word.__slots__)
_set_keyword, _set_args, _set_block, _set_stmt_pos = (
    getattr(Stmt, f).__set__ for f in Stmt.__slots__
)


def _word(text: str, pos: SourcePos, quoted: bool) -> Word:
    word: Word = object.__new__(Word)
    _set_text(word, text)
    _set_word_pos(word, pos)
    _set_quoted(word, quoted)
    return word


def _stmt(
    keyword: Word, args: tuple[Word, ...], block: tuple[Stmt, ...] | None, pos: SourcePos
) -> Stmt:
    stmt: Stmt = object.__new__(Stmt)
    _set_keyword(stmt, keyword)
    _set_args(stmt, args)
    _set_block(stmt, block)
    _set_stmt_pos(stmt, pos)
    return stmt


def _pos(path: str, line: int, column: int, end_line: int, end_column: int) -> SourcePos:
    return _new_tuple(SourcePos, (path, line, column, end_line, end_column))


# --------------------------------------------------------------------------- tokenizer

# keepalived's alloc_strvec: words are separated by blanks; a word starting with '"' runs
# to the next '"' (kept without the quotes, blanks included, no escapes); an unquoted word
# also ends at '"'. read_line additionally cuts a line at every '{' or '}' outside quotes.
_TOKEN = re.compile(r'"([^"]*)("?)|([{}])|[^ \t\f\v\r\n"{}]+')
_PLAIN_TOKEN = re.compile(r"[{}]|[^ \t\f\v\r\n{}]+")

_LBRACE = 1
_RBRACE = 2
_INCLUDE_WORDS = frozenset(("include", "includer", "includem", "includew", "includeb", "includea"))


# The parser's tokens: ("STMT", its Stmt) for a `keyword arg...` run, ("OPEN", its words)
# for one that opens a block, ("CLOSE", position of the '}' or None when recovery added it).
_Tok = tuple[str, Any]


def _close_token(where: SourcePos | None) -> _Tok:
    return ("CLOSE", where)


# An item of the flat stream between tokenizer and parser.
_Item = tuple[int, Any, SourcePos | None]  # (0, words, None) | (_LBRACE/_RBRACE, col, pos)


def _tokenize(lines: list[Line], diagnostics: list[Diagnostic]) -> list[_Item]:
    items: list[_Item] = []
    append = items.append
    finditer = _TOKEN.finditer
    plain_finditer = _PLAIN_TOKEN.finditer
    new = _new
    new_tuple = _new_tuple
    set_text, set_word_pos, set_quoted = _set_text, _set_word_pos, _set_quoted
    for path, lineno, text, base, spans, continued in lines:
        if continued and text.endswith("\\"):
            # keepalived keeps this '\' as part of the line: it continues only a
            # definition. Anyone writing it elsewhere expects a continuation that
            # does not happen, so it is an error, not a silent change of meaning.
            col = base + len(text) - 1 if spans is None else spans[-1][0]
            diagnostics.append(
                Diagnostic(
                    Severity.ERROR,
                    SourcePos(path, lineno, col, lineno, col + 1),
                    "a '\\' at the end of a line continues only a $NAME= definition",
                    "line-continuation",
                    "write the statement on one line",
                )
            )
            text = text[:-1]
        words: list[Word] = []
        if spans is None and '"' not in text:
            # The common case, kept lean: no quotes, columns are offsets from `base`.
            first = True
            for m in plain_finditer(text):
                w = m.group()
                col = base + m.start()
                if w == "{" or w == "}":
                    if words:
                        append((0, tuple(words), None))
                        words = []
                    append(
                        (
                            _LBRACE if w == "{" else _RBRACE,
                            col if first else 0,
                            _pos(path, lineno, col, lineno, col + 1),
                        )
                    )
                else:
                    # _word(w, _pos(...), False), inlined: this line runs once per word.
                    pos = new_tuple(SourcePos, (path, lineno, col, lineno, col + len(w)))
                    word = new(Word)
                    set_text(word, w)
                    set_word_pos(word, pos)
                    set_quoted(word, False)
                    words.append(word)
                first = False
            if words:
                append((0, tuple(words), None))
            continue
        first = True
        for m in finditer(text):
            start, end = m.span()
            if spans is None:
                col, end_col = base + start, base + end
            else:
                col = spans[start][0]
                end_col = max(s[1] for s in spans[start:end])
            brace = m.group(3)
            if brace is not None:
                if words:
                    append((0, tuple(words), None))
                    words = []
                append(
                    (
                        _LBRACE if brace == "{" else _RBRACE,
                        col if first else 0,
                        _pos(path, lineno, col, lineno, end_col),
                    )
                )
                first = False
                continue
            first = False
            pos = _pos(path, lineno, col, lineno, end_col)
            quoted = m.group(1)
            if quoted is None:
                words.append(_word(m.group(0), pos, False))
                continue
            if not m.group(2):
                diagnostics.append(
                    Diagnostic(
                        Severity.ERROR,
                        SourcePos(path, lineno, col, lineno, col + 1),
                        "unterminated quoted string",
                        "unterminated-quote",
                        "add the closing '\"' on the same line",
                    )
                )
            words.append(_word(quoted, pos, True))
        if words:
            append((0, tuple(words), None))
    return items


# --------------------------------------------------------------------------- compact form


class Node(NamedTuple):
    """A statement in the compact form the model is built from (`build.py`).

    A large file has hundreds of thousands of statements, and the model needs only the
    positions of its blocks and of the keywords a diagnostic or `keyword_pos` names. So the
    words are plain strings and their positions are worked out when asked for
    (`node_words`), from `src`: the physical line a plain statement was read from (a line
    with no preprocessing to do, holding one statement and at most its trailing '{'), or the
    statement's `Word`s otherwise. `pos` is kept for a block (its position runs to its '}'),
    and is None for a leaf read from a plain line (`node_pos` computes it).
    """

    keyword: str
    args: tuple[str, ...]
    block: tuple[Node, ...] | None
    line: int
    src: str | tuple[Word, ...]
    path: str
    pos: SourcePos | None


_PLAIN_WORD = re.compile(r"[^ \t\f\v\r\n{}]+")


def node_words(node: Node) -> tuple[Word, ...]:
    """The statement's words, with their positions."""
    src = node.src
    if type(src) is tuple:
        return src
    assert isinstance(src, str)
    path, line = node.path, node.line
    words: list[Word] = []
    count = 1 + len(node.args)
    # A plain line's words are its first runs of non-blanks, braces excluded.
    for m in _PLAIN_WORD.finditer(src):
        start, end = m.span()
        words.append(_word(m.group(), _pos(path, line, start + 1, line, end + 1), False))
        if len(words) == count:
            break
    return tuple(words)


def keyword_pos(node: Node) -> SourcePos:
    """Where the statement's keyword is."""
    src = node.src
    if type(src) is tuple:
        return src[0].pos
    assert isinstance(src, str)
    # The keyword is the line's first word: its first occurrence (blanks precede it).
    col = src.find(node.keyword) + 1
    return _new_tuple(SourcePos, (node.path, node.line, col, node.line, col + len(node.keyword)))


def node_pos(node: Node) -> SourcePos:
    """The statement's position: from its keyword to its last word, or to its '}'."""
    pos = node.pos
    if pos is not None:
        return pos
    src = node.src
    if type(src) is str:
        # A leaf on a plain line runs from the line's first word to the end of its last.
        column = src.find(node.keyword) + 1
        line = node.line
        return _new_tuple(SourcePos, (node.path, line, column, line, len(src.rstrip()) + 1))
    assert isinstance(src, tuple)
    return _leaf_pos(src)


def node_stmt(node: Node) -> Stmt:
    """The `Stmt` tree of a node, every word with its position."""
    words = node_words(node)
    block = None if node.block is None else tuple(node_stmt(child) for child in node.block)
    return _stmt(words[0], words[1:], block, node_pos(node))


def stmt_node(stmt: Stmt) -> Node:
    """The node of a `Stmt` tree (the reference path, and `build` given statements)."""
    keyword = stmt.keyword
    block = None if stmt.block is None else tuple(stmt_node(child) for child in stmt.block)
    return _new_tuple(
        Node,
        (
            keyword.text,
            tuple(w.text for w in stmt.args),
            block,
            keyword.pos.line,
            (keyword, *stmt.args),
            keyword.pos.path,
            stmt.pos,
        ),
    )


def _word_node(words: tuple[Word, ...]) -> Node:
    """The leaf node of a tokenizer run."""
    kp = words[0].pos
    texts = tuple(w.text for w in words)
    return _new_tuple(Node, (texts[0], texts[1:], None, kp.line, words, kp.path, None))


def _closed(opening: Node, block: list[Node], close: SourcePos | None) -> Node:
    """The node of a block: `opening` (a leaf so far) with its statements, through its '}'."""
    words = node_words(opening)
    pos = _block_pos(words, close)
    return _new_tuple(
        Node,
        (opening.keyword, opening.args, tuple(block), opening.line, words, opening.path, pos),
    )


# --------------------------------------------------------------------------- fast path


# The shape of a plain line (`_line_shape`): what `_scan` does with it.
_BLANK_LINE = 0  # nothing
_LEAF_LINE = 1  # a statement: (_LEAF_LINE, keyword, args)
_OPEN_LINE = 2  # a statement and the '{' of its block: (_OPEN_LINE, keyword, args)
_CLOSE_LINE = 3  # a '}' alone: (_CLOSE_LINE, its column)
_INCLUDE_LINE = 4  # an include after a brace: an error for `_match`
_OTHER_LINE = 5  # any other brace: the general tokenizer's


def _line_shape(raw: str, interned: dict[str, str]) -> tuple[Any, ...]:
    """What a plain line holds, from its text alone (see `_scan`)."""
    # A plain line holds no quote, comment or blank but " \t\f\v\r" (see preprocess), so
    # str.split finds keepalived's words.
    words = raw.split()
    if not words:
        return (_BLANK_LINE,)
    if "}" in raw:
        if len(words) == 1 and words[0] == "}":
            return (_CLOSE_LINE, raw.index("}") + 1)
        return (_OTHER_LINE,)
    shape = _LEAF_LINE
    if "{" in raw:
        # The '{' of its block, alone or glued to its last word; any other is the
        # tokenizer's.
        if raw.count("{") != 1 or words[-1][-1] != "{":
            return (_OTHER_LINE,)
        last = words.pop()
        if len(last) > 1:
            words.append(last[:-1])
        if not words:
            return (_OTHER_LINE,)
        shape = _OPEN_LINE
    # Interned: the keyword tables' own strings, one copy, quick lookups.
    keyword = interned.get(words[0])
    if keyword is None:
        keyword = interned[words[0]] = sys.intern(words[0])
    if keyword in _INCLUDE_WORDS:
        return (_INCLUDE_LINE,)
    return (shape, keyword, tuple(words[1:]))


def _scan(chunks: list[Line | PlainRun], diagnostics: list[Diagnostic]) -> list[Node] | None:
    """Tokenize, match braces and nest in one pass, for a file whose braces are all in order.

    Gives the statements `_tokenize` + `_balance` + the parser give (as nodes), or None as
    soon as anything needs their error handling (a stray or missing brace, nesting beyond
    MAX_DEPTH, include after a brace); the caller then runs them. Most files are in order:
    this pass reads the lines of a `PlainRun` straight from the file's text, and a line that
    is one statement (the common case) becomes one node, its words plain strings.
    `diagnostics` receives the tokenizer's own findings (quotes, continuation).

    A large file repeats most of its lines (`weight 1`, `TCP_CHECK {`, `}` ...): each
    distinct line is read once (`_line_shape`), and its repeats share the reading, their
    statements the same words.
    """
    top: list[Node] = []
    children = top  # of the innermost open block
    stack: list[tuple[Node, list[Node]]] = []  # open blocks: (opening statement, parent's)
    last_is_leaf = False  # children[-1] is a leaf: a '{' now opens its block
    new_tuple = _new_tuple
    include_words = _INCLUDE_WORDS
    interned: dict[str, str] = {}  # the keywords met so far, interned
    shapes: dict[str, tuple[Any, ...]] = {}  # plain line -> its shape
    shape_of = shapes.get
    path = ""
    lines: list[str] | None = None
    rows: range = range(1)
    for chunk in chunks:
        if type(chunk) is PlainRun:
            path, lines, first, stop = chunk
            rows = range(first, stop)
        else:
            lines = None
            rows = range(1)
        for index in rows:
            line_item: Line
            if lines is None:
                assert isinstance(chunk, Line)
                line_item = chunk
            else:
                raw = lines[index]
                shape = shape_of(raw)
                if shape is None:
                    shape = shapes[raw] = _line_shape(raw, interned)
                kind = shape[0]
                if kind == _LEAF_LINE:
                    children.append(
                        new_tuple(Node, (shape[1], shape[2], None, index + 1, raw, path, None))
                    )
                    last_is_leaf = True
                    continue
                if kind == _CLOSE_LINE and stack:
                    # A third of the lines of a large file: kept short.
                    opening, parent = stack.pop()
                    src = opening.src
                    if type(src) is str and opening.path == path:
                        column = src.find(opening.keyword) + 1
                        node = new_tuple(
                            Node,
                            (
                                opening.keyword,
                                opening.args,
                                tuple(children),
                                opening.line,
                                src,
                                path,
                                new_tuple(
                                    SourcePos,
                                    (path, opening.line, column, index + 1, shape[1] + 1),
                                ),
                            ),
                        )
                    else:
                        col = shape[1]
                        close_at = new_tuple(SourcePos, (path, index + 1, col, index + 1, col + 1))
                        node = _closed(opening, children, close_at)
                    parent.append(node)
                    children = parent
                    last_is_leaf = False
                    continue
                if kind == _OPEN_LINE and len(stack) < MAX_DEPTH:
                    stack.append(
                        (
                            new_tuple(Node, (shape[1], shape[2], None, index + 1, raw, path, None)),
                            children,
                        )
                    )
                    children = []
                    last_is_leaf = False
                    continue
                if kind == _BLANK_LINE:
                    continue
                if kind == _INCLUDE_LINE:
                    return None  # an error for `_match`
                # Braces elsewhere in the line (or a '}' or '{' with no block to close or
                # room to open): the general tokenizer, for this line.
                body = raw.strip(" \t\r")
                line_item = Line(path, index + 1, body, raw.index(body[0]) + 1, None, False)
            for kind, payload, where in _tokenize([line_item], diagnostics):
                if kind == 0:
                    if payload[0].text in include_words:
                        return None  # an error for `_match`
                    children.append(_word_node(payload))
                    last_is_leaf = True
                elif kind == _LBRACE:
                    if not last_is_leaf or len(stack) >= MAX_DEPTH:
                        return None
                    stack.append((children.pop(), children))
                    children = []
                    last_is_leaf = False
                else:
                    if not stack:
                        return None
                    opening, parent = stack.pop()
                    parent.append(_closed(opening, children, where))
                    children = parent
                    last_is_leaf = False
    if stack:
        return None
    return top


# --------------------------------------------------------------------------- braces


_REPAIR_PASSES = 16  # missing braces repaired from indentation, at most, per file


def _balance(items: list[_Item], diagnostics: list[Diagnostic]) -> list[_Tok]:
    """Match braces and turn the stream into parser tokens that always parse.

    Errors: a '{' with no keyword before it, a '}' with no block to close, blocks nested
    beyond MAX_DEPTH, and a block left open at the end (once, at its keyword, with a hint
    from indentation about where a '}' is probably missing). Recovery drops the stray
    braces and, for a block left open, adds the missing '}' where indentation says it
    belongs (before a '}' indented like an outer block), so that what follows is read at
    the right level and its own problems are reported; failing that, open blocks close at
    the end of the input.
    """
    first_unclosed: Diagnostic | None = None
    found: list[Diagnostic] = []
    tokens: list[_Tok] = []
    for _ in range(_REPAIR_PASSES + 1):
        found = []
        tokens, unclosed, suspect = _match(items, found)
        if unclosed is None:
            break
        if first_unclosed is None:
            first_unclosed = unclosed
        if suspect is None:
            break
        where = items[suspect][2]
        items = [*items[:suspect], (_RBRACE, -1, where), *items[suspect:]]
    if first_unclosed is not None:
        found = [d for d in found if d.code != "unclosed-block"]
        found.append(first_unclosed)
    diagnostics.extend(found)
    return tokens


def _match(
    items: list[_Item], diagnostics: list[Diagnostic]
) -> tuple[list[_Tok], Diagnostic | None, int | None]:
    """One matching pass: tokens, the unclosed-block error if any, and the index in `items`
    of the '}' before which a '}' is probably missing (None when indentation says nothing).
    """
    tokens: list[_Tok] = []
    # Open blocks: (index in items of the '{', owner keyword or None when dropped)
    stack: list[tuple[int, Word | None]] = []
    depth = 0
    prev_kind = -1
    deep_reported = False
    # Closing braces at another indentation than their block's keyword, first on their
    # line: (index in items, position, owner keyword).
    misindented: list[tuple[int, SourcePos, Word]] = []
    for index, (kind, payload, where) in enumerate(items):
        if kind == 0:
            words: tuple[Word, ...] = payload
            if words[0].text in _INCLUDE_WORDS:
                # Lines starting with include were consumed by the preprocessor, so this
                # one follows a brace: keepalived recognises include only at a line start.
                diagnostics.append(
                    Diagnostic(
                        Severity.ERROR,
                        words[0].pos,
                        f"'{words[0].text}' must start a line of its own",
                        "include",
                        "keepalived only recognises include at the start of a line",
                    )
                )
                continue
            tokens.append(("STMT", _leaf(words)))
            prev_kind = 0
            continue
        assert where is not None
        if kind == _LBRACE:
            # prev_kind 0: the last token is the STMT just before this '{'.
            owner: Word | None = tokens[-1][1].keyword if prev_kind == 0 else None
            if owner is None:
                diagnostics.append(
                    Diagnostic(
                        Severity.ERROR,
                        where,
                        "'{' without a keyword before it",
                        "stray-brace",
                        "a block opens after a keyword, as in 'vrrp_instance VI_1 {'",
                    )
                )
            elif depth >= MAX_DEPTH:
                if not deep_reported:
                    deep_reported = True
                    diagnostics.append(
                        Diagnostic(
                            Severity.ERROR,
                            where,
                            f"blocks nested more than {MAX_DEPTH} deep",
                            "nesting-limit",
                        )
                    )
                owner = None
            stack.append((index, owner))
            if owner is not None:
                # `keyword arg... {` is one OPEN terminal (see grammar.lark).
                tokens[-1] = ("OPEN", _words_of(tokens[-1][1]))
                depth += 1
            prev_kind = _LBRACE
            continue
        # '}'
        prev_kind = _RBRACE
        if not stack:
            diagnostics.append(
                Diagnostic(
                    Severity.ERROR,
                    where,
                    "'}' without a block to close",
                    "stray-brace",
                    "remove it, or look above for a block closed twice",
                )
            )
            continue
        _, owner = stack.pop()
        if owner is None:
            continue
        depth -= 1
        tokens.append(_close_token(where))
        if payload > 0 and payload != owner.pos.column and where.path == owner.pos.path:
            misindented.append((index, where, owner))
    open_blocks = [(i, owner) for i, owner in stack if owner is not None]
    if not open_blocks:
        return tokens, None, None
    opened_at, outer = open_blocks[0]
    hint = "add the missing '}'"
    suspect: int | None = None
    for index, close, owner in misindented:
        if index > opened_at:
            hint = (
                f"the '}}' at line {close.line} closes '{owner.text}' of line "
                f"{owner.pos.line} but is indented differently; is a '}}' missing before it?"
            )
            suspect = index
            break
    for _ in open_blocks:
        tokens.append(_close_token(None))
    unclosed = Diagnostic(
        Severity.ERROR,
        outer.pos,
        f"the block of '{outer.text}' is never closed",
        "unclosed-block",
        hint,
    )
    return tokens, unclosed, suspect


# --------------------------------------------------------------------------- parser


def _leaf_pos(words: tuple[Word, ...]) -> SourcePos:
    """A leaf statement's position: from its keyword to the end of its last word."""
    kp = words[0].pos
    last = words[-1].pos
    if last.path != kp.path:
        last = kp
    return _pos(kp.path, kp.line, kp.column, last.end_line, last.end_column)


def _block_pos(words: tuple[Word, ...], close: SourcePos | None) -> SourcePos:
    """A block statement's position: through its '}' (when that is in the same file)."""
    kp = words[0].pos
    path = kp.path
    last = close if close is not None and close.path == path else words[-1].pos
    if last.path != path:
        last = kp
    return _pos(path, kp.line, kp.column, last.end_line, last.end_column)


def _leaf(words: tuple[Word, ...]) -> Stmt:
    """The `Stmt` of a STMT token."""
    return _stmt(words[0], words[1:], None, _leaf_pos(words))


def _words_of(stmt: Stmt) -> tuple[Word, ...]:
    """The words of a STMT that turns out to open a block (its '{' on the next line)."""
    return (stmt.keyword, *stmt.args)


def _block(words: tuple[Word, ...], block: tuple[Stmt, ...], close: SourcePos | None) -> Stmt:
    """The `Stmt` of OPEN ... CLOSE."""
    return _stmt(words[0], words[1:], block, _block_pos(words, close))


# The reductions of grammar.lark, by (rule, right-hand side). Each works on the parser's
# value stack in place: it takes the values of the symbols reduced off its top and leaves
# the rule's value there (a STMT token's value is its Stmt, OPEN's its words, CLOSE's the
# position of its '}'). Most reductions of a large file are `stmts STMT`, which so becomes
# a pop and an append, without a slice of the stack per statement.
def _r_start(stack: list[Any]) -> None:
    stack[-1] = tuple(stack[-1])


def _r_empty(stack: list[Any]) -> None:
    stack.append(())


def _r_first(stack: list[Any]) -> None:
    stack[-1] = [stack[-1]]


def _r_more(stack: list[Any]) -> None:
    value = stack.pop()
    stack[-1].append(value)


def _r_block(stack: list[Any]) -> None:
    close = stack.pop()
    block = stack.pop()
    stack[-1] = _block(stack[-1], tuple(block), close)


def _r_empty_block(stack: list[Any]) -> None:
    close = stack.pop()
    stack[-1] = _block(stack[-1], (), close)


_REDUCTIONS: dict[tuple[str, tuple[str, ...]], Callable[[list[Any]], None]] = {
    ("start", ("stmts",)): _r_start,
    ("start", ()): _r_empty,
    ("stmts", ("STMT",)): _r_first,
    ("stmts", ("block",)): _r_first,
    ("stmts", ("stmts", "STMT")): _r_more,
    ("stmts", ("stmts", "block")): _r_more,
    ("block", ("OPEN", "stmts", "CLOSE")): _r_block,
    ("block", ("OPEN", "CLOSE")): _r_empty_block,
}

# One LALR action: (True, next state) to shift, or (False, (symbols reduced, the rule's
# name, its reduction)) to reduce.
_Action = tuple[bool, Any]


@dataclass(frozen=True, slots=True)
class _Tables:
    # Indexed by state number (lark numbers its states 0..n-1): a list index is cheaper
    # than a dict lookup, and the parse loop does one per token and one per reduction.
    states: list[dict[str, _Action]]
    start: int
    end: int


_TABLES: _Tables | None = None


def _tables() -> _Tables:
    """grammar.lark's LALR(1) tables, as lark computes them, keyed by plain names.

    lark's own parse loop spends most of its time on generic work (a method call and an
    assertion per token, rule names that are `Token`s compared through a Python `__eq__`);
    `_run_lalr` runs the very same tables without that overhead: on a 300,000-line file the
    parse went from about a second to well under half of that. A grammar change that adds a
    rule without a reduction in `_REDUCTIONS` fails loudly (KeyError) the first time the
    tables are built.
    """
    global _TABLES
    if _TABLES is None:
        # Imported here: only a file with a brace out of order needs the parser (`_scan`
        # nests the others itself), and lark takes a good part of the start-up time.
        from lark import Lark
        from lark.common import LexerConf
        from lark.lexer import Lexer
        from lark.parsers.lalr_analysis import Shift

        class _PassThroughLexer(Lexer):
            """Lark needs a lexer to build its tables; the tokens come from `_balance`."""

            def __init__(self, lexer_conf: LexerConf) -> None:
                pass

            def lex(self, data: Any) -> Any:  # type: ignore[override]
                return iter(data)

        parser = Lark.open(
            "grammar.lark",
            rel_to=__file__,
            parser="lalr",
            lexer=_PassThroughLexer,
            propagate_positions=False,
            maybe_placeholders=False,
        )
        conf = parser.parse_interactive([]).parser_state.parse_conf
        table = conf.parse_table.states
        if sorted(table) != list(range(len(table))):  # pragma: no cover - lark's numbering
            raise AssertionError("lark's LALR states are not numbered 0..n-1")
        states: list[dict[str, _Action]] = [{} for _ in table]
        rules: dict[Any, tuple[int, str, Any]] = {}  # one shared entry per rule
        for state, actions in table.items():
            row = states[state]
            for symbol, (action, arg) in actions.items():
                if action is Shift:
                    row[str(symbol)] = (True, arg)
                else:
                    names = tuple(str(sym.name) for sym in arg.expansion)
                    origin = str(arg.origin.name)
                    rules[arg] = rules.get(arg) or (len(names), origin, _REDUCTIONS[origin, names])
                    row[str(symbol)] = (False, rules[arg])
        _TABLES = _Tables(states, conf.start_state, conf.end_state)
    return _TABLES


class _ParseError(Exception):
    def __init__(self, token: _Tok) -> None:
        super().__init__(token[0])
        self.token = token


def _run_lalr(tokens: list[_Tok]) -> tuple[Stmt, ...]:
    """Run grammar.lark's LALR(1) tables over the tokens; the result of the `start` rule.

    Raises:
        _ParseError: a token the grammar does not allow where it is.
    """
    tables = _tables()
    states = tables.states
    end = tables.end
    state_stack = [tables.start]
    value_stack: list[Any] = []
    push_state = state_stack.append
    push_value = value_stack.append
    for token in [*tokens, ("$END", None)]:
        kind = token[0]
        while True:
            action = states[state_stack[-1]].get(kind)
            if action is None:
                raise _ParseError(token)
            shift, arg = action
            if shift:
                push_state(arg)
                push_value(token[1])
                break
            size, origin, reduction = arg
            reduction(value_stack)  # leaves the rule's value on top of value_stack
            if size:
                del state_stack[-size:]
            goto = states[state_stack[-1]][origin][1]
            if goto == end:
                result: tuple[Stmt, ...] = value_stack[-1]
                return result
            push_state(goto)
    raise AssertionError("unreachable: $END always reduces to start")  # pragma: no cover


def _parse_tokens(tokens: list[_Tok], diagnostics: list[Diagnostic], path: str) -> tuple[Stmt, ...]:
    try:
        return _run_lalr(tokens)
    except _ParseError as exc:
        # `_balance` makes every stream parse, so this is a safety net that still keeps
        # the promise of a diagnostic instead of an exception.
        kind, value = exc.token
        if kind == "CLOSE":
            pos = value or SourcePos(path, 1, 1)
        elif kind == "STMT":
            pos = value.keyword.pos
        elif kind == "OPEN":
            pos = value[0].pos
        else:
            pos = SourcePos(path, 1, 1)
        diagnostics.append(Diagnostic(Severity.ERROR, pos, "unexpected token", "syntax"))
        return ()


# --------------------------------------------------------------------------- entry points


def parse_text(
    text: str,
    *,
    path: str = "<string>",
    config_id: str | None = None,
    base_dir: Path | None = None,
) -> SyntaxResult:
    """Parse configuration text into statements, collecting every problem.

    Args:
        text: the configuration.
        path: the name used in positions; also, when `base_dir` is None and `path` names a
            file, the directory relative includes are resolved against.
        config_id: matched by `@ID` / `@^ID` lines; None means the short hostname
            (keepalived's default for `-i`).
        base_dir: directory for relative `include` patterns and `${_PWD}`.

    Returns:
        The statements (a best-effort tree when there are errors) and the diagnostics,
        sorted by position. Never raises for any input.
    """
    # The parse makes a few hundred thousand small acyclic objects on a large file; the
    # cyclic collector would walk them again and again for nothing (it doubles the time).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _parse_text(text, path, config_id, base_dir)
    finally:
        if gc_was_enabled:
            gc.enable()


def _parse_text(text: str, path: str, config_id: str | None, base_dir: Path | None) -> SyntaxResult:
    diagnostics: list[Diagnostic] = []
    if base_dir is None:
        base_dir = Path.cwd() if path.startswith("<") else Path(path).parent
    cid = default_config_id() if config_id is None else config_id
    chunks = preprocess_runs(
        text, path=path, config_id=cid, base_dir=base_dir, diagnostics=diagnostics
    )
    found: list[Diagnostic] = []
    nodes = _scan(chunks, found)
    if nodes is None:
        # Some brace is out of order: the two-step path, which reports and recovers.
        lines: list[Line] = []
        for chunk in chunks:
            if isinstance(chunk, PlainRun):
                lines.extend(chunk.to_lines())
            else:
                lines.append(chunk)
        items = _tokenize(lines, diagnostics)
        tokens = _balance(items, diagnostics)
        stmts = _parse_tokens(tokens, diagnostics, path)
        nodes = [stmt_node(stmt) for stmt in stmts]
    else:
        diagnostics.extend(found)
    # A repeated line (~SEQ, a definition used twice) repeats its findings: report once.
    unique = sorted(dict.fromkeys(diagnostics), key=Diagnostic.sort_key)
    return SyntaxResult(tuple(nodes), tuple(unique))


def parse_file(path: Path, *, config_id: str | None = None) -> SyntaxResult:
    """Read and parse a configuration file (and what it includes).

    Raises:
        OSError: the file itself cannot be read (missing, a directory, no permission).
            Problems with included files are diagnostics, not exceptions.
    """
    data = Path(path).read_bytes()
    shown = str(path)
    diagnostics: list[Diagnostic] = []
    text = decode_config_bytes(data, shown, diagnostics)
    if text is None:
        return SyntaxResult((), tuple(diagnostics))
    result = parse_text(text, path=shown, config_id=config_id, base_dir=Path(path).parent)
    if not diagnostics:
        return result
    merged = sorted(diagnostics + list(result.diagnostics), key=Diagnostic.sort_key)
    return SyntaxResult(result.nodes, tuple(merged))


# --------------------------------------------------------------------------- scripts

_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "E": "\x1b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
}
_WHITE = " \t\f\n\r\v"


def split_command(text: str) -> tuple[str, ...]:
    """Split a script command line as keepalived does (alloc_strvec_quoted_escaped).

    Shell-like: blanks separate words; "..." and '...' quote (quotes removed, may join
    with adjacent text); backslash escapes \\a \\b \\E \\f \\n \\r \\t \\v, \\nnn (octal),
    \\xHH, \\cC (control character), and \\C for any other C (man page "Quoted strings").

    Raises:
        ValueError: an unterminated quote, or a '\\' at the very end.
    """
    words: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        while i < n and text[i] in _WHITE:
            i += 1
        if i >= n:
            break
        out: list[str] = []
        quote = ""
        while i < n:
            ch = text[i]
            if ch == "\\":
                i += 1
                if i >= n:
                    raise ValueError("a '\\' at the end of the command has nothing to escape")
                ch = text[i]
                if ch == "x" and i + 1 < n and text[i + 1] in "0123456789abcdefABCDEF":
                    j = i + 1
                    while j < n and text[j] in "0123456789abcdefABCDEF":
                        j += 1
                    out.append(chr(int(text[i + 1 : j], 16) & 0xFF))
                    i = j
                elif ch == "c" and i + 1 < n:
                    out.append(chr(ord(text[i + 1]) & 0x1F))
                    i += 2
                elif "0" <= ch <= "7":
                    j = i
                    while j < n and j < i + 3 and "0" <= text[j] <= "7":
                        j += 1
                    out.append(chr(int(text[i:j], 8) & 0xFF))
                    i = j
                else:
                    out.append(_ESCAPES.get(ch, ch))
                    i += 1
                continue
            if quote:
                if ch == quote:
                    quote = ""
                else:
                    out.append(ch)
                i += 1
                continue
            if ch in "\"'":
                quote = ch
                i += 1
                continue
            if ch in _WHITE:
                break
            out.append(ch)
            i += 1
        if quote:
            raise ValueError(f"missing terminating {quote}")
        words.append("".join(out))
    return tuple(words)
