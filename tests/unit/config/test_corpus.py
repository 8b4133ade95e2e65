"""The 25 sample configurations shipped with keepalived, through the whole pipeline.

Each file's verdict is pinned below. The valid keepalived configurations must load (warnings
are fine: most samples use keywords hactl does not act on, and the LVS ones trip the
tcp-timeout lint); environment-only problems such as a missing eth1 are not errors. The two
genuinely broken samples are reported precisely, line and column. Every loadable sample also
survives fmt -> parse unchanged.

Skipped when ../shared (the corpus) is not beside the repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hactl import config
from hactl.config.fmt import format_config
from hactl.errors import ConfigErrors

OK = "ok"

# file -> (config id, verdict); a verdict is OK or the exact error lines (path-less).
VERDICTS: dict[str, tuple[str | None, str | tuple[str, ...]]] = {
    "keepalived.conf.HTTP_GET.port": (None, OK),
    "keepalived.conf.IPv6": (None, OK),
    "keepalived.conf.PING_CHECK": (None, OK),
    "keepalived.conf.SMTP_CHECK": (None, OK),
    "keepalived.conf.SSL_GET": (None, OK),
    "keepalived.conf.UDP_CHECK": (None, OK),
    # "Run keepalived with either '-i high' or '-i low'"
    "keepalived.conf.conditional_conf": ("high", OK),
    "keepalived.conf.fwmark": (None, OK),
    "keepalived.conf.inhibit": (None, OK),
    "keepalived.conf.misc_check": (None, OK),
    "keepalived.conf.misc_check_arg": (None, OK),
    "keepalived.conf.quorum": (None, OK),
    "keepalived.conf.sample": (None, OK),
    "keepalived.conf.status_code": (None, OK),
    "keepalived.conf.track_interface": (None, OK),
    "keepalived.conf.virtual_server_group": (None, OK),
    "keepalived.conf.virtualhost": (None, OK),
    "keepalived.conf.vrrp": (None, OK),
    "keepalived.conf.vrrp.localcheck": (None, OK),
    # Legacy sync-group syntax: instance names directly in the block.
    "keepalived.conf.vrrp.lvs_syncd": (
        None,
        (
            "4:3: error: unknown keyword `VI_2` in vrrp_sync_group VG1 [unknown-keyword]",
            "5:3: error: unknown keyword `VI_3` in vrrp_sync_group VG1 [unknown-keyword]",
        ),
    ),
    "keepalived.conf.vrrp.routes": (None, OK),
    # `192.168.100./24` and `192.168.200./24` are not addresses.
    "keepalived.conf.vrrp.rules": (
        None,
        (
            "11:8: error: rule to: invalid IP address `192.168.100./24` [bad-value]",
            "26:12: error: rule to: invalid IP address `192.168.200./24` [bad-value]",
        ),
    ),
    "keepalived.conf.vrrp.scripts": (None, OK),
    "keepalived.conf.vrrp.static_ipaddress": (None, OK),
    "keepalived.conf.vrrp.sync": (None, OK),
}


@pytest.fixture
def corpus(shared_dir: Path) -> Path:
    path = shared_dir / "corpus" / "keepalived-samples"
    if not path.is_dir():
        pytest.skip("the keepalived sample corpus is not present")
    return path


def test_the_table_covers_the_whole_corpus(corpus: Path) -> None:
    assert sorted(p.name for p in corpus.iterdir()) == sorted(VERDICTS)
    assert len(VERDICTS) == 25


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_sample_verdict(corpus: Path, name: str) -> None:
    config_id, verdict = VERDICTS[name]
    path = corpus / name
    if verdict == OK:
        loaded = config.load(path, config_id=config_id)
        reparsed = config.parse_text(format_config(loaded.config), config_id=config_id)
        assert reparsed.config == loaded.config
        return
    with pytest.raises(ConfigErrors) as info:
        config.load(path, config_id=config_id)
    lines = tuple(str(e).removeprefix(f"{path}:") for e in info.value.errors)
    assert lines == verdict


def test_conditional_sample_needs_a_config_id(corpus: Path) -> None:
    """Without `-i high|low` neither `script` line is active: the script has no command."""
    path = corpus / "keepalived.conf.conditional_conf"
    with pytest.raises(ConfigErrors) as info:
        config.load(path, config_id="neither")
    assert [str(e).removeprefix(f"{path}:") for e in info.value.errors] == [
        "6:1: error: vrrp_script check_VI_0 has no `script` [missing]"
    ]
    low = config.load(path, config_id="low").config
    assert low.vrrp_instances[0].priority == 85
