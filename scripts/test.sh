#!/usr/bin/env bash
# The full test command: sets up .venv (if needed) and runs every quality gate.
# Usage (from the repository root): bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/_venv.sh
source scripts/_venv.sh
wachat_venv dev  # pip runs only when .venv is not current (scripts/_venv.sh)
echo "== ruff check";          .venv/bin/ruff check .
echo "== ruff format --check"; .venv/bin/ruff format --check .
echo "== mypy --strict";       .venv/bin/mypy --strict wachat_async
echo "== mkdocs build --strict"
# Into a throwaway folder; its log is shown only on failure. Not --quiet: mkdocs then drops the
# warnings before --strict counts them, so a broken link would pass.
site="$(mktemp -d)"
if ! docs_log="$(NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$site" 2>&1)"; then
  rm -rf "$site"; printf '%s\n' "$docs_log" >&2; exit 1
fi
rm -rf "$site"
echo "== pytest (branch coverage, warnings as errors)"
.venv/bin/python -m coverage erase
.venv/bin/python -m coverage run -m pytest "$@"
echo "== coverage (fail under 95%)"
.venv/bin/python -m coverage report
