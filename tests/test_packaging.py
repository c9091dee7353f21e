"""What a user gets from a built sdist/wheel, and what the examples' install lines bring."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
EXAMPLE_SCRIPTS = sorted((ROOT / "examples").glob("*.py"))
#: First-party modules that need an extra beyond the base install.
FIRST_PARTY_EXTRAS = {
    "wachat_async.testing": "testing",
    "wachat_async.cli": "cli",
    "wachat_async.web.starlette": "web-starlette",
    "wachat_async.web.fastapi": "web-fastapi",
}
INSTALL_LINE = re.compile(r"pip install -e '\.\[([a-z0-9_,-]+)\]'")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sdist and the wheel, built offline by hatchling's PEP 517 hooks from this checkout."""
    pytest.importorskip("hatchling", reason="the dev extra installs hatchling")
    out = tmp_path_factory.mktemp("dist")
    code = (
        "import sys\nfrom hatchling.build import build_sdist, build_wheel\n"
        "print(build_sdist(sys.argv[1]))\nprint(build_wheel(sys.argv[1]))\n"
    )
    proc = subprocess.run(  # noqa: S603 - our interpreter, fixed code
        [sys.executable, "-c", code, str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    sdist_name, wheel_name = proc.stdout.split()
    return out / sdist_name, out / wheel_name


def test_license_file_is_mit_like_the_metadata() -> None:
    """LICENSE exists, is the MIT text, and pyproject declares MIT and ships that file."""
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text
    assert (PROJECT["license"], PROJECT["license-files"]) == ("MIT", ["LICENSE"])


def test_sdist_ships_the_license_and_the_sources(dist: tuple[Path, Path]) -> None:
    """The sdist holds LICENSE (byte for byte), the package with py.typed, tests and examples."""
    sdist, _ = dist
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {name.removeprefix(top + "/") for name in tar.getnames()}
        member = tar.extractfile(f"{top}/LICENSE")
        assert member is not None
        license_bytes = member.read()
    assert license_bytes == (ROOT / "LICENSE").read_bytes()
    assert {"pyproject.toml", "README.md", "ARCHITECTURE.md", "wachat_async/py.typed"} <= names
    assert {"examples/aiohttp_proxy.py", "tests/test_packaging.py", "scripts/_venv.sh"} <= names
    assert not [n for n in names if n.startswith((".venv/", ".ci/")) or "__pycache__" in n]


def test_wheel_ships_the_license_py_typed_and_the_metadata(dist: tuple[Path, Path]) -> None:
    """The wheel has LICENSE under dist-info/licenses, py.typed, and MIT + extras in METADATA."""
    _, wheel = dist
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        info = meta_name.removesuffix("METADATA")
        metadata = whl.read(meta_name).decode()
        assert whl.read(f"{info}licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
    assert "wachat_async/py.typed" in names
    assert "License-Expression: MIT" in metadata.splitlines()
    assert "License-File: LICENSE" in metadata.splitlines()
    extras = {line.split(": ", 1)[1] for line in metadata.splitlines() if "Provides-Extra" in line}
    assert {"cli", "testing", "examples", "dev"} <= extras
    assert not [n for n in names if n.startswith(("tests/", "examples/"))]


def _requirements(extras: set[str]) -> set[str]:
    """Canonical distribution names installed by ``.[extras]``, self-references expanded."""
    names = {canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]}
    pending, seen = set(extras), set()
    while pending:
        extra = pending.pop()
        seen.add(extra)
        for line in PROJECT["optional-dependencies"][extra]:
            req = Requirement(line)
            if canonicalize_name(req.name) == "wachat-async":
                pending |= req.extras - seen
            else:
                names.add(canonicalize_name(req.name))
    return names | {f"wachat-async[{extra}]" for extra in seen}


@pytest.mark.parametrize("example", EXAMPLE_SCRIPTS, ids=[p.name for p in EXAMPLE_SCRIPTS])
def test_example_install_line_brings_every_module_it_imports(example: Path) -> None:
    """The docstring's one `pip install -e '.[...]'` line provides each third-party import."""
    docstring = ast.get_docstring(ast.parse(example.read_text(encoding="utf-8"))) or ""
    lines = INSTALL_LINE.findall(docstring)
    assert len(lines) == 1, f"{example.name}: want one install line, found {lines}"
    extras = set(lines[0].split(","))
    assert extras <= set(PROJECT["optional-dependencies"]), extras
    missing = _not_brought(_imports_of(example.read_text(encoding="utf-8")), extras)
    assert missing == [], f"{example.name}: {lines[0]!r} does not bring {missing}"


def _imports_of(code: str) -> set[str]:
    """Every module *code* imports, at the top or inside a function (lazy imports count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _not_brought(modules: set[str], extras: set[str]) -> list[str]:
    """The third-party or extra-gated modules that ``.[extras]`` does not install."""
    provided = _requirements(extras)
    by_module = importlib.metadata.packages_distributions()
    missing = []
    for module in sorted(modules):
        top = module.split(".")[0]
        if top in sys.stdlib_module_names or top == "__future__":
            continue
        if top == "wachat_async":
            need = FIRST_PARTY_EXTRAS.get(module)
            if need is not None and f"wachat-async[{need}]" not in provided:
                missing.append(f"{module} (needs the {need} extra)")
            continue
        dists = {canonicalize_name(d) for d in by_module.get(top, [])}
        if not dists & provided:
            missing.append(f"{module} (from {sorted(dists) or 'an unknown distribution'})")
    return missing


def _web_fragments() -> list[tuple[str, str, str]]:
    """(page, install line's extras, code) for each Python block right after a paragraph that
    names one ``pip install -e '.[...]'`` line: README's and docs/web.md's web backends."""
    found = []
    for page in ("README.md", "docs/web.md"):
        text = (ROOT / page).read_text(encoding="utf-8")
        for match in re.finditer(
            r"\n\n((?:[^\n]+\n)+)\n(?:<!--[^\n]*-->\n)?```python\n(.*?)```", text, re.S
        ):
            lines = INSTALL_LINE.findall(match.group(1))
            if lines:
                found.append((page, lines[-1], match.group(2)))
    return found


WEB_FRAGMENTS = _web_fragments()


def test_web_fragments_are_found() -> None:
    """Control: both pages' Starlette/FastAPI blocks follow an install line."""
    pages = sorted({page for page, _, code in WEB_FRAGMENTS if "fastapi" in code})
    assert pages == ["README.md", "docs/web.md"], WEB_FRAGMENTS


@pytest.mark.parametrize(
    ("page", "extras", "code"),
    WEB_FRAGMENTS,
    ids=[f"{page}-{extras}" for page, extras, _ in WEB_FRAGMENTS],
)
def test_a_docs_block_runs_with_the_extra_its_paragraph_installs(
    page: str, extras: str, code: str
) -> None:
    """The last extra named before a block (FastAPI's: web-fastapi) brings all it imports."""
    missing = _not_brought(_imports_of(code), set(extras.split(",")))
    assert missing == [], f"{page}: {extras!r} does not bring {missing}"


def test_web_fastapi_brings_an_asgi_server() -> None:
    """The FastAPI extra runs the app as the docs say (`uvicorn app:app`): uvicorn is in it."""
    assert {"fastapi", "uvicorn", "starlette"} <= _requirements({"web-fastapi"})


def _listed_extras(page: str) -> list[tuple[str, set[str]]]:
    """Every list of extras on *page*: the install comment, the sentence or the table."""
    text = (ROOT / page).read_text(encoding="utf-8")
    lists = [
        (f"{page} comment", set(m.split(", "))) for m in re.findall(r"extras: ([a-z, -]+)\n", text)
    ]
    sentence = re.search(r"^Extras: (.*?)\n\n", text, re.S | re.M)
    if sentence:
        lists.append((f"{page} sentence", set(re.findall(r"`([a-z-]+)` \(", sentence.group(1)))))
    table = re.findall(r"^\| `([a-z-]+)` \|", text, re.M)
    if table:
        lists.append((f"{page} table", set(table)))
    return lists


EXTRAS_LISTS = [
    item for page in ("README.md", "docs/getting-started.md") for item in _listed_extras(page)
]


def test_every_extras_list_is_found() -> None:
    """Control: README's comment and sentence, getting-started's comment and table."""
    assert sorted(where for where, _ in EXTRAS_LISTS) == [
        "README.md comment",
        "README.md sentence",
        "docs/getting-started.md comment",
        "docs/getting-started.md table",
    ]


@pytest.mark.parametrize(("where", "listed"), EXTRAS_LISTS, ids=[w for w, _ in EXTRAS_LISTS])
def test_the_docs_list_exactly_the_extras_pyproject_defines(where: str, listed: set[str]) -> None:
    """README and Getting started name the same extras as pyproject.toml, none missing or extra."""
    assert listed == set(PROJECT["optional-dependencies"]), where


def test_examples_extra_is_in_dev() -> None:
    """The dev install (what scripts/test.sh installs) covers the examples the suite runs."""
    assert _requirements({"examples"}) <= _requirements({"dev"})


def test_readme_names_the_wheel_that_is_built(dist: tuple[Path, Path]) -> None:
    """The README's install-from-a-wheel lines name the file a build produces (version too)."""
    _, wheel = dist
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"dist/(wachat_async-[^\s'\[]+\.whl)", readme))
    assert named == {wheel.name}


def test_the_docs_claim_the_pythons_pyproject_claims() -> None:
    """The classifiers start at requires-python's floor, and README and docs name the same."""
    floor = PROJECT["requires-python"].removeprefix(">=")
    prefix = "Programming Language :: Python :: 3."
    versions = [c.rpartition(" :: ")[2] for c in PROJECT["classifiers"] if c.startswith(prefix)]
    assert versions[0] == floor
    tested = f"(tested on {', '.join(versions[:-1])} and {versions[-1]})"
    assert f"Python {floor}+ {tested}" in (ROOT / "README.md").read_text(encoding="utf-8")
    for page in ("docs/index.md", "docs/getting-started.md"):
        assert f"Python {floor}+" in (ROOT / page).read_text(encoding="utf-8"), page
