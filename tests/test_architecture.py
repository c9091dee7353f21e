"""ARCHITECTURE.md stays true: it lists every module, and every import follows its rules.

The module table gives each file of ``wachat_async/`` a group and a floor; the rules table says
which other groups a group may import. Imports are read with :mod:`ast` from every module
(imports inside functions and under ``TYPE_CHECKING`` included), without importing anything.
The rules the project never bends (the core never imports cli/, web/, testing/ or rich; the
fake server never imports the client) are also written here, so no edit of the page can
loosen them.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "wachat_async"
DOC = ROOT / "ARCHITECTURE.md"

ROW = re.compile(
    r"^\|\s*`(?P<group>\w+)`\s*\|\s*(?P<floor>\d+)\s*\|\s*`(?P<path>wachat_async/[\w/]+\.py)`"
    r"\s*\|(?P<what>.*)\|\s*$"
)
RULE = re.compile(r"^\|\s*`(?P<group>\w+)`\s*\|(?P<may>[^|]*)\|\s*$")
ADDED, REMOVED = "(being added)", "(being removed)"
#: Third-party packages the core may import: the base install (yarl arrives with aiohttp).
CORE_THIRD_PARTY = {"aiohttp", "attrs", "tenacity", "yarl"}


class Row(NamedTuple):
    """One line of the module table."""

    group: str
    floor: int
    what: str


def module_table(text: str) -> dict[str, Row]:
    """The module table of *text*: path (``wachat_async/...py``) -> its row."""
    rows: dict[str, Row] = {}
    for line in text.splitlines():
        if (match := ROW.match(line)) is not None:
            path = match["path"]
            assert path not in rows, f"{path} is listed twice in ARCHITECTURE.md"
            rows[path] = Row(match["group"], int(match["floor"]), match["what"].strip())
    return rows


def rules_table(text: str) -> dict[str, set[str]]:
    """The rules table of *text*: group -> the other groups it may import."""
    rules: dict[str, set[str]] = {}
    for line in text.splitlines():
        if ROW.match(line) is None and (match := RULE.match(line)) is not None:
            rules[match["group"]] = set(re.findall(r"`(\w+)`", match["may"]))
    return rules


def module_files(package: Path) -> list[str]:
    """Every module file of *package*, as ``wachat_async/...py`` paths."""
    return sorted(
        f"wachat_async/{path.relative_to(package).as_posix()}"
        for path in package.rglob("*.py")
        if "__pycache__" not in path.parts
    )


def _target(package: Path, dotted: str) -> str | None:
    """The module file ``wachat_async.a.b`` names (a module or a package), if it exists."""
    parts = dotted.split(".")[1:]
    base = package.joinpath(*parts)
    if parts and base.with_suffix(".py").is_file():
        return f"wachat_async/{base.with_suffix('.py').relative_to(package).as_posix()}"
    if (base / "__init__.py").is_file():
        return f"wachat_async/{(base / '__init__.py').relative_to(package).as_posix()}"
    return None


def imports(package: Path, module: str) -> tuple[set[str], set[str]]:
    """What *module* imports: (module files of the package, top-level third-party names)."""
    parts = module[: -len(".py")].split("/")
    here = parts[:-1]  # the package the module lives in (for relative imports)
    tree = ast.parse((package.parent / module).read_text(encoding="utf-8"))
    ours: set[str | None] = set()
    theirs: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "wachat_async":
                    ours.add(_target(package, alias.name))
                else:
                    theirs.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                dotted = ".".join([*base, *([node.module] if node.module else [])])
            elif (node.module or "").split(".")[0] == "wachat_async":
                dotted = node.module or ""
            else:
                theirs.add((node.module or "").split(".")[0])
                continue
            # `from .x import y` imports x, and y too when y is a module of x.
            submodules = {_target(package, f"{dotted}.{a.name}") for a in node.names} - {None}
            if len(submodules) < len(node.names):
                ours.add(_target(package, dotted))
            ours |= submodules
    ours.discard(module)
    theirs -= {"__future__"}
    return {m for m in ours if m is not None}, theirs


def graph(package: Path) -> dict[str, set[str]]:
    """module -> the modules of the package it imports, for every module file."""
    return {module: imports(package, module)[0] for module in module_files(package)}


def violations(
    edges: Mapping[str, set[str]], table: Mapping[str, Row], rules: Mapping[str, set[str]]
) -> Iterator[str]:
    """Every import in *edges* that the module table and the rules do not allow."""
    for module, targets in sorted(edges.items()):
        if module not in table:
            continue  # reported by the listing test
        row = table[module]
        for target in sorted(targets & table.keys()):
            other = table[target]
            if other.group == row.group and other.floor >= row.floor:
                yield (
                    f"{module} (floor {row.floor}) imports {target} (floor {other.floor}): "
                    "up or sideways in its box"
                )
            elif other.group != row.group and other.group not in rules.get(row.group, set()):
                yield f"{module} ({row.group}) imports {target} ({other.group}): not allowed"


TEXT = DOC.read_text(encoding="utf-8")
TABLE = module_table(TEXT)
RULES = rules_table(TEXT)
FILES = module_files(PACKAGE)
CORE = [m for m in FILES if m in TABLE and TABLE[m].group == "core"]
TESTING = [m for m in FILES if m.startswith("wachat_async/testing/")]


def test_every_module_file_is_listed() -> None:
    """A module file missing from the table fails: add its row (group, floor, one line)."""
    missing = [m for m in FILES if m not in TABLE]
    assert missing == [], f"add these to the module table of ARCHITECTURE.md: {missing}"


def test_every_listed_module_exists_or_is_marked_as_coming() -> None:
    """A row names a file of the tree, unless marked "(being added)"; a mark is dropped when
    its branch lands (a file marked as added that exists, or removed that is gone, fails)."""
    on_disk = set(FILES)
    wrong = [
        path
        for path, row in TABLE.items()
        if (path in on_disk) == row.what.startswith(ADDED)
        or (row.what.startswith(REMOVED) and path not in on_disk)
    ]
    assert wrong == [], f"ARCHITECTURE.md rows out of date (fix or drop the mark): {wrong}"


def test_every_row_has_a_known_group_a_floor_and_a_line() -> None:
    """Groups are those of the rules table; floors count from 1; each row says what it is for."""
    assert set(RULES) == {"cli", "web", "face", "core", "testing", "doctor", "otel"}
    bad = [
        path
        for path, row in TABLE.items()
        if row.group not in RULES or row.floor < 1 or len(row.what) < 10
    ]
    assert bad == []
    assert all(allowed <= set(RULES) for allowed in RULES.values())


@pytest.mark.parametrize("module", FILES, ids=[m.removeprefix("wachat_async/") for m in FILES])
def test_imports_follow_the_documented_layers(module: str) -> None:
    """No import runs up or sideways inside a box, nor across boxes against the rules."""
    edges = {module: imports(PACKAGE, module)[0]}
    assert list(violations(edges, TABLE, RULES)) == []


@pytest.mark.parametrize("module", CORE, ids=[m.removeprefix("wachat_async/") for m in CORE])
def test_the_core_never_imports_cli_web_testing_or_rich(module: str) -> None:
    """The core stands alone: no command line, web integration, fake server, rich, Pillow, segno,
    Starlette or pytest; only the standard library and the base install's dependencies."""
    ours, theirs = imports(PACKAGE, module)
    upward = sorted(
        m
        for m in ours
        if m.startswith(
            (
                "wachat_async/cli/",
                "wachat_async/web/",
                "wachat_async/testing/",
                "wachat_async/doctor/",
            )
        )
        or m in ("wachat_async/_cli.py", "wachat_async/__init__.py", "wachat_async/__main__.py")
    )
    assert upward == []
    assert theirs - set(sys.stdlib_module_names) - CORE_THIRD_PARTY == set()


def test_only_otel_imports_opentelemetry() -> None:
    """OpenTelemetry is an extra: no module outside ``otel/`` imports it, and nothing imports
    ``otel/`` (a client without the extra never loads it)."""
    importers = [m for m in FILES if "opentelemetry" in imports(PACKAGE, m)[1]]
    assert importers == ["wachat_async/otel/__init__.py"]
    assert [
        m for m, targets in graph(PACKAGE).items() if "wachat_async/otel/__init__.py" in targets
    ] == []


@pytest.mark.parametrize("module", TESTING, ids=[m.removeprefix("wachat_async/") for m in TESTING])
def test_the_fake_server_never_imports_the_library(module: str) -> None:
    """testing/ imports nothing of wachat-async outside itself: it can serve any client."""
    ours, _ = imports(PACKAGE, module)
    assert {m for m in ours if not m.startswith("wachat_async/testing/")} == set()


def test_the_graph_has_no_circle() -> None:
    """No chain of imports leads back to where it started (the floors alone would allow none)."""
    edges = graph(PACKAGE)
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import circle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for target in sorted(edges.get(module, ())):
            visit(target, (*path, module))
        done.add(module)

    for module in edges:
        visit(module, ())


def _package(tmp_path: Path, files: Mapping[str, str]) -> Path:
    package = tmp_path / "wachat_async"
    for name, text in {"__init__.py": "", **files}.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text, encoding="utf-8")
    return package


LAYERS = {
    "wachat_async/__init__.py": Row("face", 1, "the public names"),
    "wachat_async/_low.py": Row("core", 1, "the bottom floor"),
    "wachat_async/_high.py": Row("core", 2, "one floor up"),
    "wachat_async/_side.py": Row("core", 2, "beside _high"),
    "wachat_async/testing/__init__.py": Row("testing", 1, "the fake server"),
}
TYPE_ONLY_UP = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import x\n"
LAYER_RULES = {"face": {"core"}, "core": set(), "testing": set()}


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"_low.py": "from ._high import x\n"}, ["wachat_async/_low.py (floor 1) imports"]),
        ({"_high.py": "from . import _side\n"}, ["wachat_async/_high.py (floor 2) imports"]),
        (
            {"_low.py": "def f():\n    from wachat_async.testing import Fault\n"},
            ["wachat_async/_low.py (core) imports wachat_async/testing/__init__.py"],
        ),
        (
            {"testing/__init__.py": "import wachat_async._low\n"},
            ["wachat_async/testing/__init__.py (testing) imports wachat_async/_low.py"],
        ),
        (
            {"_low.py": TYPE_ONLY_UP},
            ["wachat_async/_low.py (core) imports wachat_async/__init__.py"],
        ),
        ({"_high.py": "from ._low import y\nimport aiohttp\n"}, []),
    ],
    ids=[
        "up-a-floor",
        "sideways",
        "lazy-into-testing",
        "testing-into-core",
        "type-only-up",
        "fine",
    ],
)
def test_the_check_catches_each_kind_of_wrong_import(
    tmp_path: Path, files: dict[str, str], expected: list[str]
) -> None:
    """Fed a package with one bad import, the check names exactly that import."""
    empty = {"_low.py": "", "_high.py": "", "_side.py": "", "testing/__init__.py": ""}
    package = _package(tmp_path, {**empty, **files})
    found = list(violations(graph(package), LAYERS, LAYER_RULES))
    assert len(found) == len(expected), found
    assert [line[: len(want)] for line, want in zip(found, expected, strict=True)] == expected


def test_import_targets_are_resolved_to_files(tmp_path: Path) -> None:
    """`from .pkg import mod` is an import of pkg/mod.py; of a name, of pkg/__init__.py."""
    package = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/mod.py": "",
            "a.py": "from .pkg import mod, name\nfrom wachat_async.pkg.mod import z\nimport re\n",
        },
    )
    assert imports(package, "wachat_async/a.py") == (
        {"wachat_async/pkg/__init__.py", "wachat_async/pkg/mod.py"},
        {"re"},
    )


# -- public APIs only ----------------------------------------------------------------------

#: Names that read a traceback's or a stack's frames, to tell errors apart by function names.
FRAME_NAMES = {
    "tb_frame",
    "f_code",
    "f_back",
    "co_name",
    "co_qualname",
    "extract_tb",
    "extract_stack",
    "walk_tb",
    "walk_stack",
    "currentframe",
    "getframeinfo",
    "getouterframes",
    "getinnerframes",
    "_getframe",
}
#: Private names of asyncio and aiohttp that the package reached for once: never ours, so a
#: use cannot pass as one of our own attributes.
THEIRS = {
    "_loop",
    "_conns",
    "_acquired",
    "_ssl_protocol",
    "_sock",
    "_ready",
    "_callback",
    "_call_connection_lost",
    "_default_proxy",
    "_default_proxy_auth",
    "_connector",
    "_protocol",
    "_waiters",
}
ACCESSORS = {"getattr", "hasattr", "setattr", "delattr"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def defined_names(package: Path) -> set[str]:
    """Every name the package itself defines: functions, classes, parameters, variables,
    attributes it assigns, ``__slots__`` entries and import aliases."""
    names: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.alias):
                names.add((node.asname or node.name).rpartition(".")[2])
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
            ):
                names |= {
                    c.value
                    for c in ast.walk(node.value)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                }
    return names


def foreign_internals(package: Path) -> list[str]:
    """``path:line: what`` for each use of a private name the package does not define (an
    attribute, or a ``getattr``-family string), of a name in :data:`THEIRS`, and of frame
    inspection (:data:`FRAME_NAMES`, ``inspect.stack``)."""
    ours = defined_names(package) - THEIRS
    found: list[str] = []
    for path in sorted(package.rglob("*.py")):
        where = path.relative_to(package.parent)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = None
            if isinstance(node, ast.Attribute):
                name = node.attr
                if name == "stack" and isinstance(node.value, ast.Name):
                    name = "inspect.stack" if node.value.id == "inspect" else None
            elif isinstance(node, (ast.Name, ast.alias)):
                given = node.id if isinstance(node, ast.Name) else node.name.rpartition(".")[2]
                name = given if given in FRAME_NAMES else None
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ACCESSORS
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
            ):
                name = node.args[1].value
            if name is None:
                continue
            if name in FRAME_NAMES or name == "inspect.stack":
                found.append(f"{where}:{node.lineno}: frame inspection ({name})")
            elif _private(name) and name not in ours:
                found.append(f"{where}:{node.lineno}: private name {name}")
    return found


def test_the_package_uses_public_apis_only() -> None:
    """No private attribute of asyncio, aiohttp, yarl, multidict (or anything else not ours),
    and no reading of traceback frames: when those change, the failure would be silent."""
    assert foreign_internals(PACKAGE) == []


@pytest.mark.parametrize(
    ("source", "found"),
    [
        pytest.param("x = session._loop\n", "private name _loop", id="their-attribute"),
        pytest.param('x = getattr(c, "_conns", {})\n', "private name _conns", id="getattr"),
        pytest.param("c._close()\n", "private name _close", id="their-method"),
        pytest.param("n = tb.tb_frame.f_code.co_name\n", "frame inspection", id="frames"),
        pytest.param("import inspect\ns = inspect.stack()\n", "inspect.stack", id="stack"),
        pytest.param("from traceback import walk_tb\n", "walk_tb", id="import"),
        pytest.param("self._loop = 1\nx = self._loop\n", "private name _loop", id="theirs"),
    ],
)
def test_the_walk_catches_each_kind_of_internal(tmp_path: Path, source: str, found: str) -> None:
    package = _package(tmp_path, {"mod.py": source})
    assert any(found in line for line in foreign_internals(package))


def test_the_walk_accepts_our_own_private_names(tmp_path: Path) -> None:
    source = (
        "class A:\n    __slots__ = ('_b',)\n    def _c(self):\n        return self._b, self._c\n"
        "x = getattr(A(), '_b', None)\nimport asyncio\nasyncio.get_running_loop().__class__\n"
    )
    assert foreign_internals(_package(tmp_path, {"mod.py": source})) == []
