"""Fuzzing the whole configuration pipeline: any input gives a model or diagnostics, never a crash.

Inputs: random bytes, random text over the language's special characters, and mutations of
the keepalived corpus samples and of the golden files. The only exception allowed out of
`hactl.config` is `ConfigErrors`; every diagnostic must carry a usable position. Bounded
(a few hundred examples, no database) so that it runs in seconds in the default suite.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hactl import config
from hactl.config import syntax
from hactl.config.report import SourceLines, render_json, render_text
from hactl.errors import ConfigErrors, Diagnostic

HERE = Path(__file__).parent
GOLDEN = sorted((HERE / "data").rglob("*.conf")) if (HERE / "data").is_dir() else []
CORPUS_DIR = Path(__file__).resolve().parents[3].parent / "shared/corpus/keepalived-samples"
CORPUS = sorted(CORPUS_DIR.iterdir()) if CORPUS_DIR.is_dir() else []
SEEDS = [p.read_text(errors="replace") for p in CORPUS + GOLDEN] or [
    "global_defs {\n  router_id A\n}\n"
]

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Characters and words that drive the lexer's and the builder's decisions.
SPECIAL = ' \t\n{}"#!$@^~\\()=,./:-0123456789abcxyzABC_'
TOKENS = [
    "{",
    "}",
    '"',
    "#",
    "!",
    "\\",
    "\n",
    "$X",
    "${X}",
    "$X=1",
    "$M= \\\n",
    "@main ",
    "@^main ",
    "~SEQ(N, 1, 3) ",
    "~LST(N, a, b) ",
    "include x.conf\n",
    "vrrp_instance V ",
    "virtual_server 10.0.0.1 80 ",
    "real_server 10.0.0.2 80 ",
    "TCP_CHECK ",
    "weight -1 ",
    "priority 300 ",
    "virtual_ipaddress ",
    "10.0.0.1/33 ",
    "delay_loop 0.5 ",
    "lb_algo rr ",
    "global_defs ",
    "track_script ",
    "state MASTER ",
    "nopreempt ",
    "\u00e9",
    "\x00",
    "\x1b",
]


def check_outcome(run: object) -> list[Diagnostic]:
    """Run a callable returning a `Loaded`; return all diagnostics, or fail on a crash."""
    assert callable(run)
    try:
        loaded = run()
    except ConfigErrors as exc:
        found = list(exc.diagnostics)
        assert exc.errors, "ConfigErrors without an error"
    else:
        found = list(loaded.warnings)
    for diag in found:
        assert diag.pos.line >= 1 and diag.pos.column >= 1, diag
        assert diag.message
    # Rendering must survive whatever the input was.
    render_text(found, sources=SourceLines({"<string>": ""}))
    render_json(found)
    return found


def parse(text: str) -> list[Diagnostic]:
    return check_outcome(lambda: config.parse_text(text, config_id="main"))


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("bytes") / "fuzz.conf"
    path.write_bytes(data)
    check_outcome(lambda: config.load(path, config_id="main"))


@FUZZ
@given(st.text(alphabet=SPECIAL, max_size=400))
def test_random_text_over_special_characters(text: str) -> None:
    parse(text)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=60))
def test_random_token_soup(tokens: list[str]) -> None:
    parse("".join(tokens))


@st.composite
def mutated_seed(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 6))):
        if not text:
            break
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["delete", "insert", "duplicate", "token", "swap"]))
        if op == "delete":
            end = draw(st.integers(at, min(len(text), at + 40)))
            text = text[:at] + text[end:]
        elif op == "insert":
            text = text[:at] + draw(st.text(alphabet=SPECIAL, max_size=8)) + text[at:]
        elif op == "duplicate":
            end = draw(st.integers(at, min(len(text), at + 200)))
            text = text[:end] + text[at:end] + text[end:]
        elif op == "token":
            text = text[:at] + draw(st.sampled_from(TOKENS)) + text[at:]
        else:
            lines = text.split("\n")
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
    return text


@settings(FUZZ, max_examples=250)
@given(mutated_seed())
def test_mutated_samples_and_goldens(text: str) -> None:
    parse(text)


def test_every_seed_goes_through() -> None:
    for text in SEEDS:
        parse(text)


def test_deep_nesting_through_the_whole_pipeline() -> None:
    depth = 10_000
    text = "".join("vrrp_instance V {\n" for _ in range(depth)) + "}\n" * depth
    found = parse(text)
    assert any(d.code == "nesting-limit" for d in found)


def test_unbalanced_deep_nesting_through_the_whole_pipeline() -> None:
    found = parse("virtual_server 10.0.0.1 80 {\n" * 10_000)
    assert [d.code for d in found].count("unclosed-block") == 1


def test_large_file_through_the_whole_pipeline() -> None:
    vs = (
        "virtual_server 10.{a}.{b}.1 80 {{\n  delay_loop 6\n  lb_algo rr\n  lb_kind NAT\n"
        "  protocol TCP\n  real_server 192.168.{b}.1 80 {{\n    weight 1\n"
        "    TCP_CHECK {{\n      connect_timeout 3\n    }}\n  }}\n}}\n"
    )
    text = "".join(vs.format(a=i // 250, b=i % 250) for i in range(2000))
    start = time.perf_counter()
    found = parse(text + "garbage line {\n")
    elapsed = time.perf_counter() - start
    assert any(d.code == "unclosed-block" for d in found)
    assert elapsed < 60  # a generous bound: this is a crash test, the benchmark measures speed


def _walk(stmts: tuple[syntax.Stmt, ...]) -> list[syntax.Word]:
    found: list[syntax.Word] = []
    for st_ in stmts:
        found.append(st_.keyword)
        found.extend(st_.args)
        if st_.block is not None:
            found.extend(_walk(st_.block))
    return found


@FUZZ
@given(st.text(alphabet=' \t\n{}"#!abcXYZ019._-/', max_size=300))
def test_every_word_points_at_its_own_text(text: str) -> None:
    # Without substitution characters, each word is exactly the text at its position
    # (quoted words: between the quotes).
    result = syntax.parse_text(text, config_id="main")
    lines = text.split("\n")
    for word in _walk(result.stmts):
        pos = word.pos
        assert pos.end_line == pos.line
        written = lines[pos.line - 1][pos.column - 1 : pos.end_column - 1]
        if word.quoted:
            assert written.startswith('"')
            assert written[1:].rstrip('"') == word.text
        else:
            assert written == word.text
