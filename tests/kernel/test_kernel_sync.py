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

The hactl sides, the client and the server run in this process, each on a thread that entered
its namespace (network namespaces are per thread): a fresh Python per namespace would cost
seconds of imports each under emulation.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from pyroute2 import netns as pynetns

from tests.kernel.conftest import IN_VM, sh, sh_input

pytestmark = [pytest.mark.kernel_ipvs, pytest.mark.slow]

NAMESPACES = ("H", "K", "C", "D", "R", "B")
T = TypeVar("T")
V4 = ipaddress.IPv4Address


class _Sink:
    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []

    def apply_sync(self, e: Any, *, now: float, version: int) -> None:
        self.applied.append(
            {
                "protocol": e.protocol, "flags": e.flags, "state": e.state, "cport": e.cport,
                "vport": e.vport, "dport": e.dport, "timeout": e.timeout,
                "caddr": str(e.caddr), "vaddr": str(e.vaddr), "daddr": str(e.daddr),
                "version": version,
            }
        )  # fmt: skip


async def hactl_master() -> None:
    """In H: an hactl master sends three connections and a template, then leaves MASTER."""
    from hactl.clock import LoopClock
    from hactl.ipvs.model import AF_INET, SyncConn
    from hactl.sync.model import SyncDaemonConfig, SyncRole
    from hactl.sync.service import SyncService

    svc = SyncService(
        SyncDaemonConfig(interface="hk", syncid=5), sink=_Sink(), clock=LoopClock(),
        role=SyncRole.MASTER,
    )  # fmt: skip
    task = asyncio.create_task(svc.run())
    await svc.wait_role(SyncRole.MASTER)
    conns = [
        SyncConn(
            family=AF_INET, protocol=6, flags=0x83, state=1, cport=40000 + i, vport=80,
            dport=80, fwmark=0, timeout=600, caddr=V4(f"198.51.100.{i + 1}"),
            vaddr=V4("192.0.2.100"), daddr=V4("10.0.1.2"),
        )
        for i in range(3)
    ]  # fmt: skip
    tpl = SyncConn(
        family=AF_INET, protocol=6, flags=0x1183, state=0, cport=0, vport=80, dport=80,
        fwmark=0, timeout=360, caddr=V4("198.51.100.0"), vaddr=V4("192.0.2.100"),
        daddr=V4("10.0.1.2"),
    )  # fmt: skip
    svc.submit([*conns, tpl])
    svc.set_role(SyncRole.NONE)
    await svc.wait_role(SyncRole.NONE)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def conflict_probe() -> dict[str, Any]:
    """In K (beside the kernel backup, syncid 5): what the probe finds, and whether an hactl
    backup starts with the same syncid and with another one."""
    from hactl.clock import LoopClock
    from hactl.errors import StateError
    from hactl.sync.kernel import NetlinkSyncProbe
    from hactl.sync.model import SyncDaemonConfig, SyncRole
    from hactl.sync.service import SyncConflictError, SyncService

    out: dict[str, Any] = {"daemons": [d.describe() for d in NetlinkSyncProbe().running_daemons()]}

    async def attempt(syncid: int) -> str:
        svc = SyncService(
            SyncDaemonConfig(interface="kh", syncid=syncid), sink=_Sink(), clock=LoopClock(),
            role=SyncRole.BACKUP,
        )  # fmt: skip
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
    return out


async def hactl_backup(ready: threading.Event, seconds: float) -> dict[str, Any]:
    """In B: an hactl backup of syncid 7 until a template and a connection arrived."""
    from hactl.clock import LoopClock
    from hactl.sync.model import SyncDaemonConfig, SyncRole
    from hactl.sync.service import SyncService

    sink = _Sink()
    svc = SyncService(
        SyncDaemonConfig(interface="bd", syncid=7), sink=sink, clock=LoopClock(),
        role=SyncRole.BACKUP,
    )  # fmt: skip
    task = asyncio.create_task(svc.run())
    await svc.wait_role(SyncRole.BACKUP)
    ready.set()
    # Until a template and a connection arrived (the kernel flushes a partial datagram after
    # 2-3 s; everything is slow under emulation), then a little longer for stragglers.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if {bool(e["flags"] & 0x1000) for e in sink.applied} == {True, False}:
            await asyncio.sleep(1.0)
            break
        await asyncio.sleep(0.1)
    (peer,) = svc.stats().peers or (None,)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return {
        "applied": sink.applied,
        "peer": None
        if peer is None
        else {
            "peer": peer.peer, "syncid": peer.syncid, "version": peer.version,
            "received": peer.entries_received, "dropped": dict(peer.entries_dropped),
            "datagrams_dropped": dict(peer.datagrams_dropped),
        },
    }  # fmt: skip


def echo_server(listening: socket.socket) -> None:
    """In R: echo one connection's bytes."""
    conn, _ = listening.accept()
    with conn:
        while data := conn.recv(100):
            conn.sendall(data)


def client() -> str:
    """In C: one TCP connection through the kernel director, six round trips."""
    with socket.create_connection(("10.1.0.1", 80), timeout=5) as c:
        for i in range(6):
            c.sendall(b"ping %d" % i)
            c.recv(100)
            time.sleep(0.05)
    return "DONE"


class InNetns:
    """`fn()` on a thread that entered network namespace `name` (setns affects the calling
    thread only); `result()` joins it and returns its value or raises its exception."""

    def __init__(self, name: str, fn: Callable[[], T]) -> None:
        self._value: Any = None
        self._error: BaseException | None = None

        def main() -> None:
            try:
                pynetns.setns(name, flags=0)
                self._value = fn()
            except BaseException as exc:  # handed to result()
                self._error = exc

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()

    def result(self, timeout: float = 120) -> Any:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"still running after {timeout}s")
        if self._error is not None:
            raise self._error
        return self._value


def listen_in(name: str, addr: str, port: int) -> socket.socket:
    """A listening TCP socket created in namespace `name`."""

    def make() -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen()
        return s

    sock: socket.socket = InNetns(name, make).result()
    return sock


def ns(name: str, *cmd: str) -> str:
    return sh("ip", "netns", "exec", name, *cmd)


# The namespaces and their veth links, one `ip -batch` each (every process start is slow
# under emulation), in an order where a link's peer namespace exists and its far end is
# configured after it was created:
#   H hk 192.0.2.1  -- kh 192.0.2.2  K        (hactl master -> kernel backup)
#   C cd 10.1.0.2   -- dc 10.1.0.1   D        (client -> kernel director)
#   D dr 10.2.0.1   -- rd 10.2.0.2   R        (director -> real server)
#   D db 192.0.2.11 -- bd 192.0.2.12 B        (kernel master -> hactl backup)
BATCHES = {
    "H": "link add hk type veth peer name kh netns K\naddr add 192.0.2.1/24 dev hk\n"
    "link set hk up\n",
    "K": "addr add 192.0.2.2/24 dev kh\nlink set kh up\n",
    "C": "link add cd type veth peer name dc netns D\naddr add 10.1.0.2/24 dev cd\n"
    "link set cd up\n",
    "D": "addr add 10.1.0.1/24 dev dc\nlink set dc up\n"
    "link add dr type veth peer name rd netns R\naddr add 10.2.0.1/24 dev dr\nlink set dr up\n"
    "link add db type veth peer name bd netns B\naddr add 192.0.2.11/24 dev db\n"
    "link set db up\n",
    "R": "addr add 10.2.0.2/24 dev rd\nlink set rd up\nroute add default via 10.2.0.1\n",
    "B": "addr add 192.0.2.12/24 dev bd\nlink set bd up\n",
}


@pytest.fixture(scope="module")
def vm_result() -> Iterator[dict[str, Any]]:
    """Runs both directions and the conflict probe once; what each side saw, by name."""
    if not IN_VM:
        pytest.skip("runs inside the kernel VM only")
    result: dict[str, Any] = {}
    server: socket.socket | None = None
    subprocess.run(["modprobe", "ip_vs"], capture_output=True, check=False)
    try:
        sh_input("".join(f"netns add {n}\n" for n in NAMESPACES), "ip", "-batch", "-")
        for n in ("H", "K", "C", "D", "R", "B"):
            sh_input("link set lo up\n" + BATCHES[n], "ip", "-n", n, "-batch", "-")
        # The client's default route needs its link up in D first.
        sh("ip", "-n", "C", "route", "add", "default", "via", "10.1.0.1")

        # 1. hactl master (H) -> kernel backup (K)
        ns("K", "ipvsadm", "--start-daemon", "backup", "--mcast-interface", "kh", "--syncid", "5")
        InNetns("H", lambda: asyncio.run(hactl_master())).result(60)
        time.sleep(1)
        result["kernel_backup_daemon"] = ns("K", "ipvsadm", "-L", "--daemon")
        result["kernel_backup_conns"] = ns("K", "cat", "/proc/net/ip_vs_conn_sync")
        result["conflict"] = InNetns("K", conflict_probe).result()

        # 2. kernel master (D) -> hactl backup (B), with real traffic C -> D (VIP) -> R
        ns("D", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        rules = "-A -t 10.1.0.1:80 -s rr -p 300\n-a -t 10.1.0.1:80 -r 10.2.0.2:8080 -m\n"
        sh_input(rules, "ip", "netns", "exec", "D", "ipvsadm", "-R")
        ns("D", "ipvsadm", "--start-daemon", "master", "--mcast-interface", "db", "--syncid", "7")

        ready = threading.Event()
        backup = InNetns("B", lambda: asyncio.run(hactl_backup(ready, 90)))
        assert ready.wait(60), "the hactl backup did not start"
        server = listen_in("R", "10.2.0.2", 8080)
        serving = threading.Thread(target=echo_server, args=(server,), daemon=True)
        serving.start()
        result["client"] = InNetns("C", client).result(30)
        result["kernel_master_conns"] = ns("D", "cat", "/proc/net/ip_vs_conn")
        result["hactl_backup"] = backup.result(120)
        yield result
    finally:
        if server is not None:
            server.close()
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
