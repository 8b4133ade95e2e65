"""Model -> JSON (`hactl dump`): the resolved configuration, for tools and humans.

Schema (documented in docs/configuration.md, "hactl dump"):
* the top level is `{"schema": "hactl.config/1", "config": {...}}`;
* every model object is a JSON object whose members are the model's field names (which are
  the keyword names), in declaration order; includes, `$VARIABLES`, `~SEQ` and `@conditional`
  lines are already expanded, and defaults and inherited values are filled in;
* checkers carry `"kind"` (`"TCP_CHECK"`, `"HTTP_GET"`, ...); virtual servers, real servers
  and checkers carry `"key"` (their reload identity, as a list);
* addresses and prefixes are strings, durations numbers of seconds, enums their config word,
  sets sorted lists, `bytes` lowercase hex, absent values `null`;
* with `positions=True` every object also has `"pos": "path:line:col"`.

Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import json
from typing import Any

from hactl.config import model as m

__all__ = ["SCHEMA", "to_json", "to_jsonable"]

SCHEMA = "hactl.config/1"
_HIDDEN = frozenset({"pos", "vs_key", "rs_key", "index", "keyword_pos"})
_KEYED = (m.VirtualServer, m.RealServer, m.VrrpInstance)


def to_jsonable(value: Any, *, positions: bool = False) -> Any:
    """Convert a model value to plain JSON types (see the module banner for the rules)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(
        value,
        ipaddress.IPv4Address
        | ipaddress.IPv6Address
        | ipaddress.IPv4Interface
        | ipaddress.IPv6Interface
        | ipaddress.IPv4Network
        | ipaddress.IPv6Network,
    ):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, frozenset | set):
        return sorted(to_jsonable(v, positions=positions) for v in value)
    if isinstance(value, tuple | list):
        return [to_jsonable(v, positions=positions) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            if f.name in _HIDDEN:
                continue
            # `from_` (a Python keyword) is written as the config word `from`
            out[f.name.rstrip("_")] = to_jsonable(getattr(value, f.name), positions=positions)
        key = getattr(value, "key", None)
        if isinstance(value, _KEYED) or (key is not None and hasattr(value, "rs_key")):
            out["key"] = to_jsonable(key, positions=positions)
        if positions and hasattr(value, "pos"):
            out["pos"] = str(value.pos)
        return out
    raise TypeError(f"no JSON form for {type(value).__name__}")


def to_json(config: m.Config, *, positions: bool = False, indent: int | None = 2) -> str:
    """The resolved configuration as JSON text (schema `hactl.config/1`)."""
    document = {"schema": SCHEMA, "config": to_jsonable(config, positions=positions)}
    return json.dumps(document, indent=indent) + "\n"
