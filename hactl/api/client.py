"""A small client of the control API, for the CLI and for scripts written in Python.

Owns: resolving where the daemon listens (`--api`, `HACTL_API`, the default socket), the
token (`--token-file`, `HACTL_API_TOKEN`), and turning every failure into one of two
exceptions: `ApiError` (the daemon answered with an error) or `Unreachable` (it did not).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from hactl.api.model import RsKey, format_rs, format_vs
from hactl.ipvs.model import ServiceKey

__all__ = [
    "DEFAULT_SOCKET",
    "ApiClient",
    "ApiError",
    "Unreachable",
    "real_server_path",
    "resolve_address",
    "resolve_token",
]

DEFAULT_SOCKET = "/run/hactl/api.sock"


class ApiError(Exception):
    """The daemon answered with an error object."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({status} {code})")
        self.status = status
        self.code = code
        self.message = message


class Unreachable(Exception):
    """No answer: no socket, connection refused, timeout, not an hactl API."""


def resolve_address(arg: str | None, environ: Mapping[str, str] | None = None) -> str:
    """`--api` if given, else HACTL_API, else the default unix socket."""
    env = os.environ if environ is None else environ
    return arg or env.get("HACTL_API") or DEFAULT_SOCKET


def resolve_token(token_file: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The bearer token from `--token-file` (first line) or HACTL_API_TOKEN.

    Raises:
        OSError: the token file cannot be read.
    """
    if token_file:
        return Path(token_file).read_text(encoding="utf-8").strip() or None
    env = os.environ if environ is None else environ
    return env.get("HACTL_API_TOKEN") or None


def real_server_path(vs: ServiceKey, rs: RsKey) -> str:
    """/api/v1/virtual-servers/{vs}/real-servers/{rs} with both keys percent-encoded."""
    return (
        f"/api/v1/virtual-servers/{quote(format_vs(vs), safe=':')}"
        f"/real-servers/{quote(format_rs(rs), safe=':')}"
    )


class ApiClient:
    """`async with ApiClient(address, token=...) as api: await api.get("/api/v1/...")`.

    `address` is a unix socket path or an http(s)://host:port URL.
    """

    def __init__(self, address: str, *, token: str | None = None, timeout: float = 30.0) -> None:
        self.address = address
        self._token = token
        self._timeout = timeout
        if address.startswith(("http://", "https://")):
            self._base = address.rstrip("/")
            self._unix: str | None = None
        else:
            self._base = "http://hactl"  # the host is ignored on a unix socket
            self._unix = address
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        connector: aiohttp.BaseConnector | None = (
            aiohttp.UnixConnector(path=self._unix) if self._unix is not None else None
        )
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        self._session = aiohttp.ClientSession(connector=connector, headers=headers)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _where(self) -> str:
        return self._unix if self._unix is not None else self._base

    async def _request(
        self, method: str, path: str, *, body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None, stream: bool = False,
        accept: tuple[int, ...] = (),
    ) -> aiohttp.ClientResponse:
        assert self._session is not None, "use ApiClient as an async context manager"
        timeout = aiohttp.ClientTimeout(
            total=None if stream else self._timeout, connect=self._timeout,
            sock_read=None if stream else self._timeout,
        )
        try:
            response = await self._session.request(
                method, self._base + path,
                data=None if body is None else json.dumps(body).encode(),
                headers={"Content-Type": "application/json"} if body is not None else None,
                params=params, timeout=timeout,
            )
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
            raise Unreachable(f"cannot reach hactl at {self._where()}: {exc}") from None
        if response.status >= 400 and response.status not in accept:
            try:
                doc = await response.json(content_type=None)
                err = doc["error"]
                raise ApiError(int(err["status"]), str(err["code"]), str(err["message"]))
            except (ValueError, KeyError, TypeError, aiohttp.ClientError):
                raise Unreachable(
                    f"{self._where()} answered {response.status} but is not an hactl API"
                ) from None
            finally:
                response.release()
        return response

    async def get(self, path: str, *, params: Mapping[str, str] | None = None) -> Any:
        response = await self._request("GET", path, params=params)
        return await self._json(response)

    async def get_text(self, path: str, *, params: Mapping[str, str] | None = None) -> str:
        response = await self._request("GET", path, params=params)
        try:
            return await response.text()
        except aiohttp.ClientError as exc:
            raise Unreachable(f"connection to {self._where()} lost: {exc}") from None

    async def send(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        response = await self._request(method, path, body=body if body is not None else {})
        return await self._json(response)

    async def send_status(
        self, method: str, path: str, body: Mapping[str, Any], *, accept: tuple[int, ...]
    ) -> tuple[int, Any]:
        """Like `send`, but answers with a status in `accept` (422: a rejected reload, whose
        body is the diagnostics) are returned with their status rather than raised."""
        response = await self._request(method, path, body=body, accept=accept)
        status = response.status
        return status, await self._json(response)

    async def stream(self, path: str, body: Mapping[str, Any]) -> AsyncIterator[Any]:
        """POST and yield each line of a newline-delimited JSON answer."""
        response = await self._request("POST", path, body=body, stream=True)
        try:
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)
        except aiohttp.ClientError as exc:
            raise Unreachable(f"connection to {self._where()} lost: {exc}") from None
        except ValueError:
            raise Unreachable(f"{self._where()} sent a malformed progress line") from None
        finally:
            response.release()

    async def _json(self, response: aiohttp.ClientResponse) -> Any:
        try:
            return await response.json(content_type=None)
        except (ValueError, aiohttp.ClientError):
            raise Unreachable(f"{self._where()} did not answer JSON") from None
        finally:
            response.release()
