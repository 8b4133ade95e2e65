"""The keyword tables are consistent with the model, the builder and the formatter."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from hactl.config import build, fmt
from hactl.config import keywords as kw
from hactl.config import model as m
from hactl.ipvs.model import IpvsSysctl

# Which model class each table fills.
CLASSES: dict[str, type] = {
    "<top>": m.Config,
    "global_defs": m.GlobalDefs,
    "ipvs_sysctl": IpvsSysctl,
    "vrrp_script": m.VrrpScript,
    "vrrp_track_file": m.TrackFile,
    "vrrp_sync_group": m.SyncGroup,
    "vrrp_instance": m.VrrpInstance,
    "authentication": m.Authentication,
    "virtual_server": m.VirtualServer,
    "real_server": m.RealServer,
    "url": m.Url,
    "SSL": m.SslConfig,
    **{kind.value: m.CHECKER_CLASSES[kind] for kind in kw.CheckerKind},
}

ROWS = [(block, row) for block, table in kw.BLOCKS.items() for row in table.keywords.values()]


def test_every_table_has_a_model_class() -> None:
    assert set(CLASSES) == set(kw.BLOCKS)


@pytest.mark.parametrize(("block", "row"), ROWS, ids=[f"{b}.{r.name}" for b, r in ROWS])
def test_row_is_consistent(block: str, row: kw.Kw) -> None:
    fields = {f.name for f in dataclasses.fields(CLASSES[block])}
    spec = row.spec
    if isinstance(spec, kw.Custom):
        assert spec.name in build.CUSTOM or spec.name in build._DEFERRED
    if isinstance(spec, kw.Sub):
        assert spec.name in kw.BLOCKS
    if row.alias_of:
        assert row.alias_of in kw.BLOCKS[block].keywords
        assert row.attr == kw.BLOCKS[block].keywords[row.alias_of].attr
    if row.implemented and not isinstance(spec, kw.Raw):
        # an implemented keyword always lands in a typed model field
        assert row.attr in fields, f"{block}.{row.name} -> {row.attr}"
    if isinstance(spec, kw.Raw):
        assert not row.implemented, "raw words are only for keywords hactl does not act on"
    if row.extension:
        assert row.doc, "extensions are documented in the table"


def test_ipvs_sysctl_keywords_are_exactly_the_sysctl_names() -> None:
    assert tuple(kw.BLOCKS["ipvs_sysctl"].keywords) == IpvsSysctl.names()


def test_model_defaults_come_from_the_keyword_constants() -> None:
    assert m.VirtualServer().delay_loop == kw.DEFAULT_DELAY_LOOP
    assert m.VirtualServer().lvs_sched is kw.DEFAULT_LVS_SCHED
    assert m.TcpCheck().connect_timeout == kw.DEFAULT_CONNECT_TIMEOUT
    assert m.HttpGet().delay_before_retry == kw.DEFAULT_DELAY_BEFORE_RETRY[kw.CheckerKind.HTTP_GET]
    assert m.DnsCheck().retry == kw.DEFAULT_RETRY[kw.CheckerKind.DNS_CHECK]
    assert m.MiscCheck().retry == kw.DEFAULT_RETRY[kw.CheckerKind.MISC_CHECK]
    assert m.VrrpInstance(name="x").priority == kw.DEFAULT_PRIORITY
    assert m.GlobalDefs().vrrp_mcast_group4 == kw.DEFAULT_MCAST_GROUP4


def test_legacy_spellings_are_kept_and_canonical_ones_written() -> None:
    vs = kw.BLOCKS["virtual_server"].keywords
    assert vs["lb_algo"].alias_of == "lvs_sched" and vs["lb_kind"].alias_of == "lvs_method"
    vs_model = m.VirtualServer(
        fwmark=1, lvs_sched=kw.LvsSched.RR, lvs_method=m.Forwarding(method=kw.LvsMethod.DR)
    )
    text = fmt.format_config(m.Config(virtual_servers=(vs_model,)))
    assert "lvs_sched rr" in text and "lvs_method DR" in text
    assert "lb_algo" not in text and "lb_kind" not in text


def test_every_checker_has_a_table_and_a_class() -> None:
    assert set(kw.CHECKER_BLOCKS) == set(kw.CheckerKind) == set(m.CHECKER_CLASSES)


def test_every_spec_type_has_a_converter() -> None:
    assert set(build._CONVERTERS) == set(typing.get_args(kw.Spec))
