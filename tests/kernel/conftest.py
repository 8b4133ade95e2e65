"""Kernel IPVS tests: run on a real Linux kernel inside one throw-away VM per pytest run.

Two modes, chosen by the environment:

* On the host (the default): the tests under tests/kernel are collected as usual, but none
  runs here. After collection, `tools/kernel-vm.sh` boots the VM once and runs pytest inside
  it on exactly the selected node ids, with `HACTL_KERNEL_VM=1`; every inner report (setup,
  call, teardown) is written as a JSON line to the shared results directory. Each host item
  then replays its inner reports, so passes, failures (with the inner traceback) and skips
  appear per test, as if the tests had run here. When the VM cannot run (qemu, busybox-static
  or a kernel with IPVS missing) or does not boot, every kernel test is skipped with the
  reason; `HACTL_REQUIRE_KERNEL_VM=1` turns that skip into a failure (for CI).
* Inside the VM (`HACTL_KERNEL_VM=1`): the tests run for real, against the guest kernel's
  IPVS, as root, in a guest that is discarded afterwards (they flush the table freely).
  Setting the variable on a disposable host whose own kernel has IPVS runs them there.

The guest's Python is the host's interpreter (`sys.executable`), reached over the shared
root filesystem.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "tools" / "kernel-vm.sh"
KERNEL_DIR = Path(__file__).resolve().parent
IN_VM = os.environ.get("HACTL_KERNEL_VM") == "1"
RESULTS_ENV = "HACTL_KERNEL_VM_RESULTS"
# The whole VM run (boot, inner pytest, power-off); the suite is budgeted at a few minutes.
VM_TIMEOUT = int(os.environ.get("HACTL_KERNEL_VM_TIMEOUT", "600"))


def _is_kernel_item(item: pytest.Item) -> bool:
    return Path(str(item.path)).resolve().is_relative_to(KERNEL_DIR)


# ---------------------------------------------------------------------------------------------
# Inside the VM: record every report for the host.


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    target = os.environ.get(RESULTS_ENV)
    if not IN_VM or not target:
        return
    entry: dict[str, Any] = {
        "nodeid": report.nodeid,
        "when": report.when,
        "outcome": report.outcome,
        "duration": report.duration,
        "longrepr": None,
        "sections": [list(s) for s in report.sections],
    }
    if report.skipped and isinstance(report.longrepr, tuple):
        entry["longrepr"] = list(report.longrepr)
    elif report.longrepr is not None:
        entry["longrepr"] = report.longreprtext
        crash = getattr(report.longrepr, "reprcrash", None)
        if crash is not None:
            entry["crash"] = [crash.path, crash.lineno, crash.message]
    with open(target, "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")


# ---------------------------------------------------------------------------------------------
# On the host: one VM run for every selected kernel test, then replay.


class _VmRun:
    """The outcome of the single VM run of this session."""

    def __init__(self) -> None:
        self.reports: dict[str, list[dict[str, Any]]] = {}
        self.skip_reason: str | None = None  # the VM could not run at all
        self.problem: str | None = None  # it ran, but not every test reported
        self.seconds = 0.0


def _console_tail(outdir: Path, lines: int = 40) -> str:
    try:
        text = (outdir / "console.log").read_text(errors="replace")
    except OSError:
        return "(no console log)"
    return "\n".join(text.splitlines()[-lines:])


def _run_vm(nodeids: list[str]) -> _VmRun:
    run = _VmRun()
    if shutil.which("bash") is None:
        run.skip_reason = "kernel VM tests need bash"
        return run
    # The guest sees the repository read-only: compile the bytecode here, once.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j0", str(REPO / "hactl"), str(KERNEL_DIR)],
        capture_output=True,
        check=False,
    )
    outdir = Path(tempfile.mkdtemp(prefix="hactl-kernel-vm-"))
    try:
        _run_vm_in(outdir, nodeids, run)
    finally:
        shutil.rmtree(outdir, ignore_errors=True)
    return run


def _run_vm_in(outdir: Path, nodeids: list[str], run: _VmRun) -> None:
    results = outdir / "results.jsonl"
    inner = [
        "env",
        "HACTL_KERNEL_VM=1",
        f"{RESULTS_ENV}={results}",
        "PYTHONDONTWRITEBYTECODE=1",
        f"PYTHONPATH={REPO}",
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        # Imports are slow under emulation: hypothesis alone costs tens of seconds there.
        "-p",
        "no:hypothesispytest",
        "-q",
        "--no-header",
        "--color=no",
        *nodeids,
    ]
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(RUNNER), "-q", "-o", str(outdir), "-t", str(VM_TIMEOUT), "--", *inner],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    run.seconds = time.monotonic() - start
    if proc.returncode == 77:
        run.skip_reason = proc.stderr.strip() or "kernel VM prerequisites are missing"
        return
    if proc.returncode == 125:
        run.skip_reason = "the kernel VM did not boot; console tail:\n" + _console_tail(outdir)
        return
    if results.exists():
        for line in results.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            run.reports.setdefault(entry["nodeid"], []).append(entry)
    if proc.returncode not in (0, 1):
        run.problem = (
            f"the VM run ended with status {proc.returncode}"
            + (" (time limit reached)" if proc.returncode == 124 else "")
            + f"; console tail:\n{_console_tail(outdir)}\n{proc.stderr.strip()}"
        )


_STATE: dict[str, _VmRun] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Iterator[None]:
    if not IN_VM and not session.config.option.collectonly:
        items = [item for item in session.items if _is_kernel_item(item)]
        if items:
            reporter = session.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(f"kernel VM: running {len(items)} tests in a VM ...")
            run = _run_vm([item.nodeid for item in items])
            _STATE["run"] = run
            if reporter is not None:
                tests = sum(e["duration"] for es in run.reports.values() for e in es)
                reporter.write_line(
                    f"kernel VM: done in {run.seconds:.1f}s ({tests:.1f}s in the tests, the rest"
                    " booting and starting Python under emulation)"
                )
    return (yield)


class _InnerCrash:
    """Where and why an inner test failed (what the short summary line shows)."""

    def __init__(self, path: str, lineno: int, message: str) -> None:
        self.path, self.lineno, self.message = path, lineno, message


class _InnerRepr:
    """An inner failure's text, shown as pytest shows its own."""

    def __init__(self, text: str, crash: list[Any] | None) -> None:
        self.text = text
        self.reprcrash = _InnerCrash(str(crash[0]), int(crash[1]), str(crash[2])) if crash else None

    def toterminal(self, out: Any) -> None:
        for line in self.text.splitlines():
            out.line(line)

    def __str__(self) -> str:
        return self.text


def _report(item: pytest.Item, entry: dict[str, Any]) -> pytest.TestReport:
    longrepr: Any = entry["longrepr"]
    if entry["outcome"] == "skipped" and isinstance(longrepr, list):
        longrepr = (str(longrepr[0]), longrepr[1], str(longrepr[2]))
    elif isinstance(longrepr, str):
        longrepr = _InnerRepr(longrepr, entry.get("crash"))
    return pytest.TestReport(
        nodeid=item.nodeid,
        location=item.location,
        keywords={k: 1 for k in item.keywords},
        outcome=entry["outcome"],
        longrepr=longrepr,
        when=entry["when"],
        sections=[tuple(s) for s in entry.get("sections", [])],
        duration=entry["duration"],
    )


def _synthetic(item: pytest.Item, when: str, outcome: str, longrepr: Any) -> pytest.TestReport:
    return pytest.TestReport(
        nodeid=item.nodeid,
        location=item.location,
        keywords={k: 1 for k in item.keywords},
        outcome=outcome,  # type: ignore[arg-type]
        longrepr=longrepr,
        when=when,  # type: ignore[arg-type]
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    if IN_VM or not _is_kernel_item(item):
        return None
    run = _STATE.get("run")
    hook = item.ihook
    hook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports: list[pytest.TestReport]
    if run is None or run.skip_reason is not None:
        reason = run.skip_reason if run is not None else "the kernel VM was not started"
        if os.environ.get("HACTL_REQUIRE_KERNEL_VM") == "1":
            reports = [_synthetic(item, "setup", "failed", f"kernel VM required: {reason}")]
        else:
            path, line, _ = item.location
            reports = [_synthetic(item, "setup", "skipped", (path, (line or 0) + 1, reason))]
    elif item.nodeid in run.reports:
        reports = [_report(item, entry) for entry in run.reports[item.nodeid]]
    else:
        why = run.problem or "the test was selected but reported nothing inside the VM"
        reports = [_synthetic(item, "setup", "failed", f"no result from the kernel VM: {why}")]
    for report in reports:
        hook.pytest_runtest_logreport(report=report)
    hook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


# ---------------------------------------------------------------------------------------------
# Fixtures for the tests themselves (used inside the VM only).


def ipvsadm(*args: str) -> str:
    """Run the real ipvsadm and return its standard output (raises on failure)."""
    return sh_input("", "ipvsadm", *args)


def sh_input(stdin: str, *cmd: str, timeout: float = 120) -> str:
    """Run a command inside the VM with `stdin` as its input; its output (raises on failure).

    The time limit is generous: under emulation on a busy host every process start is slow.
    """
    proc = subprocess.run(list(cmd), input=stdin, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc.stdout


def sh(*cmd: str) -> str:
    """Run a command inside the VM and return its standard output (raises on failure)."""
    return sh_input("", *cmd)


@pytest_asyncio.fixture
async def kipvs() -> AsyncIterator[Any]:
    """A `KernelIpvs` on an empty table, with the kernel's default timeouts; flushed after."""
    from hactl.ipvs.kernel import KernelIpvs
    from hactl.ipvs.model import IpvsTimeouts

    if not IN_VM:
        pytest.skip("runs inside the kernel VM only")
    ipvs = await KernelIpvs.open()
    await ipvs.lvs_flush()
    await ipvs.set_timeouts(IpvsTimeouts())
    try:
        yield ipvs
    finally:
        with contextlib.suppress(Exception):
            await ipvs.lvs_flush()
        ipvs.close()
