"""The aiohttp app with a FakeDirector on a real unix socket and on TCP 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from hactl.api.client import ApiClient, ApiError, real_server_path
from hactl.api.director import UnknownServer
from hactl.api.model import OverrideKind, RsKey, format_rs
from hactl.api.overrides import OverrideStore, encode_message, load_state
from hactl.api.server import MAX_BODY, ApiServer, SocketInUse
from hactl.api.testing import sample_reload_plan
from hactl.ipvs.model import ServiceKey
from tests.shell.api.api_support import RS1, RS2, TOKEN, VS, VS_TEXT, make_director, serve

pytestmark = pytest.mark.timeout(60)

RS1_PATH = real_server_path(VS, RS1)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A directory any user may traverse, so a permission test fails on the socket's own
    mode and not on a private parent directory."""
    path = Path(tempfile.mkdtemp(prefix="hactl-api-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


# ---- unix socket -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_unix_socket_mode_and_reads(sock_dir: Path) -> None:
    async with serve(sock_dir) as h:
        assert h.socket_path is not None
        st = os.lstat(h.socket_path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert os.listdir(sock_dir) == ["api.sock"]  # no temporary name left behind
        async with ApiClient(str(h.socket_path)) as api:
            health = await api.get("/api/v1/health")
            assert health["status"] == "ok"
            servers = (await api.get("/api/v1/virtual-servers"))["virtual_servers"]
            assert servers[0]["id"] == VS_TEXT
            assert [rs["id"] for rs in servers[0]["real_servers"]] == [
                "10.0.1.2:80", "10.0.1.3:80", "10.0.1.4:80"]
            assert servers[0]["real_servers"][2]["health"] == "down"
            vrrp = (await api.get("/api/v1/vrrp/instances"))["instances"]
            assert vrrp[0]["state"] == "MASTER" and vrrp[0]["master_address"] == "10.0.0.2"
            # Mutating calls need no token on the unix socket.
            doc = await api.send("POST", RS1_PATH + "/disable")
            assert doc["override"]["kind"] == "disable" and doc["in_ipvs"] is False
    assert not (sock_dir / "api.sock").exists()  # removed at stop


@pytest.mark.asyncio
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another user")
async def test_unix_socket_refuses_other_users(sock_dir: Path) -> None:
    async with serve(sock_dir) as h:
        probe = (
            "import os, socket, sys\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            "try:\n"
            "    s.connect(sys.argv[1])\n"
            "except PermissionError:\n"
            "    sys.exit(42)\n"
            "sys.exit(0)\n"
        )
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", probe,
                                                    str(h.socket_path))
        assert await proc.wait() == 42
        # The same probe without dropping privileges connects: the refusal above is the mode.
        same_user = await asyncio.create_subprocess_exec(
            sys.executable, "-c", probe.replace("os.setgid(65534); os.setuid(65534)\n", ""),
            str(h.socket_path))
        assert await same_user.wait() == 0


@pytest.mark.asyncio
async def test_refuses_a_live_socket_and_replaces_a_stale_one(sock_dir: Path) -> None:
    async with serve(sock_dir) as h:
        assert h.socket_path is not None
        other = ApiServer(h.operations, unix_path=h.socket_path)
        with pytest.raises(SocketInUse):
            await other.start()
        # The live socket is untouched.
        async with ApiClient(str(h.socket_path)) as api:
            assert (await api.get("/api/v1/health"))["status"] == "ok"
    stale = sock_dir / "api.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(stale))
    dead.close()  # bound, never listening: a connect is refused, as after a crash
    async with serve(sock_dir), ApiClient(str(stale)) as api:
        assert (await api.get("/api/v1/health"))["status"] == "ok"
    nested = sock_dir / "run" / "hactl"
    async with serve(sock_dir) as h:
        server = ApiServer(h.operations, unix_path=nested / "api.sock")
        await server.start()  # a missing parent directory is created
        try:
            assert stat.S_IMODE(os.stat(nested / "api.sock").st_mode) == 0o600
        finally:
            await server.stop()
    nested.rmdir()
    nested.parent.rmdir()
    (sock_dir / "api.sock").write_text("not a socket")
    with pytest.raises(FileExistsError):
        async with serve(sock_dir):
            pass


# ---- TCP and authentication ------------------------------------------------------------


@pytest.mark.asyncio
async def test_tcp_requires_a_token_for_mutating_calls(sock_dir: Path) -> None:
    async with serve(sock_dir, unix=False, tcp=True) as h, aiohttp.ClientSession() as http:
        # Reads are open.
        async with http.get(h.url + "/api/v1/virtual-servers") as r:
            assert r.status == 200
        for method, path, body in (
            ("POST", RS1_PATH + "/drain", {}),
            ("POST", RS1_PATH + "/disable", {}),
            ("POST", RS1_PATH + "/enable", {}),
            ("PUT", RS1_PATH + "/weight", {"weight": 3}),
            ("DELETE", RS1_PATH + "/drain", None),
            ("POST", "/api/v1/reload", {"dry_run": True}),
            ("POST", "/api/v1/peer/overrides", {}),
        ):
            for headers in ({}, {"Authorization": "Bearer wrong"},
                            {"Authorization": f"Basic {TOKEN}"}):
                async with http.request(method, h.url + path, json=body, headers=headers) as r:
                    assert r.status == 401, (method, path, headers)
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
                    doc = await r.json()
                    assert doc["error"]["code"] == "unauthorized"
        assert h.director.calls == [] and h.director.reloads == []
        async with http.post(h.url + RS1_PATH + "/disable",
                             headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200
        assert h.director.calls[-1][3] is not None
        assert h.director.calls[-1][3].kind is OverrideKind.DISABLE


@pytest.mark.asyncio
async def test_tcp_listener_without_token_is_refused(sock_dir: Path) -> None:
    async with serve(sock_dir) as h:
        with pytest.raises(ValueError, match="token"):
            ApiServer(h.operations, unix_path=None, tcp=("127.0.0.1", 0))


@pytest.mark.asyncio
async def test_token_for_reads(sock_dir: Path) -> None:
    async with serve(sock_dir) as h:
        server = ApiServer(h.operations, unix_path=None, tcp=("127.0.0.1", 0), token=TOKEN,
                           token_for_reads=True)
        await server.start()
        try:
            url = f"http://127.0.0.1:{server.tcp_port}"
            async with aiohttp.ClientSession() as http:
                async with http.get(url + "/api/v1/virtual-servers") as r:
                    assert r.status == 401
                async with http.get(url + "/api/v1/health") as r:
                    assert r.status == 200  # liveness probes stay open
            async with ApiClient(url, token=TOKEN) as api:
                assert (await api.get("/api/v1/virtual-servers"))["virtual_servers"]
        finally:
            await server.stop()


# ---- bad input -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_bad_input_is_a_json_error(sock_dir: Path) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with serve(sock_dir, unix=False, tcp=True) as h, \
            aiohttp.ClientSession(headers=auth) as http:
        unknown_rs = f"/api/v1/virtual-servers/{VS_TEXT}/real-servers/10.9.9.9:80"
        cases = [
            ("POST", unknown_rs + "/drain", b"{}", 404, "not_found"),
            ("GET", unknown_rs, None, 404, "not_found"),
            ("GET", "/api/v1/virtual-servers/tcp:10.9.9.9:80", None, 404, "not_found"),
            ("POST", "/api/v1/virtual-servers/tcp:10.9.9.9:80/real-servers/10.0.1.2:80/enable",
             b"", 404, "not_found"),
            ("POST", RS1_PATH + "/drain", b"{not json", 400, "bad_request"),
            ("POST", RS1_PATH + "/drain", b"[1, 2]", 400, "bad_request"),
            ("POST", RS1_PATH + "/drain", b'{"timeout": "soon"}', 400, "bad_request"),
            ("POST", RS1_PATH + "/drain", b'{"timeout": -1}', 400, "bad_request"),
            ("POST", RS1_PATH + "/drain", b'{"timeout": NaN}', 400, "bad_request"),
            ("POST", RS1_PATH + "/drain", b'{"timeout": Infinity}', 400, "bad_request"),
            ("POST", RS1_PATH + "/drain", b'{"wait": 1}', 400, "bad_request"),
            ("PUT", RS1_PATH + "/weight", b"{}", 400, "bad_request"),
            ("PUT", RS1_PATH + "/weight", b'{"weight": 70000}', 400, "bad_request"),
            ("PUT", RS1_PATH + "/weight", b'{"weight": true}', 400, "bad_request"),
            ("POST", "/api/v1/virtual-servers/nonsense/real-servers/10.0.1.2:80/enable", b"",
             400, "bad_request"),
            ("POST", f"/api/v1/virtual-servers/{VS_TEXT}/real-servers/10.0.1.2/enable", b"",
             400, "bad_request"),
            ("POST", "/api/v1/reload", b'{"dry_run": "yes"}', 400, "bad_request"),
            ("POST", "/api/v1/peer/overrides", b'{"type": "x"}', 400, "bad_request"),
            ("GET", "/api/v1/ipvs/text?view=bogus", None, 400, "bad_request"),
            ("GET", "/api/v1/ipvs/text?format=bogus", None, 400, "bad_request"),
            ("GET", "/api/v1/nothing-here", None, 404, "not_found"),
            ("DELETE", "/api/v1/virtual-servers", None, 405, "method_not_allowed"),
            ("POST", RS1_PATH + "/drain", b"{" + b" " * MAX_BODY + b"}", 413, "body_too_large"),
        ]
        for method, path, body, status, code in cases:
            async with http.request(method, h.url + path, data=body) as r:
                assert r.status == status, (method, path, body and body[:40])
                assert r.content_type == "application/json"
                doc = await r.json()
                assert doc["error"]["code"] == code
                assert doc["error"]["status"] == status
                assert "Traceback" not in doc["error"]["message"]
                if status == 405:
                    assert r.headers["Allow"] == "GET,HEAD"
        assert h.director.calls == []


@pytest.mark.asyncio
async def test_director_bug_is_a_500_json_error(sock_dir: Path) -> None:
    director = make_director()

    def broken() -> None:
        raise RuntimeError("boom")

    director.vrrp_instances = broken  # type: ignore[method-assign,assignment]
    async with serve(sock_dir, director=director) as h, ApiClient(str(h.socket_path)) as api:
        with pytest.raises(ApiError) as info:
            await api.get("/api/v1/vrrp/instances")
        assert info.value.status == 500 and "boom" not in info.value.message


# ---- operations ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_weight_enable_and_persisted_overrides(sock_dir: Path) -> None:
    async with serve(sock_dir) as h, ApiClient(str(h.socket_path)) as api:
        doc = await api.send("PUT", real_server_path(VS, RS2) + "/weight", {"weight": 7})
        assert doc["effective_weight"] == 7 and doc["configured_weight"] == 2
        state = load_state(h.state_path, origin="lb1")
        assert state.active()[(VS, RS2)].weight == 7
        assert json.loads(h.published[-1])["entries"][0]["override"]["weight"] == 7
        overrides = (await api.get("/api/v1/overrides"))["overrides"]
        assert [(o["rs"], o["orphaned"]) for o in overrides] == [("10.0.1.3:80", False)]
        doc = await api.send("POST", real_server_path(VS, RS2) + "/enable")
        assert doc["override"] is None and doc["effective_weight"] == 2
        assert load_state(h.state_path, origin="lb1").active() == {}
        assert (await api.get("/api/v1/overrides"))["overrides"] == []


@pytest.mark.asyncio
async def test_drain_is_idempotent_and_finishes(sock_dir: Path) -> None:
    async with serve(sock_dir) as h, ApiClient(str(h.socket_path)) as api:
        h.director.set_connections(VS, RS1, active=2, inactive=1, persistent=3)
        first = await api.send("POST", RS1_PATH + "/drain", {"timeout": 30})
        assert first["event"] == "progress"
        assert h.director.server(VS, RS1).override is not None  # quiesced before the answer
        second = await api.send("POST", RS1_PATH + "/drain", {"timeout": 30})
        assert second["event"] == "progress"
        drains = [c for c in h.director.calls if c[3] is not None and
                  c[3].kind is OverrideKind.DRAIN]
        assert len(drains) == 1  # the second request started nothing
        status = await api.get(RS1_PATH)
        assert status["effective_weight"] == 0 and status["in_ipvs"] is True
        assert status["drain"]["event"] == "progress"
        h.director.set_connections(VS, RS1, active=0, inactive=0, persistent=0)
        for _ in range(200):
            state = await api.get(RS1_PATH + "/drain")
            if state["event"] == "finished":
                break
            await asyncio.sleep(0.02)
        assert state["outcome"] == "drained" and state["removed"] is True
        assert (await api.get(RS1_PATH))["in_ipvs"] is False
        again = await api.send("POST", RS1_PATH + "/drain", {})
        assert again["event"] == "finished" and again["outcome"] == "drained"
        entry = load_state(h.state_path, origin="lb1").get(VS, RS1)
        assert entry is not None and entry.override is not None
        assert entry.override.kind is OverrideKind.DISABLE
        assert entry.drain is not None and entry.drain.outcome is not None


@pytest.mark.asyncio
async def test_drain_with_persistent_clients_and_expired_templates(sock_dir: Path) -> None:
    async with serve(sock_dir) as h, ApiClient(str(h.socket_path)) as api:
        h.director.set_connections(VS, RS1, active=0, inactive=0, persistent=4)
        lines = [u async for u in api.stream(RS1_PATH + "/drain",
                                              {"wait": True, "expire_templates": True})]
        assert h.director.expired == [(VS, RS1)]
        assert lines[-1]["event"] == "finished" and lines[-1]["outcome"] == "drained"


@pytest.mark.asyncio
async def test_cancel_leaves_quiesced(sock_dir: Path) -> None:
    async with serve(sock_dir) as h, ApiClient(str(h.socket_path)) as api:
        h.director.set_connections(VS, RS1, active=5, inactive=0)
        await api.send("POST", RS1_PATH + "/drain", {})
        done = await api.send("DELETE", RS1_PATH + "/drain")
        assert done["outcome"] == "cancelled" and done["removed"] is False
        status = await api.get(RS1_PATH)
        assert status["override"]["kind"] == "drain" and status["effective_weight"] == 0
        with pytest.raises(ApiError) as info:
            await api.send("DELETE", RS1_PATH + "/drain")
        assert info.value.status == 404
        # A new drain after a cancel starts again.
        again = await api.send("POST", RS1_PATH + "/drain", {})
        assert again["event"] == "progress"


@pytest.mark.asyncio
async def test_enable_during_a_drain_cancels_it(sock_dir: Path) -> None:
    async with serve(sock_dir) as h, ApiClient(str(h.socket_path)) as api:
        h.director.set_connections(VS, RS1, active=5, inactive=0)
        await api.send("POST", RS1_PATH + "/drain", {})
        doc = await api.send("POST", RS1_PATH + "/enable")
        assert doc["override"] is None and doc["effective_weight"] == 1
        state = await api.get(RS1_PATH + "/drain")
        assert state["outcome"] == "cancelled"


@pytest.mark.asyncio
async def test_a_running_drain_resumes_after_restart(sock_dir: Path) -> None:
    director = make_director()
    director.set_connections(VS, RS1, active=3, inactive=0)
    async with serve(sock_dir, director=director) as h, ApiClient(str(h.socket_path)) as api:
        await api.send("POST", RS1_PATH + "/drain", {"timeout": 60})
        state_path = h.state_path
    # "Restart": a new Operations over the saved file, with the same (still busy) director.
    store = load_state(state_path, origin="lb1")
    director.set_connections(VS, RS1, active=0, inactive=0)
    async with serve(sock_dir, director=director, store=store) as h, \
            ApiClient(str(h.socket_path)) as api:
        await h.operations.resume()
        for _ in range(200):
            state = await api.get(RS1_PATH + "/drain")
            if state["event"] == "finished":
                break
            await asyncio.sleep(0.02)
        assert state["outcome"] == "drained"
        assert (await api.get(RS1_PATH))["override"]["kind"] == "disable"


@pytest.mark.asyncio
async def test_peer_message_applies_overrides(sock_dir: Path) -> None:
    peer = OverrideStore("lb2")
    from hactl.api.model import Override

    entry = peer.set(VS, RS2, Override(kind=OverrideKind.DRAIN), now=4_000_000_000.0)
    async with serve(sock_dir) as h, ApiClient(str(h.socket_path)) as api:
        doc = await api.send("POST", "/api/v1/peer/overrides",
                             json.loads(encode_message("lb2", [entry])))
        assert doc == {"changed": 1}
        assert h.director.server(VS, RS2).override == Override(kind=OverrideKind.DRAIN)
        # The same message again changes nothing (already merged).
        doc = await api.send("POST", "/api/v1/peer/overrides",
                             json.loads(encode_message("lb2", [entry])))
        assert doc == {"changed": 0}
        assert load_state(h.state_path, origin="lb1").get(VS, RS2) is not None


# ---- read endpoints --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_ipvs_views_metrics_status_page_and_openapi(sock_dir: Path) -> None:
    director = make_director()
    director.reload_result = sample_reload_plan()
    async with serve(sock_dir, director=director) as h, ApiClient(str(h.socket_path)) as api:
        services = (await api.get("/api/v1/ipvs/services"))["services"]
        assert [d["id"] for d in services[0]["destinations"]] == ["10.0.1.3:80", "10.0.1.2:80"]
        text = await api.get_text("/api/v1/ipvs/text", params={"view": "list"})
        assert text.splitlines()[3] == "TCP  10.0.0.1:80 wlc"
        assert await api.get_text("/api/v1/ipvs/text", params={"view": "timeout"}) == \
            "Timeout (tcp tcpfin udp): 900 120 300\n"
        assert (await api.get("/api/v1/sync")) == {"configured": False}
        conns = (await api.get("/api/v1/ipvs/connections"))["connections"]
        assert conns == [{"protocol": "TCP", "client": "192.0.2.7:40000",
                          "virtual": "10.0.0.1:80", "destination": "10.0.1.2:80",
                          "state": "ESTABLISHED", "expires_in": 899.5, "flags": 0,
                          "fwmark": 0}]
        metrics_text = await api.get_text("/metrics")
        assert 'hactl_real_server_up{vs="tcp:10.0.0.1:80",rs="10.0.1.4:80"} 0' in metrics_text
        page = await api.get_text("/")
        assert "/static/status.js" in page
        assert "drain" in await api.get_text("/static/status.js")
        assert (await api.get_text("/api/v1/openapi.yaml")).startswith("openapi: 3")
        dry = await api.send("POST", "/api/v1/reload", {"dry_run": True})
        assert dry["dry_run"] is True and len(dry["changes"]) == 2
        assert director.reloads == [True]
        rs = (await api.get(real_server_path(VS, RS1)))
        assert rs["id"] == format_rs(RS1) and rs["drain"] is None


def test_every_route_is_documented_in_openapi(tmp_path: Path) -> None:
    from hactl.api.operations import Operations
    from hactl.api.server import OPENAPI_PATH, make_app
    from hactl.clock import LoopClock

    ops = Operations(make_director(), OverrideStore("lb1"), clock=LoopClock(),
                     wall=lambda: 0.0, state_path=None)
    app = make_app(ops)
    spec = OPENAPI_PATH.read_text()
    documented = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/static"):
            continue
        assert f"\n  {path}:\n" in spec, path
        documented.add(path)
    assert "/api/v1/virtual-servers/{vs}/real-servers/{rs}/drain" in documented


@pytest.mark.asyncio
async def test_draining_a_disabled_server_does_not_put_it_back(sock_dir: Path) -> None:
    async with serve(sock_dir) as h, ApiClient(str(h.socket_path)) as api:
        await api.send("POST", RS1_PATH + "/disable")
        calls = len(h.director.calls)
        done = await api.send("POST", RS1_PATH + "/drain", {})
        assert done["event"] == "finished" and done["outcome"] == "drained"
        lines = [u async for u in api.stream(RS1_PATH + "/drain", {"wait": True})]
        assert [u["event"] for u in lines] == ["finished"]
        assert len(h.director.calls) == calls
        assert (await api.get(RS1_PATH))["in_ipvs"] is False


# ---- status page -------------------------------------------------------------------------


async def _run_page(url: str, token: str, action: str, rs: str) -> dict[str, object]:
    from hactl.api.server import STATIC_DIR

    harness = Path(__file__).with_name("status_page_harness.js")
    proc = await asyncio.create_subprocess_exec(
        "node", str(harness), str(STATIC_DIR / "status.js"), url, token, action, rs,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode()
    result: dict[str, object] = json.loads(out)
    return result


@pytest.mark.asyncio
@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
async def test_status_page_renders_and_its_drain_button_drains(sock_dir: Path) -> None:
    async with serve(sock_dir, unix=False, tcp=True) as h:
        h.director.set_connections(VS, RS1, active=4, inactive=1)
        # Without the token the page shows the API's error and nothing changes.
        page = await _run_page(h.url, "", "drain", "10.0.1.2:80")
        assert page["error"] == "drain 10.0.1.2:80: a valid bearer token is required"
        assert h.director.calls == []
        page = await _run_page(h.url, TOKEN, "drain", "10.0.1.2:80")
        before, after = page["before"], page["after"]
        assert isinstance(before, list) and isinstance(after, list)
        assert before[0] == [f"{VS_TEXT}  wlc"]
        assert before[1][:7] == ["10.0.1.2:80", "up", "1/1", "4", "1", "0", "TCP_CHECK ok 1.2 ms"]
        assert before[3][:3] == ["10.0.1.4:80", "down", "out/1"]
        assert after[1][:3] == ["10.0.1.2:80", "up", "0/1"] and after[1][7] == "drain"
        assert page["error"] == ""
        assert h.director.server(VS, RS1).override is not None
        # And `hactl ipvs` (the same table) shows the server quiesced.
        async with ApiClient(h.url) as api:
            text = await api.get_text("/api/v1/ipvs/text")
        assert any(line.split()[1:4] == ["10.0.1.2:80", "Masq", "0"]
                   for line in text.splitlines() if line.startswith("  ->"))


@pytest.mark.asyncio
async def test_a_failing_port_cancels_the_drain(sock_dir: Path) -> None:
    director = make_director()
    director.set_connections(VS, RS1, active=0, inactive=0)

    async def refuse(vs: object, rs: object) -> int:
        raise UnknownServer("removed by a reload")

    director.expire_templates = refuse  # type: ignore[method-assign]
    async with serve(sock_dir, director=director) as h, ApiClient(str(h.socket_path)) as api:
        lines = [u async for u in api.stream(RS1_PATH + "/drain",
                                              {"wait": True, "expire_templates": True})]
        assert lines[-1]["event"] == "finished" and lines[-1]["outcome"] == "cancelled"
        # The quiesce happened and is kept: the operator decides what comes next.
        assert (await api.get(RS1_PATH))["override"]["kind"] == "drain"
        # And a new drain runs (the failed one is over, not stuck "running"); with no
        # connections it completes before answering.
        again = await api.send("POST", RS1_PATH + "/drain", {})
        assert (again["event"], again["outcome"], again["removed"]) == ("finished", "drained", True)
        assert (await api.get(RS1_PATH))["in_ipvs"] is False


@pytest.mark.asyncio
async def test_stopping_ends_progress_streams_and_keeps_the_drain(sock_dir: Path) -> None:
    director = make_director()
    director.set_connections(VS, RS1, active=5, inactive=0)
    async with serve(sock_dir, director=director) as h:
        async with ApiClient(str(h.socket_path)) as api:
            stream = api.stream(RS1_PATH + "/drain", {"wait": True})
            first = await anext(stream)
            assert first["event"] == "progress"
            await h.operations.aclose()  # what the daemon does first at shutdown
            rest = [u async for u in stream]
            assert all(u["event"] == "progress" for u in rest)
        state_path = h.state_path
    entry = load_state(state_path, origin="lb1").get(VS, RS1)
    assert entry is not None and entry.drain is not None and entry.drain.outcome is None


@pytest.mark.asyncio
async def test_orphaned_overrides_are_listed_and_can_be_cleared(sock_dir: Path) -> None:
    from hactl.api.model import Override, parse_rs

    gone = parse_rs("10.0.1.99:80")
    store = OverrideStore("lb1")
    store.set(VS, gone, Override(kind=OverrideKind.DISABLE), now=1.0)
    async with serve(sock_dir, store=store) as h, ApiClient(str(h.socket_path)) as api:
        overrides = (await api.get("/api/v1/overrides"))["overrides"]
        assert [(o["rs"], o["orphaned"]) for o in overrides] == [("10.0.1.99:80", True)]
        path = real_server_path(VS, gone)
        with pytest.raises(ApiError) as info:  # only "enable" works on an orphan
            await api.send("POST", path + "/disable")
        assert info.value.status == 404
        doc = await api.send("POST", path + "/enable")
        assert doc == {"id": "10.0.1.99:80", "override": None, "orphaned": True}
        assert (await api.get("/api/v1/overrides"))["overrides"] == []
        assert h.director.calls == []
        with pytest.raises(ApiError) as info:  # and once cleared, it is unknown again
            await api.send("POST", path + "/enable")
        assert info.value.status == 404


@pytest.mark.asyncio
async def test_a_failed_removal_is_reported_to_watchers(sock_dir: Path) -> None:
    from hactl.api.model import Override

    director = make_director()
    # Enough connections that the drain finishes in its task, after the first answer.
    director.set_connections(VS, RS1, active=6, inactive=0)
    director.decay_per_read = 1
    original = director.set_override

    async def refuse_removal(vs: ServiceKey, rs: RsKey, override: Override | None) -> None:
        if override is not None and override.kind is OverrideKind.DISABLE:
            raise UnknownServer("removed by a reload")
        await original(vs, rs, override)

    director.set_override = refuse_removal  # type: ignore[method-assign]
    async with serve(sock_dir, director=director) as h, ApiClient(str(h.socket_path)) as api:
        lines = [u async for u in api.stream(RS1_PATH + "/drain", {"wait": True})]
        assert lines[0]["event"] == "progress"
        last = lines[-1]
        assert (last["event"], last["outcome"], last["removed"]) == ("finished", "drained", False)
        assert (await api.get(RS1_PATH))["override"]["kind"] == "drain"  # still quiesced
