"""`KernelSyncDaemons`: the kernel's own sync daemon following the VRRP role through a
recording fake of its port (keepalived's ipvs_syncd_master / ipvs_syncd_backup order)."""

from __future__ import annotations

import errno
from dataclasses import replace
from ipaddress import IPv4Address
from typing import Literal

import pytest

from hactl.errors import KernelError
from hactl.ipvs.ipvsadm import SyncDaemonStatus
from hactl.sync.kernel import KernelSyncDaemons, kernel_daemon
from hactl.sync.model import SyncDaemonConfig, SyncRole

CONFIG = SyncDaemonConfig(interface="eth1", instance="VI_1", syncid=7)


class RecordingPort:
    def __init__(self, *, refuse_start: bool = False) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.refuse_start = refuse_start

    async def start_sync_daemon(self, daemon: SyncDaemonStatus) -> None:
        if self.refuse_start:
            raise KernelError("start_sync_daemon", errno.ENODEV, "no such device")
        self.calls.append(("start", daemon.state, daemon.syncid))

    async def stop_sync_daemon(self, state: Literal["master", "backup"]) -> None:
        self.calls.append(("stop", state, 0))


def test_kernel_daemon_carries_the_configuration() -> None:
    got = kernel_daemon(replace(CONFIG, maxlen=1400, ttl=3, port=8850), "master")
    assert got == SyncDaemonStatus(
        state="master",
        mcast_ifn="eth1",
        syncid=7,
        maxlen=1400,
        group=IPv4Address("224.0.0.81"),
        port=8850,
        ttl=3,
    )
    assert kernel_daemon(CONFIG, "backup").maxlen == 0  # the kernel takes it from the MTU


@pytest.mark.asyncio
async def test_backup_then_master_then_backup_then_stop() -> None:
    port = RecordingPort()
    daemons = KernelSyncDaemons(CONFIG, port)
    await daemons.set_role(SyncRole.BACKUP)
    await daemons.set_role(SyncRole.BACKUP)  # no change, no call
    await daemons.set_role(SyncRole.MASTER)
    await daemons.set_role(SyncRole.BACKUP)
    assert daemons.role is SyncRole.BACKUP
    await daemons.stop()
    await daemons.set_role(SyncRole.MASTER)  # after stop: nothing
    assert daemons.role is SyncRole.NONE
    assert port.calls == [
        ("stop", "master", 0),
        ("start", "backup", 7),
        ("stop", "backup", 0),
        ("start", "master", 7),
        ("stop", "master", 0),
        ("start", "backup", 7),
        ("stop", "backup", 0),
    ]


@pytest.mark.asyncio
async def test_stop_without_start_touches_nothing() -> None:
    port = RecordingPort()
    await KernelSyncDaemons(CONFIG, port).stop()
    assert port.calls == []


@pytest.mark.asyncio
async def test_a_refused_start_leaves_no_role_and_is_retried() -> None:
    port = RecordingPort(refuse_start=True)
    daemons = KernelSyncDaemons(CONFIG, port)
    with pytest.raises(KernelError):
        await daemons.set_role(SyncRole.BACKUP)
    assert daemons.role is SyncRole.NONE
    port.refuse_start = False
    await daemons.set_role(SyncRole.BACKUP)
    assert daemons.role is SyncRole.BACKUP


@pytest.mark.asyncio
async def test_apply_restarts_in_the_current_role() -> None:
    port = RecordingPort()
    daemons = KernelSyncDaemons(CONFIG, port)
    await daemons.apply(replace(CONFIG, syncid=8))  # not running: only remembered
    assert port.calls == []
    await daemons.set_role(SyncRole.MASTER)
    port.calls.clear()
    await daemons.apply(replace(CONFIG, syncid=9))
    await daemons.apply(replace(CONFIG, syncid=9))  # same again: nothing
    assert port.calls == [("stop", "master", 0), ("stop", "backup", 0), ("start", "master", 9)]
    assert daemons.role is SyncRole.MASTER
