"""Registration of the API commands on an argparse front end, and the pure text formatters."""

from __future__ import annotations

import argparse

import pytest

from hactl.api.cli import add_parsers, format_plan, format_status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hactl")
    subs = parser.add_subparsers(dest="command")
    add_parsers(subs)
    return parser


def test_commands_registered_with_handlers() -> None:
    parser = _parser()
    for argv in (["status"], ["ipvs", "-Lnc"], ["drain", "10.0.0.1:80", "10.0.1.2:80"],
                 ["enable", "a", "b"], ["disable", "a", "b"], ["weight", "a", "b", "3"],
                 ["reload", "--dry-run"]):
        args = parser.parse_args(argv)
        assert callable(args.handler), argv
    args = parser.parse_args(["ipvs", "-Ln", "--stats", "--exact", "-t", "10.0.0.1:80"])
    assert (args.list, args.numeric, args.stats, args.exact, args.tcp_service) == (
        True, True, True, True, "10.0.0.1:80")
    args = parser.parse_args(["drain", "udp:10.0.0.1:53", "[2001:db8::2]:53", "--wait",
                              "--timeout", "2.5", "--expire-templates", "--keep"])
    assert (args.wait, args.timeout, args.expire_templates, args.keep) == (True, 2.5, True, True)


@pytest.mark.parametrize("argv", [["ipvs", "--stats", "--rate"], ["ipvs", "-t", "a", "-u", "b"],
                                  ["weight", "a", "b"], ["drain", "a"]])
def test_usage_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(argv)
    assert info.value.code == 2


def test_format_status() -> None:
    info = {"version": "1.0", "backend": "embedded", "router_id": "lb1",
            "config_path": "/etc/hactl/hactl.conf", "config_loaded_at": 0.0}
    vrrp = [{"name": "VI_1", "interface": "eth0", "vrid": 51, "state": "BACKUP",
             "effective_priority": 90, "priority": 100, "master_address": "10.0.0.3",
             "transitions": 2, "split_brain": 0}]
    servers = [{"id": "tcp:10.0.0.1:80", "scheduler": "wlc", "quorum_up": False,
                "sorry_active": True, "real_servers": [{
                    "id": "10.0.1.2:80", "health": "up", "effective_weight": 5,
                    "configured_weight": 1, "in_ipvs": True,
                    "connections": {"active": 3, "inactive": 1, "persistent": 0},
                    "override": {"kind": "weight", "weight": 5},
                    "checks": [{"kind": "HTTP_GET", "ok": False, "latency": 0.25}]}]}]
    assert format_status(info, vrrp, servers).splitlines() == [
        "hactl 1.0 (embedded IPVS), router lb1",
        "config /etc/hactl/hactl.conf loaded 1970-01-01 00:00:00Z",
        "",
        "VRRP instances:",
        "  VI_1             eth0       vrid 51  BACKUP  prio 90/100  master 10.0.0.3  "
        "transitions 2  split-brain 0",
        "",
        "Virtual servers:",
        "  tcp:10.0.0.1:80  wlc  QUORUM DOWN, sorry server active",
        "    10.0.1.2:80            up      weight 5/1    active 3      inactive 1      "
        "persistent 0      HTTP_GET FAIL 250.0ms  [weight 5]",
    ]


def test_format_plan_variants() -> None:
    assert format_plan({"ok": True, "dry_run": False, "changes": [], "diagnostics": []}) == \
        "applied: no changes\n"
    text = format_plan({"ok": True, "dry_run": False, "diagnostics": ["w: deprecated"],
                        "changes": [{"action": "remove", "subject": "virtual_server fwm:1",
                                     "detail": ""}]})
    assert text == "applied:\n  - virtual_server fwm:1\n  note: w: deprecated\n"
