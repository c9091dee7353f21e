# shellcheck shell=bash
# Sourced by scripts/demo.sh and scripts/test.sh, from the repository root.
#
# wachat_venv EXTRA [VENV]: make VENV (default .venv) hold an editable install of this checkout
# with EXTRA. The first run creates VENV with ${PYTHON:-python3}, upgrades pip and installs;
# later runs call pip only when the install is not current (scripts/_venv_state.py compares a
# stamp, VENV/.wachat-install-EXTRA.sha256, holding the sha256 of pyproject.toml, EXTRA and the
# Python version, and checks the package and the extra's requirements are still there). So a
# second run is fast and needs no network.
wachat_venv() {
  local extra="$1" venv="${2:-.venv}"
  if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv" || return
  fi
  if "$venv/bin/python" scripts/_venv_state.py check "$extra" "$venv"; then
    return 0
  fi
  if ! compgen -G "$venv/.wachat-install-*.sha256" >/dev/null; then
    # Nothing was installed into this venv by these scripts yet: start from a current pip.
    "$venv/bin/python" -m pip install --quiet --upgrade pip || return
  fi
  "$venv/bin/python" -m pip install --quiet -e ".[$extra]" || return
  "$venv/bin/python" scripts/_venv_state.py stamp "$extra" "$venv"
}

# wachat_python VERSION: print the path of a Python VERSION (such as 3.12), pyenv's (pyenv on
# PATH, else in its default place) or pythonVERSION on PATH, checked by running it (a pyenv shim
# of an inactive version fails); fail if there is none.
wachat_python() {
  local version="$1" prefix candidate
  prefix="$(PATH="$PATH:${PYENV_ROOT:-${HOME:-}/.pyenv}/bin" pyenv prefix "$version" 2>/dev/null)" ||
    prefix=""
  for candidate in ${prefix:+"$prefix/bin/python$version"} "python$version"; do
    if [ "$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
      = "$version" ]; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}
