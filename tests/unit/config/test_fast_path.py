"""The fast path of a load against the reference path it short-cuts.

`syntax._scan` tokenizes, matches braces and nests at once for files whose braces are in
order, into compact `Node`s whose words are plain strings (positions worked out on demand);
anything else goes to `_tokenize` + `_balance` + the LALR parser, whose `Stmt` tree carries
every word's position. `build` reads the words' text and takes the common, valid value at
once, falling back to the word-based parsers otherwise. Both paths must give the same
statements, the same model (every position included) and the same diagnostics: checked
here on the golden files, the keepalived samples, a generated benchmark-style file, edge
cases of the brace and word rules, and random token soups; and each fast converter against
the word-based one it short-cuts.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import ipaddress
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hactl import config
from hactl.config import build, keywords, model, syntax
from hactl.config.preprocess import (
    _PLAIN_LINE_SPECIAL,
    PlainRun,
    _FileSource,
    preprocess,
    preprocess_runs,
)
from hactl.errors import ConfigErrors, Diagnostic

HERE = Path(__file__).parent
GOLDEN = sorted((HERE / "data").rglob("*.conf")) if (HERE / "data").is_dir() else []
CORPUS_DIR = Path(__file__).resolve().parents[3].parent / "shared/corpus/keepalived-samples"
CORPUS = sorted(CORPUS_DIR.iterdir()) if CORPUS_DIR.is_dir() else []
BENCH = Path(__file__).resolve().parents[3] / "bench/config_parse.py"

EDGE_CASES = [
    "",
    "\n\n",
    "a b {\n c\n}\n",
    "a\n{\n b\n}\n",  # '{' on a line of its own opens the block of the line before
    "a { b } c { d { e } }\n",
    "a {b}{c}\n",
    "{\n}\n",
    "a {\n",
    "}\n",
    "a {\n b {\n}\n",
    "a { include x.conf }\n",
    "a {\n includex y {\n}\n}\n",
    "include{x}\n",
    '"include" x\n',
    'a "b c" {\n d "e\n}\n',
    "a\t\tb \t c\r\n",
    "  a\u00a0b \x1cc {\n}\n",  # only blanks, tabs and the ASCII controls separate words
    "a # comment {\n}\n",
    "$X=1\na $X {\n b ${X}\n}\n",
    "a {\n" * 101 + "}\n" * 101,
    "a {\n" * 100 + "}\n" * 100,
    "a {\n  b {\n  }\n c\n",
    # a line that is one statement, with or without its '{', takes a shorter way in `_scan`
    "\fa b {\n \vc  d\t\n}\n",
    "a b{\n c{\n}\n}\n",
    "a{\n" * 101 + "}\n" * 101,
    "includeb {\n}\n",
    "a {\n include x {\n}\n}\n",
    "a { b\n}\n",  # a '{' that is not the line's last character
    "a{ b c\n}\n",
    "a {{\n}\n}\n",
    "a\n{ b\n}\n",
    "a\n{\n",
    "\fa b {\n\v}\n  }\n",
    "a b{\n" * 100 + "c\n" + "}\n" * 100,
    "a b{\n" * 101 + "}\n" * 101,
]

# Statements whose values take the fast converters' way, or just miss it.
LOAD_CASES = [
    "virtual_server 10.0.0.1 80 {\n delay_loop 6\n lb_algo wrr\n lb_kind DR\n"
    " protocol TCP\n real_server 10.0.1.1 80 {\n  weight 3\n  TCP_CHECK {\n"
    "   connect_timeout 3\n  }\n }\n}\n",
    "virtual_server 10.0.0.1 80 {\n delay_loop 6x\n lb_algo WRR\n lb_kind dr\n"
    " protocol TCP UDP\n real_server 10.0.1.256 80 {\n  weight -3\n  TCP_CHECK x {\n"
    "   connect_timeout\n  }\n }\n real_server 10.0.1.1 65536 {\n }\n}\n",
    "virtual_server 10.0.0.1 {\n lb_kind DR\n delay_loop 6\n delay_loop 7\n"
    " real_server 10.0.1.1 {\n  weight 1\n  weight 2\n }\n}\n",
    "virtual_server fwmark 7 {\n protocol TCP\n real_server 10.0.1.1 {\n }\n}\n",
    "virtual_server 10.0.0.1 80\n{\n lb_kind\tDR  \n real_server 10.0.1.1 80{\n weight\f2\n}\n}\n",
    '$P=80\nvirtual_server 10.0.0.1 $P {\n lb_kind "DR"\n real_server 10.0.1.1 $P {\n }\n} # c\n',
    "virtual_server 10.0.0.1 80 { lb_kind DR\n real_server 10.0.1.1 80 { weight 2 } }\n",
    # repeated checker blocks: the same, with a problem, with positions inside, nested
    "virtual_server 10.0.0.1 80 {\n"
    + "".join(
        f" real_server 10.0.1.{i} 80 {{\n  {check} {{\n   {body}\n  }}\n }}\n"
        for i, (check, body) in enumerate(
            [
                ("TCP_CHECK", "connect_timeout 3"),
                ("TCP_CHECK", "connect_timeout 3"),
                ("TCP_CHECK", "connect_timeout 3x"),
                ("TCP_CHECK", "connect_timeout 3x"),
                ("TCP_CHECK", "connect_timeout 3\n   connect_timeout 3"),
                ("TCP_CHECK", "connect_timeout 3\n   connect_timeout 3"),
                ("MISC_CHECK", "misc_path /bin/true\n   user nobody"),
                ("MISC_CHECK", "misc_path /bin/true\n   user nobody"),
                ("MISC_CHECK", "misc_timeout 3"),
                ("MISC_CHECK", "misc_timeout 3"),
                ("HTTP_GET", "url {\n    path /\n   }"),
                ("HTTP_GET", "url {\n    path /\n   }"),
                ("UDP_CHECK", "require_reply 0a"),
                ("UDP_CHECK", "require_reply 0a"),
                ("DNS_CHECK", "type AAAA\n   connect_port 53"),
                ("DNS_CHECK", "type AAAA\n   connect_port 53"),
                ("SMTP_CHECK", "helo_name x"),
                ("SMTP_CHECK", "helo_name x"),
            ]
        )
    )
    + "}\n",
    # repeated real server blocks: under services with other inherited values, with values
    # of their own, with a problem or a notice, with a checker whose block nests
    "".join(
        f"virtual_server 10.0.0.{i} 80 {{\n lb_kind DR\n delay_loop {loop}\n"
        + "".join(
            f" real_server 10.0.1.{j} 80 {{\n  {body}\n }}\n"
            for j, body in enumerate(
                [
                    "weight 1\n  TCP_CHECK {\n   connect_timeout 3\n  }",
                    "weight 1\n  TCP_CHECK {\n   connect_timeout 3\n  }",
                    "weight 01\n  TCP_CHECK {\n   connect_timeout 3\n  }",
                    "weight 1\n  connect_timeout 2\n  TCP_CHECK {\n  }\n  TCP_CHECK {\n  }",
                    "weight 1\n  weight 2\n  TCP_CHECK {\n   connect_timeout 3\n  }",
                    "weight 1\n  smtp_alert\n  MISC_CHECK {\n   misc_path /bin/true\n  }",
                    "weight 1\n  MISC_CHECK {\n  }",
                    "weight 1\n  HTTP_GET {\n   url {\n    path /\n   }\n  }",
                    "weight 1\n  TCP_CHECK {\n   connect_timeout 3\n  }\n  lvs_method NAT",
                ]
            )
        )
        + "}\n"
        for i, loop in enumerate(["6", "6", "7", "6.0", "6"])
    ),
    # repeated virtual server blocks: the same, with a value holding its position (fast and
    # word-based), a duplicate, flags, values that are not plain data, a real server on the
    # braces' line; then with problems (where the model is not returned)
    *(
        "".join(
            f"virtual_server 10.0.0.{i} 80 {{\n{body}\n real_server 10.0.1.1 80 {{\n  weight 1\n"
            " }\n real_server 10.0.1.2 80 {\n }\n}\n"
            for i, body in enumerate(2 * bodies)
        )
        for bodies in [
            [
                " delay_loop 6\n lb_algo wrr\n lb_kind DR\n protocol TCP",
                " delay_loop 6\n lb_algo wrr\n lb_kind DR\n protocol TCP",
                "  delay_loop 6\n\tlb_algo wrr\n lb_kind  DR \n protocol TCP",
                " lvs_method TUN type gre csum\n protocol TCP",
                " lb_kind DR\n delay_loop 6\n delay_loop 7\n protocol TCP",
                " lb_kind DR\n protocol TCP\n lb_algo sh\n sh-port\n sh-fallback",
                " lb_kind DR\n protocol TCP\n persistence_timeout 30\n virtualhost x",
                " lb_kind DR\n protocol TCP\n quorum_up /bin/true\n hysteresis 1",
                " lb_kind DR\n protocol TCP\n real_server 10.0.1.4 80 { weight 2 }",
                " lb_kind DR\n protocol TCP\n lb_kind NAT",
            ],
            [
                " lb_kind DR\n protocol TCP",
                " lb_kind DR\n delay_loop 6x\n protocol TCP",
                " lb_kind DR\n protocol TCP\n real_server 10.0.1.3 80",
                " protocol TCP\n lb_kind DR\n no_such_keyword 1",
            ],
        ]
    ),
    "global_defs {\n router_id a b\n vrrp_garp_master_delay x\n}\nvrrp_instance V {\n"
    " state MASTER\n interface eth0\n virtual_router_id 51\n priority 300\n"
    " virtual_ipaddress {\n  10.0.0.1/24 dev eth0\n }\n}\n",
]

SOUP = ["{", "}", " ", "\t", "\n", "a", "bc", '"q"', '"', "#", "$X", "include", "\\\n"]


def both_ways(text: str) -> None:
    fast = syntax.parse_text(text, config_id="main")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(syntax, "_scan", lambda chunks, diagnostics: None)
        general = syntax.parse_text(text, config_id="main")
    assert fast.stmts == general.stmts
    assert repr(fast.stmts) == repr(general.stmts)  # positions' end fields too
    assert [(str(d), d.hint, d.pos.end_line, d.pos.end_column) for d in fast.diagnostics] == [
        (str(d), d.hint, d.pos.end_line, d.pos.end_column) for d in general.diagnostics
    ]
    # Every node's own positions, as `build` asks for them, agree with its `Stmt`'s.
    for node, stmt in zip(walk(fast.nodes), walk_stmts(general.stmts), strict=True):
        assert syntax.keyword_pos(node) == stmt.keyword.pos
        assert tuple(syntax.node_pos(node)) == tuple(stmt.pos)
        assert (node.keyword, node.args) == (stmt.keyword.text, tuple(w.text for w in stmt.args))


def walk(nodes: tuple[syntax.Node, ...]) -> list[syntax.Node]:
    found = []
    for node in nodes:
        found.append(node)
        found.extend(walk(node.block or ()))
    return found


def walk_stmts(stmts: tuple[syntax.Stmt, ...]) -> list[syntax.Stmt]:
    found = []
    for stmt in stmts:
        found.append(stmt)
        found.extend(walk_stmts(stmt.block or ()))
    return found


# --------------------------------------------------------------------------- whole loads


def positions(value: Any, where: str = "config") -> list[tuple[str, Any]]:
    """Every position in a model (fields that `==` and `repr` leave out), by field path."""
    found: list[tuple[str, Any]] = []
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.name == "pos":
                found.append((where, tuple(item)))
            elif f.name == "keyword_pos":
                found.append((f"{where}.keyword_pos", sorted(item.items())))
            else:
                found.extend(positions(item, f"{where}.{f.name}"))
    elif isinstance(value, tuple):
        for i, item in enumerate(value):
            found.extend(positions(item, f"{where}[{i}]"))
    return found


def outcome(load: Callable[[], config.Loaded]) -> tuple[Any, ...]:
    """A load's model (values, then every position) and diagnostics, comparable."""
    try:
        loaded = load()
    except ConfigErrors as exc:
        model = None
        diagnostics: tuple[Diagnostic, ...] = exc.diagnostics
    else:
        model = loaded.config
        diagnostics = loaded.warnings
    shown = [(str(d), d.hint, d.pos.end_line, d.pos.end_column) for d in diagnostics]
    return (model, repr(model), positions(model), shown)


def read_every_checker(ctx: Any, st: syntax.Node, kind: keywords.CheckerKind) -> Any:
    """`build._checker_values` without the reuse of blocks already read (so without the
    reuse of checkers made from them either)."""
    assert st.block is not None
    block = keywords.CHECKER_BLOCKS[kind]
    values = build._collect(ctx, st.block, block, model.CHECKER_CLASSES[kind], where=kind.value)
    return values, False


def load_both_ways(load: Callable[[], config.Loaded]) -> None:
    fast = outcome(load)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(syntax, "_scan", lambda chunks, diagnostics: None)
        patch.setattr(build, "_checker_values", read_every_checker)
        patch.setattr(build, "_vs_content", lambda block: None)  # every service block read
        reference = outcome(load)
    assert fast[0] == reference[0]
    assert fast[1:] == reference[1:]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(build, "_checker_values", read_every_checker)
        every_checker = outcome(load)
    assert fast[1:] == every_checker[1:]


@pytest.mark.parametrize("path", GOLDEN + CORPUS, ids=lambda p: p.name)
def test_files_load_the_same_both_ways(path: Path) -> None:
    load_both_ways(lambda: config.load(path, config_id="lb1"))


def test_a_large_generated_file_loads_the_same_both_ways(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("config_parse", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = tmp_path / "bench.conf"
    bench.generate(40, path)
    load_both_ways(lambda: config.load(path, config_id="lb1"))
    # and with the errors the fast converters leave to the word-based ones
    text = path.read_text()
    for old, new in [
        ("weight 2", "weight 2x"),
        ("connect_timeout 3", "connect_timeout 3 4"),
        ("lb_kind DR", "lb_kind TUN type gre csum"),
        ("lb_algo wrr", "lb_algo wwr"),
        ("delay_loop 6", "delay_loop 1e9"),
        (" 80 {", " 99999 {"),
        ("protocol TCP", "protocol"),
    ]:
        path.write_text(text.replace(old, new, 3))
        load_both_ways(lambda: config.load(path, config_id="lb1"))


@pytest.mark.parametrize("text", EDGE_CASES + LOAD_CASES)
def test_edge_cases_load_the_same_both_ways(text: str) -> None:
    load_both_ways(lambda: config.parse_text(text, config_id="main"))


# --------------------------------------------------------------------------- converters

SAMPLE_WORDS = [
    "0",
    "1",
    "6",
    "255",
    "65535",
    "65536",
    "-1",
    "+3",
    "1.5",
    ".5",
    "5.",
    "1e3",
    "9" * 400,
    "\u0663",  # an Arabic-Indic digit: str.isdigit, not ASCII
    "\u00b2",
    "10.0.0.1",
    "010.0.0.1",
    "10.0.0.256",
    "::1",
    "fe80::1%eth0",
    "DR",
    "dr",
    "TUN",
    "wrr",
    "TCP",
    "on",
    "off",
    "yes",
    "maybe",
    "x",
]


def fast_and_reference(convert: Callable[[], Any], reference: Callable[[], Any]) -> None:
    def run(call: Callable[[], Any]) -> tuple[str, Any]:
        try:
            value = call()
        except build._Bad as exc:
            return ("bad", (tuple(exc.pos), exc.message, exc.code, exc.hint))
        return ("ok", (type(value), value, repr(value), getattr(value, "pos", None)))

    assert run(convert) == run(reference)


# The word-based converters, as `build` had them before it read the words' text: the
# reference each fast converter must agree with.
def _ref_flag(row: keywords.Kw, stmt: syntax.Stmt) -> Any:
    if not stmt.args:
        return True
    build._arity(stmt, 0, 1)
    return build.parse_bool(stmt.args[0], what=stmt.keyword.text)


def _ref_int(row: keywords.Kw, stmt: syntax.Stmt) -> Any:
    assert isinstance(row.spec, keywords.Int)
    build._arity(stmt, 1, 1)
    return build.parse_int(stmt.args[0], row.spec.lo, row.spec.hi, what=stmt.keyword.text)


def _ref_timer(row: keywords.Kw, stmt: syntax.Stmt) -> Any:
    assert isinstance(row.spec, keywords.Timer)
    build._arity(stmt, 1, 1)
    return build.parse_timer(stmt.args[0], row.spec.lo, row.spec.hi, what=stmt.keyword.text)


def _ref_str(row: keywords.Kw, stmt: syntax.Stmt) -> Any:
    build._arity(stmt, 1, 1)
    return stmt.args[0].text


def _ref_text(row: keywords.Kw, stmt: syntax.Stmt) -> Any:
    build._arity(stmt, 1, None)
    return " ".join(w.text for w in stmt.args)


def _ref_choice(row: keywords.Kw, stmt: syntax.Stmt) -> Any:
    assert isinstance(row.spec, keywords.Choice)
    build._arity(stmt, 1, 1)
    return build.parse_choice(stmt.args[0], row.spec.enum, what=stmt.keyword.text)


def _ref_addr(row: keywords.Kw, stmt: syntax.Stmt) -> Any:
    assert isinstance(row.spec, keywords.Addr)
    build._arity(stmt, 1, 1)
    return build.parse_ip(stmt.args[0], what=stmt.keyword.text, version=row.spec.version)


REFERENCES: dict[type, Callable[[keywords.Kw, syntax.Stmt], Any]] = {
    keywords.Flag: _ref_flag,
    keywords.Int: _ref_int,
    keywords.Timer: _ref_timer,
    keywords.Str: _ref_str,
    keywords.Text: _ref_text,
    keywords.Choice: _ref_choice,
    keywords.Addr: _ref_addr,
}


def rows_of(spec_type: type) -> list[keywords.Kw]:
    found: dict[tuple[Any, ...], keywords.Kw] = {}
    for block in keywords.BLOCKS.values():
        for row in block.keywords.values():
            if type(row.spec) is spec_type:
                found.setdefault((row.name, repr(row.spec)), row)
    return list(found.values())


def statement(text: str) -> syntax.Node:
    (node,) = syntax.parse_text(text, config_id="main").nodes
    return node


@pytest.mark.parametrize("spec_type", list(REFERENCES), ids=lambda t: t.__name__)
def test_fast_converters_agree_with_the_word_based_ones(spec_type: type) -> None:
    convert = build._CONVERTERS[spec_type]
    reference = REFERENCES[spec_type]
    rows = rows_of(spec_type)
    assert rows
    pairs = itertools.islice(itertools.permutations(SAMPLE_WORDS, 2), 0, None, 37)
    args_lists = [[], *([w] for w in SAMPLE_WORDS), *(list(pair) for pair in pairs)]
    for row in rows:
        for args in args_lists:
            node = statement(" ".join([row.name, *args]) + "\n")
            fast_and_reference(
                functools.partial(convert, build._Ctx(), row, node),
                functools.partial(reference, row, syntax.node_stmt(node)),
            )


def test_fast_lvs_method_agrees_with_the_word_based_one() -> None:
    row = keywords.BLOCKS["virtual_server"].keywords["lvs_method"]
    cases = [[], ["DR"], ["NAT"], ["TUN"], ["dr"], ["XX"], ["TUN", "type", "ipip"], ["DR", "x"]]
    for args in cases:
        node = statement(" ".join(["lb_kind", *args]) + "\n")
        fast_and_reference(
            functools.partial(build._conv_custom, build._Ctx(), row, node),
            functools.partial(build._c_lvs_method, build._Ctx(), syntax.node_stmt(node), row),
        )


@pytest.mark.parametrize("path", GOLDEN + CORPUS, ids=lambda p: p.name)
def test_files_parse_the_same_both_ways(path: Path) -> None:
    both_ways(path.read_text(errors="replace"))


@pytest.mark.parametrize("text", EDGE_CASES)
def test_edge_cases_parse_the_same_both_ways(text: str) -> None:
    both_ways(text)


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.sampled_from(SOUP), max_size=60))
def test_token_soup_parses_the_same_both_ways(tokens: list[str]) -> None:
    both_ways("".join(tokens))


def test_a_file_in_order_takes_the_one_pass_path() -> None:
    text = "global_defs {\n  router_id a\n}\nvirtual_server 10.0.0.1 80 {\n  delay_loop 6\n}\n"
    chunks = preprocess_runs(text, path="x", config_id="m", base_dir=Path(), diagnostics=[])
    assert [type(c) for c in chunks] == [PlainRun]
    assert syntax._scan(chunks, []) is not None


def test_plain_runs_stand_for_the_same_lines() -> None:
    text = "a\n\n  b c {\r\n# x\n\t}\ninclude_not 1\n$X=1\nd $X\n"
    runs = preprocess_runs(text, path="x", config_id="m", base_dir=Path(), diagnostics=[])
    assert any(isinstance(r, PlainRun) for r in runs)
    expanded = [line for r in runs for line in (r.to_lines() if isinstance(r, PlainRun) else [r])]
    assert expanded == preprocess(text, path="x", config_id="m", base_dir=Path(), diagnostics=[])


def test_load_leaves_the_collector_as_it_was() -> None:
    import gc

    from hactl import config

    text = "global_defs {\n  router_id a\n}\n"
    was_enabled = gc.isenabled()
    try:
        gc.enable()
        config.parse_text(text)
        assert gc.isenabled()
        assert gc.get_freeze_count() == 0  # nothing left in the permanent generation
        gc.disable()
        config.parse_text(text)
        assert not gc.isenabled()
        # Objects someone else froze (before forking, say) stay frozen.
        gc.freeze()
        frozen = gc.get_freeze_count()
        config.parse_text(text)
        assert gc.get_freeze_count() >= frozen
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()
        else:
            gc.disable()


@pytest.mark.parametrize(
    "text",
    [
        "1.2.3.4",
        "0.0.0.0",
        "255.255.255.255",
        "199.249.250.251",
        "01.2.3.4",
        "1.2.3.04",
        "1.2.3.00",
        "256.1.1.1",
        "1.2.3",
        "1.2.3.4.5",
        "\u0661.2.3.4",
        "1.2.3.4 ",
        "1.2.3.4\n",
        "10.0.0.1/24",
        "::1",
        "::ffff:1.2.3.4",
        "fe80::1%eth0",
        "",
    ],
)
def test_the_dotted_quad_shortcut_agrees_with_ipaddress(text: str) -> None:
    def read(parse: Callable[[str], Any]) -> str:
        try:
            value = parse(text)
        except ValueError:
            return "ValueError"
        return repr(value)

    assert read(build._ip.__wrapped__) == read(ipaddress.ip_address)


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.text(alphabet=st.sampled_from(list('ab \n!#"\\$@~\x1c\x1f\xa0\u2000{}')), max_size=80),
    st.lists(st.integers(min_value=0, max_value=90), max_size=8),
)
def test_the_special_character_search_agrees_with_the_pattern(
    text: str, offsets: list[int]
) -> None:
    # `_FileSource.special` keeps what it found between calls; offsets only grow in use.
    src = _FileSource("x", Path(), text, text.split("\n"), "x")
    for offset in sorted(offsets):
        found = _PLAIN_LINE_SPECIAL.search(text, offset)
        assert src.special(offset) == (-1 if found is None else found.start())
