"""IPVS: the desired-state model, the plan, the backends and the embedded engine.

The public names of the submodules are re-exported here and imported on first use
(PEP 562 `__getattr__`): importing `hactl.ipvs.model` (as config, checks and sync do) must
not pull in the engine, and a submodule importing `hactl.ipvs` while the package is being
initialised must not find half of it missing. `hactl.ipvs.kernel` (the pyroute2 adapter) is
deliberately not re-exported: only the composition root imports it, by its module name. The
diff function is `hactl.ipvs.plan.plan`: the name `plan` here is the submodule.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hactl.ipvs.backend import IpvsBackend
    from hactl.ipvs.engine import (
        Action,
        Dest,
        EngineOptions,
        IpvsEngine,
        PacketInfo,
        Service,
        SyncApplied,
        Verdict,
    )
    from hactl.ipvs.events import (
        ConnExpired,
        DefenseChanged,
        DestFreed,
        ExpiryReason,
        IpvsEvent,
        SyncConnNeeded,
    )
    from hactl.ipvs.ipvsadm import (
        ListFormat,
        SyncDaemonStatus,
        list_all,
        list_conn,
        list_daemon,
        list_service,
        list_timeout,
        save,
    )
    from hactl.ipvs.model import (
        AF_INET,
        AF_INET6,
        ConnStatus,
        Destination,
        DestStatus,
        FwdMethod,
        IPAddress,
        IpProto,
        IpvsSysctl,
        IpvsTable,
        IpvsTimeouts,
        Rates,
        ServiceKey,
        ServiceStatus,
        Stats,
        SyncConn,
        VirtualService,
    )
    from hactl.ipvs.plan import (
        AddDest,
        AddService,
        DelDest,
        DelService,
        EditDest,
        EditService,
        IpvsOp,
    )
    from hactl.ipvs.schedulers import (
        SCHEDULER_NAMES,
        SchedDest,
        SchedPacket,
        SchedPacketLike,
        Scheduler,
        make_scheduler,
    )
    from hactl.ipvs.userspace import UserspaceIpvs

# Public name -> the submodule that defines it.
_EXPORTS: dict[str, str] = {
    # backend port and adapters
    "IpvsBackend": "backend",
    "UserspaceIpvs": "userspace",
    # engine
    "Action": "engine",
    "Dest": "engine",
    "EngineOptions": "engine",
    "IpvsEngine": "engine",
    "PacketInfo": "engine",
    "Service": "engine",
    "SyncApplied": "engine",
    "Verdict": "engine",
    # events
    "ConnExpired": "events",
    "DefenseChanged": "events",
    "DestFreed": "events",
    "ExpiryReason": "events",
    "IpvsEvent": "events",
    "SyncConnNeeded": "events",
    # ipvsadm views
    "ListFormat": "ipvsadm",
    "SyncDaemonStatus": "ipvsadm",
    "list_all": "ipvsadm",
    "list_conn": "ipvsadm",
    "list_daemon": "ipvsadm",
    "list_service": "ipvsadm",
    "list_timeout": "ipvsadm",
    "save": "ipvsadm",
    # model
    "AF_INET": "model",
    "AF_INET6": "model",
    "ConnStatus": "model",
    "DestStatus": "model",
    "Destination": "model",
    "FwdMethod": "model",
    "IPAddress": "model",
    "IpProto": "model",
    "IpvsSysctl": "model",
    "IpvsTable": "model",
    "IpvsTimeouts": "model",
    "Rates": "model",
    "ServiceKey": "model",
    "ServiceStatus": "model",
    "Stats": "model",
    "SyncConn": "model",
    "VirtualService": "model",
    # plan
    "AddDest": "plan",
    "AddService": "plan",
    "DelDest": "plan",
    "DelService": "plan",
    "EditDest": "plan",
    "EditService": "plan",
    "IpvsOp": "plan",
    # schedulers
    "SCHEDULER_NAMES": "schedulers",
    "SchedDest": "schedulers",
    "SchedPacket": "schedulers",
    "SchedPacketLike": "schedulers",
    "Scheduler": "schedulers",
    "make_scheduler": "schedulers",
}

__all__ = [
    "AF_INET",
    "AF_INET6",
    "SCHEDULER_NAMES",
    "Action",
    "AddDest",
    "AddService",
    "ConnExpired",
    "ConnStatus",
    "DefenseChanged",
    "DelDest",
    "DelService",
    "Dest",
    "DestFreed",
    "DestStatus",
    "Destination",
    "EditDest",
    "EditService",
    "EngineOptions",
    "ExpiryReason",
    "FwdMethod",
    "IPAddress",
    "IpProto",
    "IpvsBackend",
    "IpvsEngine",
    "IpvsEvent",
    "IpvsOp",
    "IpvsSysctl",
    "IpvsTable",
    "IpvsTimeouts",
    "ListFormat",
    "PacketInfo",
    "Rates",
    "SchedDest",
    "SchedPacket",
    "SchedPacketLike",
    "Scheduler",
    "Service",
    "ServiceKey",
    "ServiceStatus",
    "Stats",
    "SyncApplied",
    "SyncConn",
    "SyncConnNeeded",
    "SyncDaemonStatus",
    "UserspaceIpvs",
    "Verdict",
    "VirtualService",
    "list_all",
    "list_conn",
    "list_daemon",
    "list_service",
    "list_timeout",
    "make_scheduler",
    "save",
]


if not TYPE_CHECKING:
    # Hidden from type checkers, which see the precise imports above (a visible module
    # __getattr__ would make every misspelt name an Any instead of an error).

    def __getattr__(name: str) -> Any:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
