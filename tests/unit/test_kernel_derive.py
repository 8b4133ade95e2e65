"""What derivation keeps for the kernel backend: the tunables `ipvs_sysctl` names (in the
order written), the timeouts `lvs_timeouts` gives (0: unchanged), `lvs_flush` and
`lvs_flush_on_stop`, none of them warned about any more."""

from __future__ import annotations

import pytest

from hactl.config import parse_text
from hactl.config.keywords import FlushOnStop
from hactl.derive import Derived, derive
from hactl.ipvs.model import IpvsTimeouts


def _derive(global_defs: str) -> Derived:
    return derive(parse_text(f"global_defs {{\n{global_defs}\n}}\n").config)


def test_nothing_configured() -> None:
    d = _derive("")
    assert d.sysctl_names == ()
    assert d.kernel_timeouts is None and d.timeouts is None
    assert not d.lvs_flush and d.lvs_flush_on_stop is None


def test_sysctl_names_in_the_order_written() -> None:
    d = _derive(" ipvs_sysctl {\n  sync_threshold 4 60\n  conntrack 1\n  amemthresh 2048\n }")
    assert d.sysctl_names == ("sync_threshold", "conntrack", "amemthresh")
    assert (d.sysctl.sync_threshold, d.sysctl.sync_period, d.sysctl.conntrack) == (4, 60, 1)


def test_timeouts_not_given_are_left_to_the_kernel() -> None:
    d = _derive(" lvs_timeouts tcp 7200 udp 50")
    assert d.kernel_timeouts == IpvsTimeouts(tcp=7200, tcpfin=0, udp=50)
    # the embedded engine starts from the kernel's defaults instead
    assert d.timeouts == IpvsTimeouts(tcp=7200, tcpfin=120, udp=50)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" lvs_flush_on_stop", FlushOnStop.ALL),
        (" lvs_flush_on_stop VS", FlushOnStop.VS),
        (" lvs_flush", None),
    ],
)
def test_flushes_are_carried_not_warned(text: str, expected: FlushOnStop | None) -> None:
    d = _derive(text)
    assert d.lvs_flush_on_stop is expected
    assert d.lvs_flush is (text == " lvs_flush")
    assert d.warnings == ()
