"""`fmt` writes canonical keepalived syntax; `dump` writes the documented JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hactl import config
from hactl.config import model as m
from hactl.config.dump import SCHEMA, to_json
from hactl.config.fmt import format_config, number, quote

GOOD = sorted((Path(__file__).parent / "data" / "good").glob("*.conf"))


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_good_files_round_trip_through_fmt(path: Path) -> None:
    loaded = config.load(path, config_id="lb1")
    text = format_config(loaded.config)
    assert config.parse_text(text, config_id="lb1").config == loaded.config
    assert "lb_algo" not in text and "lb_kind" not in text
    assert all((len(line) - len(line.lstrip(" "))) % 4 == 0 for line in text.splitlines())
    assert "\t" not in text


def test_fmt_uses_modern_spellings_and_omits_defaults() -> None:
    text = "virtual_server 10.0.0.1 80 {\n lb_algo rr\n lb_kind DR\n delay_loop 60\n"
    text += " real_server 10.1.0.1 80 {\n  TCP_CHECK {\n   connect_timeout 5\n  }\n }\n}\n"
    assert format_config(config.parse_text(text).config) == (
        "virtual_server 10.0.0.1 80 {\n"
        "    lvs_sched rr\n"
        "    lvs_method DR\n"
        "    real_server 10.1.0.1 80 {\n"
        "        TCP_CHECK {\n"
        "        }\n"
        "    }\n"
        "}\n"
    )


def test_fmt_keeps_unimplemented_keywords() -> None:
    text = "global_defs {\n enable_snmp_vrrp\n process_names\n}\nbfd_instance b1 {\n min_rx 10\n}\n"
    out = format_config(config.parse_text(text).config)
    assert "    enable_snmp_vrrp\n" in out and "bfd_instance b1 {\n    min_rx 10\n}" in out


def test_quote_and_number() -> None:
    assert quote("/bin/check arg") == '"/bin/check arg"'
    assert quote("plain") == "plain"
    assert quote("") == '""'
    assert quote("a#b") == '"a#b"'
    with pytest.raises(ValueError, match="escape"):
        quote('say "hi" now')
    assert number(0.000001) == "0.000001"
    assert number(2.0) == "2"
    assert number(1234567.25) == "1234567.25"
    assert float(number(0.1 + 0.2)) == 0.1 + 0.2


def test_dump_schema() -> None:
    path = next(p for p in GOOD if p.name == "checkers.conf")
    doc = json.loads(to_json(config.load(path).config))
    assert doc["schema"] == SCHEMA
    vs = doc["config"]["virtual_servers"][0]
    assert vs["group"] == "WEB" and vs["delay_loop"] == 10 and vs["lvs_sched"] == "rr"
    assert vs["key"] == ["group", "WEB", "TCP"]
    rs = vs["real_servers"][0]
    assert rs["address"] == "198.51.100.20" and rs["key"] == [
        ["group", "WEB", "TCP"],
        "198.51.100.20",
        80,
    ]
    tcp = rs["checkers"][0]
    assert tcp["kind"] == "TCP_CHECK" and tcp["delay_loop"] == 5 and tcp["retry"] == 2
    assert tcp["connect_port"] == 8080 and "pos" not in tcp
    udp = rs["checkers"][6]
    assert udp["payload"] == "0a0b0c"
    g = doc["config"]["global_defs"]
    assert g["ipvs_sysctl"]["sync_threshold"] == 3 and g["vrrp_mcast_group4"] == "224.0.0.18"


def test_dump_with_positions() -> None:
    loaded = config.parse_text(
        "vrrp_instance A {\n interface eth0\n virtual_router_id 3\n}\n", path="x.conf"
    )
    doc = json.loads(to_json(loaded.config, positions=True))
    inst = doc["config"]["vrrp_instances"][0]
    assert inst["pos"] == "x.conf:1:1" and inst["key"] == ["vrrp", "A"]


def test_generated_model_formats() -> None:
    cfg = m.Config(
        vrrp_instances=(m.VrrpInstance(name="gen", interface="eth0", virtual_router_id=7),)
    )
    assert config.parse_text(format_config(cfg)).config == cfg


def test_unimplemented_blocks_with_quoted_words_round_trip() -> None:
    text = 'bfd_instance "b 1" {\n "odd key" "a b" c\n}\n'
    loaded = config.parse_text(text)
    out = format_config(loaded.config)
    assert config.parse_text(out).config == loaded.config
    assert out == 'bfd_instance "b 1" {\n    "odd key" "a b" c\n}\n'


def test_dump_writes_config_words_for_python_keyword_fields() -> None:
    loaded = config.parse_text("static_rules {\n from 10.0.0.0/8 table 5 preference 100\n}\n")
    rule = json.loads(to_json(loaded.config))["config"]["static_rules"][0]
    assert rule["from"] == "10.0.0.0/8" and rule["table"] == "5" and "from_" not in rule
