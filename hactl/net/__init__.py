"""Kernel networking behind narrow ports: `ports` (Protocols), `netlink` (pyroute2 adapter).

`hactl.net.netlink` is imported explicitly by the composition root, so importing this
package does not import pyroute2.
"""

from __future__ import annotations

from hactl.net.ports import AddressPort, NeighbourPort

__all__ = ["AddressPort", "NeighbourPort"]
