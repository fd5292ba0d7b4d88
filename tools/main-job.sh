#!/usr/bin/env bash
# The main job: set everything up on a fresh Debian machine (as root), then
# load the plugin through nova-compute's own driver loader against nova 33
# and nova 34, in both concurrency modes, and print what was loaded.
# (The all-in-one Nova scenario run takes this place once it exists.)
set -euo pipefail

cd "$(dirname "$0")/.."
./tools/install-deps.sh
exec .venv-tools/bin/tox -e selfcheck-nova33,selfcheck-nova34
