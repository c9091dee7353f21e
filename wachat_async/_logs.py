"""``WACHAT_LOG=info|debug``: the ``wachat_async`` logger's level, read as each client is made.

Without a handler of the application's (on the logger or above it), one compact stderr handler
is added. A value is applied once: a later client changes nothing until the variable does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

__all__ = ["FORMAT", "apply_log_env"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LEVELS = {"info": logging.INFO, "debug": logging.DEBUG}
_applied: dict[str, str] = {}  # the value last applied


def apply_log_env(environ: Mapping[str, str] = os.environ) -> None:
    """Apply ``WACHAT_LOG`` (unset or empty: nothing; an unknown value: one WARNING)."""
    value = environ.get("WACHAT_LOG", "").strip()
    if not value or _applied.get("value") == value:
        return
    _applied["value"] = value
    logger = logging.getLogger("wachat_async")
    level = _LEVELS.get(value.lower())
    if level is None:
        logger.warning("WACHAT_LOG=%.20r ignored: use info or debug", value)
        return
    logger.setLevel(level)
    if not logger.hasHandlers():
        handler = logging.StreamHandler()  # stderr
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
