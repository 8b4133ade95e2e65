"""Shared pieces of the API shell tests: a populated FakeDirector, the app on real sockets,
and a runner for the CLI in a subprocess (exit codes and output as a user sees them)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from hactl.api.model import CheckSummary, Health, VrrpInstanceStatus, parse_vs
from hactl.api.operations import Operations
from hactl.api.overrides import OverrideStore
from hactl.api.server import ApiServer
from hactl.api.testing import FakeDirector, FakeRealServer, FakeVirtualServer
from hactl.clock import LoopClock
from hactl.ipvs.model import ConnStatus, IpProto

REPO = Path(__file__).resolve().parents[3]
VS_TEXT = "tcp:10.0.0.1:80"
VS = parse_vs(VS_TEXT)
RS1 = (ipaddress.ip_address("10.0.1.2"), 80)
RS2 = (ipaddress.ip_address("10.0.1.3"), 80)
RS3 = (ipaddress.ip_address("10.0.1.4"), 80)
TOKEN = "s3cret-token"
POLL = 0.02


def make_director() -> FakeDirector:
    check = CheckSummary(kind="TCP_CHECK", ok=True, detail="connected", latency=0.0012,
                         at=1_700_000_100.0, results={"success": 12})
    return FakeDirector(
        [FakeVirtualServer(VS, [
            FakeRealServer(RS1, weight=1, checks=(check,)),
            FakeRealServer(RS2, weight=2, checks=(check,)),
            FakeRealServer(RS3, weight=1, health=Health.DOWN),
        ])],
        vrrp=[VrrpInstanceStatus(
            name="VI_1", interface="eth0", vrid=51, family=2, state="MASTER", priority=150,
            effective_priority=150, master_address=ipaddress.ip_address("10.0.0.2"),
            last_advert_source=ipaddress.ip_address("10.0.0.3"), transitions=1, split_brain=0,
        )],
        connections=[ConnStatus(
            protocol=IpProto.TCP, caddr=ipaddress.ip_address("192.0.2.7"), cport=40000,
            vaddr=ipaddress.ip_address("10.0.0.1"), vport=80, daddr=RS1[0], dport=80,
            state="ESTABLISHED", expires_in=899.5,
        )],
    )


@dataclass
class Harness:
    director: FakeDirector
    operations: Operations
    server: ApiServer
    socket_path: Path | None
    state_path: Path
    published: list[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.tcp_port}"


@asynccontextmanager
async def serve(
    tmp: Path, *, unix: bool = True, tcp: bool = False, director: FakeDirector | None = None,
    store: OverrideStore | None = None, publish: Callable[[bytes], None] | None = None,
) -> AsyncIterator[Harness]:
    """The app over `director` on a unix socket in `tmp` and/or TCP 127.0.0.1 (with TOKEN).
    Published peer messages are recorded in `Harness.published` and passed to `publish`."""
    director = director or make_director()
    published: list[bytes] = []

    def record(message: bytes) -> None:
        published.append(message)
        if publish is not None:
            publish(message)

    state_path = tmp / "overrides.json"
    ops = Operations(director, store or OverrideStore("lb1"), clock=LoopClock(), wall=time.time,
                     state_path=state_path, publish=record, poll_interval=POLL)
    socket_path = tmp / "api.sock" if unix else None
    server = ApiServer(ops, unix_path=socket_path, tcp=("127.0.0.1", 0) if tcp else None,
                       token=TOKEN if tcp else None, poll_interval=POLL)
    await server.start()
    try:
        yield Harness(director, ops, server, socket_path, state_path, published)
    finally:
        await ops.aclose()
        await server.stop()


_CLI = (
    "import argparse, sys\n"
    "from hactl.api.cli import add_parsers\n"
    "p = argparse.ArgumentParser(prog='hactl')\n"
    "s = p.add_subparsers(dest='command')\n"
    "add_parsers(s)\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "sys.exit(a.handler(a))\n"
)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


async def run_cli(*args: str, env: dict[str, str] | None = None) -> CliResult:
    """`hactl ARGS...` with the API commands registered, as a separate process."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HACTL_API")}
    full_env["PYTHONPATH"] = str(REPO)
    full_env.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CLI, *args, cwd=REPO, env=full_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())
