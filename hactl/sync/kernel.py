"""Finding the kernel's own IPVS sync daemons, so hactl refuses to fight one (issue: "refuse to
start if a kernel sync daemon already uses the same port and syncid").

The kernel reports its daemons through generic netlink (family "IPVS", command GET_DAEMON),
which is what `ipvsadm -L --daemon` prints (spec/ipvs.md §8.6). Without IPVS in the kernel
(/proc/net/ip_vs absent) there is nothing to ask and the answer is "none". The query is
per network namespace, like the daemons themselves.

Owns: `KernelSyncDaemon` (what a daemon is configured with), `NetlinkSyncProbe` (the adapter,
a hand-rolled generic netlink dump: hactl confines pyroute2 to the IPVS table adapter), the
pure `parse_daemon_reply()` used by it and by tests, and `conflicts()` (the rule).

Also, for the kernel backend, `KernelSyncDaemons`: the kernel's own sync daemon following the
VRRP role, as keepalived runs it for `lvs_sync_daemon` (the kernel's connection table can only
be written by the kernel's own backup daemon). It drives the daemons through a
`KernelSyncPort` (implemented by `hactl.ipvs.kernel.KernelIpvs`), and `kernel_daemon()` maps
the configuration onto what `IPVS_CMD_NEW_DAEMON` takes.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import structlog

from hactl.ipvs.ipvsadm import SyncDaemonStatus
from hactl.ipvs.model import IPAddress
from hactl.sync.model import DEFAULT_PORT, SyncDaemonConfig, SyncRole

__all__ = [
    "KernelSyncDaemon",
    "KernelSyncDaemons",
    "KernelSyncPort",
    "KernelSyncProbe",
    "NetlinkSyncProbe",
    "conflicts",
    "genl_family_id",
    "kernel_daemon",
    "parse_daemon_reply",
]

_log = structlog.get_logger("hactl.sync")

# uapi linux/netlink.h, linux/genetlink.h, linux/ip_vs.h
_NETLINK_GENERIC = 16
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_GENL_ID_CTRL = 0x10
_CTRL_CMD_GETFAMILY = 3
_CTRL_ATTR_FAMILY_ID = 1
_CTRL_ATTR_FAMILY_NAME = 2
_IPVS_GENL_NAME = b"IPVS"
_IPVS_GENL_VERSION = 1
_IPVS_CMD_GET_DAEMON = 11
_IPVS_CMD_ATTR_DAEMON = 3
_DAEMON_STATE = 1  # u32: 1 master, 2 backup
_DAEMON_MCAST_IFN = 2  # string
_DAEMON_SYNC_ID = 3  # u32
_DAEMON_SYNC_MAXLEN = 4  # u16
_DAEMON_MCAST_GROUP = 5  # be32
_DAEMON_MCAST_GROUP6 = 6  # 16 bytes
_DAEMON_MCAST_PORT = 7  # u16, host order
_DAEMON_MCAST_TTL = 8  # u8
_NLA_TYPE_MASK = 0x3FFF

_NLMSGHDR = struct.Struct("=IHHII")
_GENLHDR = struct.Struct("=BBH")
_NLATTR = struct.Struct("=HH")


class KernelDaemonState(enum.Enum):
    MASTER = 1
    BACKUP = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelSyncDaemon:
    """A running kernel sync daemon. Kernels before 4.7 report no port, group or ttl: the
    port is then the fixed 8848."""

    state: KernelDaemonState
    interface: str
    syncid: int
    port: int = DEFAULT_PORT
    group: IPAddress | None = None
    maxlen: int | None = None
    ttl: int | None = None

    def describe(self) -> str:
        """The line `ipvsadm -L --daemon` prints for it (§8.6)."""
        parts = [f"mcast={self.interface}", f"syncid={self.syncid}"]
        if self.maxlen:
            parts.append(f"maxlen={self.maxlen}")
        if self.group is not None:
            parts.append(f"group={self.group}")
        parts.append(f"port={self.port}")
        if self.ttl:
            parts.append(f"ttl={self.ttl}")
        return f"{self.state.name.lower()} sync daemon ({', '.join(parts)})"


class KernelSyncProbe(Protocol):
    def running_daemons(self) -> list[KernelSyncDaemon]:
        """The kernel sync daemons of this network namespace (empty without IPVS)."""
        ...

    def kernel_sync_ports(self) -> int:
        """The kernel's sync_ports (how many consecutive ports each daemon uses)."""
        ...


def conflicts(
    config: SyncDaemonConfig, daemons: Iterable[KernelSyncDaemon], *, kernel_sync_ports: int = 1
) -> list[KernelSyncDaemon]:
    """The kernel daemons that would share traffic with `config`.

    A conflict is a kernel daemon whose ports (`port .. port + sync_ports - 1`) overlap hactl's
    and whose syncid equals hactl's, or either syncid is 0 (a backup with syncid 0 takes every
    master's messages, §1.9 step 2).
    """
    ours = range(config.port, config.port + config.sync_ports)
    found = []
    for d in daemons:
        theirs = range(d.port, d.port + kernel_sync_ports)
        same_id = d.syncid == config.syncid or 0 in (d.syncid, config.syncid)
        if same_id and max(ours.start, theirs.start) < min(ours.stop, theirs.stop):
            found.append(d)
    return found


def _attrs(data: bytes, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    p = start
    while p + _NLATTR.size <= end:
        length, kind = _NLATTR.unpack_from(data, p)
        if length < _NLATTR.size or p + length > end:
            return
        yield kind & _NLA_TYPE_MASK, data[p + _NLATTR.size : p + length]
        p += (length + 3) & ~3


def _messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each netlink message in a receive buffer."""
    p = 0
    while p + _NLMSGHDR.size <= len(data):
        length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, p)
        if length < _NLMSGHDR.size or p + length > len(data):
            return
        yield kind, data[p + _NLMSGHDR.size : p + length]
        p += (length + 3) & ~3


def parse_daemon_reply(payload: bytes) -> KernelSyncDaemon | None:
    """One GET_DAEMON reply message (genl header + attributes) -> the daemon it describes."""
    for kind, nested in _attrs(payload, _GENLHDR.size, len(payload)):
        if kind != _IPVS_CMD_ATTR_DAEMON:
            continue
        fields = dict(_attrs(nested, 0, len(nested)))
        try:
            state = KernelDaemonState(struct.unpack("=I", fields[_DAEMON_STATE])[0])
            ifname = fields[_DAEMON_MCAST_IFN].split(b"\0", 1)[0].decode()
            syncid = struct.unpack("=I", fields[_DAEMON_SYNC_ID])[0]
        except (KeyError, ValueError, struct.error):
            return None
        group: IPAddress | None = None
        if _DAEMON_MCAST_GROUP6 in fields:
            group = ipaddress.IPv6Address(fields[_DAEMON_MCAST_GROUP6][:16])
        elif _DAEMON_MCAST_GROUP in fields:
            group = ipaddress.IPv4Address(fields[_DAEMON_MCAST_GROUP][:4])
        port = DEFAULT_PORT
        if _DAEMON_MCAST_PORT in fields:
            port = struct.unpack("=H", fields[_DAEMON_MCAST_PORT][:2])[0]
        maxlen = ttl = None
        if _DAEMON_SYNC_MAXLEN in fields:
            maxlen = struct.unpack("=H", fields[_DAEMON_SYNC_MAXLEN][:2])[0]
        if _DAEMON_MCAST_TTL in fields:
            ttl = fields[_DAEMON_MCAST_TTL][0]
        return KernelSyncDaemon(
            state=state,
            interface=ifname,
            syncid=syncid,
            port=port,
            group=group,
            maxlen=maxlen,
            ttl=ttl,
        )
    return None


def _request(kind: int, flags: int, seq: int, cmd: int, version: int, attrs: bytes) -> bytes:
    body = _GENLHDR.pack(cmd, version, 0) + attrs
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def _attr(kind: int, value: bytes) -> bytes:
    raw = _NLATTR.pack(_NLATTR.size + len(value), kind) + value
    return raw + b"\0" * (-len(raw) & 3)


class NetlinkSyncProbe:
    """Asks the kernel of the current network namespace for its sync daemons.

    Args:
        proc: where /proc is (tests point it elsewhere).
    """

    def __init__(self, *, proc: Path = Path("/proc")) -> None:
        self._proc = proc

    def kernel_has_ipvs(self) -> bool:
        return (self._proc / "net" / "ip_vs").exists()

    def kernel_sync_ports(self) -> int:
        try:
            return int((self._proc / "sys/net/ipv4/vs/sync_ports").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 1

    def running_daemons(self) -> list[KernelSyncDaemon]:
        if not self.kernel_has_ipvs():
            return []
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_GENERIC) as sock:
            sock.settimeout(2.0)
            sock.bind((0, 0))
            # Only asked when /proc/net/ip_vs exists: naming the family of an unloaded module
            # would make the kernel load ip_vs as a side effect.
            family = genl_family_id(sock, _IPVS_GENL_NAME)
            if family is None:  # IPVS without its netlink interface: nothing to ask
                return []
            sock.send(
                _request(
                    family,
                    _NLM_F_REQUEST | _NLM_F_DUMP,
                    2,
                    _IPVS_CMD_GET_DAEMON,
                    _IPVS_GENL_VERSION,
                    b"",
                )
            )
            daemons: list[KernelSyncDaemon] = []
            while True:
                for kind, payload in _messages(sock.recv(65536)):
                    if kind == _NLMSG_DONE:
                        return daemons
                    if kind == _NLMSG_ERROR:
                        (err,) = struct.unpack_from("=i", payload)
                        if err:
                            raise OSError(-err, os.strerror(-err), "IPVS_CMD_GET_DAEMON")
                        return daemons
                    daemon = parse_daemon_reply(payload)
                    if daemon is not None:
                        daemons.append(daemon)


def genl_family_id(sock: socket.socket, name: bytes) -> int | None:
    """The id of generic netlink family `name` on a bound NETLINK_GENERIC socket, or None."""
    request = _attr(_CTRL_ATTR_FAMILY_NAME, name + b"\0")
    sock.send(_request(_GENL_ID_CTRL, _NLM_F_REQUEST, 1, _CTRL_CMD_GETFAMILY, 1, request))
    for kind, payload in _messages(sock.recv(65536)):
        if kind == _NLMSG_ERROR:
            return None  # ENOENT: the family is not registered
        for attr, value in _attrs(payload, _GENLHDR.size, len(payload)):
            if attr == _CTRL_ATTR_FAMILY_ID:
                return int(struct.unpack("=H", value[:2])[0])
    return None


# ---------------------------------------------------------------------------------------------
# The kernel's own sync daemon, following the VRRP role (kernel backend).

DaemonState = Literal["master", "backup"]


class KernelSyncPort(Protocol):
    """Starting and stopping the kernel's sync daemons (`hactl.ipvs.kernel.KernelIpvs`)."""

    async def start_sync_daemon(self, daemon: SyncDaemonStatus) -> None: ...

    async def stop_sync_daemon(self, state: DaemonState) -> None: ...


def kernel_daemon(config: SyncDaemonConfig, state: DaemonState) -> SyncDaemonStatus:
    """What `IPVS_CMD_NEW_DAEMON` is sent for `config` in `state` (`ipvsadm --start-daemon`).

    maxlen None is sent as 0: the kernel derives it from the interface's MTU. The group, port
    and ttl are always sent (kernels since 4.7 take them; their defaults are the kernel's).
    """
    return SyncDaemonStatus(
        state=state,
        mcast_ifn=config.interface,
        syncid=config.syncid,
        maxlen=config.maxlen or 0,
        group=config.group,
        port=config.port,
        ttl=config.ttl,
    )


_STATES: dict[SyncRole, DaemonState] = {SyncRole.MASTER: "master", SyncRole.BACKUP: "backup"}


class KernelSyncDaemons:
    """The kernel's sync daemon for `lvs_sync_daemon` with the kernel backend (keepalived's
    `ipvs_syncd_master` / `ipvs_syncd_backup`).

    * `set_role(BACKUP)` at start, then on each VRRP transition of the followed instance:
      the daemon of the other state is stopped first, then this state's started (so the
      kernel never runs a master and a backup for the same director at once);
    * `apply(config)` on reload restarts the running daemon with the new settings;
    * `stop()` stops whatever this object started; afterwards `set_role` does nothing.

    Calls are serialized. A refusal raises `KernelError` from the port; the caller decides
    whether that is fatal (at start) or logged (on a transition).
    """

    def __init__(self, config: SyncDaemonConfig, port: KernelSyncPort) -> None:
        self.config = config
        self._port = port
        self._role = SyncRole.NONE
        self._stopped = False
        self._lock = asyncio.Lock()

    @property
    def role(self) -> SyncRole:
        """The role the kernel's daemon was last started in (NONE: no daemon)."""
        return self._role

    async def set_role(self, role: SyncRole) -> None:
        """Run the kernel's daemon in `role` (NONE: stop it)."""
        async with self._lock:
            if self._stopped or role is self._role:
                return
            await self._switch(role)

    async def apply(self, config: SyncDaemonConfig) -> None:
        """New settings: the running daemon is restarted with them (a netlink daemon cannot
        be changed in place)."""
        async with self._lock:
            if config == self.config:
                return
            role = self._role
            if role is not SyncRole.NONE and not self._stopped:
                await self._switch(SyncRole.NONE)
            self.config = config
            if role is not SyncRole.NONE and not self._stopped:
                await self._switch(role)

    async def stop(self) -> None:
        """Stop the daemon this object started; no daemon is started after this."""
        async with self._lock:
            self._stopped = True
            await self._switch(SyncRole.NONE)

    async def _switch(self, role: SyncRole) -> None:
        was = self._role
        if was is role:
            return
        if was is not SyncRole.NONE:
            await self._port.stop_sync_daemon(_STATES[was])
            self._role = SyncRole.NONE
            _log.info("sync.kernel_daemon_stopped", state=_STATES[was])
        else:
            # Starting: a daemon of the other state left by a previous run (or by hand)
            # would go on syncing beside ours; keepalived's switches stop the other state's
            # daemon before starting one, and so does this at start.
            await self._port.stop_sync_daemon("backup" if role is SyncRole.MASTER else "master")
        if role is not SyncRole.NONE:
            cfg = self.config
            await self._port.start_sync_daemon(kernel_daemon(cfg, _STATES[role]))
            self._role = role
            _log.info(
                "sync.kernel_daemon_started",
                state=_STATES[role],
                interface=cfg.interface,
                syncid=cfg.syncid,
                port=cfg.port,
                group=str(cfg.group),
            )
