"""SyncService over real UDP sockets on loopback: roles, flushing, filtering, authentication,
sink failures and the kernel-daemon conflict check (spec/ipvs.md §1.1, §1.8, §1.9)."""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hactl.clock import Clock, LoopClock
from hactl.errors import HactlError, StateError
from hactl.ipvs.model import SyncConn
from hactl.sync.kernel import KernelDaemonState, KernelSyncDaemon, NetlinkSyncProbe
from hactl.sync.model import SyncDaemonConfig, SyncRole
from hactl.sync.service import NOT_MASTER, SyncConflictError, SyncService
from hactl.testing.clock import ManualClock
from tests.unit.sync.sync_support import conn

pytestmark = pytest.mark.timeout(30)

V4 = ipaddress.IPv4Address
KEY = b"shared sync key, 32 bytes long!!"


class Outcome(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"


@dataclass
class MemorySink:
    """The engine's apply_sync port, in memory; `fail` decides per entry what to raise.
    Reports `created` for a connection it has not seen, `updated` otherwise."""

    applied: list[tuple[SyncConn, float]] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    fail: Callable[[SyncConn], BaseException | None] = lambda e: None

    def apply_sync(self, entry: SyncConn, *, now: float, version: int) -> Outcome:
        exc = self.fail(entry)
        if exc is not None:
            raise exc
        seen = any(e.cport == entry.cport for e, _ in self.applied)
        self.applied.append((entry, now))
        self.versions.append(version)
        return Outcome.UPDATED if seen else Outcome.CREATED


class NoKernelDaemons:
    def __init__(self, daemons: list[KernelSyncDaemon] | None = None) -> None:
        self.daemons = daemons or []

    def running_daemons(self) -> list[KernelSyncDaemon]:
        return list(self.daemons)

    def kernel_sync_ports(self) -> int:
        return 1


def free_udp_port(count: int = 1) -> int:
    """A base port with `count` consecutive free UDP ports on this host."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + count > 65000:
            continue
        try:
            socks = []
            for i in range(count):
                t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(t)
                t.bind(("0.0.0.0", base + i))
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
        return base
    raise RuntimeError("no free UDP ports")


def config(port: int, **kw: object) -> SyncDaemonConfig:
    # Multicast on lo needs the loop back on: master and backup share this host.
    args: dict[str, object] = {"interface": "lo", "port": port, "multicast_loop": True}
    args.update(kw)
    return SyncDaemonConfig(**args)  # type: ignore[arg-type]


@asynccontextmanager
async def running(
    cfg: SyncDaemonConfig,
    *,
    role: SyncRole,
    sink: MemorySink | None = None,
    clock: Clock | None = None,
    kernel: NoKernelDaemons | None = None,
) -> AsyncIterator[SyncService]:
    svc = SyncService(cfg, sink=sink or MemorySink(), clock=clock or LoopClock(),
                      kernel=kernel or NoKernelDaemons(), role=role)
    task = asyncio.create_task(svc.run())
    try:
        async with asyncio.timeout(3):
            await svc.wait_role(role)
        yield svc
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


async def wait_until(cond: Callable[[], bool], within: float = 3.0) -> None:
    """Poll a condition that socket callbacks of another service make true."""
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110 - no event exists for "the peer applied N entries"
            await asyncio.sleep(0.002)


@pytest.mark.asyncio
async def test_master_to_backup_on_multicast_lo_with_flush_and_counters() -> None:
    port = free_udp_port()
    clock = ManualClock(100.0)
    sink = MemorySink()
    async with (
        running(config(port, syncid=7), role=SyncRole.BACKUP, sink=sink, clock=clock) as backup,
        running(config(port, syncid=7), role=SyncRole.MASTER, clock=clock) as master,
    ):
        master.submit(conn(i) for i in range(100))
        await wait_until(lambda: len(sink.applied) == 80)  # two full datagrams at once
        await asyncio.sleep(0.05)
        assert len(sink.applied) == 80  # the partial one waits for the flush interval
        stats = master.stats()
        assert stats.sender.entries_pending == 20 and stats.sender.datagrams_sent == 2
        clock.advance(2.0)
        await wait_until(lambda: len(sink.applied) == 100)
        entries = [e for e, _ in sink.applied]
        assert entries == [conn(i, flags=0x83 | 0x20) for i in range(100)]  # SYNC flag added
        clock.advance(1.5)
        (peer,) = backup.stats().peers
        assert peer.peer == "127.0.0.1" and peer.syncid == 7 and peer.version == 1
        assert (peer.datagrams, peer.entries_received, peer.entries_applied) == (3, 100, 100)
        assert peer.lag == 1.5 and peer.last_message_at == 102.0
        assert peer.apply_results == {"created": 100} and set(sink.versions) == {1}
        sent = master.stats().sender
        assert (sent.entries_sent, sent.datagrams_sent, sent.queue_depth) == (100, 3, 0)
        assert sent.bytes_sent == 2 * (8 + 40 * 36) + 8 + 20 * 36
        assert master.stats().role is SyncRole.MASTER and backup.stats().role is SyncRole.BACKUP


@pytest.mark.asyncio
async def test_roles_swap_at_runtime_like_a_vrrp_failover() -> None:
    port = free_udp_port()
    sink_a, sink_b = MemorySink(), MemorySink()
    async with (
        running(config(port), role=SyncRole.MASTER, sink=sink_a) as a,
        running(config(port), role=SyncRole.BACKUP, sink=sink_b) as b,
    ):
        a.submit([conn(1)])
        a.set_role(SyncRole.NONE)  # leaving master flushes the partial datagram
        await wait_until(lambda: len(sink_b.applied) == 1)
        b.set_role(SyncRole.MASTER)
        a.set_role(SyncRole.BACKUP)
        await a.wait_role(SyncRole.BACKUP)
        await b.wait_role(SyncRole.MASTER)
        b.submit([conn(2), conn(3)])
        b.set_role(SyncRole.NONE)
        await wait_until(lambda: len(sink_a.applied) == 2)
        assert [e.cport for e, _ in sink_a.applied] == [1026, 1027]
        await b.wait_role(SyncRole.NONE)
        b.submit([conn(4)])  # not master any more: nothing is queued (§2.4)
        assert b.stats().sender.entries_dropped == {NOT_MASTER: 1}
    # every socket was closed: the group port can be bound exclusively again
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("224.0.0.81", port))


@pytest.mark.asyncio
async def test_backup_ignores_other_syncids() -> None:
    port = free_udp_port()
    sink = MemorySink()
    async with (
        running(config(port, syncid=5), role=SyncRole.BACKUP, sink=sink) as backup,
        running(config(port, syncid=6), role=SyncRole.MASTER) as wrong,
        running(config(port, syncid=5), role=SyncRole.MASTER) as right,
    ):
        wrong.submit([conn(1), conn(2)])
        wrong.set_role(SyncRole.NONE)
        right.submit([conn(3)])
        right.set_role(SyncRole.NONE)
        await wait_until(lambda: sum(p.datagrams for p in backup.stats().peers) == 2)
        assert [e.cport for e, _ in sink.applied] == [1027]
        (peer,) = backup.stats().peers
        assert peer.datagrams_dropped == {"syncid_mismatch": 1}
        assert (peer.entries_received, peer.entries_applied) == (1, 1)


@pytest.mark.asyncio
async def test_authenticated_backup_rejects_plain_traffic() -> None:
    port = free_udp_port()
    sink = MemorySink()
    async with (
        running(config(port, auth_key=KEY), role=SyncRole.BACKUP, sink=sink) as backup,
        running(config(port), role=SyncRole.MASTER) as plain,
        running(config(port, auth_key=b"x" * 32), role=SyncRole.MASTER) as forged,
        running(config(port, auth_key=KEY), role=SyncRole.MASTER) as signed,
    ):
        for i, master in enumerate((plain, forged, signed)):
            master.submit([conn(i)])
            master.set_role(SyncRole.NONE)
        await wait_until(lambda: sum(p.datagrams for p in backup.stats().peers) == 3)
        assert [e.cport for e, _ in sink.applied] == [1026]
        (peer,) = backup.stats().peers
        assert peer.datagrams_dropped == {"auth_missing": 1, "auth_failed": 1}


@pytest.mark.asyncio
async def test_sync_ports_use_consecutive_ports() -> None:
    port = free_udp_port(4)
    sink = MemorySink()
    async with (
        running(config(port, sync_ports=4), role=SyncRole.BACKUP, sink=sink),
        running(config(port, sync_ports=4), role=SyncRole.MASTER) as master,
    ):
        master.submit(conn(i) for i in range(200))
        master.set_role(SyncRole.NONE)
        await wait_until(lambda: len(sink.applied) == 200)
        assert sorted(e.cport for e, _ in sink.applied) == list(range(1024, 1224))


@pytest.mark.asyncio
async def test_sink_errors_are_counted_and_bugs_stop_the_service() -> None:
    port = free_udp_port()

    def fail(entry: SyncConn) -> BaseException | None:
        if entry.cport == 1025:
            return HactlError("no such service")
        if entry.cport == 1027:
            return RuntimeError("engine bug")
        return None

    sink = MemorySink(fail=fail)
    backup = SyncService(config(port), sink=sink, clock=LoopClock(), kernel=NoKernelDaemons(),
                         role=SyncRole.BACKUP)
    task = asyncio.create_task(backup.run())
    await backup.wait_role(SyncRole.BACKUP)
    async with running(config(port), role=SyncRole.MASTER) as master:
        master.submit([conn(0), conn(1), conn(2)])
        master.set_role(SyncRole.NONE)
        await wait_until(lambda: len(sink.applied) == 2)
        (peer,) = backup.stats().peers
        assert (peer.entries_applied, peer.entries_failed) == (2, 1)
        assert not task.done()
        master.set_role(SyncRole.MASTER)
        await master.wait_role(SyncRole.MASTER)
        master.submit([conn(3)])
        master.set_role(SyncRole.NONE)
        with pytest.raises(RuntimeError, match="engine bug"):
            async with asyncio.timeout(3):
                await task
    assert backup.role is SyncRole.NONE


@pytest.mark.asyncio
async def test_refuses_to_start_next_to_a_kernel_daemon() -> None:
    kernel = NoKernelDaemons(
        [KernelSyncDaemon(state=KernelDaemonState.BACKUP, interface="eth0", syncid=7,
                          port=8848, group=V4("224.0.0.81"), maxlen=1472, ttl=1)]
    )
    svc = SyncService(config(8848, syncid=7), sink=MemorySink(), clock=LoopClock(),
                      kernel=kernel, role=SyncRole.BACKUP)
    with pytest.raises(SyncConflictError, match=r"backup sync daemon \(mcast=eth0, syncid=7"):
        await svc.run()
    assert svc.role is SyncRole.NONE and not svc.started.is_set()
    with pytest.raises(StateError, match="stopped before becoming backup"):
        await svc.wait_role(SyncRole.BACKUP)
    other = SyncService(config(free_udp_port(), syncid=8), sink=MemorySink(),
                        clock=LoopClock(), kernel=kernel)
    task = asyncio.create_task(other.run())
    await asyncio.wait_for(other.started.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.asyncio
async def test_backpressure_keeps_the_queue_bounded() -> None:
    port = free_udp_port()
    sink = MemorySink()
    async with (
        running(config(port, qlen_max=4), role=SyncRole.BACKUP, sink=sink),
        running(config(port, qlen_max=4), role=SyncRole.MASTER) as master,
    ):
        # The transport's flow-control callbacks, as asyncio calls them when the socket
        # buffer fills and drains (a full UDP socket buffer cannot be produced on demand).
        for ep in master._send:
            ep.pause_writing()
        master.submit(conn(i) for i in range(400))  # 10 full datagrams, 4 fit the queue
        st = master.stats().sender
        assert (st.queue_depth, st.datagrams_dropped, st.entries_pending) == (4, 6, 0)
        assert st.entries_dropped == {"queue_full": 240}
        for ep in master._send:
            ep.resume_writing()
        await wait_until(lambda: len(sink.applied) == 160)
        assert [e.cport for e, _ in sink.applied] == list(range(1024 + 240, 1024 + 400))


def kernel_capture_payload() -> bytes:
    """The UDP payload of the kernel 6.1 master's datagram (syncid 7, 12 entries)."""
    raw = (Path(__file__).resolve().parents[2] / "unit/sync/data"
           / "kernel-6.1-master-sync-v1.pcap").read_bytes()
    frame = raw[24 + 16 :]
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    udp_len = int.from_bytes(ip[ihl + 4 : ihl + 6], "big")
    return ip[ihl + 8 : ihl + udp_len]


@pytest.mark.asyncio
async def test_backup_applies_a_kernel_masters_datagram() -> None:
    port = free_udp_port()
    sink = MemorySink()
    payload = kernel_capture_payload()
    async with running(config(port, syncid=7), role=SyncRole.BACKUP, sink=sink) as backup:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as kernel_master:
            kernel_master.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            kernel_master.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                                     socket.inet_aton("127.0.0.1"))
            kernel_master.sendto(payload, ("224.0.0.81", port))
        await wait_until(lambda: len(sink.applied) == 12)
        entries = [e for e, _ in sink.applied]
        assert {e.vport for e in entries} == {8080} and {e.dport for e in entries} == {8000}
        # NAT connections: ESTABLISHED then TIME_WAIT (INACTIVE), SYNC added on the backup
        assert [(e.state, e.flags, e.timeout) for e in entries[:2]] == [
            (1, 0x20, 900), (5, 0x120, 120)]
        (peer,) = backup.stats().peers
        assert (peer.syncid, peer.entries_received, peer.entries_applied) == (7, 12, 12)


@pytest.mark.asyncio
async def test_reload_changes_version_in_place_and_rebuilds_for_a_new_port() -> None:
    port, new_port = free_udp_port(), free_udp_port()
    clock = LoopClock()
    sink_old, sink_new = MemorySink(), MemorySink()
    async with (
        running(config(port), role=SyncRole.BACKUP, sink=sink_old) as backup_old,
        running(config(new_port, syncid=4), role=SyncRole.BACKUP, sink=sink_new) as backup_new,
        running(config(port), role=SyncRole.MASTER) as master,
    ):
        master.submit([conn(0)])
        master.apply(config(port, version=0), now=clock.now())  # flushes the v1 datagram
        assert master.role is SyncRole.MASTER  # no socket change for a version switch
        master.submit([conn(1)])
        master.set_role(SyncRole.NONE)
        await master.wait_role(SyncRole.NONE)
        await wait_until(lambda: len(sink_old.applied) == 2)
        (peer,) = backup_old.stats().peers
        assert peer.version == 0 and sink_old.applied[1][0].timeout == 0  # v0: no timeout
        assert sink_old.versions == [1, 0]
        master.set_role(SyncRole.MASTER)
        await master.wait_role(SyncRole.MASTER)
        master.apply(config(new_port, syncid=4), now=clock.now())
        assert master.reload_pending and master.config.port == new_port
        await wait_until(lambda: not master.reload_pending)
        await master.wait_role(SyncRole.MASTER)
        master.submit([conn(2)])
        master.set_role(SyncRole.NONE)
        await wait_until(lambda: len(sink_new.applied) == 1)
        assert sink_new.applied[0][0].cport == 1026 and len(sink_old.applied) == 2
        assert backup_new.stats().peers[0].syncid == 4


@pytest.mark.asyncio
async def test_default_kernel_probe_finds_no_daemon_on_a_kernel_without_ipvs() -> None:
    probe = NetlinkSyncProbe()
    if probe.kernel_has_ipvs() and probe.running_daemons():
        pytest.skip("a kernel sync daemon runs here")
    svc = SyncService(config(free_udp_port()), sink=MemorySink(), clock=LoopClock(),
                      role=SyncRole.BACKUP)  # kernel=None: the netlink probe
    task = asyncio.create_task(svc.run())
    try:
        async with asyncio.timeout(3):
            await svc.wait_role(SyncRole.BACKUP)
        assert svc.started.is_set()
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


@pytest.mark.asyncio
async def test_unicast_point_to_point_sync() -> None:
    port = free_udp_port()
    sink = MemorySink()
    cfg = config(port, group=V4("127.0.0.1"), multicast_loop=False)
    async with (
        running(cfg, role=SyncRole.BACKUP, sink=sink),
        running(cfg, role=SyncRole.MASTER) as master,
    ):
        master.submit(conn(i) for i in range(45))
        master.set_role(SyncRole.NONE)
        await wait_until(lambda: len(sink.applied) == 45)
