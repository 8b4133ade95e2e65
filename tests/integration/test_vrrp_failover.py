"""VRRP failover in network namespaces: hactl with hactl, and hactl with keepalived 2.2.7.

Each case builds a bridge segment with nodes a, b and a client, runs VI_1 (VIP
10.200.0.100) on a (priority 150) and b (priority 100), and checks, with asserted bounds:

1. the right node holds the VIP (a, not b) and the client reaches it (ICMP echo);
2. SIGKILL of a (a crash: no priority 0, VIPs left behind): b holds the VIP within
   3 x advert_int + Skew_Time(100) + 0.3 s of the kill, and the client reaches it (so the
   gratuitous ARPs repaired the client's ARP cache);
3. a restarts, cleans its leftover VIP, and preempts back: a holds it, b does not;
4. SIGTERM of a: a sends its priority-0 advert within 0.3 s of the signal, and b holds
   the VIP within Skew_Time(100) + 0.3 s of that advert (priority-0 handover; spec §9
   times the handover from the advert, and the signal's delivery and the daemon's exit
   path are a separate step, as keepalived's 0.5-5 ms there);
5. neither side logged a receive-check failure against the other (interop on the wire).

The matrix (chosen to cover every pairing, both versions and both casts within the time
budget; v2 runs at advert_int 1 s, v3 at 0.1 s):

    a        b           version  cast       advert_int
    hactl    hactl       2        multicast  1
    hactl    hactl       3        unicast    0.1
    hactl    keepalived  2        multicast  1
    keepalived hactl     2        multicast  1
    keepalived hactl     3        unicast    0.1
    hactl    keepalived  3        multicast  0.1
    hactl    keepalived  2 (PASS) unicast    1
    hactl    keepalived  2 (AH)   multicast  1
    keepalived hactl     2 (AH)   multicast  1

plus VRRPv3 over IPv6 (hactl master, keepalived backup, advert_int 0.1).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hactl.vrrp.router import master_down_interval, skew_time
from tests.integration.netns import (
    PRIORITY,
    HactlPeer,
    KeepalivedPeer,
    PeerSpec,
    Segment,
    VrrpPeer,
    closed_after,
    ping,
    segment,
    wait_until,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

VIP = "10.200.0.100"
STARTUP = 3.0  # generous bound for a process to start (python imports, keepalived fork)
MARGIN = 0.3  # the allowance on top of the protocol times

# keepalived log lines for rejected adverts (spec §4.2)
KEEPALIVED_KO = re.compile(
    r"wrong version|invalid|mismatch|too (long|short)|not present|unexpected ip number|"
    r"received a \d auth|Invalid VRRPv\d checksum|Expected (multi|uni)cast",
    re.IGNORECASE,
)


def _hactl_drops(peer: VrrpPeer) -> list[str]:
    drops = []
    for line in peer.log().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        # a backup that preempts discards lower-priority adverts on purpose
        if event.get("event") == "vrrp.advert_dropped" and event.get("reason") not in (
            "lower_priority",
        ):
            drops.append(line)
    return drops


def _ko_lines(peer: VrrpPeer) -> list[str]:
    if isinstance(peer, KeepalivedPeer):
        return [line for line in peer.log().splitlines() if KEEPALIVED_KO.search(line)]
    return _hactl_drops(peer)


# Prints "<monotonic time> <priority>" for every VRRP advert (IP protocol 112, or 51 with
# keepalived's AH in front) from one source that reaches the namespace it runs in: the
# kernel's receive time (SO_TIMESTAMPNS, wall clock) moved to the monotonic clock, so the
# watcher's own scheduling does not shift it. Run in b's namespace it sees multicast (b's
# daemon joined the group) and unicast adverts alike.
_ADVERT_WATCH = r"""
import select, socket, struct, sys, time
src = socket.inet_aton(sys.argv[1])
socks = []
for proto in (112, 51):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
    s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
    socks.append(s)
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        data, anc, _, _ = s.recvmsg(2048, 64)
        mono = time.monotonic()
        for level, kind, value in anc:
            if kind == 35:
                sec, nsec = struct.unpack("@qq", value[:16])
                mono -= max(0.0, time.time() - (sec + nsec * 1e-9))
        if data[12:16] != src:
            continue
        offset = (data[0] & 15) * 4
        if data[9] == 51:
            offset += (data[offset + 1] + 2) * 4
        if len(data) > offset + 2:
            print(mono, data[offset + 2], flush=True)
"""


@contextlib.contextmanager
def _adverts_seen(netns: str, source: str) -> Iterator[list[tuple[float, int]]]:
    """(monotonic time, priority) of every advert from `source` that reaches `netns`, as
    they arrive, while the block runs."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, *PRIORITY, sys.executable, "-c", _ADVERT_WATCH, source],
        stdout=subprocess.PIPE,
        text=True,
    )
    seen: list[tuple[float, int]] = []
    assert proc.stdout is not None
    stream = proc.stdout

    def read() -> None:
        for line in stream:
            at, priority = line.split()
            seen.append((float(at), int(priority)))

    reader = threading.Thread(target=read, daemon=True)
    try:
        assert stream.readline().strip() == "ready"
        reader.start()
        yield seen
    finally:
        proc.kill()
        proc.wait()
        if reader.is_alive():
            reader.join(timeout=5)  # ends at the pipe's end of file
        stream.close()


@pytest.fixture
def seg() -> Iterator[Segment]:
    with segment(["a", "b", "client"]) as s:
        yield s


def _peer(kind: str, seg: Segment, name: str, spec: PeerSpec, tmp: Path) -> VrrpPeer:
    cls = HactlPeer if kind == "hactl" else KeepalivedPeer
    return cls(seg[name], spec, str(tmp / name))


CASES = [
    ("hactl", "hactl", 2, False, 1.0, None),
    ("hactl", "hactl", 3, True, 0.1, None),
    pytest.param("hactl", "keepalived", 2, False, 1.0, None, marks=pytest.mark.keepalived),
    pytest.param("keepalived", "hactl", 2, False, 1.0, None, marks=pytest.mark.keepalived),
    pytest.param("keepalived", "hactl", 3, True, 0.1, None, marks=pytest.mark.keepalived),
    pytest.param("hactl", "keepalived", 3, False, 0.1, None, marks=pytest.mark.keepalived),
    pytest.param("hactl", "keepalived", 2, True, 1.0, "PASS", marks=pytest.mark.keepalived),
    pytest.param("hactl", "keepalived", 2, False, 1.0, "AH", marks=pytest.mark.keepalived),
    pytest.param("keepalived", "hactl", 2, False, 1.0, "AH", marks=pytest.mark.keepalived),
]


@pytest.mark.parametrize(("kind_a", "kind_b", "version", "unicast", "advert_int", "auth"), CASES)
def test_failover(
    seg: Segment,
    tmp_path: Path,
    kind_a: str,
    kind_b: str,
    version: int,
    unicast: bool,
    advert_int: float,
    auth: str | None,
) -> None:
    ip_a, ip_b = str(seg["a"].address.ip), str(seg["b"].address.ip)
    common: dict[str, object] = {"version": version, "advert_int": advert_int}
    if auth:
        common.update(auth_type=auth, auth_pass="secret12")
    spec_a = PeerSpec(priority=150, unicast_peers=(ip_b,) if unicast else (), **common)  # type: ignore[arg-type]
    spec_b = PeerSpec(priority=100, unicast_peers=(ip_a,) if unicast else (), **common)  # type: ignore[arg-type]
    a = _peer(kind_a, seg, "a", spec_a, tmp_path)
    b = _peer(kind_b, seg, "b", spec_b, tmp_path)
    interval_cs = round(advert_int * 100)
    down_a = master_down_interval(version, 150, interval_cs)
    down_b = master_down_interval(version, 100, interval_cs)
    skew_b = skew_time(version, 100, interval_cs)
    client = seg["client"].netns
    with closed_after(a, b):
        b.start()
        a.start()
        b.wait_ready()
        a.wait_ready()
        # 1. a wins the election (possibly after b briefly held it, when b started faster)
        took = wait_until(lambda: a.holds(VIP) and not b.holds(VIP), limit=STARTUP + 2 * down_a)
        assert took is not None, "a never became the only VIP holder"
        time.sleep(advert_int * 1.5)
        assert a.holds(VIP) and not b.holds(VIP)
        assert ping(client, VIP), "client cannot reach the VIP on a"
        if isinstance(b, KeepalivedPeer):
            # keepalived's own view of the hactl master (spec §11.4 item 1)
            (dump,) = b.json_dump()
            assert dump["data"]["state"] == 1, dump["data"]  # BACKUP
            assert dump["data"]["master_priority"] == 150
            error_counters = (
                "packet_len_err", "advert_interval_err", "ip_ttl_err", "invalid_type_rcvd",
                "addr_list_err", "invalid_authtype", "authtype_mismatch", "auth_failure",
            )  # fmt: skip
            errors = {k: dump["stats"][k] for k in error_counters}
            assert set(errors.values()) == {0}, errors

        # 2. crash of a: b takes over within 3 x advert + skew + 0.3 s of the kill
        a.crash()
        took = wait_until(lambda: b.holds(VIP), limit=down_b + MARGIN + 2)
        assert took is not None, "b never took over after a crashed"
        assert took <= down_b + MARGIN, f"crash takeover took {took:.3f} s > {down_b + MARGIN}"
        print(f"MEASURED crash takeover {kind_a}->{kind_b} v{version}: {took:.3f} s")
        assert a.holds(VIP), "a crashed: its VIP is expected to linger (as keepalived's)"
        assert ping(client, VIP), "client cannot reach the VIP on b after the crash"

        # 3. a restarts: removes the leftover VIP, then preempts back
        a.start()
        a.wait_ready()
        took = wait_until(
            lambda: a.holds(VIP) and not b.holds(VIP), limit=STARTUP + down_a + MARGIN + 2
        )
        assert took is not None, "a did not preempt back"
        assert ping(client, VIP)

        # 4. graceful stop of a: priority 0, b takes over after its skew only, timed from
        # the priority-0 advert as b's namespace received it (spec §9)
        with _adverts_seen(seg["b"].netns, ip_a) as seen:
            time.sleep(advert_int * 1.5)
            signalled = time.monotonic()
            a.terminate()
            took = wait_until(lambda: b.holds(VIP), limit=5, step=0.005)
            held = time.monotonic()
        assert took is not None, "b never took over after a stopped"
        goodbye = [at for at, priority in seen if priority == 0 and at >= signalled - 0.001]
        assert goodbye, f"a sent no priority-0 advert after SIGTERM (seen: {seen[-3:]})"
        sent = goodbye[0] - signalled
        took = held - goodbye[0]
        print(
            f"MEASURED graceful takeover {kind_a}->{kind_b} v{version}: priority 0"
            f" {sent:.3f} s after SIGTERM, b holds the VIP {took:.3f} s after it"
            f" ({len(goodbye)} priority-0 adverts, the last {goodbye[-1] - goodbye[0]:.3f} s"
            " after the first)"
        )
        assert sent <= MARGIN, f"priority-0 advert {sent:.3f} s after SIGTERM"
        assert took <= skew_b + MARGIN, f"graceful takeover took {took:.3f} s"
        a.wait()
        assert not a.holds(VIP), "a stopped gracefully but kept the VIP"
        assert ping(client, VIP)

        # 5. interop: neither side rejected the other's adverts
        b.stop()
        assert not b.holds(VIP)
        assert _ko_lines(a) == [] and _ko_lines(b) == []


@pytest.mark.keepalived
def test_keepalived_learns_nothing_wrong_from_hactl_v3_ipv6(tmp_path: Path) -> None:
    """VRRPv3 over IPv6 (link-local sources, ff02::12): hactl master, keepalived backup."""
    vip6 = ("fe80::1:51/64", "fd00:200::100/64")
    with segment(["a", "b"], ipv6=True) as seg6:
        a = HactlPeer(
            seg6["a"],
            PeerSpec(priority=150, version=3, advert_int=0.1, vips=vip6),
            str(tmp_path / "a"),
        )
        b = KeepalivedPeer(
            seg6["b"],
            PeerSpec(priority=100, version=3, advert_int=0.1, vips=vip6),
            str(tmp_path / "b"),
        )
        with closed_after(a, b):
            b.start()
            a.start()
            b.wait_ready()
            a.wait_ready()
            took = wait_until(
                lambda: a.holds("fd00:200::100") and not b.holds("fd00:200::100"),
                limit=STARTUP + 2,
            )
            assert took is not None
            a.crash()
            took = wait_until(lambda: b.holds("fd00:200::100"), limit=3)
            assert took is not None and took <= master_down_interval(3, 100, 10) + MARGIN
            a.start()
            a.wait_ready()
            assert wait_until(
                lambda: a.holds("fd00:200::100") and not b.holds("fd00:200::100"), limit=2
            )
            time.sleep(0.3)
            a.terminate()
            took = wait_until(lambda: b.holds("fd00:200::100"), limit=3, step=0.005)
            assert took is not None and took <= skew_time(3, 100, 10) + MARGIN
            a.wait()
            b.stop()
            assert _ko_lines(a) == [] and _ko_lines(b) == []


@pytest.mark.keepalived
@pytest.mark.parametrize(("kind_a", "kind_b"), [("keepalived", "hactl"), ("hactl", "keepalived")])
def test_v3_backup_learns_the_masters_interval(tmp_path: Path, kind_a: str, kind_b: str) -> None:
    """Master advertises every 0.5 s, backup is configured with 1 s: the backup learns 50 cs
    and takes over 3 x 0.5 + skew after the crash (spec §6.1, §11.4 item 7), not 3.6 s."""
    with segment(["a", "b"]) as seg2:
        a = _peer(kind_a, seg2, "a", PeerSpec(priority=150, version=3, advert_int=0.5), tmp_path)
        b = _peer(kind_b, seg2, "b", PeerSpec(priority=100, version=3, advert_int=1.0), tmp_path)
        with closed_after(a, b):
            a.start()
            a.wait_ready()
            assert wait_until(lambda: a.holds(VIP), limit=STARTUP) is not None
            b.start()
            b.wait_ready()
            time.sleep(1.2)  # b hears a few 0.5 s adverts
            assert a.holds(VIP) and not b.holds(VIP)
            a.crash()
            took = wait_until(lambda: b.holds(VIP), limit=5)
            learned = master_down_interval(3, 100, 50)
            assert took is not None and took <= learned + MARGIN, took
            b.stop()
            assert _ko_lines(a) == [] and _ko_lines(b) == []
