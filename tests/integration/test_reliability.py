"""The reliability suite: a director pair (`hactl run` in two namespaces), three real servers
and continuous, bounded client load from six source addresses through the VIP, while faults
are injected. Each scenario prints one `RELIABILITY ...` line (failed / total requests, the
outage in ms, the bound and the verdict; tools/reliability.sh tabulates them) and asserts its
bounds. Scenarios marked `soak` run with `--run-soak`.

Timings: advert_int 1 s; checks every 0.5 s (`delay_loop`), connect_timeout 0.5 s, retry 1,
delay_before_retry 0.2 s; clients time out after 1 s.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.testbed import record
from tests.testbed.directors import REPO, DirectorSpec, env
from tests.testbed.faults import drop_sync_share, drop_vrrp, dropped, have_nft, heal
from tests.testbed.fixtures import bed, topology
from tests.testbed.load import ClientLoad, summarize
from tests.testbed.pair import MARGIN, Pair, masters, start_pair, vrrp_takeover_bound, wait_for
from tests.testbed.topology import Testbed, leftovers, testbed

__all__ = ["bed", "topology"]

pytestmark = [pytest.mark.netns, pytest.mark.timeout(150)]

CLIENT_TIMEOUT = 1.0
MASTER, BACKUP = DirectorSpec(priority=150), DirectorSpec(priority=100)


def _detection_bound(spec: DirectorSpec) -> float:
    """docs/checks.md: connect_timeout + retry * (delay_before_retry + connect_timeout) +
    delay_loop, plus the scheduling margin."""
    return (spec.connect_timeout + spec.retry * (spec.delay_before_retry + spec.connect_timeout)
            + spec.delay_loop + MARGIN)


def _servers_by_source(records: list[dict[str, Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in records:
        if r["ok"]:
            out.setdefault(str(r["src"]), set()).add(str(r["server"]))
    return out


def _outside(failures: tuple[dict[str, Any], ...],
             windows: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """Failed requests that started outside every (start, end) window."""
    return [r for r in failures if not any(a <= r["t"] <= b for a, b in windows)]


def _warm(load: ClientLoad, bed: Testbed, per_source: int = 3) -> None:
    sources = [str(a) for a in bed.client.extra]

    def served() -> bool:
        ok = _servers_by_source(load.records())
        return all(len([r for r in load.records() if r["src"] == s and r["ok"]]) >= per_source
                   for s in sources) and set(ok) == set(sources)

    assert wait_for(served, 10) is not None, "clients were not served before the fault"


def _wait_synced(pair: Pair, before: dict[str, set[str]], limit: float = 5.0) -> None:
    """Until the backup's table holds every client's template to its current real server
    (the master flushes sync datagrams within about a second, as the kernel does)."""
    expected = {src: pair.server_address(next(iter(v))) for src, v in before.items()}
    held = wait_for(lambda: pair.d2.templates() == expected, limit, step=0.2)
    assert held is not None, (pair.d2.ipvs("-Lnc"), expected)


# --------------------------------------------------------------------- the testbed itself


def test_testbed_removes_everything_when_the_body_fails() -> None:
    prefix = ""
    with pytest.raises(RuntimeError, match="body failed"), testbed() as built:
        prefix = built.prefix
        from tests.testbed.directors import start_real_servers

        start_real_servers(built)
        load = ClientLoad(built, duration=30)
        load.wait_records(5)
        assert leftovers(prefix), "the probe for leftovers sees nothing while things run"
        raise RuntimeError("body failed")
    assert leftovers(prefix) == []


_SIGTERM_CHILD = """
import sys, time
from tests.testbed.directors import start_real_servers
from tests.testbed.topology import testbed
with testbed() as bed:
    start_real_servers(bed)
    print(bed.prefix, flush=True)
    time.sleep(60)
"""


def test_testbed_removes_everything_on_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _SIGTERM_CHILD], cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        prefix = proc.stdout.readline().decode().strip()
        assert prefix, proc.stderr.read().decode() if proc.stderr else ""
        assert any(x.startswith("netns") for x in leftovers(prefix))
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode != 0  # interrupted, not finished
    assert leftovers(prefix) == []


def test_real_server_modes_answer_as_told(bed: Testbed) -> None:
    from tests.testbed.directors import start_real_servers
    from tests.testbed.topology import ns_run

    servers = start_real_servers(bed)
    target = str(bed.real_servers[0].address)
    probe = ("import socket,sys\n"
             "s=socket.create_connection((sys.argv[1],80),timeout=1)\n"
             "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
             "d=b''\n"
             "try:\n"
             "    while (c:=s.recv(4096)): d+=c\n"
             "except OSError as e: d+=b'<'+type(e).__name__.encode()+b'>'\n"
             "print(d.split(b'\\r\\n')[0].decode(), len(d.split(b'\\r\\n\\r\\n',1)[-1]),"
             " d[-20:])\n")

    def ask() -> str:
        out = ns_run(bed.client.netns, sys.executable, "-c", probe, target, check=False)
        return (out.stdout + out.stderr).strip()

    assert ask().startswith("HTTP/1.1 200 OK 4")
    for mode, expect in (("500", "HTTP/1.1 500"), ("close", "HTTP/1.1 200 OK 512"),
                         ("hang", "TimeoutError"), ("refuse", "ConnectionRefusedError"),
                         ("ok", "HTTP/1.1 200 OK 4")):
        servers[0].set_mode(mode)

        def answered(expect: str = expect) -> bool:
            return expect in ask()

        assert wait_for(answered, 5, step=0.1) is not None, (mode, ask())


# --------------------------------------------------------------------- director failures


def _restart_scenario(bed: Testbed, *, nopreempt: bool) -> None:
    master = DirectorSpec(priority=150, nopreempt=nopreempt)
    pair = start_pair(bed, master, BACKUP)
    load = ClientLoad(bed, duration=40, timeout=CLIENT_TIMEOUT)
    _warm(load, bed)
    before = _servers_by_source(load.records())
    _wait_synced(pair, before)
    killed = time.monotonic()
    pair.d1.kill9()
    takeover = wait_for(pair.d2.holds_vip, 10, step=0.01)
    assert takeover is not None
    time.sleep(1.5)
    restarted = time.monotonic()
    pair.d1.start()
    pair.d1.wait_started()
    bound = vrrp_takeover_bound(master.advert_int, master.priority)
    # A request in flight at the kill may fail too: the window opens one client timeout early.
    windows = [(killed - CLIENT_TIMEOUT, killed + takeover + 0.5)]
    if nopreempt:
        # d1 stays backup: the VIP must not move for well over a takeover interval.
        assert wait_for(lambda: pair.d1.state() == "BACKUP", 5) is not None
        assert wait_for(pair.d1.holds_vip, 2 * bound) is None
        assert masters(pair) == ["d2"]
        scenario = "restart_nopreempt"
        detail = f"takeover {takeover:.2f}s, restarted d1 stayed backup {2 * bound:.1f}s"
    else:
        # The VIP a killed daemon left on d1's interface is still there: d1 is back when it
        # is master again, not merely when the address is present.
        back = wait_for(lambda: pair.d1.state() == "MASTER" and pair.d1.holds_vip(), bound + 3,
                        step=0.01)
        assert back is not None, pair.d1.log_text()[-2000:]
        back_at = time.monotonic()
        assert back_at - restarted <= bound + 3  # start-up of the process included
        assert wait_for(lambda: masters(pair) == ["d1"], 2) is not None
        windows.append((back_at - 1.0, back_at + 0.5))
        scenario = "restart_preempt_back"
        detail = f"takeover {takeover:.2f}s, back {back_at - restarted:.2f}s after restart"
    time.sleep(3)
    records = load.stop()
    summary = summarize(records)
    late = _outside(summary.failures, windows)
    after = _servers_by_source([r for r in records if r["t"] > windows[-1][1]])
    moved = {s: (before[s], after.get(s)) for s in before if after.get(s) != before[s]}
    outage_bound = vrrp_takeover_bound(BACKUP.advert_int, BACKUP.priority)
    passed = not late and not moved and summary.outage_ms <= outage_bound * 1000
    record(scenario, summary, bound=f"outage<={outage_bound * 1000:.0f}ms", passed=passed,
           detail=detail)
    assert not late, ("failures outside the takeover windows (s after kill, source, error):",
                      [(round(r["t"] - killed, 3), r["src"], r["error"]) for r in late][:10],
                      [(round(a - killed, 3), round(b - killed, 3)) for a, b in windows])
    assert summary.outage_ms <= outage_bound * 1000
    assert not moved, f"persistent clients moved: {moved}"


def test_master_restart_with_higher_priority_preempts_back(bed: Testbed) -> None:
    _restart_scenario(bed, nopreempt=False)


@pytest.mark.soak
def test_master_restart_with_nopreempt_stays_backup(bed: Testbed) -> None:
    _restart_scenario(bed, nopreempt=True)


# --------------------------------------------------------------------- real-server failures


def _real_server_scenario(bed: Testbed, mode: str) -> None:
    pair = start_pair(bed, MASTER, BACKUP)
    load = ClientLoad(bed, duration=40, timeout=CLIENT_TIMEOUT)
    _warm(load, bed)
    victim = pair.servers[0]
    rs = f"{victim.host.address}:80"
    detect_bound = _detection_bound(MASTER)
    removed_before = pair.d1.count("ipvs.dest_removed", rs=rs)
    added_before = pair.d1.count("ipvs.dest_added", rs=rs)  # the start-up's
    fault = time.monotonic()
    if mode == "dies":
        victim.kill9()
    else:
        victim.set_mode(mode)
    detected = pair.d1.wait_event("ipvs.dest_removed", detect_bound + 5, rs=rs,
                                  at_least=removed_before + 1)
    assert detected is not None, pair.d1.log_text()[-3000:]
    time.sleep(2)
    restored_at = time.monotonic()
    if mode == "dies":
        victim.start()
    else:
        victim.set_mode("ok")
    restore_bound = MASTER.delay_loop * MASTER.rise + MASTER.connect_timeout + MARGIN
    restored = pair.d1.wait_event("ipvs.dest_added", restore_bound + 5, rs=rs,
                                  at_least=added_before + 1)
    assert restored is not None, pair.d1.log_text()[-3000:]
    restored_in = time.monotonic() - restored_at
    time.sleep(2)
    records = load.stop()
    summary = summarize(records)
    # A request that started just before the fault can still meet it (the mode file is read
    # every 50 ms): the window opens 0.1 s early.
    window = (fault - 0.1, fault + detected + CLIENT_TIMEOUT + 0.2)
    late = _outside(summary.failures, [window])
    outage_bound = (detect_bound + CLIENT_TIMEOUT) * 1000
    passed = (detected <= detect_bound and restored_in <= restore_bound and not late
              and summary.outage_ms <= outage_bound)
    record(f"real_server_{mode}", summary, bound=f"outage<={outage_bound:.0f}ms", passed=passed,
           detail=f"removed after {detected:.2f}s, re-added {restored_in:.2f}s after return")
    assert detected <= detect_bound, f"removed after {detected:.2f}s > {detect_bound:.2f}s"
    assert restored_in <= restore_bound, f"restored after {restored_in:.2f}s"
    assert not late, ("failures outside the detection window (s after the fault, source, error):",
                      [(round(r["t"] - fault, 3), r["src"], r["error"]) for r in late][:10])
    assert summary.outage_ms <= outage_bound
    # Clients of the failed server were moved to the others, and nobody else failed.
    victims = {str(r["src"]) for r in summary.failures}
    # (the server reads its mode file every 50 ms: allow that before the mode is in force)
    assert all(r["server"] != victim.host.name for r in records
               if r["ok"] and fault + 0.1 < r["t"] < restored_at)
    assert len(victims) <= len(bed.client.extra) // len(pair.servers) + 1, victims


@pytest.mark.parametrize("mode", ["refuse", "hang"])
def test_real_server_fails_and_returns(bed: Testbed, mode: str) -> None:
    _real_server_scenario(bed, mode)


@pytest.mark.soak
@pytest.mark.parametrize("mode", ["dies", "500", "close"])
def test_real_server_fails_and_returns_soak(bed: Testbed, mode: str) -> None:
    _real_server_scenario(bed, mode)


@pytest.mark.soak
def test_real_server_flapping_is_damped_by_rise(bed: Testbed) -> None:
    """refuse / ok every second for 8 s: with `rise 3` (1.5 s of success at delay_loop 0.5)
    the server is removed once and not re-added until it is steady again."""
    spec = DirectorSpec(priority=150, rise=3)
    pair = start_pair(bed, spec, DirectorSpec(priority=100, rise=3))
    load = ClientLoad(bed, duration=40, timeout=CLIENT_TIMEOUT)
    _warm(load, bed)
    victim = pair.servers[0]
    rs = f"{victim.host.address}:80"
    removed_before = pair.d1.count("ipvs.dest_removed", rs=rs)
    added_before = pair.d1.count("ipvs.dest_added", rs=rs)  # the start-up's
    start = time.monotonic()
    for i in range(8):
        victim.set_mode("refuse" if i % 2 == 0 else "ok")
        time.sleep(1.0)
    victim.set_mode("ok")
    steady = time.monotonic()
    removed = pair.d1.count("ipvs.dest_removed", rs=rs) - removed_before
    added_while_flapping = pair.d1.count("ipvs.dest_added", rs=rs) - added_before
    restore_bound = spec.delay_loop * spec.rise + spec.connect_timeout + MARGIN
    restored = pair.d1.wait_event("ipvs.dest_added", restore_bound + 5, rs=rs,
                                  at_least=added_before + 1)
    time.sleep(1)
    records = load.stop()
    summary = summarize(records)
    detect_bound = _detection_bound(spec)
    late = _outside(summary.failures,
                    [(start - 0.1, start + detect_bound + CLIENT_TIMEOUT)])
    passed = (removed == 1 and added_while_flapping == 0 and restored is not None
              and restored <= restore_bound and not late)
    record("real_server_flapping", summary,
           bound=f"outage<={(detect_bound + CLIENT_TIMEOUT) * 1000:.0f}ms", passed=passed,
           detail=f"removed {removed}x, re-added {added_while_flapping}x while flapping"
           + (f", {restored:.2f}s after steady" if restored is not None else ""))
    assert removed == 1 and added_while_flapping == 0, (removed, added_while_flapping)
    assert restored is not None and restored <= restore_bound, (restored, steady)
    assert not late, f"failures after the first detection window: {late[:5]}"


# --------------------------------------------------------------------- network faults


@pytest.mark.skipif(not have_nft(), reason="needs nft (apt-get install nftables)")
def test_partition_between_directors_split_brain_then_one_master(bed: Testbed) -> None:
    pair = start_pair(bed, MASTER, BACKUP)
    load = ClientLoad(bed, duration=40, timeout=CLIENT_TIMEOUT)
    _warm(load, bed)
    bound = vrrp_takeover_bound(BACKUP.advert_int, BACKUP.priority)
    cut = time.monotonic()
    drop_vrrp(pair.d2.host)  # d2 no longer hears d1: it takes over as well
    split = wait_for(lambda: masters(pair) == ["d1", "d2"], bound + 2, step=0.01)
    assert split is not None, masters(pair)
    assert pair.d2.state() == "MASTER"
    time.sleep(2)
    both = masters(pair) == ["d1", "d2"]
    # The one that hears a second master reports the split brain.
    reported = pair.d1.wait_event("vrrp.split_brain", 3)
    healed = time.monotonic()
    heal(pair.d2.host)
    one = wait_for(lambda: masters(pair) == ["d1"], 5, step=0.01)
    assert one is not None, masters(pair)
    time.sleep(3)
    records = load.stop()
    summary = summarize(records)
    # The backup steps down on the first advert it hears: within one advert interval, plus
    # the scheduling margin of a loaded machine.
    heal_bound = BACKUP.advert_int + MARGIN
    late = _outside(summary.failures, [(cut, healed + one + CLIENT_TIMEOUT + 0.5)])
    passed = both and reported is not None and one <= heal_bound and not late
    record("partition_split_brain", summary, bound=f"one_master<={heal_bound * 1000:.0f}ms",
           passed=passed,
           detail=f"2 masters after {split:.2f}s, {pair.d1.count('vrrp.split_brain')} "
           f"split_brain events, 1 master {one:.2f}s after heal")
    assert both, "two masters were expected while the directors could not hear each other"
    assert reported is not None, "no vrrp.split_brain event"
    assert one <= heal_bound, f"two masters {one:.2f}s after healing (> {heal_bound}s)"
    assert not late, f"failures after the heal window: {late[:5]}"


@pytest.mark.soak
@pytest.mark.skipif(not have_nft(), reason="needs nft (apt-get install nftables)")
def test_sync_under_loss_templates_converge(bed: Testbed) -> None:
    """Half of the sync datagrams dropped at the backup for 8 s: the drop counter shows it, the
    backup's table still converges to every client's template (re-sent with later
    connections), and after kill -9 of the master every persistent client stays."""
    pair = start_pair(bed, MASTER, BACKUP)
    drop_sync_share(pair.d2.host, mod=2)
    load = ClientLoad(bed, duration=40, timeout=CLIENT_TIMEOUT)
    _warm(load, bed)
    time.sleep(8)
    before = _servers_by_source(load.records())
    assert all(len(v) == 1 for v in before.values()), before
    expected = {src: pair.server_address(next(iter(v))) for src, v in before.items()}
    converged = wait_for(lambda: pair.d2.templates() == expected, 20, step=0.2)
    assert converged is not None, (pair.d2.ipvs("-Lnc"), expected)
    lost = dropped(pair.d2.host)
    killed = time.monotonic()
    pair.d1.kill9()
    takeover = wait_for(pair.d2.holds_vip, 10, step=0.01)
    assert takeover is not None
    time.sleep(3)
    records = load.stop()
    summary = summarize(records)
    window_end = killed + takeover + 0.5
    after = _servers_by_source([r for r in records if r["t"] > window_end])
    moved = {s: (before[s], after.get(s)) for s in before if after.get(s) != before[s]}
    late = _outside(summary.failures, [(killed - CLIENT_TIMEOUT, window_end)])
    passed = lost >= 2 and not moved and not late
    record("sync_under_loss", summary, bound="no_client_moved", passed=passed,
           detail=f"{lost} datagrams dropped, converged in {converged:.1f}s")
    assert lost >= 2, f"the loss rule dropped {lost} datagrams"
    assert not moved, f"clients moved after failover under sync loss: {moved}"
    assert not late, [(r["t"] - killed, r["src"], r["error"]) for r in late]
