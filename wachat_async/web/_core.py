"""What both framework adapters share: argument checks, ``authorize``, error mapping, the PNG.

Framework-neutral: an :class:`Answer` (status, headers, body) that each adapter turns into its
own response. Never imports a web framework; uses only public ``wachat_async`` names. Nothing
here ever puts the API key, an exception's text from upstream or a traceback in an answer.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, TypeVar

import attrs

from wachat_async import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    InstanceNotFoundError,
    InvalidInstanceNameError,
    QRImage,
    QRNotSupportedError,
    SubscriptionRestrictedError,
    UnexpectedStatusError,
    WachatClient,
    WachatError,
    WachatTimeoutError,
    build_qr_image_url,
)

from ._hub import QRHub

__all__ = [
    "DEFAULT_HEARTBEAT",
    "DEFAULT_INTERVAL",
    "Answer",
    "Authorize",
    "check_name",
    "check_route_options",
    "error_answer",
    "error_status",
    "is_authorized",
    "png_answer",
]

logger = logging.getLogger("wachat_async.web")

RequestT = TypeVar("RequestT")

#: ``authorize(request, instance_name)``: ``True`` lets the request through; ``False`` (or an
#: awaitable of it) answers 403. Anything but ``True``, or an exception, also refuses.
Authorize = Callable[[RequestT, str], "bool | Awaitable[bool]"]

#: Seconds between two upstream polls of a watched instance (``watch_qr`` never goes below 1).
DEFAULT_INTERVAL: Final = 2.0
#: Longest silence on an event stream before a ``: ping`` comment (proxies drop idle streams).
DEFAULT_HEARTBEAT: Final = 15.0

NO_STORE: Final = "no-store"
JSON_TYPE: Final = "application/json"
_BUDGET_NOTE: Final = "retry budget exhausted"


@attrs.frozen
class Answer:
    """A framework-neutral HTTP answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes = b""


def check_route_options(
    prefix: object, authorize: object, interval: object, heartbeat: object
) -> str:
    """Check ``qr_routes``' options at construction time; return the normalised prefix."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    if prefix and (not prefix.startswith("/") or "{" in prefix or "}" in prefix):
        raise ValueError(f"prefix must be empty or start with '/' (no braces), got {prefix!r}")
    if not callable(authorize):
        raise TypeError(
            "authorize must be a callable authorize(request, instance_name) -> bool (or an "
            "async one): whoever scans a QR links a phone, so the routes are never open"
        )
    for what, value in (("interval", interval), ("heartbeat", heartbeat)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{what} must be a finite number of seconds > 0, got {value!r}")
    return prefix.rstrip("/")


async def is_authorized(
    authorize: Authorize[RequestT],
    request: RequestT,
    name: str,
    passthrough: tuple[type[BaseException], ...] = (),
) -> bool:
    """Ask the application's rule; fail closed.

    Exceptions in *passthrough* (the framework's own HTTP exceptions, such as a redirect to a
    login page) propagate; any other exception is logged and refuses, as does a result that
    is not ``True`` or ``False``.
    """
    try:
        verdict = authorize(request, name)
        if inspect.isawaitable(verdict):
            verdict = await verdict
    except passthrough:
        raise
    except Exception:
        logger.exception("authorize raised for instance %r; refusing (403)", name)
        return False
    if not isinstance(verdict, bool):
        logger.error(
            "authorize returned %s for instance %r, not a bool; refusing (403)",
            type(verdict).__name__,
            name,
        )
        return False
    return verdict


def check_name(name: str) -> str | Answer:
    """The name if the client would send it, else the 404 answer (nothing is sent upstream)."""
    try:
        build_qr_image_url(name)  # the client's own name check; pure, no key
    except (InvalidInstanceNameError, TypeError, ValueError) as exc:
        return json_answer(404, str(exc), name)
    return name


def json_answer(status: int, message: str, name: str) -> Answer:
    body = json.dumps({"error": message, "instance": name}).encode()
    headers = {"Content-Type": JSON_TYPE, "Cache-Control": NO_STORE}
    return Answer(status, headers, body)


def forbidden(name: str) -> Answer:
    return json_answer(403, "forbidden", name)


def error_status(exc: BaseException) -> tuple[int, str]:
    """The status and message a browser gets for an upstream failure.

    * invalid name, 400, 404: 404 (no such QR here);
    * 409 (not a Baileys instance): 409 (this instance has no QR);
    * client-side timeout, deadline: 503 (try again);
    * retry budget exhausted, 429, 503: 503 (upstream overloaded: try later);
    * 502, 504, an invalid or oversized image, 401, 403 (*our* key or plan is wrong), connection
      errors, any other status: 502 (the gateway failed).

    Never 500, and the message is fixed text: never the exception's own text, which may quote
    an upstream body.
    """
    if isinstance(exc, InvalidInstanceNameError):
        return 404, "invalid instance name"
    if isinstance(exc, (BadRequestError, InstanceNotFoundError)):
        return 404, "no such instance"
    if isinstance(exc, QRNotSupportedError):
        return 409, "this instance has no QR code (only WhatsApp Baileys instances have one)"
    if isinstance(exc, WachatTimeoutError):  # before OSError: it is also a TimeoutError
        return 503, "the QR code service timed out; try again"
    if any(_BUDGET_NOTE in note for note in getattr(exc, "__notes__", ())) or (
        isinstance(exc, UnexpectedStatusError) and exc.status in (429, 503)
    ):
        return 503, "the QR code service is overloaded; try again later"
    return 502, "the QR code service failed; try again"


def error_answer(exc: BaseException, name: str) -> Answer:
    """Log *exc* (its class and status: the client already redacted it) and map it."""
    status, message = error_status(exc)
    if isinstance(exc, (AuthenticationError, SubscriptionRestrictedError)):
        log = logger.error  # our configuration, not the browser's request
    elif isinstance(exc, WachatError):
        log = logger.warning
    else:
        log = logger.error
    upstream = exc.status if isinstance(exc, APIStatusError) else type(exc).__name__
    if not isinstance(exc, WachatError):
        upstream = f"{upstream} (bug)"
    log("QR for instance %r failed (%s) -> %d", name, upstream, status)
    return json_answer(status, message, name)


def etag_matches(header: str | None, digest: str) -> bool:
    """Weak comparison of ``If-None-Match`` (RFC 9110 13.1.2) with our ETag."""
    if not header:
        return False
    for candidate in header.split(","):
        tag = candidate.strip()
        if tag == "*":
            return True
        tag = tag.removeprefix("W/")
        if tag == f'"{digest}"':
            return True
    return False


async def png_answer(
    client: WachatClient, hub: QRHub, name: str, if_none_match: str | None
) -> Answer:
    """The instance's current QR PNG: the watch's latest image while it is watched, else
    fetched now (whole: the ETag is its SHA-256, and an invalid image must become a 502, not a
    half-sent 200). ``304`` when *if_none_match* names it."""
    image: QRImage | None = hub.latest(name)
    if image is None:
        try:
            image = await client.get_qr_image(name)
        except Exception as exc:  # WachatError, or a bug: both a JSON answer, never a 500
            return error_answer(exc, name)
    headers = {
        "ETag": f'"{image.sha256}"',
        "Cache-Control": NO_STORE,
        "X-Content-Type-Options": "nosniff",
    }
    if etag_matches(if_none_match, image.sha256):
        return Answer(304, headers)
    return Answer(200, {**headers, "Content-Type": "image/png"}, image.data)
