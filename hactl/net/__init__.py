"""Kernel networking behind narrow ports: `ports` (Protocols), `netlink` (pyroute2 adapter),
`macvlan` (the VRRP `use_vmac` macvlans, pyroute2 and /proc/sys).

`hactl.net.netlink` and `hactl.net.macvlan` are imported explicitly by the composition
root, so importing this package does not import pyroute2.
"""

from __future__ import annotations

from hactl.net.ports import AddressPort, LinkCache, NeighbourPort

__all__ = ["AddressPort", "LinkCache", "NeighbourPort"]
