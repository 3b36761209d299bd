#!/usr/bin/env bash
# Runs the Python test suites (sbx SDK, tensorlake compatibility, OpenAPI fuzzing) in their own virtualenv.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=$root/target/py-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q -r "$root/tests/python/requirements.txt"
# The sbx Python SDK, from this checkout (reinstalled: it changes with the tree).
"$venv/bin/pip" install -q --force-reinstall --no-deps "$root/sdk/python"
export SBX_BIN=${SBX_BIN:-$root/target/release/sbx}
export SBX_AGENT_BIN=${SBX_AGENT_BIN:-$root/target/x86_64-unknown-linux-gnu/release/sbx-agent}
cd "$root/tests/python"
exec "$venv/bin/python" -m pytest -v -p no:cacheprovider "$@"
