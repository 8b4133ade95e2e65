"""The operations half of hactl: control API, drain lifecycle, operator overrides, metrics.

* `model`: the API's data (snapshots, overrides, reload plans) and the stable text keys.
* `director`: the `Director` port the daemon implements.
* `drain`: the drain lifecycle of one real server (sans-IO).
* `overrides`: operator overrides, the state file and the peer propagation message.
* `operations`: the asyncio shell stepping drains and persisting overrides.
* `peer`: `PeerLink`, delivery of override messages to the peer director.
* `server`: the aiohttp app (/api/v1, /metrics, status page) and its sockets.
* `metrics`: the Prometheus text exposition.
* `client` / `cli`: the command line talking to a running daemon.
* `testing`: `FakeDirector`, an in-memory director for tests.

Modules are imported by their users (no re-exports here), so that `hactl --help` and the
daemon do not pay for aiohttp's client when they do not need it.
"""

from __future__ import annotations

__all__: list[str] = []
