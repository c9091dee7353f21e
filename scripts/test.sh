#!/usr/bin/env bash
# The full test command: sets up .venv (if needed) and runs every quality gate; then the fast
# tier on each other Python version pyproject.toml claims, each in its own .venv-3.X; then the
# full suite with coverage.
# Usage (from the repository root): bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/_venv.sh
source scripts/_venv.sh
wachat_venv dev  # pip runs only when .venv is not current (scripts/_venv.sh)
# Every other Python that pyproject.toml's classifiers claim runs the fast tier (below), each in
# its own .venv-3.X. Found first, so that a missing one fails a CI run at once (elsewhere: a note).
main="$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
others=()
missing=""
for version in $(.venv/bin/python -c '
import tomllib
for c in tomllib.load(open("pyproject.toml", "rb"))["project"]["classifiers"]:
    if c.startswith("Programming Language :: Python :: 3."):
        print(c.rsplit(" ", 1)[1])'); do
  [ "$version" != "$main" ] || continue
  if python="$(wachat_python "$version")"; then
    others+=("$version=$python")
  elif [ "${CI:-}" = "true" ]; then
    echo "Python $version (claimed in pyproject.toml) not found: pyenv install $version" >&2
    exit 1
  else
    missing+=" $version"
  fi
done
[ -z "$missing" ] || echo "== not found, so not tested here:$missing (pyenv install, or python3.X on PATH)"
echo "== ruff check";          .venv/bin/ruff check .
echo "== ruff format --check"; .venv/bin/ruff format --check .
echo "== mypy --strict";       .venv/bin/mypy --strict wachat_async
# Type completeness of everything users import (core, testing/, cli/, web/): 100%, every public
# class and function documented (scripts/verify_types.py says what it checks and why).
echo "== pyright --verifytypes wachat_async"; .venv/bin/python scripts/verify_types.py
echo "== mkdocs build --strict"
# Into a throwaway folder; its log is shown only on failure. Not --quiet: mkdocs then drops the
# warnings before --strict counts them, so a broken link would pass.
site="$(mktemp -d)"
if ! docs_log="$(NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$site" 2>&1)"; then
  rm -rf "$site"; printf '%s\n' "$docs_log" >&2; exit 1
fi
rm -rf "$site"
for found in "${others[@]}"; do
  version="${found%%=*}"
  echo "== pytest -m 'not slow' on Python $version (${found#*=})"
  PYTHON="${found#*=}" wachat_venv dev ".venv-$version"
  ".venv-$version/bin/python" -m pytest -m "not slow" "$@"
done
echo "== pytest on Python $main (branch coverage, warnings as errors)"
.venv/bin/python -m coverage erase
.venv/bin/python -m coverage run -m pytest "$@"
echo "== coverage (fail under 95%)"
.venv/bin/python -m coverage report
[ -z "$missing" ] || echo "== not tested here, Python not found:$missing"
