"""Is a venv's install of this checkout current for an extra? Used by ``scripts/_venv.sh``.

``python scripts/_venv_state.py check EXTRA [VENV]`` exits 0 when the stamp
``VENV/.wachat-install-EXTRA.sha256`` (VENV: ``.venv`` unless given) holds the sha256 of
(pyproject.toml, EXTRA, this Python's version) *and* the install is intact: ``wachat_async``
resolves to this checkout and every requirement of ``.[EXTRA]`` is installed. Otherwise it
exits 1 and the caller reinstalls.

``python scripts/_venv_state.py stamp EXTRA [VENV]`` runs after ``pip install -e .[EXTRA]`` and
writes the stamp for EXTRA and for every extra it includes (``dev`` includes ``cli``, so a demo
run after a test run installs nothing).

It runs under ``VENV/bin/python``, uses the standard library (and the ``packaging`` that pip
vendors, for requirement markers), and never imports wachat_async.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a bare venv: pip always brings its own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DIST = "wachat-async"


def stamp_path(extra: str, venv: str) -> Path:
    """Where the stamp for *extra* lives, inside the venv (deleting it deletes the stamp)."""
    return ROOT / venv / f".wachat-install-{extra}.sha256"


def digest(extra: str) -> str:
    """The sha256 of pyproject.toml, the extra's name and the running Python's version."""
    h = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    h.update(f"\0{extra}\0{sys.version}".encode())
    return h.hexdigest()


def requirements(extra: str) -> set[str]:
    """The requirements ``.[extra]`` installs here (markers evaluated), as canonical strings."""
    wanted = set()
    for line in importlib.metadata.requires(DIST) or ():
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": extra}):
            req.marker = None
            req.name = canonicalize_name(req.name)
            wanted.add(str(req))
    return wanted


def installed(extra: str) -> bool:
    """wachat_async comes from this checkout, and every requirement of the extra is present."""
    try:
        spec = importlib.util.find_spec("wachat_async")
        extras = importlib.metadata.metadata(DIST).get_all("Provides-Extra") or []
        wanted = requirements(extra)
    except (ImportError, importlib.metadata.PackageNotFoundError, ValueError):
        return False
    if spec is None or spec.origin is None or extra not in extras:
        return False
    if not Path(spec.origin).resolve().is_relative_to(ROOT):
        return False  # an install of another clone, or a .venv copied from elsewhere
    for line in wanted:
        try:
            importlib.metadata.distribution(Requirement(line).name)
        except importlib.metadata.PackageNotFoundError:
            return False
    return True


def check(extra: str, venv: str) -> bool:
    """True when the stamp is current and the install intact: no pip run is needed."""
    try:
        current = stamp_path(extra, venv).read_text(encoding="ascii").strip() == digest(extra)
    except (OSError, UnicodeError):
        return False
    return current and installed(extra)


def stamp(extra: str, venv: str) -> list[str]:
    """Record that ``.[extra]`` is installed, for it and every extra it includes."""
    if not installed(extra):
        raise SystemExit(f"_venv_state.py: .[{extra}] is not installed from {ROOT}")
    done = requirements(extra)
    covered = [
        other
        for other in importlib.metadata.metadata(DIST).get_all("Provides-Extra") or []
        if requirements(other) <= done
    ]
    for other in covered:
        path = stamp_path(other, venv)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(digest(other) + "\n", encoding="ascii")
        os.replace(tmp, path)
    return covered


def main(argv: list[str]) -> int:
    """``check EXTRA [VENV]`` or ``stamp EXTRA [VENV]``; see the module docstring."""
    if len(argv) not in (2, 3) or argv[0] not in ("check", "stamp"):
        print("usage: _venv_state.py check|stamp EXTRA [VENV]", file=sys.stderr)
        return 2
    command, extra, venv = [*argv, ".venv"][:3]
    if command == "check":
        return 0 if check(extra, venv) else 1
    stamp(extra, venv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
