"""Every ```python block of README.md and docs/ passes ``mypy --strict``: copied code type-checks.

Each block is written to its own module in a temporary folder and all of them are checked in
one mypy run. Two documented, minimal adjustments turn a *fragment* (a few lines from inside a
handler) into a module, and nothing else is changed:

* a name from :data:`PRELUDE` (``client``, ``name``, ...) that a block uses without defining
  is declared, with its type, above the block;
* a block with a top-level ``await`` / ``async with`` / ``async for`` (notebook style) is
  indented into the body of an ``async def``.

Blocks that define everything they use are checked exactly as written.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# The module's one mypy --strict run, with a cold cache: about 10 s on an idle machine.
pytestmark = pytest.mark.timeout(180)
#: The README and the documentation site's pages.
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]

#: Names README fragments may use without defining them, and the declaration each gets.
PRELUDE: dict[str, tuple[str, str]] = {
    "client": ("from wachat_async import WachatClient", "client: WachatClient"),
    "name": ("", "name: str"),
    "names": ("", "names: list[str]"),
    "key": ("", "key: str"),
    "response": ("from aiohttp import web", "response: web.StreamResponse"),
    "log": ("import logging", "log: logging.Logger"),
    "show": ("from wachat_async import QRImage", "def show(qr: QRImage) -> None: ..."),
}


def readme_blocks() -> list[tuple[str, str]]:
    """(id, source) of each ```python block of every page, the id from the heading above it."""
    return [block for page in PAGES for block in page_blocks(page)]


def page_blocks(page: Path) -> list[tuple[str, str]]:
    """(id, source) of each ```python block of *page*, the id made from the heading above it."""
    blocks: list[tuple[str, str]] = []
    heading = (
        "top" if page == README else page.relative_to(ROOT / "docs").with_suffix("").as_posix()
    )
    prefix = "" if page == README else f"{heading}-"
    counts: dict[str, int] = {}
    lines = page.read_text(encoding="utf-8").splitlines(keepends=True)
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):
            heading = re.sub(r"[^a-z0-9]+", "-", line.lstrip("#").strip().lower()).strip("-")
            heading = prefix + heading
        if line.strip() == "```python":
            end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
            source = textwrap.dedent("".join(lines[index + 1 : end]))
            counts[heading] = counts.get(heading, 0) + 1
            blocks.append((f"{heading}-{counts[heading]}", source))
            index = end
        index += 1
    return blocks


def _bound_names(tree: ast.Module) -> set[str]:
    """Every name the block binds anywhere: assignments, imports, definitions, arguments."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return bound


def _top_level_async(tree: ast.Module) -> bool:
    """Whether the block awaits outside any function (notebook / REPL style)."""
    for statement in tree.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for node in ast.walk(statement):
            if isinstance(node, (ast.Await, ast.AsyncWith, ast.AsyncFor)):
                return True
    return False


def as_module(source: str) -> str:
    """*source* as a module mypy can check: PRELUDE declarations and async wrapping if needed."""
    tree = ast.parse(source)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    missing = sorted((used - _bound_names(tree)) & PRELUDE.keys())
    imports = sorted({PRELUDE[n][0] for n in missing} - {""})
    head = [*imports, *(PRELUDE[n][1] for n in missing)]
    if _top_level_async(tree):
        source = "async def _readme_block() -> None:\n" + textwrap.indent(source, "    ")
    return "\n".join([*head, "", source]) if head else source


BLOCKS = readme_blocks()

#: Checked with the README blocks: how results narrow (``reveal_type`` notes, in order), and a
#: control that must fail, so a mypy run that checks nothing cannot pass.
NARROWING = """

from wachat_async import QRFailure, QRResult, QRSuccess, WachatClient


async def narrowing(client: WachatClient) -> None:
    async for result in client.fetch_many(["a"]):
        if result.ok:
            reveal_type(result.image)
            reveal_type(result.error)
        else:
            reveal_type(result.image)
            reveal_type(result.error)
        if isinstance(result, QRSuccess):
            reveal_type(result.image)
        if result.error is None:
            reveal_type(result.image)


def constructed(result: QRSuccess | QRFailure) -> QRResult:
    assert isinstance(result, QRResult)
    if not result.ok:
        raise result.error
    return result
"""
NARROWED = [
    "wachat_async._models.QRImage",
    "None",
    "None",
    "wachat_async._errors.WachatError",
    "wachat_async._models.QRImage",
    "wachat_async._models.QRImage",
]
UNNARROWED = """
from wachat_async import QRResult


def plain(result: QRResult) -> None:
    if result.ok:
        result.image.save("qr.png")
"""


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """One mypy --strict run over every README and docs block (and the narrowing checks): its
    output lines, keyed by module name."""
    folder = tmp_path_factory.mktemp("readme_types")
    modules = {f"block_{i}": as_module(source) for i, (_, source) in enumerate(BLOCKS)}
    modules["narrowing"] = NARROWING
    modules["unnarrowed"] = UNNARROWED
    for module, source in modules.items():
        (folder / f"{module}.py").write_text(source, encoding="utf-8")
    (folder / "mypy.ini").write_text("[mypy]\n", encoding="utf-8")  # not the project's config
    # In a process of its own: in this one mypy leaves about a million objects alive, and every
    # later gc.collect() of the suite (tests/conftest.py) scanned them, 1-4 s each time.
    done = subprocess.run(  # noqa: S603 - our interpreter, fixed arguments
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(folder / "mypy.ini"),
            "--cache-dir",
            str(folder / ".mypy_cache"),
            "--no-error-summary",
            "--show-error-codes",
            *(str(folder / f"{module}.py") for module in modules),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert not done.stderr.strip(), done.stderr
    lines: dict[str, list[str]] = {module: [] for module in modules}
    for line in done.stdout.splitlines():
        module = Path(line.split(":", 1)[0]).stem
        lines.setdefault(module, []).append(line)
    return lines


@pytest.mark.parametrize("index", [pytest.param(i, id=b) for i, (b, _) in enumerate(BLOCKS)])
def test_readme_block_passes_mypy_strict(mypy_output: dict[str, list[str]], index: int) -> None:
    """The block type-checks under mypy --strict, as written (fragments: with the
    documented prelude)."""
    assert mypy_output[f"block_{index}"] == [], BLOCKS[index][1]


def test_readme_has_the_blocks_this_checks() -> None:
    """The extractor finds every python block, the fleet one among them, so none goes unchecked."""
    fences = sum(page.read_text(encoding="utf-8").count("```python") for page in PAGES)
    assert len(BLOCKS) == fences >= 8
    assert any("fetch_many" in source for _, source in BLOCKS)


def test_if_result_ok_narrows_image_and_error(mypy_output: dict[str, list[str]]) -> None:
    """``if result.ok:`` narrows a fetch_many result: image to QRImage and error to None, and
    the else branch the other way round; isinstance and ``error is None`` narrow too."""
    notes = [line for line in mypy_output["narrowing"] if "Revealed type" in line]
    errors = [line for line in mypy_output["narrowing"] if ": error:" in line]
    assert errors == []
    assert [re.sub(r'.*Revealed type is "(.*)"', r"\1", n) for n in notes] == NARROWED


def test_the_check_can_fail(mypy_output: dict[str, list[str]]) -> None:
    """A value annotated as plain QRResult is not narrowed by ``.ok``: mypy reports it (this
    run really checks)."""
    (error,) = mypy_output["unnarrowed"]
    assert 'Item "None" of "QRImage | None" has no attribute "save"' in error


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("x = 1\n", "x = 1\n", id="self-contained-unchanged"),
        pytest.param(
            "await client.aclose()\n",
            "from wachat_async import WachatClient\nclient: WachatClient\n\n"
            "async def _readme_block() -> None:\n    await client.aclose()\n",
            id="fragment-declared-and-wrapped",
        ),
        pytest.param(
            "name = 'a'\nprint(name)\n", "name = 'a'\nprint(name)\n", id="defined-name-kept"
        ),
    ],
)
def test_as_module_changes_only_what_fragments_need(source: str, expected: str) -> None:
    """The prelude is added only for names a block uses without defining; only top-level
    awaits cause wrapping."""
    assert as_module(source) == expected
