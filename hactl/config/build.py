"""Statement tree + keyword tables -> typed model, collecting every error.

`build(stmts)` walks statement trees (`syntax.Node`s) with the tables of `keywords.py` and
returns a `BuildResult`: the model (partial when there were errors), the errors and the
warnings. A statement's words are read as text; their positions are worked out only where
the model keeps one or a diagnostic needs one.
Rules (STYLE §8.1-4, §8.5):
* every problem becomes a `ConfigValueError` located at the offending token (an unknown
  keyword at the keyword, a bad value at the value, too many arguments at the first extra
  one) and the walk goes on, so one run reports everything;
* an invalid value is never replaced by a default: the field is left unset and, since the
  build has errors, the model is never handed to a subsystem;
* keywords keepalived knows but hactl does not act on yet produce a `not-implemented`
  warning and are kept (typed when the model has the field, else as `RawStmt`).

The walk is linear in the number of statements (dict lookups per keyword, no rescans), which
matters for configurations with tens of thousands of virtual servers. The converters of the
common value types take the common, valid case straight from the text and leave anything
else to the word-based parsers (`parse_int`, ...), which report it at the offending word
(test_fast_path checks the two agree).

Pure: no I/O. Imports `errors`, `ipvs.model`, `config.keywords`, `config.model`,
`config.syntax` (the statement types and their positions).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import ipaddress
import math
import re
import socket
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from hactl.config import keywords as kw
from hactl.config import model as m
from hactl.config.keywords import Block, CheckerKind, Kw
from hactl.config.syntax import (
    Node,
    Stmt,
    Word,
    keyword_pos,
    node_pos,
    node_stmt,
    node_words,
    stmt_node,
)
from hactl.errors import ConfigError, ConfigValueError, Diagnostic, Severity, SourcePos
from hactl.ipvs.model import IpvsSysctl

__all__ = ["BuildResult", "build"]


@dataclass(frozen=True, slots=True)
class BuildResult:
    config: m.Config
    errors: tuple[ConfigError, ...]
    warnings: tuple[Diagnostic, ...]


class _Bad(Exception):
    """One invalid token: reported, and the keyword it belongs to is skipped."""

    def __init__(self, pos: SourcePos, message: str, *, code: str = "bad-value", hint: str = ""):
        super().__init__(message)
        self.pos = pos
        self.message = message
        self.code = code
        self.hint = hint


@dataclass(slots=True)
class _Ctx:
    errors: list[ConfigError] = field(default_factory=list)
    warnings: list[Diagnostic] = field(default_factory=list)
    # Checker blocks already read, by content (see `_checker_values`).
    checkers: dict[tuple[Any, ...], _Values] = field(default_factory=dict)
    # Checkers made from such a reading, by (its id, inherited values) (`_build_checker`).
    checker_protos: dict[tuple[Any, ...], m.Checker] = field(default_factory=dict)
    # Inherited values (`_checker_key`) met so far, numbered, and the real server blocks
    # read, by (words, that number) (`_build_real_server`).
    checker_keys: dict[tuple[Any, ...], int] = field(default_factory=dict)
    real_servers: dict[tuple[Any, ...], _RsTemplate] = field(default_factory=dict)
    # Virtual server blocks read, by their words (`_vs_values`).
    virtual_servers: dict[tuple[Any, ...], _VsTemplate] = field(default_factory=dict)

    def error(self, pos: SourcePos, message: str, *, code: str, hint: str = "") -> None:
        self.errors.append(ConfigValueError(message, pos, code=code, hint=hint))

    def bad(self, exc: _Bad) -> None:
        self.error(exc.pos, exc.message, code=exc.code, hint=exc.hint)

    def warn(self, pos: SourcePos, message: str, *, code: str, hint: str = "") -> None:
        self.warnings.append(Diagnostic(Severity.WARNING, pos, message, code, hint))


class _Fields(dict[str, Any]):
    """A converter result that sets several model fields at once."""


_NO_FIELDS: frozenset[str] = frozenset()


class _Values(dict[str, Any]):
    """A block's collected values by model field; `bad` holds fields whose value was invalid
    (so "missing" checks do not pile onto a reported bad value)."""

    __slots__ = ("bad", "pos")

    # Set by `_collect`, the one place that makes them (one per block of the file, so
    # without a Python-level __init__).
    bad: set[str] | frozenset[str]  # _NO_FIELDS until the first bad value
    # model field -> the statement that set it; its keyword's position is worked out only
    # for the models that keep it (`positions`).
    pos: dict[str, Node]

    def has(self, attr: str) -> bool:
        return attr in self or attr in self.bad

    def mark_bad(self, attr: str) -> None:
        bad = self.bad
        if isinstance(bad, frozenset):
            self.bad = bad = set()
        bad.add(attr)

    def positions(self) -> dict[str, SourcePos]:
        """Where each field's keyword was written, for a model's `keyword_pos`."""
        found: dict[str, SourcePos] = {}
        for attr, node in self.pos.items():
            src = node.src
            if type(src) is str:
                # keyword_pos(node), inlined: a large file has one per statement of its
                # virtual and real servers. The keyword is the line's first word.
                column = src.find(node.keyword) + 1
                line = node.line
                end = column + len(node.keyword)
                found[attr] = _new_tuple(SourcePos, (node.path, line, column, line, end))
            else:
                found[attr] = keyword_pos(node)
        return found


# ---------------------------------------------------------------------------------------------
# Fast construction of the most numerous model objects

_MISSING = object()
_new_tuple = tuple.__new__


def _twin(cls: type) -> type | None:
    """A mutable twin of the frozen, slotted class `cls`: the same bases and slots, with the
    ordinary attribute assignment. An instance filled in as a twin becomes a `cls` by
    assigning its `__class__` (the layouts are the same, which Python checks), after which
    it is frozen like any other. None when Python refuses the switch.

    Both `__setattr__` and `__delattr__` are object's own: they share one C slot, which
    Python fills with the C function only when neither is a Python function. Inheriting
    a frozen base's `__delattr__` (the checkers' bases are frozen dataclasses too) would
    route every assignment through a method lookup and call, three times the cost.
    """
    twin = type(
        f"_{cls.__name__}Draft",
        cls.__bases__,
        {
            "__slots__": cls.__dict__.get("__slots__", ()),
            "__setattr__": object.__setattr__,
            "__delattr__": object.__delattr__,
        },
    )
    try:
        object.__setattr__(object.__new__(twin), "__class__", cls)
    except TypeError:
        return None
    return twin


def _maker(cls: type) -> Callable[..., Any]:
    """A constructor for the frozen, slotted dataclass `cls` that makes the very same objects.

    A frozen dataclass's generated `__init__` sets each field through `object.__setattr__`,
    about 0.3 µs a field: a checker (18 fields) costs 6 µs, and the real servers and checkers
    of a 10,000-service file took more than half of the build. This constructor has the same
    keyword-only signature and defaults (including `init=False` fields and default
    factories) but fills a mutable twin of the class (`_twin`) with plain attribute
    assignments, the cheapest way to set a slot, then makes it a `cls`: the object is the
    one the class's constructor makes, for 1.2 µs a real server instead of 2.0 through the
    slots' descriptors (which it falls back to where the twin is refused). It is generated
    like the dataclass's own `__init__`, and only for classes without `__post_init__`;
    test_build checks it against the class for every model class.
    """
    fields = dataclasses.fields(cls)
    if hasattr(cls, "__post_init__") or not all(
        isinstance(getattr(cls, f.name, None), types.MemberDescriptorType) for f in fields
    ):
        return cls
    twin = _twin(cls)
    namespace = _generated_namespace(cls, twin)
    params: list[str] = []
    body = ["_self = _new(_cls)" if twin is None else "_self = _new(_twin)"]
    for i, f in enumerate(fields):
        if twin is None:
            namespace[f"_set{i}"] = getattr(cls, f.name).__set__
            target = f"_set{i}(_self, {{}})"
        else:
            target = f"_self.{f.name} = {{}}"
        if f.default is not dataclasses.MISSING:
            namespace[f"_d{i}"] = f.default
            value = f"_d{i}"
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_f{i}"] = f.default_factory
            value = f"_f{i}()"
        else:
            value = ""
        if not f.init:
            body.append(target.format(value))
        elif value.startswith("_f"):
            params.append(f"{f.name}=_MISSING")
            body.append(target.format(f"{value} if {f.name} is _MISSING else {f.name}"))
        else:
            params.append(f"{f.name}={value}" if value else f.name)
            body.append(target.format(f.name))
    if twin is not None:
        body.append('_retype(_self, "__class__", _cls)')
    source = f"def make(*, {', '.join(params)}):\n    " + "\n    ".join(body)
    exec(source + "\n    return _self\n", namespace)  # as dataclasses makes __init__
    made: Callable[..., Any] = namespace["make"]
    return made


def _generated_namespace(cls: type, twin: type | None) -> dict[str, Any]:
    """The globals of a generated constructor or copier of `cls` (see `_maker`)."""
    return {
        "_new": object.__new__,
        "_cls": cls,
        "_twin": twin,
        "_retype": object.__setattr__,
        "_MISSING": _MISSING,
    }


def _copier(cls: type) -> Callable[..., Any]:
    """`dataclasses.replace` for the frozen, slotted dataclass `cls`, without its `__init__`:
    `copy(made, **changes)` is an object equal to `made` but for `changes`, which name
    fields that `__init__` takes. A large file's real servers and checkers mostly differ
    from one another in a few fields (address, key, position); copying the others from a
    model object made once per distinct content spares the merged keyword dictionaries
    and the keyword matching of a constructor call. test_build checks it against
    `dataclasses.replace` for every class of `_MAKE`.
    """
    twin = _twin(cls)
    if twin is None or _MAKE[cls] is cls:

        def replace(made: Any, /, **changes: Any) -> Any:
            return dataclasses.replace(made, **changes)

        return replace
    namespace = _generated_namespace(cls, twin)
    # Keyword parameters, matched by the interpreter, rather than a dictionary of changes
    # walked with setattr: a few `is` tests cost less than a call per change.
    fields = dataclasses.fields(cls)
    params = ", ".join(f"{f.name}=_MISSING" for f in fields if f.init)
    body = ["_self = _new(_twin)"]
    for f in fields:
        name = f.name
        if f.init:
            body.append(f"_self.{name} = _made.{name} if {name} is _MISSING else {name}")
        else:
            body.append(f"_self.{name} = _made.{name}")
    body.append('_retype(_self, "__class__", _cls)')
    source = f"def copy(_made, /, *, {params}):\n    " + "\n    ".join(body)
    exec(source + "\n    return _self\n", namespace)  # as `_maker`
    made: Callable[..., Any] = namespace["copy"]
    return made


class _Generated(dict[type, Callable[..., Any]]):
    """Functions generated per class (`_maker`, `_copier`) when first asked for: each is
    compiled from source, a cost every start-up would pay for classes a file may not use."""

    __slots__ = ("_generate",)

    def __init__(self, generate: Callable[[type], Callable[..., Any]]) -> None:
        super().__init__()
        self._generate = generate

    def __missing__(self, cls: type) -> Callable[..., Any]:
        made = self[cls] = self._generate(cls)
        return made


# The most numerous model objects: made by `_MAKE[cls]`, copied by `_COPY[cls]`.
_FAST_CLASSES = (m.VirtualServer, m.RealServer, m.Url, m.Forwarding, *m.CHECKER_CLASSES.values())
_MAKE = _Generated(_maker)
_COPY = _Generated(_copier)


# Keywords whose statements are built after the enclosing block is known (inheritance).
_DEFERRED = frozenset({"real_server", "named", "vsg", "virtual_server"})


# ---------------------------------------------------------------------------------------------
# Scalar value parsers (each raises _Bad at the offending word)

_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_TIMER_RE = re.compile(r"[0-9]+(\.[0-9]*)?\Z|\.[0-9]+\Z")
_BOOL = {"on": True, "true": True, "yes": True, "off": False, "false": False, "no": False}


def _suggest(text: str, choices: Sequence[str]) -> str:
    """A "did you mean" hint: a keyword the text is a prefix of, else the closest spelling."""
    prefixed = sorted((c for c in choices if c.startswith(text) and c != text), key=len)
    if prefixed and len(text) >= 4:
        return f"did you mean `{prefixed[0]}`?"
    close = difflib.get_close_matches(text, choices, n=1, cutoff=0.6)
    if not close:
        folded = {c.lower(): c for c in choices}
        if text.lower() in folded:
            close = [folded[text.lower()]]
    return f"did you mean `{close[0]}`?" if close else ""


def parse_int(word: Word, lo: int, hi: int, *, what: str) -> int:
    text = word.text
    if not (text.isascii() and text.isdigit()) and not _INT_RE.match(text):
        raise _Bad(word.pos, f"{what}: `{text}` is not an integer")
    value = int(text)
    if not lo <= value <= hi:
        raise _Bad(word.pos, f"{what}: {value} is out of range {lo}..{hi}", code="out-of-range")
    return value


def parse_timer(word: Word, lo: float, hi: float, *, what: str) -> float:
    # <TIMER> (man: PARAMETER SYNTAX): seconds with an optional fraction; no sign, no exponent.
    text = word.text
    if not (text.isascii() and text.isdigit()) and not _TIMER_RE.match(text):
        raise _Bad(word.pos, f"{what}: `{text}` is not a time in seconds")
    value = float(text)
    if not (lo <= value <= hi) or math.isinf(value):
        span = f"{_plain(lo)}..{_plain(hi)}"
        raise _Bad(word.pos, f"{what}: {word.text} is out of range {span}", code="out-of-range")
    return value


def _plain(value: float) -> str:
    """A bound in positional notation (0.000001, not 1e-06)."""
    value = float(value)
    return str(int(value)) if value.is_integer() else format(Decimal(repr(value)), "f")


def parse_bool(word: Word, *, what: str) -> bool:
    try:
        return _BOOL[word.text.lower()]
    except KeyError:
        raise _Bad(
            word.pos,
            f"{what}: `{word.text}` is not a boolean (on|off|true|false|yes|no)",
        ) from None


# A dotted quad in ipaddress's own strict form: four decimal octets <= 255, no leading zero.
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}\Z").match


@functools.lru_cache(maxsize=65536)
def _ip(text: str) -> m.IPAddress:
    # Large configurations repeat addresses (real servers behind many services); the
    # ipaddress parser is the costliest scalar conversion, and its results are immutable.
    # A dotted quad is matched here and converted by inet_aton, several times faster;
    # anything else is ipaddress's to accept or not.
    if _DOTTED_QUAD(text) is not None:
        return ipaddress.IPv4Address(int.from_bytes(socket.inet_aton(text)))
    return ipaddress.ip_address(text)


def parse_ip(word: Word, *, what: str, version: int | None = None) -> m.IPAddress:
    try:
        addr = _ip(word.text)
    except ValueError:
        raise _Bad(word.pos, f"{what}: invalid IP address `{word.text}`") from None
    if version is not None and addr.version != version:
        raise _Bad(word.pos, f"{what}: `{word.text}` is not an IPv{version} address")
    return addr


def parse_interface(word: Word, *, what: str) -> m.IPInterface:
    try:
        return ipaddress.ip_interface(word.text)
    except ValueError:
        raise _Bad(word.pos, f"{what}: invalid IP address `{word.text}`") from None


def parse_network(word: Word, *, what: str) -> m.IPNetwork:
    try:
        return ipaddress.ip_network(word.text, strict=False)
    except ValueError:
        raise _Bad(word.pos, f"{what}: invalid IP address `{word.text}`") from None


def parse_choice(word: Word, choices: type[enum.StrEnum], *, what: str) -> Any:
    try:
        return choices(word.text)
    except ValueError:
        names = [c.value for c in choices]
        raise _Bad(
            word.pos,
            f"{what}: `{word.text}` is not one of {'|'.join(names)}",
            hint=_suggest(word.text, names),
        ) from None


def _arity(st: Stmt, lo: int, hi: int | None) -> None:
    n = len(st.args)
    name = st.keyword.text
    if n < lo:
        want = f"{lo}" if hi == lo else f"at least {lo}"
        raise _Bad(
            st.keyword.pos,
            f"`{name}` needs {want} argument{'s' if lo != 1 else ''}, got {n}",
            code="arg-count",
        )
    if hi is not None and n > hi:
        extra = st.args[hi]
        if hi == 0:
            msg = f"`{name}` takes no arguments"
        else:
            msg = f"`{name}` takes at most {hi} argument{'s' if hi != 1 else ''}, got {n}"
        raise _Bad(extra.pos, msg, code="arg-count")


# ---------------------------------------------------------------------------------------------
# Custom converters: (ctx, stmt, row) -> value | _Fields


def _c_script(ctx: _Ctx, st: Stmt, row: Kw) -> m.NotifyScript:
    _arity(st, 1, 3)
    a = st.args
    return m.NotifyScript(
        script=a[0].text,
        user=a[1].text if len(a) > 1 else None,
        group=a[2].text if len(a) > 2 else None,
        pos=st.pos,
    )


def _c_user(ctx: _Ctx, st: Stmt, row: Kw) -> m.UserSpec:
    _arity(st, 1, 2)
    return m.UserSpec(
        user=st.args[0].text, group=st.args[1].text if len(st.args) > 1 else None, pos=st.pos
    )


_HEX_RE = re.compile(r"[0-9a-fA-F]+\Z")


def _c_digest(ctx: _Ctx, st: Stmt, row: Kw) -> str:
    _arity(st, 1, 1)
    word = st.args[0]
    if not (_HEX_RE.match(word.text) and len(word.text) == 32):
        raise _Bad(word.pos, f"digest: `{word.text}` is not an MD5 digest (32 hex digits)")
    return word.text.lower()


def _c_status_code(ctx: _Ctx, st: Stmt, row: Kw) -> tuple[tuple[int, int], ...]:
    # man: status_code <INTEGER|RANGE> ...; codes 100..599 (check_http.c HTTP_STATUS_CODE_*).
    _arity(st, 1, None)
    ranges: list[tuple[int, int]] = []
    for word in st.args:
        lo_s, sep, hi_s = word.text.partition("-")
        if not lo_s.isdigit() or (sep and not hi_s.isdigit()):
            raise _Bad(word.pos, f"status_code: `{word.text}` is not a code or a range N-M")
        lo, hi = int(lo_s), int(hi_s) if sep else int(lo_s)
        if not (100 <= lo <= 599 and 100 <= hi <= 599) or lo > hi:
            raise _Bad(
                word.pos,
                f"status_code: `{word.text}` is outside 100..599 or reversed",
                code="out-of-range",
            )
        ranges.append((lo, hi))
    return tuple(ranges)


_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def _c_header(ctx: _Ctx, st: Stmt, row: Kw) -> tuple[str, str]:
    _arity(st, 1, None)
    text = " ".join(w.text for w in st.args)
    name, sep, value = text.partition(":")
    if not sep or not _HEADER_NAME_RE.match(name):
        raise _Bad(st.args[0].pos, f'header: `{text}` is not "Name: value"')
    if "\r" in value or "\n" in value:
        raise _Bad(st.args[0].pos, "header: the value must not contain a line break")
    return (name, value.strip())


def _c_basic_auth(ctx: _Ctx, st: Stmt, row: Kw) -> m.BasicAuth:
    _arity(st, 2, 2)
    if ":" in st.args[0].text:
        raise _Bad(st.args[0].pos, "basic_auth: the user name must not contain `:`")
    return m.BasicAuth(user=st.args[0].text, password=st.args[1].text, pos=st.pos)


def _hex_bytes(words: Sequence[Word], *, what: str, wildcard: bool) -> str:
    """keepalived's free hex format: each word is read in pairs, a trailing nibble alone."""
    digits = "0-9a-fA-F" + ("xX" if wildcard else "")
    pattern = re.compile(f"[{digits}]+\\Z")
    out: list[str] = []
    for word in words:
        if not pattern.match(word.text):
            raise _Bad(word.pos, f"{what}: `{word.text}` is not hexadecimal")
        text = word.text
        for i in range(0, len(text), 2):
            pair = text[i : i + 2]
            out.append(pair if len(pair) == 2 else "0" + pair)
    return "".join(out).lower()


def _c_hex(ctx: _Ctx, st: Stmt, row: Kw) -> bytes:
    _arity(st, 1, None)
    return bytes.fromhex(_hex_bytes(st.args, what=st.keyword.text, wildcard=False))


def _c_require_reply(ctx: _Ctx, st: Stmt, row: Kw) -> _Fields:
    data = _hex_bytes(st.args, what="require_reply", wildcard=True) if st.args else None
    return _Fields(require_reply=True, require_reply_data=data)


def _weight_reverse(
    st: Stmt, lo: int, hi: int, *, reverse_words: frozenset[str]
) -> tuple[int, bool]:
    _arity(st, 1, 2)
    weight = parse_int(st.args[0], lo, hi, what=f"{st.keyword.text}")
    reverse = False
    if len(st.args) == 2:
        word = st.args[1]
        if word.text not in reverse_words:
            raise _Bad(word.pos, f"{st.keyword.text}: expected `reverse`, got `{word.text}`")
        reverse = word.text == "reverse"
    return weight, reverse


def _c_script_weight(ctx: _Ctx, st: Stmt, row: Kw) -> _Fields:
    w, rev = _weight_reverse(st, -253, 253, reverse_words=frozenset({"reverse"}))
    return _Fields(weight=w, weight_reverse=rev)


def _c_file_weight(ctx: _Ctx, st: Stmt, row: Kw) -> _Fields:
    w, rev = _weight_reverse(st, -(2**31 - 1), 2**31 - 1, reverse_words=frozenset({"reverse"}))
    return _Fields(weight=w, weight_reverse=rev)


def _c_init_file(ctx: _Ctx, st: Stmt, row: Kw) -> m.InitFile:
    _arity(st, 0, 2)
    value, overwrite = 0, False
    for word in st.args:
        if word.text == "overwrite" and not overwrite:
            overwrite = True
        else:
            value = parse_int(word, -(2**31), 2**31 - 1, what="init_file")
    return m.InitFile(value=value, overwrite=overwrite, pos=st.pos)


# man (lvs_method): checksum options need type gue; gre takes them without remcsum.
_CSUM_ALLOWED = {
    kw.TunnelType.GUE: frozenset(kw.TunnelCsum),
    kw.TunnelType.GRE: frozenset({kw.TunnelCsum.NOCSUM, kw.TunnelCsum.CSUM}),
}
_CSUM_NAMES = frozenset(c.value for c in kw.TunnelCsum)


def _c_lvs_method(ctx: _Ctx, st: Stmt, row: Kw) -> m.Forwarding:
    # man: lvs_method NAT|DR | TUN [type {ipip|gue port NUM|gre} [nocsum|csum|remcsum]]
    _arity(st, 1, 6)
    a = list(st.args)
    method = parse_choice(a[0], kw.LvsMethod, what=st.keyword.text)
    ttype: kw.TunnelType | None = None
    tport: int | None = None
    csum: kw.TunnelCsum | None = None
    rest = a[1:]
    if rest and method is not kw.LvsMethod.TUN:
        raise _Bad(rest[0].pos, f"{st.keyword.text}: only TUN takes tunnel options")
    i = 0
    while i < len(rest):
        word = rest[i]
        if word.text == "type" and ttype is None and i + 1 < len(rest):
            ttype = parse_choice(rest[i + 1], kw.TunnelType, what="tunnel type")
            i += 2
            if ttype is kw.TunnelType.GUE:
                if i + 1 >= len(rest) or rest[i].text != "port":
                    raise _Bad(word.pos, "tunnel type gue needs `port NUM`")
                tport = parse_int(rest[i + 1], 1, 65535, what="gue port")
                i += 2
        elif word.text in _CSUM_NAMES and csum is None:
            csum = kw.TunnelCsum(word.text)
            i += 1
        else:
            raise _Bad(word.pos, f"{st.keyword.text}: unexpected `{word.text}`")
    if csum is not None and csum not in _CSUM_ALLOWED.get(ttype or kw.TunnelType.IPIP, ()):
        raise _Bad(st.args[-1].pos, f"checksum `{csum}` needs tunnel type gue (or gre)")
    return m.Forwarding(
        method=method, tunnel_type=ttype, tunnel_port=tport, tunnel_csum=csum, pos=st.pos
    )


def _c_persistence_timeout(ctx: _Ctx, st: Stmt, row: Kw) -> int:
    _arity(st, 0, 1)
    if not st.args:
        return kw.DEFAULT_PERSISTENCE_TIMEOUT
    # ipvsadm -p accepts up to 31 days as for the connection timeouts.
    return parse_int(st.args[0], 1, 2678400, what="persistence_timeout")


def _c_granularity(ctx: _Ctx, st: Stmt, row: Kw) -> str:
    _arity(st, 1, 1)
    word = st.args[0]
    if word.text.isdigit():
        parse_int(word, 1, 128, what="persistence_granularity")
        return word.text
    try:
        ipaddress.ip_network(f"0.0.0.0/{word.text}")
    except ValueError:
        raise _Bad(
            word.pos, f"persistence_granularity: `{word.text}` is not a netmask or prefix length"
        ) from None
    return word.text


def _c_sorry_server(ctx: _Ctx, st: Stmt, row: Kw) -> m.SorryServer:
    _arity(st, 1, 2)
    addr = parse_ip(st.args[0], what="sorry_server")
    port = parse_int(st.args[1], 0, 65535, what="sorry_server port") if len(st.args) > 1 else None
    return m.SorryServer(address=addr, port=port, pos=st.pos)


def _c_sched_flag(ctx: _Ctx, st: Stmt, row: Kw) -> kw.SchedFlag:
    _arity(st, 0, 0)
    return kw.SchedFlag(st.keyword.text)


def _lines(st: Stmt) -> tuple[Stmt, ...]:
    assert st.block is not None
    if st.args:
        raise _Bad(st.args[0].pos, f"`{st.keyword.text}` takes no arguments", code="arg-count")
    return st.block


def _line_words(line: Stmt) -> list[Word]:
    if line.block is not None:
        raise _Bad(line.keyword.pos, f"unexpected block after `{line.keyword.text}`")
    return [line.keyword, *line.args]


def _each_line(
    ctx: _Ctx, st: Stmt, parse: Callable[[Stmt], Any], *, named: bool = False
) -> tuple[Any, ...]:
    """Parse every line of a list block; a bad line is reported and the others still parsed.

    `named`: the block's own statement carries a name (checked by the caller)."""
    out = []
    lines = st.block or () if named else _lines(st)
    for line in lines:
        try:
            out.append(parse(line))
        except _Bad as exc:
            ctx.bad(exc)
    return tuple(out)


def _c_names(ctx: _Ctx, st: Stmt, row: Kw) -> tuple[str, ...]:
    def one(line: Stmt) -> str:
        words = _line_words(line)
        if len(words) > 1:
            raise _Bad(words[1].pos, f"{st.keyword.text}: one name per line", code="arg-count")
        return words[0].text

    return _each_line(ctx, st, one)


_TRACK_REVERSE = frozenset({"reverse", "no_reverse", "noreverse"})


def _track_line(line: Stmt, *, what: str, lo: int, hi: int) -> tuple[str, int | None, bool]:
    words = _line_words(line)
    name = words[0].text
    rest = words[1:]
    weight: int | None = None
    reverse = False
    if rest:
        if rest[0].text != "weight" or len(rest) < 2:
            raise _Bad(rest[0].pos, f"{what}: expected `weight N`, got `{rest[0].text}`")
        weight = parse_int(rest[1], lo, hi, what=f"{what} weight")
        if len(rest) > 2:
            if rest[2].text not in _TRACK_REVERSE:
                raise _Bad(rest[2].pos, f"{what}: expected `reverse`, got `{rest[2].text}`")
            reverse = rest[2].text == "reverse"
        if len(rest) > 3:
            raise _Bad(rest[3].pos, f"{what}: unexpected `{rest[3].text}`", code="arg-count")
    return name, weight, reverse


def _c_track_interface(ctx: _Ctx, st: Stmt, row: Kw) -> tuple[m.TrackInterface, ...]:
    def one(line: Stmt) -> m.TrackInterface:
        name, weight, rev = _track_line(line, what="track_interface", lo=-253, hi=253)
        return m.TrackInterface(name=name, weight=weight or 0, reverse=rev, pos=line.pos)

    return _each_line(ctx, st, one)


def _c_track_script(ctx: _Ctx, st: Stmt, row: Kw) -> tuple[m.TrackRef, ...]:
    def one(line: Stmt) -> m.TrackRef:
        name, weight, rev = _track_line(line, what="track_script", lo=-253, hi=253)
        return m.TrackRef(name=name, weight=weight, reverse=rev, pos=line.pos)

    return _each_line(ctx, st, one)


def _c_track_file(ctx: _Ctx, st: Stmt, row: Kw) -> tuple[m.TrackRef, ...]:
    def one(line: Stmt) -> m.TrackRef:
        name, weight, rev = _track_line(line, what="track_file", lo=-254, hi=254)
        return m.TrackRef(name=name, weight=weight, reverse=rev, pos=line.pos)

    return _each_line(ctx, st, one)


def _c_unicast_peer(ctx: _Ctx, st: Stmt, row: Kw) -> tuple[m.UnicastPeer, ...]:
    def one(line: Stmt) -> m.UnicastPeer:
        words = _line_words(line)
        addr = parse_ip(words[0], what="unicast_peer")
        opts: dict[str, int] = {}
        rest = words[1:]
        for i in range(0, len(rest), 2):
            word = rest[i]
            if word.text not in ("min_ttl", "max_ttl") or word.text in opts:
                raise _Bad(
                    word.pos,
                    f"unicast_peer: unexpected `{word.text}`",
                    hint=_suggest(word.text, ["min_ttl", "max_ttl"]),
                )
            if i + 1 >= len(rest):
                raise _Bad(word.pos, f"unicast_peer: `{word.text}` needs a value", code="arg-count")
            opts[word.text] = parse_int(rest[i + 1], 0, 255, what=word.text)
        return m.UnicastPeer(
            address=addr, min_ttl=opts.get("min_ttl"), max_ttl=opts.get("max_ttl"), pos=line.pos
        )

    return _each_line(ctx, st, one)


_VIP_FLAGS = ("home", "-nodad", "mngtmpaddr", "noprefixroute", "autojoin", "use_vmac")
_VIP_VALUED = ("brd", "dev", "scope", "label", "peer", "track_group", "preferred_lft")


def _vip_line(line: Stmt) -> m.VirtualIpAddress:
    # man: <IPADDR>[/<MASK>] [brd <IPADDR>] [dev <STRING>] [scope <SCOPE>] [label <LABEL>]
    #      [peer <IPADDR>] [home] [-nodad] [mngtmpaddr] [noprefixroute] [autojoin] [no_track]
    #      [track_group GROUP] [preferred_lft nn|forever]
    words = _line_words(line)
    address = parse_interface(words[0], what="address")
    fields: dict[str, Any] = {}
    options: list[str] = []
    rest = words[1:]
    i = 0
    while i < len(rest):
        word = rest[i]
        name = word.text
        if name == "no_track":
            fields["no_track"] = True
            i += 1
        elif name in _VIP_FLAGS:
            options.append(name)
            i += 1
        elif name in _VIP_VALUED:
            if i + 1 >= len(rest):
                raise _Bad(word.pos, f"address option `{name}` needs a value", code="arg-count")
            value = rest[i + 1]
            if name == "brd":
                if value.text not in ("-", "+"):
                    parse_ip(value, what="brd", version=address.version)
                fields["brd"] = value.text
            elif name == "peer":
                fields["peer"] = parse_ip(value, what="peer", version=address.version)
            elif name == "scope":
                fields["scope"] = parse_choice(value, kw.Scope, what="scope")
            elif name in ("dev", "label"):
                fields[name] = value.text
            else:
                options.extend((name, value.text))
            i += 2
        else:
            raise _Bad(
                word.pos,
                f"unknown address option `{name}`",
                code="unknown-keyword",
                hint=_suggest(name, [*_VIP_FLAGS, *_VIP_VALUED, "no_track"]),
            )
    return m.VirtualIpAddress(address=address, options=tuple(options), pos=line.pos, **fields)


def _c_addresses(ctx: _Ctx, st: Stmt, row: Kw) -> tuple[m.VirtualIpAddress, ...]:
    return _each_line(ctx, st, _vip_line)


_ROUTE_TYPES = (
    "unicast",
    "local",
    "broadcast",
    "multicast",
    "throw",
    "unreachable",
    "prohibit",
    "blackhole",
    "nat",
    "anycast",
)
_ROUTE_FLAGS = ("onlink", "append", "pervasive", "inet6", "lock")
_ROUTE_VALUED = (
    "proto",
    "protocol",
    "tos",
    "dsfield",
    "mtu",
    "advmss",
    "rtt",
    "rttvar",
    "reordering",
    "window",
    "cwnd",
    "ssthresh",
    "realms",
    "rto_min",
    "initcwnd",
    "initrwnd",
    "features",
    "quickack",
    "congctl",
    "pref",
    "hoplimit",
    "vrf",
    "fastopen_no_cookie",
    "expires",
    "track_group",
    "encap",
    "ttl-propagate",
)


def _route_line(line: Stmt) -> m.Route:
    # man: static_routes / virtual_routes: `ip route add` syntax:
    #   [TYPE] [src IP] [to] DEST/MASK|default [via|gw IP [or IP]] [dev IF] [table T] ...
    words = _line_words(line)
    fields: dict[str, Any] = {}
    options: list[str] = []
    i = 0
    if words[i].text in _ROUTE_TYPES:
        fields["route_type"] = words[i].text
        i += 1
    if i < len(words) and words[i].text == "src":
        if i + 1 >= len(words):
            raise _Bad(words[i].pos, "route: `src` needs an address", code="arg-count")
        fields["src"] = parse_ip(words[i + 1], what="route src")
        i += 2
    if i < len(words) and words[i].text == "to":
        i += 1
    if i >= len(words):
        raise _Bad(line.keyword.pos, "route: missing destination", code="arg-count")
    dest_word = words[i]
    dest = None if dest_word.text == "default" else parse_network(dest_word, what="route")
    i += 1
    while i < len(words):
        word = words[i]
        name = word.text
        nxt = words[i + 1] if i + 1 < len(words) else None
        if name in ("no_track",):
            fields["no_track"] = True
            i += 1
            continue
        if name in _ROUTE_FLAGS:
            options.append(name)
            i += 1
            continue
        if name == "nexthop":
            # multipath: kept as written (not acted on)
            options.extend(w.text for w in words[i:])
            break
        if name not in (
            "via",
            "gw",
            "or",
            "dev",
            "oif",
            "table",
            "metric",
            "priority",
            "preference",
            "scope",
            "src",
            *_ROUTE_VALUED,
        ):
            raise _Bad(
                word.pos,
                f"unknown route option `{name}`",
                code="unknown-keyword",
                hint=_suggest(
                    name,
                    [
                        "via",
                        "gw",
                        "or",
                        "dev",
                        "table",
                        "metric",
                        "scope",
                        "no_track",
                        *_ROUTE_FLAGS,
                        *_ROUTE_VALUED,
                    ],
                ),
            )
        if nxt is None:
            raise _Bad(word.pos, f"route option `{name}` needs a value", code="arg-count")
        if name in ("via", "gw"):
            fields["via"] = parse_ip(nxt, what=f"route {name}")
        elif name == "or":
            fields["or_via"] = parse_ip(nxt, what="route or")
        elif name == "src":
            fields["src"] = parse_ip(nxt, what="route src")
        elif name in ("dev", "oif"):
            fields["dev"] = nxt.text
        elif name == "table":
            fields["table"] = nxt.text
        elif name in ("metric", "priority", "preference"):
            fields["metric"] = parse_int(nxt, 0, 2**32 - 1, what=f"route {name}")
        elif name == "scope":
            fields["scope"] = parse_choice(nxt, kw.Scope, what="route scope")
        else:
            options.extend((name, nxt.text))
        i += 2
    return m.Route(dest=dest, options=tuple(options), pos=line.pos, **fields)


def _c_routes(ctx: _Ctx, st: Stmt, row: Kw) -> tuple[m.Route, ...]:
    return _each_line(ctx, st, _route_line)


_RULE_FLAGS = ("not", "inet6", "l3mdev", "nop", "blackhole", "unreachable", "prohibit")
_RULE_VALUED = (
    "iif",
    "oif",
    "fwmark",
    "tos",
    "dsfield",
    "realms",
    "goto",
    "suppress_prefixlength",
    "suppress_ifgroup",
    "uidrange",
    "protocol",
    "ip_proto",
    "sport",
    "dport",
    "track_group",
    "lookup",
    "nat",
    "map-to",
)


def _rule_line(line: Stmt) -> m.Rule:
    # man: static_rules / virtual_rules: `ip rule add` syntax.
    words = _line_words(line)
    fields: dict[str, Any] = {}
    options: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        name = word.text
        nxt = words[i + 1] if i + 1 < len(words) else None
        if name == "no_track":
            fields["no_track"] = True
            i += 1
            continue
        if name in _RULE_FLAGS:
            options.append(name)
            i += 1
            continue
        valued = ("from", "to", "table", "preference", "priority", "prio", "order", *_RULE_VALUED)
        if name not in valued:
            raise _Bad(
                word.pos,
                f"unknown rule option `{name}`",
                code="unknown-keyword",
                hint=_suggest(name, [*valued, *_RULE_FLAGS, "no_track"]),
            )
        if nxt is None:
            raise _Bad(word.pos, f"rule option `{name}` needs a value", code="arg-count")
        if name in ("from", "to"):
            key = "from_" if name == "from" else "to"
            fields[key] = None if nxt.text == "all" else parse_network(nxt, what=f"rule {name}")
        elif name in ("table", "lookup"):
            fields["table"] = nxt.text
        elif name in ("preference", "priority", "prio", "order"):
            fields["preference"] = parse_int(nxt, 0, 2**32 - 1, what=f"rule {name}")
        else:
            options.extend((name, nxt.text))
        i += 2
    return m.Rule(options=tuple(options), pos=line.pos, **fields)


def _c_rules(ctx: _Ctx, st: Stmt, row: Kw) -> tuple[m.Rule, ...]:
    return _each_line(ctx, st, _rule_line)


def _c_smtp_server(ctx: _Ctx, st: Stmt, row: Kw) -> m.SmtpServer:
    _arity(st, 1, 2)
    port = parse_int(st.args[1], 1, 65535, what="smtp_server port") if len(st.args) > 1 else None
    return m.SmtpServer(
        host=st.args[0].text, port=port if port is not None else kw.DEFAULT_SMTP_PORT, pos=st.pos
    )


_SYNC_OPTS = {"id": (0, 255), "maxlen": (1, 65507), "port": (1, 65535), "ttl": (1, 255)}


def _c_lvs_sync_daemon(ctx: _Ctx, st: Stmt, row: Kw) -> m.LvsSyncDaemon:
    # man: lvs_sync_daemon <INTERFACE> [[inst] <VRRP_INSTANCE>] [id <SYNC_ID>] [maxlen <LEN>]
    #      [port <PORT>] [ttl <TTL>] [group <IP ADDR>]
    _arity(st, 1, 13)
    a = list(st.args)
    fields: dict[str, Any] = {"interface": a[0].text}
    i = 1
    if i < len(a) and a[i].text == "inst":
        if i + 1 >= len(a):
            raise _Bad(a[i].pos, "lvs_sync_daemon: `inst` needs an instance name", code="arg-count")
        fields["instance"] = a[i + 1].text
        i += 2
    elif i < len(a) and a[i].text not in (*_SYNC_OPTS, "group"):
        fields["instance"] = a[i].text
        i += 1
    seen: set[str] = set()
    while i < len(a):
        word = a[i]
        if word.text not in (*_SYNC_OPTS, "group") or word.text in seen:
            raise _Bad(
                word.pos,
                f"lvs_sync_daemon: unexpected `{word.text}`",
                hint=_suggest(word.text, [*_SYNC_OPTS, "group"]),
            )
        if i + 1 >= len(a):
            raise _Bad(word.pos, f"lvs_sync_daemon: `{word.text}` needs a value", code="arg-count")
        seen.add(word.text)
        value = a[i + 1]
        if word.text == "group":
            group = parse_ip(value, what="lvs_sync_daemon group")
            if not group.is_multicast:
                raise _Bad(value.pos, f"lvs_sync_daemon group: `{value.text}` is not multicast")
            fields["group"] = group
        else:
            lo, hi = _SYNC_OPTS[word.text]
            name = "sync_id" if word.text == "id" else word.text
            fields[name] = parse_int(value, lo, hi, what=f"lvs_sync_daemon {word.text}")
        i += 2
    return m.LvsSyncDaemon(pos=st.pos, **fields)


def _c_lvs_timeouts(ctx: _Ctx, st: Stmt, row: Kw) -> m.LvsTimeouts:
    # man: lvs_timeouts [tcp SECS] [tcpfin SECS] [udp SECS]; at least one.
    # Range: ipvsadm's 0..2678400 (spec/ipvs.md §3.2); 0 would mean "unchanged", so 1..
    _arity(st, 2, 6)
    fields: dict[str, int] = {}
    a = st.args
    for i in range(0, len(a), 2):
        word = a[i]
        if word.text not in ("tcp", "tcpfin", "udp") or word.text in fields:
            raise _Bad(
                word.pos,
                f"lvs_timeouts: unexpected `{word.text}`",
                hint=_suggest(word.text, ["tcp", "tcpfin", "udp"]),
            )
        if i + 1 >= len(a):
            raise _Bad(word.pos, f"lvs_timeouts: `{word.text}` needs a value", code="arg-count")
        fields[word.text] = parse_int(a[i + 1], 1, 2678400, what=f"lvs_timeouts {word.text}")
    return m.LvsTimeouts(pos=st.pos, **fields)


def _c_flush_on_stop(ctx: _Ctx, st: Stmt, row: Kw) -> kw.FlushOnStop:
    _arity(st, 0, 1)
    if not st.args:
        return kw.FlushOnStop.ALL
    if st.args[0].text != "VS":
        raise _Bad(st.args[0].pos, f"{st.keyword.text}: expected `VS`, got `{st.args[0].text}`")
    return kw.FlushOnStop.VS


def _c_sync_auth_key(ctx: _Ctx, st: Stmt, row: Kw) -> str:
    _arity(st, 1, 1)
    key = st.args[0].text
    if len(key.encode()) < kw.SYNC_AUTH_KEY_MIN_LEN:
        raise _Bad(
            st.args[0].pos,
            f"sync_auth_key: the key must be at least {kw.SYNC_AUTH_KEY_MIN_LEN} bytes",
        )
    return key


def _c_sysctl(ctx: _Ctx, st: Stmt, row: Kw) -> int:
    _arity(st, 1, 1)
    name = st.keyword.text
    lo, hi = kw.SYSCTL_RANGES.get(name, (0, 2**31 - 1))
    value = parse_int(st.args[0], lo, hi, what=name)
    if name == "sync_ports" and value & (value - 1):
        raise _Bad(st.args[0].pos, f"sync_ports: {value} is not a power of two")
    return value


def _c_sync_threshold(ctx: _Ctx, st: Stmt, row: Kw) -> _Fields:
    # Kernel (proc_do_sync_threshold): both >= 0, and threshold < period unless period is 0.
    _arity(st, 2, 2)
    threshold = parse_int(st.args[0], 0, 2**31 - 1, what="sync_threshold")
    period = parse_int(st.args[1], 0, 2**31 - 1, what="sync_threshold period")
    if period and threshold >= period:
        raise _Bad(
            st.args[0].pos,
            f"sync_threshold: threshold {threshold} must be below the period {period}",
            code="out-of-range",
        )
    return _Fields(sync_threshold=threshold, sync_period=period)


_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\Z")


def _c_use_vmac(ctx: _Ctx, st: Stmt, row: Kw) -> tuple[str, ...]:
    # keepalived: use_vmac [<VMAC_INTERFACE> [<MAC_ADDRESS>]]; a Linux link name has 1..15
    # characters
    _arity(st, 0, 2)
    words = tuple(w.text for w in st.args)
    if words and not 1 <= len(words[0]) <= 15:
        raise _Bad(st.args[0].pos, f"use_vmac: `{words[0]}` is not 1..15 characters long")
    if len(words) > 1 and not _MAC_RE.match(words[1]):
        raise _Bad(st.args[1].pos, f"use_vmac: `{words[1]}` is not a MAC address")
    return words


CUSTOM: dict[str, Callable[[_Ctx, Stmt, Kw], Any]] = {
    "script": _c_script,
    "user": _c_user,
    "digest": _c_digest,
    "status_code": _c_status_code,
    "header": _c_header,
    "basic_auth": _c_basic_auth,
    "hex": _c_hex,
    "require_reply": _c_require_reply,
    "script_weight": _c_script_weight,
    "file_weight": _c_file_weight,
    "init_file": _c_init_file,
    "lvs_method": _c_lvs_method,
    "persistence_timeout": _c_persistence_timeout,
    "granularity": _c_granularity,
    "sorry_server": _c_sorry_server,
    "sched_flag": _c_sched_flag,
    "names": _c_names,
    "track_interface": _c_track_interface,
    "track_script": _c_track_script,
    "track_file": _c_track_file,
    "unicast_peer": _c_unicast_peer,
    "addresses": _c_addresses,
    "routes": _c_routes,
    "rules": _c_rules,
    "smtp_server": _c_smtp_server,
    "lvs_sync_daemon": _c_lvs_sync_daemon,
    "lvs_timeouts": _c_lvs_timeouts,
    "flush_on_stop": _c_flush_on_stop,
    "sync_auth_key": _c_sync_auth_key,
    "sysctl": _c_sysctl,
    "sync_threshold": _c_sync_threshold,
    "use_vmac": _c_use_vmac,
}


# ---------------------------------------------------------------------------------------------
# The generic walker


# Where each keyword is valid, for "belongs in ..." hints on misplaced keywords.
_HOMES: dict[str, list[str]] = {}
for _home, _table in kw.BLOCKS.items():
    for _keyword in _table.keywords:
        _HOMES.setdefault(_keyword, []).append(_home)


def _raw(st: Node) -> m.RawStmt:
    block = tuple(_raw(s) for s in st.block) if st.block is not None else None
    return m.RawStmt(keyword=st.keyword, args=st.args, block=block, pos=node_pos(st))


def _unknown(ctx: _Ctx, st: Node, block: Block, where: str) -> None:
    name = st.keyword
    homes = [h for h in _HOMES.get(name, ()) if h != block.name]
    if homes:
        # A real keyword in the wrong block: say where it belongs rather than guess a typo.
        shown = ["the top level" if h == "<top>" else f"`{h}`" for h in homes[:3]]
        more = ", ..." if len(homes) > 3 else ""
        hint = f"`{name}` is valid in {', '.join(shown)}{more}"
    else:
        hint = _suggest(name, block.names())
    if block.name == "vrrp_sync_group" and not st.args and st.block is None and not hint:
        hint = "list the instances inside `group { ... }`"
    ctx.error(
        keyword_pos(st), f"unknown keyword `{name}` in {where}", code="unknown-keyword", hint=hint
    )


# One converter per argument-spec type: the builder dispatches on `type(row.spec)`. Each
# reads the words' text and takes the common, valid case at once; anything else (a wrong
# count, a bad value) goes through the `Stmt` of the statement, whose words have their
# positions, to be reported there.


def _conv_flag(ctx: _Ctx, row: Kw, st: Node) -> Any:
    if not st.args:
        return True
    stmt = node_stmt(st)
    _arity(stmt, 0, 1)
    return parse_bool(stmt.args[0], what=st.keyword)


def _conv_int(ctx: _Ctx, row: Kw, st: Node) -> Any:
    spec = row.spec
    assert isinstance(spec, kw.Int)
    args = st.args
    if len(args) == 1:
        text = args[0]
        if text.isascii() and text.isdigit():
            value = int(text)
            if spec.lo <= value <= spec.hi:
                return value
    stmt = node_stmt(st)
    _arity(stmt, 1, 1)
    return parse_int(stmt.args[0], spec.lo, spec.hi, what=st.keyword)


def _conv_timer(ctx: _Ctx, row: Kw, st: Node) -> Any:
    spec = row.spec
    assert isinstance(spec, kw.Timer)
    args = st.args
    if len(args) == 1:
        text = args[0]
        if text.isascii() and text.isdigit():
            value = float(text)
            if spec.lo <= value <= spec.hi and not math.isinf(value):
                return value
    stmt = node_stmt(st)
    _arity(stmt, 1, 1)
    return parse_timer(stmt.args[0], spec.lo, spec.hi, what=st.keyword)


def _conv_str(ctx: _Ctx, row: Kw, st: Node) -> Any:
    if len(st.args) != 1:
        _arity(node_stmt(st), 1, 1)
    return st.args[0]


def _conv_text(ctx: _Ctx, row: Kw, st: Node) -> Any:
    if not st.args:
        _arity(node_stmt(st), 1, None)
    return " ".join(st.args)


_MEMBERS: dict[type[enum.StrEnum], dict[str, enum.StrEnum]] = {}


def _conv_choice(ctx: _Ctx, row: Kw, st: Node) -> Any:
    spec = row.spec
    assert isinstance(spec, kw.Choice)
    members = _MEMBERS.get(spec.enum)
    if members is None:
        members = _MEMBERS[spec.enum] = {c.value: c for c in spec.enum}
    if len(st.args) == 1:
        found = members.get(st.args[0])
        if found is not None:
            return found
    stmt = node_stmt(st)
    _arity(stmt, 1, 1)
    return parse_choice(stmt.args[0], spec.enum, what=st.keyword)


def _conv_addr(ctx: _Ctx, row: Kw, st: Node) -> Any:
    spec = row.spec
    assert isinstance(spec, kw.Addr)
    if len(st.args) == 1:
        try:
            addr = _ip(st.args[0])
        except ValueError:
            pass
        else:
            if spec.version is None or addr.version == spec.version:
                return addr
    stmt = node_stmt(st)
    _arity(stmt, 1, 1)
    return parse_ip(stmt.args[0], what=st.keyword, version=spec.version)


def _conv_raw(ctx: _Ctx, row: Kw, st: Node) -> Any:
    spec = row.spec
    assert isinstance(spec, kw.Raw)
    _arity(node_stmt(st), spec.min_args, spec.max_args)
    return _raw(st)


def _conv_sub(ctx: _Ctx, row: Kw, st: Node) -> Any:
    if st.args:
        _arity(node_stmt(st), 0, 0)
    return st  # built by the enclosing block's builder


def _fast_lvs_method(st: Node) -> Any:
    if len(st.args) == 1:
        method = _LVS_METHODS.get(st.args[0])
        if method is not None:
            return _MAKE[m.Forwarding](method=method, pos=node_pos(st))
    return None


_LVS_METHODS = {method.value: method for method in kw.LvsMethod}

# The common, valid case of a custom keyword, read from the words' text (None: anything
# else, for the converter in CUSTOM).
_FAST_CUSTOM: dict[str, Callable[[Node], Any]] = {"lvs_method": _fast_lvs_method}


def _conv_custom(ctx: _Ctx, row: Kw, st: Node) -> Any:
    spec = row.spec
    assert isinstance(spec, kw.Custom)
    name = spec.name
    if name in _DEFERRED:
        return st  # built by the enclosing block's builder, which knows the inheritance
    fast = _FAST_CUSTOM.get(name)
    if fast is not None:
        value = fast(st)
        if value is not None:
            return value
    return CUSTOM[name](ctx, node_stmt(st), row)


_CONVERTERS: dict[type, Callable[[_Ctx, Kw, Node], Any]] = {
    kw.Flag: _conv_flag,
    kw.Int: _conv_int,
    kw.Timer: _conv_timer,
    kw.Str: _conv_str,
    kw.Text: _conv_text,
    kw.Choice: _conv_choice,
    kw.Addr: _conv_addr,
    kw.Raw: _conv_raw,
    kw.Sub: _conv_sub,
    kw.Custom: _conv_custom,
}


def _collect(
    ctx: _Ctx, stmts: Sequence[Node], block: Block, cls: type, *, where: str | Node
) -> _Values:
    """Walk one block: typed values by model field, deferred sub-statements, raw keywords.

    Returns a dict of model field -> value (`many` fields as tuples); keywords without a model
    field are gathered under "unimplemented" as `RawStmt`. `where` names the block in
    messages; a `Node` is rendered as `keyword args...` only when a message needs it.

    This loop runs once per statement of the configuration: it is kept to dict lookups and
    attribute reads (the 10,000-service benchmark spends most of the build here).
    """
    table = _dispatch(block, cls)
    values = _Values()
    values.bad = _NO_FIELDS
    values.pos = positions = {}
    lists: list[str] = []
    unimplemented: list[m.RawStmt] = []
    for st in stmts:
        name = st.keyword
        entry = table.get(name)
        if entry is None:
            _unknown(ctx, st, block, _where(where))
            continue
        row, convert, attr, many, kept, takes_block, list_block = entry
        if takes_block is (st.block is None):
            _block_mismatch(ctx, st, row)
            continue
        if row.notice:
            _notice(ctx, st, row)
        try:
            value = convert(ctx, row, st)
        except _Bad as exc:
            ctx.bad(exc)
            values.mark_bad(attr)
            continue
        if kept:
            unimplemented.append(value if type(value) is m.RawStmt else _raw(st))
            continue
        if many:
            bucket = values.get(attr)
            if bucket is None:
                bucket = values[attr] = []
                lists.append(attr)
                positions[attr] = st
            if list_block and type(value) is tuple:
                bucket.extend(value)  # a list block: its lines add to the field
            else:
                bucket.append(value)
            continue
        previous = positions.get(attr)
        if previous is not None:
            ctx.warn(
                keyword_pos(st),
                f"`{name}` given again (line {previous.line}); the later value wins",
                code="duplicate-keyword",
            )
        positions[attr] = st
        if type(value) is _Fields:
            values.update(value)
        else:
            values[attr] = value
    for attr in lists:
        values[attr] = tuple(values[attr])
    if unimplemented:
        values["unimplemented"] = tuple(unimplemented)
    return values


_KEPT_RAW: dict[tuple[str, type], frozenset[str]] = {}


def _kept_raw(block: Block, cls: type) -> frozenset[str]:
    """Keywords of `block` kept as `RawStmt` for `cls`: raw specs, and rows without a field."""
    key = (block.name, cls)
    found = _KEPT_RAW.get(key)
    if found is None:
        fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
        found = frozenset(
            name
            for name, row in block.keywords.items()
            if row.attr not in fields or isinstance(row.spec, kw.Raw)
        )
        _KEPT_RAW[key] = found
    return found


# What `_collect` needs of a keyword's row, resolved once per (block, model class) rather
# than read attribute by attribute for each of a large file's statements: (row, converter,
# model field, many, kept as RawStmt, takes a block, a list block whose tuples extend).
_Entry = tuple[Kw, Callable[[_Ctx, Kw, Node], Any], str, bool, bool, bool, bool]
_DISPATCH: dict[tuple[int, type], tuple[Block, dict[str, _Entry]]] = {}


def _dispatch(block: Block, cls: type) -> dict[str, _Entry]:
    """`block`'s keywords -> their `_Entry` for building `cls`."""
    key = (id(block), cls)
    found = _DISPATCH.get(key)
    if found is not None and found[0] is block:
        return found[1]
    kept_raw = _kept_raw(block, cls)
    table: dict[str, _Entry] = {}
    for name, row in block.keywords.items():
        spec = row.spec
        table[name] = (
            row,
            _CONVERTERS[type(spec)],
            row.attr,
            row.many,
            name in kept_raw,
            row.takes_block,
            row.takes_block and type(spec) is kw.Custom,
        )
    _DISPATCH[key] = (block, table)
    return table


def _where(where: str | Node) -> str:
    if isinstance(where, str):
        return where
    return " ".join([where.keyword, *where.args])


def _block_mismatch(ctx: _Ctx, st: Node, row: Kw) -> None:
    name = st.keyword
    if row.takes_block:
        ctx.error(keyword_pos(st), f"`{name}` needs a {{ ... }} block", code="missing-block")
    else:
        ctx.error(keyword_pos(st), f"`{name}` takes no {{ ... }} block", code="unexpected-block")


def _notice(ctx: _Ctx, st: Node, row: Kw) -> None:
    name = st.keyword
    if row.deprecated:
        ctx.warn(keyword_pos(st), f"`{name}` is deprecated: {row.deprecated}", code="deprecated")
    if not row.implemented:
        ctx.warn(
            keyword_pos(st),
            f"`{name}` accepted, not implemented: hactl keeps it but does not act on it",
            code="not-implemented",
        )


def _name(ctx: _Ctx, st: Node, what: str) -> str | None:
    if not st.args:
        ctx.error(keyword_pos(st), f"`{what}` needs a name", code="arg-count")
        return None
    if len(st.args) > 1:
        ctx.error(
            node_words(st)[2].pos,
            f"`{what}` takes one name, got {len(st.args)} words",
            code="arg-count",
        )
        return None
    return st.args[0]


# ---------------------------------------------------------------------------------------------
# Block builders


def _build_global(ctx: _Ctx, blocks: Sequence[Node]) -> m.GlobalDefs:
    stmts = [inner for st in blocks if st.block is not None for inner in st.block]
    values = _collect(ctx, stmts, kw.BLOCKS["global_defs"], m.GlobalDefs, where="global_defs")
    sysctl_st = values.pop("ipvs_sysctl", None)
    if sysctl_st is not None:
        assert sysctl_st.block is not None
        sysctl = _collect(
            ctx, sysctl_st.block, kw.BLOCKS["ipvs_sysctl"], IpvsSysctl, where="ipvs_sysctl"
        )
        sysctl.pop("unimplemented", None)
        values["ipvs_sysctl"] = IpvsSysctl(**sysctl)
        for name, where in sysctl.pos.items():
            values.pos[f"ipvs_sysctl.{name}"] = where
    return m.GlobalDefs(pos=node_pos(blocks[0]), keyword_pos=values.positions(), **values)


def _build_vrrp_script(ctx: _Ctx, st: Node, name: str) -> m.VrrpScript:
    assert st.block is not None
    values = _collect(
        ctx, st.block, kw.BLOCKS["vrrp_script"], m.VrrpScript, where=f"vrrp_script {name}"
    )
    if not values.has("script"):
        ctx.error(keyword_pos(st), f"vrrp_script {name} has no `script`", code="missing")
    return m.VrrpScript(name=name, pos=node_pos(st), **values)


def _build_track_file(ctx: _Ctx, st: Node, name: str) -> m.TrackFile:
    assert st.block is not None
    values = _collect(
        ctx, st.block, kw.BLOCKS["vrrp_track_file"], m.TrackFile, where=f"track_file {name}"
    )
    if not values.has("file"):
        ctx.error(keyword_pos(st), f"track_file {name} has no `file`", code="missing")
    return m.TrackFile(name=name, pos=node_pos(st), **values)


def _build_sync_group(ctx: _Ctx, st: Node, name: str) -> m.SyncGroup:
    assert st.block is not None
    before = len(ctx.errors)
    values = _collect(
        ctx, st.block, kw.BLOCKS["vrrp_sync_group"], m.SyncGroup, where=f"vrrp_sync_group {name}"
    )
    # Legacy member lines outside `group { }` are already reported one by one; saying
    # "no instances" on top would repeat the same problem.
    if not values.get("group") and len(ctx.errors) == before:
        ctx.error(
            keyword_pos(st),
            f"vrrp_sync_group {name} has no instances (`group {{ ... }}`)",
            code="missing",
        )
    for group_st in st.block:
        if group_st.keyword == "group" and group_st.block:
            for line in group_st.block:
                values.pos.setdefault(f"group:{line.keyword}", line)
    return m.SyncGroup(name=name, pos=node_pos(st), keyword_pos=values.positions(), **values)


def _build_vrrp_instance(ctx: _Ctx, st: Node, name: str, glob: m.GlobalDefs) -> m.VrrpInstance:
    assert st.block is not None
    values = _collect(
        ctx, st.block, kw.BLOCKS["vrrp_instance"], m.VrrpInstance, where=f"vrrp_instance {name}"
    )
    auth_st = values.pop("authentication", None)
    if auth_st is not None:
        auth = _collect(
            ctx,
            auth_st.block,
            kw.BLOCKS["authentication"],
            m.Authentication,
            where="authentication",
        )
        values["authentication"] = m.Authentication(pos=node_pos(auth_st), **auth)
    if not values.has("virtual_router_id"):
        ctx.error(
            keyword_pos(st), f"vrrp_instance {name} has no `virtual_router_id`", code="missing"
        )
    # Inherited from global_defs (man: "interface specific settings, same as global
    # parameters. default to global parameters"); version: IPv6 instances always use 3.
    for local, glob_name in (
        ("garp_master_delay", "vrrp_garp_master_delay"),
        ("garp_master_repeat", "vrrp_garp_master_repeat"),
        ("garp_master_refresh", "vrrp_garp_master_refresh"),
        ("garp_master_refresh_repeat", "vrrp_garp_master_refresh_repeat"),
        ("check_unicast_src", "vrrp_check_unicast_src"),
    ):
        values.setdefault(local, getattr(glob, glob_name))
    if "version" not in values:
        values["version"] = default_version(values.get("virtual_ipaddress", ()), glob)
    return m.VrrpInstance(name=name, pos=node_pos(st), keyword_pos=values.positions(), **values)


def default_version(vips: Sequence[m.VirtualIpAddress], glob: m.GlobalDefs) -> int:
    """The VRRP version of an instance without `version` (man: vrrp_version, version)."""
    if vips and vips[0].address.version == 6:
        return 3
    return glob.vrrp_version


def _build_vsg(ctx: _Ctx, st: Node) -> m.VirtualServerGroup | None:
    name = _name(ctx, st, "virtual_server_group")
    assert st.block is not None
    stmt = node_stmt(st)
    members = _each_line(ctx, stmt, _vsg_line, named=True)
    if name is None:
        return None
    return m.VirtualServerGroup(name=name, members=members, pos=stmt.pos)


def _vsg_line(line: Stmt) -> m.VsgMember:
    words = _line_words(line)
    if words[0].text == "fwmark":
        if len(words) < 2:
            raise _Bad(words[0].pos, "fwmark needs a value", code="arg-count")
        mark = parse_int(words[1], 1, 2**32 - 1, what="fwmark")
        family = parse_choice(words[2], kw.IpFamily, what="family") if len(words) > 2 else None
        if len(words) > 3:
            raise _Bad(words[3].pos, f"unexpected `{words[3].text}`", code="arg-count")
        return m.VsgMember(fwmark=mark, family=family, pos=line.pos)
    first, last = _vsg_range(words[0])
    port = parse_int(words[1], 0, 65535, what="port") if len(words) > 1 else None
    if len(words) > 2:
        raise _Bad(words[2].pos, f"unexpected `{words[2].text}`", code="arg-count")
    return m.VsgMember(first=first, last=last, port=port, text=words[0].text, pos=line.pos)


def _vsg_range(word: Word) -> tuple[m.IPAddress, m.IPAddress]:
    # man: IP, IP-LAST (last octet / last hextet), IP-IP, IP/nn
    text = word.text
    bad = _Bad(word.pos, f"invalid IP address or range `{text}`")
    try:
        if "/" in text:
            net = ipaddress.ip_network(text, strict=False)
            return net[0], net[-1]
        if "-" in text:
            lo_s, _, hi_s = text.partition("-")
            lo = ipaddress.ip_address(lo_s)
            if ":" in hi_s or "." in hi_s:
                hi = ipaddress.ip_address(hi_s)
            elif lo.version == 4:
                hi = ipaddress.ip_address(lo_s.rsplit(".", 1)[0] + "." + hi_s)
            else:
                hi = ipaddress.ip_address(lo_s.rsplit(":", 1)[0] + ":" + hi_s)
            if hi.version != lo.version or hi < lo:  # type: ignore[operator]
                raise bad
            return lo, hi
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise bad from None
    return addr, addr


def _ip_port_header(a: tuple[str, ...]) -> dict[str, Any] | None:
    """The header of `IP PORT` read from the words' text; None for anything else (and for
    a bad value), which the full path then parses and reports."""
    if len(a) == 2 and a[1].isascii() and a[1].isdigit():
        try:
            addr = _ip(a[0])
        except ValueError:
            return None
        port = int(a[1])
        if port <= 65535:
            return {"address": addr, "port": port}
    return None


def _vs_header(ctx: _Ctx, node: Node) -> dict[str, Any] | None:
    fast = _ip_port_header(node.args)  # `virtual_server IP PORT`, the common case
    if fast is not None:
        return fast
    st = node_stmt(node)
    words = st.args
    try:
        if not words:
            raise _Bad(
                st.keyword.pos,
                "`virtual_server` needs IP PORT, `fwmark N` or `group NAME`",
                code="arg-count",
            )
        if words[0].text in ("fwmark", "group"):
            _arity(st, 2, 2)
            if words[0].text == "fwmark":
                return {"fwmark": parse_int(words[1], 1, 2**32 - 1, what="fwmark")}
            return {"group": words[1].text}
        _arity(st, 1, 2)
        addr = parse_ip(words[0], what="virtual_server")
        port = parse_int(words[1], 0, 65535, what="virtual_server port") if len(words) > 1 else 0
        return {"address": addr, "port": port}
    except _Bad as exc:
        ctx.bad(exc)
        return None


def _build_virtual_server(ctx: _Ctx, st: Node) -> m.VirtualServer | None:
    assert st.block is not None
    header = _vs_header(ctx, st)
    values = _vs_values(ctx, st.block, st)
    rs_stmts: list[Node] = values.pop("real_servers", [])
    flags = values.pop("sched_flags", None)
    if flags is not None:
        values["sched_flags"] = frozenset(flags)
    # What the real servers inherit, and the VS key, are known before the VS object is built,
    # so it is constructed once, with its real servers (no dataclasses.replace per VS).
    inherited = {"rise": kw.DEFAULT_RISE}  # the real servers' default `rise`
    for name in _RS_INHERITED:
        inherited[name] = values.get(name, _VS_DEFAULTS[name])
    head = header or {}
    key = m.vs_key(
        address=head.get("address"),
        port=head.get("port", 0),
        fwmark=head.get("fwmark"),
        group=head.get("group"),
        protocol=values.get("protocol", kw.DEFAULT_PROTOCOL),
        ip_family=values.get("ip_family"),
    )
    # With a bad header the real servers are still walked, so their errors are reported too.
    real_servers = []
    if rs_stmts:
        base = _RsBase(key, inherited)
        for rs_st in rs_stmts:
            rs = _build_real_server(ctx, rs_st, base)
            if rs is not None:
                real_servers.append(rs)
    if header is None:
        return None
    _implicit_vs_defaults(ctx, st, header, values, bool(real_servers))
    return _MAKE[m.VirtualServer](  # type: ignore[no-any-return]
        pos=node_pos(st),
        keyword_pos=values.positions(),
        real_servers=tuple(real_servers),
        **header,
        **values,
    )


# What a virtual server block of `_Ctx.virtual_servers` gave: its values, the index of the
# statement of each `real_servers` entry (in place of the statement), where its keywords are
# (field, index of the statement), and the fields holding a `Forwarding` at its statement's
# position (remade at the repeat's).
_VsTemplate = tuple[dict[str, Any], tuple[tuple[str, int], ...], tuple[str, ...]]
_VS_BLOCK = kw.BLOCKS["virtual_server"]
_RS_MARK = ("real_server",)  # one element: never a leaf's (keyword, args)


def _vs_content(block: Sequence[Node]) -> tuple[Any, ...] | None:
    """A virtual server block's words, as a key of `_Ctx.virtual_servers`: its leaves' words
    and the place of its real servers (whose blocks `_collect` does not read); None for any
    other sub-block."""
    content: list[Any] = []
    for node in block:
        keyword, args, inner = node[0], node[1], node[2]
        if inner is None:
            content.append((keyword, args))
        elif keyword == "real_server":
            content.append(_RS_MARK)  # its words are its own builder's (`_conv_custom`)
        else:
            return None
    return tuple(content)


def _vs_values(ctx: _Ctx, block: Sequence[Node], st: Node) -> _Values:
    """`_collect` of a virtual server block, read once per distinct block.

    A large file repeats the service keywords (`delay_loop 6`, `lb_kind DR` ...) under every
    virtual server. A block of leaves and real servers whose reading found nothing to
    report and gave plain data (and `Forwarding`s at their statement's position) is kept
    with what it gave: its repeats take the values, with their own statements and
    positions, and are not read again.
    """
    content = _vs_content(block)
    if content is not None:
        template = ctx.virtual_servers.get(content)
        if template is not None:
            own, where, forwarding = template
            values = _Values(own)
            values.bad = _NO_FIELDS
            values.pos = {name: block[i] for name, i in where}
            rs_at = own.get("real_servers")
            if rs_at is not None:
                values["real_servers"] = tuple([block[i] for i in rs_at])
            for name in forwarding:
                values[name] = _COPY[m.Forwarding](own[name], pos=node_pos(values.pos[name]))
            return values
    reported = len(ctx.errors) + len(ctx.warnings)
    values = _collect(ctx, block, _VS_BLOCK, m.VirtualServer, where=st)
    if content is None or len(ctx.errors) + len(ctx.warnings) != reported or values.bad:
        return values
    index_of = {id(node): i for i, node in enumerate(block)}
    own = dict(values)
    forwarded: list[str] = []
    for name, value in values.items():
        if name == "real_servers":
            own[name] = tuple([index_of[id(node)] for node in value])
        elif type(value) is m.Forwarding:
            node = values.pos.get(name)
            if node is None or value.pos != node_pos(node):
                return values
            forwarded.append(name)
        elif type(value) not in _PLAIN_TYPES and not isinstance(value, enum.Enum):
            return values
    ctx.virtual_servers[content] = (
        own,
        tuple((name, index_of[id(node)]) for name, node in values.pos.items()),
        tuple(forwarded),
    )
    return values


def _implicit_vs_defaults(
    ctx: _Ctx, st: Node, header: Mapping[str, Any], values: _Values, has_real_servers: bool
) -> None:
    """Warn where keepalived 2.2.7 fills a value in and `keepalived -t` flags it
    (check_data.c validate_check_config): the model takes the same value, said out loud."""
    implicit = []
    if "fwmark" in header:
        if values.has("protocol"):
            protocol_st = values.pos.get("protocol")
            where_protocol = keyword_pos(st if protocol_st is None else protocol_st)
            ctx.warn(
                where_protocol,
                f"{_where(st)}: `protocol` is ignored for a fwmark service",
                code="ignored",
            )
    elif not values.has("protocol"):
        implicit.append(f"protocol {kw.DEFAULT_PROTOCOL}")
    if not values.has("lvs_sched"):
        implicit.append(f"lvs_sched {kw.DEFAULT_LVS_SCHED}")
    if not values.has("lvs_method"):
        implicit.append(f"lvs_method {kw.DEFAULT_LVS_METHOD}")
    if implicit:
        ctx.warn(
            keyword_pos(st),
            f"{_where(st)} relies on keepalived's defaults ({', '.join(implicit)}); write them out",
            code="keepalived-default",
            hint="keepalived -t reports these as configuration errors; UDP is the kernel's "
            "default when no protocol is given",
        )
    if not has_real_servers:
        ctx.warn(
            keyword_pos(st),
            f"{_where(st)} has no real servers: keepalived ignores it",
            code="no-real-servers",
        )


_RS_INHERITED = (
    "lvs_method",
    "inhibit_on_failure",
    "alpha",
    "retry",
    "delay_before_retry",
    "warmup",
    "connect_timeout",
    "delay_loop",
    "virtualhost",
)


_VS_BLANK = m.VirtualServer()
_VS_DEFAULTS = {name: getattr(_VS_BLANK, name) for name in _RS_INHERITED}
_KINDS = {kind.value: kind for kind in CheckerKind}


def _rs_header(ctx: _Ctx, node: Node) -> dict[str, Any] | None:
    fast = _ip_port_header(node.args)  # `real_server IP PORT`, the common case
    if fast is not None:
        return fast
    st = node_stmt(node)
    header: dict[str, Any]
    try:
        _arity(st, 1, 2)
        header = {"address": parse_ip(st.args[0], what="real_server")}
        if len(st.args) > 1:
            header["port"] = parse_int(st.args[1], 0, 65535, what="real_server port")
    except _Bad as exc:
        ctx.bad(exc)
        return None
    return header


class _RsBase:
    """What the real servers of one virtual server start from: the service's key, the values
    they inherit (and the default `rise`), and, made when first needed, a real server with
    just these values, which the others are copies of."""

    __slots__ = ("checker_key", "fields", "key_id", "proto", "vs_key")

    def __init__(self, vs_key: m.Key, fields: dict[str, Any]) -> None:
        self.vs_key = vs_key
        self.fields = fields
        self.proto: m.RealServer | None = None
        # `_checker_key(fields)`, and its number in `_Ctx.checker_keys`, once first needed.
        self.checker_key: tuple[Any, ...] | None = None
        self.key_id = -1


# A real server's address until its copy gets its own (every real server has an address).
_NO_ADDRESS = ipaddress.IPv4Address(0)


def _rs_content(block: Sequence[Node]) -> tuple[Any, ...] | None:
    """A real server block's words, as a key of `_Ctx.real_servers`: its statements, each
    with the statements of its block; None for a block nested deeper (a checker's `url`)."""
    content: list[Any] = []
    for node in block:
        # Subscripts rather than an unpacked slice: no tuple made per statement.
        keyword, args, inner = node[0], node[1], node[2]
        if inner is None:
            content.append((keyword, args))
            continue
        lines = []
        for line in inner:
            if line[2] is not None:
                return None
            lines.append(line[:2])
        content.append((keyword, args, tuple(lines)))
    return tuple(content)


# What a real server block of `_Ctx.real_servers` made: its own values (plain data), where
# its keywords are (field, index of the statement), and its checkers (index of the
# statement, index among its kind, the checker its copies are made from).
_RsTemplate = tuple[
    dict[str, Any], tuple[tuple[str, int], ...], tuple[tuple[int, int, m.Checker], ...]
]


def _build_real_server(ctx: _Ctx, st: Node, base: _RsBase) -> m.RealServer | None:
    """A real server of the service `base` stands for.

    A large file repeats real server blocks word for word (`weight 1`, the same checker)
    under services with the same inherited values. A block read with nothing to report, and
    whose values are plain data and whose checkers are copies of one made checker (see
    `_build_checker`), is kept with what it made (`_RsTemplate`): its repeats take the
    values and copy the checkers, with their own positions, and are not read again.
    """
    block = st.block
    assert block is not None
    header = _rs_header(ctx, st)
    if base.checker_key is None:
        base.checker_key = _checker_key(base.fields)
        base.key_id = ctx.checker_keys.setdefault(base.checker_key, len(ctx.checker_keys))
    content = _rs_content(block)
    key = None if content is None else (content, base.key_id)
    if key is not None and header is not None:
        template = ctx.real_servers.get(key)
        if template is not None:
            values, where, made = template
            address = header["address"]
            port = header.get("port")
            rs_key = (base.vs_key, address, port or 0)  # = RealServer.key
            positions = {}
            for name, i in where:
                node = block[i]
                src = node.src
                if type(src) is str:
                    # keyword_pos(node), inlined as in `_Values.positions`.
                    column = src.find(node.keyword) + 1
                    line = node.line
                    positions[name] = _new_tuple(
                        SourcePos, (node.path, line, column, line, column + len(node.keyword))
                    )
                else:
                    positions[name] = keyword_pos(node)
            return _real_server(
                base,
                st,
                header,
                values,
                positions,
                tuple(
                    [
                        _COPY[type(proto)](
                            proto, rs_key=rs_key, index=index, pos=node_pos(block[i])
                        )
                        for i, index, proto in made
                    ]
                ),
            )
    reported = len(ctx.errors) + len(ctx.warnings)
    values = _collect(ctx, block, _RS_BLOCK, m.RealServer, where=st)
    check_stmts: list[Node] | None = values.pop("checkers", None)
    # The checkers are built before their real server (one construction each, no replace);
    # with a bad header they are still walked for their own errors, then dropped.
    checkers: tuple[m.Checker, ...] = ()
    protos: list[m.Checker | None] = []
    if check_stmts is not None:
        # What the checkers inherit: the real server's own values over the service's.
        if values.keys().isdisjoint(_RS_FOR_CHECKERS):
            fields = base.fields
            checker_key = base.checker_key
        else:
            fields = {**base.fields, **values}
            checker_key = _checker_key(fields)
        address = header["address"] if header else _NO_ADDRESS
        port = header.get("port") if header else None
        rs_key = (base.vs_key, address, port or 0)  # = RealServer.key
        built = []
        counts: dict[CheckerKind, int] = {}
        for check_st in check_stmts:
            kind = _KINDS[check_st.keyword]
            index = counts.get(kind, 0)
            counts[kind] = index + 1
            # `fields` holds every name of _RS_FOR_CHECKERS: the checkers read them there.
            checker, proto = _build_checker(ctx, check_st, kind, fields, checker_key, rs_key, index)
            built.append(checker)
            protos.append(proto)
        checkers = tuple(built)
    if header is None:
        return None
    rs = _real_server(base, st, header, values, values.positions(), checkers)
    if (
        key is not None
        and len(ctx.errors) + len(ctx.warnings) == reported
        and None not in protos
        and all(type(v) in _PLAIN_TYPES or isinstance(v, enum.Enum) for v in values.values())
    ):
        index_of = {id(node): i for i, node in enumerate(block)}
        ctx.real_servers[key] = (
            dict(values),
            tuple((name, index_of[id(node)]) for name, node in values.pos.items()),
            tuple(
                (index_of[id(check_st)], checker.index, proto)
                for check_st, checker, proto in zip(
                    check_stmts or (), checkers, protos, strict=True
                )
                if proto is not None
            ),
        )
    return rs


def _real_server(
    base: _RsBase,
    st: Node,
    header: Mapping[str, Any],
    values: Mapping[str, Any],
    positions: dict[str, SourcePos],
    checkers: tuple[m.Checker, ...],
) -> m.RealServer:
    """The real server: the service's real server (`base.proto`) with its own values and
    `positions` (its `keyword_pos`)."""
    proto = base.proto
    if proto is None:
        proto = base.proto = _MAKE[m.RealServer](
            address=_NO_ADDRESS, vs_key=base.vs_key, **base.fields
        )
    return _COPY[m.RealServer](  # type: ignore[no-any-return]
        proto, pos=node_pos(st), keyword_pos=positions, checkers=checkers, **header, **values
    )


_RS_BLOCK = kw.BLOCKS["real_server"]


# What a checker takes from its real server when it does not say (delay_loop first: the
# DNS_CHECK delay_before_retry default depends on it).
_RS_FOR_CHECKERS = (
    "delay_loop",
    "retry",
    "delay_before_retry",
    "warmup",
    "connect_timeout",
    "alpha",
    "rise",
    "virtualhost",
)
_INHERITABLE = {
    kind: tuple(n for n in _RS_FOR_CHECKERS if n in cls.__dataclass_fields__)
    for kind, cls in m.CHECKER_CLASSES.items()
}
_KIND_DEFAULTED = {
    kind: tuple(n for n in ("retry", "delay_before_retry") if n in names)
    for kind, names in _INHERITABLE.items()
}


# man (virtual_server): retry "Default: 1 unless specified below" (DNS_CHECK 3,
# MISC_CHECK 0); delay_before_retry "Defaults to delay_loop for DNS_CHECK, 3 seconds for
# HTTP_GET and SSL_GET, and 1 second otherwise". Resolved per kind once, not per checker.
_RETRY_DEFAULTS = {k: kw.DEFAULT_RETRY.get(k, kw.DEFAULT_RETRY_OTHER) for k in CheckerKind}
_DELAY_BEFORE_RETRY_DEFAULTS = {
    k: kw.DEFAULT_DELAY_BEFORE_RETRY.get(k, kw.DEFAULT_DELAY_BEFORE_RETRY_OTHER)
    for k in CheckerKind
}


def _kind_default(kind: CheckerKind, name: str, delay_loop: float) -> Any:
    if name == "retry":
        return _RETRY_DEFAULTS[kind]
    if kind is CheckerKind.DNS_CHECK:
        return delay_loop
    return _DELAY_BEFORE_RETRY_DEFAULTS[kind]


def checker_defaults(kind: CheckerKind, rs: m.RealServer, *, delay_loop: float) -> dict[str, Any]:
    """The values a checker of `kind` with this `delay_loop` would take from `rs`.

    Shared with fmt.py, which omits values equal to these.
    """
    out: dict[str, Any] = {}
    for name in _INHERITABLE[kind]:
        value = getattr(rs, name)
        if value is None and name in ("retry", "delay_before_retry"):
            value = _kind_default(kind, name, delay_loop)
        out[name] = value
    return out


# Types of the values a checker block's reading may be reused for (no position inside).
_PLAIN_TYPES = frozenset(
    {int, float, str, bool, bytes, ipaddress.IPv4Address, ipaddress.IPv6Address}
)


def _checker_values(ctx: _Ctx, st: Node, kind: CheckerKind) -> tuple[_Values, bool]:
    """The values of a checker's block, read once per distinct block, and whether they are
    so shared (the same object for every repeat of the block).

    A large file repeats one checker block (`TCP_CHECK { connect_timeout 3 }`) for every
    real server, and a checker keeps no keyword positions. A block of plain statements whose
    reading found no problem and gave plain data only (no position, no sub-block) is so
    reused for its repeats: reading it again would give the very same values and nothing
    to report. The values are shared: callers do not change them.
    """
    assert st.block is not None
    key: tuple[Any, ...] | None = None
    block = st.block
    if len(block) == 1:
        # One statement (`TCP_CHECK { connect_timeout 3 }`): the same key, without the
        # generators below (one per checker of a large file).
        only = block[0]
        if only.block is None:
            key = (kind, (only.keyword, only.args))
    elif all(n.block is None for n in block):
        key = (kind, *((n.keyword, n.args) for n in block))
    if key is not None:
        found = ctx.checkers.get(key)
        if found is not None:
            return found, True
    reported = len(ctx.errors) + len(ctx.warnings)
    values = _collect(
        ctx, st.block, kw.CHECKER_BLOCKS[kind], m.CHECKER_CLASSES[kind], where=kind.value
    )
    if (
        key is not None
        and len(ctx.errors) + len(ctx.warnings) == reported
        and all(type(v) in _PLAIN_TYPES or isinstance(v, enum.Enum) for v in values.values())
    ):
        ctx.checkers[key] = values
        return values, True
    return values, False


# What a checker of these kinds must say.
_REQUIRED = {
    CheckerKind.MISC_CHECK: "misc_path",
    CheckerKind.FILE_CHECK: "track_file",
    CheckerKind.BFD_CHECK: "name",
}
_URL_KINDS = frozenset({CheckerKind.HTTP_GET, CheckerKind.SSL_GET})


def _checker_key(rs: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a checker may take from its real server (`rs`), as a key of `_Ctx.checker_protos`.

    Each value with its type: 1, 1.0 and True are equal keys with different models. Equal
    values of one type are the same model: these are numbers, booleans, strings and None
    (a timer has no sign, so no -0.0, and no NaN).
    """
    return tuple((type(value), value) for value in map(rs.__getitem__, _RS_FOR_CHECKERS))


def _build_checker(
    ctx: _Ctx,
    st: Node,
    kind: CheckerKind,
    rs: Mapping[str, Any],
    rs_key_values: tuple[Any, ...],
    rs_key: m.Key,
    index: int,
) -> tuple[m.Checker, m.Checker | None]:
    """A checker of the real server whose values are `rs` (`rs_key_values`: `_checker_key`),
    and the checker it is a copy of (None: made from its block).

    A checker is a function of its block's values and what it takes from its real server,
    but for its key, index and position. A checker whose block is a shared reading
    (`_checker_values`) and whose making reported nothing is kept, and its repeats with
    the same inherited values are copies of it with their own key, index and position.
    """
    cls = m.CHECKER_CLASSES[kind]
    values, shared = _checker_values(ctx, st, kind)
    if shared:
        proto_key = (id(values), rs_key_values)  # shared values live as long as `ctx`
        proto = ctx.checker_protos.get(proto_key)
        if proto is not None:
            copy = _COPY[cls](proto, rs_key=rs_key, index=index, pos=node_pos(st))
            return copy, proto
        reported = len(ctx.errors) + len(ctx.warnings)
    fields = {name: rs[name] for name in _INHERITABLE[kind]}
    fields.update(values)
    url_stmts: list[Node] | None = values.get("urls")
    if url_stmts is not None:
        urls = []
        for url_st in url_stmts:
            assert url_st.block is not None
            uv = _collect(ctx, url_st.block, kw.BLOCKS["url"], m.Url, where="url")
            if not uv.has("path"):
                ctx.error(keyword_pos(url_st), "url has no `path`", code="missing")
            urls.append(_MAKE[m.Url](pos=node_pos(url_st), **uv))
        fields["urls"] = tuple(urls)
    # retry and delay_before_retry left unset all the way up take the kind's default.
    for name in _KIND_DEFAULTED[kind]:
        if fields[name] is None and name not in values:
            fields[name] = _kind_default(kind, name, fields["delay_loop"])
    required = _REQUIRED.get(kind)
    if required is not None and not values.has(required):
        ctx.error(keyword_pos(st), f"{kind.value} has no `{required}`", code="missing")
    if kind in _URL_KINDS and not fields.get("urls") and not values.has("urls"):
        ctx.error(keyword_pos(st), f"{kind.value} has no `url {{ ... }}`", code="missing")
    checker: m.Checker = _MAKE[cls](rs_key=rs_key, index=index, pos=node_pos(st), **fields)
    if shared and len(ctx.errors) + len(ctx.warnings) == reported:
        ctx.checker_protos[proto_key] = checker
        return checker, checker
    return checker, None


def _build_named(
    ctx: _Ctx, st: Node, attr: str, name: str, glob: m.GlobalDefs, out: list[Any]
) -> None:
    if attr == "vrrp_scripts":
        out.append(_build_vrrp_script(ctx, st, name))
    elif attr == "track_files":
        out.append(_build_track_file(ctx, st, name))
    elif attr == "sync_groups":
        out.append(_build_sync_group(ctx, st, name))
    else:
        out.append(_build_vrrp_instance(ctx, st, name, glob))


def _drain(items: list[Node]) -> Iterator[Node]:
    """The items in order, each removed from the list as it is handed out."""
    items.reverse()
    while items:
        yield items.pop()


def build(stmts: Sequence[Node] | Sequence[Stmt], *, consume: bool = False) -> BuildResult:
    """Build the model from statements, collecting every error and warning.

    Args:
        stmts: `syntax.SyntaxResult.nodes`, or a `Stmt` tree.
        consume: `stmts` is a list the caller gives up: it is emptied, and each virtual
            server's statements are dropped once its model is made, so that a large file's
            statements and its model are not both held at the peak.
    """
    ctx = _Ctx()
    nodes: Sequence[Node]
    if stmts and isinstance(stmts[0], Stmt):
        nodes = [stmt_node(st) for st in stmts if isinstance(st, Stmt)]
    else:
        nodes = typing.cast(Sequence[Node], stmts)
    top = _collect(ctx, nodes, kw.TOP, m.Config, where="the top level")
    if consume:
        assert isinstance(stmts, list)
        stmts.clear()
    del nodes
    # Several global_defs blocks merge, as keepalived reads them keyword by keyword.
    glob_stmts: list[Node] = top.pop("global_defs", [])
    glob = _build_global(ctx, glob_stmts) if glob_stmts else m.GlobalDefs()
    values: dict[str, Any] = {"global_defs": glob}
    ssl_st = top.pop("ssl", None)
    if ssl_st is not None:
        ssl = _collect(ctx, ssl_st.block, kw.BLOCKS["SSL"], m.SslConfig, where="SSL")
        values["ssl"] = m.SslConfig(pos=node_pos(ssl_st), **ssl)
    for attr in ("vrrp_scripts", "track_files", "sync_groups", "vrrp_instances"):
        built: list[Any] = []
        for st in top.pop(attr, []):
            what = st.keyword
            name = _name(ctx, st, what)
            if name is None:
                # Still walk the body for its own errors; the nameless object is dropped.
                scratch: list[Any] = []
                _build_named(ctx, st, attr, "", glob, scratch)
                continue
            _build_named(ctx, st, attr, name, glob, built)
        values[attr] = tuple(built)
    groups = [g for g in (_build_vsg(ctx, st) for st in top.pop("virtual_server_groups", [])) if g]
    values["virtual_server_groups"] = tuple(groups)
    vs_stmts = list(top.pop("virtual_servers", ()))
    servers = []
    for st in _drain(vs_stmts) if consume else vs_stmts:
        vs = _build_virtual_server(ctx, st)
        if vs is not None:
            servers.append(vs)
    values["virtual_servers"] = tuple(servers)
    values.update(top)
    config = m.Config(**values)
    return BuildResult(config, tuple(ctx.errors), tuple(ctx.warnings))
