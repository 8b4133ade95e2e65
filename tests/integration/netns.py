"""Reusable network-namespace segments for integration tests (needs root).

`segment(["a", "b", "client"])` builds one L2 segment: a bridge in its own namespace
(STP and multicast snooping off) and one namespace per node, joined by a veth whose node
end is `eth0`, with a deterministic MAC (02:00:00:00:00:NN), an IPv4 address from the
subnet and, optionally, IPv6 with DAD off (so link-local addresses are usable at once).
Nothing touches the root namespace except the veth creation, and every name carries a
unique prefix, so tests can run side by side. Everything is deleted in `finally` (the
veths and the bridge go with their namespaces), also when the body fails.

pyroute2's `nsname` pattern: unique name, create, yield, remove in finally.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network
from typing import Any

__all__ = [
    "PRIORITY",
    "HactlPeer",
    "KeepalivedPeer",
    "Node",
    "PeerSpec",
    "Segment",
    "VrrpPeer",
    "addresses",
    "closed_after",
    "ip",
    "ns_exec",
    "ping",
    "run_script",
    "segment",
    "wait_until",
]


@dataclass(frozen=True)
class Node:
    name: str
    netns: str
    address: IPv4Interface
    mac: str


@dataclass(frozen=True)
class Segment:
    prefix: str
    bridge_netns: str
    nodes: dict[str, Node]

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


def ns_exec(netns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *cmd],
        capture_output=True,
        text=True,
        check=check,
        timeout=20,
    )


@contextlib.contextmanager
def segment(
    names: Sequence[str], *, subnet: str = "10.200.0.0/24", ipv6: bool = False
) -> Iterator[Segment]:
    """Create the segment, yield it, always delete it."""
    prefix = "hv" + secrets.token_hex(3)
    network = IPv4Network(subnet)
    bridge = f"{prefix}-br"
    created: list[str] = []
    try:
        ip("netns", "add", bridge)
        created.append(bridge)
        ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        ip(
            "-n",
            bridge,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "mcast_snooping",
            "0",
        )
        ip("-n", bridge, "link", "set", "br0", "up")
        nodes: dict[str, Node] = {}
        for i, name in enumerate(names, start=1):
            netns = f"{prefix}-{name}"
            ip("netns", "add", netns)
            created.append(netns)
            if ipv6:
                for scope in ("all", "default"):
                    ns_exec(netns, "sysctl", "-qw", f"net.ipv6.conf.{scope}.accept_dad=0")
            host_end, bridge_end = f"{prefix}{i}h", f"{prefix}{i}p"
            ip("link", "add", host_end, "type", "veth", "peer", "name", bridge_end)
            ip("link", "set", host_end, "netns", netns)
            ip("link", "set", bridge_end, "netns", bridge)
            mac = f"02:00:00:00:00:{i:02x}"
            ip("-n", netns, "link", "set", host_end, "name", "eth0", "address", mac)
            address = IPv4Interface(f"{network[i]}/{network.prefixlen}")
            ip("-n", netns, "addr", "add", str(address), "dev", "eth0")
            ip("-n", netns, "link", "set", "eth0", "up")
            ip("-n", netns, "link", "set", "lo", "up")
            ip("-n", bridge, "link", "set", bridge_end, "master", "br0")
            ip("-n", bridge, "link", "set", bridge_end, "up")
            nodes[name] = Node(name, netns, address, mac)
        yield Segment(prefix, bridge, nodes)
    finally:
        for netns in reversed(created):
            _close_netlink(netns)
            ip("netns", "del", netns, check=False)


_NETLINK: dict[str, Any] = {}
_LINK_INDEX: dict[tuple[str, str], int] = {}


def addresses(netns: str, dev: str = "eth0") -> set[str]:
    """The addresses (without prefix length) on `dev` in `netns`.

    Asked over a netlink socket kept open in the namespace (about 1 ms, no process spawn),
    so polling loops measure the system under test, not `ip` start-up times. Inside a
    running event loop (pyroute2's synchronous API needs its own) it asks `ip` instead.
    """
    import asyncio

    from pyroute2 import IPRoute

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return _addresses_by_ip(netns, dev)
    index = _LINK_INDEX.get((netns, dev))
    if index is None:
        # The index is stable for the namespace's life: ask `ip` once, so the polling path
        # only ever parses address messages (a link dump can carry attributes that the
        # installed pyroute2 fails to decode).
        out = ip("-n", netns, "-o", "link", "show", "dev", dev, check=False).stdout
        if not out.strip():
            return set()
        index = _LINK_INDEX[(netns, dev)] = int(out.split(":", 1)[0])
    try:
        ipr = _NETLINK.get(netns)
        if ipr is None:
            ipr = _NETLINK[netns] = IPRoute(netns=netns)
        return {str(m.get("address")) for m in ipr.addr("dump", index=index)}
    except Exception:  # a decoding failure must not fail the test: ask `ip`
        _close_netlink(netns)
        return _addresses_by_ip(netns, dev)


def _addresses_by_ip(netns: str, dev: str) -> set[str]:
    out = ip("-n", netns, "-o", "addr", "show", "dev", dev, check=False).stdout
    return {
        parts[3].split("/")[0]
        for parts in (line.split() for line in out.splitlines())
        if len(parts) > 3 and parts[2] in ("inet", "inet6")
    }


def _close_netlink(netns: str) -> None:
    for key in [key for key in _LINK_INDEX if key[0] == netns]:
        del _LINK_INDEX[key]
    ipr = _NETLINK.pop(netns, None)
    if ipr is not None:
        ipr.close()


_PING = r"""
import os, socket, struct, sys, time
dst, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s & 0xffff) + (s >> 16); s += s >> 16
    return ~s & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident, seq = os.getpid() & 0xffff, 0
while time.monotonic() < deadline:
    seq += 1
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"hactl-ping"
    pkt = hdr[:2] + struct.pack("!H", csum(hdr)) + hdr[4:]
    s.sendto(pkt, (dst, 0))
    s.settimeout(0.2)
    try:
        while True:
            data, addr = s.recvfrom(1500)
            icmp = data[(data[0] & 15) * 4:]
            if addr[0] == dst and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
                sys.exit(0)
    except socket.timeout:
        pass
sys.exit(1)
"""


def ping(netns: str, address: str, *, within: float = 3.0) -> bool:
    """ICMP echo from `netns` (no ping binary needed); True once a reply arrives in time."""
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", _PING, address, str(within)],
        capture_output=True,
        timeout=within + 10,
        check=False,
    )
    return proc.returncode == 0


def wait_until(predicate: object, *, limit: float, step: float = 0.01) -> float | None:
    """Seconds until `predicate()` is true, polling every `step`; None if `limit` passes."""
    assert callable(predicate)
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > limit:
            return None
        time.sleep(step)


def is_root() -> bool:
    return os.geteuid() == 0


# ---------------------------------------------------------------------------------------
# VRRP peers in a namespace: hactl (python -m hactl.vrrp) and keepalived, same settings.

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Both implementations run at the same raised CPU priority (nice -10, `nice` execs, so the
# pid stays the daemon's): on a busy CI machine the measured takeover times then reflect
# the protocol, not the run queue. keepalived itself recommends RT scheduling for this.
PRIORITY = ("nice", "-n", "-10")


@dataclass(frozen=True)
class PeerSpec:
    """One VRRP instance VI_1 on eth0, described once for both implementations."""

    priority: int
    version: int = 2
    advert_int: float = 1.0
    vrid: int = 51
    vips: tuple[str, ...] = ("10.200.0.100/24",)
    unicast_src: str | None = None
    unicast_peers: tuple[str, ...] = ()
    auth_type: str | None = None  # "PASS" or "AH"
    auth_pass: str = ""


class VrrpPeer:
    """A running VRRP node; subclasses know how to start, crash and stop it."""

    kind = "?"

    def __init__(self, node: Node, spec: PeerSpec, workdir: str) -> None:
        self.node, self.spec, self.workdir = node, spec, workdir
        os.makedirs(workdir, exist_ok=True)
        self.log_path = os.path.join(workdir, "log")
        self.proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0

    def holds(self, vip: str) -> bool:
        return vip in addresses(self.node.netns)

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    ready_marker = re.compile("$^")

    def start(self) -> None:
        raise NotImplementedError

    def crash(self) -> None:
        raise NotImplementedError

    def _log_size(self) -> int:
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def wait_ready(self, *, limit: float = 15.0) -> None:
        """Block until this run logged its first state (it listens and sends from then on)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.ready_marker.search(self.log()[self._started_at :]):
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}")
            time.sleep(0.01)
        raise TimeoutError(f"{self.kind} on {self.node.name} did not start")

    def terminate(self) -> None:
        """SIGTERM without waiting: the graceful path (priority 0, VIPs removed)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def wait(self, *, timeout: float = 10.0) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self, *, timeout: float = 10.0) -> None:
        self.terminate()
        self.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class HactlPeer(VrrpPeer):
    kind = "hactl"
    ready_marker = re.compile(r'"event": "vrrp.state_changed"')

    def config(self) -> dict[str, object]:
        s = self.spec
        inst: dict[str, object] = {
            "name": "VI_1",
            "interface": "eth0",
            "vrid": s.vrid,
            "priority": s.priority,
            "version": s.version,
            "advert_interval": s.advert_int,
            "vips": list(s.vips),
        }
        if s.unicast_peers:
            inst["unicast_src_ip"] = s.unicast_src or str(self.node.address.ip)
            inst["unicast_peers"] = list(s.unicast_peers)
        if s.auth_type:
            inst["auth_type"], inst["auth_pass"] = s.auth_type, s.auth_pass
        return {"instances": [inst]}

    def start(self) -> None:
        import json

        path = os.path.join(self.workdir, "vrrp.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.config(), f)
        env = dict(os.environ, PYTHONPATH=REPO)
        self._started_at = len(self.log())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.node.netns,
                    *PRIORITY,
                    sys.executable,
                    "-m",
                    "hactl.vrrp",
                    path,
                    "--log-level",
                    "debug",
                ],
                stdout=log,
                stderr=log,
                cwd=REPO,
                env=env,
            )

    def crash(self) -> None:
        """SIGKILL: no priority 0 is sent and the VIPs stay (as a crash)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


class KeepalivedPeer(VrrpPeer):
    kind = "keepalived"
    ready_marker = re.compile(r"Entering (BACKUP|MASTER|FAULT) STATE")

    def config(self) -> str:
        s = self.spec
        vips = "\n".join(f"        {v}" for v in s.vips)
        lines = [
            "global_defs {",
            f"    router_id {self.node.name}",
            "    enable_script_security",
            "    script_user root",
            "}",
            "vrrp_instance VI_1 {",
            "    state BACKUP",
            "    interface eth0",
            f"    virtual_router_id {s.vrid}",
            f"    priority {s.priority}",
            f"    advert_int {s.advert_int:g}",
            f"    version {s.version}",
            "    virtual_ipaddress {",
            vips,
            "    }",
        ]
        if s.unicast_peers:
            lines.append(f"    unicast_src_ip {s.unicast_src or self.node.address.ip}")
            lines.append("    unicast_peer {")
            lines += [f"        {p}" for p in s.unicast_peers]
            lines.append("    }")
        if s.auth_type:
            lines += [
                "    authentication {",
                f"        auth_type {s.auth_type}",
                f"        auth_pass {s.auth_pass}",
                "    }",
            ]
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _pid_file(self, name: str) -> str:
        return os.path.join(self.workdir, name)

    def start(self) -> None:
        conf = os.path.join(self.workdir, "keepalived.conf")
        with open(conf, "w", encoding="utf-8") as f:
            f.write(self.config())
        for name in ("keepalived.pid", "vrrp.pid", "checker.pid", "bfd.pid"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._pid_file(name))
        env = dict(os.environ, TMPDIR=self.workdir)
        self._started_at = len(self.log())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.node.netns,
                    *PRIORITY,
                    "keepalived",
                    "-n",
                    "-l",
                    "-D",
                    "-G",
                    "-P",
                    "-f",
                    conf,
                    "-p",
                    self._pid_file("keepalived.pid"),
                    "-r",
                    self._pid_file("vrrp.pid"),
                    "-c",
                    self._pid_file("checker.pid"),
                    "-b",
                    self._pid_file("bfd.pid"),
                ],
                stdout=log,
                stderr=log,
                env=env,
            )

    def child_pid(self, *, limit: float = 5.0) -> int:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError, ValueError),
                open(self._pid_file("vrrp.pid"), encoding="ascii") as f,
            ):
                return int(f.read().strip())
            time.sleep(0.01)
        raise TimeoutError("keepalived wrote no VRRP child pid")

    def json_dump(self, *, limit: float = 5.0) -> list[dict[str, Any]]:
        """keepalived's JSON state dump (`--signum=JSON`, spec §8.4): one entry per instance."""
        import json

        assert self.proc is not None
        path = os.path.join(self.workdir, "keepalived.json")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        signum = int(
            subprocess.run(
                ["keepalived", "--signum=JSON"], capture_output=True, text=True, check=True
            ).stdout.strip()
        )
        os.kill(self.proc.pid, signum)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError), open(path, encoding="utf-8") as f:
                data: list[dict[str, Any]] = json.load(f)
                return data
            time.sleep(0.02)
        raise TimeoutError("keepalived wrote no JSON dump")

    def crash(self) -> None:
        """keepalived's crash recipe (spec §8.1): STOP the parent, KILL the child, KILL it."""
        import signal

        assert self.proc is not None
        child = self.child_pid()
        os.kill(self.proc.pid, signal.SIGSTOP)
        os.kill(child, signal.SIGKILL)
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@contextlib.contextmanager
def closed_after(*peers: VrrpPeer) -> Iterator[None]:
    """Close the peers when the block ends; if it fails, print each peer's log first."""
    try:
        yield
    except BaseException:
        for peer in peers:
            print(f"==== {peer.kind} {peer.node.name} log ====\n{peer.log()[-6000:]}")
        raise
    finally:
        for peer in peers:
            peer.close()


def run_script(netns: str, script: str) -> subprocess.CompletedProcess[str]:
    """Run a Python `script` in `netns` with hactl importable and a bare environment."""
    return subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={"PYTHONPATH": REPO, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
