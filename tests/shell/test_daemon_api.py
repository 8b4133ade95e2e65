"""The director serving its control API: real demo servers on loopback, the embedded engine
and data plane, the API on a unix socket (and TCP), and clients through the VIP.

These are the operations stories end to end (issue "Must show"): `hactl status` and
`hactl ipvs -Ln` show the running director; a drain under continuous load loses no request
and sends no new connection to the drained server (persistent clients too, with
--expire-templates); a reload under load, unchanged or with one added server, loses no
request, keeps health state and causes no VRRP transition; TCP without a token gets 401.
Every load is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from hactl.api.client import ApiClient, ApiError, real_server_path
from hactl.api.model import format_vs
from hactl.cli import main as cli_main
from hactl.clock import LoopClock
from hactl.config import Loaded, parse_text
from hactl.daemon import ApiSettings, Director, VrrpPorts
from hactl.ipvs.model import IpProto, ServiceKey
from hactl.testing.demo_servers import DemoServer
from hactl.testing.fakes import InMemoryAddressPort, RecordingNeighbourPort
from hactl.vrrp.events import VrrpState
from hactl.vrrp.transport import UdpChannelFactory

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[2]

HOST = "127.0.0.1"
TOKEN = "t0ken-for-tests"
DELAY_LOOP = 0.3
# Load: workers fetching through the VIP, bounded in count and in time.
WORKERS = 6
MAX_REQUESTS = 10000
LOAD_LIMIT = 20.0
DRAIN_TIMEOUT = 4.0


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class CountingServer(DemoServer):
    """A demo server that records when it accepted each client connection (one that sent a
    request: health checks only connect) and can hold requests (`hold`), so that a drain has
    connections to wait for."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.accepted: list[float] = []
        self.hold = asyncio.Event()
        self.hold.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted = asyncio.get_running_loop().time()
        try:
            try:
                async with asyncio.timeout(10):
                    await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                    TimeoutError):
                return
            self.accepted.append(accepted)
            await self.hold.wait()
            body = f"{self.name}\n".encode()
            self.requests += 1
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


def _config(vport: int, servers: list[CountingServer], *, extra: str = "",
            vs_extra: str = "") -> str:
    rs = "".join(f"""
    real_server {HOST} {s.port} {{
        TCP_CHECK {{
            connect_timeout 0.5
            retry 0
        }}
    }}""" for s in servers)
    return f"""
global_defs {{
    router_id test-director
    lvs_timeouts tcp 7500 tcpfin 1 udp 300
}}
{extra}
virtual_server {HOST} {vport} {{
    protocol TCP
    lvs_sched rr
    lvs_method NAT
    delay_loop {DELAY_LOOP}
{vs_extra}{rs}
}}
"""


@asynccontextmanager
async def _servers(*names: str) -> AsyncIterator[list[CountingServer]]:
    servers = [CountingServer(name) for name in names]
    for s in servers:
        await s.start(HOST, 0)
    try:
        yield servers
    finally:
        for s in servers:
            s.hold.set()
            await s.close()


@dataclass
class Running:
    director: Director
    unix: Path
    tcp_port: int | None

    def client(self, *, token: str | None = None) -> ApiClient:
        return ApiClient(str(self.unix), token=token)


@asynccontextmanager
async def _daemon(tmp_path: Path, text: str, *, tcp: bool = False,
                  loader: Callable[[], Loaded] | None = None,
                  **kwargs: Any) -> AsyncIterator[Running]:
    unix = tmp_path / "run" / "api.sock"
    settings = ApiSettings(unix_path=unix, tcp=(HOST, 0) if tcp else None,
                           token=TOKEN if tcp else None, state_path=tmp_path / "state.json",
                           drain_poll_interval=0.1)
    director = Director(parse_text(text).config, clock=LoopClock(), api=settings,
                        config_path=str(tmp_path / "hactl.conf"), **kwargs)
    stop = asyncio.Event()
    task = asyncio.create_task(director.run(shutdown_trigger=stop.wait, loader=loader,
                                            reload_trigger=asyncio.Event().wait))
    try:
        async with asyncio.timeout(5):
            await director.started.wait()
        assert director.api is not None
        yield Running(director, unix, director.api.server.tcp_port)
    finally:
        stop.set()
        async with asyncio.timeout(5):
            await task
    assert not unix.exists()  # the daemon removed its socket


def _key(port: int) -> ServiceKey:
    return ServiceKey.for_address(IpProto.TCP, IPv4Address(HOST), port)


@dataclass
class Load:
    """Clients fetching through the VIP: each request records when its connection was
    opened, who answered, or the error."""

    vport: int
    sources: tuple[str, ...] = (HOST,)
    # Each connection from its own never-used source port: IPVS matches a SYN whose
    # 5-tuple is still in its table (TIME_WAIT) to that entry, and an entry controlled by a
    # persistence template is not rescheduled (kernel semantics): that is the old
    # connection, not a new one, so a test of "no new connection" must not reuse ports.
    fresh_ports: bool = False
    _next_port: int = 20000
    done: list[tuple[float, str, str]] = field(default_factory=list)  # (start, source, name)
    failed: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _fetch(self, source: str) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            async with asyncio.timeout(5):
                reader, writer = await asyncio.open_connection(
                    HOST, self.vport, local_addr=(source, self._port()))
                try:
                    writer.write(b"GET / HTTP/1.0\r\n\r\n")
                    data = await reader.read()
                finally:
                    writer.close()
            head, _, body = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise ValueError(f"bad answer {data[:40]!r}")
            self.done.append((start, source, body.decode().strip()))
        except (OSError, TimeoutError, ValueError) as exc:
            self.failed.append(f"{source}: {exc!r}")

    def _port(self) -> int:
        if not self.fresh_ports:
            return 0
        # below the ephemeral range (32768-60999), so no other socket takes them meanwhile
        self._next_port += 1
        assert self._next_port < 32768
        return self._next_port

    async def _worker(self, index: int) -> None:
        source = self.sources[index % len(self.sources)]
        while not self.stop.is_set() and len(self.done) + len(self.failed) < MAX_REQUESTS:
            await self._fetch(source)
            await asyncio.sleep(0.02)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Load]:
        workers = [asyncio.create_task(self._worker(i)) for i in range(WORKERS)]
        try:
            yield self
        finally:
            self.stop.set()
            async with asyncio.timeout(10):
                await asyncio.gather(*workers)


async def _eventually(pred: Callable[[], bool], limit: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"not within {limit:.1f}s")
        await asyncio.sleep(0.02)


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    with structlog.testing.capture_logs():  # the daemon's logs stay out of the output
        code = await asyncio.to_thread(cli_main, list(argv))
    return code, capsys.readouterr().out


# ---------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_status_and_ipvs_show_the_running_director(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vport = _free_port()
    async with _servers("a", "b", "c") as servers, \
            _daemon(tmp_path, _config(vport, servers)) as running:
        mode = os.stat(running.unix).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        load = Load(vport)
        async with load.running():
            await _eventually(lambda: len(load.done) >= 30, LOAD_LIMIT)
        assert not load.failed
        assert {name for _, _, name in load.done} == {"a", "b", "c"}
        # every server checked at least once: status shows the check results
        await _eventually(lambda: len(running.director.runner.records) == 3, 5)

        code, out = await _cli(capsys, "status", "--api", str(running.unix))
        assert code == 0, out
        assert f"tcp:{HOST}:{vport}" in out and "router test-director" in out
        for s in servers:
            line = next(x for x in out.splitlines() if f"{HOST}:{s.port} " in x)
            assert " up " in line and "weight 1/1" in line and "TCP_CHECK ok" in line

        code, out = await _cli(capsys, "ipvs", "-Ln", "--api", str(running.unix))
        assert code == 0, out
        lines = out.splitlines()
        assert lines[0].startswith("IP Virtual Server version")
        assert f"TCP  {HOST}:{vport} rr" in lines
        dests = sorted(x.split()[1] for x in lines if x.startswith("  -> ") and "Masq" in x)
        assert dests == sorted(f"{HOST}:{s.port}" for s in servers)

        # the metrics carry real counters: checks, latency, IPVS traffic
        async with running.client() as api:
            text = await api.get_text("/metrics")
        vs = format_vs(_key(vport))
        assert f'hactl_real_server_up{{vs="{vs}",rs="{HOST}:{servers[0].port}"}} 1' in text
        ok = [x for x in text.splitlines() if x.startswith("hactl_check_results_total")
              and 'result="success"' in x]
        assert len(ok) == 3 and all(float(x.rsplit(" ", 1)[1]) >= 1 for x in ok)
        count = [x for x in text.splitlines()
                 if x.startswith("hactl_check_latency_seconds_count")]
        assert len(count) == 3
        conns = next(x for x in text.splitlines()
                     if x.startswith("hactl_ipvs_service_connections_total"))
        assert float(conns.rsplit(" ", 1)[1]) >= len(load.done)


@pytest.mark.asyncio
async def test_drain_under_load_loses_nothing_and_sends_no_new_connection(
        tmp_path: Path) -> None:
    vport = _free_port()
    async with _servers("a", "b", "c") as servers, \
            _daemon(tmp_path, _config(vport, servers)) as running:
        target = servers[1]
        vs = _key(vport)
        load = Load(vport)
        async with load.running():
            await _eventually(lambda: len(load.done) >= 30, LOAD_LIMIT)
            # Connections in flight on the target when the drain starts: held open by the
            # server, so the drain has to wait for them.
            target.hold.clear()
            await _eventually(lambda: len(target.accepted) >= 1 and any(
                t > asyncio.get_running_loop().time() - 0.5 for t in target.accepted[-1:]), 5)
            held_since = asyncio.get_running_loop().time()
            await _eventually(lambda: any(
                d.dest.port == target.port and d.activeconns > 0
                for d in running.director.ipvs_status()[0].dests), 5)
            async with running.client() as api:
                path = real_server_path(vs, (IPv4Address(HOST), target.port)) + "/drain"
                updates: list[dict[str, Any]] = []
                loop = asyncio.get_running_loop()
                started_at: float | None = None
                async for update in api.stream(path, {"wait": True, "timeout": DRAIN_TIMEOUT}):
                    if started_at is None:
                        started_at = loop.time()  # quiesced before the first update
                        assert update["connections"]["active"] >= 1
                        # let the held requests finish after the drain started
                        loop.call_later(0.5, target.hold.set)
                    updates.append(update)
            before = len(load.done)
            await _eventually(lambda: len(load.done) >= before + 30, LOAD_LIMIT)
        assert started_at is not None and started_at > held_since
        final = updates[-1]
        assert final["event"] == "finished" and final["removed"] is True, updates
        # The held connections finished while the drain watched: ActiveConn fell to 0.
        # InActConn (TIME_WAIT entries, 120 s as in the kernel) ends the drain at its
        # deadline unless they expire first; either way the server leaves IPVS.
        assert final["outcome"] in ("drained", "timed_out")
        assert final["connections"]["active"] == 0
        assert updates[0]["connections"]["active"] >= 1
        assert not load.failed, load.failed[:5]
        # no request opened after the drain started was answered by the target, and the
        # target accepted no connection after it (the held ones were accepted before)
        late = [(t, name) for t, _, name in load.done if t > started_at and name == target.name]
        assert late == []
        assert all(t < started_at for t in target.accepted)
        assert {name for t, _, name in load.done if t > started_at} == {"a", "c"}
        # the override survives in the state file
        assert '"disable"' in (tmp_path / "state.json").read_text()
        status = running.director.api.virtual_servers()[0]  # type: ignore[union-attr]
        server = status.real_server((IPv4Address(HOST), target.port))
        assert server is not None and not server.in_ipvs and server.override is not None


@pytest.mark.asyncio
async def test_drain_with_expire_templates_moves_persistent_clients(tmp_path: Path) -> None:
    vport = _free_port()
    sources = tuple(f"127.0.1.{i}" for i in range(1, 7))
    async with _servers("a", "b", "c") as servers, \
            _daemon(tmp_path, _config(vport, servers,
                                      vs_extra="    persistence_timeout 60\n")) as running:
        load = Load(vport, sources=sources, fresh_ports=True)
        async with load.running():
            await _eventually(lambda: len(load.done) >= 60, LOAD_LIMIT)
            # persistence: each client always reaches the same server
            sticky: dict[str, set[str]] = {}
            for _, source, name in load.done:
                sticky.setdefault(source, set()).add(name)
            assert all(len(names) == 1 for names in sticky.values()), sticky
            target_name = next(iter(sticky[sources[0]]))
            target = next(s for s in servers if s.name == target_name)
            async with running.client() as api:
                path = real_server_path(_key(vport), (IPv4Address(HOST), target.port))
                started_at = asyncio.get_running_loop().time()
                first = await api.send("POST", path + "/drain",
                                       {"expire_templates": True, "timeout": DRAIN_TIMEOUT})
                answered_at = asyncio.get_running_loop().time()
                assert first["event"] in ("progress", "finished")
                await _eventually(
                    lambda: running.director.api is not None and (
                        running.director.api.operations.drain_state(
                            _key(vport), (IPv4Address(HOST), target.port)) is not None)
                    and getattr(running.director.api.operations.drain_state(
                        _key(vport), (IPv4Address(HOST), target.port)), "outcome", None)
                    is not None, 20)
            before = len(load.done)
            await _eventually(lambda: len(load.done) >= before + 60, LOAD_LIMIT)
        assert not load.failed, load.failed[:5]
        after = [(t, source, name) for t, source, name in load.done if t > answered_at]
        assert after
        late = [(round(t - answered_at, 4), source) for t, source, name in after
                if name == target_name]
        assert late == [], (late, target.accepted[-3:], answered_at)
        # the target's own persistent clients were rescheduled to the others
        moved = {name for _, source, name in after if source in
                 {s for s, names in sticky.items() if target_name in names}}
        assert moved and target_name not in moved
        assert all(t < answered_at for t in target.accepted[-1:]) or not target.accepted
        assert started_at < answered_at


@pytest.mark.asyncio
async def test_reload_under_load_keeps_health_and_vrrp_and_loses_nothing(
        tmp_path: Path) -> None:
    vport = _free_port()
    vrrp = """
vrrp_instance VI_1 {
    state BACKUP
    interface lo
    virtual_router_id 52
    priority 100
    version 3
    advert_int 0.1
    unicast_src_ip 127.0.0.71
    unicast_peer {
        127.0.0.72
    }
    virtual_ipaddress {
        127.0.0.170/32
    }
}
"""
    addresses = InMemoryAddressPort({"lo": ()})
    ports = VrrpPorts(addresses=addresses,
                      neighbours=RecordingNeighbourPort(),
                      channels=UdpChannelFactory(port=_free_port(socket.SOCK_DGRAM)),
                      transport="udp-dev")
    conf = tmp_path / "hactl.conf"
    async with _servers("a", "b", "new") as servers:
        conf.write_text(_config(vport, servers[:2], extra=vrrp))

        def loader() -> Loaded:
            return parse_text(conf.read_text(), path=str(conf))

        with structlog.testing.capture_logs() as logs:
            async with _daemon(tmp_path, conf.read_text(), loader=loader,
                               vrrp_ports=ports) as running:
                director = running.director
                await _eventually(
                    lambda: director.vrrp_states().get("VI_1") is VrrpState.MASTER, 5)
                assert running.director.api is not None
                api_port = running.director.api
                transitions_before = api_port.vrrp_instances()[0].transitions
                vs = _key(vport)
                core = director.runner.core(vs)
                trackers = list(core.trackers())
                assert all(t.up for t in trackers)
                load = Load(vport)
                async with load.running(), running.client() as api:
                    await _eventually(lambda: len(load.done) >= 30, LOAD_LIMIT)
                    mark = len(logs)
                    same = await api.send("POST", "/api/v1/reload", {})
                    assert same["ok"] and same["changes"] == []
                    await _eventually(lambda: len(load.done) >= 60, LOAD_LIMIT)
                    conf.write_text(_config(vport, servers, extra=vrrp))
                    dry = await api.send("POST", "/api/v1/reload", {"dry_run": True})
                    assert dry["ok"] and dry["dry_run"]
                    assert [(c["action"], c["subject"]) for c in dry["changes"]] == [
                        ("add", f"real_server {format_vs(vs)} {HOST}:{servers[2].port}")]
                    assert len(director.derived.table.services[0].destinations) == 2
                    added = await api.send("POST", "/api/v1/reload", {})
                    assert added["ok"] and not added["dry_run"]
                    assert added["changes"] == dry["changes"]
                    await _eventually(
                        lambda: {n for _, _, n in load.done[-30:]} == {"a", "b", "new"},
                        LOAD_LIMIT)
                    # a VRRP change is planned, then applied in place: the router is
                    # kept (no transition), the next advert carries the new priority
                    conf.write_text(_config(vport, servers, extra=vrrp.replace(
                        "priority 100", "priority 120").replace(
                        "127.0.0.170/32", "127.0.0.171/32")))
                    vrrp_plan = await api.send("POST", "/api/v1/reload", {"dry_run": True})
                    assert [(c["action"], c["subject"], c["detail"])
                            for c in vrrp_plan["changes"]] == [
                        ("change", "vrrp_instance VI_1",
                         "priority 100 -> 120, vips +127.0.0.171/32 -127.0.0.170/32")]
                    router = director.vrrp.routers["VI_1"]
                    assert IPv4Interface("127.0.0.170/32") in addresses.links["lo"]
                    applied = await api.send("POST", "/api/v1/reload", {})
                    assert applied["ok"] and applied["changes"] == vrrp_plan["changes"]
                    assert director.vrrp.routers["VI_1"] is router
                    assert router.effective_priority == 120
                    # the VIPs follow on the master: the new one added, the dropped removed
                    held = addresses.links["lo"]
                    assert IPv4Interface("127.0.0.171/32") in held
                    assert IPv4Interface("127.0.0.170/32") not in held
                    text = await api.get_text("/metrics")
                assert not load.failed, load.failed[:5]
                # the VRRP metrics come from the running router
                lines = text.splitlines()
                assert any(x.startswith("hactl_vrrp_state{") and 'instance="VI_1"' in x
                           and 'state="MASTER"' in x and x.endswith(" 1") for x in lines)
                sent = next(x for x in lines if x.startswith("hactl_vrrp_adverts_sent_total{"))
                assert float(sent.rsplit(" ", 1)[1]) >= 1
                # health state kept: the same core and trackers, never down
                assert director.runner.core(vs) is core
                assert all(any(t is u for u in core.trackers()) for t in trackers)
                assert all(t.up for t in trackers)
                assert director.vrrp_states() == {"VI_1": VrrpState.MASTER}
                transitions = api_port.vrrp_instances()[0].transitions
        after = logs[mark:]
        events = [e["event"] for e in after]
        assert events.count("config.reloaded") == 3
        assert "vrrp.state_changed" not in events[:events.index("daemon.stopping")]
        assert not [e for e in after if e["event"] in ("check.health_changed",
                                                         "ipvs.dest_removed")
                    and events.index("daemon.stopping") > after.index(e)]
        assert transitions == transitions_before  # nothing during the reloads


@pytest.mark.asyncio
async def test_tcp_api_requires_the_token_for_mutations(tmp_path: Path) -> None:
    vport = _free_port()
    async with _servers("a") as servers, \
            _daemon(tmp_path, _config(vport, servers), tcp=True) as running:
        assert running.tcp_port is not None
        base = f"http://{HOST}:{running.tcp_port}"
        path = real_server_path(_key(vport), (IPv4Address(HOST), servers[0].port))
        async with aiohttp.ClientSession() as session:
            async with session.post(base + path + "/disable") as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                body = await response.json()
                assert body["error"]["code"] == "unauthorized"
            async with session.get(base + "/api/v1/virtual-servers") as response:
                assert response.status == 200  # reads are open
        assert running.director.overrides == {}
        async with ApiClient(base, token=TOKEN) as api:
            with pytest.raises(ApiError) as unknown:
                await api.send("POST", real_server_path(
                    _key(vport), (IPv4Address("127.0.0.9"), 1)) + "/disable", {})
            assert unknown.value.status == 404
            with pytest.raises(ApiError) as bad:
                await api.send("PUT", path + "/weight", {"weight": "heavy"})
            assert bad.value.status == 400
            await api.send("POST", path + "/disable", {})
        assert list(running.director.overrides) == [
            (_key(vport), (IPv4Address(HOST), servers[0].port))]


@pytest.mark.asyncio
@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
async def test_status_page_drain_button_shows_up_in_hactl_ipvs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The status page's own script (run in Node with a minimal DOM, as in the API's tests)
    against the real daemon: its drain button takes the server out of the IPVS table."""
    from hactl.api.server import STATIC_DIR

    harness = REPO / "tests" / "shell" / "api" / "status_page_harness.js"
    vport = _free_port()
    async with _servers("a", "b") as servers, \
            _daemon(tmp_path, _config(vport, servers), tcp=True) as running:
        target = f"{HOST}:{servers[0].port}"
        url = f"http://{HOST}:{running.tcp_port}"
        proc = await asyncio.create_subprocess_exec(
            "node", str(harness), str(STATIC_DIR / "status.js"), url, TOKEN, "drain", target,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        assert proc.returncode == 0, err.decode()
        page = json.loads(out)
        assert page["error"] == ""
        before = [row for row in page["before"] if row and row[0] == target]
        assert before and before[0][1] == "up"
        code, text = await _cli(capsys, "ipvs", "-Ln", "--api", str(running.unix))
        assert code == 0
        # no connections: the drain finished at once and removed the server
        assert target not in text and f"{HOST}:{servers[1].port}" in text
        assert running.director.overrides[(_key(vport), (IPv4Address(HOST), servers[0].port))]
