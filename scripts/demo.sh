#!/usr/bin/env bash
# The demo: sets up .venv (if needed) and runs `wachat-qr demo` against the embedded fake server.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[cli]'
exec .venv/bin/wachat-qr demo "$@"
