"""Input checks shared by the client and the URL builder.

Wachat documents no grammar for instance names (see related-endpoints.md), so the client only
rejects what can never be a valid name and what could smuggle structure into a request: empty or
whitespace-only names and control characters (CR/LF, NUL, ...). Query encoding itself is yarl's job.
"""

from __future__ import annotations

import re

__all__ = ["check_api_key", "check_instance_name"]

# C0 controls, DEL and C1 controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_UNSENDABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def check_instance_name(name: object) -> str:
    """Return *name* unchanged if it can be sent as an instance name, else raise.

    Raises ``TypeError`` for non-strings and ``ValueError`` for empty, whitespace-only or
    control-character-bearing names. The error message quotes the name with ``repr`` so that
    invisible characters are visible.
    """
    if not isinstance(name, str):
        raise TypeError(f"instance_name must be a str, not {type(name).__name__}")
    if _UNSENDABLE.search(name) is None and not name.isspace() and name:
        return name  # the common case: one regex search
    if not name.strip():
        raise ValueError("instance_name must not be empty or whitespace")
    if _CONTROL.search(name):
        raise ValueError(f"instance_name must not contain control characters: {name!r}")
    # Lone surrogates cannot be UTF-8 encoded; yarl would silently drop them.
    raise ValueError(f"instance_name must be valid Unicode text: {name!r}")


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
