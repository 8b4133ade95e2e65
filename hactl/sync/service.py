"""SyncService: the asyncio shell of connection sync on UDP 8848 (spec/ipvs.md §1.1, §1.8).

It carries `SyncSender` datagrams to the multicast group (master) and feeds received datagrams
to `SyncReceiver`, whose entries it hands to the engine through the `SyncSink` port (backup).
It holds no protocol decisions: packing, flush timing, validation and accounting live in
`hactl.sync.channel`; *when* a connection is synced (§2) and *how* an entry is applied (§1.10)
live in the engine.

Roles follow VRRP as keepalived drives the kernel daemons: `set_role(MASTER)` opens one send
socket per sync port, `set_role(BACKUP)` one receive socket per sync port, `set_role(NONE)`
closes them. Leaving MASTER flushes the partial datagrams first (best effort).

Sockets as the kernel makes them (§1.1, `make_send_sock` / `make_receive_sock`):
* send: bound to the interface's primary IPv4 address (or `source`) with an ephemeral port,
  IP_MULTICAST_IF = interface, IP_MULTICAST_LOOP off, TTL = ttl, fragmentation allowed,
  connected to group:port+i;
* receive: SO_REUSEADDR, bound to group:port+i and to the interface, group joined on it.
A unicast `group` is accepted too (point-to-point sync between two directors). The backup
socket is read with `add_reader`, draining a burst of datagrams per wake-up.

Starting (and taking a role) is refused with `SyncConflictError` when a kernel sync daemon of
this namespace uses an overlapping port with the same syncid (`hactl.sync.kernel.conflicts`).

Logs (structlog, stable names): sync.role_changed, sync.reconfigured, sync.queue_overflow,
sync.apply_failed, sync.datagram_dropped, sync.entries_dropped, sync.send_error,
sync.receive_error, sync.no_source_address.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import ipaddress
import socket
import struct
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Protocol, cast

import structlog

from hactl.clock import Clock
from hactl.errors import HactlError, StateError
from hactl.ipvs.model import AF_INET6, SyncConn
from hactl.sync.channel import SyncReceiver, SyncSender
from hactl.sync.events import ApplySyncEntries, SyncDropped
from hactl.sync.kernel import KernelSyncProbe, NetlinkSyncProbe, conflicts
from hactl.sync.model import SyncDaemonConfig, SyncRole, SyncStats, max_sync_len

__all__ = [
    "NOT_MASTER",
    "SyncConflictError",
    "SyncService",
    "SyncSink",
    "open_receive_socket",
    "open_send_socket",
]

log = structlog.get_logger("hactl.sync")

# Entries submitted while this node is not master: the kernel queues nothing then (§2.4).
NOT_MASTER = "not_master"

# linux/sockios.h, linux/in.h, linux/in6.h values the socket module does not export
_SIOCGIFADDR = 0x8915
_IP_MTU_DISCOVER = 10
_IPV6_MTU_DISCOVER = 23
_IP_PMTUDISC_DONT = 0


class SyncSink(Protocol):
    """The engine's backup-side port (§1.10): create or update one entry.

    `version` is the message's (0 or 1): the kernel masks flags differently for each (§1.9).
    Entries arrive with those accepted flags already applied (the masking is idempotent, so a
    sink may apply it again) and `timeout` 0 when the master did not say (version 0): the
    sink then uses its state's default (§1.10 step 4). A result that is an enum (such as the
    engine's created / updated / ignored_stale) is counted by its value in the peer's
    `apply_results`. Raising a `HactlError` counts the entry as failed; any other exception
    is a bug and stops the service.
    """

    def apply_sync(self, entry: SyncConn, *, now: float, version: int) -> object: ...


class SyncConflictError(HactlError):
    """A kernel sync daemon already uses this port and syncid."""


def _interface_ipv4(interface: str) -> ipaddress.IPv4Address | None:
    """The interface's primary IPv4 address (SIOCGIFADDR), or None if it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        req = struct.pack("256s", interface.encode()[:15])
        try:
            res = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, req)
        except OSError:
            return None
    return ipaddress.IPv4Address(res[20:24])


def _interface_mtu(interface: str) -> int:
    try:
        return int(Path("/sys/class/net", interface, "mtu").read_text())
    except (OSError, ValueError):
        return 1500


def open_send_socket(config: SyncDaemonConfig, port_offset: int) -> socket.socket:
    """The master's socket for sync port `port + port_offset` (§1.1 make_send_sock)."""
    group = config.group
    six = config.family == AF_INET6
    sock = socket.socket(socket.AF_INET6 if six else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        ifindex = socket.if_nametoindex(config.interface)
        if six:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP,
                            int(config.multicast_loop))
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, config.ttl)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, config.ttl)
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _IP_PMTUDISC_DONT)
            if config.source is not None:
                sock.bind((str(config.source), 0, 0, ifindex))
        else:
            source = config.source or _interface_ipv4(config.interface)
            if source is None:
                log.warning("sync.no_source_address", iface=config.interface)
            mreqn = struct.pack("=4s4si", bytes(4), bytes(4), ifindex)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP,
                            int(config.multicast_loop))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, config.ttl)
            if not group.is_multicast:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, config.ttl)
            sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DONT)
            sock.bind((str(source) if source is not None else "0.0.0.0", 0))
        if config.sock_size > 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.sock_size)
        if six:
            # A link-scope group (ff02::...) needs the interface as its scope.
            sock.connect((str(group), config.port + port_offset, 0, ifindex))
        else:
            sock.connect((str(group), config.port + port_offset))
    except BaseException:
        sock.close()
        raise
    return sock


def open_receive_socket(config: SyncDaemonConfig, port_offset: int) -> socket.socket:
    """The backup's socket for sync port `port + port_offset` (§1.1 make_receive_sock)."""
    group = config.group
    six = config.family == AF_INET6
    sock = socket.socket(socket.AF_INET6 if six else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, config.interface.encode())
        if config.sock_size > 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, config.sock_size)
        ifindex = socket.if_nametoindex(config.interface)
        port = config.port + port_offset
        if six:
            sock.bind((str(group), port, 0, ifindex))
            if group.is_multicast:
                mreq = group.packed + struct.pack("=I", ifindex)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        else:
            sock.bind((str(group), port))
            if group.is_multicast:
                mreqn = struct.pack("=4s4si", group.packed, bytes(4), ifindex)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
    except BaseException:
        sock.close()
        raise
    return sock


class _Listener:
    """A backup socket read with `loop.add_reader`: each wake-up drains up to `_BURST`
    datagrams, where a datagram transport reads one per event-loop iteration (the sender's
    burst of full datagrams would otherwise overflow the socket buffer under load)."""

    _BURST = 64

    def __init__(self, service: SyncService, sock: socket.socket) -> None:
        self._service = service
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        recvfrom = self._sock.recvfrom
        on_datagram = self._service._on_datagram
        for _ in range(self._BURST):
            try:
                data, addr = recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors queued on the socket: count, go on
                self._service._on_receive_error(exc)
                return
            on_datagram(data, (str(addr[0]), int(addr[1])))

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()


class _Endpoint(asyncio.DatagramProtocol):
    """A master socket's protocol: send errors and flow control go to the service."""

    def __init__(self, service: SyncService) -> None:
        self._service = service
        self.transport: asyncio.DatagramTransport | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not derive from DatagramTransport;
        # it has the same methods.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def error_received(self, exc: Exception) -> None:
        self._service._on_send_error(exc)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._service._drain_sender()


class SyncService:
    """Runs one sync daemon (keepalived `lvs_sync_daemon`) in the role VRRP gives it.

    Args:
        config: the daemon's configuration.
        sink: the engine's `apply_sync` port (backup side).
        clock: where `now` comes from.
        kernel: finds kernel sync daemons to refuse conflicts (default: netlink query).
        role: the initial role.

    `run()` returns only by cancellation (or raises: a conflict at start, a sink bug).
    """

    def __init__(
        self,
        config: SyncDaemonConfig,
        *,
        sink: SyncSink,
        clock: Clock,
        kernel: KernelSyncProbe | None = None,
        role: SyncRole = SyncRole.NONE,
    ) -> None:
        self._config = config
        self._sink = sink
        self._clock = clock
        self._kernel = kernel if kernel is not None else NetlinkSyncProbe()
        self._desired = role
        self._role = SyncRole.NONE
        self._sender, self._receiver = self._cores(config)
        self._next_config: SyncDaemonConfig | None = None
        self._send: list[_Endpoint] = []
        self._recv: list[_Listener] = []
        self._receive_errors = 0
        self._wakeup = asyncio.Event()
        self._failure: BaseException | None = None
        self._not_master = 0
        self._send_errors = 0
        self._log = log.bind(iface=config.interface, instance=config.instance,
                             syncid=config.syncid)
        self._role_changed = asyncio.Event()
        self._stopped = False
        self.started = asyncio.Event()  # set once the kernel check passed and run() serves

    @staticmethod
    def _cores(config: SyncDaemonConfig) -> tuple[SyncSender, SyncReceiver]:
        sender = SyncSender(
            syncid=config.syncid,
            max_datagram=max_sync_len(config.maxlen, family=config.family, master=True),
            version=config.version,
            ports=config.sync_ports,
            qlen_max=config.qlen_max,
            flush_interval=config.flush_interval,
            auth_key=config.auth_key,
        )
        mtu = _interface_mtu(config.interface)
        receiver = SyncReceiver(
            syncid=config.syncid,
            max_datagram=max_sync_len(config.maxlen, family=config.family, master=False,
                                      mtu=mtu),
            auth_key=config.auth_key,
        )
        return sender, receiver

    # -- commands -------------------------------------------------------------------------------

    @property
    def config(self) -> SyncDaemonConfig:
        """The configuration in force, or the one being applied."""
        return self._next_config or self._config

    @property
    def reload_pending(self) -> bool:
        """True between `apply()` of a new socket configuration and `run()` taking it."""
        return self._next_config is not None

    def apply(self, config: SyncDaemonConfig, *, now: float) -> None:
        """Take a reloaded configuration.

        Only `version` changed: the sender switches format (flushing first, §1.5). Anything
        else: `run()` leaves the current role (flushing), rebuilds the sender and receiver
        (their counters restart) and takes the role again with the new sockets.
        """
        current = self.config
        if config == current:
            return
        if replace(current, version=config.version) == config:
            self._sender.set_version(config.version, now=now)
            self._config = config
            return
        self._next_config = config
        self._wakeup.set()

    @property
    def role(self) -> SyncRole:
        """The role the sockets are currently set up for."""
        return self._role

    async def wait_role(self, role: SyncRole) -> None:
        """Return once the sockets are set up for `role` (after `set_role(role)`).

        Raises:
            StateError: `run()` ended before reaching `role`.
        """
        while self._role is not role:
            if self._stopped:
                raise StateError(f"the sync service stopped before becoming {role.value}")
            changed = self._role_changed
            await changed.wait()

    def set_role(self, role: SyncRole) -> None:
        """Ask for `role`; `run()` opens and closes sockets accordingly, in order of calls."""
        self._desired = role
        self._wakeup.set()

    def submit(self, entries: Iterable[SyncConn]) -> None:
        """Queue connections the engine decided to sync (§2); sent at once when a datagram
        fills, or within the flush interval. Outside the master role nothing is queued."""
        if self._role is not SyncRole.MASTER:
            self._not_master += sum(1 for _ in entries)
            return
        sender = self._sender
        before = sender.next_deadline()
        lost = sender.datagrams_dropped
        sender.add_many(entries, now=self._clock.now())
        self._drain_sender()
        if sender.datagrams_dropped != lost:
            self._log.warning("sync.queue_overflow", dropped=sender.datagrams_dropped - lost,
                              queue_depth=sender.queue_depth)
        if before is None and self._sender.next_deadline() is not None:
            self._wakeup.set()  # a new partial datagram: re-arm the flush timer

    def stats(self) -> SyncStats:
        """A snapshot of every counter (observability, exposed by the control API)."""
        sender = self._sender.stats()
        if self._not_master:
            dropped = dict(sender.entries_dropped)
            dropped[NOT_MASTER] = self._not_master
            sender = replace(sender, entries_dropped=MappingProxyType(dropped))
        return SyncStats(
            role=self._role,
            sender=sender,
            peers=self._receiver.stats(now=self._clock.now()),
            send_errors=self._send_errors,
            receive_errors=self._receive_errors,
        )

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Check for kernel daemons, then follow the requested role until cancelled."""
        try:
            self._check_kernel()
            self.started.set()
            while True:
                if self._failure is not None:
                    raise self._failure
                if self._next_config is not None:
                    await self._reconfigure(self._next_config)
                    continue
                if self._desired is not self._role:
                    await self._switch(self._desired)
                    continue
                now = self._clock.now()
                deadline = self._sender.next_deadline() if self._role is SyncRole.MASTER else None
                if deadline is not None and now >= deadline:
                    self._sender.handle_timer(now=now)
                    self._drain_sender()
                    continue
                self._wakeup.clear()
                await self._wait(deadline)
        finally:
            if self._role is SyncRole.MASTER:
                with contextlib.suppress(Exception):  # best effort: the sockets may be gone
                    self._leave_master()
            self._close(self._send)
            self._close_listeners()
            self._stopped = True
            self._set_current_role(SyncRole.NONE)

    async def _wait(self, deadline: float | None) -> None:
        if deadline is None:
            await self._wakeup.wait()
            return
        waker = asyncio.ensure_future(self._wakeup.wait())
        sleeper = asyncio.ensure_future(self._clock.sleep_until(deadline))
        try:
            await asyncio.wait({waker, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waker.cancel()
            sleeper.cancel()

    def _check_kernel(self) -> None:
        probe = self._kernel
        daemons = probe.running_daemons()
        found = conflicts(self._config, daemons, kernel_sync_ports=probe.kernel_sync_ports())
        if found:
            raise SyncConflictError(
                f"a kernel sync daemon already uses port {self._config.port} with syncid "
                f"{self._config.syncid}: {'; '.join(d.describe() for d in found)}; stop it "
                f"(ipvsadm --stop-daemon) or give hactl another port or syncid"
            )

    async def _reconfigure(self, config: SyncDaemonConfig) -> None:
        role = self._role
        await self._switch(SyncRole.NONE)
        self._config, self._next_config = config, None
        self._sender, self._receiver = self._cores(config)
        self._log = log.bind(iface=config.interface, instance=config.instance,
                             syncid=config.syncid)
        self._log.info("sync.reconfigured")
        if role is not SyncRole.NONE:
            await self._switch(role)

    async def _switch(self, role: SyncRole) -> None:
        old = self._role
        if old is SyncRole.MASTER:
            self._leave_master()
            self._close(self._send)
        elif old is SyncRole.BACKUP:
            self._close_listeners()
        self._role = SyncRole.NONE
        if role is not SyncRole.NONE:
            self._check_kernel()
        loop = asyncio.get_running_loop()
        for i in range(self._config.sync_ports if role is not SyncRole.NONE else 0):
            if role is SyncRole.BACKUP:
                self._recv.append(_Listener(self, open_receive_socket(self._config, i)))
                continue
            sock = open_send_socket(self._config, i)
            try:
                transport, proto = await loop.create_datagram_endpoint(
                    lambda: _Endpoint(self), sock=sock
                )
            except BaseException:
                sock.close()
                raise
            proto.transport = transport
            self._send.append(proto)
        self._set_current_role(role)
        self._log.info("sync.role_changed", old=old.value, new=role.value)

    def _set_current_role(self, role: SyncRole) -> None:
        self._role = role
        self._role_changed.set()
        self._role_changed = asyncio.Event()

    def _leave_master(self) -> None:
        self._sender.flush(now=self._clock.now())
        self._drain_sender()

    def _close_listeners(self) -> None:
        for listener in self._recv:
            listener.close()
        self._recv.clear()

    @staticmethod
    def _close(endpoints: list[_Endpoint]) -> None:
        for ep in endpoints:
            if ep.transport is not None:
                ep.transport.close()
        endpoints.clear()

    # -- effects --------------------------------------------------------------------------------

    def _drain_sender(self) -> None:
        endpoints = self._send
        if not endpoints:
            return
        while not any(ep.paused for ep in endpoints):
            batch = self._sender.pop_datagrams(limit=64)
            if not batch:
                return
            for dgram in batch:
                transport = endpoints[dgram.port_offset].transport
                if transport is None or transport.is_closing():
                    self._send_errors += 1
                    continue
                transport.sendto(dgram.data)

    def _on_send_error(self, exc: Exception) -> None:
        self._send_errors += 1
        self._log.debug("sync.send_error", error=str(exc))

    def _on_receive_error(self, exc: OSError) -> None:
        self._receive_errors += 1
        self._log.debug("sync.receive_error", error=str(exc))

    def _on_datagram(self, data: bytes, src: tuple[str, int]) -> None:
        if self._role is not SyncRole.BACKUP or self._failure is not None:
            return
        now = self._clock.now()
        receiver = self._receiver
        receiver.receive_datagram(data, src=src, now=now)
        apply = self._sink.apply_sync
        for event in receiver.pop_events():
            if isinstance(event, ApplySyncEntries):
                applied = failed = 0
                outcomes: dict[str, int] = {}
                version = event.version
                try:
                    for entry in event.entries:
                        try:
                            result = apply(entry, now=now, version=version)
                        except HactlError as exc:
                            failed += 1
                            self._log.warning("sync.apply_failed", peer=event.peer,
                                              error=str(exc))
                            continue
                        applied += 1
                        if isinstance(result, enum.Enum):
                            label = str(result.value)
                            outcomes[label] = outcomes.get(label, 0) + 1
                except Exception as exc:  # a bug in the sink: stop the service (crash-only)
                    self._failure = exc
                    self._wakeup.set()
                    return
                finally:
                    receiver.record_applied(event.peer, applied=applied, failed=failed,
                                            outcomes=outcomes)
            elif isinstance(event, SyncDropped):
                self._log.debug(
                    "sync.datagram_dropped" if event.whole_datagram else "sync.entries_dropped",
                    peer=event.peer, reason=event.reason.value, entries=event.entries,
                    detail=event.detail,
                )

