"""Connection sync between directors in their own network namespaces, joined by veth, on the
real multicast group 224.0.0.81:8848 with TTL 1 (spec/ipvs.md §1.1).

Each director is a separate Python process (`ip netns exec`) running `SyncService`, driven by
one-line commands on its stdin, as VRRP and the engine would drive it: `role master|backup|none`
(VRRP), `submit FIRST COUNT` (the engine's sync decisions, in batches of 100), `stats`
(replies one JSON line), `quit`. The backup applies entries to an in-memory sink.

Checked: every entry arrives once and in order, sender and receiver counters match, a master of
another syncid is ignored, an HMAC backup rejects unauthenticated and wrongly keyed datagrams,
and after the master is killed with SIGKILL the backup holds every entry the master sent, takes
over as master and syncs the restarted old master.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]

REPO = Path(__file__).resolve().parents[2]
KEY_HEX = (b"integration sync key, 32 bytes!!").hex()

DRIVER = r"""
import asyncio, ipaddress, json, sys
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from hactl.clock import LoopClock
from hactl.ipvs.model import AF_INET, SyncConn
from hactl.sync.model import SyncDaemonConfig, SyncRole
from hactl.sync.service import SyncService

args = json.loads(sys.argv[1])

class Sink:
    def __init__(self):
        self.applied = []
    def apply_sync(self, entry, *, now, version):
        self.applied.append(entry)

class NoKernelDaemons:
    def running_daemons(self):
        return []
    def kernel_sync_ports(self):
        return 1

def entry(i):
    return SyncConn(family=AF_INET, protocol=6, flags=0x183 if i % 2 else 0x83, state=1,
                    cport=1024 + i % 60000, vport=80, dport=80, fwmark=0, timeout=900,
                    caddr=ipaddress.IPv4Address(0xC6336400 + i),
                    vaddr=ipaddress.IPv4Address("198.51.100.1"),
                    daddr=ipaddress.IPv4Address("198.51.100.10"))

def report(svc, sink):
    st = svc.stats()
    peers = {p.peer: {"datagrams": p.datagrams, "received": p.entries_received,
                      "applied": p.entries_applied, "dropped": dict(p.entries_dropped),
                      "datagrams_dropped": dict(p.datagrams_dropped)} for p in st.peers}
    s = st.sender
    return {"role": st.role.value, "sent": s.entries_sent, "datagrams": s.datagrams_sent,
            "bytes": s.bytes_sent, "pending": s.entries_pending, "peers": peers,
            "cports": [e.cport for e in sink.applied],
            "flags": sorted({e.flags for e in sink.applied})}

async def main():
    key = bytes.fromhex(args["key"]) if args["key"] else None
    cfg = SyncDaemonConfig(interface=args["iface"], instance="VI_1", syncid=args["syncid"],
                           auth_key=key, group=ipaddress.ip_address(args["group"]))
    sink = Sink()
    svc = SyncService(cfg, sink=sink, clock=LoopClock(), kernel=NoKernelDaemons())
    task = asyncio.create_task(svc.run())
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] == "role":
            role = SyncRole(words[1])
            svc.set_role(role)
            await svc.wait_role(role)
            print(json.dumps({"ok": role.value}), flush=True)
        elif words[0] == "submit":
            first, count = int(words[1]), int(words[2])
            for start in range(first, first + count, 100):
                svc.submit(entry(i) for i in range(start, min(start + 100, first + count)))
                await asyncio.sleep(0)
            print(json.dumps(report(svc, sink)), flush=True)
        elif words[0] == "stats":
            print(json.dumps(report(svc, sink)), flush=True)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass

asyncio.run(main())
"""


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def wait_link_local(ns: str, dev: str, *, timeout: float = 10.0) -> None:
    """Wait until `dev` has a usable IPv6 link-local address.

    The kernel adds it only once both ends of the veth are up; a sync socket opened before
    that has no source for ff02::81 and its datagrams never leave.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["ip", "-n", ns, "-6", "addr", "show", "dev", dev, "scope", "link"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if "inet6 fe80::" in out and "tentative" not in out:
            return
        time.sleep(0.05)
    raise AssertionError(f"{ns}/{dev}: no IPv6 link-local address after {timeout} s")


@pytest.fixture
def two_directors() -> Iterator[tuple[str, str]]:
    """Namespaces A and B joined by veth va <-> vb (192.0.2.1/24, 192.0.2.2/24)."""
    tag = uuid.uuid4().hex[:8]
    ns_a, ns_b = f"hsa-{tag}", f"hsb-{tag}"
    created: list[str] = []
    try:
        for ns in (ns_a, ns_b):
            sh("ip", "netns", "add", ns)
            created.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            # no duplicate address detection: IPv6 link-local sources are usable at once
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
        sh(
            "ip",
            "-n",
            ns_a,
            "link",
            "add",
            "va",
            "type",
            "veth",
            "peer",
            "name",
            "vb",
            "netns",
            ns_b,
        )
        for ns, dev, addr in ((ns_a, "va", "192.0.2.1/24"), (ns_b, "vb", "192.0.2.2/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        for ns, dev in ((ns_a, "va"), (ns_b, "vb")):
            wait_link_local(ns, dev)
        yield ns_a, ns_b
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


class Director:
    """One hactl director process with its sync daemon, driven over stdin/stdout."""

    def __init__(
        self,
        ns: str,
        iface: str,
        *,
        syncid: int,
        key: str | None = None,
        group: str = "224.0.0.81",
    ) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        args = json.dumps({"iface": iface, "syncid": syncid, "key": key, "group": group})
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", DRIVER, args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
            env=env,
        )

    def command(self, line: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, f"director exited (rc {self.proc.poll()}) on {line!r}"
        result: dict[str, Any] = json.loads(reply)
        return result

    def role(self, role: str) -> None:
        assert self.command(f"role {role}") == {"ok": role}

    def wait_for(
        self, cond: Callable[[dict[str, Any]], bool], within: float = 10.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            state = self.command("stats")
            if cond(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached; last state {state}")
            time.sleep(0.05)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.close()

    def close(self) -> None:
        proc = self.proc
        if proc.poll() is None and proc.stdin is not None and not proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write("quit\n")
                proc.stdin.flush()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(BrokenPipeError):
                    pipe.close()


@pytest.fixture
def directors() -> Iterator[list[Director]]:
    started: list[Director] = []
    yield started
    for d in started:
        d.close()


def applied_from(state: dict[str, Any], peer: str) -> int:
    p = state["peers"].get(peer)
    return int(p["applied"]) if p else 0


@pytest.mark.parametrize("group", ["224.0.0.81", "ff02::81"])
def test_backup_follows_master_and_ignores_other_syncids(
    two_directors: tuple[str, str], directors: list[Director], group: str
) -> None:
    ns_a, ns_b = two_directors
    backup = Director(ns_b, "vb", syncid=9, group=group)
    other = Director(ns_a, "va", syncid=8, group=group)
    master = Director(ns_a, "va", syncid=9, group=group)
    directors += [backup, other, master]
    backup.role("backup")
    for d in (other, master):
        d.role("master")
    other.command("submit 5000 50")
    other.role("none")  # leaving master flushes the partial datagram
    sent = master.command("submit 0 1000")
    # 40 IPv4 entries per datagram (1472 bytes over IPv4, 1452 over IPv6)
    assert (sent["sent"], sent["datagrams"], sent["pending"]) == (1000, 25, 0)
    assert sent["bytes"] == 25 * (8 + 40 * 36)
    state = backup.wait_for(lambda s: any(p["applied"] >= 1000 for p in s["peers"].values()))
    ((source, peer),) = state["peers"].items()
    # the master's source: the interface's address (IPv4) or its link-local one (IPv6)
    assert source == "192.0.2.1" if group == "224.0.0.81" else source.startswith("fe80::")
    assert state["cports"] == [1024 + i for i in range(1000)]  # once each, in order
    assert state["flags"] == [0x83 | 0x20, 0x183 | 0x20]  # the kernel's accepted flags
    assert (peer["received"], peer["applied"], peer["dropped"]) == (1000, 1000, {})
    assert peer["datagrams"] == 27 and peer["datagrams_dropped"] == {"syncid_mismatch": 2}


def test_authenticated_backup_rejects_unauthenticated_masters(
    two_directors: tuple[str, str], directors: list[Director]
) -> None:
    ns_a, ns_b = two_directors
    backup = Director(ns_b, "vb", syncid=0, key=KEY_HEX)
    masters = [Director(ns_a, "va", syncid=3, key=k) for k in (None, (b"x" * 32).hex(), KEY_HEX)]
    directors += [backup, *masters]
    backup.role("backup")
    for i, m in enumerate(masters):
        m.role("master")
        m.command(f"submit {100 * i} 10")
        m.role("none")
    state = backup.wait_for(lambda s: applied_from(s, "192.0.2.1") >= 10)
    peer = state["peers"]["192.0.2.1"]
    assert state["cports"] == [1224 + i for i in range(10)]
    assert peer["datagrams_dropped"] == {"auth_missing": 1, "auth_failed": 1}
    assert (peer["datagrams"], peer["received"], peer["applied"]) == (3, 10, 10)


def test_master_killed_backup_takes_over_and_syncs_the_old_master(
    two_directors: tuple[str, str], directors: list[Director]
) -> None:
    ns_a, ns_b = two_directors
    a, b = Director(ns_a, "va", syncid=1), Director(ns_b, "vb", syncid=1)
    directors += [a, b]
    b.role("backup")
    a.role("master")
    sent = a.command("submit 0 2020")  # 50 full datagrams leave, 20 entries wait for the flush
    assert (sent["sent"], sent["pending"]) == (2000, 20)
    b.wait_for(lambda s: applied_from(s, "192.0.2.1") >= 2000)
    a.kill()  # kill -9: the partial datagram dies with the master
    time.sleep(2.5)  # longer than the flush interval: nothing else arrives
    state = b.command("stats")
    assert state["cports"] == [1024 + i for i in range(2000)]
    # VRRP promotes B; A comes back as backup and learns what B syncs from now on.
    b.role("master")
    a2 = Director(ns_a, "va", syncid=1)
    directors.append(a2)
    a2.role("backup")
    b.command("submit 3000 150")
    b.role("none")
    state = a2.wait_for(lambda s: applied_from(s, "192.0.2.2") >= 150)
    assert state["cports"] == [1024 + 3000 + i for i in range(150)]
    assert state["peers"]["192.0.2.2"]["received"] == 150
