"""Hostile input on the wire (issue 9): a stranger in the client namespace forges VRRP adverts
and connection-sync datagrams while the director pair serves continuous client load.

Every forgery is well-formed except for the one check it must fail (tests/testbed/hostile.py
names them after spec/vrrp.md §4.2 and spec/ipvs.md §1.9). The directors must ignore them
all: no VRRP transition, the VIP stays where it was, no persistence template moves, no
client request fails, and the API's counters show each forgery dropped for its reason.
A last, correctly authenticated datagram shows that the forgeries would have moved the
clients had they passed the checks (so the test cannot pass by forging badly).
"""

from __future__ import annotations

import time
from ipaddress import IPv4Address
from typing import Any

import pytest

from tests.integration.test_reliability import CLIENT_TIMEOUT, _servers_by_source, _warm
from tests.testbed import record
from tests.testbed.directors import DirectorSpec, HactlDirector
from tests.testbed.fixtures import bed, topology
from tests.testbed.hostile import Forgery, send, sync_forgeries, template, vrrp_forgeries
from tests.testbed.load import ClientLoad, summarize
from tests.testbed.pair import Pair, masters, start_pair, wait_for
from tests.testbed.topology import Testbed

__all__ = ["bed", "topology"]

pytestmark = [pytest.mark.netns, pytest.mark.timeout(150)]

PASSWORD = "s3cret12"
SYNC_KEY = "sync-key-of-the-testbed-0123456789"
VRID = 51
FRESH_CLIENT = IPv4Address("10.200.0.250")


def _dropped(director: HactlDirector) -> dict[str, int]:
    """VRRP adverts dropped by VI_1, by reason."""
    (inst,) = director.api_get("/api/v1/vrrp/instances")["instances"]
    return dict(inst["adverts"]["dropped"])


def _vrrp(director: HactlDirector) -> dict[str, Any]:
    (inst,) = director.api_get("/api/v1/vrrp/instances")["instances"]
    return dict(inst)


def _sync_dropped(director: HactlDirector, peer: str) -> dict[str, int]:
    doc = director.api_get("/api/v1/sync")
    for p in doc.get("peers", []):
        if p["peer"] == peer:
            return dict(p["datagrams_dropped"])
    return {}


def _grew(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}


def _hostile_scenario(bed: Testbed, *, authenticated: bool) -> None:
    spec = {"auth_pass": PASSWORD, "sync_auth_key": SYNC_KEY} if authenticated else {}
    pair: Pair = start_pair(
        bed, DirectorSpec(priority=150, **spec), DirectorSpec(priority=100, **spec)
    )
    load = ClientLoad(bed, duration=60, timeout=CLIENT_TIMEOUT)
    _warm(load, bed)
    served = _servers_by_source(load.records())
    expected = {src: pair.server_address(next(iter(v))) for src, v in served.items()}
    assert wait_for(lambda: pair.d2.templates() == expected, 5, step=0.2) is not None, (
        pair.d2.ipvs("-Lnc"), expected)
    vrrp_before = {d.host.name: _vrrp(d) for d in (pair.d1, pair.d2)}
    dropped_before = {d.host.name: _dropped(d) for d in (pair.d1, pair.d2)}
    stranger = str(bed.client.address)
    sync_before = _sync_dropped(pair.d2, stranger)
    transitions_before = {d.host.name: d.count("vrrp.state_changed") for d in (pair.d1, pair.d2)}
    start = time.monotonic()

    # VRRP: six rounds 0.3 s apart. An obeyed advert acts at once: priority 255 makes the
    # master step down, priority 0 makes the backup take over after its skew time (0.6 s).
    adverts = vrrp_forgeries(IPv4Address(stranger), bed.vip, vrid=VRID,
                             password=PASSWORD.encode() if authenticated else None)
    send(bed, adverts, repeat=6, interval=0.3)
    # Sync: every client's template pointed at another real server.
    servers = [h.address for h in bed.real_servers]
    moves = [template(IPv4Address(src), bed.vip,
                      servers[(servers.index(IPv4Address(rs)) + 1) % len(servers)])
             for src, rs in expected.items()]
    # A template for a client the directors never saw: a backup creates it on a genuine
    # datagram (an existing template keeps its real server, as in the kernel, §1.9).
    fresh = template(FRESH_CLIENT, bed.vip, servers[0])
    moves.append(fresh)
    datagrams = sync_forgeries(moves, syncid=42,
                               auth_key=SYNC_KEY.encode() if authenticated else None)
    send(bed, datagrams, repeat=3, interval=0.3)
    time.sleep(1.0)
    attack = time.monotonic() - start

    # Nothing moved.
    transitions = {d.host.name: d.count("vrrp.state_changed") - transitions_before[d.host.name]
                   for d in (pair.d1, pair.d2)}
    vrrp_after = {d.host.name: _vrrp(d) for d in (pair.d1, pair.d2)}
    held = masters(pair)
    templates_after = {"d1": pair.d1.templates(), "d2": pair.d2.templates()}
    # Every forgery with a reason was dropped and counted, by both directors for VRRP.
    counted = {d.host.name: _grew(dropped_before[d.host.name], _dropped(d))
               for d in (pair.d1, pair.d2)}
    sync_counted = _grew(sync_before, _sync_dropped(pair.d2, stranger))
    want_vrrp = {f.reason for f in adverts if f.reason is not None}
    want_sync = {f.reason for f in datagrams if f.reason is not None}
    records = load.stop()
    summary = summarize(records)
    missing = {name: sorted(want_vrrp - set(c)) for name, c in counted.items()
               if want_vrrp - set(c)}
    passed = (transitions == {"d1": 0, "d2": 0} and held == ["d1"]
              and templates_after["d2"] == expected and summary.failed == 0
              and not missing and want_sync <= set(sync_counted))
    record("hostile_" + ("auth" if authenticated else "plain"), summary,
           bound="no_transition_no_move_no_failure", passed=passed,
           detail=f"{len(adverts)} advert and {len(datagrams)} sync forgeries x rounds over "
           f"{attack:.1f}s; dropped d1 {sum(counted['d1'].values())}, d2 "
           f"{sum(counted['d2'].values())} adverts, {sum(sync_counted.values())} sync")
    assert transitions == {"d1": 0, "d2": 0}, transitions
    assert held == ["d1"], held
    for name in ("d1", "d2"):
        assert vrrp_after[name]["state"] == vrrp_before[name]["state"], vrrp_after[name]
    assert templates_after["d2"] == expected, (templates_after, expected)
    assert str(FRESH_CLIENT) not in templates_after["d1"], templates_after
    assert summary.failed == 0, summary.failures[:5]
    assert not missing, ("forgeries not counted as dropped", missing, counted)
    assert want_sync <= set(sync_counted), (want_sync, sync_counted)
    # The forged sync entries would move clients if they passed the checks (a control for
    # the forgery itself, sent last: it does change the backup's table).
    from hactl.sync.wire import encode_message, sign

    genuine = encode_message(42, moves)
    if authenticated:
        genuine = sign(genuine, SYNC_KEY.encode())
    send(bed, [Forgery("control", "sync", genuine, None)])
    def created() -> bool:
        return pair.d2.templates().get(str(FRESH_CLIENT)) == str(fresh.daddr)

    assert wait_for(created, 5, step=0.2) is not None, pair.d2.templates()
    print(f"dropped adverts by reason: {counted}; sync datagrams: {sync_counted}")


def test_forged_adverts_and_sync_with_authentication_are_dropped(bed: Testbed) -> None:
    """auth_type PASS and sync_auth_key: wrong TTL, checksum, version, interval, VIPs, VRID,
    no or wrong password (priority 255 and 0), unsigned and wrongly signed sync datagrams,
    and a wrong syncid."""
    _hostile_scenario(bed, authenticated=True)


@pytest.mark.soak
def test_forged_adverts_and_sync_without_authentication_are_dropped(bed: Testbed) -> None:
    """No authentication configured: the TTL, checksum and content checks alone keep a
    stranger out of VRRP; the syncid and size checks keep its sync datagrams out."""
    _hostile_scenario(bed, authenticated=False)
