"""Desired-state diff for IPVS: `plan(desired, actual)` -> the operations that close the gap.

Owns: the operation types (`AddService`, `EditService`, `DelService`, `AddDest`, `EditDest`,
`DelDest`) and the pure `plan()` function every change of the table goes through (reload,
health change, drain, restart), so that all of them take one path.

Invariants of a plan:
* idempotent: `plan(x, x) == ()`, and applying `plan(d, a)` to `a` yields `d` (up to the
  order of destinations already present, which is never disturbed);
* a service is added before its destinations and its destinations are deleted before it;
* within a kept service: deletions, then edits, then additions (in the desired add order,
  so a backend inserting at the list head ends with the kernel's newest-first order);
* services and destinations are identified by key only: `ServiceKey` and (address, port).

Pure: imports only the model; no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from hactl.ipvs.model import Destination, IPAddress, IpvsTable, ServiceKey, VirtualService

__all__ = [
    "AddDest",
    "AddService",
    "DelDest",
    "DelService",
    "EditDest",
    "EditService",
    "IpvsOp",
    "plan",
]


@dataclass(frozen=True, slots=True)
class AddService:
    """Create a service (its `destinations` are empty: they follow as `AddDest`)."""

    service: VirtualService


@dataclass(frozen=True, slots=True)
class EditService:
    """Change a service's scheduler, flags or persistence (destinations untouched)."""

    service: VirtualService


@dataclass(frozen=True, slots=True)
class DelService:
    key: ServiceKey


@dataclass(frozen=True, slots=True)
class AddDest:
    service: ServiceKey
    dest: Destination


@dataclass(frozen=True, slots=True)
class EditDest:
    """Change weight (0 = quiesce), forwarding method or thresholds of a destination."""

    service: ServiceKey
    dest: Destination


@dataclass(frozen=True, slots=True)
class DelDest:
    service: ServiceKey
    addr: IPAddress
    port: int


IpvsOp = AddService | EditService | DelService | AddDest | EditDest | DelDest


def _bare(svc: VirtualService) -> VirtualService:
    return dataclasses.replace(svc, destinations=())


def plan(desired: IpvsTable, actual: IpvsTable) -> tuple[IpvsOp, ...]:
    """The operations that turn `actual` into `desired`.

    Args:
        desired: the table computed from configuration, health and operator overrides.
        actual: the table read back from the backend (`IpvsBackend.dump()`).

    Returns:
        The operations in the order they must be applied; () when nothing differs.
    """
    ops: list[IpvsOp] = []
    wanted = {svc.key: svc for svc in desired.services}
    for svc in actual.services:
        if svc.key not in wanted:
            ops.extend(DelDest(svc.key, d.addr, d.port) for d in svc.destinations)
            ops.append(DelService(svc.key))
    for want in desired.services:
        have = actual.service(want.key)
        if have is None:
            ops.append(AddService(_bare(want)))
            ops.extend(AddDest(want.key, d) for d in want.destinations)
            continue
        if _bare(want) != _bare(have):
            ops.append(EditService(_bare(want)))
        want_dests = {d.key: d for d in want.destinations}
        have_dests = {d.key: d for d in have.destinations}
        ops.extend(
            DelDest(want.key, d.addr, d.port) for d in have.destinations if d.key not in want_dests
        )
        ops.extend(
            EditDest(want.key, d)
            for d in want.destinations
            if d.key in have_dests and have_dests[d.key] != d
        )
        ops.extend(AddDest(want.key, d) for d in want.destinations if d.key not in have_dests)
    return tuple(ops)
