"""The data plane carries real connections where the table decides (rr, wrr, persistence).

Loopback only: named real servers on 127.0.0.1, the data plane listening on 127.0.0.1:port,
clients optionally bound to distinct 127.0.0.x source addresses.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.shell.ipvs.dataplane_support import (
    TABLE_KINDS,
    Clients,
    serving_plane,
    start_servers,
)

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.timeout(60),
    pytest.mark.parametrize("kind", TABLE_KINDS),
]


async def _run_clients(port: int, count: int, *, sources: list[str] | None = None) -> list[str]:
    names = []
    clients = Clients()
    try:
        for i in range(count):
            source = sources[i % len(sources)] if sources else None
            name, _, _ = await clients.greet(port, source=source)
            names.append(name)
    finally:
        await clients.aclose()
    return names


@pytest.mark.parametrize(
    ("scheduler", "weights", "count", "expected"),
    [
        ("rr", (1, 1, 1), 30, {"a": 10, "b": 10, "c": 10}),
        ("wrr", (3, 2, 1), 60, {"a": 30, "b": 20, "c": 10}),
    ],
)
async def test_distribution_matches_table_decisions(
    kind: str, scheduler: str, weights: tuple[int, ...], count: int, expected: dict[str, int]
) -> None:
    servers = await start_servers(["a", "b", "c"])
    by_port = {s.port: s.name for s in servers}
    plane, table, svc = serving_plane(
        kind, [(s.port, w) for s, w in zip(servers, weights, strict=True)], scheduler=scheduler
    )
    vport = svc.key.port
    try:
        plane.apply([svc])
        names = await _run_clients(vport, count)
        decided = [by_port[dest[1]] for _, dest in table.decisions]
        assert names == decided  # connection by connection, the socket went where decided
        assert Counter(names) == expected
    finally:
        plane.close()
        for s in servers:
            await s.stop()


async def test_persistence_keeps_each_client_on_one_server(kind: str) -> None:
    servers = await start_servers(["a", "b", "c"])
    by_port = {s.port: s.name for s in servers}
    plane, table, svc = serving_plane(kind, [(s.port, 1) for s in servers], persistence_timeout=300)
    vport = svc.key.port
    sources = [f"127.0.0.{i}" for i in range(2, 8)]
    try:
        plane.apply([svc])
        names = await _run_clients(vport, 5 * len(sources), sources=sources)
        per_source: dict[str, set[str]] = {}
        for i, name in enumerate(names):
            per_source.setdefault(sources[i % len(sources)], set()).add(name)
        assert all(len(v) == 1 for v in per_source.values()), per_source
        # The six sources were spread by rr across the three servers (two each).
        assert Counter(next(iter(v)) for v in per_source.values()) == {"a": 2, "b": 2, "c": 2}
        assert [by_port[d[1]] for _, d in table.decisions] == names
    finally:
        plane.close()
        for s in servers:
            await s.stop()
