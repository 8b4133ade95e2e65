"""The status page in a real browser (issue 8): `python -m hactl run` with its API on TCP
127.0.0.1 and a token file, the loopback demo config and demo real servers as processes,
and headless Chromium driven over the DevTools protocol (tests/integration/cdp.py).

A drain clicked in the page must show up in the page and in `hactl ipvs -Ln`: the drained
server quiesced at weight 0 (it served clients first, so its drain is still waiting for their
connection entries); the others keep their weights and take every new connection. Without
the token the page reports the refusal and nothing changes. A screenshot of the page is
left in the test's tmp_path for whoever debugs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.integration.cdp import Page, chromium_path, launch_chromium, open_page
from tests.integration.demo_support import REPO, SERVERS, VIP
from tests.integration.demo_support import env as _env
from tests.integration.demo_support import events as _events
from tests.integration.demo_support import get as _get
from tests.integration.demo_support import hactl as _hactl

CHROMIUM = chromium_path()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(60),
    pytest.mark.skipif(CHROMIUM is None,
                       reason="needs Chromium for the browser test (apt-get install chromium)"),
]

VS = f"{VIP[0]}:{VIP[1]}"
TARGET = f"{SERVERS[1][0]}:{SERVERS[1][1]}"  # web2, the server the page drains
OTHERS = [f"{h}:{p}" for h, p, _ in SERVERS if f"{h}:{p}" != TARGET]


# Every real server row as [server, health, weight, active, inactive, persistent, check,
# override], keyed by the server's id.
ROWS_JS = """Object.fromEntries([...document.querySelectorAll('#servers tr[data-rs]')].map(
    r => [r.dataset.rs, [...r.cells].slice(0, 8).map(c => c.textContent.trim())]))"""


def _ipvs_weights(text: str) -> dict[str, int]:
    """`hactl ipvs -Ln` -> {RIP:PORT: weight} for the demo's virtual server."""
    lines = text.splitlines()
    head = f"TCP  {VS} rr"
    assert head in lines, text
    weights: dict[str, int] = {}
    for line in lines[lines.index(head) + 1:]:
        if not line.startswith("  ->"):
            break
        fields = line.split()
        weights[fields[1]] = int(fields[3])
    return weights


async def _ipvs(api: str) -> dict[str, int]:
    table = await asyncio.to_thread(_hactl, "ipvs", "-Ln", "--api", api)
    assert table.returncode == 0, table.stderr
    return _ipvs_weights(table.stdout)


@asynccontextmanager
async def _daemon(tmp_path: Path, token: str) -> AsyncIterator[str]:
    """`hactl run` on the demo config, its API on TCP 127.0.0.1 (any port); yields the
    API's base URL once the daemon has started."""
    token_file = tmp_path / "api-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    log = tmp_path / "hactl.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hactl", "run", "--api", "tcp:127.0.0.1:0",
            "--api-token-file", str(token_file), "--state-file",
            str(tmp_path / "overrides.json"), "-f", "etc/demo-loopback.conf",
            "--backend", "embedded", "--log-format", "json",
            cwd=REPO, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=out)
    try:
        deadline = time.monotonic() + 15
        while True:
            events = _events(log)
            names = [e["event"] for e in events]
            if "daemon.started" in names:
                break
            assert proc.returncode is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.05)
        listening = [e for e in events if e["event"] == "api.listening"]
        assert listening and listening[0]["tcp"], log.read_text()
        yield "http://" + listening[0]["tcp"]
        proc.terminate()  # SIGTERM: a clean stop, exit status 0
        assert await asyncio.wait_for(proc.wait(), 10) == 0, log.read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _drive_page(page: Page, api: str, token: str) -> None:
    await page.navigate(api + "/")
    # rendered from the API: the virtual server and its three real servers, healthy, in IPVS
    # at their configured weight, with the page's own buttons
    rows = await page.wait_for(
        f"(() => {{ const rows = {ROWS_JS}; return Object.keys(rows).length === 3 &&"
        " Object.values(rows).every(r => r[1] === 'up' && r[2] === '1/1') && rows; })()",
        what="three healthy real servers at weight 1/1", show=ROWS_JS)
    assert sorted(rows) == sorted(f"{h}:{p}" for h, p, _ in SERVERS)
    heading = await page.evaluate("document.querySelector('#servers tr.vs').textContent")
    assert heading.startswith(f"tcp:{VS}") and "rr" in heading, heading
    assert "IPVS" in await page.evaluate("document.getElementById('meta').textContent")
    assert await _ipvs(api) == {rs: 1 for rs in rows}

    # Every server serves clients first: each then holds connection entries (TIME_WAIT,
    # InActConn, kept 120 s by the demo's `lvs_timeouts tcpfin 120`), so the drain below
    # cannot finish during the test: the server stays quiesced at weight 0.
    served = await asyncio.to_thread(lambda: {_get(*VIP) for _ in range(6)})
    assert served == {name for _, _, name in SERVERS}
    await page.wait_for(f"(() => {{ const r = {ROWS_JS}[{json.dumps(TARGET)}];"
                        " return r && Number(r[4]) > 0; })()",
                        what=f"inactive connections of {TARGET} shown", show=ROWS_JS)

    drain = f'#servers tr[data-rs="{TARGET}"] button[data-op="drain"]'
    # No token yet: the API refuses, the page says so, and nothing changes.
    await page.click(drain)
    error = await page.wait_for("document.getElementById('error').textContent",
                                what="an error shown for the drain without a token")
    assert error.startswith(f"drain {TARGET}: "), error
    assert "token" in error, error
    assert await _ipvs(api) == {rs: 1 for rs in rows}

    # With the token typed into the page's token field, the same button drains.
    page.prompt_text = token  # should the page ever ask for it in a dialog
    await page.type_text("#token", token)
    assert await page.evaluate("sessionStorage.getItem('hactl-token')") == token
    await page.click(drain)
    await page.wait_for(
        f"(() => {{ const r = {ROWS_JS}[{json.dumps(TARGET)}];"
        " return r && r[2] === '0/1' && r[7] === 'drain'; })()",
        what=f"{TARGET} shown quiesced (weight 0/1, override drain)",
        show=f"[{ROWS_JS}, document.getElementById('error').textContent]")
    assert await page.evaluate("document.getElementById('error').textContent") == ""
    rows = await page.evaluate(ROWS_JS)
    for rs in OTHERS:
        assert rows[rs][1:3] == ["up", "1/1"] and rows[rs][7] == "", rows

    # `hactl ipvs -Ln`: quiesced, still listed (its connections drain), the others unchanged
    assert await _ipvs(api) == {TARGET: 0, **{rs: 1 for rs in OTHERS}}
    # the drained server takes no new connection
    served = await asyncio.to_thread(lambda: {_get(*VIP) for _ in range(6)})
    assert served == {name for h, p, name in SERVERS if f"{h}:{p}" != TARGET}


@pytest.mark.asyncio
async def test_drain_clicked_in_the_status_page_shows_up_in_hactl_ipvs(
        demo_servers: subprocess.Popen[bytes], tmp_path: Path) -> None:
    del demo_servers
    assert CHROMIUM is not None
    token = secrets.token_urlsafe(16)
    async with _daemon(tmp_path, token) as api, \
            launch_chromium(CHROMIUM, tmp_path) as port, open_page(port) as page:
        try:
            await _drive_page(page, api, token)
        except BaseException:
            with contextlib.suppress(Exception):  # what the page showed when it failed
                await page.screenshot(tmp_path / "status-page-failure.png")
            raise
        png = await page.screenshot(tmp_path / "status-page.png")
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
        assert (tmp_path / "status-page.png").read_bytes() == png
        assert page.exceptions == []  # the page's script threw nothing
