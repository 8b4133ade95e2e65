"""Benchmark: parse a large generated configuration with hactl and with `keepalived -t`.

The configuration has N virtual servers (default 10,000), each with 4 real servers and one
TCP_CHECK per real server, in the style of the keepalived samples. Both parsers run on the
same file in the same run, each in its own child process, and are measured the same way:
the CPU time (user + system, getrusage) the process has used when the configuration is
loaded, its peak memory (ru_maxrss) and its wall time. keepalived's child runs
`keepalived -t -f FILE`, which loads the file and exits: its CPU time comes from wait4.
hactl's child starts the interpreter, imports `hactl.config` and calls `hactl.config.load`,
then reads its own getrusage; the CPU time of `load` alone is shown too, and so is the CPU
time of the whole hactl process, exit included (wait4): the interpreter's exit frees the
model object by object and runs a last full garbage collection, which keepalived's exit
does not pay. A third child runs the command users run, `python -m hactl check -f FILE`,
measured as a whole process like `keepalived -t` (start, imports, load, report, exit; the
command ends without the interpreter's teardown of the model). Ratios are hactl's figure
over keepalived's.

Usage:
    python bench/config_parse.py [--virtual-servers N] [--keep FILE] [--phases] [--repeat N]

CPU time is the figure to compare: on a busy machine wall time also counts the time other
processes held the CPU. With --repeat, each parser runs N times, alternating, and the
best and the range of the N runs are shown; ratios are of the best runs.

Target (issue 2): hactl under 2 s, and within 3x of keepalived's time. This is a benchmark,
not a timed test: it prints figures and exits 0 unless a parser fails.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

HACTL_CHILD = """
import json, pathlib, resource, sys, time
start = time.perf_counter()
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
from hactl import config
c1 = cpu()
loaded = config.load(pathlib.Path(sys.argv[1]))
c2 = cpu()
wall = time.perf_counter() - start
services = len(loaded.config.virtual_servers)
servers = sum(len(vs.real_servers) for vs in loaded.config.virtual_servers)
print(json.dumps({"load_cpu": c2 - c1, "loaded_cpu": c2, "loaded_wall": wall, "vs": services,
                  "rs": servers}))
"""

# --phases: CPU time of each stage, in a child of its own (so the figures above stay those
# of a plain load).
PHASES_CHILD = """
import gc, json, pathlib, sys, time
from hactl.config import build, lints, syntax, validate
cpu = time.process_time
path = pathlib.Path(sys.argv[1])
gc.disable()
phases = {}
t = cpu()
result = syntax.parse_file(path)
phases["syntax"] = cpu() - t
t = cpu()
built = build.build(result.nodes)
phases["build"] = cpu() - t
t = cpu()
validate.validate(built.config)
lints.lint(built.config)
phases["validate+lint"] = cpu() - t
print(json.dumps(phases))
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


def _span(values: list[float]) -> str:
    """The best of a list of figures and, for several, their range."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{min(values):.2f} (range {min(values):.2f}-{max(values):.2f})"


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
        # The children import hactl from bytecode, as an installed package does. A module
        # edited since its bytecode was cached would otherwise be compiled from source in
        # every child (with PYTHONDONTWRITEBYTECODE set), up to 0.1 s that is not hactl's.
        compileall.compile_dir(REPO / "hactl", quiet=1)
        keepalived = shutil.which("keepalived")
        hactl_runs: list[tuple[float, float, int, dict[str, float]]] = []
        k_runs: list[tuple[float, float, int, str]] = []
        check_runs: list[tuple[float, float, int, str]] = []
        for _ in range(args.repeat):
            # Alternating, so that both meet the same load of a shared machine.
            wall, cpu, rss, out = run_child([sys.executable, "-c", HACTL_CHILD, str(path)], env=env)
            figures = json.loads(out)
            assert figures["vs"] == args.virtual_servers
            assert figures["rs"] == 4 * args.virtual_servers
            hactl_runs.append((wall, cpu, rss, figures))
            check_runs.append(
                run_child([sys.executable, "-m", "hactl", "check", "-f", str(path)], env=env)
            )
            if keepalived is not None:
                k_runs.append(run_child([keepalived, "-t", "-f", str(path)]))
        best = min(hactl_runs, key=lambda run: run[3]["loaded_cpu"])
        loaded_cpu = best[3]["loaded_cpu"]
        print(
            f"hactl:      loaded at {_span([r[3]['loaded_cpu'] for r in hactl_runs])} s CPU "
            f"(start, imports, load), {_span([r[3]['loaded_wall'] for r in hactl_runs])} s "
            f"wall, peak RSS {best[2]} MiB; load() alone "
            f"{_span([r[3]['load_cpu'] for r in hactl_runs])} s CPU; whole process with its "
            f"exit {_span([r[1] for r in hactl_runs])} s CPU"
        )
        check_best = min(check_runs, key=lambda run: run[1])
        print(
            f"hactl check -f FILE: whole process {_span([run[1] for run in check_runs])} s CPU, "
            f"{_span([run[0] for run in check_runs])} s wall, peak RSS {check_best[2]} MiB"
        )
        if args.phases:
            phase_runs = [
                json.loads(run_child([sys.executable, "-c", PHASES_CHILD, str(path)], env=env)[3])
                for _ in range(args.repeat)
            ]
            parts = ", ".join(f"{k} {min(r[k] for r in phase_runs):.2f} s" for k in phase_runs[0])
            print(f"hactl phases, CPU (best of {args.repeat}, collector off): {parts}")

        if keepalived is None:
            print("keepalived: not installed, no comparison")
            return 0
        k_best = min(k_runs, key=lambda run: run[1])
        print(
            f"keepalived: -t process {_span([run[1] for run in k_runs])} s CPU, "
            f"{_span([run[0] for run in k_runs])} s wall, peak RSS {k_best[2]} MiB"
        )
        k_cpu = max(k_best[1], 0.001)
        wall_ratio = best[3]["loaded_wall"] / max(k_best[0], 0.001)
        print(
            f"ratio hactl/keepalived (best runs): loaded {loaded_cpu / k_cpu:.2f}x CPU, "
            f"{wall_ratio:.2f}x wall; load() alone "
            f"{min(r[3]['load_cpu'] for r in hactl_runs) / k_cpu:.2f}x CPU; "
            f"whole process {min(r[1] for r in hactl_runs) / k_cpu:.2f}x CPU; "
            f"memory {best[2] / max(k_best[2], 1):.2f}x"
        )
        print(
            f"ratio `hactl check -f FILE` / `keepalived -t -f FILE`, whole processes: "
            f"{check_best[1] / k_cpu:.2f}x CPU, {check_best[0] / max(k_best[0], 0.001):.2f}x wall"
        )
        if args.repeat > 1:
            # On a shared machine both sides of a round meet the same load: the ratio of each
            # round, and their median, are steadier than the ratio of the best runs.
            def per_round(figures: list[float]) -> str:
                ratios = sorted(h / max(k[1], 0.001) for h, k in zip(figures, k_runs, strict=True))
                return (
                    f"median {statistics.median(ratios):.2f}x "
                    f"(range {ratios[0]:.2f}-{ratios[-1]:.2f})"
                )

            print(
                "ratio per round, CPU: loaded "
                f"{per_round([r[3]['loaded_cpu'] for r in hactl_runs])}; `hactl check` whole "
                f"process {per_round([r[1] for r in check_runs])}"
            )
        met = loaded_cpu < 2.0 and loaded_cpu <= 3 * k_best[1]
        print(f"target (loaded < 2 s CPU and <= 3x keepalived): {'met' if met else 'not met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
