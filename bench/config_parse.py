"""Benchmark: parse a large generated configuration with hactl and with `keepalived -t`.

The configuration has N virtual servers (default 10,000), each with 4 real servers and one
TCP_CHECK per real server, in the style of the keepalived samples. Each parser runs in its own
child process, so its peak memory (ru_maxrss of that child, from wait4) is not mixed with
this script's; hactl's time is measured inside the child around `hactl.config.load` (the
interpreter start-up and imports are reported separately), keepalived's as the CPU time of
the `-t` process.

Usage:
    python bench/config_parse.py [--virtual-servers N] [--keep FILE] [--phases] [--repeat N]

CPU times (user + system) are the figures to compare: on a busy machine wall time also
counts the time other processes held the CPU. With --repeat, the best of N runs is shown.

Target (issue 2): hactl under 2 s, and within 3x of keepalived's time. This is a benchmark,
not a timed test: it prints figures and exits 0 unless a parser fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

HACTL_CHILD = """
import json, sys, time
cpu = time.process_time
t0 = time.perf_counter()
from hactl import config
t1 = time.perf_counter()
c1 = cpu()
loaded = config.load(__import__("pathlib").Path(sys.argv[1]))
c2 = cpu()
t2 = time.perf_counter()
services = len(loaded.config.virtual_servers)
servers = sum(len(vs.real_servers) for vs in loaded.config.virtual_servers)
phases = {}
if len(sys.argv) > 2:  # --phases: CPU time of each stage, once more, separately
    import gc
    from hactl.config import build, lints, syntax, validate
    del loaded
    gc.disable()
    t = cpu()
    result = syntax.parse_file(__import__("pathlib").Path(sys.argv[1]))
    phases["syntax"] = cpu() - t
    t = cpu()
    built = build.build(result.stmts)
    phases["build"] = cpu() - t
    t = cpu()
    validate.validate(built.config)
    lints.lint(built.config)
    phases["validate+lint"] = cpu() - t
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "load_cpu": c2 - c1, "vs": services,
                  "rs": servers, "phases": phases}))
"""


def generate(n_vs: int, path: Path) -> int:
    """Write the configuration; returns its number of lines."""
    lines = [
        "global_defs {",
        "    router_id bench",
        "    lvs_timeouts tcp 7500 tcpfin 120 udp 300",
        "}",
    ]
    for i in range(n_vs):
        vip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        lines += [
            f"virtual_server {vip} 80 {{",
            "    delay_loop 6",
            "    lb_algo wrr",
            "    lb_kind DR",
            "    protocol TCP",
        ]
        for j in range(4):
            lines += [
                f"    real_server 172.{16 + (i >> 16) % 16}.{(i >> 8) & 255}.{(i & 255) ^ j} 80 {{",
                f"        weight {j + 1}",
                "        TCP_CHECK {",
                "            connect_timeout 3",
                "        }",
                "    }",
            ]
        lines.append("}")
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def run_child(
    argv: list[str], *, env: dict[str, str] | None = None
) -> tuple[float, float, int, str]:
    """Run a child; returns (wall seconds, CPU seconds, peak RSS in MiB, stdout).

    CPU time (user + system, from wait4) is printed next to wall time because it is stable
    on a busy machine, where wall time also counts the time other processes held the CPU.
    """
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {stderr[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024, stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--virtual-servers", type=int, default=10_000)
    parser.add_argument("--keep", type=Path, help="write the generated configuration here")
    parser.add_argument(
        "--phases", action="store_true", help="also time syntax / build / validate separately"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each parser N times and report the best CPU times (for a busy machine)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "bench.conf"
        n_lines = generate(args.virtual_servers, path)
        size = path.stat().st_size
        print(
            f"config: {args.virtual_servers} virtual servers x 4 real servers (TCP_CHECK), "
            f"{n_lines} lines, {size / 2**20:.1f} MiB"
        )

        env = {**os.environ, "PYTHONPATH": str(REPO)}
        child = [sys.executable, "-c", HACTL_CHILD, str(path)] + (["phases"] if args.phases else [])
        runs = []
        for _ in range(args.repeat):
            wall, cpu, rss, out = run_child(child, env=env)
            figures = json.loads(out)
            assert figures["vs"] == args.virtual_servers
            assert figures["rs"] == 4 * args.virtual_servers
            runs.append((figures["load_cpu"], wall, cpu, rss, figures))
        load_cpu, wall, cpu, rss, figures = min(runs, key=lambda run: run[0])
        print(
            f"hactl:      load {load_cpu:.2f} s CPU ({figures['load']:.2f} s wall); process "
            f"{cpu:.2f} s CPU, {wall:.2f} s wall, incl. {figures['import']:.2f} s imports; "
            f"peak RSS {rss} MiB"
        )
        if figures["phases"]:
            best = {k: min(r[4]["phases"][k] for r in runs) for k in figures["phases"]}
            parts = ", ".join(f"{k} {v:.2f} s" for k, v in best.items())
            print(f"hactl phases, CPU (a second pass in the same process): {parts}")

        keepalived = shutil.which("keepalived")
        if keepalived is None:
            print("keepalived: not installed, no comparison")
            return 0
        k_runs = [run_child([keepalived, "-t", "-f", str(path)]) for _ in range(args.repeat)]
        k_wall, k_cpu, k_rss, _ = min(k_runs, key=lambda run: run[1])
        print(f"keepalived: -t {k_cpu:.2f} s CPU ({k_wall:.2f} s wall); peak RSS {k_rss} MiB")
        print(
            f"ratio hactl/keepalived: load CPU {load_cpu / max(k_cpu, 0.001):.2f}x, "
            f"process CPU {cpu / max(k_cpu, 0.001):.2f}x, memory {rss / max(k_rss, 1):.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
