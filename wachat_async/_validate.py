"""Every argument check, in one place. Wachat documents no grammar for instance names, so only
what can never be valid, or could smuggle structure into a request, is refused."""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Final

import aiohttp

from ._errors import InvalidInstanceNameError, _InstanceNameTypeError

__all__ = [
    "check_api_key",
    "check_bool",
    "check_instance_name",
    "check_number",
    "check_timeout",
    "check_type",
    "check_user_agent",
    "is_loopback_host",
    "shown",
    "shown_item",
]

# The one control-character rule: C0 controls, DEL, C1 controls, and lone surrogates (which
# cannot be encoded as UTF-8: yarl and aiohttp would drop or mangle them).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_UNSENDABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SHOWN_CHARS: Final = 64  # of a rejected name, in its error message


def check_instance_name(name: object) -> str:
    """Return *name* unchanged if it can be sent as an instance name, else raise
    :class:`InvalidInstanceNameError` quoting it with ``repr`` (shortened); for a name that is
    not a ``str``, one that is also a ``TypeError``, naming the type only."""
    if not isinstance(name, str):
        raise _InstanceNameTypeError(
            f"instance_name must be a str, not {type(name).__name__}",
            instance_name=shown_item(name),
        )
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
    if len(name) <= _SHOWN_CHARS:
        return repr(name)
    return f"{name[:_SHOWN_CHARS]!r}... ({len(name)} characters)"


def shown_item(item: object) -> str | None:
    """What stands for a non-``str`` *item* as an error's ``instance_name``: ``None`` for
    ``None``, else its ``repr`` (shortened like a rejected name, control characters escaped;
    a ``repr`` that fails gives ``<TYPE object>``)."""
    if item is None:
        return None
    try:
        text = repr(item)
    except Exception:
        text = f"<{type(item).__name__} object>"
    if len(text) > _SHOWN_CHARS:
        text = f"{text[:_SHOWN_CHARS]}... ({len(text)} characters)"
    return _UNSENDABLE.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def check_api_key(key: object) -> str:
    """Return *key* unchanged if it is usable as an API key, else raise (never quoting it)."""
    if not isinstance(key, str):
        raise TypeError(f"api_key must be a str, not {type(key).__name__}")
    if not key.strip():
        raise ValueError("api_key must not be empty or whitespace")
    if _UNSENDABLE.search(key) or key != key.strip():
        raise ValueError("api_key must not contain control characters or surrounding whitespace")
    return key


def check_user_agent(value: object) -> str | None:
    """Return *value* unchanged if it can be sent as a ``User-Agent`` header (or is ``None``),
    else raise (never quoting it)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"user_agent must be a str or None, not {type(value).__name__}")
    if not value.strip():
        raise ValueError("user_agent must not be empty or whitespace (None for the default)")
    if _UNSENDABLE.search(value):
        raise ValueError("user_agent must not contain control characters or lone surrogates")
    return value


def is_loopback_host(host: str) -> bool:
    """Whether *host* (brackets optional) is ``127.0.0.0/8``, ``::1``, ``::ffff:127.x.y.z`` or
    ``localhost`` in any case: nothing else (other names reach the resolver: stock resolvers
    send ``dev.localhost`` to DNS), so only these get plain ``http://`` without the opt-in."""
    if host.lower() == "localhost":
        return True
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def shown(value: object) -> str:
    """*value* for a validation message: a number as itself, anything else by type only (its
    repr is the caller's text and may hold a secret)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    return f"a {type(value).__name__}"


def check_number(
    value: object,
    what: str,
    *,
    integer: bool = False,
    minimum: float = 0,
    exclusive: bool = False,
    below: float | None = None,
    infinite: bool = False,
    type_error: type[Exception] = TypeError,
) -> float:
    """Return *value* if it is a number (an ``int`` with *integer*; finite unless *infinite*;
    never a ``bool``) ``>= minimum`` (``>`` when *exclusive*) and ``< below``, else raise
    *type_error* for the type or ``ValueError`` for the value, saying what *what* must be."""
    kind = "an int" if integer else ("a number" if infinite else "a finite number")
    rule = f"{'>' if exclusive else '>='} {minimum:g}"
    if below is not None:
        rule += f" and < {below:g}"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise type_error(f"{what} must be {kind} {rule}, got {shown(value)}")
    if not (
        (value > minimum if exclusive else value >= minimum)
        and (below is None or value < below)
        and (infinite or math.isfinite(value))
    ):
        raise ValueError(f"{what} must be {kind} {rule}, got {shown(value)}")
    return value


def check_bool(value: object, what: str) -> bool:
    """Return *value* if it is a ``bool`` (not merely truthy), else raise ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be a bool, got {shown(value)}")
    return value


def check_timeout(value: object) -> aiohttp.ClientTimeout | None:
    """A per-attempt timeout: ``None`` (the default), an ``aiohttp.ClientTimeout`` with a
    ``total`` or a ``sock_read`` limit, or a positive, finite number of seconds (which sets
    ``total``, and ``sock_connect`` to at most 10 s)."""
    if value is None:
        return None
    if isinstance(value, aiohttp.ClientTimeout):
        if value.total is None and value.sock_read is None:
            raise ValueError("timeout needs a total or a sock_read limit")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            "timeout must be a positive number of seconds or an aiohttp.ClientTimeout, "
            f"got {shown(value)}"
        )
    seconds = float(check_number(value, "timeout (seconds)", exclusive=True))
    return aiohttp.ClientTimeout(total=seconds, sock_connect=min(seconds, 10.0))


def check_type(value: object, kind: type, name: str) -> None:
    """*value* is None or a *kind*."""
    if value is not None and not isinstance(value, kind):
        raise TypeError(f"{name} must be a {kind.__name__} or None, not {type(value).__name__}")
