"""Keeping the API key out of text from outside (bodies a server or proxy echoes) and what we
build from it: the safety net, since the client never formats the key into a string."""

from __future__ import annotations

import functools
import html.entities
import re
from collections.abc import Iterable

__all__ = ["REDACTED", "Secret", "excerpt", "mentions", "redact", "redact_message"]

REDACTED = "[REDACTED]"

# A quote around a field name or value, maybe escaped (JSON in JSON: \", HTML: &quot;).
_QUOTE = r"(?:\\{0,8}[\"']|&quot;|&apos;|&#0{0,8}3[49];|&#x0{0,8}2[27];)"
# Credentials that look like credentials even when we do not know the key: an apiKey query
# parameter or field and a bearer token (also percent-encoded: a URL inside a URL). The whole
# token that follows is hidden, up to white space, a quote or an angle bracket: it may hold
# "&", ";", "," or ")" (a key is any text; "&amp;" is an HTML-escaped "&").
_GENERIC = re.compile(  # the lookahead first: the regex engine then skips most positions fast
    r"(?=[atb])(?P<prefix>(?:api[_-]?key|access[_-]?token|token)"
    rf"{_QUOTE}?\s*(?:[=:]|%3[ad])\s*{_QUOTE}?|bearer(?:\s+|%20|\+))"
    rf"(?!\[REDACTED\](?![^\s\"'<>])|{_QUOTE})(?P<secret>[^\s\"'<>]+)",
    re.IGNORECASE,
)
# Control characters, and lone surrogates (what aiohttp's surrogateescape decoding makes of
# non-UTF-8 header bytes: they cannot be written as UTF-8, so they must not reach a message).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]+")
_SPACE = re.compile(r"\s+")
# Anything shaped like an absolute URL, up to white space or a quote.
_URL = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<rest>[^\s'\"<>]*)", re.IGNORECASE)


class Secret(str):
    """A ``str`` whose ``repr`` hides it: a traceback printed with its locals (``rich``,
    ``pytest --showlocals``) shows the ``repr`` of the key and header values in them."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(REDACTED)


# -- the forms of a known secret -----------------------------------------------------------
#
# A server, a proxy or an error page may echo the key encoded, each character its own way (PHP's
# json_encode escapes only "/", Go's only "&", "<" and ">"), so a secret is matched character by
# character, each in any letter case, percent-encoded (also twice), backslash-escaped (JSON,
# JavaScript, Python, with any number of backslashes) or as an HTML reference (also with its
# "&" escaped). Backslash runs are tried from their start and zeros only after "&#" or "\\u",
# so a hostile body costs linear time. A text cut short may end with the start of the key: a
# trailing part of at least _MIN_TAIL characters is hidden too.

_MIN_TAIL = 4  # characters of a secret's start hidden at the very end of a text
# One backslash or more (an escape inside an escaped string), from the start of a run only: a
# long run of backslashes is tried once, not from each of its positions.
_SLASHES = r"(?<!\\)\\+"
_PERCENT = "%(?:25)?"  # %XX, or %25XX: percent-encoded twice
_AMP = rf"(?:&amp;|{_SLASHES}u0026|%(?:25)?26|&)"  # an "&" of a reference, maybe escaped
# The start of an encoded character, cut short with the text: "%2", "\\u00", "&#x2", "&am", or
# the U+FFFD that decoding a UTF-8 sequence cut in two gives.
_PARTIAL_END = re.compile(
    rf"(?:(?:{_PERCENT}[0-9a-f]{{0,2}}){{1,4}}|{_SLASHES}(?:[ux]\{{?[0-9a-f]{{0,8}})?"
    r"|&(?:amp;?)?#?x?[0-9a-z]{0,40}|\ufffd)\Z",
    re.IGNORECASE,
)


@functools.lru_cache(maxsize=1)
def _html_names() -> dict[str, tuple[str, ...]]:
    """Every HTML5 character reference name (``amp;``, ``sol;``, legacy ``amp``) by the one
    character it stands for (case folded: the pattern ignores case anyway)."""
    names: dict[str, set[str]] = {}
    for name, value in html.entities.html5.items():
        if len(value) == 1:
            names.setdefault(value, set()).add(name.casefold())
    return {char: tuple(sorted(found, key=len, reverse=True)) for char, found in names.items()}


@functools.lru_cache(maxsize=512)
def _char_pattern(char: str) -> str:
    """A regular expression (for ``re.IGNORECASE``) matching *char* in any of its encodings."""
    code = ord(char)
    utf8 = char.encode("utf-8", "surrogatepass")
    # Longest encodings first, the character itself last: a match is grown one character at a
    # time, so "&amp;amp;" (or Go's "\\u0026amp;") must be taken whole for "&", not as an "&"
    # followed by "amp;".
    hexa = f"{code:x}"
    alternatives = [rf"{_AMP}#(?:0*{code}|x0*{hexa});?"]
    alternatives += [_AMP + re.escape(name) for name in _html_names().get(char, ())]
    alternatives.append("".join(f"{_PERCENT}{byte:02x}" for byte in utf8))
    if code > 0xFFFF:  # JSON and JavaScript write it as a UTF-16 surrogate pair
        high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
        alternatives.append(f"{_SLASHES}u{high:04x}{_SLASHES}u{low:04x}")
    alternatives.append(_SLASHES + rf"(?:u0*{hexa}|u\{{0*{hexa}\}}|x0*{hexa})")
    if not char.isalnum():  # \n, \t, \u... mean something else: never an escaped letter
        alternatives.append(_SLASHES + re.escape(char))
    # Full case mappings that change the length ("\u00df".upper() == "SS"): IGNORECASE only
    # knows the one-to-one ones.
    alternatives += sorted(re.escape(v) for v in _case_variants(char))
    if char == " ":
        alternatives.append(r"\+")
    alternatives.append(re.escape(char))
    return "(?:" + "|".join(alternatives) + ")"


def _case_variants(char: str) -> set[str]:
    return {v for v in (char.upper(), char.lower(), char.casefold()) if len(v) > 1}


@functools.lru_cache(maxsize=512)
def _char_matcher(char: str) -> re.Pattern[str]:
    """:func:`_char_pattern`, compiled: shared by every secret holding *char*."""
    return re.compile(_char_pattern(char), re.IGNORECASE)


def _first_chars(char: str) -> str:
    """A lookahead for the characters an encoding of *char* can start with: the regex engine
    then skips most positions of a long text at once (about ten times faster)."""
    starts = {char, "%", "\\", "&"} | {v[0] for v in _case_variants(char)}
    starts |= {"+"} if char == " " else set()
    return "(?=[" + "".join(re.escape(c) for c in sorted(starts)) + "])"


class _Matcher:
    """Finds a set of secrets in a text, in any encoding; its ``repr`` hides them. A secret is
    found from its first characters, then grown one character at a time with each character's
    shared pattern: a new key's matcher costs about a millisecond, not one big pattern's tens."""

    __slots__ = ("secrets",)

    def __init__(self, secrets: tuple[str, ...]) -> None:
        ordered = sorted({s for s in secrets if s}, key=len, reverse=True)  # longest first
        self.secrets = [
            (
                # A lookahead, so candidates may overlap ("aaab" in "aaaab").
                re.compile(f"{_first_chars(s[0])}(?={''.join(map(_char_pattern, s[:3]))})", re.I),
                [_char_matcher(c) for c in s],
            )
            for s in ordered
        ]

    def __repr__(self) -> str:
        return f"<secret matcher {REDACTED}>"

    def find(self, text: str, pos: int = 0) -> tuple[int, int, bool] | None:
        """The first secret in *text* from *pos* on: ``(start, end, whole)``; *whole* is False
        for the start of a secret (at least ``_MIN_TAIL`` characters) that runs to the end of
        *text*, maybe after a character cut short. None if there is neither."""
        best: tuple[int, int, bool] | None = None
        for start_pattern, chars in self.secrets:
            for candidate in start_pattern.finditer(text, pos):
                if best is not None and candidate.start() >= best[0]:
                    break
                start = end = candidate.start()
                count = 0
                for char in chars:
                    found = char.match(text, end)
                    if found is None:
                        break
                    end, count = found.end(), count + 1
                if count == len(chars):
                    best = (start, end, True)
                    break
                if count >= _MIN_TAIL and (end == len(text) or _PARTIAL_END.match(text, end)):
                    best = (start, len(text), False)
                    break
        return best

    def sub(self, text: str) -> str:
        """*text* with each secret found (and a start of one at its end) as ``[REDACTED]``."""
        parts: list[str] = []
        pos = 0
        while (found := self.find(text, pos)) is not None:
            start, end, _ = found
            parts += (text[pos:start], REDACTED)
            pos = end
        return "".join(parts) + text[pos:] if parts else text


@functools.lru_cache(maxsize=32)
def _secret_matcher(secrets: tuple[str, ...]) -> _Matcher | None:
    """The matcher for *secrets*, built once per set of secrets (every error excerpt asks)."""
    return _Matcher(secrets) if any(secrets) else None


def mentions(text: str, secrets: Iterable[str]) -> bool:
    """Whether *text* holds one of *secrets*, in any of the forms :func:`redact` hides."""
    matcher = _secret_matcher(tuple(secrets))
    if matcher is None:
        return False
    pos = 0
    while (found := matcher.find(text, pos)) is not None:
        if found[2]:
            return True
        pos = found[0] + 1
    return False


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Return *text* with every known secret (in any case and encoding, see above; also a
    start of one at the end) and every ``apiKey=...`` / ``Bearer ...`` as ``[REDACTED]``."""
    matcher = _secret_matcher(tuple(secrets))
    if matcher is not None:
        text = matcher.sub(text)
    return _GENERIC.sub(lambda m: m.group("prefix") + REDACTED, text)


def excerpt(text: str, secrets: Iterable[str] = (), *, limit: int = 500) -> str:
    """A one-line, redacted excerpt of untrusted text, cut at *limit* characters with an
    ellipsis. Control characters (so a hostile body cannot forge log lines) and lone surrogates
    become spaces; white space folds. Redaction runs first, so the cut cannot split a key."""
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
    # The last "@" of all: a browser, unlike RFC 3986, ends user info there even past a "/",
    # and a password typed with an unencoded "#" or "?" still ends at its "@". Hiding a path
    # or query that holds an "@" costs nothing.
    at = rest.rfind("@")
    if at >= 0:
        rest = REDACTED + rest[at:]
    query = min((i for i in map(rest.find, "?#") if i >= 0), default=-1)
    if query >= 0:
        rest = rest[: query + 1] + REDACTED
    return match.group("scheme") + rest


def redact_message(text: str, secrets: Iterable[str] = ()) -> str:
    """The one redaction point for messages built from a caller's own input (every
    :class:`ConfigurationError`): what :func:`redact` hides and, in anything shaped like a URL,
    the user info, query and fragment; control characters become spaces."""
    text = _URL.sub(_scrub_url, text)
    return _CONTROL.sub(" ", redact(text, secrets))
