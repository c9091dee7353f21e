"""scripts/demo.sh and scripts/test.sh: pip runs on the first run and when .venv is stale, only.

Each test copies the scripts and pyproject.toml into a temporary root with stub Pythons: the
"system" one records ``-m venv`` and creates a fake venv whose ``python`` records ``-m pip``,
``-m pytest`` and ``-m coverage`` instead of running them, and runs everything else
(``scripts/_venv_state.py``) with this interpreter, where a stub ``wachat_async`` package shadows
the real one (the real install's metadata stands for the extras' requirements). The other
Pythons pyproject.toml claims are stubs too, found through a stub ``pyenv`` or on PATH, or
missing (PATH's ``python3.X`` fail, as pyenv's shims of inactive versions do). No network, no
real install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_SH = (ROOT / "scripts" / "test.sh").read_text(encoding="utf-8")
CLASSIFIERS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
    "classifiers"
]
PREFIX = "Programming Language :: Python :: 3."
#: The Pythons the package claims but this one: test.sh runs the fast tier on each.
OTHERS = [
    c.removeprefix("Programming Language :: Python :: ")
    for c in CLASSIFIERS
    if c.startswith(PREFIX) and c != f"{PREFIX}{sys.version_info.minor}"
]

# A fake venv's python (recorded as `python` in .venv, as `.venv-3.X/bin/python` elsewhere). Its
# "site-packages" is the folder named in VENV/site: `pip install -e` points it at the current
# folder (creating the stub package there if it is missing). FAIL_PYTEST fails `-m pytest`.
VENV_PYTHON = f"""#!/bin/sh
here="$(dirname "$0")"
venv="$(basename "$(dirname "$here")")"
me=python; [ "$venv" = .venv ] || me="$venv/bin/python"
case "$1 $2" in
  "-m coverage"|"scripts/verify_types.py ") echo "$me $*" >> "$CALLS"; exit 0;;
  "-m pytest") echo "$me $*" >> "$CALLS"; [ -z "$FAIL_PYTEST" ]; exit;;
  "-m pip")
    echo "$me $*" >> "$CALLS"
    [ -z "$FAIL_PIP" ] || exit 1
    if [ "$3" = install ] && [ "$5" = -e ]; then
      mkdir -p wachat_async && touch wachat_async/__init__.py && pwd > "$here/../site"
    fi
    exit 0;;
esac
PYTHONPATH="$(cat "$here/../site" 2>/dev/null)" exec {sys.executable} "$@"
"""
# A Python outside any venv: `system-python` (PYTHON, for .venv) or `python3.X` (another claimed
# version, which answers test.sh's version query). `-m venv DIR` makes a fake venv in DIR.
SYSTEM_PYTHON = """#!/bin/sh
name="$(basename "$0")"
if [ "$1" = -c ]; then echo "${name#python}"; exit 0; fi
echo "$name $*" >> "$CALLS"
mkdir -p "$3/bin" && cp "$STUBS/venv-python" "$3/bin/python" && chmod +x "$3/bin/python"
for tool in wachat-qr ruff mypy; do
  printf '#!/bin/sh\\necho "%s $*" >> "$CALLS"\\n' "$tool" > "$3/bin/$tool"
  chmod +x "$3/bin/$tool"
done
printf '#!/bin/sh\\necho "mkdocs $*" >> "$CALLS"\\necho "mkdocs log"\\n[ -z "$FAIL_MKDOCS" ]\\n' \\
  > "$3/bin/mkdocs"
chmod +x "$3/bin/mkdocs"
"""
# pyenv's `prefix VERSION`: the folder STUBS/pyenv/VERSION if a test made it.
PYENV = """#!/bin/sh
[ "$1" = prefix ] && [ -d "$STUBS/pyenv/$2" ] && echo "$STUBS/pyenv/$2"
"""
# What pyenv's shim of an inactive version does.
SHIM = """#!/bin/sh
echo "pyenv: $(basename "$0"): command not found" >&2
exit 127
"""
UPGRADE = "python -m pip install --quiet --upgrade pip"
VENV = "system-python -m venv .venv"


def install(extra: str) -> str:
    """The pip call that installs this checkout with *extra*."""
    return f"python -m pip install --quiet -e .[{extra}]"


class Repo:
    """A temporary copy of the repository's scripts with stub Pythons; runs commands in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "scripts").mkdir()
        for name in ("_venv.sh", "_venv_state.py", "demo.sh", "test.sh"):
            shutil.copy(ROOT / "scripts" / name, root / "scripts" / name)
        shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
        (root / "bin").mkdir()
        stubs = {"venv-python": VENV_PYTHON, "system-python": SYSTEM_PYTHON, "bin/pyenv": PYENV}
        stubs.update({f"bin/python{version}": SHIM for version in OTHERS})
        for name, text in stubs.items():
            self.stub(name, text)
        self.calls = root / "calls.log"
        self.env = {
            "PATH": f"{root / 'bin'}:{os.environ['PATH']}",
            "CALLS": str(self.calls),
            "STUBS": str(root),
            "PYTHON": str(root / "system-python"),
        }

    def stub(self, name: str, text: str) -> None:
        """Write the executable stub *name* (a path under the root)."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        path.chmod(0o755)

    def provide(self, version: str, via: str) -> None:
        """Make Python *version* findable, ``via`` pyenv or PATH."""
        folder = f"pyenv/{version}/bin" if via == "pyenv" else "bin"
        self.stub(f"{folder}/python{version}", SYSTEM_PYTHON)

    def run(self, command: str, **env: str) -> tuple[int, list[str]]:
        """Run a bash *command* in the root; return its status and the recorded calls."""
        self.calls.write_text("", encoding="utf-8")
        proc = subprocess.run(  # noqa: S603 - the test's own command, in a temporary root
            ["bash", "-c", command],  # noqa: S607 - bash from PATH, as a user runs the scripts
            cwd=self.root,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        self.stdout, self.stderr = proc.stdout, proc.stderr
        return proc.returncode, self.calls.read_text(encoding="utf-8").splitlines()

    def venv(self, extra: str, **env: str) -> list[str]:
        """``wachat_venv EXTRA`` (as the scripts call it); assert it succeeded; its calls."""
        status, calls = self.run(f"set -euo pipefail; source scripts/_venv.sh; wachat_venv {extra}")
        assert status == 0, self.stderr
        return calls


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path)


def test_first_run_creates_the_venv_upgrades_pip_and_installs(repo: Repo) -> None:
    """A fresh clone: venv, pip upgrade, editable install with the extra, then a stamp."""
    assert repo.venv("cli") == [VENV, UPGRADE, install("cli")]
    stamp = (repo.root / ".venv" / ".wachat-install-cli.sha256").read_text(encoding="ascii")
    assert len(stamp.strip()) == 64


@pytest.mark.parametrize("extra", ["cli", "dev"], ids=["demo-extra", "test-extra"])
def test_second_run_calls_no_pip(repo: Repo, extra: str) -> None:
    """Nothing changed since the last install: no pip call at all (fast, works offline)."""
    repo.venv(extra)
    assert repo.venv(extra) == []


def test_dev_after_cli_installs_dev_without_upgrading_pip(repo: Repo) -> None:
    """The test script after the demo installs [dev]; pip was upgraded on the first install."""
    repo.venv("cli")
    assert repo.venv("dev") == [install("dev")]
    assert repo.venv("dev") == []


def test_cli_after_dev_installs_nothing(repo: Repo) -> None:
    """[dev] includes [cli], so the demo after the test script runs no pip."""
    repo.venv("dev")
    assert repo.venv("cli") == []


def _edit_pyproject(repo: Repo) -> None:
    path = repo.root / "pyproject.toml"
    path.write_text(path.read_text(encoding="utf-8") + "\n# a new dependency\n", encoding="utf-8")


def _remove_package(repo: Repo) -> None:
    shutil.rmtree(repo.root / "wachat_async")


def _other_python(repo: Repo) -> None:
    (repo.root / ".venv" / ".wachat-install-cli.sha256").write_text("0" * 64, encoding="ascii")


def _delete_stamp(repo: Repo) -> None:
    (repo.root / ".venv" / ".wachat-install-cli.sha256").unlink()


@pytest.mark.parametrize(
    "change",
    [_edit_pyproject, _remove_package, _other_python, _delete_stamp],
    ids=["pyproject-changed", "package-not-importable", "stamp-from-other-python", "no-stamp"],
)
def test_stale_venv_reinstalls_without_upgrading_pip(
    repo: Repo, change: Callable[[Repo], None]
) -> None:
    """Any reason the install may not match: install again; pip is upgraded again only when
    no stamp at all is left (as on a first install)."""
    repo.venv("cli")
    change(repo)
    stamps = list((repo.root / ".venv").glob(".wachat-install-*.sha256"))
    upgrade = [] if stamps else ["python -m pip install --quiet --upgrade pip"]
    assert repo.venv("cli") == [*upgrade, install("cli")]


def test_package_from_another_clone_reinstalls(
    repo: Repo, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A .venv whose wachat_async lives in another checkout is not this checkout's install."""
    repo.venv("cli")
    other = tmp_path_factory.mktemp("other-clone")
    (other / "wachat_async").mkdir()
    (other / "wachat_async" / "__init__.py").write_text("", encoding="utf-8")
    (repo.root / ".venv" / "site").write_text(str(other), encoding="utf-8")
    assert repo.venv("cli") == [install("cli")]
    assert (repo.root / ".venv" / "site").read_text(encoding="utf-8").strip() == str(repo.root)


def test_failed_install_leaves_no_stamp_and_fails(repo: Repo) -> None:
    """If pip fails, the script fails and the next run tries again (no stamp was written)."""
    status, calls = repo.run("set -e; source scripts/_venv.sh; wachat_venv cli", FAIL_PIP="1")
    assert (status, calls) == (1, [VENV, UPGRADE])
    assert not list((repo.root / ".venv").glob(".wachat-install-*"))
    assert repo.venv("cli") == [UPGRADE, install("cli")]


def test_demo_script_installs_once_then_only_runs_the_demo(repo: Repo) -> None:
    """`bash scripts/demo.sh ARGS` installs [cli] the first time; later it only runs the demo."""
    assert repo.run("bash scripts/demo.sh --no-wait") == (
        0,
        [VENV, UPGRADE, install("cli"), "wachat-qr demo --no-wait"],
    )
    assert repo.run("bash scripts/demo.sh --no-wait") == (0, ["wachat-qr demo --no-wait"])


#: What `bash scripts/test.sh -x` runs in .venv: the gates, then the full suite with coverage.
GATES = [
    "ruff check .",
    "ruff format --check .",
    "mypy --strict wachat_async",
    "python scripts/verify_types.py",
    "mkdocs build --strict --site-dir SITE",
]
FULL_RUN = [
    "python -m coverage erase",
    "python -m coverage run -m pytest -x",
    "python -m coverage report",
]


def fast_tier(version: str) -> str:
    """The fast tier's pytest call on another Python, with the script's ``-x``."""
    return f".venv-{version}/bin/python -m pytest -m not slow -x"


def test_test_script_runs_every_gate_and_installs_dev_only_when_needed(repo: Repo) -> None:
    """`bash scripts/test.sh ARGS` after a demo run installs [dev] once, then runs the gates;
    each other claimed Python that cannot be found is skipped, saying how to get it."""
    repo.run("bash scripts/demo.sh")
    status, calls = repo.run("bash scripts/test.sh -x")
    assert (status, _site_dirs_named(calls)) == (0, [install("dev"), *GATES, *FULL_RUN])
    status, calls = repo.run("bash scripts/test.sh -x")
    assert (status, _site_dirs_named(calls)) == (0, [*GATES, *FULL_RUN])
    assert "mkdocs log" not in repo.stderr  # quiet when the docs build
    named = " ".join(OTHERS)
    notes = [line for line in repo.stdout.splitlines() if "not found" in line]
    assert notes == [  # said first, and again at the end of the long log
        f"== not found, so not tested here: {named} (pyenv install, or python3.X on PATH)",
        f"== not tested here, Python not found: {named}",
    ]


@pytest.mark.parametrize("via", ["pyenv", "path"])
def test_test_script_runs_the_fast_tier_on_each_other_claimed_python(repo: Repo, via: str) -> None:
    """Every other Python in pyproject's classifiers gets its own venv, set up once, and runs
    `pytest -m "not slow"` with the script's arguments, before the full run (fail fast)."""
    assert len(OTHERS) == 2  # 3.11-3.13 claimed, one of them runs this test
    for version in OTHERS:
        repo.provide(version, via)
    first_setup = [VENV, UPGRADE, install("dev")]
    for version in OTHERS:
        venv = f".venv-{version}"
        first_setup += [
            f"python{version} -m venv {venv}",
            f"{venv}/bin/{UPGRADE}",
            f"{venv}/bin/{install('dev')}",
            fast_tier(version),
        ]
    status, calls = repo.run("bash scripts/test.sh -x")
    assert (status, _site_dirs_named(calls)) == (
        0,
        [*first_setup[:3], *GATES, *first_setup[3:], *FULL_RUN],
    )
    status, calls = repo.run("bash scripts/test.sh -x")
    assert (status, _site_dirs_named(calls)) == (
        0,
        [*GATES, *(fast_tier(v) for v in OTHERS), *FULL_RUN],
    )


def test_test_script_stops_at_a_failing_fast_tier(repo: Repo) -> None:
    """The first other Python's fast tier fails: the script fails before the full run."""
    for version in OTHERS:
        repo.provide(version, "pyenv")
    repo.run("bash scripts/test.sh")
    status, calls = repo.run("bash scripts/test.sh -x", FAIL_PYTEST="1")
    assert (status, calls[-1]) == (1, fast_tier(OTHERS[0]))


def test_in_ci_a_claimed_python_that_is_missing_fails_the_run(repo: Repo) -> None:
    """With CI=true a Python the package claims must be there: the run fails at once, before
    any gate, naming it."""
    repo.provide(OTHERS[0], "path")
    status, calls = repo.run("bash scripts/test.sh -x", CI="true")
    assert status == 1
    assert calls[-1] == install("dev")  # set up, then nothing: no gate, no test ran
    missing = OTHERS[1]
    assert repo.stderr == (
        f"Python {missing} (claimed in pyproject.toml) not found: pyenv install {missing}\n"
    )


def _site_dirs_named(calls: list[str]) -> list[str]:
    """*calls* with mkdocs' --site-dir shown as SITE, after checking that folder is gone."""
    named = []
    for call in calls:
        if call.startswith("mkdocs "):
            site = call.split("--site-dir ", 1)[1]
            assert Path(site).is_absolute()
            assert not Path(site).exists()  # a throwaway folder, removed after the build
            call = call.replace(site, "SITE")
        named.append(call)
    return named


def test_test_script_stops_at_a_failing_docs_build_and_shows_its_log(repo: Repo) -> None:
    """A broken docs build fails scripts/test.sh before pytest, with mkdocs' log on stderr."""
    repo.run("bash scripts/test.sh")
    status, calls = repo.run("bash scripts/test.sh", FAIL_MKDOCS="1")
    assert status != 0
    assert calls[-1].startswith("mkdocs build --strict --site-dir ")
    assert "mkdocs log" in repo.stderr
    assert not Path(calls[-1].split("--site-dir ", 1)[1]).exists()


def test_test_script_does_not_quiet_mkdocs() -> None:
    """`mkdocs build -q` drops warnings before --strict counts them: a broken link would pass."""
    (line,) = [ln for ln in TEST_SH.splitlines() if ".venv/bin/mkdocs build" in ln]
    assert "--strict" in line
    assert not {"-q", "--quiet"} & set(line.replace('"', " ").split())


def test_ci_runs_exactly_the_test_script() -> None:
    """.ci/run ends by running `bash scripts/test.sh`, the README's command, and nothing else."""
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    commands = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert commands[-1] == "bash scripts/test.sh"
    assert sum("scripts/test.sh" in line for line in commands) == 1


@pytest.mark.parametrize("argv", [[], ["check"], ["frob", "cli"]], ids=["none", "one", "unknown"])
def test_venv_state_usage_errors(argv: list[str]) -> None:
    """A wrong call to scripts/_venv_state.py is exit 2 with a usage line."""
    proc = subprocess.run(  # noqa: S603 - our interpreter and script
        [sys.executable, str(ROOT / "scripts" / "_venv_state.py"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stderr) == (2, "usage: _venv_state.py check|stamp EXTRA [VENV]\n")
