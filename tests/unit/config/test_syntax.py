"""The syntax layer: keepalived's lexical rules, positions, recovery and diagnostics.

Each lexical rule is pinned against `man 5 keepalived.conf` and keepalived 2.2.7's
lib/parser.c behaviour; each error case pins its message position.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from hactl.config import syntax
from hactl.config.preprocess import expand_braces
from hactl.config.syntax import Stmt, SyntaxResult, parse_file, parse_text, split_command
from hactl.errors import Severity, SourcePos


def tree(stmts: tuple[Stmt, ...] | None) -> Any:
    """Statements as nested lists of words: [kw, arg..., [block...]]."""
    if stmts is None:
        return None
    out: list[Any] = []
    for s in stmts:
        item: list[Any] = [s.keyword.text, *(w.text for w in s.args)]
        if s.block is not None:
            item.append(tree(s.block))
        out.append(item)
    return out


def parse(text: str, **kwargs: Any) -> SyntaxResult:
    kwargs.setdefault("config_id", "main")
    return parse_text(textwrap.dedent(text), **kwargs)


def errors(result: SyntaxResult) -> list[str]:
    return [str(d) for d in result.diagnostics if d.severity is Severity.ERROR]


def messages(result: SyntaxResult) -> list[str]:
    return [str(d) for d in result.diagnostics]


def clean(text: str, **kwargs: Any) -> Any:
    result = parse(text, **kwargs)
    assert messages(result) == []
    return tree(result.stmts)


# --------------------------------------------------------------------------- structure


def test_statements_blocks_and_positions() -> None:
    result = parse(
        """\
        global_defs {
            router_id LVS_1
        }
        vrrp_instance VI_1 {
          virtual_ipaddress {
            10.0.0.1/24 dev eth0
          }
        }
        """
    )
    assert messages(result) == []
    assert tree(result.stmts) == [
        ["global_defs", [["router_id", "LVS_1"]]],
        ["vrrp_instance", "VI_1", [["virtual_ipaddress", [["10.0.0.1/24", "dev", "eth0"]]]]],
    ]
    gd, vi = result.stmts
    assert gd.pos == SourcePos("<string>", 1, 1)
    assert (gd.pos.end_line, gd.pos.end_column) == (3, 2)  # through the closing brace
    rid = gd.block[0] if gd.block else None
    assert rid is not None
    assert rid.keyword.pos == SourcePos("<string>", 2, 5, 2, 14)
    assert rid.args[0].pos == SourcePos("<string>", 2, 15, 2, 20)
    assert (rid.args[0].pos.end_line, rid.args[0].pos.end_column) == (2, 20)
    assert rid.block is None
    assert vi.args[0].text == "VI_1"


@pytest.mark.parametrize(
    "text",
    [
        "vrrp_instance VI_1{\nstate MASTER\n}\n",
        "vrrp_instance VI_1 {\nstate MASTER }\n",
        "vrrp_instance VI_1\n{\nstate MASTER\n}\n",
        "vrrp_instance VI_1 { state MASTER }\n",
        "vrrp_instance VI_1{state MASTER}",
        "vrrp_instance VI_1\n\n# comment\n{ state MASTER\n}",
    ],
)
def test_brace_placement_is_free(text: str) -> None:
    # parser.c read_line cuts a line at every brace outside quotes.
    assert clean(text) == [["vrrp_instance", "VI_1", [["state", "MASTER"]]]]


def test_one_line_block_of_values() -> None:
    assert clean("notification_email { a@b.c x@y.z }\n") == [
        ["notification_email", [["a@b.c", "x@y.z"]]]
    ]


def test_empty_input_and_blank_lines() -> None:
    assert clean("") == []
    assert clean("\n\n   \n\t\n") == []


def test_crlf_line_endings() -> None:
    result = parse_text("global_defs {\r\n  router_id X\r\n}\r\n", config_id="m")
    assert messages(result) == []
    assert tree(result.stmts) == [["global_defs", [["router_id", "X"]]]]
    assert result.stmts[0].block is not None
    assert result.stmts[0].block[0].args[0].pos == SourcePos("<string>", 2, 13, 2, 14)


# --------------------------------------------------------------------------- comments, quotes


def test_comments_hash_and_bang_anywhere_outside_quotes() -> None:
    assert clean(
        """\
        # whole line
        ! whole line
        router_id A # trailing
        router_id B ! trailing
        notify "/bin/x # not a comment" ! but this is
        """
    ) == [["router_id", "A"], ["router_id", "B"], ["notify", "/bin/x # not a comment"]]


def test_comment_glued_to_a_word_is_kept_as_keepalived_does_but_warned() -> None:
    result = parse("auth_pass secret#1\nrouter_id B!x\n")
    assert tree(result.stmts) == [["auth_pass", "secret"], ["router_id", "B"]]
    assert messages(result) == [
        "<string>:1:17: warning: '#' starts a comment here, in the middle of a word: the rest"
        " of the line is ignored [comment-in-word]",
        "<string>:2:12: warning: '!' starts a comment here, in the middle of a word: the rest"
        " of the line is ignored [comment-in-word]",
    ]
    assert result.diagnostics[0].hint == (
        "quote the value (\"...#...\") to keep the '#', or write '\\#'"
    )


def test_escaped_comment_characters_are_kept() -> None:
    result = parse("router_id a\\#b\\!c # comment\n")
    assert messages(result) == []
    word = result.stmts[0].args[0]
    assert word.text == "a#b!c"
    # Columns are those of the characters as written, backslashes included.
    assert (word.pos.column, word.pos.end_column) == (11, 18)


def test_quoted_strings() -> None:
    result = parse('notify_master "/usr/bin/my script.sh arg" root ""\nx abc"def g"h\n')
    assert messages(result) == []
    notify, x = result.stmts
    assert [(w.text, w.quoted) for w in notify.args] == [
        ("/usr/bin/my script.sh arg", True),
        ("root", False),
        ("", True),
    ]
    assert notify.args[0].pos == SourcePos("<string>", 1, 15, 1, 42)
    # keepalived alloc_strvec: an unquoted word ends at '"'.
    assert [w.text for w in x.args] == ["abc", "def g", "h"]


def test_braces_inside_quotes_are_text() -> None:
    assert clean('misc_path "/bin/check {a} }"\n') == [["misc_path", "/bin/check {a} }"]]


def test_unterminated_quote_is_an_error_at_the_quote() -> None:
    result = parse('router_id "abc\nvrrp_instance X {\n}\n')
    assert errors(result) == [
        "<string>:1:11: error: unterminated quoted string [unterminated-quote]"
    ]
    assert tree(result.stmts) == [["router_id", "abc"], ["vrrp_instance", "X", []]]


def test_trailing_backslash_outside_definition_is_an_error() -> None:
    result = parse("lvs_sync_daemon eth0 VI_1 \\\n   id 5\n")
    assert errors(result) == [
        "<string>:1:27: error: a '\\' at the end of a line continues only a $NAME= definition"
        " [line-continuation]"
    ]
    assert tree(result.stmts) == [["lvs_sync_daemon", "eth0", "VI_1"], ["id", "5"]]


# --------------------------------------------------------------------------- conditionals


def test_conditional_lines() -> None:
    text = """\
    global_defs {
        @main   router_id main_router
        @backup router_id backup_router
    }
    unicast_peer {
        @^main    1.2.3.4
        @^backup  1.2.3.5
        @^backup2 1.2.3.6
    }
    @main
    """
    assert clean(text, config_id="main") == [
        ["global_defs", [["router_id", "main_router"]]],
        ["unicast_peer", [["1.2.3.5"], ["1.2.3.6"]]],
    ]
    assert clean(text, config_id="other") == [
        ["global_defs", []],
        ["unicast_peer", [["1.2.3.4"], ["1.2.3.5"], ["1.2.3.6"]]],
    ]


def test_conditional_keeps_columns() -> None:
    result = parse("@main\trouter_id X\n")
    assert result.stmts[0].keyword.pos == SourcePos("<string>", 1, 7, 1, 16)


def test_config_id_defaults_to_short_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syntax.socket, "gethostname", lambda: "lb1.example.com")
    result = parse_text("@lb1 router_id yes\n@lb1.example.com router_id no\n")
    assert tree(result.stmts) == [["router_id", "yes"]]


# --------------------------------------------------------------------------- definitions


def test_definitions_and_substitution() -> None:
    result = parse(
        """\
        $IFACE=eth0
        $NET=10.1
        interface $IFACE
        address ${NET}.0.1/24 $IFACE,x
        keep $IFACE.1 $UNDEFINED "${UNDEF_IN_QUOTES}"
        bad x${NTE}y
        """
    )
    assert tree(result.stmts) == [
        ["interface", "eth0"],
        ["address", "10.1.0.1/24", "eth0,x"],
        ["keep", "$IFACE.1", "$UNDEFINED", "${UNDEF_IN_QUOTES}"],
        ["bad", "xy"],
    ]
    assert messages(result) == [
        "<string>:5:6: warning: '$IFACE' is followed by '.', so it is not substituted"
        " [unsubstituted-variable]",
        "<string>:6:6: error: undefined variable 'NTE' [undefined-variable]",
    ]
    assert [d.hint for d in result.diagnostics] == [
        "write '${IFACE}' to substitute it here",
        "did you mean 'NET'?",
    ]
    iface = result.stmts[0].args[0]
    # A substituted word points at the $NAME use.
    assert iface.pos == SourcePos("<string>", 3, 11, 3, 17)
    assert (iface.pos.end_line, iface.pos.end_column) == (3, 17)
    address = result.stmts[1].args[0]
    assert (address.pos.column, address.pos.end_column) == (9, 22)


def test_substitution_is_recursive_at_use_time() -> None:
    # The man page's own example.
    assert clean(
        """\
        $ADDRESS_BASE=10.2.${ADDRESS_BASE_SUB}
        $ADDRESS_BASE_SUB=0
        ${ADDRESS_BASE}.100/32
        $ADDRESS_BASE_SUB=10
        ${ADDRESS_BASE}.100/32
        """
    ) == [["10.2.0.100/32"], ["10.2.10.100/32"]]


def test_substitution_inside_quotes_and_conditional_values() -> None:
    assert clean(
        """\
        $S=/bin/check
        $IF_MAIN=@main
        @main $PRIORITY=240
        @backup $PRIORITY=200
        script "$S --fast"
        $IF_MAIN priority $PRIORITY
        """
    ) == [["script", "/bin/check --fast"], ["priority", "240"]]


def test_empty_definition_and_predefined_names(tmp_path: Path) -> None:
    result = parse(
        """\
        $EMPTY=
        a x${EMPTY}y "${_HASH}${_BANG}" ${_INSTANCE} ${_PWD}
        r ${_RANDOM} ${_RANDOM 5 5}
        """,
        config_id="lb7",
        base_dir=tmp_path,
    )
    assert messages(result) == []
    a, r = tree(result.stmts)
    assert a == ["a", "xy", "#!", "lb7", str(tmp_path)]
    assert 0 <= int(r[1]) <= 32767
    assert r[2] == "5"


def test_recursive_definition_is_an_error_not_a_hang() -> None:
    result = parse("$A=x $A\nrouter_id $A\nnext 1\n")
    assert errors(result)[0].startswith("<string>:2:11: error: substitution of '$A' does not")
    assert tree(result.stmts)[-1] == ["next", "1"]


def test_multiline_definition() -> None:
    text = """\
    $INSTANCE= \\
    vrrp_instance VI_${NUM} { \\
        interface eth0.${NUM} \\
        @high priority 130 \\
        @low priority 120 \\
        virtual_ipaddress { \\
            10.0.${NUM}.254/24 \\
        } \\
    }

    $NUM=0
    $INSTANCE

    $NUM=1
    $INSTANCE
    """
    result = parse(text, config_id="low")
    assert messages(result) == []
    assert tree(result.stmts) == [
        [
            "vrrp_instance",
            f"VI_{n}",
            [
                ["interface", f"eth0.{n}"],
                ["priority", "120"],
                ["virtual_ipaddress", [[f"10.0.{n}.254/24"]]],
            ],
        ]
        for n in (0, 1)
    ]
    # Every word of an expansion points at the $INSTANCE use.
    second = result.stmts[1]
    assert second.keyword.pos == SourcePos("<string>", 15, 1, 15, 10)
    assert second.block is not None
    assert second.block[0].args[0].pos == SourcePos("<string>", 15, 1, 15, 10)


def test_nested_multiline_definitions() -> None:
    text = """\
    $RS= \\
    real_server 192.168.${VS_NUM}.${RS_NUM} 80 { \\
        weight 1 \\
    }
    $VS= \\
    virtual_server 10.0.${VS_NUM}.4 80 { \\
        $RS_NUM=1 \\
        $RS \\
        $RS_NUM=2 \\
        $RS \\
    }

    $VS_NUM=0
    $VS
    $VS_NUM=1
    $VS
    """
    assert clean(text) == [
        [
            "virtual_server",
            f"10.0.{v}.4",
            "80",
            [["real_server", f"192.168.{v}.{r}", "80", [["weight", "1"]]] for r in (1, 2)],
        ]
        for v in (0, 1)
    ]


def test_multiline_definition_ends_at_an_empty_line() -> None:
    assert clean("$X= \\\na 1 \\\n\nb 2\n$X\n") == [["b", "2"], ["a", "1"]]


def test_multiline_definition_must_end_the_line() -> None:
    # man page: "there must be nothing on the line after the parameter name".
    assert clean("$X= \\\na 1 \\\nb 2\nc $X d\n") == [["c", "$X", "d"]]


# --------------------------------------------------------------------------- ~SEQ / ~LST


def test_seq_examples_from_the_man_page() -> None:
    assert clean("~SEQ(SUBNET, 0, 3) ip_address 10.0.${SUBNET}.1\n") == [
        ["ip_address", f"10.0.{n}.1"] for n in range(4)
    ]
    assert clean("~SEQx(SUBNET, 0x90, 0x10, 0xc0) ip_address fe80::20:${SUBNET}:1\n") == [
        ["ip_address", f"fe80::20:{h}:1"] for h in ("90", "a0", "b0", "c0")
    ]
    assert clean("~SEQx(SUBNET, 144, 16, 192) a ${SUBNET}\n") == [
        ["a", h] for h in ("90", "a0", "b0", "c0")
    ]


@pytest.mark.parametrize(
    ("spec", "values"),
    [
        ("(N, 3)", ["1", "2", "3"]),
        ("(N, -2)", ["-1", "-2"]),
        ("(N, 5, 3)", ["5", "4", "3"]),
        ("(N, 10, -4, 0)", ["10", "6", "2"]),
        ("(N, 7, 7)", ["7"]),
        ("( N ,1,2 )", ["1", "2"]),
    ],
)
def test_seq_defaults(spec: str, values: list[str]) -> None:
    assert clean(f"~SEQ{spec} v ${{N}}\n") == [["v", v] for v in values]


def test_nested_seq_and_seq_of_a_multiline_definition() -> None:
    assert clean("~SEQ(A, 1, 2) ~SEQ(B, 1, 2) p ${A}.${B}\n") == [
        ["p", "1.1"],
        ["p", "1.2"],
        ["p", "2.1"],
        ["p", "2.2"],
    ]
    text = "$V= \\\nvi ${I} { \\\n  n ${I} \\\n}\n\n~SEQ(I, 1, 2) $V\n"
    assert clean(text) == [["vi", "1", [["n", "1"]]], ["vi", "2", [["n", "2"]]]]


def test_seq_words_keep_their_own_columns() -> None:
    result = parse("~SEQ(N, 1, 2) ip 10.0.${N}.1\n")
    first = result.stmts[0]
    assert first.keyword.pos == SourcePos("<string>", 1, 15, 1, 17)
    assert first.args[0].pos == SourcePos("<string>", 1, 18, 1, 29)


def test_lst_examples_from_the_man_page() -> None:
    assert clean("~LST({IP, IP1}, {10,1},{20,4}) 192.168.${IP}.${IP1}\n") == [
        ["192.168.10.1"],
        ["192.168.20.4"],
    ]
    assert clean("~LST(IP, 1, 2) ~LST(IP1, 5,6) 192.169.${IP}.${IP1}\n") == [
        ["192.169.1.5"],
        ["192.169.1.6"],
        ["192.169.2.5"],
        ["192.169.2.6"],
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("~SEQ(N, 1, -1, 5) x", "invalid ~SEQ values '~SEQ(N, 1, -1, 5)'"),
        ("~SEQ(N, 1, 0, 5) x", "invalid ~SEQ values '~SEQ(N, 1, 0, 5)'"),
        ("~SEQ(N, a) x", "invalid ~SEQ specification '~SEQ(N, a)'"),
        ("~SEQ(N) x", "invalid ~SEQ specification '~SEQ(N)'"),
        ("~SEQ(N, 1, 2 x", "~SEQ has no closing ')'"),
        ("~SEQUENCE x", "invalid ~SEQ specification"),
        ("~SEQx(N, -1, 3) x", "~SEQx is only valid for non-negative numbers '~SEQx(N, -1, 3)'"),
        ("~SEQ(N, 1, 1, 99999999) x", "~SEQ produces 99,999,999 lines, more than the limit"),
        ("~LST({A, B}, {1}) x", "~LST value set {1} does not have 2 values"),
    ],
)
def test_bad_sequences(line: str, message: str) -> None:
    result = parse(line + "\nnext 1\n")
    errs = errors(result)
    assert len(errs) == 1
    assert errs[0].startswith(f"<string>:1:1: error: {message}")
    assert tree(result.stmts) == [["next", "1"]]


# --------------------------------------------------------------------------- include


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_include_relative_to_the_including_file(tmp_path: Path) -> None:
    main = write(
        tmp_path / "main.conf",
        """\
        global_defs {
          include sub/defs.conf
        }
        include conf.d/*.conf
        """,
    )
    write(tmp_path / "sub/defs.conf", "router_id R\ninclude more/x.conf\n")
    write(tmp_path / "sub/more/x.conf", "smtp_server 1.2.3.4\n")
    write(tmp_path / "conf.d/b.conf", "vs b\n")
    write(tmp_path / "conf.d/a.conf", "vs a\n")
    write(tmp_path / "conf.d/.hidden.conf", "vs hidden\n")
    result = parse_file(main, config_id="m")
    assert messages(result) == []
    assert tree(result.stmts) == [
        ["global_defs", [["router_id", "R"], ["smtp_server", "1.2.3.4"]]],
        ["vs", "a"],
        ["vs", "b"],
    ]
    gd = result.stmts[0]
    assert gd.block is not None
    assert gd.block[1].keyword.pos == SourcePos(str(tmp_path / "sub/more/x.conf"), 1, 1, 1, 12)


def test_include_brace_patterns_and_blocks_across_files(tmp_path: Path) -> None:
    main = write(tmp_path / "main.conf", "vrrp_instance V {\ninclude {x,y}.conf\n")
    write(tmp_path / "x.conf", "state MASTER\n")
    write(tmp_path / "y.conf", "priority 1\n}\n")
    result = parse_file(main, config_id="m")
    assert messages(result) == []
    assert tree(result.stmts) == [["vrrp_instance", "V", [["state", "MASTER"], ["priority", "1"]]]]


def test_expand_braces() -> None:
    assert expand_braces("a{b,c{d,e}}f") == ["abf", "acdf", "acef"]
    assert expand_braces("{foo/{,cat,dog},bar}") == ["foo/", "foo/cat", "foo/dog", "bar"]
    assert expand_braces("no{brace") == ["no{brace"]
    assert expand_braces("esc\\{a,b}") == ["esc\\{a,b}"]


def test_include_problems(tmp_path: Path) -> None:
    main = write(
        tmp_path / "main.conf",
        """\
        include missing.conf
        include empty.d/*.conf
        includew empty.d/*.conf
        include loop.conf
        include
        include exec.conf
        include adir
        after 1
        """,
    )
    (tmp_path / "empty.d").mkdir()
    (tmp_path / "adir").mkdir()
    write(tmp_path / "loop.conf", "include main.conf\n")
    exe = write(tmp_path / "exec.conf", "x 1\n")
    exe.chmod(0o755)
    result = parse_file(main, config_id="m")
    name = str(main)
    loop = str(tmp_path / "loop.conf")
    assert messages(result) == [
        f"{loop}:1:9: error: include loop: '{name}' is already being read [include-loop]",
        f"{name}:1:9: error: included file 'missing.conf' does not exist [include-missing]",
        f"{name}:2:9: warning: no file matches 'empty.d/*.conf' [include-no-match]",
        f"{name}:3:10: error: no file matches 'empty.d/*.conf' [include-no-match]",
        f"{name}:5:1: error: include needs a file name or pattern [include]",
        f"{name}:6:9: warning: '{tmp_path}/exec.conf' is not a regular non-executable file;"
        " skipped (as keepalived does) [include-skipped]",
        f"{name}:7:9: warning: '{tmp_path}/adir' is a directory; skipped (as keepalived does)"
        " [include-skipped]",
    ]
    assert tree(result.stmts) == [["after", "1"]]


def test_include_depth_limit(tmp_path: Path) -> None:
    for i in range(40):
        write(tmp_path / f"f{i}.conf", f"include f{i + 1}.conf\n")
    write(tmp_path / "f40.conf", "x 1\n")
    result = parse_file(tmp_path / "f0.conf", config_id="m")
    errs = errors(result)
    assert len(errs) == 1
    assert "includes nested more than 32 deep [include-depth]" in errs[0]


def test_included_binary_file_is_one_error(tmp_path: Path) -> None:
    main = write(tmp_path / "main.conf", "include bin.conf\nafter 1\n")
    (tmp_path / "bin.conf").write_bytes(b"\x7fELF\x00\x01\x02garbage\n")
    result = parse_file(main, config_id="m")
    assert errors(result) == [
        f"{tmp_path}/bin.conf:1:5: error: not a text file (NUL byte); a configuration file must"
        " be UTF-8 text [binary-file]"
    ]
    assert tree(result.stmts) == [["after", "1"]]


def test_include_with_relative_top_level_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "etc/main.conf", "include sub.conf\n")
    write(tmp_path / "etc/sub.conf", "x 1\n")
    monkeypatch.chdir(tmp_path)
    result = parse_file(Path("etc/main.conf"), config_id="m")
    assert tree(result.stmts) == [["x", "1"]]
    assert result.stmts[0].keyword.pos.path == os.path.join("etc", "sub.conf")


# --------------------------------------------------------------------------- files, encoding


def test_parse_file_unreadable_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        parse_file(tmp_path / "nope.conf")
    with pytest.raises(IsADirectoryError):
        parse_file(tmp_path)


def test_invalid_utf8_is_one_error_and_parsing_goes_on(tmp_path: Path) -> None:
    f = tmp_path / "latin1.conf"
    f.write_bytes(b"router_id caf\xe9\nnext 1\n")
    result = parse_file(f, config_id="m")
    assert errors(result) == [
        f"{f}:1:14: error: invalid UTF-8 byte 0xe9; a configuration file must be UTF-8 text"
        " [invalid-utf8]"
    ]
    assert tree(result.stmts) == [["router_id", "caf\ufffd"], ["next", "1"]]


# --------------------------------------------------------------------------- braces and recovery


def test_unclosed_block_is_reported_once_at_its_keyword_with_a_hint() -> None:
    result = parse(
        """\
        vrrp_instance A {
            virtual_ipaddress {
                10.0.0.1
        }
        vrrp_instance B {
            state MASTER
        }
        """
    )
    assert len(result.diagnostics) == 1
    diag = result.diagnostics[0]
    assert (
        str(diag)
        == "<string>:1:1: error: the block of 'vrrp_instance' is never closed [unclosed-block]"
    )
    assert diag.hint == (
        "the '}' at line 4 closes 'virtual_ipaddress' of line 2 but is indented differently;"
        " is a '}' missing before it?"
    )
    # Recovery adds the '}' where indentation says it is missing, so vrrp_instance B is read
    # at the top level and its own problems would be reported there.
    assert tree(result.stmts) == [
        ["vrrp_instance", "A", [["virtual_ipaddress", [["10.0.0.1"]]]]],
        ["vrrp_instance", "B", [["state", "MASTER"]]],
    ]


def test_unclosed_block_without_indentation_clue_closes_at_the_end() -> None:
    result = parse("a {\nb {\nc 1\n}\nd 2\n")
    assert messages(result) == [
        "<string>:1:1: error: the block of 'a' is never closed [unclosed-block]"
    ]
    assert result.diagnostics[0].hint == "add the missing '}'"
    assert tree(result.stmts) == [["a", [["b", [["c", "1"]]], ["d", "2"]]]]


def test_several_missing_braces_are_repaired_from_indentation() -> None:
    result = parse(
        """\
        a {
            b {
                c {
                    x 1
            }
        }
        d {
            y 2
        }
        """
    )
    assert [d.code for d in result.diagnostics] == ["unclosed-block"]
    assert tree(result.stmts) == [["a", [["b", [["c", [["x", "1"]]]]]]], ["d", [["y", "2"]]]]


def test_stray_braces() -> None:
    result = parse("}\na 1 {\n}\n{ b 2 }\nc 3 { } { d 4 }\n")
    assert messages(result) == [
        "<string>:1:1: error: '}' without a block to close [stray-brace]",
        "<string>:4:1: error: '{' without a keyword before it [stray-brace]",
        "<string>:5:9: error: '{' without a keyword before it [stray-brace]",
    ]
    assert tree(result.stmts) == [["a", "1", []], ["b", "2"], ["c", "3", []], ["d", "4"]]


def test_deep_nesting_is_bounded_and_does_not_raise() -> None:
    depth = 10_000
    text = "".join(f"k{i} {{\n" for i in range(depth)) + "}\n" * depth
    result = parse_text(text, config_id="m")
    assert [str(d) for d in result.diagnostics] == [
        f"<string>:{syntax.MAX_DEPTH + 1}:{len(str(syntax.MAX_DEPTH)) + 3}: error: blocks nested"
        f" more than {syntax.MAX_DEPTH} deep [nesting-limit]"
    ]
    level = 0
    stmts = result.stmts
    while stmts:
        assert len(stmts) >= 1
        level += 1
        block = stmts[0].block
        stmts = block if block is not None else ()
    assert level == syntax.MAX_DEPTH + 1  # the innermost block holds the flattened rest


def test_many_unclosed_blocks_report_once() -> None:
    result = parse_text("a {\n" * 500, config_id="m")
    assert [d.code for d in result.diagnostics] == ["unclosed-block", "nesting-limit"]


def test_garbage_text_never_raises() -> None:
    for text in ["{{{{", "}}}}", '"', "\\", "$", "${", "~", "@", "@^", "$A=\\", "~SEQ(", "include"]:
        result = parse_text(text + "\n" + text, config_id="m")
        assert isinstance(result, SyntaxResult)


# --------------------------------------------------------------------------- split_command


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("/bin/check.sh a b", ("/bin/check.sh", "a", "b")),
        ("/bin/x 'a b' \"c d\"", ("/bin/x", "a b", "c d")),
        ("a'b c'd", ("ab cd",)),
        ('x \\"y\\"', ("x", '"y"')),
        ("\\x41\\101\\cA\\t\\q", ("AA\x01\tq",)),
        ("  ", ()),
    ],
)
def test_split_command(text: str, words: tuple[str, ...]) -> None:
    assert split_command(text) == words


@pytest.mark.parametrize("text", ["'open", '"open', "end\\"])
def test_split_command_errors(text: str) -> None:
    with pytest.raises(ValueError):
        split_command(text)


def test_include_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hactl.config import preprocess

    monkeypatch.setattr(preprocess, "MAX_FILE_SIZE", 10)
    main = write(tmp_path / "main.conf", "include big.conf\n")
    write(tmp_path / "big.conf", "router_id " + "x" * 20 + "\n")
    result = parse_file(main, config_id="m")
    assert messages(result) == [
        f"{main}:1:9: error: included file '{tmp_path}/big.conf' is larger than 0 MiB"
        " [include-too-large]"
    ]


def test_odd_include_names_are_diagnostics() -> None:
    for text in ["include \0x\n", "include a\udcff*\n", "include {a,{b,\n"]:
        result = parse_text(text, config_id="m")
        assert [d.code for d in result.diagnostics] in (["include-missing"], ["include-no-match"])


def test_fast_construction_builds_the_same_objects() -> None:
    # syntax.py sets the slots of Word/Stmt (and the items of SourcePos, a named tuple)
    # directly for speed; a field added to one of them must be added there too, or its
    # objects would miss it.
    from dataclasses import fields

    assert list(SourcePos._fields) == [
        "path",
        "line",
        "column",
        "end_line",
        "end_column",
    ]
    assert [f.name for f in fields(syntax.Word)] == ["text", "pos", "quoted"]
    assert [f.name for f in fields(Stmt)] == ["keyword", "args", "block", "pos"]
    result = parse("a b {\n c\n}\n")
    made = result.stmts[0]
    pos = SourcePos("<string>", 1, 1, 3, 2)
    word_a = syntax.Word("a", SourcePos("<string>", 1, 1, 1, 2))
    word_b = syntax.Word("b", SourcePos("<string>", 1, 3, 1, 4))
    inner = Stmt(
        syntax.Word("c", SourcePos("<string>", 2, 2, 2, 3)),
        (),
        None,
        SourcePos("<string>", 2, 2, 2, 3),
    )
    expected = Stmt(word_a, (word_b,), (inner,), pos)
    assert made == expected
    assert repr(made) == repr(expected)
    assert hash(made.keyword.pos) == hash(word_a.pos)
    assert (made.pos.end_line, made.pos.end_column) == (3, 2)
    assert made.args[0].pos.end_column == 4


def test_line_longer_than_keepalived_reads_is_warned() -> None:
    long_arg = "/bin/x " + "a" * 1100
    result = parse(f'notify "{long_arg}"\nshort "{"é" * 300}"\n')
    assert tree(result.stmts) == [["notify", long_arg], ["short", "é" * 300]]
    assert [(d.pos.line, d.code) for d in result.diagnostics] == [(1, "line-too-long")]


def test_include_after_a_brace_is_an_error() -> None:
    result = parse("global_defs { include x.conf }\n")
    assert messages(result) == [
        "<string>:1:15: error: 'include' must start a line of its own [include]"
    ]
    assert tree(result.stmts) == [["global_defs", []]]


def test_parser_errors_become_diagnostics() -> None:
    # `_balance` makes every stream parse; the parser's own error path must still give a
    # diagnostic, not an exception, if that ever changes.
    where = SourcePos("x.conf", 3, 4, 3, 5)
    found: list[Any] = []
    stray = syntax._close_token(where)
    assert syntax._parse_tokens([stray], found, "x.conf") == ()
    assert [str(d) for d in found] == ["x.conf:3:4: error: unexpected token [syntax]"]


def test_pwd_is_absolute_and_follows_includes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "etc/main.conf", "a ${_PWD}\ninclude sub/x.conf\n")
    write(tmp_path / "etc/sub/x.conf", "b ${_PWD}\n")
    monkeypatch.chdir(tmp_path)
    result = parse_file(Path("etc/main.conf"), config_id="m")
    assert tree(result.stmts) == [["a", str(tmp_path / "etc")], ["b", str(tmp_path / "etc/sub")]]


def test_missing_include_suggests_a_similar_file(tmp_path: Path) -> None:
    write(tmp_path / "conf.d/web-servers.conf", "x 1\n")
    main = write(tmp_path / "main.conf", "include conf.d/web_servers.conf\n")
    result = parse_file(main, config_id="m")
    assert [d.hint for d in result.diagnostics] == ["did you mean 'conf.d/web-servers.conf'?"]
