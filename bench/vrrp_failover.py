"""Client-visible outage when a VRRP master dies: hactl pair against keepalived pair.

Run as root:  python bench/vrrp_failover.py [--trials N] [--settings v2-1s,v3-0.1s]

For each setting (VRRPv2 advert_int 1 s, VRRPv3 advert_int 0.1 s) and each implementation,
a fresh bridge segment gets nodes a (priority 150), b (priority 100) and a client. Once a
holds the VIP, the client sends an ICMP echo to the VIP every 10 ms. Node a then "dies"
at the same points of its advert cycle for both implementations (paired trials): its link
goes down and its VRRP process is killed without a goodbye (SIGKILL for hactl; SIGSTOP
parent, SIGKILL child, SIGKILL parent for keepalived). The outage is the longest gap
between two answered probes (by send time). Both pairs use the same settings, so the
ratio hactl / keepalived should be <= 1 (the target); the absolute values are
Master_Down_Interval minus the phase of the kill, plus the ARP repair.

Bounded: every wait has a limit; the default run (3 trials) takes under two minutes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hactl.vrrp.router import master_down_interval  # noqa: E402
from tests.integration.netns import (  # noqa: E402
    PRIORITY,
    HactlPeer,
    KeepalivedPeer,
    PeerSpec,
    Segment,
    VrrpPeer,
    ip,
    segment,
    wait_until,
)

VIP = "10.200.0.100"
PROBE_INTERVAL = 0.01

PINGER = r"""
import json, os, select, socket, struct, sys, time
dst, duration, interval = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s & 0xffff) + (s >> 16); s += s >> 16
    return ~s & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.setblocking(False)
ident = os.getpid() & 0xffff
sent, answered = {}, set()
start = time.monotonic(); nxt = start; seq = 0
print("ready", flush=True)
while time.monotonic() - start < duration:
    now = time.monotonic()
    if now >= nxt:
        seq += 1
        hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq & 0xffff) + b"hactl-bench!"  # even length
        try:
            s.sendto(hdr[:2] + struct.pack("!H", csum(hdr)) + hdr[4:], (dst, 0))
        except OSError:
            pass
        sent[seq] = now - start
        nxt += interval
    r, _, _ = select.select([s], [], [], max(0.0, nxt - time.monotonic()))
    while r:
        try:
            data, addr = s.recvfrom(1500)
        except BlockingIOError:
            break
        icmp = data[(data[0] & 15) * 4:]
        if addr[0] == dst and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
            answered.add(struct.unpack("!H", icmp[6:8])[0])
print(json.dumps({"sent": sent, "answered": sorted(answered)}))
"""

OBSERVER = r"""
import socket, struct, sys, time
src = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
ifindex = socket.if_nametoindex("eth0")
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("4s4si", socket.inet_aton("224.0.0.18"), bytes(4), ifindex))
while True:
    data = s.recv(2048)
    if socket.inet_ntoa(data[12:16]) == src and data[20 + 2] != 0:
        print(time.monotonic(), flush=True)
"""

SETTINGS = {
    "v2-1s": {"version": 2, "advert_int": 1.0},
    "v3-0.1s": {"version": 3, "advert_int": 0.1},
}


def outage(report: dict[str, object]) -> float:
    sent = {int(k): float(v) for k, v in report["sent"].items()}  # type: ignore[union-attr]
    answered = sorted(int(s) for s in report["answered"])  # type: ignore[union-attr]
    # nothing answered at all, or the VIP still unreachable when probing ended (the last
    # few probes may still be in flight)
    if not answered or max(sent) - answered[-1] > 5:
        return float("inf")
    worst = 0.0
    for before, after in itertools.pairwise(answered):
        worst = max(worst, sent[after] - sent[before] - PROBE_INTERVAL)
    return worst


def _in_client(seg: Segment, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", seg["client"].netns, *PRIORITY, sys.executable, "-c", *argv],
        stdout=subprocess.PIPE,
        text=True,
    )


def trial(kind: str, setting: dict[str, float], phase: float, workdir: str) -> float:
    """One failover; a dies `phase` (0..1) of an advert interval after one of its adverts.

    The advert times come from an observer on the segment (the client namespace), so the
    kill lands at the same point of the master's cycle for both implementations.
    """
    version, advert_int = int(setting["version"]), setting["advert_int"]
    down_b = master_down_interval(version, 100, round(advert_int * 100))
    with segment(["a", "b", "client"]) as seg:
        cls = HactlPeer if kind == "hactl" else KeepalivedPeer
        a: VrrpPeer = cls(
            seg["a"], PeerSpec(priority=150, version=version, advert_int=advert_int), f"{workdir}/a"
        )
        b: VrrpPeer = cls(
            seg["b"], PeerSpec(priority=100, version=version, advert_int=advert_int), f"{workdir}/b"
        )
        observer: subprocess.Popen[str] | None = None
        try:
            b.start()
            a.start()
            b.wait_ready()
            a.wait_ready()
            if wait_until(lambda: a.holds(VIP) and not b.holds(VIP), limit=15) is None:
                raise RuntimeError(f"{kind}: a never became master")
            observer = _in_client(seg, OBSERVER, str(seg["a"].address.ip))
            adverts: list[float] = []
            assert observer.stdout is not None
            stream = observer.stdout
            reader = threading.Thread(
                target=lambda: adverts.extend(float(line) for line in stream), daemon=True
            )
            reader.start()
            if wait_until(lambda: len(adverts) >= 2, limit=5 * advert_int + 2) is None:
                raise RuntimeError(f"{kind}: no adverts from a seen on the segment")
            # the kill: `phase` of an interval after an advert at least 0.5 s from now
            lead = 0.5 + 0.5  # pinger start-up, then a baseline of answered probes
            cycles = math.ceil((time.monotonic() + lead - adverts[-1]) / advert_int)
            kill_at = adverts[-1] + (cycles + phase) * advert_int
            duration = kill_at - time.monotonic() + down_b + 1.5
            pinger = _in_client(seg, PINGER, VIP, str(duration), str(PROBE_INTERVAL))
            assert pinger.stdout is not None
            pinger.stdout.readline()  # "ready"
            time.sleep(max(0.0, kill_at - time.monotonic()))
            ip("-n", seg["a"].netns, "link", "set", "eth0", "down")
            a.crash()
            out, _ = pinger.communicate(timeout=duration + 10)
            return outage(json.loads(out.strip().splitlines()[-1]))
        finally:
            if observer is not None:
                observer.kill()
                observer.wait()
            a.close()
            b.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, raw sockets)", file=sys.stderr)
        return 2
    # the same kill phases for both implementations: paired trials
    phases = [(i + 0.5) / args.trials for i in range(args.trials)]
    print(f"{'setting':10} {'impl':11} {'outages (s)':40} {'mean':>7}")
    worst_ratio = 0.0
    with TemporaryDirectory(prefix="hactl-bench-") as tmp:
        for name in args.settings.split(","):
            setting = SETTINGS[name]
            means = {}
            for kind in ("hactl", "keepalived"):
                values = [
                    trial(kind, setting, phase, f"{tmp}/{name}-{kind}-{i}")
                    for i, phase in enumerate(phases)
                ]
                means[kind] = statistics.fmean(values)
                shown = " ".join(f"{v:.3f}" for v in values)
                print(f"{name:10} {kind:11} {shown:40} {means[kind]:7.3f}", flush=True)
            ratio = means["hactl"] / means["keepalived"]
            worst_ratio = max(worst_ratio, ratio)
            print(f"{name:10} ratio hactl/keepalived = {ratio:.3f}", flush=True)
    print(f"worst ratio {worst_ratio:.3f} (target <= 1.0 within noise)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
