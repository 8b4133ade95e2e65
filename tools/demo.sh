#!/usr/bin/env bash
# Sets everything up and runs the main job on the bundled loopback example.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh runtime
. .venv/bin/activate
exec hactl check -f etc/hactl.conf.example
