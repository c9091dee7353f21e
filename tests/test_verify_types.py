"""scripts/verify_types.py: what fails the type completeness gate, judged on pyright's JSON report.

pyright itself runs once, in scripts/test.sh (a few seconds of CPU); these tests feed the judge
reports shaped like ``pyright --verifytypes --outputjson`` prints them.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "verify_types", ROOT / "scripts" / "verify_types.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


verify_types = _load()


def report(
    *symbols: dict[str, Any], score: float | None = 1.0, general: Any = ()
) -> dict[str, Any]:
    """A pyright --verifytypes report with *symbols*, *score* and *general* diagnostics."""
    return {
        "version": "1.1.414",
        "generalDiagnostics": list(general),
        "typeCompleteness": {
            "completenessScore": score,
            "exportedSymbolCounts": {"withKnownType": 50, "withAmbiguousType": 1},
            "otherSymbolCounts": {"withKnownType": 280, "withUnknownType": 0},
            "symbols": list(symbols),
        },
    }


def symbol(name: str, severity: str, message: str, file: str = "") -> dict[str, Any]:
    """One symbol of the report, with one diagnostic."""
    diagnostic: dict[str, Any] = {"file": file, "severity": severity, "message": message}
    if file:
        diagnostic["range"] = {"start": {"line": 82, "character": 22}}
    return {"name": name, "category": "variable", "diagnostics": [diagnostic]}


CONVERTER = symbol(
    "wachat_async._retry.RetryPolicy.__converterDescriptor_statuses",
    "warning",
    'No docstring found for class "wachat_async._retry.RetryPolicy.__converterDescriptor_statuses"',
)


def test_a_complete_report_passes_even_with_pyrights_converter_descriptors() -> None:
    """100%, and the only warnings are on classes pyright synthesizes: no problem."""
    assert verify_types.problems(report(CONVERTER)) == []


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (
            symbol(
                "wachat_async._stream.QRStream.width",
                "error",
                'Type is missing type annotation\n  Inferred type is "int"',
                file=str(ROOT / "wachat_async" / "_stream.py"),
            ),
            "wachat_async._stream.QRStream.width: wachat_async/_stream.py:83: Type is missing "
            'type annotation Inferred type is "int"',
        ),
        (
            symbol("wachat_async.Thing", "warning", 'No docstring found for class "Thing"'),
            'wachat_async.Thing: No docstring found for class "Thing"',
        ),
        (
            symbol("wachat_async.f", "warning", "No docstring found for function", file="/x/f.py"),
            "wachat_async.f: /x/f.py:83: No docstring found for function",
        ),
    ],
    ids=["ambiguous-type", "undocumented-class", "undocumented-function-outside-repo"],
)
def test_each_symbol_diagnostic_is_a_problem_with_its_place(bad: Any, expected: str) -> None:
    """An ambiguous type or a missing docstring of our own fails, named with file and line."""
    assert verify_types.problems(report(bad, CONVERTER)) == [expected]


def test_an_error_on_a_converter_descriptor_still_fails() -> None:
    """Only the docstring warning of a synthesized class is excused, not an error on it."""
    bad = {**CONVERTER, "diagnostics": [{"severity": "error", "message": "unknown type"}]}
    assert verify_types.problems(report(bad)) == [f"{CONVERTER['name']}: unknown type"]


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (report(score=0.973), ["completeness score 97.3%, not 100%"]),
        (
            report(score=0.0, general=[{"severity": "error", "message": "No py.typed file found"}]),
            ["error: No py.typed file found", "completeness score 0.0%, not 100%"],
        ),
        ({"generalDiagnostics": []}, ["error: the report has no typeCompleteness section"]),
        (report(score=None), ["completeness score None, not 100%"]),
    ],
    ids=["score-below-100", "package-not-found", "no-completeness-section", "no-score"],
)
def test_a_report_that_is_not_complete_fails(broken: Any, expected: list[str]) -> None:
    """A score under 100% or a report pyright could not make fails, saying why."""
    assert verify_types.problems(broken) == expected


def test_summary_names_the_score_the_counts_and_the_version() -> None:
    """The one line the gate prints."""
    assert verify_types.summary(report(score=1.0)) == (
        "type completeness 100.0% (51 exported symbols, 280 referenced), pyright 1.1.414"
    )


def test_pyright_runs_with_the_venv_first_on_path_and_its_caches_in_the_venv(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--verifytypes finds the package through the ``python`` on PATH: the venv's must lead."""
    monkeypatch.delenv("PYRIGHT_PYTHON_CACHE_DIR", raising=False)
    monkeypatch.delenv("PYRIGHT_PYTHON_IGNORE_WARNINGS", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin")
    env = verify_types.pyright_env("/repo/.venv/bin/python")
    assert env["PATH"].split(":") == ["/repo/.venv/bin", "/usr/bin"]
    assert env["PYRIGHT_PYTHON_CACHE_DIR"] == str(ROOT / ".venv" / "pyright-cache")
    assert env["PYRIGHT_PYTHON_IGNORE_WARNINGS"] == "1"  # no look-up of PyPI at every run


@pytest.mark.parametrize("argv", [["a", "b"], ["--help"]], ids=["two-packages", "an-option"])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """More than one package, or an option, is a usage error."""
    assert verify_types.main(argv) == 2
    assert capsys.readouterr().err == "usage: verify_types.py [PACKAGE]\n"


def test_without_node_it_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No Node.js anywhere: fail at once with the fix, instead of pyright trying a download."""
    monkeypatch.setattr(verify_types, "has_node", lambda env: False)
    assert verify_types.main([]) == 1
    assert "pyright needs Node.js" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("stdout", "status", "shown"),
    [
        (json.dumps(report(CONVERTER)), 0, "type completeness 100.0%"),
        (json.dumps(report(score=0.5)), 1, "completeness score 50.0%, not 100%"),
        ("npm ERR! offline", 1, "pyright printed no report (exit 1)"),
    ],
    ids=["complete", "incomplete", "no-report"],
)
def test_main_judges_what_pyright_printed(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stdout: str,
    status: int,
    shown: str,
) -> None:
    """main runs pyright on wachat_async in the repository and exits by the judge's verdict."""
    calls = []

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append((command, kwargs["cwd"]))
        return subprocess.CompletedProcess(command, 1, stdout=stdout, stderr="")

    monkeypatch.setattr(verify_types.subprocess, "run", run)
    monkeypatch.setattr(verify_types, "has_node", lambda env: True)
    assert verify_types.main([]) == status
    out = capsys.readouterr()
    assert shown in out.out + out.err
    [(command, cwd)] = calls
    assert command[1:] == [
        "-m",
        "pyright",
        "--verifytypes",
        "wachat_async",
        "--ignoreexternal",
        "--outputjson",
    ]
    assert cwd == ROOT


def test_pyright_is_pinned_in_the_dev_extra() -> None:
    """The gate's judge is one exact pyright version, installed with the dev extra."""
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]["dev"]
    assert [req for req in dev if req.startswith("pyright")] == ["pyright==1.1.414"]
