"""keepalived 2.2.7 as an oracle: `keepalived -t` and `hactl check` agree on every file,
except the deliberate, documented differences in `KNOWN_DIFFERENCES`.

Files: the keepalived sample corpus (../shared) and the golden configurations of
tests/unit/config/data/{good,bad}. keepalived runs in a fresh network namespace holding the
interfaces the files name (eth0..eth3, eth0.1), so that "interface does not exist" — an
environment problem, not a configuration one — does not decide its verdict.

A verdict is "valid" or "invalid": `keepalived -t` exit status 0 / non-zero, and
`hactl check` exit status 0 / 1. A table entry that stops being a difference fails too, so
the table stays true.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from hactl.cli import main

pytestmark = pytest.mark.keepalived

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "unit" / "config" / "data"
CORPUS = REPO.parent / "shared" / "corpus" / "keepalived-samples"

INTERFACES = ("eth0", "eth1", "eth2", "eth3", "eth0.1")

# Per file: the config id both tools use (keepalived -i / hactl -i).
CONFIG_IDS = {"keepalived.conf.conditional_conf": "high"}
DEFAULT_CONFIG_ID = "lb1"

VALID, INVALID = "valid", "invalid"

# file (a corpus name, or good/NAME, bad/NAME) -> (keepalived's verdict, hactl's verdict,
# evidence, why). `evidence` is a regular expression keepalived's output must match, so the
# difference is the one described and not a new one. `keepalived -t` exits non-zero on any
# remark it logs, including those where it changes the configuration itself and carries on;
# hactl makes those warnings (or, where the file uses what keepalived 2.2.7 cannot express,
# accepts it). Every entry is a deliberate choice of hactl, never a bug parked here.
KNOWN_DIFFERENCES: dict[str, tuple[str, str, str, str]] = {
    "keepalived.conf.SSL_GET": (
        INVALID,
        VALID,
        r"Initial state master is incompatible with AH authentication - clearing",
        "keepalived silently turns `state MASTER` into BACKUP when AH authentication is used; "
        "the file itself is well formed",
    ),
    "keepalived.conf.fwmark": (
        INVALID,
        VALID,
        r"protocol specified for fwmark - protocol will be ignored",
        "a remark about a harmless redundant keyword, not an error",
    ),
    "keepalived.conf.track_interface": (
        INVALID,
        VALID,
        r"cannot track route 192\.168\.112\.0/24 with no interface specified",
        "a route without `dev` is valid; keepalived only notes that it will not track it",
    ),
    "keepalived.conf.vrrp.routes": (
        INVALID,
        VALID,
        r"cannot track route .* with no interface specified|\"gw\" for routes is deprecated",
        "untracked routes and deprecated spellings are remarks, not errors",
    ),
    "keepalived.conf.vrrp.static_ipaddress": (
        INVALID,
        VALID,
        r"cannot track route 192\.168\.112\.0/24 with no interface specified",
        "a route without `dev` is valid; keepalived only notes that it will not track it",
    ),
    "keepalived.conf.vrrp.localcheck": (
        INVALID,
        VALID,
        r"SECURITY VIOLATION - scripts are being executed but script_security not enabled",
        "a run-time security policy of keepalived (script ownership), not a property of the "
        "file's syntax or values",
    ),
    # hactl's golden configurations.
    "good/checkers.conf": (
        INVALID,
        VALID,
        r"Unknown keyword 'dynamic'",
        "uses keywords of later keepalived releases that hactl accepts",
    ),
    "good/extensions.conf": (
        INVALID,
        VALID,
        r"Unknown keyword 'proxy_protocol'",
        "exercises hactl's documented extensions, unknown to keepalived",
    ),
    "good/lvs_sync.conf": (
        INVALID,
        VALID,
        r"Unknown keyword 'ipvs_sysctl'",
        "uses hactl's `ipvs_sysctl` extension block",
    ),
    "good/sequence.conf": (
        INVALID,
        VALID,
        r"no scheduler set, setting default 'wlc'",
        "keepalived remarks that a virtual server has no scheduler and picks wlc; hactl fills "
        "the same default silently",
    ),
    "good/unicast.conf": (
        INVALID,
        VALID,
        r"vrrp script interval '0\.5' must be between 1 and 4294",
        "hactl accepts fractional <TIMER> values everywhere; keepalived 2.2.7 reads a "
        "vrrp_script interval as whole seconds (and its interfaces ens5/ens6 are absent here)",
    ),
}


def _netns_ok() -> str | None:
    if os.geteuid() != 0:
        return "needs root to give keepalived a network namespace with eth0..eth3"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        return "unshare -n does not work here"
    return None


SCRIPT = """
set -e
ip link set lo up
i=0
for name in {names}; do
    ip link add "$name" type veth peer name "hpeer$i"
    ip link set "$name" up
    i=$((i + 1))
done
exec keepalived -t -l -n -i "$1" -f "$2" \\
    --pid="$3/k.pid" --vrrp_pid="$3/v.pid" --checkers_pid="$3/c.pid" --bfd_pid="$3/b.pid"
"""


def keepalived_verdict(path: Path, config_id: str) -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        script = SCRIPT.format(names=" ".join(INTERFACES))
        proc = subprocess.run(
            ["unshare", "-n", "sh", "-c", script, "sh", config_id, str(path), tmp],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=30,
            check=False,
        )
    return (VALID if proc.returncode == 0 else INVALID), proc.stdout + proc.stderr


def hactl_verdict(
    path: Path, config_id: str, capsys: pytest.CaptureFixture[str]
) -> tuple[str, str]:
    status = main(["check", "-f", str(path), "-i", config_id])
    out = capsys.readouterr().out
    assert status in (0, 1), out
    return (VALID if status == 0 else INVALID), out


def files() -> list[Path]:
    found: list[Path] = []
    if CORPUS.is_dir():
        found += sorted(CORPUS.iterdir())
    for kind in ("good", "bad"):
        if (GOLDEN / kind).is_dir():
            found += sorted((GOLDEN / kind).glob("*.conf"))
    return found


@pytest.mark.parametrize("path", files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_verdicts_agree(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reason = _netns_ok()
    if reason:
        pytest.skip(reason)
    config_id = CONFIG_IDS.get(path.name, DEFAULT_CONFIG_ID)
    theirs, their_output = keepalived_verdict(path, config_id)
    ours, our_output = hactl_verdict(path, config_id, capsys)
    key = path.name if path.parent == CORPUS else f"{path.parent.name}/{path.name}"
    known = KNOWN_DIFFERENCES.get(key)
    if known is None:
        assert ours == theirs, (
            f"keepalived says {theirs}, hactl says {ours}\n--- keepalived\n{their_output}"
            f"\n--- hactl\n{our_output}"
        )
    else:
        expected_theirs, expected_ours, evidence, why = known
        assert (theirs, ours) == (expected_theirs, expected_ours), (
            f"stale KNOWN_DIFFERENCES entry ({why}): keepalived says {theirs}, hactl {ours}"
        )
        assert re.search(evidence, their_output), (
            f"keepalived no longer says {evidence!r}:\n{their_output}"
        )


def test_there_is_something_to_compare() -> None:
    assert files(), "neither the corpus nor the golden files were found"


# Lexical features (the front end's own ground) that both tools must read alike: each case
# is a set of files (the first is the one checked) and the verdict both must give.
VRRP = (
    "  state BACKUP\n  interface eth0\n  virtual_router_id {vrid}\n  priority {prio}\n"
    "  virtual_ipaddress {{\n    10.0.{vrid}.1/24\n  }}\n"
)
LEXICAL_CASES: dict[str, tuple[dict[str, str], str]] = {
    "braces-quotes-comments": (
        {
            "main.conf": 'global_defs{router_id "LB 1" # comment\n}\n'
            "vrrp_instance VI_1\n{\n" + VRRP.format(vrid=51, prio=100) + "} ! done\n"
        },
        VALID,
    ),
    "conditionals-definitions-seq": (
        {
            "main.conf": "$IF=eth0\n@lb1 $PRIO=150\n@^lb1 $PRIO=50\n"
            "$VI= \\\nvrrp_instance VI_${N} { \\\n  state BACKUP \\\n  interface $IF \\\n"
            "  virtual_router_id ${N} \\\n  priority $PRIO \\\n  virtual_ipaddress { \\\n"
            "    10.0.${N}.1/24 \\\n  } \\\n}\n\n~SEQ(N, 1, 3) $VI\n"
        },
        VALID,
    ),
    "include-glob-relative": (
        {
            "main.conf": "global_defs {\n  router_id LB\n}\ninclude conf.d/*.conf\n",
            "conf.d/10-a.conf": "vrrp_instance A {\n" + VRRP.format(vrid=1, prio=10) + "}\n",
            "conf.d/20-b.conf": "vrrp_instance B {\n" + VRRP.format(vrid=2, prio=20) + "}\n",
        },
        VALID,
    ),
    "seq-makes-unknown-keywords": (
        {"main.conf": "global_defs {\n  ~SEQ(N, 1, 2) bogus_${N} 1\n}\n"},
        INVALID,
    ),
    "conditional-hides-a-bad-line": (
        {"main.conf": "global_defs {\n  router_id A\n  @other bogus_keyword 1\n}\n"},
        VALID,
    ),
    "conditional-shows-a-bad-line": (
        {"main.conf": "global_defs {\n  router_id A\n  @lb1 bogus_keyword 1\n}\n"},
        INVALID,
    ),
}


@pytest.mark.parametrize("name", sorted(LEXICAL_CASES))
def test_lexical_features_agree(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = _netns_ok()
    if reason:
        pytest.skip(reason)
    files_, expected = LEXICAL_CASES[name]
    for rel, text in files_.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    main_file = tmp_path / next(iter(files_))
    theirs, their_output = keepalived_verdict(main_file, DEFAULT_CONFIG_ID)
    ours, our_output = hactl_verdict(main_file, DEFAULT_CONFIG_ID, capsys)
    assert theirs == expected, their_output
    assert ours == expected, our_output
