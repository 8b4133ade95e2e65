"""A passive observer of connection-sync traffic as it arrives at a director.

Run inside a director namespace (`SyncWatch.start`):
`python -m tests.testbed.syncwatch --dev eth0 --port 8848 --syncid N --out FILE`. A packet
socket (ETH_P_IP) on `dev` sees every IPv4 frame the director receives, without taking
part in delivery (hactl's own sync socket still gets each datagram). UDP datagrams to
`port` are decoded with hactl's decoder (the wire format is the kernel's), and each becomes
one JSON line: `{"t": monotonic, "src": ..., "entries": [{"template": ..., "caddr": ...,
"cport": ..., "vaddr": ..., "vport": ..., "daddr": ..., "dport": ...}]}` or, for a datagram
the decoder discards, `{"t": ..., "src": ..., "dropped": REASON}`.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from hactl.errors import SyncDecodeError
from hactl.sync.wire import FLAG_TEMPLATE, decode_message

__all__ = ["SyncWatch", "main", "templates"]

ETH_P_IP = 0x0800


def _udp(frame: bytes, port: int) -> tuple[str, bytes] | None:
    if len(frame) < 20 or frame[0] >> 4 != 4 or frame[9] != socket.IPPROTO_UDP:
        return None
    ihl = (frame[0] & 15) * 4
    if len(frame) < ihl + 8:
        return None
    dport = struct.unpack("!H", frame[ihl + 2 : ihl + 4])[0]
    if dport != port:
        return None
    return socket.inet_ntoa(frame[12:16]), frame[ihl + 8 :]


def watch(args: argparse.Namespace) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    s.bind((args.dev, ETH_P_IP))
    end = time.monotonic() + args.duration
    with open(args.out, "a", encoding="utf-8", buffering=1) as out:
        while time.monotonic() < end:
            s.settimeout(max(0.01, end - time.monotonic()))
            try:
                frame, addr = s.recvfrom(65536)
            except TimeoutError:
                continue
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            found = _udp(frame, args.port)
            if found is None:
                continue
            src, payload = found
            doc: dict[str, Any] = {"t": time.monotonic(), "src": src}
            try:
                message = decode_message(payload, syncid=args.syncid)
            except SyncDecodeError as exc:
                reason = exc.reason
                doc["dropped"] = str(getattr(reason, "value", reason))
            else:
                doc["entries"] = [
                    {"template": bool(e.flags & FLAG_TEMPLATE), "caddr": str(e.caddr),
                     "cport": e.cport, "vaddr": str(e.vaddr), "vport": e.vport,
                     "daddr": str(e.daddr), "dport": e.dport}
                    for e in message.entries
                ]
            out.write(json.dumps(doc) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.testbed.syncwatch")
    parser.add_argument("--dev", default="eth0")
    parser.add_argument("--port", type=int, default=8848)
    parser.add_argument("--syncid", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--duration", type=float, default=600.0)
    watch(parser.parse_args(argv))
    return 0


def templates(records: list[dict[str, Any]], *, before: float | None = None) -> dict[str, str]:
    """client address -> real server address of the templates seen (latest wins)."""
    out: dict[str, str] = {}
    for r in records:
        if before is not None and r["t"] >= before:
            continue
        for e in r.get("entries", ()):
            if e["template"]:
                out[e["caddr"]] = e["daddr"]
    return out


class SyncWatch:
    """The observer in one host's namespace."""

    def __init__(self, bed: Any, host: Any, *, syncid: int, dev: str = "eth0",
                 name: str | None = None) -> None:
        from tests.testbed.directors import REPO, env

        self.out = bed.path(f"{name or host.name + '-sync'}.jsonl")
        self.proc = bed.spawn(
            host,
            [sys.executable, "-m", "tests.testbed.syncwatch", "--dev", dev, "--syncid",
             str(syncid), "--out", self.out],
            log=f"{name or host.name + '-sync'}.log", env=env(), cwd=REPO,
            stdout=subprocess.DEVNULL)

    def records(self) -> list[dict[str, Any]]:
        from tests.testbed.load import read_records

        return read_records(self.out)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


if __name__ == "__main__":
    sys.exit(main())
