"""A small Chrome DevTools Protocol client for end-to-end tests of the status page.

Headless Chromium is started as a process with `--remote-debugging-port=0`; the port it picked
is read from `<user-data-dir>/DevToolsActivePort`, the page target's websocket from
`/json/list`, and the protocol is spoken over aiohttp's websocket client: no new dependency.
Everything is bounded in time; the browser's whole process group is ended on exit.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["CdpError", "Page", "chromium_path", "launch_chromium", "open_page"]

# The flags this machine's closed network needs (no background connections), headless.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-port=0", "--window-size=1280,900",
)


class CdpError(Exception):
    """A protocol error answer, or an exception thrown by evaluated JavaScript."""


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    return None


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.asynccontextmanager
async def launch_chromium(binary: str, workdir: Path, *, limit: float = 20) -> AsyncIterator[int]:
    """Start headless Chromium with a fresh profile under `workdir`; yields its debugging
    port. Its output goes to `workdir/chromium.log`."""
    profile = workdir / "chromium-profile"
    profile.mkdir(parents=True)
    log = workdir / "chromium.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank",
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)  # its own process group: renderers and zygote end with it
    try:
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + limit
        port = None
        while port is None:
            if proc.returncode is not None:
                raise RuntimeError(f"chromium exited with {proc.returncode}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"chromium wrote no DevToolsActivePort:\n{_tail(log)}")
            with contextlib.suppress(FileNotFoundError):
                first = active.read_text().split("\n", 1)[0].strip()
                port = int(first) if first.isdigit() else None
            if port is None:
                await asyncio.sleep(0.05)
        yield port
    finally:
        # The whole group, also renderers that outlive the browser process.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
                break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


class Page:
    """One page target's CDP session: commands, events, and the few page actions the
    tests need (evaluate, wait for a condition, type, click, screenshot)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._handlers: dict[str, list[Callable[[dict[str, Any]], None]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.exceptions: list[str] = []  # uncaught exceptions in the page's scripts
        self.dialogs: list[dict[str, Any]] = []  # alert/confirm/prompt the page opened
        self.prompt_text = ""  # the answer to a prompt() dialog
        self._reader = asyncio.create_task(self._read(), name="cdp-reader")
        self.on("Runtime.exceptionThrown", self._exception)
        self.on("Page.javascriptDialogOpening", self._dialog)

    def on(self, event: str, handler: Callable[[dict[str, Any]], None]) -> None:
        self._handlers.setdefault(event, []).append(handler)

    async def _read(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if "id" in data:
                    future = self._pending.pop(data["id"], None)
                    if future is not None and not future.done():
                        future.set_result(data)
                else:
                    for handler in self._handlers.get(data.get("method", ""), []):
                        handler(data.get("params", {}))
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(CdpError("the DevTools connection closed"))
            self._pending.clear()

    async def send(self, method: str, *, limit: float = 10, **params: Any) -> dict[str, Any]:
        """Send a command and return its result; CdpError on an error answer."""
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self._ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        async with asyncio.timeout(limit):
            answer = await future
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    def _exception(self, params: dict[str, Any]) -> None:
        details = params.get("exceptionDetails", {})
        exc = details.get("exception", {})
        self.exceptions.append(exc.get("description") or details.get("text", "?"))

    def _dialog(self, params: dict[str, Any]) -> None:
        # The page waits for the answer, so answer at once: accept, with prompt_text for a
        # prompt (the token, say). Sent from a task: the reader must keep reading.
        self.dialogs.append(params)
        answer: dict[str, Any] = {"accept": True}
        if params.get("type") == "prompt":
            answer["promptText"] = self.prompt_text
        task = asyncio.create_task(self.send("Page.handleJavaScriptDialog", **answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited); CdpError if it throws."""
        result = await self.send("Runtime.evaluate", expression=expression,
                                 returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"{expression!r} threw: {text}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, *, limit: float = 10, what: str = "",
                       show: str | None = None) -> Any:
        """Poll until the expression is truthy; its value. The TimeoutError says the last
        value, or that of the expression `show` (what the page showed instead)."""
        deadline = time.monotonic() + limit
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                if show is not None:
                    value = await self.evaluate(show)
                raise TimeoutError(f"after {limit} s, still not {what or expression}: {value!r}")
            await asyncio.sleep(0.1)

    async def navigate(self, url: str, *, limit: float = 15) -> None:
        loaded = asyncio.get_running_loop().create_future()

        def done(_params: dict[str, Any]) -> None:
            if not loaded.done():
                loaded.set_result(None)

        self.on("Page.loadEventFired", done)
        result = await self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise CdpError(f"navigating to {url}: {result['errorText']}")
        async with asyncio.timeout(limit):
            await loaded
        self._handlers["Page.loadEventFired"].remove(done)

    async def _centre(self, selector: str) -> tuple[float, float]:
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect();"
            " return {x: r.x + r.width / 2, y: r.y + r.height / 2, w: r.width, h: r.height}; })()")
        if not box or not box["w"] or not box["h"]:
            raise CdpError(f"no visible element {selector!r}")
        return box["x"], box["y"]

    async def click(self, selector: str) -> None:
        """A real mouse click (press and release) in the middle of the element."""
        x, y = await self._centre(selector)
        await self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y,
                            button="left", buttons=1 if kind == "mousePressed" else 0,
                            clickCount=1)

    async def type_text(self, selector: str, text: str) -> None:
        """Click into the element and type `text`, then Tab out (so it sees `change`)."""
        await self.click(selector)
        await self.send("Input.insertText", text=text)
        for kind in ("keyDown", "keyUp"):
            await self.send("Input.dispatchKeyEvent", type=kind, key="Tab", code="Tab",
                            windowsVirtualKeyCode=9)

    async def screenshot(self, path: Path) -> bytes:
        result = await self.send("Page.captureScreenshot", format="png", limit=15)
        data = base64.b64decode(result["data"])
        await asyncio.to_thread(path.write_bytes, data)
        return data

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def open_page(port: int, *, limit: float = 10) -> AsyncIterator[Page]:
    """Attach to the browser's first page target, with the Page and Runtime domains on."""
    timeout = aiohttp.ClientTimeout(total=limit)
    async with aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + limit
        while True:
            async with session.get(base + "/json/list", timeout=timeout) as response:
                targets = await response.json(content_type=None)
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no page target in {targets}")
            await asyncio.sleep(0.1)
        # max_msg_size 0: screenshots arrive as one large message
        ws = await session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0,
                                      timeout=aiohttp.ClientWSTimeout(ws_close=5))
        page = Page(ws)
        try:
            await page.send("Page.enable")
            await page.send("Runtime.enable")
            yield page
        finally:
            await page.close()
