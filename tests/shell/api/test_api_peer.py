"""Override propagation between two directors' APIs: a drain on one shows on the other, and a
peer that was down converges once it answers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest

from hactl.api.client import ApiClient, real_server_path
from hactl.api.model import Override, OverrideKind
from hactl.api.peer import PeerLink
from hactl.api.testing import FakeDirector
from hactl.clock import LoopClock
from tests.shell.api.api_support import RS1, RS2, TOKEN, VS, make_director, serve

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio]


async def _until(predicate: Callable[[], bool]) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def _kind(director: FakeDirector, rs: tuple[object, int]) -> OverrideKind | None:
    override = director.server(VS, rs).override  # type: ignore[arg-type]
    return None if override is None else override.kind


async def test_a_drain_reaches_the_peer(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    links: list[PeerLink] = []
    async with serve(tmp_path / "b", unix=False, tcp=True) as b, \
            serve(tmp_path / "a", publish=lambda m: links[0].publish(m)) as a:
        link = PeerLink(a.operations.full_message, address=b.url, token=TOKEN,
                        clock=LoopClock(), retry_interval=0.05)
        links.append(link)
        task = asyncio.create_task(link.run())
        try:
            a.director.set_connections(VS, RS1, active=2, inactive=0)
            a.director.decay_per_read = 1
            async with ApiClient(str(a.socket_path)) as api:
                await api.send("POST", real_server_path(VS, RS1) + "/drain", {})
                await _until(lambda: _kind(b.director, RS1) is OverrideKind.DRAIN
                             or _kind(b.director, RS1) is OverrideKind.DISABLE)
                # The origin finishes the drain; the peer follows to "removed".
                await _until(lambda: _kind(b.director, RS1) is OverrideKind.DISABLE)
                await api.send("PUT", real_server_path(VS, RS2) + "/weight", {"weight": 4})
                await _until(lambda: b.director.server(VS, RS2).override
                             == Override(kind=OverrideKind.WEIGHT, weight=4))
                await api.send("POST", real_server_path(VS, RS1) + "/enable")
                await _until(lambda: _kind(b.director, RS1) is None)
            assert link.failures == 0
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_a_peer_that_was_down_gets_the_full_set(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    peer_socket = tmp_path / "b" / "api.sock"
    links: list[PeerLink] = []
    async with serve(tmp_path / "a", publish=lambda m: links[0].publish(m)) as a:
        link = PeerLink(a.operations.full_message, address=str(peer_socket), token=None,
                        clock=LoopClock(), retry_interval=0.05)
        links.append(link)
        task = asyncio.create_task(link.run())
        try:
            async with ApiClient(str(a.socket_path)) as api:
                await api.send("POST", real_server_path(VS, RS2) + "/disable")
            await _until(lambda: link.failures >= 2)  # nobody listens yet
            b_director = make_director()
            async with serve(tmp_path / "b", director=b_director):
                await _until(lambda: _kind(b_director, RS2) is OverrideKind.DISABLE)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
