"""The configuration's syntax layer: text -> a tree of generic statements with positions.

A keepalived configuration is a sequence of statements `keyword arg... [{ statement... }]`.
This module owns the lexical features (comments, quoting, include, @conditionals,
$VARIABLES, ~SEQ, line continuation) and produces `Stmt` trees whose every `Word` keeps its
own `SourcePos`. It knows no keyword: meaning is `build.py`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass

from hactl.errors import SourcePos

__all__ = ["Stmt", "Word"]


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
