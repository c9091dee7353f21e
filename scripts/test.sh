#!/usr/bin/env bash
# The full test command: sets up .venv (if needed) and runs every quality gate.
# Usage (from the repository root): bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
echo "== ruff check";          .venv/bin/ruff check .
echo "== ruff format --check"; .venv/bin/ruff format --check .
echo "== mypy --strict";       .venv/bin/mypy --strict wachat_async
echo "== pytest (branch coverage, warnings as errors)"
.venv/bin/python -m coverage erase
.venv/bin/python -m coverage run -m pytest "$@"
echo "== coverage (fail under 95%)"
.venv/bin/python -m coverage report
