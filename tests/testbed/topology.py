"""Network-namespace topologies built from a description, and removed without a trace.

`Testbed(Topology(...))` creates, under one unique name prefix (`PREFIX` + 6 hex digits):

* a bridge namespace `P-br` holding `br0` (the service segment) and, with `sync_segment`,
  `br1` (a second segment reserved for sync traffic);
* one namespace per node: the client `P-client` (a primary address and `client_sources`
  secondary ones), the directors `P-d1`, `P-d2`, and the real servers `P-rs1`..`P-rsN`,
  each joined to `br0` by a veth whose node end is `eth0` (directors also get `eth1` on
  `br1` with a sync segment).

Addressing on 10.200.0.0/24: directors .2 and .3, real servers .11 up, the client .200 and
its sources .201 up, the VIP .100. The embedded data plane is a proxy (real servers see the
director as their client), so one flat segment needs no routes at all.

Teardown (`close()`, also registered with `atexit` and run on SIGTERM) kills every process
still inside the namespaces (`ip netns pids`), then deletes the namespaces, which takes the
veths and bridges with them. Nothing is created in the root namespace except the veth pairs
for the instant before they are moved. `leftovers(prefix)` lists anything that survived.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from types import FrameType

__all__ = [
    "PREFIX",
    "Host",
    "Testbed",
    "Topology",
    "ip",
    "leftovers",
    "ns_run",
    "testbed",
]

PREFIX = "hrb"
SUBNET = IPv4Network("10.200.0.0/24")
SYNC_SUBNET = IPv4Network("10.201.0.0/24")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


def ns_run(netns: str, *cmd: str, check: bool = True,
           timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True,
                          check=check, timeout=timeout)


@dataclass(frozen=True)
class Topology:
    """What to build: how many real servers and client source addresses, which segments."""

    real_servers: int = 3
    client_sources: int = 6
    sync_segment: bool = False
    vip: IPv4Address = SUBNET[100]


@dataclass(frozen=True)
class Host:
    name: str
    netns: str
    address: IPv4Address
    sync_address: IPv4Address | None = None
    extra: tuple[IPv4Address, ...] = field(default=())


class Testbed:
    """A built topology; `close()` is idempotent and attempts every step."""

    __test__ = False  # not a pytest test class

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.prefix = PREFIX + secrets.token_hex(3)
        self.workdir = tempfile.mkdtemp(prefix=self.prefix + "-")
        self.bridge_ns = f"{self.prefix}-br"
        self.hosts: dict[str, Host] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self._namespaces: list[str] = []
        self._links = 0
        self._closed = False
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ building

    @property
    def vip(self) -> IPv4Address:
        return self.topology.vip

    @property
    def client(self) -> Host:
        return self.hosts["client"]

    @property
    def directors(self) -> list[Host]:
        return [self.hosts["d1"], self.hosts["d2"]]

    @property
    def real_servers(self) -> list[Host]:
        return [self.hosts[f"rs{i}"] for i in range(1, self.topology.real_servers + 1)]

    def _netns(self, name: str) -> str:
        netns = f"{self.prefix}-{name}"
        ip("netns", "add", netns)
        self._namespaces.append(netns)
        ip("-n", netns, "link", "set", "lo", "up")
        return netns

    def _bridge(self, name: str) -> None:
        ip("-n", self.bridge_ns, "link", "add", name, "type", "bridge")
        ip("-n", self.bridge_ns, "link", "set", name, "type", "bridge", "stp_state", "0",
           "mcast_snooping", "0", "forward_delay", "0")
        ip("-n", self.bridge_ns, "link", "set", name, "up")

    def _attach(self, netns: str, dev: str, bridge: str, address: IPv4Interface) -> None:
        self._links += 1
        host_end, bridge_end = f"{self.prefix}{self._links}h", f"{self.prefix}{self._links}p"
        ip("link", "add", host_end, "type", "veth", "peer", "name", bridge_end)
        ip("link", "set", host_end, "netns", netns)
        ip("link", "set", bridge_end, "netns", self.bridge_ns)
        mac = f"02:00:00:00:{self._links // 256:02x}:{self._links % 256:02x}"
        ip("-n", netns, "link", "set", host_end, "name", dev, "address", mac)
        ip("-n", netns, "addr", "add", str(address), "dev", dev)
        ip("-n", netns, "link", "set", dev, "up")
        ip("-n", self.bridge_ns, "link", "set", bridge_end, "master", bridge)
        ip("-n", self.bridge_ns, "link", "set", bridge_end, "up")

    def _host(self, name: str, index: int, *, sync: bool = False,
              extra: tuple[IPv4Address, ...] = ()) -> None:
        netns = self._netns(name)
        address = SUBNET[index]
        self._attach(netns, "eth0", "br0", IPv4Interface(f"{address}/{SUBNET.prefixlen}"))
        for other in extra:
            ip("-n", netns, "addr", "add", f"{other}/{SUBNET.prefixlen}", "dev", "eth0")
        sync_address = None
        if sync:
            sync_address = SYNC_SUBNET[index]
            self._attach(netns, "eth1", "br1",
                         IPv4Interface(f"{sync_address}/{SYNC_SUBNET.prefixlen}"))
        self.hosts[name] = Host(name, netns, address, sync_address, extra)

    def _build(self) -> None:
        self._netns("br")
        self._bridge("br0")
        if self.topology.sync_segment:
            self._bridge("br1")
        for i, name in enumerate(("d1", "d2")):
            self._host(name, 2 + i, sync=self.topology.sync_segment)
        for i in range(1, self.topology.real_servers + 1):
            self._host(f"rs{i}", 10 + i)
        sources = tuple(SUBNET[201 + i] for i in range(self.topology.client_sources))
        self._host("client", 200, extra=sources)

    # ------------------------------------------------------------------ processes

    def spawn(self, host: Host, argv: list[str], *, log: str,
              env: dict[str, str] | None = None, cwd: str | None = None,
              stdout: int | None = None) -> subprocess.Popen[bytes]:
        """Start `argv` inside `host`'s namespace; its output goes to `log` (in workdir)."""
        path = os.path.join(self.workdir, log)
        with open(path, "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", host.netns, *argv],
                                    stdout=out if stdout is None else stdout, stderr=out,
                                    env=env, cwd=cwd)
        self.procs.append(proc)
        return proc

    def path(self, name: str) -> str:
        return os.path.join(self.workdir, name)

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for proc in self.procs:
            with contextlib.suppress(OSError):
                if proc.poll() is None:
                    proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        for netns in reversed(self._namespaces):
            _kill_namespace_pids(netns)
            ip("netns", "del", netns, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)


def _kill_namespace_pids(netns: str) -> None:
    for _ in range(50):
        out = ip("netns", "pids", netns, check=False).stdout.split()
        if not out:
            return
        for pid in out:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.02)


def leftovers(prefix: str = PREFIX) -> list[str]:
    """Namespaces, links (root namespace) and processes whose name carries `prefix`."""
    found = [f"netns {n}" for n in ip("netns", "list").stdout.split() if n.startswith(prefix)]
    for line in ip("-o", "link", "show").stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(prefix):
            found.append(f"link {name}")
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            if f"/{prefix}" in cmdline or f" {prefix}" in cmdline:
                found.append(f"process {entry}: {cmdline.strip()}")
    tmp = tempfile.gettempdir()
    found += [f"dir {d}" for d in os.listdir(tmp) if d.startswith(prefix)]
    return found


@contextlib.contextmanager
def testbed(topology: Topology | None = None) -> Iterator[Testbed]:
    """Build, yield, always remove (also on SIGTERM: turned into KeyboardInterrupt)."""
    previous: Callable[[int, FrameType | None], object] | int | None = None
    installed = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    with contextlib.suppress(ValueError):  # not the main thread: rely on atexit
        previous = signal.signal(signal.SIGTERM, on_term)
        installed = True
    bed = Testbed(topology or Topology())
    try:
        yield bed
    finally:
        bed.close()
        if installed:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


testbed.__test__ = False  # type: ignore[attr-defined]
