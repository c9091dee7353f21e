"""Paths under the prefix: which of the three routes a path names, and its instance name.

Every path under ``{prefix}/`` belongs to ``qr_routes`` and is answered here, so a browser or
a script never meets the framework's plain-text 404 or 405. The instance name is **one path
segment**, percent-decoded as UTF-8: ``a%2Fb`` is the instance ``a/b``, while a raw ``/`` only
ever separates segments. The shapes:

* ``{name}.png`` (the ``.png`` written as it is, not ``%2Epng``): the PNG route;
* ``{name}/events``: the event stream;
* ``{name}``: the page;
* anything else (more segments, a trailing ``/``, a segment that is not UTF-8): no route.

Frameworks hand over the path already decoded, which hides the difference between ``a%2Fb``
and ``a/b``; :func:`locate` reads the raw path again for it. No I/O, no framework import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal
from urllib.parse import quote, unquote

import attrs

__all__ = [
    "DEFAULT_MAX_NAME_LENGTH",
    "EVENTS",
    "METHODS",
    "PAGE",
    "PNG",
    "Miss",
    "Target",
    "body_name",
    "claims_root",
    "locate",
    "png_from_events",
    "route_path",
    "segment",
    "shown_name",
]

Route = Literal["png", "events", "page"]
PNG: Final = "png"
EVENTS: Final = "events"
PAGE: Final = "page"
#: The methods each route answers (anything else: 405 with ``Allow``).
METHODS: Final[dict[str, tuple[str, ...]]] = {
    PNG: ("GET", "HEAD"),
    # An event stream has no head (HEAD would start a watch for nothing); POST restarts a
    # watch that a limit stopped.
    EVENTS: ("GET", "POST"),
    PAGE: ("GET", "HEAD"),
}

#: Longest instance name (in characters) the routes pass on; longer ones are a 404.
DEFAULT_MAX_NAME_LENGTH: Final = 256
_SHOWN_CHARS: Final = 64  # of a name, in a log line


@attrs.frozen
class Target:
    """A path that names one of the three routes, and the instance name in it (decoded)."""

    route: Route
    name: str


@attrs.frozen
class Miss:
    """A path under the prefix that is none of the routes: the 404 message and the name the
    request seems to mean (for the JSON body's ``instance``)."""

    message: str
    name: str


def shown_name(name: str, limit: int = _SHOWN_CHARS) -> str:
    """*name* (or any text) for a log line: its ``repr`` (control characters escaped),
    shortened to *limit* characters, so a log never carries a whole huge name."""
    if len(name) <= limit:
        return str.__repr__(name)
    return f"{str.__repr__(name[:limit])}... ({len(name)} characters)"


def body_name(name: str, limit: int) -> str:
    """*name* for a JSON body's ``instance``: itself, or its first *limit* characters and
    ``…`` when it is longer than the routes accept."""
    return name if len(name) <= limit else name[:limit] + "\u2026"


def _slashes(raw: str) -> int:
    """How many ``/`` decoding *raw* gives: its own and its ``%2F``s."""
    return raw.count("/") + raw.upper().count("%2F")


def _raw_segments(raw_path: str | None, tail: str) -> Sequence[str] | None:
    """The last one or two raw segments of *raw_path* that decode to *tail* (the framework's
    decoded path after the prefix), or ``None`` when *tail* spans more of them.

    Decoding only ever adds slashes (``%2F``), so the segments are found by counting them,
    whatever the framework does with text that is not UTF-8. Without a raw path (an ASGI
    server may omit it) the decoded one stands in: a ``%2F`` then separates like a ``/``.
    """
    if raw_path is None:
        parts = tail.split("/")
        return parts if len(parts) <= 2 else None
    wanted = tail.count("/")
    last = raw_path.rsplit("/", 2)
    if _slashes(last[-1]) == wanted:
        return last[-1:]
    if len(last) == 3 and _slashes(last[-2]) + 1 + _slashes(last[-1]) == wanted:
        return last[-2:]
    return None


def _guess(tail: str) -> str:
    """The instance a path that is no route seems to be about (its suffix dropped)."""
    return tail.removesuffix("/").removesuffix("/events").removesuffix(".png")


def locate(raw_path: str | None, tail: str) -> Target | Miss:
    """The route and instance name of a path under the prefix.

    *tail* is the decoded path after ``{prefix}/`` as the framework matched it; *raw_path* the
    whole raw path (percent-encoded, no query), or ``None`` if the server gave none.
    """
    segments = _raw_segments(raw_path, tail)
    if segments is None or (len(segments) == 2 and segments[1] != "events"):
        return Miss(
            "no such route: the routes are {name}.png, {name}/events and {name}, where the "
            "instance name is one path segment (write a '/' in it as %2F)",
            _guess(tail),
        )
    route: Route
    if len(segments) == 2:
        route, raw_name = EVENTS, segments[0]
    elif segments[0].endswith(".png"):
        route, raw_name = PNG, segments[0][: -len(".png")]
    else:
        route, raw_name = PAGE, segments[0]
    if raw_path is None:
        name = raw_name  # already decoded
    else:
        try:
            name = unquote(raw_name, errors="strict")
        except UnicodeDecodeError:
            # The raw segment as sent (``%FF``), the same on every framework: each decodes
            # the bytes its own way (aiohttp keeps ``%FF``, Starlette makes it U+FFFD).
            return Miss("the instance name is not percent-encoded UTF-8", raw_name)
    return Target(route, name)


def claims_root(raw_path: str | None, tail: str) -> bool:
    """Whether a path belongs to routes mounted with an empty prefix: there they take only
    paths of their own shapes with a name (``/{name}``, ``/{name}/events``; GET and HEAD, the
    adapters check), and leave the rest of the application alone."""
    segments = _raw_segments(raw_path, tail)
    return (
        segments is not None
        and segments[0] != ""
        and (len(segments) == 1 or segments[1] == "events")
    )


def segment(name: str) -> str:
    """*name* as the one path segment of its routes: percent-encoded, and the dot of a
    trailing ``.png`` too (``a%2Epng``), so that the page of ``a.png`` is not the PNG of ``a``."""
    quoted = quote(name, safe="")
    return quoted[:-4] + "%2Epng" if quoted.endswith(".png") else quoted


def png_from_events(name: str) -> str:
    """The PNG route of *name*, relative to its event stream (``{prefix}/{name}/events``), so
    it holds under any mount point and behind a proxy that strips a prefix."""
    return "../" + segment(name) + ".png"


def route_path(
    name: str, route: Literal["page", "png", "events"] = "page", prefix: str = "/qr"
) -> str:
    """The path of *name*'s *route* (``"page"``, ``"png"`` or ``"events"``) under *prefix*,
    for links in your own pages: ``route_path("a.png")`` is ``/qr/a%2Epng``, the page of the
    instance ``a.png`` (``/qr/a.png`` would be the PNG of ``a``)."""
    tail = {PAGE: "", PNG: ".png", EVENTS: "/events"}[route]
    return f"{prefix.rstrip('/')}/{segment(name)}{tail}"
