"""Lints: each fires on its pattern, is silent on the fixed configuration, and is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hactl import config
from hactl.config.lints import LINTS, lint

DOCS = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def lint_ids(text: str, **kw: float) -> list[str]:
    loaded = config.parse_text(text, **kw)  # type: ignore[arg-type]
    return [w.code for w in loaded.warnings if w.code in LINTS]


VS_TCP = (
    "virtual_server 10.0.0.1 22 {{\n protocol TCP\n lvs_sched wlc\n lvs_method NAT\n{body}"
    " real_server 10.1.0.1 22 {{\n{rs} }}\n}}\n"
)


def vs(body: str = "", rs: str = "") -> str:
    return VS_TCP.format(body=body, rs=rs)


def glob(body: str) -> str:
    return f"global_defs {{\n{body}}}\n"


def test_tcp_timeout_below_keepalive() -> None:
    assert lint_ids(vs()) == ["tcp-timeout-below-keepalive"]
    assert lint_ids(glob(" lvs_timeouts tcp 7500\n") + vs()) == []
    # the system's keepalive time comes in as a parameter
    assert lint_ids(vs(), tcp_keepalive_time=600) == []
    # UDP-only directors have no TCP sessions to drop
    assert lint_ids(vs(" protocol UDP\n")) == []


def test_tcp_timeout_warning_points_at_lvs_timeouts() -> None:
    loaded = config.parse_text(glob(" lvs_timeouts tcp 900\n") + vs())
    (warning,) = loaded.warnings
    assert (warning.pos.line, warning.pos.column) == (2, 2)
    assert "lvs_timeouts tcp (900 s)" in warning.message
    assert warning.hint == LINTS["tcp-timeout-below-keepalive"].reason


def test_conntrack_with_rescheduling() -> None:
    base = " lvs_timeouts tcp 7500\n"
    assert lint_ids(glob(base + " ipvs_sysctl {\n  conntrack 1\n }\n")) == ["conntrack-reuse-delay"]
    fixed = " ipvs_sysctl {\n  conntrack 1\n  conn_reuse_mode 0\n }\n"
    assert lint_ids(glob(base + fixed)) == []
    mode2 = " ipvs_sysctl {\n  conntrack 1\n  conn_reuse_mode 2\n }\n"
    assert lint_ids(glob(base + mode2)) == ["conntrack-reuse-delay"]


def test_persistence_with_quiescing() -> None:
    g = " lvs_timeouts tcp 7500\n"
    body = " persistence_timeout 300\n"
    rs = "  inhibit_on_failure\n"
    assert lint_ids(glob(g) + vs(body, rs)) == ["persistence-quiescent-template"]
    fixed = g + " ipvs_sysctl {\n  expire_quiescent_template 1\n }\n"
    assert lint_ids(glob(fixed) + vs(body, rs)) == []
    assert lint_ids(glob(g) + vs(body)) == []


def test_slow_failure_detection() -> None:
    g = glob(" lvs_timeouts tcp 7500\n")
    slow = "  TCP_CHECK {\n   delay_loop 300\n   connect_timeout 3\n  }\n"
    assert lint_ids(g + vs(rs=slow)) == ["slow-failure-detection"]
    quick = "  TCP_CHECK {\n   delay_loop 20\n   connect_timeout 3\n  }\n"
    assert lint_ids(g + vs(rs=quick)) == []
    keepalived_default = "  TCP_CHECK {\n  }\n"  # 60 s loop, 5 s connect, 1 retry
    assert lint_ids(g + vs(rs=keepalived_default)) == []


def test_sync_group_advert_mismatch() -> None:
    def inst(name: str, vrid: int, advert: int) -> str:
        return (
            f"vrrp_instance {name} {{\n interface eth0\n virtual_router_id {vrid}\n"
            f" advert_int {advert}\n}}\n"
        )

    group = "vrrp_sync_group G {\n group {\n  A\n  B\n }\n}\n"
    assert lint_ids(group + inst("A", 1, 1) + inst("B", 2, 3)) == ["sync-group-advert-mismatch"]
    assert lint_ids(group + inst("A", 1, 2) + inst("B", 2, 2)) == []


def test_sorry_server_equal_to_a_real_server() -> None:
    g = glob(" lvs_timeouts tcp 7500\n")
    assert lint_ids(g + vs(" sorry_server 10.1.0.1 22\n")) == ["sorry-server-is-real-server"]
    assert lint_ids(g + vs(" sorry_server 10.1.0.9 22\n")) == []


def test_lint_is_pure_and_takes_the_keepalive_time() -> None:
    cfg = config.parse_text(vs(), tcp_keepalive_time=600).config
    assert [d.code for d in lint(cfg)] == ["tcp-timeout-below-keepalive"]
    assert lint(cfg, tcp_keepalive_time=300) == []


@pytest.mark.parametrize("lint_id", sorted(LINTS))
def test_every_lint_is_documented(lint_id: str) -> None:
    if not DOCS.exists():
        pytest.fail("docs/configuration.md is missing")
    assert re.search(rf"`{re.escape(lint_id)}`", DOCS.read_text())


def test_lints_point_at_the_setting_to_change() -> None:
    text = glob(" lvs_timeouts tcp 7500\n ipvs_sysctl {\n  conntrack 1\n }\n")
    (warning,) = config.parse_text(text).warnings
    assert (warning.code, warning.pos.line, warning.pos.column) == ("conntrack-reuse-delay", 4, 3)
    text = glob(" lvs_timeouts tcp 7500\n") + vs(
        " persistence_timeout 60\n", "  inhibit_on_failure\n"
    )
    (warning,) = config.parse_text(text).warnings
    assert (warning.code, warning.pos.line) == ("persistence-quiescent-template", 8)
