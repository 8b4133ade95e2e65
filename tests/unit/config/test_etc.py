"""Every shipped configuration in etc/ stays parse-clean: no errors and no warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from hactl import config
from hactl.config.fmt import format_config

ETC = Path(__file__).resolve().parents[3] / "etc"
FILES = sorted(p for p in ETC.iterdir() if p.is_file() and p.suffix in (".conf", ".example"))


def test_etc_has_the_examples() -> None:
    names = {p.name for p in FILES}
    assert {"hactl.conf.example", "demo-loopback.conf"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("config_id", ["lb1", "lb2"])
def test_etc_file_is_clean(path: Path, config_id: str) -> None:
    loaded = config.load(path, config_id=config_id)
    assert [str(w) for w in loaded.warnings] == []
    assert config.parse_text(format_config(loaded.config), config_id=config_id).config == (
        loaded.config
    )


def test_example_means_what_its_comments_say() -> None:
    lb1 = config.load(ETC / "hactl.conf.example", config_id="lb1").config
    lb2 = config.load(ETC / "hactl.conf.example", config_id="lb2").config
    assert lb1.vrrp_instances[0].priority == 150 and lb2.vrrp_instances[0].priority == 100
    assert [str(p.address) for p in lb1.vrrp_instances[0].unicast_peers] == ["192.0.2.3"]
    assert lb1.global_defs.lvs_sync_daemon is not None
    assert [vs.port for vs in lb1.virtual_servers] == [80, 443]
