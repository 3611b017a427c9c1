#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite (slow real-model tests included).
# Pass pytest arguments to narrow it, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
python3 -m pytest -q "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing loudly rather than passing an empty run" >&2
  exit 1
fi
exit "$status"
