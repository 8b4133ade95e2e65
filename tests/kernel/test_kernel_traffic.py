"""The kernel backend with real traffic: counters, connections, the kernel's sync daemons (both
directions on the wire) and the embedded engine's scheduling compared with the kernel's.

Topology, built once per module inside the VM (the guest's root namespace is the director):

    ns kc (client)  10.30.0.2 fd30::2 --veth-- 10.30.0.1 fd30::1  (director, VIPs on lo,
        + 10.30.0.100-107 (sources)                                  forwarding on)
    ns kr (servers) 10.31.0.2 fd31::2 --veth-- 10.31.0.1 fd31::1
        + 10.31.0.3, 10.31.0.4
    ns ks (sync)    10.33.0.2         --veth-- 10.33.0.1           (sync interface)

Clients are bash's /dev/udp redirections run in the client namespace (one socket, and so one
connection, per redirection), or sockets the test opens in that namespace when the source
address matters; the real servers hold listening sockets (so no ICMP error disturbs the
clients) but need not answer for the director to schedule, count and sync. Counters are
folded in by the kernel's estimator about every 2 s: tests poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address
from typing import Any, TypeVar

import pytest
from pyroute2 import netns as pynetns

from hactl.errors import KernelError, LinkNotFound
from hactl.ipvs import ipvsadm as view
from hactl.ipvs.ipvsadm import SyncDaemonStatus
from hactl.ipvs.model import (
    AF_INET,
    AF_INET6,
    IP_VS_CONN_F_INACTIVE,
    IP_VS_CONN_F_TEMPLATE,
    ConnStatus,
    Destination,
    FwdMethod,
    IpProto,
    IpvsTable,
    ServiceKey,
    ServiceStatus,
    SyncConn,
    VirtualService,
)
from hactl.ipvs.plan import DelDest, EditDest, EditService, plan
from tests.kernel.conftest import IN_VM, ipvsadm, sh, sh_input

pytestmark = [pytest.mark.kernel_ipvs, pytest.mark.asyncio]

VIP = "10.32.0.1"
VIP6 = "fd32::1"
RS = "10.31.0.2"
RS6 = "fd31::2"
FWMARK = 5
FWMARK_PORT = 7000  # client traffic to VIP:7000 is marked and scheduled by the fwmark service
# Client sources for the differential runs, and two more real-server addresses.
CLIENTS = [f"10.30.0.{100 + i}" for i in range(8)]
SERVERS = [RS, "10.31.0.3", "10.31.0.4"]
EXTRA_ADDRESSES = {
    "kc": "".join(f"addr add {a}/24 dev kc0\n" for a in CLIENTS),
    "kr": "".join(f"addr add {a}/24 dev kr0\n" for a in SERVERS[1:]),
}
SERVER_PORTS = (2000, 53, 54, 55, 57, 63, 66, 1054, FWMARK_PORT)

T = TypeVar("T")


def ns(name: str, *cmd: str) -> str:
    return sh("ip", "netns", "exec", name, *cmd)


@pytest.fixture(scope="module")
def topology() -> Iterator[None]:
    if not IN_VM:
        pytest.skip("runs inside the kernel VM only")
    # One `ip -batch` per namespace: every process start is slow under emulation.
    root = f"""link add kc1 type veth peer name kc0 netns kc
link add kr1 type veth peer name kr0 netns kr
link add ks1 type veth peer name ks0 netns ks
addr add 10.30.0.1/24 dev kc1
addr add fd30::1/64 dev kc1 nodad
addr add 10.31.0.1/24 dev kr1
addr add fd31::1/64 dev kr1 nodad
addr add 10.33.0.1/24 dev ks1
addr add {VIP}/32 dev lo
addr add {VIP6}/128 dev lo nodad
link set kc1 up
link set kr1 up
link set ks1 up
"""
    spaces = {
        "kc": (
            "10.30.0.2/24",
            "fd30::2/64",
            "route add default via 10.30.0.1\nroute add default via fd30::1\n",
        ),
        "kr": (
            f"{RS}/24",
            f"{RS6}/64",
            "route add default via 10.31.0.1\nroute add default via fd31::1\n",
        ),
        "ks": ("10.33.0.2/24", None, "route add 224.0.0.0/4 dev ks0\n"),
    }
    servers: list[socket.socket] = []
    try:
        for name in spaces:
            sh("ip", "netns", "add", name)
        sh_input(root, "ip", "-batch", "-")
        for name, (v4, v6, routes) in spaces.items():
            batch = f"link set lo up\naddr add {v4} dev {name}0\n"
            batch += f"addr add {v6} dev {name}0 nodad\n" if v6 else ""
            batch += f"link set {name}0 up\n" + routes + EXTRA_ADDRESSES.get(name, "")
            sh_input(batch, "ip", "-n", name, "-batch", "-")
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        # Real servers that take every datagram: without a listener their ICMP
        # port-unreachable makes the client's next write on its connected socket fail.
        pynetns.pushns("kr")
        try:
            for port in SERVER_PORTS:
                server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                servers.append(server)
                server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                server.bind(("::", port))
        finally:
            pynetns.popns()
        yield
    finally:
        for server in servers:
            server.close()
        for name in ("kc", "kr", "ks"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        for addr in (f"{VIP}/32", f"{VIP6}/128"):
            subprocess.run(["ip", "addr", "del", addr, "dev", "lo"], capture_output=True)


def send_udp(dst: str, port: int, *, conns: int, packets: int = 1) -> None:
    """`conns` client connections from the client namespace, `packets` datagrams each."""
    one = "; ".join(f"echo p{i} >&3" for i in range(packets))
    loop = f"for i in $(seq {conns}); do exec 3>/dev/udp/{dst}/{port}; {one}; exec 3>&-; done"
    ns("kc", "bash", "-c", loop)


async def poll(read: Callable[[], Awaitable[T]], ok: Callable[[T], bool], *, within: float) -> T:
    """Read until `ok` holds or `within` seconds pass; returns the last reading."""
    deadline = time.monotonic() + within
    value = await read()
    while not ok(value) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        value = await read()
    return value


def by_key(statuses: tuple[ServiceStatus, ...]) -> dict[ServiceKey, ServiceStatus]:
    return {st.service.key: st for st in statuses}


def udp(addr: str, port: int) -> ServiceKey:
    a = IPv6Address(addr) if ":" in addr else IPv4Address(addr)
    return ServiceKey.for_address(IpProto.UDP, a, port)


def masq(addr: str, port: int, **kw: Any) -> Destination:
    a = IPv6Address(addr) if ":" in addr else IPv4Address(addr)
    return Destination(addr=a, port=port, fwd=FwdMethod.MASQ, **kw)


A, B, C = udp(VIP, 53), udp(VIP, 54), udp(VIP, 55)
RELOAD_BEFORE = IpvsTable(
    (
        VirtualService(key=A, scheduler="rr", destinations=(masq(RS, 53),)),
        VirtualService(
            key=B, scheduler="wrr", destinations=(masq(RS, 54), masq(RS, 1054, weight=2))
        ),
        VirtualService(key=C, scheduler="wlc", destinations=(masq(RS, 55),)),
    )
)
RELOAD_AFTER = IpvsTable(
    (
        RELOAD_BEFORE.services[0],
        VirtualService(
            key=B, scheduler="wrr", destinations=(masq(RS, 54), masq(RS, 1054, weight=0))
        ),
        VirtualService(key=C, scheduler="lc", persistence_timeout=60, destinations=(masq(RS, 55),)),
    )
)


async def test_reload_diff_applies_only_what_changed(kipvs: Any, topology: None) -> None:
    ops = plan(RELOAD_BEFORE, await kipvs.dump())
    assert len(ops) == 3 + 4  # three services, four destinations
    await kipvs.apply(ops)
    send_udp(VIP, 53, conns=3)
    send_udp(VIP, 54, conns=2)

    def counted(services: tuple[ServiceStatus, ...]) -> bool:
        table = by_key(services)
        # One datagram per connection: every counter of both services has been folded in.
        return (table[A].stats.conns, table[A].stats.inpkts) == (3, 3) and (
            table[B].stats.conns,
            table[B].stats.inpkts,
        ) == (2, 2)

    before = by_key(await poll(kipvs.services, counted, within=15))
    assert before[A].stats.conns == 3 and before[B].stats.conns == 2

    ops = plan(RELOAD_AFTER, await kipvs.dump())
    assert ops == (
        EditDest(B, masq(RS, 1054, weight=0)),
        EditService(VirtualService(key=C, scheduler="lc", persistence_timeout=60)),
    )
    await kipvs.apply(ops)

    after = by_key(await kipvs.services())
    # Untouched, and edited in place: the counters are kept (a delete and re-add zeroes them).
    assert after[A].stats == before[A].stats
    assert after[A].dests[0].stats == before[A].dests[0].stats
    assert after[B].stats == before[B].stats
    assert after[C].service.scheduler == "lc"
    assert plan(RELOAD_AFTER, await kipvs.dump()) == ()
    # The kernel's --stats listing equals hactl's rendering of the same snapshot.
    assert ipvsadm("-Ln", "--stats", "--exact") == view.list_all(
        await kipvs.services(),
        fmt=view.ListFormat.STATS,
        exact=True,
        conn_table_size=await kipvs.conn_tab_size(),
    )


def _strip_expire(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        parts = line.split(None, 2)
        out.append(line if len(parts) < 3 or ":" not in parts[1] else f"{parts[0]} {parts[2]}")
    return out


@contextlib.contextmanager
def fwmark_rule() -> Iterator[None]:
    rules = (
        "add table ip hactl_test\n"
        "add chain ip hactl_test pre { type filter hook prerouting priority mangle; }\n"
        f"add rule ip hactl_test pre ip daddr {VIP} udp dport {FWMARK_PORT}"
        f" meta mark set {FWMARK}\n"
    )
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["nft", "delete", "table", "ip", "hactl_test"], capture_output=True)


async def test_connections_equal_ipvsadm_lnc(kipvs: Any, topology: None) -> None:
    fwmark = shutil.which("nft") is not None
    services = [
        VirtualService(key=udp(VIP, 63), scheduler="rr", destinations=(masq(RS, 63),)),
        VirtualService(
            key=udp(VIP, 66),
            scheduler="wlc",
            persistence_timeout=120,
            netmask=24,
            destinations=(masq(RS, 66),),
        ),
        VirtualService(
            key=udp(VIP6, 63),
            scheduler="sh",
            persistence_timeout=90,
            netmask=64,
            destinations=(masq(RS6, 63),),
        ),
    ]
    if fwmark:
        services.append(
            VirtualService(
                key=ServiceKey.for_fwmark(FWMARK),
                scheduler="rr",
                persistence_timeout=100,
                destinations=(masq(RS, FWMARK_PORT),),
            )
        )
    await kipvs.apply(plan(IpvsTable(tuple(services)), await kipvs.dump()))
    send_udp(VIP, 63, conns=2)
    send_udp(VIP, 66, conns=2)
    send_udp(VIP6, 63, conns=2)
    with fwmark_rule() if fwmark else contextlib.nullcontext():
        if fwmark:
            send_udp(VIP, FWMARK_PORT, conns=1)
        conns = await kipvs.connections()
        listed = ipvsadm("-Lnc")
    # (Connections of earlier tests stay in the table until they expire: count this test's.)
    mine = [c for c in conns if c.vport in (63, 66, FWMARK_PORT) or c.fwmark == FWMARK]
    # 2 + 2 + 2 connections and the templates of the two persistent services; with the fwmark
    # service, one connection and its template (protocol IP, the mark as virtual address).
    assert len(mine) == 6 + 2 + (2 if fwmark else 0)
    assert {c.state for c in mine} >= {"UDP", "NONE"}
    assert sum(c.caddr.version == 6 for c in mine) == 3
    if fwmark:
        assert [c.vaddr for c in mine if c.protocol == IpProto.IP] == [IPv4Address(FWMARK)]
    # Same rows in the same order; the expiry may tick between the two reads.
    assert _strip_expire(listed) == _strip_expire(view.list_conn(conns))


def _join_group(sock: socket.socket) -> None:
    mreq = struct.pack("=4s4s", socket.inet_aton("224.0.0.81"), socket.inet_aton("10.33.0.2"))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)


async def test_kernel_master_sync_datagrams_decode(kipvs: Any, topology: None) -> None:
    wire = pytest.importorskip("hactl.sync.wire")

    await kipvs.apply(
        plan(
            IpvsTable(
                (
                    VirtualService(
                        key=udp(VIP, 57),
                        scheduler="rr",
                        persistence_timeout=300,
                        destinations=(masq(RS, 57),),
                    ),
                )
            ),
            await kipvs.dump(),
        )
    )
    # The listener lives in the sync namespace: the kernel does not loop its multicast back.
    pynetns.pushns("ks")
    try:
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    finally:
        pynetns.popns()
    with listener:
        listener.bind(("0.0.0.0", 8848))
        _join_group(listener)
        listener.settimeout(0.5)
        master = SyncDaemonStatus(state="master", mcast_ifn="ks1", syncid=7)
        await kipvs.start_sync_daemon(master)
        try:
            await kipvs.start_sync_daemon(master)  # already running as asked: a success
            daemons = await kipvs.sync_daemons()
            assert ipvsadm("-L", "--daemon") == view.list_daemon(daemons)
            assert [
                (d.state, d.mcast_ifn, d.syncid, str(d.group), d.port, d.ttl) for d in daemons
            ] == [("master", "ks1", 7, "224.0.0.81", 8848, 1)]
            with pytest.raises(KernelError) as busy:
                await kipvs.start_sync_daemon(replace(master, syncid=8))
            assert (busy.value.op, busy.value.errno) == ("start_sync_daemon", errno.EEXIST)
            with pytest.raises(LinkNotFound):
                await kipvs.start_sync_daemon(replace(master, state="backup", mcast_ifn="nosuch0"))
            # The default sync_threshold (3 50) syncs a connection on its third packet.
            send_udp(VIP, 57, conns=3, packets=3)
            entries: list[Any] = []
            synced: set[tuple[Any, ...]] = set()
            deadline = time.monotonic() + 20
            while len(synced) < 4 and time.monotonic() < deadline:
                try:
                    data = listener.recv(65535)
                except TimeoutError:
                    continue
                message = wire.decode_message(data, syncid=7)
                assert message.syncid == 7 and message.fatal is None
                entries.extend(message.entries)
                synced = {(e.caddr, e.cport, e.vaddr, e.vport, e.daddr, e.dport) for e in entries}
        finally:
            await kipvs.stop_sync_daemon("master")
    await kipvs.stop_sync_daemon("master")  # none running: a success
    assert ipvsadm("-L", "--daemon") == ""
    conns = [c for c in await kipvs.connections() if c.vport == 57]
    listed = {(c.caddr, c.cport, c.vaddr, c.vport, c.daddr, c.dport) for c in conns}
    # Three connections and their one template (client port 0), as the kernel lists them.
    assert len(listed) == 4
    assert sum(c.cport == 0 for c in conns) == 1
    assert synced == listed
    assert {e.protocol for e in entries} == {int(IpProto.UDP)}


def _conn(
    proto: IpProto,
    caddr: str,
    cport: int,
    vaddr: str,
    vport: int,
    daddr: str,
    dport: int,
    *,
    state: int,
    flags: int,
    timeout: int,
) -> SyncConn:
    def a(text: str) -> IPv4Address | IPv6Address:
        return IPv6Address(text) if ":" in text else IPv4Address(text)

    return SyncConn(
        family=AF_INET6 if ":" in caddr else AF_INET,
        protocol=int(proto),
        flags=flags,
        state=state,
        cport=cport,
        vport=vport,
        dport=dport,
        fwmark=0,
        timeout=timeout,
        caddr=a(caddr),
        vaddr=a(vaddr),
        daddr=a(daddr),
    )


async def test_kernel_backup_takes_hactl_sync_datagrams(topology: None) -> None:
    wire = pytest.importorskip("hactl.sync.wire")
    entries = [
        # TCP ESTABLISHED (state 1), NAT.
        _conn(IpProto.TCP, "10.40.0.5", 40001, VIP, 80, RS, 80, state=1, flags=0, timeout=900),
        # TCP TIME_WAIT (state 5), inactive.
        _conn(
            IpProto.TCP,
            "10.40.0.6",
            40002,
            VIP,
            80,
            RS,
            80,
            state=5,
            flags=IP_VS_CONN_F_INACTIVE,
            timeout=120,
        ),
        # UDP (its single state 0).
        _conn(IpProto.UDP, "10.40.0.5", 40003, VIP, 53, RS, 53, state=0, flags=0, timeout=300),
        # A persistence template: client port 0, state NONE.
        _conn(
            IpProto.UDP,
            "10.40.0.0",
            0,
            VIP,
            53,
            RS,
            53,
            state=0,
            flags=IP_VS_CONN_F_TEMPLATE,
            timeout=360,
        ),
        # IPv6 TCP ESTABLISHED.
        _conn(IpProto.TCP, "fd40::5", 40004, VIP6, 443, RS6, 443, state=1, flags=0, timeout=900),
    ]
    datagram = wire.encode_message(9, entries)
    ns("ks", "ipvsadm", "--start-daemon", "backup", "--mcast-interface", "ks0", "--syncid", "9")
    try:
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sender:
            sender.setsockopt(
                socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("10.33.0.1")
            )
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            listed = ""
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                # The backup thread may still be joining the group: repeat until it lists them.
                sender.sendto(datagram, ("224.0.0.81", 8848))
                await asyncio.sleep(1.0)
                listed = ns("ks", "ipvsadm", "-Lnc")
                if len(listed.splitlines()) >= 2 + len(entries):
                    break
    finally:
        with contextlib.suppress(AssertionError):
            ns("ks", "ipvsadm", "--stop-daemon", "backup")
    # What ipvsadm lists is hactl's rendering of the entries hactl sent (expiry aside).
    states = ["ESTABLISHED", "TIME_WAIT", "UDP", "NONE", "ESTABLISHED"]
    sent = [
        ConnStatus(
            protocol=IpProto(e.protocol),
            caddr=e.caddr,
            cport=e.cport,
            vaddr=e.vaddr,
            vport=e.vport,
            daddr=e.daddr,
            dport=e.dport,
            state=state,
            expires_in=e.timeout,
        )
        for e, state in zip(entries, states, strict=True)
    ]
    assert sorted(_strip_expire(listed)) == sorted(_strip_expire(view.list_conn(sent)))


# ---------------------------------------------------------------------------------------------
# Differential fidelity: the same table and the same client connections through the kernel
# and through the embedded engine choose the same real server, connection by connection.

DIFF_PORT = 2000  # every real server listens on it (SERVER_PORTS)
SH_PORT_FLAG = 0x10  # IP_VS_SVC_F_SCHED2: sh-port / mh-port

DIFF_CASES = [
    # (id, scheduler, sched_flags, weights, persistence, netmask)
    ("rr", "rr", 0, (1, 1, 1), None, 32),
    ("wrr", "wrr", 0, (1, 2, 3), None, 32),
    ("lc", "lc", 0, (1, 1, 1), None, 32),
    ("wlc", "wlc", 0, (1, 2, 3), None, 32),
    ("sh", "sh", 0, (1, 1, 1), None, 32),
    ("sh-port", "sh", SH_PORT_FLAG, (1, 2, 1), None, 32),
    ("dh", "dh", 0, (1, 1, 1), None, 32),
    ("mh", "mh", 0, (1, 2, 3), None, 32),
    ("mh-port", "mh", SH_PORT_FLAG, (1, 1, 1), None, 32),
    ("rr-persistent", "rr", 0, (1, 1, 1), 300.0, 32),
    ("wlc-persistent-mask30", "wlc", 0, (1, 2, 3), 300.0, 30),
]


def open_clients(sources: list[str]) -> list[socket.socket]:
    """UDP sockets in the client namespace, bound to the given source addresses."""
    pynetns.pushns("kc")
    try:
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in sources]
    finally:
        pynetns.popns()
    for sock, source in zip(socks, sources, strict=True):
        sock.bind((source, 0))
    return socks


class Differential:
    """One service in the kernel and in an embedded engine, fed the same connections."""

    def __init__(self, kipvs: Any, svc: VirtualService, port: int) -> None:
        from hactl.ipvs.engine import IpvsEngine

        self.kipvs, self.svc, self.port = kipvs, svc, port
        self.engine = IpvsEngine(rng=random.Random(7))
        self.now = 0.0
        self.sockets: list[socket.socket] = []

    async def setup(self) -> None:
        await self.kipvs.apply(plan(IpvsTable((self.svc,)), await self.kipvs.dump()))
        self.engine.add_service(replace(self.svc, destinations=()), now=self.now)
        for d in self.svc.destinations:
            self.engine.add_dest(self.svc.key, d, now=self.now)

    async def connect(self, count: int) -> tuple[list[str], list[str]]:
        """`count` new connections, sources cycling over CLIENTS: (kernel's, engine's) picks."""
        from hactl.ipvs.engine import PacketInfo

        sources = [CLIENTS[i % len(CLIENTS)] for i in range(count)]
        socks = open_clients(sources)
        self.sockets += socks
        order = []
        for sock, source in zip(socks, sources, strict=True):
            sock.connect((VIP, self.port))
            sock.send(b"x")
            order.append((source, sock.getsockname()[1]))
        engine_picks = []
        for source, sport in order:
            self.now += 0.01
            verdict = self.engine.receive_packet(
                PacketInfo(
                    family=AF_INET,
                    protocol=int(IpProto.UDP),
                    saddr=IPv4Address(source),
                    sport=sport,
                    daddr=IPv4Address(VIP),
                    dport=self.port,
                    length=29,
                ),
                now=self.now,
            )
            # No destination (dropped, or rejected): the kernel lists no connection either.
            engine_picks.append(str(verdict.daddr) if verdict.daddr is not None else "none")
        # Wait for the connections the engine scheduled; those it refused the kernel must not
        # list either, so waiting for them would only run into the time limit: one more
        # reading after a grace period catches a kernel that scheduled one anyway.
        wanted = {key for key, pick in zip(order, engine_picks, strict=True) if pick != "none"}

        async def table() -> dict[tuple[str, int], str]:
            return {
                (str(c.caddr), c.cport): str(c.daddr)
                for c in await self.kipvs.connections()
                if c.vport == self.port and c.cport != 0
            }

        seen = await poll(table, lambda t: wanted <= set(t), within=10)
        if len(wanted) < len(order):
            await asyncio.sleep(1.0)
            seen = await table()
        return [seen.get(key, "none") for key in order], engine_picks

    async def edit_dest(self, d: Destination) -> None:
        await self.kipvs.apply([EditDest(self.svc.key, d)])
        self.engine.edit_dest(self.svc.key, d, now=self.now)

    async def del_dest(self, d: Destination) -> None:
        await self.kipvs.apply([DelDest(self.svc.key, d.addr, d.port)])
        self.engine.del_dest(self.svc.key, d.addr, d.port, now=self.now)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.mark.parametrize(
    ("port", "sched", "flags", "weights", "persistence", "netmask"),
    # A service port per case: earlier cases' connections stay in the kernel's table.
    [(3000 + i, *case[1:]) for i, case in enumerate(DIFF_CASES)],
    ids=[case[0] for case in DIFF_CASES],
)
async def test_kernel_and_engine_choose_the_same_servers(
    kipvs: Any,
    topology: None,
    port: int,
    sched: str,
    flags: int,
    weights: tuple[int, int, int],
    persistence: float | None,
    netmask: int,
) -> None:
    dests = tuple(masq(addr, DIFF_PORT, weight=w) for addr, w in zip(SERVERS, weights, strict=True))
    svc = VirtualService(
        key=udp(VIP, port),
        scheduler=sched,
        sched_flags=flags,
        persistence_timeout=persistence,
        netmask=netmask,
        destinations=dests,
    )
    run = Differential(kipvs, svc, port)
    try:
        await run.setup()
        phases = [("initial", *await run.connect(10))]
        await run.edit_dest(replace(dests[0], weight=0))  # quiesce the first server
        phases.append(("after quiesce", *await run.connect(6)))
        await run.del_dest(dests[1])  # remove the second
        phases.append(("after removal", *await run.connect(6)))
        # The same table text, connection counters included (`hactl ipvs -Ln` renders the
        # engine's snapshot with the same view).
        status = next(st for st in run.engine.services() if st.service.key == svc.key)
        listed = ipvsadm("-Ln", "-u", f"{VIP}:{port}")
    finally:
        run.close()
    # Every server is available at first: every connection was scheduled.
    assert "none" not in phases[0][1]
    for phase, kernel_picks, engine_picks in phases:
        assert kernel_picks == engine_picks, phase
    assert listed == view.list_service(status)
