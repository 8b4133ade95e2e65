#!/usr/bin/env bash
# The loopback demo: three small HTTP real servers and hactl in front of them, on one
# machine, without root. Sets everything up first (tools/setup.sh runtime); Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh runtime
. .venv/bin/activate

conf=etc/demo-loopback.conf
if ! python -m hactl check -f "$conf" >/dev/null; then
    python -m hactl check -f "$conf"
    exit 1
fi

# The control API on a unix socket (mode 0600) in a private directory, with the operator
# overrides next to it: the demo needs neither root nor /run.
rundir=$(mktemp -d "${TMPDIR:-/tmp}/hactl-demo.XXXXXX")
api="$rundir/api.sock"
export HACTL_API="$api"

pids=()
names=()
for n in 1 2 3; do
    python -m hactl.testing.demo_servers "127.0.0.1$n:8081=web$n" &
    pids+=("$!")
    names+=("web$n")
done
python -m hactl run -f "$conf" --api "$api" --state-file "$rundir/overrides.json" &
director=$!

stopped=0
cleanup() {
    [ "$stopped" = 1 ] && return
    stopped=1
    # The director first (it stops checking, closes the VIP), then the real servers.
    kill -TERM "$director" 2>/dev/null || true
    wait "$director" 2>/dev/null || true
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$rundir"
    echo "demo stopped"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

for _ in $(seq 50); do [ -S "$api" ] && break; sleep 0.1; done
cat <<INFO

  hactl loopback demo (director pid $director; logs below on standard error)

  VIP      http://127.0.0.100:8080/   (round robin over three real servers)
  try      for i in 1 2 3 4 5 6; do curl -s http://127.0.0.100:8080/; done
  fail one kill ${pids[1]}    # ${names[1]} leaves the pool within a few seconds
  reload   edit $conf, then: kill -HUP $director   (or: python -m hactl reload --dry-run)
  stop     Ctrl-C

  operate it (another shell; the API socket is $api):
    export HACTL_API=$api
    python -m hactl status
    python -m hactl ipvs -Ln
    python -m hactl drain 127.0.0.100:8080 127.0.0.12:8081 --wait --timeout 30
    python -m hactl enable 127.0.0.100:8080 127.0.0.12:8081

INFO
wait "$director"
