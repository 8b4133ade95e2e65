"""Client-visible outage when a VRRP master dies: hactl pair against keepalived pair.

Run as root:  python bench/vrrp_failover.py [--trials N] [--settings v2-1s,v3-0.1s]

For each setting (VRRPv2 advert_int 1 s, VRRPv3 advert_int 0.1 s) and each implementation,
a fresh bridge segment gets nodes a (priority 150), b (priority 100) and a client. Once a
holds the VIP, the client sends an ICMP echo to the VIP every 10 ms. Node a then "dies"
at the same points of its advert cycle for both implementations (paired trials, run
interleaved: hactl then keepalived for one phase, keepalived then hactl for the next, so
a change in the machine's load hits both alike): its link goes down and its VRRP process
is killed without a goodbye (SIGKILL for hactl; SIGSTOP parent, SIGKILL child, SIGKILL
parent for keepalived).

* outage: the longest gap between two answered probes (by send time). Both pairs use the
  same settings, so the ratio hactl / keepalived should be <= 1 (the target); the
  absolute values are Master_Down_Interval minus the phase of the kill, plus the ARP
  repair.
* takeover: from a's last advert on the segment to the first answer after the gap, the
  same figure without the phase of the kill (theory: Master_Down_Interval of b plus the
  ARP repair plus up to one probe interval).
* to GARP: from a's last advert to b's first gratuitous ARP, both seen on the client's
  segment with kernel timestamps: what each implementation itself takes (theory:
  Master_Down_Interval of b), without the probes' 10 ms granularity.

The kill's timing is taken from the kernel's receive timestamps of a's adverts in the
client namespace, and the link goes down through a helper started in a's namespace
beforehand (an ioctl, not a fork and exec at the moment of the kill), so the kill lands at
the intended phase within about a millisecond even on a loaded machine.

Bounded: every wait has a limit; the default run (3 paired trials per setting) takes a
few minutes.
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
from dataclasses import dataclass
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
sent, answered = {}, {}
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
            answered[struct.unpack("!H", icmp[6:8])[0]] = time.monotonic()
print(json.dumps({"start": start, "sent": sent, "answered": answered}))
"""

# On the client's segment (AF_PACKET, every frame): "A <t>" for each advert from a and
# "G <t>" for each gratuitous ARP for the VIP from another MAC than a's, at the kernel's
# receive time (SO_TIMESTAMPNS, wall clock) moved to the monotonic clock, so the
# observer's own scheduling does not matter
OBSERVER = r"""
import socket, struct, sys, time
a_ip, a_mac = socket.inet_aton(sys.argv[1]), bytes.fromhex(sys.argv[2])
vip = socket.inet_aton(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
s.bind(("eth0", 0))
s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
while True:
    frame, anc, _, _ = s.recvmsg(2048, 64)
    mono = time.monotonic()
    for level, kind, value in anc:
        if kind == 35:
            sec, nsec = struct.unpack("@qq", value[:16])
            mono -= max(0.0, time.time() - (sec + nsec * 1e-9))
    ethertype, data = frame[12:14], frame[14:]
    if ethertype == b"\x08\x00" and data[9] == 112 and data[12:16] == a_ip:
        if data[(data[0] & 15) * 4 + 2] != 0:
            print("A", mono, flush=True)
    elif ethertype == b"\x08\x06" and data[14:18] == data[24:28] == vip and frame[6:12] != a_mac:
        print("G", mono, flush=True)
"""

# waits in a's namespace (at the peers' raised priority) for a monotonic time on stdin,
# sleeps until then and takes eth0 down (SIOCSIFFLAGS); prints when it did
LINK_DOWN = r"""
import fcntl, socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
req = struct.pack("16sh", b"eth0", 0)
flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, req)[:18])[1]  # SIOCGIFFLAGS
print("ready", flush=True)
at = float(sys.stdin.readline())
while (left := at - time.monotonic()) > 0:
    time.sleep(left)
fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"eth0", flags & ~1))  # SIOCSIFFLAGS, IFF_UP off
print(time.monotonic(), flush=True)
"""

SETTINGS = {
    "v2-1s": {"version": 2, "advert_int": 1.0},
    "v3-0.1s": {"version": 3, "advert_int": 0.1},
}


def outage(report: dict[str, object]) -> tuple[float, float]:
    """(longest gap between answered probes, send time of the first answer after it)."""
    sent = {int(k): float(v) for k, v in report["sent"].items()}  # type: ignore[union-attr]
    answered = sorted(int(s) for s in report["answered"])  # type: ignore[union-attr]
    # nothing answered at all, or the VIP still unreachable when probing ended (the last
    # few probes may still be in flight)
    if not answered or max(sent.values()) - sent[answered[-1]] > 5:
        return float("inf"), float("inf")
    worst, after_gap = 0.0, sent[answered[0]]
    for before, after in itertools.pairwise(answered):
        gap = sent[after] - sent[before] - PROBE_INTERVAL
        if gap > worst:
            worst, after_gap = gap, sent[after]
    return worst, after_gap


def _in_netns(netns: str, *argv: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, *PRIORITY, sys.executable, "-c", *argv],
        stdin=stdin,
        stdout=subprocess.PIPE,
        text=True,
    )


def _in_client(seg: Segment, *argv: str) -> subprocess.Popen[str]:
    return _in_netns(seg["client"].netns, *argv)


@dataclass(frozen=True)
class Trial:
    outage: float  # the longest gap between answered probes
    takeover: float  # a's last advert -> the first answered probe after the gap
    to_garp: float  # a's last advert -> the new master's first gratuitous ARP
    landed: float  # the phase the kill really had (a fraction of an interval)


def trial(kind: str, setting: dict[str, float], phase: float, workdir: str) -> Trial:
    """One failover; a dies `phase` (0..1) of an advert interval after one of its adverts.

    The advert times come from an observer on the segment (the client namespace), so the
    kill lands at the same point of the master's cycle for both implementations.
    See the module docstring for what is measured.
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
        helpers: list[subprocess.Popen[str]] = []
        readers: list[threading.Thread] = []
        try:
            b.start()
            a.start()
            b.wait_ready()
            a.wait_ready()
            if wait_until(lambda: a.holds(VIP) and not b.holds(VIP), limit=15) is None:
                raise RuntimeError(f"{kind}: a never became master")
            a_node = seg["a"]
            observer = _in_client(
                seg, OBSERVER, str(a_node.address.ip), a_node.mac.replace(":", ""), VIP
            )
            helpers.append(observer)
            link_down = _in_netns(seg["a"].netns, LINK_DOWN, stdin=subprocess.PIPE)
            helpers.append(link_down)
            assert link_down.stdin is not None and link_down.stdout is not None
            link_down.stdout.readline()  # "ready"
            adverts: list[float] = []
            garps: list[float] = []
            assert observer.stdout is not None
            stream = observer.stdout

            def read() -> None:
                for line in stream:
                    what, at = line.split()
                    (adverts if what == "A" else garps).append(float(at))

            readers.append(threading.Thread(target=read, daemon=True))
            readers[-1].start()
            if wait_until(lambda: len(adverts) >= 2, limit=5 * advert_int + 2) is None:
                raise RuntimeError(f"{kind}: no adverts from a seen on the segment")
            lead = 0.5 + 0.5  # pinger start-up, then a baseline of answered probes
            pinger = _in_client(seg, PINGER, VIP, str(lead + down_b + 2.5), str(PROBE_INTERVAL))
            helpers.append(pinger)
            assert pinger.stdout is not None
            pinger.stdout.readline()  # "ready"
            time.sleep(max(0.0, lead - 0.2 - advert_int))
            # the kill: `phase` of an interval after the latest advert seen; a master's
            # advert timer may drift, so aim from an advert at most one interval old
            wait_until(lambda: time.monotonic() - adverts[-1] < 0.8 * advert_int, limit=2)
            last = adverts[-1]
            kill_at = last + math.ceil((time.monotonic() + 0.02 - last) / advert_int) * advert_int
            kill_at += phase * advert_int
            link_down.stdin.write(f"{kill_at}\n")
            link_down.stdin.flush()
            killed_at = float(link_down.stdout.readline())
            a.crash()
            out, _ = pinger.communicate(timeout=lead + down_b + 15)
            report = json.loads(out.strip().splitlines()[-1])
            gap, back_at = outage(report)
            last_advert = max((t for t in adverts if t < report["start"] + back_at), default=0.0)
            garp = min((t for t in garps if t > killed_at), default=math.inf)
            return Trial(
                outage=gap,
                takeover=report["start"] + back_at - last_advert,
                to_garp=garp - last_advert,
                landed=(killed_at - last_advert) / advert_int,
            )
        finally:
            for helper in helpers:
                if helper.poll() is None:
                    helper.kill()
                helper.wait()
            for reader in readers:
                reader.join(timeout=5)  # ends at the pipe's end of file
            for helper in helpers:
                for pipe in (helper.stdin, helper.stdout):
                    if pipe is not None:
                        pipe.close()
            a.close()
            b.close()


def _summary(values: list[float]) -> str:
    return " ".join(f"{v:.4f}" if v < 1 else f"{v:.3f}" for v in values)


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
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    worst_ratio = 0.0
    kinds = ("hactl", "keepalived")
    with TemporaryDirectory(prefix="hactl-bench-") as tmp:
        for name in args.settings.split(","):
            setting = SETTINGS[name]
            trials: dict[str, list[Trial]] = {kind: [] for kind in kinds}
            for i, phase in enumerate(phases):
                for kind in kinds if i % 2 == 0 else kinds[::-1]:
                    trials[kind].append(trial(kind, setting, phase, f"{tmp}/{name}-{kind}-{i}"))
                h, k = trials["hactl"][-1], trials["keepalived"][-1]
                print(
                    f"{name:8} phase {phase:.2f} (landed {h.landed:.2f} / {k.landed:.2f})"
                    f"  outage {h.outage:.3f} / {k.outage:.3f}"
                    f"  takeover {h.takeover:.3f} / {k.takeover:.3f}"
                    f"  to GARP {h.to_garp:.4f} / {k.to_garp:.4f}  (hactl / keepalived)",
                    flush=True,
                )
            means: dict[str, dict[str, float]] = {}
            for kind in kinds:
                means[kind] = {}
                for metric in ("outage", "takeover", "to_garp"):
                    values = [getattr(t, metric) for t in trials[kind]]
                    means[kind][metric] = statistics.fmean(values)
                    print(
                        f"{name:8} {kind:10} {metric:8} {_summary(values)}"
                        f" mean {means[kind][metric]:.4f}"
                    )
            ratios = {m: means["hactl"][m] / means["keepalived"][m] for m in means["hactl"]}
            worst_ratio = max(worst_ratio, ratios["outage"])
            print(
                f"{name:8} ratio hactl/keepalived: outage {ratios['outage']:.3f}, takeover"
                f" {ratios['takeover']:.3f}, to GARP {ratios['to_garp']:.4f}",
                flush=True,
            )
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    print(f"worst outage ratio {worst_ratio:.3f} (target <= 1.0 within noise)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
