"""A griffe extension for the API reference: renders the docstrings' reST roles as Markdown.

The library's docstrings are written for ``help()`` and Sphinx habits (``:class:`QRImage```,
``Example::``). mkdocstrings renders Markdown, where ``:class:`` would show literally. This
extension rewrites, in the docstring text handed to the renderer only (the source is never
changed):

* ``:role:`target``` (``class``, ``func``, ``meth``, ``attr``, ``data``, ``exc``, ``mod``,
  ``obj``; a leading ``~`` shortens the shown name) into inline code, linked to the API
  reference when the target is a public name documented there, plain code otherwise (a link
  that cannot resolve would fail ``mkdocs build --strict``);
* a paragraph ending in ``::`` (reST's "a literal block follows") into one ending in ``:``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

import wachat_async
import wachat_async.testing

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|exc|mod|obj):`(~?)([\w.]+)(\(\))?`")

#: Public name -> its path in the reference pages (``::: wachat_async.X`` renders it there).
PUBLIC = {
    **{name: f"wachat_async.{name}" for name in wachat_async.__all__ if not name.startswith("_")},
    **{name: f"wachat_async.testing.{name}" for name in wachat_async.testing.__all__},
}


def _target(name: str) -> str | None:
    """The reference path for *name* (``QRImage``, ``wachat_async.QRImage``), or None."""
    short = name.removeprefix("wachat_async.testing.").removeprefix("wachat_async.")
    return PUBLIC.get(short)


def rewrite(text: str) -> str:
    """*text* with reST roles as Markdown code (linked where possible) and ``::`` as ``:``."""

    def role(match: re.Match[str]) -> str:
        tilde, name, parens = match.group(1), match.group(2), match.group(3) or ""
        shown = (name.rsplit(".", 1)[-1] if tilde else name) + parens
        target = _target(name)
        return f"[`{shown}`][{target}]" if target else f"`{shown}`"

    text = ROLE.sub(role, text)
    text = re.sub(r"(?m)^[ \t]*::[ \t]*$", "", text)  # a bare "::" line introduces a block
    return re.sub(r"(?m)(\S)::[ \t]*$", r"\1:", text)


class ReSTRoles(griffe.Extension):
    """Rewrites every docstring as :func:`rewrite` says, once the object is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
