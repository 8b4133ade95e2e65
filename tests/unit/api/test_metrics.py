"""Prometheus text exposition: exact lines for known snapshots, escaping, histograms."""

from __future__ import annotations

import ipaddress
import re

import pytest

from hactl.api.metrics import LatencyRecorder, render
from hactl.api.model import (
    CheckSummary,
    DaemonInfo,
    Health,
    Override,
    OverrideKind,
    RealServerStatus,
    VirtualServerStatus,
    VrrpInstanceStatus,
    parse_vs,
)
from hactl.ipvs.model import Destination, DestStatus, ServiceStatus, Stats, VirtualService
from hactl.sync.model import PeerStats, SenderStats, SyncRole, SyncStats

INFO = DaemonInfo(version="1.2.3", config_path="/etc/hactl/hactl.conf", config_loaded_at=100.0,
                  started_at=50.0, backend="kernel", router_id="lb1")
VS = parse_vs("tcp:10.0.0.1:80")
RS_ADDR = ipaddress.ip_address("10.0.1.2")


def _vrrp() -> VrrpInstanceStatus:
    return VrrpInstanceStatus(
        name='VI_"1"', interface="eth0", vrid=51, family=2, state="MASTER", priority=150,
        effective_priority=140, master_address=ipaddress.ip_address("10.0.0.2"),
        last_advert_source=None, transitions=3, split_brain=1, adverts_sent=10,
        adverts_received=4, adverts_dropped={"ttl": 2, "auth_password": 1},
    )


def _vs(recorder: LatencyRecorder) -> VirtualServerStatus:
    rs = RealServerStatus(
        addr=RS_ADDR, port=80, health=Health.UP, configured_weight=3, effective_weight=0,
        in_ipvs=True, activeconns=7, inactconns=2, persistconns=1,
        override=Override(kind=OverrideKind.DRAIN),
        checks=(CheckSummary(kind="TCP_CHECK", ok=True, latency=0.002,
                             results={"success": 9, "failure": 1},
                             histogram=recorder.snapshot()),),
    )
    return VirtualServerStatus(key=VS, scheduler="wlc", quorum_up=True, sorry_active=False,
                               real_servers=(rs,))


def _services() -> list[ServiceStatus]:
    dest = Destination(addr=RS_ADDR, port=80, weight=0)
    return [ServiceStatus(
        service=VirtualService(key=VS, destinations=(dest,)),
        dests=(DestStatus(dest=dest, activeconns=7, inactconns=2,
                          stats=Stats(conns=11, inpkts=20, outpkts=19, inbytes=3000,
                                      outbytes=90000)),),
        stats=Stats(conns=11, inpkts=20, outpkts=19, inbytes=3000, outbytes=90000),
    )]


def _text() -> str:
    recorder = LatencyRecorder(bounds=(0.001, 0.01, 0.1))
    for value in (0.0005, 0.002, 0.002, 0.5):
        recorder.observe(value)
    sync = SyncStats(
        role=SyncRole.MASTER, sender=SenderStats(entries_sent=5, datagrams_sent=2, bytes_sent=300),
        peers=(PeerStats(peer="10.0.0.3", first_message_at=1.0, last_message_at=2.0, lag=0.5,
                         syncid=7, version=1, datagrams=3, datagrams_dropped={},
                         entries_received=12, entries_applied=11, entries_failed=1,
                         entries_dropped={"stale": 2}),),
    )
    return render(info=INFO, vrrp=[_vrrp()], virtual_servers=[_vs(recorder)],
                  services=_services(), sync=sync)


def test_expected_samples() -> None:
    lines = set(_text().splitlines())
    lab = 'instance="VI_\\"1\\"",interface="eth0",vrid="51"'
    rs = 'vs="tcp:10.0.0.1:80",rs="10.0.1.2:80"'
    for line in [
        'hactl_build_info{version="1.2.3",backend="kernel"} 1',
        "hactl_config_load_timestamp_seconds 100.0",
        f'hactl_vrrp_state{{{lab},state="MASTER"}} 1',
        f'hactl_vrrp_state{{{lab},state="BACKUP"}} 0',
        f"hactl_vrrp_priority{{{lab}}} 150",
        f"hactl_vrrp_effective_priority{{{lab}}} 140",
        f"hactl_vrrp_transitions_total{{{lab}}} 3",
        f"hactl_vrrp_split_brain_total{{{lab}}} 1",
        f"hactl_vrrp_adverts_sent_total{{{lab}}} 10",
        f"hactl_vrrp_adverts_received_total{{{lab}}} 4",
        f'hactl_vrrp_adverts_dropped_total{{{lab},reason="ttl"}} 2',
        f"hactl_real_server_up{{{rs}}} 1",
        f"hactl_real_server_weight{{{rs}}} 0",
        f"hactl_real_server_configured_weight{{{rs}}} 3",
        f'hactl_real_server_override{{{rs},override="drain"}} 1',
        f'hactl_real_server_connections{{{rs},kind="active"}} 7',
        f'hactl_check_results_total{{{rs},check="TCP_CHECK",result="failure"}} 1',
        f'hactl_check_latency_seconds_bucket{{{rs},check="TCP_CHECK",le="0.001"}} 1',
        f'hactl_check_latency_seconds_bucket{{{rs},check="TCP_CHECK",le="0.01"}} 3',
        f'hactl_check_latency_seconds_bucket{{{rs},check="TCP_CHECK",le="0.1"}} 3',
        f'hactl_check_latency_seconds_bucket{{{rs},check="TCP_CHECK",le="+Inf"}} 4',
        f'hactl_check_latency_seconds_count{{{rs},check="TCP_CHECK"}} 4',
        'hactl_ipvs_service_connections_total{vs="tcp:10.0.0.1:80"} 11',
        'hactl_ipvs_service_bytes_total{vs="tcp:10.0.0.1:80",direction="out"} 90000',
        f'hactl_ipvs_destination_packets_total{{{rs},direction="in"}} 20',
        'hactl_sync_role{role="master"} 1',
        "hactl_sync_entries_sent_total 5",
        'hactl_sync_entries_dropped_total{peer="10.0.0.3",syncid="7",reason="stale"} 2',
        'hactl_sync_peer_lag_seconds{peer="10.0.0.3",syncid="7"} 0.5',
    ]:
        assert line in lines, line


def test_format_is_well_formed() -> None:
    text = _text()
    assert text.endswith("\n")
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-z_]+="([^"\\]|\\.)*",?)*\})? \S+$')
    seen_types: dict[str, str] = {}
    family = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in seen_types, f"family {name} declared twice"
            seen_types[name] = kind
            family = name
            continue
        assert sample.match(line), line
        assert family is not None and line.startswith(family), line
    assert seen_types["hactl_check_latency_seconds"] == "histogram"
    assert seen_types["hactl_vrrp_transitions_total"] == "counter"


def test_sum_of_histogram() -> None:
    line = next(x for x in _text().splitlines() if x.startswith("hactl_check_latency_seconds_sum"))
    assert float(line.rsplit(" ", 1)[1]) == pytest.approx(0.5045)


def test_recorder_bucket_edges_are_inclusive() -> None:
    recorder = LatencyRecorder(bounds=(0.1, 1.0))
    for value in (0.1, 1.0, 1.5):
        recorder.observe(value)
    snap = recorder.snapshot()
    assert (snap.counts, snap.count) == ((1, 2), 3)  # le="0.1" holds 0.1 itself


def test_recorder_rejects_unsorted_bounds() -> None:
    with pytest.raises(ValueError):
        LatencyRecorder(bounds=(0.1, 0.01))


def test_empty_director_still_renders_info() -> None:
    text = render(info=INFO, vrrp=[], virtual_servers=[], services=[], sync=None)
    assert "hactl_sync_role" not in text
    assert text.startswith("# HELP hactl_build_info ")
