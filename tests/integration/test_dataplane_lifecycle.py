"""Quiesce and removal of real servers under live proxied connections (loopback).

A quiesced server (weight 0) gets no new clients while its open transfers finish intact;
removing a server with expire_nodest_conn 1 closes its proxied connections, with 0 they
continue.
"""

from __future__ import annotations

import asyncio

import pytest

from hactl.ipvs.dataplane import DataPlaneSettings
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

BULK = 8 * 1024 * 1024


async def _setup(kind: str, expire_nodest_conn: int = 0):  # type: ignore[no-untyped-def]
    servers = await start_servers(["a", "b"])
    plane, table, svc = serving_plane(
        kind,
        [(s.port, 1) for s in servers],
        settings=DataPlaneSettings(tick_interval=0.05),
        expire_nodest_conn=expire_nodest_conn,
    )
    plane.apply([svc])
    return servers, svc, table, plane, svc.key.port


async def _bulk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, size: int) -> int:
    writer.write(f"BULK {size}\n".encode())
    await writer.drain()
    got = 0
    while chunk := await reader.read(1 << 16):
        got += len(chunk)
    return got


async def test_quiesced_server_gets_no_new_clients_but_open_transfers_finish(kind: str) -> None:
    servers, svc, table, plane, vport = await _setup(kind)
    a, _ = servers
    clients = Clients()
    try:
        open_conns = [await clients.greet(vport) for _ in range(4)]
        on_a = [c for c in open_conns if c[0] == "a"]
        assert len(on_a) == 2
        table.set_weight(svc.key, a.port, 0)  # quiesce a
        newcomers = [await clients.greet(vport) for _ in range(6)]
        assert {n for n, _, _ in newcomers} == {"b"}
        sizes = await asyncio.gather(*(_bulk(r, w, BULK) for _, r, w in on_a))
        assert sizes == [BULK, BULK]  # byte counts intact
        stats = plane.stats()
        assert stats.outcomes["closed_by_table"] == 0
        assert stats.bytes_down >= 2 * BULK
    finally:
        await clients.aclose()
        plane.close()
        for s in servers:
            await s.stop()


@pytest.mark.parametrize("expire_nodest_conn", [1, 0])
async def test_removed_server_connections_follow_expire_nodest_conn(
    kind: str, expire_nodest_conn: int
) -> None:
    servers, svc, table, plane, vport = await _setup(kind, expire_nodest_conn)
    a, _ = servers
    clients = Clients()
    try:
        conns = [await clients.greet(vport) for _ in range(4)]
        on_a = [(r, w) for n, r, w in conns if n == "a"]
        assert len(on_a) == 2
        table.remove_dest(svc.key, a.port)
        plane.apply([svc])  # reconcile: reaps the flows the table ended
        if expire_nodest_conn:
            for reader, writer in on_a:
                with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                    writer.write(b"NAME\n")
                    await writer.drain()
                    await reader.readexactly(2)
            assert plane.stats().outcomes["closed_by_table"] == 2
            await asyncio.sleep(0.05)
            assert a.open == 0  # the real-server legs were closed too
        else:
            for reader, writer in on_a:
                assert await _bulk(reader, writer, 1 << 20) == 1 << 20
            assert plane.stats().outcomes["closed_by_table"] == 0
        # New clients all go to the remaining server.
        assert {(await clients.greet(vport))[0] for _ in range(3)} == {"b"}
    finally:
        await clients.aclose()
        plane.close()
        for s in servers:
            await s.stop()


async def test_server_removed_mid_transfer_is_cut_and_counted(kind: str) -> None:
    servers, svc, table, plane, vport = await _setup(kind, expire_nodest_conn=1)
    a, _ = servers
    clients = Clients()
    try:
        while True:
            name, reader, writer = await clients.greet(vport)
            if name == "a":
                break
        writer.write(f"BULK {64 << 20}\n".encode())
        await writer.drain()
        got = len(await reader.read(1 << 16))
        table.remove_dest(svc.key, a.port)  # the tick reaps it within tick_interval
        with pytest.raises(ConnectionResetError):
            while chunk := await reader.read(1 << 16):
                got += len(chunk)
        assert 0 < got < 64 << 20
        assert plane.stats().outcomes["closed_by_table"] == 1
    finally:
        await clients.aclose()
        plane.close()
        for s in servers:
            await s.stop()
