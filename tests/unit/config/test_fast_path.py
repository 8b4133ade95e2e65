"""The one-pass tokenizer (`syntax._scan`) against the two-step path it short-cuts.

`_scan` tokenizes and matches braces at once for files whose braces are in order, and hands
anything else to `_tokenize` + `_balance`. Both must give the same statements, positions and
diagnostics: checked here on the golden files, the keepalived samples, edge cases of the
brace and word rules, and random token soups.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hactl.config import syntax
from hactl.config.preprocess import PlainRun, preprocess, preprocess_runs

HERE = Path(__file__).parent
GOLDEN = sorted((HERE / "data").rglob("*.conf")) if (HERE / "data").is_dir() else []
CORPUS_DIR = Path(__file__).resolve().parents[3].parent / "shared/corpus/keepalived-samples"
CORPUS = sorted(CORPUS_DIR.iterdir()) if CORPUS_DIR.is_dir() else []

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
