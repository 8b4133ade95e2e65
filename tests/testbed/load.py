"""Bounded client load through the VIP, and its summary.

Run inside the client namespace (`ClientLoad.start` does that):
`python -m tests.testbed.load --vip ADDR --sources A,B,C --out FILE --duration S
--max-requests N [--interval S] [--stop-file F]`. It issues HTTP `GET /` requests, one
TCP connection each, cycling through the source addresses, paced at `interval`, until the
duration, the request budget or the stop file ends it. Each request is one JSON line:
`{"t": start, "end": end, "src": ..., "port": ..., "ok": ..., "server": ..., "error": ...}`
(`port`: the client's source port) with times on
the system-wide monotonic clock (the test reads the same clock). A request succeeds when it
gets `200` with the whole announced body, within `--timeout`.

`summarize(records)` gives failed / total and the outage: per source address, the longest
time from the start of a failed request to the start of that source's next successful one.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ClientLoad", "Summary", "main", "read_records", "summarize"]


def _request(vip: str, port: int, src: str, timeout: float,
             local: list[int]) -> tuple[bool, str | None, str]:
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((src, 0))
            local.append(s.getsockname()[1])
            s.settimeout(timeout)
            s.connect((vip, port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                s.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        return False, None, type(exc).__name__ + (f" {exc.errno}" if exc.errno else "")
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False, None, "incomplete head"
    lines = head.decode(errors="replace").split("\r\n")
    status = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "?"
    fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    server = fields.get("x-real-server")
    if status != "200":
        return False, server, f"status {status}"
    if int(fields.get("content-length", "-1")) != len(body):
        return False, server, "truncated body"
    return True, server, ""


def run(args: argparse.Namespace) -> None:
    sources = args.sources.split(",")
    end = time.monotonic() + args.duration
    stop = Path(args.stop_file) if args.stop_file else None
    with open(args.out, "a", encoding="utf-8", buffering=1) as out:
        for n in range(args.max_requests):
            now = time.monotonic()
            if now >= end or (stop is not None and stop.exists()):
                break
            src = sources[n % len(sources)]
            local: list[int] = []
            ok, server, error = _request(args.vip, args.port, src, args.timeout, local)
            done = time.monotonic()
            out.write(json.dumps({"t": now, "end": done, "src": src, "ok": ok,
                                  "server": server, "error": error,
                                  "port": local[0] if local else None}) + "\n")
            pause = args.interval - (done - now)
            if pause > 0:
                time.sleep(pause)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.testbed.load")
    parser.add_argument("--vip", required=True)
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--sources", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--stop-file", default=None)
    run(parser.parse_args(argv))
    return 0


@dataclass(frozen=True)
class Summary:
    total: int
    failed: int
    outage_ms: float
    failures: tuple[dict[str, Any], ...]

    def line(self, scenario: str) -> str:
        return (f"RELIABILITY scenario={scenario} failed={self.failed} total={self.total} "
                f"outage_ms={self.outage_ms:.0f}")


def read_records(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # the writer was killed mid-line
    return out


def summarize(records: list[dict[str, Any]]) -> Summary:
    """Failed / total, and the outage: per source address, the longest time from the start
    of a failed request to the start of that source's next successful one (to the end of
    the run when none followed); the largest over the sources."""
    outage = 0.0
    first_fail: dict[str, float] = {}
    for r in records:
        src = r["src"]
        if not r["ok"]:
            first_fail.setdefault(src, r["t"])
        elif src in first_fail:
            outage = max(outage, r["t"] - first_fail.pop(src))
    if first_fail and records:
        outage = max(outage, *(records[-1]["end"] - t for t in first_fail.values()))
    failures = tuple(r for r in records if not r["ok"])
    return Summary(len(records), len(failures), outage * 1000, failures)


class ClientLoad:
    """The load program in the client namespace of a testbed; `stop()` ends it early."""

    def __init__(self, bed: Any, *, duration: float, interval: float = 0.02,
                 max_requests: int = 20_000, timeout: float = 1.0, name: str = "load") -> None:
        from tests.testbed.directors import REPO, env

        self.bed = bed
        self.out = bed.path(f"{name}.jsonl")
        self.stop_file = bed.path(f"{name}.stop")
        sources = ",".join(str(a) for a in bed.client.extra)
        self.proc = bed.spawn(
            bed.client,
            [sys.executable, "-m", "tests.testbed.load", "--vip", str(bed.vip), "--sources",
             sources, "--out", self.out, "--duration", str(duration), "--interval",
             str(interval), "--max-requests", str(max_requests), "--timeout", str(timeout),
             "--stop-file", self.stop_file],
            log=f"{name}.log", env=env(), cwd=REPO, stdout=subprocess.DEVNULL)
        self.limit = duration + timeout + 10

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.out)

    def wait_records(self, count: int, limit: float = 10.0) -> None:
        deadline = time.monotonic() + limit
        while len(self.records()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"load produced {len(self.records())} of {count} records")
            time.sleep(0.05)

    def stop(self) -> list[dict[str, Any]]:
        Path(self.stop_file).touch()
        try:
            self.proc.wait(self.limit)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        with_stop = self.records()
        os.unlink(self.stop_file)
        return with_stop


if __name__ == "__main__":
    sys.exit(main())
