"""Finding kernel sync daemons: the GET_DAEMON reply parser, the conflict rule, the probe."""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path

import pytest

from hactl.sync.kernel import (
    KernelDaemonState,
    KernelSyncDaemon,
    NetlinkSyncProbe,
    conflicts,
    genl_family_id,
    parse_daemon_reply,
)
from hactl.sync.model import SyncDaemonConfig


def nla(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) & 3)


def reply(*attrs: bytes) -> bytes:
    """genlmsghdr (cmd NEW_DAEMON, version 1) + IPVS_CMD_ATTR_DAEMON nesting `attrs`."""
    return struct.pack("=BBH", 9, 1, 0) + nla(3 | 0x8000, b"".join(attrs))  # NLA_F_NESTED


def test_parse_current_kernel_reply() -> None:
    msg = reply(
        nla(1, struct.pack("=I", 2)), nla(2, b"eth0\0"), nla(3, struct.pack("=I", 7)),
        nla(4, struct.pack("=H", 1472)), nla(7, struct.pack("=H", 8848)), nla(8, b"\x01"),
        nla(5, ipaddress.IPv4Address("224.0.0.81").packed),
    )
    d = parse_daemon_reply(msg)
    assert d == KernelSyncDaemon(state=KernelDaemonState.BACKUP, interface="eth0", syncid=7,
                                 port=8848, group=ipaddress.IPv4Address("224.0.0.81"),
                                 maxlen=1472, ttl=1)
    assert d.describe() == ("backup sync daemon (mcast=eth0, syncid=7, maxlen=1472, "
                            "group=224.0.0.81, port=8848, ttl=1)")


def test_parse_old_kernel_reply_and_ipv6_group() -> None:
    old = parse_daemon_reply(reply(nla(1, struct.pack("=I", 1)), nla(2, b"bond0\0"),
                                   nla(3, struct.pack("=I", 0))))
    assert old is not None and (old.state, old.port, old.group) == (
        KernelDaemonState.MASTER, 8848, None)
    six = parse_daemon_reply(reply(nla(1, struct.pack("=I", 1)), nla(2, b"eth1\0"),
                                   nla(3, struct.pack("=I", 3)),
                                   nla(6, ipaddress.IPv6Address("ff02::1:81").packed),
                                   nla(7, struct.pack("=H", 9000))))
    assert six is not None and str(six.group) == "ff02::1:81" and six.port == 9000


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        struct.pack("=BBH", 9, 1, 0),
        reply(nla(2, b"eth0\0")),  # no state
        reply(nla(1, struct.pack("=I", 5)), nla(2, b"e\0"), nla(3, bytes(4))),  # bad state
        reply(nla(1, b"\x01"), nla(2, b"e\0"), nla(3, bytes(4))),  # short u32
        struct.pack("=BBH", 9, 1, 0) + struct.pack("=HH", 200, 3),  # attribute past the end
    ],
)
def test_parse_rejects_malformed(payload: bytes) -> None:
    assert parse_daemon_reply(payload) is None


def daemon(syncid: int, port: int = 8848) -> KernelSyncDaemon:
    return KernelSyncDaemon(state=KernelDaemonState.MASTER, interface="eth0", syncid=syncid,
                            port=port)


@pytest.mark.parametrize(
    ("ours", "theirs", "kernel_ports", "conflict"),
    [
        ({"syncid": 7}, daemon(7), 1, True),
        ({"syncid": 7}, daemon(8), 1, False),
        ({"syncid": 7}, daemon(0), 1, True),  # a kernel backup with syncid 0 takes everything
        ({"syncid": 0}, daemon(9), 1, True),
        ({"syncid": 7, "port": 8850}, daemon(7), 1, False),
        ({"syncid": 7, "port": 8850}, daemon(7), 4, True),  # kernel uses 8848..8851
        ({"syncid": 7, "port": 8846, "sync_ports": 2}, daemon(7), 1, False),
        ({"syncid": 7, "port": 8846, "sync_ports": 4}, daemon(7), 1, True),
    ],
)
def test_conflict_rule(
    ours: dict[str, int], theirs: KernelSyncDaemon, kernel_ports: int, conflict: bool
) -> None:
    cfg = SyncDaemonConfig(interface="eth0", **ours)  # type: ignore[arg-type]
    found = conflicts(cfg, [theirs], kernel_sync_ports=kernel_ports)
    assert found == ([theirs] if conflict else [])


def test_probe_without_ipvs_finds_nothing(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    probe = NetlinkSyncProbe(proc=tmp_path)
    assert not probe.kernel_has_ipvs()
    assert probe.running_daemons() == []
    assert probe.kernel_sync_ports() == 1
    (tmp_path / "sys/net/ipv4/vs").mkdir(parents=True)
    (tmp_path / "sys/net/ipv4/vs/sync_ports").write_text("4\n")
    assert probe.kernel_sync_ports() == 4


def test_probe_on_this_kernel() -> None:
    probe = NetlinkSyncProbe()
    daemons = probe.running_daemons()  # must not raise, with or without IPVS
    if not probe.kernel_has_ipvs():
        assert daemons == []


def test_generic_netlink_family_lookup_is_real() -> None:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16) as sock:
        sock.settimeout(2.0)
        sock.bind((0, 0))
        assert genl_family_id(sock, b"nlctrl") == 0x10  # GENL_ID_CTRL
        assert genl_family_id(sock, b"no-such-family") is None
