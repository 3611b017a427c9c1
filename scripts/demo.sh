#!/usr/bin/env bash
# Set up a fresh machine and run dytune's main job on the embedded default model (offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec dytune demo "$@"
