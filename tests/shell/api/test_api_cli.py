"""The CLI as a user runs it (a separate process) against the app on a unix socket or TCP."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from hactl.api.model import ReloadResult
from hactl.api.testing import sample_reload_plan
from tests.shell.api.api_support import RS1, RS2, TOKEN, VS, make_director, run_cli, serve

# Each case runs the CLI as a process (about a second each: the aiohttp import dominates).
pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio, pytest.mark.slow]


async def test_drain_wait_shows_connections_falling(tmp_path: Path) -> None:
    director = make_director()
    director.set_connections(VS, RS1, active=4, inactive=3, persistent=0)
    director.decay_per_read = 1  # every poll sees one connection fewer of each kind
    async with serve(tmp_path, director=director) as h:
        api = str(h.socket_path)
        before = await run_cli("ipvs", "-Ln", "--api", api)
        assert before.code == 0
        assert re.search(r"-> 10\.0\.1\.2:80\s+Masq\s+1\s", before.out)
        result = await run_cli("drain", "10.0.0.1:80", "10.0.1.2:80", "--wait",
                               "--timeout", "30", "--api", api)
        assert result.code == 0, result.err
        progress = [line for line in result.err.splitlines() if line.startswith("draining")]
        actives = [int(m.group(1)) for line in progress
                   if (m := re.search(r"active (\d+) inactive", line))]
        assert len(actives) >= 2
        assert actives == sorted(actives, reverse=True) and actives[0] > actives[-1]
        assert result.out.startswith("drained: 10.0.1.2:80 in tcp:10.0.0.1:80 after ")
        assert result.out.rstrip().endswith("removed from IPVS")
        after = await run_cli("ipvs", "-Ln", "--api", api)
        assert "10.0.1.2:80" not in after.out and "10.0.1.3:80" in after.out
        status = await run_cli("status", "--api", api)
        assert status.code == 0
        assert re.search(r"10\.0\.1\.2:80 .*\[disable\]\s+\(not in IPVS\)", status.out)
        # Draining again is a no-op that reports the outcome.
        again = await run_cli("drain", "10.0.0.1:80", "10.0.1.2:80", "--api", api)
        assert again.code == 0 and again.out.startswith("drained:")


async def test_drain_timeout_exits_1_and_keep_leaves_quiesced(tmp_path: Path) -> None:
    director = make_director()
    director.set_connections(VS, RS2, active=9, inactive=0)
    async with serve(tmp_path, director=director) as h:
        result = await run_cli("drain", "10.0.0.1:80", "10.0.1.3:80", "--wait", "--timeout",
                               "0.3", "--keep", "--api", str(h.socket_path))
        assert result.code == 1
        assert result.out.startswith("drain timed out: 10.0.1.3:80")
        assert "active 9 inactive 0 persistent 0 left" in result.out
        assert "left quiesced (weight 0)" in result.out
        listing = await run_cli("ipvs", "-Ln", "--api", str(h.socket_path))
        assert re.search(r"-> 10\.0\.1\.3:80\s+Masq\s+0\s+9\s", listing.out)
        # Without --wait: started, the first reading shown, exit 0.
        director.set_connections(VS, RS1, active=2, inactive=5, persistent=1)
        started = await run_cli("drain", "10.0.0.1:80", "10.0.1.2:80", "--timeout", "60",
                                "--api", str(h.socket_path))
        assert started.code == 0
        assert re.fullmatch(r"draining 10\.0\.1\.2:80 in tcp:10\.0\.0\.1:80: active 2 "
                            r"inactive 5 persistent 1 \(0s, (60|59)s left\)\n", started.out)


async def test_enable_disable_weight_and_exit_codes(tmp_path: Path) -> None:
    async with serve(tmp_path) as h:
        api = ["--api", str(h.socket_path)]
        disabled = await run_cli("disable", "10.0.0.1:80", "10.0.1.3:80", "--reason", "kernel",
                                 *api)
        assert (disabled.code, disabled.out) == (
            0, "10.0.1.3:80: disable; health up, not in IPVS\n")
        weighted = await run_cli("weight", "10.0.0.1:80", "10.0.1.3:80", "5", *api)
        assert weighted.out == "10.0.1.3:80: weight 5; health up, weight 5\n"
        enabled = await run_cli("enable", "tcp:10.0.0.1:80", "10.0.1.3:80", *api)
        assert enabled.out == "10.0.1.3:80: enabled (health decides); health up, weight 2\n"

        unknown = await run_cli("enable", "10.0.0.1:80", "10.9.9.9:80", *api)
        assert unknown.code == 4 and "no real server 10.9.9.9:80" in unknown.err
        bad = await run_cli("drain", "10.0.0.1", "10.0.1.3:80", *api)
        assert bad.code == 2 and "expected ADDRESS:PORT" in bad.err
        usage = await run_cli("weight", "10.0.0.1:80", "10.0.1.3:80", "many", *api)
        assert usage.code == 2
        range_error = await run_cli("weight", "10.0.0.1:80", "10.0.1.3:80", "70000", *api)
        assert range_error.code == 2 and "0-65535" in range_error.err
    gone = await run_cli("status", "--api", str(tmp_path / "api.sock"))
    assert gone.code == 3 and "cannot reach hactl" in gone.err
    env = await run_cli("status", env={"HACTL_API": str(tmp_path / "nowhere.sock")})
    assert env.code == 3 and "nowhere.sock" in env.err


async def test_tcp_with_and_without_token(tmp_path: Path) -> None:
    async with serve(tmp_path, unix=False, tcp=True) as h:
        denied = await run_cli("disable", "10.0.0.1:80", "10.0.1.2:80", "--api", h.url)
        assert denied.code == 5 and "bearer token" in denied.err
        status = await run_cli("status", "--api", h.url)  # reads are open
        assert status.code == 0
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        allowed = await run_cli("disable", "10.0.0.1:80", "10.0.1.2:80", "--api", h.url,
                                "--token-file", str(token_file))
        assert allowed.code == 0, allowed.err
        by_env = await run_cli("enable", "10.0.0.1:80", "10.0.1.2:80",
                               env={"HACTL_API": h.url, "HACTL_API_TOKEN": TOKEN})
        assert by_env.code == 0, by_env.err
        missing = await run_cli("status", "--api", h.url, "--token-file",
                                str(tmp_path / "missing"))
        assert missing.code == 2


async def test_reload_dry_run_prints_the_plan(tmp_path: Path) -> None:
    director = make_director()
    director.reload_result = sample_reload_plan()
    async with serve(tmp_path, director=director) as h:
        result = await run_cli("reload", "--dry-run", "--api", str(h.socket_path))
        assert result.code == 0
        assert result.out == (
            "plan (dry run, nothing applied):\n"
            "  + real_server tcp:10.0.0.1:80 10.0.1.3:80  (weight 1)\n"
            "  ~ real_server tcp:10.0.0.1:80 10.0.1.2:80  (weight 1 -> 2)\n"
        )
        assert director.reloads == [True]
        director.reload_result = ReloadResult(
            ok=False, dry_run=False,
            diagnostics=("/etc/hactl/hactl.conf:12:5: error: unknown keyword 'wieght'",),
        )
        rejected = await run_cli("reload", "--api", str(h.socket_path))
        assert rejected.code == 1
        assert rejected.out == (
            "configuration rejected; the running state is unchanged:\n"
            "/etc/hactl/hactl.conf:12:5: error: unknown keyword 'wieght'\n"
        )


async def test_ipvs_views(tmp_path: Path) -> None:
    async with serve(tmp_path) as h:
        api = ["--api", str(h.socket_path)]
        listing = await run_cli("ipvs", "-Ln", *api)
        assert listing.out.splitlines()[:4] == [
            "IP Virtual Server version 1.2.1 (size=4096)",
            "Prot LocalAddress:Port Scheduler Flags",
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
            "TCP  10.0.0.1:80 wlc",
        ]
        save = await run_cli("ipvs", "--save", "-n", *api)
        assert save.out.splitlines()[0] == "-A -t 10.0.0.1:80 -s wlc"
        stats = await run_cli("ipvs", "-Ln", "--stats", *api)
        assert "Conns" in stats.out.splitlines()[1]
        one = await run_cli("ipvs", "-Ln", "-t", "10.0.0.1:80", *api)
        assert one.out.splitlines()[2] == "TCP  10.0.0.1:80 wlc"
        missing = await run_cli("ipvs", "-Ln", "-t", "10.0.0.9:80", *api)
        assert missing.code == 4
        conns = await run_cli("ipvs", "-Lnc", *api)
        assert conns.out.splitlines() == [
            "IPVS connection entries",
            "pro expire state       source             virtual            destination",
            "TCP 14:59  ESTABLISHED 192.0.2.7:40000    10.0.0.1:80        10.0.1.2:80",
        ]
        timeout = await run_cli("ipvs", "--timeout", *api)
        assert timeout.out == "Timeout (tcp tcpfin udp): 900 120 300\n"
        both = await run_cli("ipvs", "--stats", "--rate", *api)
        assert both.code == 2


async def test_concurrent_watchers_see_the_same_outcome(tmp_path: Path) -> None:
    director = make_director()
    director.set_connections(VS, RS1, active=3, inactive=0)
    director.decay_per_read = 1
    async with serve(tmp_path, director=director) as h:
        api = ["--api", str(h.socket_path)]
        results = await asyncio.gather(*(
            run_cli("drain", "10.0.0.1:80", "10.0.1.2:80", "--wait", *api) for _ in range(3)
        ))
        assert [r.code for r in results] == [0, 0, 0]
        assert all(r.out.startswith("drained:") for r in results)
