# shellcheck shell=bash
# Sourced by scripts/demo.sh and scripts/test.sh, from the repository root.
#
# wachat_venv EXTRA: make .venv hold an editable install of this checkout with EXTRA. The first
# run creates .venv, upgrades pip and installs; later runs call pip only when the install is not
# current (scripts/_venv_state.py compares a stamp, .venv/.wachat-install-EXTRA.sha256, holding
# the sha256 of pyproject.toml, EXTRA and the Python version, and checks the package and the
# extra's requirements are still there). So a second run is fast and needs no network.
wachat_venv() {
  local extra="$1"
  if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv || return
  fi
  if .venv/bin/python scripts/_venv_state.py check "$extra"; then
    return 0
  fi
  if ! compgen -G '.venv/.wachat-install-*.sha256' >/dev/null; then
    # Nothing was installed into this venv by these scripts yet: start from a current pip.
    .venv/bin/python -m pip install --quiet --upgrade pip || return
  fi
  .venv/bin/python -m pip install --quiet -e ".[$extra]" || return
  .venv/bin/python scripts/_venv_state.py stamp "$extra"
}
