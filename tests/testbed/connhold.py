"""Many concurrent connections held open through the data plane, and the sink behind it.

`python -m tests.testbed.connhold sink --port P` (in a real-server namespace): accepts every
connection on 0.0.0.0:P and keeps it; each byte received is answered with one byte (`+`),
so a client can prove its connection reaches a real server end to end. One epoll loop, no
per-connection object beyond the socket.

`python -m tests.testbed.connhold hold --vip A --port P --sources A,B --count N --out F`
(in the client namespace): opens N connections to VIP:P (non-blocking, cycling through the
source addresses, at most `--batch` connecting at once), sends one byte on each and counts
the answers: a connection counts as held once its answer came back. It writes one JSON
progress line to F every second (`{"t", "opened", "held", "failed", "errors"}`), then holds
everything until the stop file appears (or `--hold` seconds pass), checks a sample again
(`"recheck_ok"`) and closes all.

Both raise their own RLIMIT_NOFILE (as root, the hard limit too) to what `--count` needs.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import select
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "raise_nofile"]


def raise_nofile(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    for new in ((wanted, max(wanted, hard)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, new)
            return new[0]
        except (OSError, ValueError):
            continue
    return soft


def sink(port: int, limit: int) -> None:
    raise_nofile(limit + 256)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("0.0.0.0", port))
    lsock.listen(4096)
    lsock.setblocking(False)
    ep = select.epoll()
    ep.register(lsock.fileno(), select.EPOLLIN)
    conns: dict[int, socket.socket] = {}
    print("ready", flush=True)
    while True:
        for fd, events in ep.poll(1.0):
            if fd == lsock.fileno():
                for _ in range(256):
                    try:
                        c, _addr = lsock.accept()
                    except BlockingIOError:
                        break
                    except OSError:  # EMFILE: try again on the next readiness
                        break
                    c.setblocking(False)
                    conns[c.fileno()] = c
                    ep.register(c.fileno(), select.EPOLLIN)
                continue
            c = conns[fd]
            try:
                data = c.recv(4096)
            except OSError:
                data = b""
            if data:
                try:
                    c.send(b"+" * len(data))
                except OSError:
                    data = b""
            if not data or events & (select.EPOLLHUP | select.EPOLLERR):
                ep.unregister(fd)
                del conns[fd]
                c.close()


def hold(args: argparse.Namespace) -> None:
    got = raise_nofile(args.count + 256)
    sources = args.sources.split(",")
    out = open(args.out, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
    stop = Path(args.stop_file) if args.stop_file else None
    ep = select.epoll()
    pending: dict[int, socket.socket] = {}  # connecting or waiting for the answer
    held: dict[int, socket.socket] = {}
    errors: dict[str, int] = {}
    opened = failed = 0
    start = time.monotonic()
    last_report = 0.0

    def report(**extra: object) -> None:
        out.write(json.dumps({"t": time.monotonic(), "opened": opened, "held": len(held),
                              "failed": failed, "errors": errors, "nofile": got, **extra})
                  + "\n")

    def fail(fd: int, why: str) -> None:
        nonlocal failed
        failed += 1
        errors[why] = errors.get(why, 0) + 1
        ep.unregister(fd)
        pending.pop(fd).close()

    deadline = start + args.limit
    while (len(held) + failed < args.count) and time.monotonic() < deadline:
        while opened < args.count and len(pending) < args.batch:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.bind((sources[opened % len(sources)], 0))
                s.connect_ex((args.vip, args.port))
            except OSError as exc:
                s.close()
                failed += 1
                name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                errors[name] = errors.get(name, 0) + 1
                opened += 1
                continue
            opened += 1
            pending[s.fileno()] = s
            ep.register(s.fileno(), select.EPOLLOUT | select.EPOLLIN)
        for fd, events in ep.poll(0.2):
            s = pending.get(fd)
            if s is None:
                continue
            if events & select.EPOLLERR:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                fail(fd, errno.errorcode.get(err, str(err)))
                continue
            if events & select.EPOLLOUT:
                try:
                    s.send(b"p")
                except OSError as exc:
                    fail(fd, errno.errorcode.get(exc.errno or 0, "send"))
                    continue
                ep.modify(fd, select.EPOLLIN)
            if events & select.EPOLLIN:
                try:
                    data = s.recv(16)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    fail(fd, errno.errorcode.get(exc.errno or 0, "recv"))
                    continue
                if not data:
                    fail(fd, "closed")
                    continue
                ep.unregister(fd)
                held[fd] = pending.pop(fd)
        now = time.monotonic()
        if now - last_report >= 1.0:
            last_report = now
            report()
    report(phase="established", seconds=round(time.monotonic() - start, 3))
    end = time.monotonic() + args.hold
    while time.monotonic() < end and not (stop is not None and stop.exists()):
        time.sleep(0.2)
    # A sample of the held connections must still work end to end.
    sample = list(held.values())[:: max(1, len(held) // 500)]
    ok = 0
    for s in sample:
        s.setblocking(True)
        s.settimeout(2)
        try:
            s.send(b"q")
            ok += s.recv(16) == b"+"
        except OSError:
            pass
    report(phase="rechecked", recheck_ok=ok, recheck_total=len(sample))
    for s in [*held.values(), *pending.values()]:
        s.close()
    out.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.testbed.connhold")
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("sink")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--limit", type=int, default=60_000)
    h = sub.add_parser("hold")
    h.add_argument("--vip", required=True)
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--sources", required=True)
    h.add_argument("--count", type=int, required=True)
    h.add_argument("--out", required=True)
    h.add_argument("--batch", type=int, default=500)
    h.add_argument("--limit", type=float, default=120.0, help="seconds to establish")
    h.add_argument("--hold", type=float, default=60.0, help="seconds to hold at most")
    h.add_argument("--stop-file", default=None)
    args = parser.parse_args(argv)
    if args.mode == "sink":
        sink(args.port, args.limit)
    else:
        hold(args)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
