"""The documentation site: its API reference covers the public surface, its pages are the ones
the README links to, and it builds offline.

``mkdocs build --strict`` itself runs in scripts/test.sh (a broken link, a missing anchor, a
missing snippet or a reference that cannot be collected fails it); these tests check what the
build cannot know: that nothing public is left out of the reference, that the README links to
every guide page, and that the extension rendering the docstrings' reST roles does its job.
"""

from __future__ import annotations

import importlib.util
import inspect
import pkgutil
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

import wachat_async
import wachat_async.doctor
import wachat_async.otel
import wachat_async.testing
import wachat_async.web
import wachat_async.web.aiohttp
import wachat_async.web.fastapi
import wachat_async.web.starlette

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"
README = ROOT / "README.md"
CONFIG: dict[str, Any] = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
DIRECTIVE = re.compile(r"^::: ([\w.]+)\s*$", re.MULTILINE)

#: The guide pages issue 14 asks for, by topic (file names are the site's URLs: keep them).
GUIDE = {
    "getting started (the two commands)": "getting-started.md",
    "fetching and streaming": "fetching.md",
    "errors": "errors.md",
    "retries and the budget": "retries.md",
    "fleets (one process and taskiq)": "fleets.md",
    "web backends": "web.md",
    "<img> and the API key": "img-and-api-key.md",
    "testing your code with the fake server": "testing.md",
    "the command line": "cli.md",
    "the linking journey (issue 22)": "linking.md",
    "security": "security.md",
    "benchmarks": "benchmarks.md",
    "architecture": "architecture.md",
}


def _directives() -> list[tuple[str, str]]:
    """(page, dotted path) of every ``::: path`` in the reference pages."""
    return [
        (page.name, target)
        for page in sorted(REFERENCE.glob("*.md"))
        for target in DIRECTIVE.findall(page.read_text(encoding="utf-8"))
    ]


def _nav_files(node: object) -> list[str]:
    """Every file the nav of mkdocs.yml names, in order."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [f for item in node for f in _nav_files(item)]
    if isinstance(node, dict):
        return [f for value in node.values() for f in _nav_files(value)]
    return []


PUBLIC = [f"wachat_async.{name}" for name in wachat_async.__all__]
TESTING = [f"wachat_async.testing.{name}" for name in wachat_async.testing.__all__]
TESTING += [f"wachat_async.doctor.{name}" for name in wachat_async.doctor.__all__]
WEB = [
    f"{module.__name__}.{name}"
    for module in (
        wachat_async.web,
        wachat_async.web.aiohttp,
        wachat_async.web.starlette,
        wachat_async.web.fastapi,
        wachat_async.otel,
    )
    for name in module.__all__
]


@pytest.mark.parametrize("path", PUBLIC + TESTING + WEB, ids=PUBLIC + TESTING + WEB)
def test_every_public_name_has_a_reference_entry(path: str) -> None:
    """Each name in `__all__` (and `wachat_async.testing.__all__`) is rendered by one directive."""
    assert [target for _, target in _directives()].count(path) == 1


def test_the_reference_documents_only_public_names() -> None:
    """No directive points at a private module or at a name that is not exported."""
    stray = [f"{page}: {t}" for page, t in _directives() if t not in PUBLIC + TESTING + WEB]
    assert stray == []


def test_nav_lists_every_page_and_only_pages_that_exist() -> None:
    """mkdocs.yml's nav holds each Markdown page under docs/ once, and nothing else."""
    nav = _nav_files(CONFIG["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages
    assert len(set(nav)) == len(nav)


@pytest.mark.parametrize("page", GUIDE.values(), ids=GUIDE.keys())
def test_each_guide_page_exists_and_the_readme_links_to_it(page: str) -> None:
    """The page the issue asks for is in docs/, and the README points readers at it."""
    assert (DOCS / page).is_file()
    assert f"](docs/{page}" in README.read_text(encoding="utf-8")


def test_the_readme_links_resolve() -> None:
    """Every relative link in the README names a file of the repository (and anchors exist)."""
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert "docs/reference/index.md" in local
    broken = []
    for link in local:
        path, _, anchor = link.partition("#")
        target = ROOT / path if path else README
        if not target.is_file() or (anchor and anchor not in _anchors(target)):
            broken.append(link)
    assert broken == []


def _anchors(page: Path) -> set[str]:
    """The heading anchors of a Markdown page, as GitHub and MkDocs' toc make them."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).strip().replace(" ", "-") for h in headings}


def test_the_site_builds_and_is_viewed_without_fetching_anything() -> None:
    """No build-time download (social cards, privacy plugin) and no font CDN at view time."""
    assert CONFIG["strict"] is True
    assert CONFIG["theme"]["font"] is False
    plugins = {next(iter(p)) if isinstance(p, dict) else p for p in CONFIG["plugins"]}
    assert plugins == {"search", "mkdocstrings"}


@pytest.mark.parametrize("section", ["errors-table", "benchmark-results"])
def test_readme_sections_the_site_includes_are_marked_once(section: str) -> None:
    """The error table and the benchmark results live once, in the README, between markers."""
    text = README.read_text(encoding="utf-8")
    assert text.count(f"--8<-- [start:{section}]") == 1
    assert text.count(f"--8<-- [end:{section}]") == 1
    assert f'--8<-- "README.md:{section}"' in "".join(
        p.read_text(encoding="utf-8") for p in DOCS.rglob("*.md")
    )


def _roles_extension() -> ModuleType:
    """docs/_griffe_roles.py, the griffe extension mkdocs.yml loads, imported by path."""
    spec = importlib.util.spec_from_file_location("_griffe_roles", DOCS / "_griffe_roles.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("_griffe_roles", module)
    spec.loader.exec_module(module)
    return module


ROLES = _roles_extension()


@pytest.mark.parametrize(
    ("docstring", "markdown"),
    [
        (":class:`QRImage`", "[`QRImage`][wachat_async.QRImage]"),
        (
            ":exc:`wachat_async.WachatError`",
            "[`wachat_async.WachatError`][wachat_async.WachatError]",
        ),
        (":class:`~wachat_async.RetryPolicy`", "[`RetryPolicy`][wachat_async.RetryPolicy]"),
        (
            ":class:`FakeWachatServer`",
            "[`FakeWachatServer`][wachat_async.testing.FakeWachatServer]",
        ),
        (":func:`build_qr_image_url`", "[`build_qr_image_url`][wachat_async.build_qr_image_url]"),
        (":meth:`WachatClient.get_qr_image`", "`WachatClient.get_qr_image`"),
        (":func:`asyncio.timeout`", "`asyncio.timeout`"),
        (":mod:`aiohttp.web`", "`aiohttp.web`"),
        (":py:class:`QRImage`", "[`QRImage`][wachat_async.QRImage]"),
        (":func:`rewrite()`", "`rewrite()`"),
        ("In a test::\n\n    code", "In a test:\n\n    code"),
        ("Text.\n\n::\n\n    code", "Text.\n\n\n\n    code"),
        ("``literal`` and *emphasis*", "``literal`` and *emphasis*"),
    ],
    ids=[
        "public-class-linked",
        "dotted-public-linked",
        "tilde-shortens",
        "testing-name-linked",
        "public-function-linked",
        "method-plain",
        "stdlib-plain",
        "module-plain",
        "py-domain",
        "parens-kept",
        "literal-block-colon",
        "bare-literal-marker",
        "markdown-untouched",
    ],
)
def test_rest_roles_become_markdown(docstring: str, markdown: str) -> None:
    """The extension turns reST roles into code (linked only to names the reference renders)."""
    assert ROLES.rewrite(docstring) == markdown


def _docstrings() -> list[str]:
    """Every docstring of every module, class and function of the package."""
    found: list[str] = []
    for info in pkgutil.walk_packages(wachat_async.__path__, "wachat_async."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        found.append(module.__doc__ or "")
        for _, obj in inspect.getmembers(module, lambda o: inspect.isclass(o) or callable(o)):
            if getattr(obj, "__module__", "") == module.__name__:
                found.append(inspect.getdoc(obj) or "")
                found.extend(inspect.getdoc(m) or "" for m in vars(obj).values() if callable(m))
    return found


def test_every_role_in_the_docstrings_is_one_the_extension_renders() -> None:
    """No docstring uses a reST role the extension leaves raw (`:ref:`, `:rfc:`...)."""
    roles = {m.group(0) for doc in _docstrings() for m in re.finditer(r":[\w:]+:`[^`]*`", doc)}
    assert roles
    assert [r for r in sorted(roles) if not ROLES.ROLE.fullmatch(r)] == []
