"""`PeerLink`: delivers operator-override messages to the peer director's control API, so a
failover does not undo a drain (docs/operations.md, "How overrides survive").

The daemon passes `link.publish` as the `publish` hook of `Operations` and runs `link.run()`
in its TaskGroup. Delivery is `POST /api/v1/peer/overrides` on the peer's API (TCP with its
token, or a unix socket when both directors share a host in tests and demos).

Why resending everything is enough: the peer merges entries by last writer wins, so the full
set (`Operations.full_message()`) supersedes any number of lost deltas. After any failure
the link therefore drops what is queued and sends the full set once the peer answers again:
no per-message bookkeeping, and a peer that restarted (or was replaced) converges.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import structlog

from hactl.api.client import ApiClient, ApiError, Unreachable
from hactl.clock import Clock

__all__ = ["PeerLink"]

log = structlog.get_logger("hactl.api")


class PeerLink:
    def __init__(
        self,
        full_message: Callable[[], bytes],
        *,
        address: str,
        token: str | None,
        clock: Clock,
        retry_interval: float = 2.0,
        timeout: float = 5.0,
    ) -> None:
        self._full_message = full_message
        self._address = address
        self._token = token
        self._clock = clock
        self._retry_interval = retry_interval
        self._timeout = timeout
        self._queue: list[bytes] = []
        self._need_full = True  # the peer may have missed anything before we started
        self._wake = asyncio.Event()
        self.delivered = 0  # messages the peer accepted (for status and tests)
        self.failures = 0

    def publish(self, message: bytes) -> None:
        """Queue one message (the `Operations` publish hook; never blocks)."""
        self._queue.append(message)
        self._wake.set()

    async def run(self) -> None:
        """Deliver until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if await self._deliver():
                continue
            self.failures += 1
            self._queue.clear()
            self._need_full = True
            await self._clock.sleep_until(self._clock.now() + self._retry_interval)
            self._wake.set()

    async def _deliver(self) -> bool:
        try:
            async with ApiClient(self._address, token=self._token, timeout=self._timeout) as api:
                if self._need_full:
                    # Taken now, not when the failure happened: it includes every later change.
                    self._queue.clear()
                    await self._send(api, self._full_message())
                    self._need_full = False
                while self._queue:
                    await self._send(api, self._queue[0])
                    self._queue.pop(0)
        except (Unreachable, ApiError) as exc:
            log.warning("api.peer_unreachable", peer=self._address, error=str(exc))
            return False
        return True

    async def _send(self, api: ApiClient, message: bytes) -> None:
        await api.send("POST", "/api/v1/peer/overrides", json.loads(message))
        self.delivered += 1
