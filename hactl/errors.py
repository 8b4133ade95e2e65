"""hactl's error types and configuration diagnostics.

Every error a user can cause carries a position (`SourcePos`) and renders as
`path:line:col: severity: message`, a format editors and CI annotate. Wire decode
failures carry a `reason` usable as a metric label. `StateError` marks a bug in hactl
(a core's API misused), never bad input.

Imports nothing from hactl, so every package may depend on it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "ConfigError",
    "ConfigErrors",
    "ConfigSyntaxError",
    "ConfigValueError",
    "DecodeError",
    "Diagnostic",
    "HactlError",
    "KernelError",
    "LinkNotFound",
    "NotSupported",
    "Severity",
    "SourcePos",
    "StateError",
    "SyncDecodeError",
    "VrrpDecodeError",
]


class SourcePos(NamedTuple):
    """A place in a configuration file; lines and columns are 1-based.

    Equality, hashing and ordering use (path, line, column) only, which is the order
    diagnostics are reported in: the end of a span does not make it another place.

    A named tuple rather than a dataclass because a large configuration makes a million of
    them: a tuple is built in C, five times faster than a frozen dataclass. Only the fields
    are the API; do not rely on it being a tuple.
    """

    path: str
    line: int
    column: int
    end_line: int = 0
    end_column: int = 0

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"

    def _start(self) -> tuple[str, int, int]:
        return (self.path, self.line, self.column)

    # Never equal to a plain tuple (nor to anything but a SourcePos), as before.
    def __eq__(self, other: object) -> bool:
        return type(other) is SourcePos and self._start() == other._start()

    def __ne__(self, other: object) -> bool:
        return not (type(other) is SourcePos and self._start() == other._start())

    def __hash__(self) -> int:
        return hash(self._start())

    def __lt__(self, other: tuple[Any, ...]) -> bool:
        if type(other) is not SourcePos:
            return NotImplemented
        return self._start() < other._start()

    def __le__(self, other: tuple[Any, ...]) -> bool:
        if type(other) is not SourcePos:
            return NotImplemented
        return self._start() <= other._start()

    def __gt__(self, other: tuple[Any, ...]) -> bool:
        if type(other) is not SourcePos:
            return NotImplemented
        return self._start() > other._start()

    def __ge__(self, other: tuple[Any, ...]) -> bool:
        if type(other) is not SourcePos:
            return NotImplemented
        return self._start() >= other._start()


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding about a configuration: an error or a warning.

    `code` is a stable identifier for warnings and lints (documented in
    docs/configuration.md); `hint` is a "did you mean" suggestion or a one-line reason.
    """

    severity: Severity
    pos: SourcePos
    message: str
    code: str = ""
    hint: str = ""

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.pos.path, self.pos.line, self.pos.column, self.message)

    def __str__(self) -> str:
        text = f"{self.pos}: {self.severity}: {self.message}"
        if self.code:
            text += f" [{self.code}]"
        return text


class HactlError(Exception):
    """Root of every error hactl raises on purpose."""


class ConfigError(HactlError):
    """A configuration problem at a known position."""

    def __init__(self, message: str, pos: SourcePos, *, code: str = "", hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos
        self.code = code
        self.hint = hint

    @property
    def diagnostic(self) -> Diagnostic:
        return Diagnostic(Severity.ERROR, self.pos, self.message, self.code, self.hint)

    def __str__(self) -> str:
        return str(self.diagnostic)


class ConfigSyntaxError(ConfigError):
    """The text does not follow the grammar (unbalanced braces, bad token...)."""


class ConfigValueError(ConfigError):
    """Unknown keyword, wrong argument count, out-of-range value or bad reference."""


class ConfigErrors(HactlError):
    """All the errors of one load, sorted by position, and the warnings found alongside."""

    def __init__(
        self, errors: Iterable[ConfigError], warnings: Iterable[Diagnostic] = ()
    ) -> None:
        self.errors: tuple[ConfigError, ...] = tuple(
            sorted(errors, key=lambda e: e.diagnostic.sort_key())
        )
        self.warnings: tuple[Diagnostic, ...] = tuple(sorted(warnings, key=Diagnostic.sort_key))
        super().__init__(str(self))

    @property
    def diagnostics(self) -> tuple[Diagnostic, ...]:
        found = [e.diagnostic for e in self.errors] + list(self.warnings)
        return tuple(sorted(found, key=Diagnostic.sort_key))

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class DecodeError(HactlError, ValueError):
    """A datagram that cannot be decoded; `reason` is a short stable label for counters."""

    def __init__(self, reason: enum.Enum | str, detail: str = "") -> None:
        self.reason = reason
        label = reason.value if isinstance(reason, enum.Enum) else reason
        super().__init__(f"{label}: {detail}" if detail else str(label))


class VrrpDecodeError(DecodeError):
    pass


class SyncDecodeError(DecodeError):
    pass


class StateError(HactlError, RuntimeError):
    """A core's API was used in a way its state does not allow: a bug in hactl."""


class KernelError(HactlError, OSError):
    """A kernel operation failed; `op` names it, `errno` is the kernel's error number."""

    def __init__(self, op: str, errno: int, message: str = "") -> None:
        super().__init__(errno, message or f"{op} failed (errno {errno})")
        self.op = op


class LinkNotFound(KernelError):
    pass


class NotSupported(KernelError):
    pass
