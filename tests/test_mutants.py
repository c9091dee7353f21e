"""scripts/mutants/run.py --check: every hand-made mutant still names code that exists, once.

The mutants themselves run by hand (minutes of CPU); this check runs no test, only reads the
modules, so code that moved or changed cannot leave a mutant silently testing nothing.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "mutants" / "run.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutants_run", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


mutants = _load()


def test_every_mutant_matches_its_module_exactly_once() -> None:
    """`run.py --check` passes on this tree: no stale snippet, no missing test file."""
    proc = subprocess.run(  # noqa: S603 - our interpreter and script
        [sys.executable, str(SCRIPT), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.splitlines()[-1] == f"{len(mutants.MUTANTS)} mutants: " + (
        f"{len(mutants.MUTANTS)} ready, 0 stale"
    )


def _mutant(mutant_id: str) -> Any:
    """The mutant named *mutant_id*."""
    (found,) = [m for m in mutants.MUTANTS if m.id == mutant_id]
    return found


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"old": "no such code anywhere"}, "0 matches in {path}; found in: no module"),
        (
            {"path": "wachat_async/_client.py"},
            "0 matches in wachat_async/_client.py; found in: {path} (1)",
        ),
        ({"new": "{old}"}, "the replacement is the snippet itself"),
        ({"tests": ("tests/test_gone.py",)}, "no such test file: tests/test_gone.py"),
    ],
    ids=["snippet-gone", "snippet-moved-to-another-module", "no-change", "test-file-gone"],
)
def test_a_stale_mutant_says_why(change: dict[str, object], expected: str) -> None:
    """Each way a mutant goes stale is reported, naming where its snippet is now."""
    base = _mutant("retry-after-past-date-negative")
    fields = {"id": base.id, "path": base.path, "old": base.old, "new": base.new}
    fields["tests"] = base.tests
    wanted = expected.format(**fields)  # {path}, {old}: the real mutant's
    fields.update({k: v.format(**fields) if isinstance(v, str) else v for k, v in change.items()})
    assert mutants.stale(mutants.Mutant(**fields)) == wanted


def test_check_fails_and_names_each_stale_mutant(capsys: pytest.CaptureFixture[str]) -> None:
    """--check exits 1 with one STALE line per broken mutant (an EQUIVALENT entry that names
    no mutant included), and runs no test."""
    good = mutants.MUTANTS[0]
    bad = mutants.Mutant("moved-away", good.path, "gone()", "went()", good.tests)
    assert mutants.check([good, bad], {"renamed": "why"}) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("moved-away")
    assert "STALE: 0 matches" in out[0]
    assert out[1].startswith("renamed")
    assert out[1].endswith("STALE: listed in EQUIVALENT but no such mutant")
    assert out[-1] == "2 mutants: 0 ready, 2 stale"
