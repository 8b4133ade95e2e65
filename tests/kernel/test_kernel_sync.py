"""Wire compatibility with a real Linux IPVS sync daemon, both ways, in the shared kernel VM.

Inside the VM, in network namespaces of their own (the guest's root namespace belongs to the
traffic tests):

* hactl master -> kernel backup: an hactl `SyncService` master in namespace H sends four
  entries (three ESTABLISHED connections with a 600 s timeout and a persistence template)
  over veth to a kernel backup daemon (`ipvsadm --start-daemon backup`) in namespace K, whose
  connection table must then list them with Origin SYNC, their states and their timeouts;
* kernel master -> hactl backup: a client namespace opens a TCP connection through a kernel
  director (NAT, persistent service) to a real server namespace; the kernel master daemon
  syncs the connection and its template to an hactl backup, which must apply both;
* an hactl daemon refuses to start beside the kernel daemon of its syncid and port (found
  through generic netlink, as `ipvsadm -L --daemon` finds it), and starts with another syncid.

The hactl sides run as `python -c` programs under `ip netns exec`, one per namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.kernel.conftest import IN_VM, REPO, sh

pytestmark = [pytest.mark.kernel_ipvs, pytest.mark.slow]

NAMESPACES = ("H", "K", "C", "D", "R", "B")

MASTER = """
import asyncio, ipaddress, sys, structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from hactl.clock import LoopClock
from hactl.ipvs.model import AF_INET, SyncConn
from hactl.sync.model import SyncDaemonConfig, SyncRole
from hactl.sync.service import SyncService
V4 = ipaddress.IPv4Address
class Sink:
    def apply_sync(self, e, *, now, version): pass
async def main():
    svc = SyncService(SyncDaemonConfig(interface="hk", syncid=5), sink=Sink(),
                      clock=LoopClock(), role=SyncRole.MASTER)
    task = asyncio.create_task(svc.run())
    await svc.wait_role(SyncRole.MASTER)
    conns = [SyncConn(family=AF_INET, protocol=6, flags=0x83, state=1, cport=40000 + i,
                      vport=80, dport=80, fwmark=0, timeout=600,
                      caddr=V4(f"198.51.100.{i + 1}"), vaddr=V4("192.0.2.100"),
                      daddr=V4("10.0.1.2")) for i in range(3)]
    tpl = SyncConn(family=AF_INET, protocol=6, flags=0x1183, state=0, cport=0, vport=80,
                   dport=80, fwmark=0, timeout=360, caddr=V4("198.51.100.0"),
                   vaddr=V4("192.0.2.100"), daddr=V4("10.0.1.2"))
    svc.submit([*conns, tpl])
    svc.set_role(SyncRole.NONE)
    await svc.wait_role(SyncRole.NONE)
    task.cancel()
asyncio.run(main())
"""

CONFLICT = """
import asyncio, json, sys, structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from hactl.clock import LoopClock
from hactl.errors import StateError
from hactl.sync.kernel import NetlinkSyncProbe
from hactl.sync.model import SyncDaemonConfig, SyncRole
from hactl.sync.service import SyncConflictError, SyncService
class Sink:
    def apply_sync(self, e, *, now, version): pass
probe = NetlinkSyncProbe()
out = {"daemons": [d.describe() for d in probe.running_daemons()]}
async def attempt(syncid):
    svc = SyncService(SyncDaemonConfig(interface="kh", syncid=syncid), sink=Sink(),
                      clock=LoopClock(), role=SyncRole.BACKUP)
    task = asyncio.create_task(svc.run())
    try:
        await asyncio.wait_for(svc.wait_role(SyncRole.BACKUP), 20)
        return "started"
    except StateError:  # run() ended: its exception says why
        try:
            await task
        except SyncConflictError as exc:
            return "refused: " + str(exc)
        raise
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
out["same_syncid"] = asyncio.run(attempt(5))
out["other_syncid"] = asyncio.run(attempt(6))
print(json.dumps(out))
"""

BACKUP = """
import asyncio, json, sys, structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from hactl.clock import LoopClock
from hactl.sync.model import SyncDaemonConfig, SyncRole
from hactl.sync.service import SyncService
applied = []
class Sink:
    def apply_sync(self, e, *, now, version):
        applied.append({"protocol": e.protocol, "flags": e.flags, "state": e.state,
                        "cport": e.cport, "vport": e.vport, "dport": e.dport,
                        "timeout": e.timeout, "caddr": str(e.caddr), "vaddr": str(e.vaddr),
                        "daddr": str(e.daddr), "version": version})
async def main():
    svc = SyncService(SyncDaemonConfig(interface="bd", syncid=7), sink=Sink(),
                      clock=LoopClock(), role=SyncRole.BACKUP)
    task = asyncio.create_task(svc.run())
    await svc.wait_role(SyncRole.BACKUP)
    print("READY", flush=True)
    # Until a template and a connection arrived (the kernel flushes a partial datagram after
    # 2-3 s; everything is slow under emulation), then a little longer for stragglers.
    deadline = asyncio.get_running_loop().time() + float(sys.argv[1])
    while asyncio.get_running_loop().time() < deadline:
        kinds = {bool(e["flags"] & 0x1000) for e in applied}
        if kinds == {True, False}:
            await asyncio.sleep(1.0)
            break
        await asyncio.sleep(0.1)
    (peer,) = svc.stats().peers or (None,)
    print(json.dumps({"applied": applied, "peer": None if peer is None else {
        "peer": peer.peer, "syncid": peer.syncid, "version": peer.version,
        "received": peer.entries_received, "dropped": dict(peer.entries_dropped),
        "datagrams_dropped": dict(peer.datagrams_dropped)}}), flush=True)
    task.cancel()
asyncio.run(main())
"""

SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.2.0.2", 8080)); s.listen(); print("READY", flush=True)
c, _ = s.accept()
while data := c.recv(100):
    c.sendall(data)
"""

CLIENT = """
import socket, time
c = socket.create_connection(("10.1.0.1", 80), timeout=5)
for i in range(6):
    c.sendall(b"ping %d" % i); c.recv(100); time.sleep(0.05)
c.close()
print("DONE", flush=True)
"""


def ns(name: str, *cmd: str) -> str:
    return sh("ip", "netns", "exec", name, *cmd)


def link(a: str, ia: str, b: str, ib: str, addr_a: str, addr_b: str) -> None:
    sh("ip", "-n", a, "link", "add", ia, "type", "veth", "peer", "name", ib, "netns", b)
    sh("ip", "-n", a, "addr", "add", addr_a, "dev", ia)
    sh("ip", "-n", b, "addr", "add", addr_b, "dev", ib)
    sh("ip", "-n", a, "link", "set", ia, "up")
    sh("ip", "-n", b, "link", "set", ib, "up")


def _python_in(name: str, program: str, *args: str) -> list[str]:
    """The command line running a `python -c` program in namespace `name`."""
    return ["ip", "netns", "exec", name, sys.executable, "-c", program, *args]


@pytest.fixture(scope="module")
def vm_result() -> Iterator[dict[str, Any]]:
    """Runs both directions and the conflict probe once; what each side saw, by name."""
    if not IN_VM:
        pytest.skip("runs inside the kernel VM only")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result: dict[str, Any] = {}
    procs: list[subprocess.Popen[str]] = []
    subprocess.run(["modprobe", "ip_vs"], capture_output=True, check=False)
    try:
        for n in NAMESPACES:
            sh("ip", "netns", "add", n)
            sh("ip", "-n", n, "link", "set", "lo", "up")

        # 1. hactl master (H) -> kernel backup (K)
        link("H", "hk", "K", "kh", "192.0.2.1/24", "192.0.2.2/24")
        ns("K", "ipvsadm", "--start-daemon", "backup", "--mcast-interface", "kh", "--syncid", "5")
        subprocess.run(
            _python_in("H", MASTER), check=True, env=env, capture_output=True, timeout=60
        )
        time.sleep(1)
        result["kernel_backup_daemon"] = ns("K", "ipvsadm", "-L", "--daemon")
        result["kernel_backup_conns"] = ns("K", "cat", "/proc/net/ip_vs_conn_sync")
        probe = subprocess.run(
            _python_in("K", CONFLICT), env=env, capture_output=True, text=True, timeout=120
        )
        result["conflict"] = (
            json.loads(probe.stdout) if probe.returncode == 0 else {"error": probe.stderr[-3000:]}
        )

        # 2. kernel master (D) -> hactl backup (B), with real traffic C -> D (VIP) -> R
        link("C", "cd", "D", "dc", "10.1.0.2/24", "10.1.0.1/24")
        link("D", "dr", "R", "rd", "10.2.0.1/24", "10.2.0.2/24")
        link("D", "db", "B", "bd", "192.0.2.11/24", "192.0.2.12/24")
        sh("ip", "-n", "C", "route", "add", "default", "via", "10.1.0.1")
        sh("ip", "-n", "R", "route", "add", "default", "via", "10.2.0.1")
        ns("D", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        ns("D", "ipvsadm", "-A", "-t", "10.1.0.1:80", "-s", "rr", "-p", "300")
        ns("D", "ipvsadm", "-a", "-t", "10.1.0.1:80", "-r", "10.2.0.2:8080", "-m")
        ns("D", "ipvsadm", "--start-daemon", "master", "--mcast-interface", "db", "--syncid", "7")

        backup = subprocess.Popen(
            _python_in("B", BACKUP, "90"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        procs.append(backup)
        assert backup.stdout is not None
        assert backup.stdout.readline().strip() == "READY"
        server = subprocess.Popen(
            _python_in("R", SERVER),
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(server)
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "READY"
        result["client"] = subprocess.run(
            _python_in("C", CLIENT),
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        result["kernel_master_conns"] = ns("D", "cat", "/proc/net/ip_vs_conn")
        out_b, _ = backup.communicate(timeout=120)
        result["hactl_backup"] = json.loads(out_b.strip().splitlines()[-1])
        yield result
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        for n in NAMESPACES:
            with contextlib.suppress(AssertionError):
                sh("ip", "netns", "del", n)


def test_kernel_backup_accepts_hactl_datagrams(vm_result: dict[str, Any]) -> None:
    assert "backup sync daemon (mcast=kh, syncid=5" in vm_result["kernel_backup_daemon"]
    rows = [line.split() for line in vm_result["kernel_backup_conns"].splitlines()[1:]]
    # Pro FromIP FPrt ToIP TPrt DestIP DPrt State Origin Expires (hex addresses and ports)
    got = sorted((r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]) for r in rows)
    conns = [
        (
            "C63364%02X" % (i + 1),
            "%04X" % (40000 + i),
            "C0000264",
            "0050",
            "0A000102",
            "0050",
            "ESTABLISHED",
            "SYNC",
        )
        for i in range(3)
    ]
    template = ("C6336400", "0000", "C0000264", "0050", "0A000102", "0050", "NONE", "SYNC")
    assert got == sorted([*conns, template])
    expires = {r[2]: int(r[9]) for r in rows}
    # the timeouts sent (600 s, 360 s), not the backup's defaults (900 s, 180 s)
    assert 500 < expires["9C40"] <= 600 and 260 < expires["0000"] <= 360


def test_hactl_backup_applies_a_kernel_masters_entries(vm_result: dict[str, Any]) -> None:
    assert vm_result["client"] == "DONE"
    backup = vm_result["hactl_backup"]
    peer = backup["peer"]
    assert peer is not None, vm_result["kernel_master_conns"]
    assert (peer["syncid"], peer["version"], peer["dropped"], peer["datagrams_dropped"]) == (
        7,
        1,
        {},
        {},
    )
    applied = backup["applied"]
    assert peer["received"] == len(applied) > 0
    templates = [e for e in applied if e["flags"] & 0x1000]
    conns = [e for e in applied if not e["flags"] & 0x1000]
    # the persistence template: client address, VIP port 80, real server 10.2.0.2:8080, 300 s
    assert {
        (t["caddr"], t["cport"], t["vaddr"], t["vport"], t["daddr"], t["dport"], t["timeout"])
        for t in templates
    } == {("10.1.0.2", 0, "10.1.0.1", 80, "10.2.0.2", 8080, 300)}
    # the connection, NAT (forwarding bits 0), as the kernel backup would accept it (+SYNC)
    assert conns and all(
        (c["caddr"], c["vaddr"], c["vport"], c["daddr"], c["dport"])
        == ("10.1.0.2", "10.1.0.1", 80, "10.2.0.2", 8080)
        and c["flags"] & 0x27 == 0x20
        for c in conns
    )
    assert {c["state"] for c in conns} & {1, 4, 5, 6, 7}  # ESTABLISHED or a closing state
    assert all(c["version"] == 1 for c in applied)


def test_hactl_refuses_to_run_beside_a_kernel_daemon(vm_result: dict[str, Any]) -> None:
    conflict = vm_result["conflict"]
    assert "error" not in conflict, conflict.get("error")
    # the hand-written generic netlink query reads what ipvsadm -L --daemon prints
    assert conflict["daemons"] == [
        "backup sync daemon (mcast=kh, syncid=5, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)"
    ]
    assert conflict["same_syncid"].startswith(
        "refused: a kernel sync daemon already uses port 8848 with syncid 5: backup sync "
        "daemon (mcast=kh, syncid=5"
    )
    assert conflict["other_syncid"] == "started"
