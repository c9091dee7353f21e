"""Input checks shared by the client and the URL builder.

Wachat documents no grammar for instance names (see related-endpoints.md), so the client only
rejects what can never be a valid name and what could smuggle structure into a request: empty or
whitespace-only names and control characters (CR/LF, NUL, ...). Query encoding itself is yarl's job.
"""

from __future__ import annotations

import re
from typing import Final

from ._errors import InvalidInstanceNameError

__all__ = ["check_api_key", "check_instance_name"]

# C0 controls, DEL and C1 controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_UNSENDABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SHOWN_CHARS: Final = 64  # of a rejected name, in its error message


def check_instance_name(name: object) -> str:
    """Return *name* unchanged if it can be sent as an instance name, else raise.

    Raises ``TypeError`` for non-strings and :class:`InvalidInstanceNameError` (a ``WachatError``
    and a ``ValueError``) for empty, whitespace-only, control-character-bearing or lone-surrogate
    names. The message quotes the name with ``repr`` (shortened when long), so invisible
    characters are visible and never reach a log line raw.
    """
    if not isinstance(name, str):
        raise TypeError(f"instance_name must be a str, not {type(name).__name__}")
    if _UNSENDABLE.search(name) is None and not name.isspace() and name:
        return name  # the common case: one regex search
    if not name.strip():
        problem = "must not be empty or whitespace"
    elif _CONTROL.search(name):
        problem = "must not contain control characters"
    else:
        # Lone surrogates cannot be UTF-8 encoded; yarl would silently drop them.
        problem = "must be valid Unicode text (no lone surrogates)"
    raise InvalidInstanceNameError(f"instance_name {problem}: {_shown(name)}", instance_name=name)


def _shown(name: str) -> str:
    """*name* for an error message: its ``repr`` (escapes every control character), shortened."""
    # str.__repr__, not repr(): a str subclass could override __repr__ to echo the name raw.
    if len(name) <= _SHOWN_CHARS:
        return str.__repr__(name)
    return f"{str.__repr__(name[:_SHOWN_CHARS])}... ({len(name)} characters)"


def check_api_key(key: object) -> str:
    """Return *key* unchanged if it is usable as an API key, else raise.

    The messages never include the key itself: a half-valid key is still a secret.
    """
    if not isinstance(key, str):
        raise TypeError(f"api_key must be a str, not {type(key).__name__}")
    if not key.strip():
        raise ValueError("api_key must not be empty or whitespace")
    if _CONTROL.search(key) or _SURROGATE.search(key) or key != key.strip():
        raise ValueError("api_key must not contain control characters or surrounding whitespace")
    return key
