"""Keeping the API key out of everything a user or a log can see.

Redaction is applied to text that came from outside (error bodies echoed by a server or a proxy)
and to anything we build from it. The client itself never formats the key into a string; these
helpers are the safety net for text we do not control.

The bottom of the package: pure string functions that import nothing of wachat-async.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

__all__ = ["REDACTED", "Secret", "excerpt", "mentions", "redact", "redact_message"]

REDACTED = "[REDACTED]"

# Credentials that look like credentials even when we do not know the key: an apiKey query
# parameter and a bearer token. Whatever follows them up to a delimiter is hidden.
_GENERIC = re.compile(
    r"(?P<prefix>(?:api[_-]?key|access[_-]?token|token)[\"']?\s*[=:]\s*[\"']?|bearer\s+)"
    r"(?!\[REDACTED\])(?P<secret>[^\s&\"'<>,;)}\]]+)",
    re.IGNORECASE,
)
# Control characters, and lone surrogates (what aiohttp's surrogateescape decoding makes of
# non-UTF-8 header bytes: they cannot be written as UTF-8, so they must not reach a message).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]+")
_SPACE = re.compile(r"\s+")
# Anything shaped like an absolute URL, up to white space or a quote.
_URL = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<rest>[^\s'\"<>]*)", re.IGNORECASE)


class Secret(str):
    """A ``str`` whose ``repr`` hides it.

    Used for the API key and the ``Authorization`` header value: a traceback printed with its
    frames' locals (``rich``, ``pytest --showlocals``, ``traceback`` with ``capture_locals``)
    shows ``repr()`` of every local, and these values sit in locals on every request path.
    ``str()``, formatting and comparison still give the real value.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(REDACTED)


@functools.lru_cache(maxsize=32)
def _secret_pattern(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    """One case-insensitive pattern for every secret and its URL-encoded forms.

    Case-insensitive because percent-encoding hex may be upper or lower case (``%2F`` and
    ``%2f`` are the same byte) and a server may echo a key case-folded.
    """
    forms = {
        form
        for secret in secrets
        if secret
        for form in (secret, quote(secret, safe=""), quote_plus(secret))
    }
    if not forms:
        return None
    alternatives = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
    return re.compile(alternatives, re.IGNORECASE)


def mentions(text: str, secrets: Iterable[str]) -> bool:
    """Whether *text* holds one of *secrets*, in any of the forms :func:`redact` hides."""
    pattern = _secret_pattern(tuple(secrets))
    return pattern is not None and pattern.search(text) is not None


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Return *text* with every known secret (and its URL-encoded forms, in any letter case)
    and every ``apiKey=...`` / ``Bearer ...`` credential replaced by ``[REDACTED]``."""
    pattern = _secret_pattern(tuple(secrets))
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    return _GENERIC.sub(lambda m: m.group("prefix") + REDACTED, text)


def excerpt(text: str, secrets: Iterable[str] = (), *, limit: int = 500) -> str:
    """A one-line, redacted, length-capped excerpt of untrusted text.

    Control characters (CR/LF included, so a hostile body cannot forge log lines) and lone
    surrogates become spaces,
    runs of white space fold to one, and the result is cut at *limit* characters with an ellipsis.
    Redaction runs before cutting, so a key split by the cut cannot survive in part.
    """
    if limit < 1:
        raise ValueError("limit must be >= 1")
    text = redact(text, secrets)
    text = _SPACE.sub(" ", _CONTROL.sub(" ", text)).strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def _scrub_url(match: re.Match[str]) -> str:
    """One URL with its user info, query and fragment replaced by ``[REDACTED]``."""
    rest = match.group("rest")
    # The last "@" before any query: a browser, unlike RFC 3986, ends user info there even past
    # a "/", and hiding a path that holds an "@" costs nothing.
    query_start = min((i for i in map(rest.find, "?#") if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, query_start)
    if at >= 0:
        rest = REDACTED + rest[at:]
    query = min((i for i in map(rest.find, "?#") if i >= 0), default=-1)
    if query >= 0:
        rest = rest[: query + 1] + REDACTED
    return match.group("scheme") + rest


def redact_message(text: str, secrets: Iterable[str] = ()) -> str:
    """The one redaction point for messages built from a caller's own input.

    Every :class:`ConfigurationError` message goes through it (and so may any other message
    that quotes an argument). It hides what :func:`redact` hides (the known *secrets* in every
    encoding, ``apiKey=...``, ``Bearer ...``) and, in anything shaped like a URL, the user
    info (``user:password@``), the query and the fragment, whatever they hold: a mistyped base
    URL is where a key pasted from a browser's address bar ends up. Control characters become
    spaces, so a message stays one line.

    >>> redact_message("bad URL: https://me:pw@h.example/v1?apiKey=x#y")
    'bad URL: https://[REDACTED]@h.example/v1?[REDACTED]'
    """
    text = _URL.sub(_scrub_url, text)
    return _CONTROL.sub(" ", redact(text, secrets))
