"""The CLI's optional dependencies: rich, Pillow and segno, which the ``cli`` extra installs.

:func:`need` raises :class:`MissingExtraError` naming what is missing and the install line
(``main`` prints it: exit status 2); :func:`has` only asks. ``wachat-qr url``, ``fetch`` and
``poll --json`` need none of them, so scripts work on the base install.

Never imports rich, Pillow or segno except when asked (the base install has none of them), and
imports no other module of the CLI.
"""

from __future__ import annotations

import importlib
from typing import Final

__all__ = ["INSTALL_HINT", "MissingExtraError", "has", "need"]

#: The package is not on PyPI: the extra installs from the clone, as the docs say.
INSTALL_HINT: Final = "pip install -e '.[cli]' in the wachat-async clone"

#: The distribution that brings each importable module.
_EXTRA_MODULES: Final = {"rich": "rich", "PIL": "Pillow", "segno": "segno"}


class MissingExtraError(Exception):
    """rich / Pillow / segno is not installed."""


def has(module: str) -> bool:
    """Whether *module* can be imported."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def need(*modules: str) -> None:
    """Raise :class:`MissingExtraError` (with the install line) unless every module imports."""
    missing = [_EXTRA_MODULES.get(module, module) for module in modules if not has(module)]
    if missing:
        raise MissingExtraError(
            f"this command needs {', '.join(missing)}, from the 'cli' extra: {INSTALL_HINT}"
        )
