"""The README and the docs pages as a user copies them: every block runs (or says why it
cannot), and their facts hold.

Python blocks run as complete programs in a subprocess against the embedded fake server
(``WACHAT_BASE_URL``/``WACHAT_API_KEY`` point at it), top-level ``await`` allowed as in a
notebook; the pytest example runs under pytest *without* this repository's configuration, as in
a user's project. A block that cannot run alone is marked with ``<!-- fragment -->`` (or
``<!-- fragment: why -->``) on the line before it: it is still compiled. Every other block
fails the suite, so a new one cannot silently go unrun.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import os
import re
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from wachat_async import WachatClient
from wachat_async.testing import FakeWachatServer

from .conftest import KEY

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: Every page a user copies code from: the README and the documentation site's pages.
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")
FRAGMENT = re.compile(r"^<!--\s*fragment\b[^>]*-->$")

#: Runs a README block as a program; top-level ``await`` (as in a notebook) is allowed.
RUNNER = """\
import ast, asyncio, sys
path = sys.argv[1]
with open(path, encoding="utf-8") as f:
    code = compile(f.read(), path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
result = eval(code, {"__name__": "__main__", "__file__": path})
if asyncio.iscoroutine(result):
    asyncio.run(result)
"""


@dataclass(frozen=True)
class Block:
    """One fenced block of the README or a docs page."""

    page: Path
    line: int
    lang: str
    code: str
    fragment: bool

    @property
    def id(self) -> str:
        where = "" if self.page == README else f"{self.page.relative_to(ROOT).as_posix()}-"
        return f"{where}line{self.line}-{self.lang or 'plain'}"

    @property
    def is_pytest(self) -> bool:
        return re.search(r"^(async )?def test_", self.code, re.MULTILINE) is not None


def readme_blocks() -> list[Block]:
    """Every fenced block of every page, with whether a marker precedes it."""
    return [block for page in PAGES for block in page_blocks(page)]


def page_blocks(page: Path) -> list[Block]:
    """Every fenced block (indented ones in lists too), with whether a marker precedes it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, start = len(match["indent"]), i
        i += 1
        body = []
        while lines[i].strip() != "```":
            body.append(lines[i][indent:])
            i += 1
        previous = next((ln.strip() for ln in reversed(lines[:start]) if ln.strip()), "")
        code = "\n".join(body) + "\n"
        fragment = bool(FRAGMENT.match(previous))
        blocks.append(Block(page, start + 1, match["lang"], code, fragment))
        i += 1
    return blocks


BLOCKS = readme_blocks()
PROGRAMS = [b for b in BLOCKS if b.lang == "python" and not b.fragment and not b.is_pytest]
PYTEST_EXAMPLES = [b for b in BLOCKS if b.lang == "python" and not b.fragment and b.is_pytest]
FRAGMENTS = [b for b in BLOCKS if b.lang == "python" and b.fragment]
JSON_LINES = [b for b in BLOCKS if b.lang == "json" and not b.fragment]


def test_every_block_is_run_or_marked_as_a_fragment() -> None:
    """No README block goes unchecked: it is Python or JSON this test runs, or it is marked."""
    unchecked = [b.id for b in BLOCKS if not b.fragment and b.lang not in ("python", "json")]
    assert unchecked == [], (
        f"blocks {unchecked} are neither run by tests/test_readme.py nor marked with"
        " <!-- fragment: why --> on the line before them"
    )
    assert PROGRAMS
    assert PYTEST_EXAMPLES
    assert any(b.page == README for b in PYTEST_EXAMPLES)  # "Test your code"


@pytest.mark.parametrize("block", FRAGMENTS, ids=[b.id for b in FRAGMENTS])
def test_python_fragments_compile(block: Block) -> None:
    """A fragment cannot run alone but is valid Python (top-level await allowed)."""
    compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


@pytest.mark.parametrize("block", JSON_LINES, ids=[b.id for b in JSON_LINES])
def test_json_blocks_are_json_lines(block: Block) -> None:
    """Each line of a JSON example is one JSON object, as `--json` prints them."""
    objects = [json.loads(line) for line in block.code.splitlines() if line.strip()]
    assert objects
    assert all(isinstance(o, dict) for o in objects)


def _readme_instance_names() -> set[str]:
    """The instance names the runnable README programs use (quoted t<N>_... strings)."""
    return {n for b in PROGRAMS for n in re.findall(r"[\"'](t\d+_[A-Za-z0-9_]+)[\"']", b.code)}


@pytest.fixture
async def readme_server() -> AsyncIterator[FakeWachatServer]:
    """A fake server with key KEY serving every instance name the README's programs use."""
    async with FakeWachatServer(api_key=KEY, qr_rotation=None) as server:
        server.add_instances(sorted(_readme_instance_names() - set(server.instances)))
        yield server


async def _run(*argv: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _user_env(**extra: str) -> dict[str, str]:
    """This environment minus anything Wachat- or pytest-specific, plus *extra*."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("WACHAT_", "PYTEST_", "COVERAGE_"))
    }
    return {**env, **extra}


@pytest.mark.parametrize("block", PROGRAMS, ids=[b.id for b in PROGRAMS])
async def test_python_block_runs_as_a_program(
    block: Block, readme_server: FakeWachatServer, tmp_path: Path
) -> None:
    """The block, pasted into a file, runs against the server named by the environment."""
    script = tmp_path / "readme_example.py"
    script.write_text(block.code, encoding="utf-8")
    env = _user_env(WACHAT_API_KEY=KEY, WACHAT_BASE_URL=readme_server.base_url)
    status, out, err = await _run(sys.executable, "-c", RUNNER, str(script), cwd=tmp_path, env=env)
    assert status == 0, err
    assert KEY not in out + err


async def test_ten_line_example_prints_and_saves_as_it_says(
    readme_server: FakeWachatServer, tmp_path: Path
) -> None:
    """'Ten lines' prints a QRImage and saves qr.png with the file mode the README states."""
    (block,) = [b for b in PROGRAMS if "asyncio.run(main())" in b.code and b.page == README]
    (tmp_path / "ten_lines.py").write_text(block.code, encoding="utf-8")
    env = _user_env(WACHAT_API_KEY=KEY, WACHAT_BASE_URL=readme_server.base_url)
    status, out, err = await _run(sys.executable, "ten_lines.py", cwd=tmp_path, env=env)
    assert status == 0, err
    assert out.startswith("QRImage(instance_name='t1_mq9r2jov_jakarta_store', ")
    saved = tmp_path / "qr.png"
    assert saved.read_bytes().startswith(b"\x89PNG")
    stated = re.search(r"Saved PNGs .*? are\s+mode (0[0-7]{3})", README.read_text("utf-8"), re.S)
    assert stated is not None
    assert oct(stat.S_IMODE(saved.stat().st_mode)) == oct(int(stated.group(1), 8))


def _pytest_argv(test_file: Path) -> list[str]:
    """pytest as in a user's project: no config of ours (no asyncio_mode=auto), no cache."""
    return [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        os.devnull,
        "--rootdir",
        str(test_file.parent),
        "-p",
        "no:cacheprovider",
        "-q",
        str(test_file),
    ]


@pytest.mark.parametrize("block", PYTEST_EXAMPLES, ids=[b.id for b in PYTEST_EXAMPLES])
async def test_pytest_example_passes_as_pasted(block: Block, tmp_path: Path) -> None:
    """The pytest example, pasted into a fresh project's test file, passes (1 passed)."""
    test_file = tmp_path / "test_pasted.py"
    test_file.write_text(block.code, encoding="utf-8")
    status, out, err = await _run(*_pytest_argv(test_file), cwd=tmp_path, env=_user_env())
    assert status == 0, out + err
    assert re.search(r"^1 passed\b", out, re.MULTILINE), out


@pytest.mark.parametrize("block", PYTEST_EXAMPLES, ids=[b.id for b in PYTEST_EXAMPLES])
async def test_pytest_example_without_its_mark_would_fail(block: Block, tmp_path: Path) -> None:
    """Control: without the asyncio mark the same test fails here, so the run above is honest."""
    unmarked = re.sub(r"^@pytest\.mark\.asyncio.*\n", "", block.code, flags=re.MULTILINE)
    assert unmarked != block.code
    test_file = tmp_path / "test_pasted.py"
    test_file.write_text(unmarked, encoding="utf-8")
    status, out, _ = await _run(*_pytest_argv(test_file), cwd=tmp_path, env=_user_env())
    assert status != 0
    assert "async def functions are not natively supported" in out


def _all_pages() -> str:
    return "\n".join(page.read_text(encoding="utf-8") for page in PAGES)


def test_client_signature_lists_every_parameter() -> None:
    """The docs' `WachatClient(...)` line names exactly the constructor's parameters."""
    text = _all_pages()
    match = re.search(r"`WachatClient\((api_key=.*?)\)`", text, re.DOTALL)
    assert match is not None
    documented = re.findall(r"(\w+)=", match.group(1))
    assert documented == list(inspect.signature(WachatClient).parameters)


def test_install_lines_name_extras_that_exist() -> None:
    """Every `pip install -e '.[...]'` in the docs names extras pyproject.toml defines."""
    text = _all_pages()
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    extras = re.findall(r"pip install (?:-e )?'[^']*\[([a-z0-9_,-]+)\]'", text)
    assert {"cli", "testing", "examples", "docs"} <= {e for g in extras for e in g.split(",")}
    for group in extras:
        for extra in group.split(","):
            assert re.search(rf"^{extra} = \[", pyproject, re.MULTILINE), extra
    assert "pip install 'wachat-async" not in text  # not on an index: it would fail
