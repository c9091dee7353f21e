"""Input checks shared by the client and the URL builder.

Wachat documents no grammar for instance names (see related-endpoints.md), so the client only
rejects what can never be a valid name and what could smuggle structure into a request: empty or
whitespace-only names and control characters (CR/LF, NUL, ...). Query encoding itself is yarl's job.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from ._errors import InvalidInstanceNameError

__all__ = ["check_api_key", "check_instance_name", "check_user_agent", "is_loopback_host"]

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


def check_user_agent(value: object) -> str | None:
    """Return *value* unchanged if it can be sent as a ``User-Agent`` header (or is ``None``).

    Control characters (CR/LF would split the header) and lone surrogates are refused. The
    messages never quote the value: it is the caller's text, and may hold anything.
    """
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
    """Whether *host* (a URL's host, brackets optional) is this machine's loopback interface.

    The one rule the client (refusing ``http://`` to anything else) and the URL builder (its
    clear-text warning) share. Loopback is:

    * an IPv4 address in ``127.0.0.0/8``;
    * the IPv6 address ``::1``, or ``::ffff:127.x.y.z`` (IPv4-mapped loopback);
    * the name ``localhost``, in any letter case, with no trailing dot.

    Nothing else counts, because names other than ``localhost`` reach whatever resolver the
    process uses: ``dev.localhost`` (RFC 6761 reserves ``*.localhost`` for loopback, but
    stock glibc, musl and macOS resolvers send it to DNS, which may answer anything),
    ``localhost.`` (an absolute name that ``/etc/hosts`` does not match), ``127.0.0.1.nip.io``
    or ``localhost.example.com``. Nor do the unspecified addresses ``0.0.0.0`` and ``::``, or
    an empty host. Such hosts need ``allow_insecure_http=True`` for plain ``http://``.

    >>> [is_loopback_host(h) for h in ("127.0.0.1", "[::1]", "LOCALHOST", "dev.localhost")]
    [True, True, True, False]
    """
    if not isinstance(host, str) or not host:
        return False
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
