"""Test support shared by the sync unit and shell tests: a connection entry factory."""

from __future__ import annotations

import ipaddress

from hactl.ipvs.model import AF_INET, SyncConn

V4 = ipaddress.IPv4Address


def conn(i: int = 0, **kw: object) -> SyncConn:
    """An ESTABLISHED IPv4 TCP entry from client 10.0.0.i:1024+i to 10.0.0.1:80 -> 10.0.1.2:80;
    `kw` overrides fields."""
    base: dict[str, object] = dict(
        family=AF_INET,
        protocol=6,
        flags=0x83,
        state=1,
        cport=1024 + i,
        vport=80,
        dport=80,
        fwmark=0,
        timeout=900,
        caddr=V4(0x0A000000 + i),
        vaddr=V4("10.0.0.1"),
        daddr=V4("10.0.1.2"),
    )
    base.update(kw)
    return SyncConn(**base)  # type: ignore[arg-type]
