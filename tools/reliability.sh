#!/usr/bin/env bash
# The reliability suite: every scenario of tests/integration/test_reliability*.py and
# tests/integration/test_failover_sync.py, and the control API fuzzing
# (tests/shell/api/test_api_fuzz.py), soak-marked ones included (--run-soak), then one table
# of scenario, failed/total requests, outage, bound and verdict. Needs root (network
# namespaces); nftables for the partition and sync-loss scenarios; keepalived for the
# comparison. Extra arguments go to pytest (e.g. -k partition). Interpreter: $PYTHON, else
# .venv/bin/python (tools/setup.sh). Exit status: pytest's.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
if [ "$(id -u)" -ne 0 ]; then
    echo "reliability.sh: needs root (network namespaces)" >&2
    exit 2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
HACTL_RELIABILITY_RESULTS="$work/results" "$PY" -m pytest \
    tests/integration/test_failover_sync.py tests/integration/test_reliability.py \
    tests/integration/test_reliability_operations.py \
    tests/integration/test_reliability_hostile.py \
    tests/integration/test_reliability_limits.py \
    tests/integration/test_reliability_keepalived.py \
    tests/shell/api/test_api_fuzz.py \
    --run-soak -q -p no:cacheprovider --junitxml="$work/junit.xml" "$@"
status=$?
elapsed=$(( $(date +%s) - started ))
"$PY" - "$work/results" "$work/junit.xml" "$elapsed" <<'PY'
import sys
import xml.etree.ElementTree as ET

results, junit, elapsed = sys.argv[1], sys.argv[2], sys.argv[3]
rows = []
try:
    lines = open(results, encoding="utf-8").read().splitlines()
except OSError:
    lines = []
for line in lines:
    fields = dict(x.split("=", 1) for x in line.split()[1:] if "=" in x)
    rows.append((fields["scenario"], f"{fields['failed']}/{fields['total']}",
                 fields["outage_ms"], fields["bound"].replace("_", " "), fields["result"],
                 fields.get("detail", "-").replace("_", " ")))
tests = failed = skipped = 0
unmeasured = []
try:
    for case in ET.parse(junit).iter("testcase"):
        tests += 1
        bad = case.find("failure") is not None or case.find("error") is not None
        skipped += case.find("skipped") is not None
        failed += bad
        if bad:
            unmeasured.append(case.get("name", "?"))
except (OSError, ET.ParseError):
    pass
head = ("scenario", "failed/total", "outage ms", "bound", "result", "detail")
width = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
print()
print("| " + " | ".join(h.ljust(w) for h, w in zip(head, width)) + " |")
print("|" + "|".join("-" * (w + 2) for w in width) + "|")
for r in rows:
    print("| " + " | ".join(c.ljust(w) for c, w in zip(r, width)) + " |")
print(f"\n{tests} tests, {failed} failed, {skipped} skipped, {elapsed} s")
for name in unmeasured:
    print(f"failed: {name} (see the pytest output above)")
PY
exit $status
