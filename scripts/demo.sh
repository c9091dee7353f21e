#!/usr/bin/env bash
# The demo: sets up .venv (if needed) and runs `wachat-qr demo` against the embedded fake server.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/_venv.sh
source scripts/_venv.sh
wachat_venv cli  # pip runs only when .venv is not current (scripts/_venv.sh)
exec .venv/bin/wachat-qr demo "$@"
