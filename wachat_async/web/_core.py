"""What both framework adapters share: argument checks, ``authorize``, error mapping, the PNG.

Framework-neutral: an :class:`Answer` (status, headers, body) that each adapter turns into its
own response. Never imports a web framework; uses only public ``wachat_async`` names. Nothing
here ever puts the API key, an exception's text from upstream or a traceback in an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Generic, TypeVar

import attrs

from wachat_async import (
    APIStatusError,
    AuthenticationError,
    InvalidInstanceNameError,
    QRImage,
    SubscriptionRestrictedError,
    WachatClient,
    WachatError,
    build_qr_image_url,
)

from ._hub import DEFAULT_MAX_AGE, DEFAULT_MAX_BACKOFF, QRHub, Unavailable, error_status
from ._paths import (
    DEFAULT_MAX_NAME_LENGTH,
    METHODS,
    Miss,
    Target,
    body_name,
    locate,
    shown_name,
)

__all__ = [
    "DEFAULT_HEARTBEAT",
    "DEFAULT_INTERVAL",
    "Answer",
    "Authorize",
    "Gate",
    "check_route_options",
    "error_answer",
    "error_status",
    "etag_matches",
    "png_answer",
    "route_kit",
]

logger = logging.getLogger("wachat_async.web")

RequestT = TypeVar("RequestT")

#: ``authorize(request, instance_name)``: returns ``True`` (let the request through) or
#: ``False`` (403), or an awaitable whose result is one of them. Anything else (another type,
#: an awaitable of an awaitable) is a programming error and refuses, as does an exception.
Authorize = Callable[[RequestT, str], "bool | Awaitable[bool]"]

#: Seconds between two upstream polls of a watched instance (``watch_qr`` never goes below 1).
DEFAULT_INTERVAL: Final = 2.0
#: Longest silence on an event stream before a ``: ping`` comment (proxies drop idle streams).
DEFAULT_HEARTBEAT: Final = 15.0

NO_STORE: Final = "no-store"
JSON_TYPE: Final = "application/json"
#: The same exception from ``authorize`` (type and place) is an error at most this often.
REPEAT_AFTER: Final = 60.0
_SHOWN_ERROR: Final = 200  # characters of an exception's text from authorize, in a log line


@attrs.frozen
class Answer:
    """A framework-neutral HTTP answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes = b""


def check_route_options(
    prefix: object,
    authorize: object,
    interval: object,
    heartbeat: object,
    max_name_length: object = DEFAULT_MAX_NAME_LENGTH,
    max_age: object = DEFAULT_MAX_AGE,
    max_backoff: object = DEFAULT_MAX_BACKOFF,
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
    numbers = {"interval": interval, "heartbeat": heartbeat, "max_age": max_age}
    for what, value in {**numbers, "max_backoff": max_backoff}.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{what} must be a finite number of seconds > 0, got {value!r}")
    if isinstance(max_name_length, bool) or not isinstance(max_name_length, int):
        raise TypeError(f"max_name_length must be an int, not {type(max_name_length).__name__}")
    if max_name_length < 1:
        raise ValueError(f"max_name_length must be at least 1, got {max_name_length!r}")
    return prefix.rstrip("/")


def route_kit(
    passthrough: tuple[type[BaseException], ...],
    client: WachatClient | Callable[[RequestT], WachatClient],
    prefix: object,
    authorize: Authorize[RequestT],
    limits: tuple[object, object, int, object, object],
) -> tuple[str, Gate[RequestT], Callable[[RequestT], WachatClient]]:
    """What both ``qr_routes`` start from, once their options are checked: the normalised
    prefix, the :class:`Gate` (*passthrough*: the framework's HTTP exceptions) and how to find
    the client of a request. *limits*: interval, heartbeat, max_name_length, max_age and
    max_backoff, as ``qr_routes`` takes them."""
    interval, heartbeat, max_name_length, max_age, max_backoff = limits
    base = check_route_options(
        prefix, authorize, interval, heartbeat, max_name_length, max_age, max_backoff
    )
    if not isinstance(client, WachatClient) and not callable(client):
        raise TypeError(
            f"client must be a WachatClient or a callable request -> WachatClient, not "
            f"{type(client).__name__}"
        )

    def client_for(request: RequestT) -> WachatClient:
        return client if isinstance(client, WachatClient) else client(request)

    return base, Gate(authorize, max_name_length, passthrough), client_for


def _being_cancelled() -> bool:
    """Whether the running task itself is being cancelled (not merely something it awaited)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _discard(result: object) -> None:
    """Drop an awaitable that ``authorize``'s awaitable returned, without a warning: a
    coroutine is closed (it never runs), a pending future or task is cancelled, a finished
    one has its exception retrieved."""
    if asyncio.isfuture(result):
        if not result.done():
            result.cancel()
        elif not result.cancelled():
            result.exception()
        return
    close = getattr(result, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):
            close()


def _describe(exc: BaseException) -> str:
    """An exception from ``authorize`` for the log: its traceback and type, and its text
    shortened (it may quote a huge instance name). Never the request."""
    try:
        text = str(exc)
    except Exception:
        text = "<str() failed>"
    stack = "".join(traceback.format_tb(exc.__traceback__))
    return f"Traceback (most recent call last):\n{stack}{type(exc).__qualname__}: " + (
        shown_name(text, _SHOWN_ERROR) if text else "(no message)"
    )


class Gate(Generic[RequestT]):
    """What every request under the prefix passes before it is served: the route (404 or
    405 when there is none), the name checks (404), ``authorize`` (403).

    Nothing here sends anything upstream.
    """

    def __init__(
        self,
        authorize: Authorize[RequestT],
        max_name_length: int,
        passthrough: tuple[type[BaseException], ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._authorize = authorize
        self.max_name_length = max_name_length
        self._passthrough = passthrough
        self._reported: set[str] = set()
        self._clock = clock
        self._raised: dict[tuple[str, str], float] = {}  # cause -> last logged

    async def admit(
        self, request: RequestT, method: str, raw_path: str | None, tail: str
    ) -> Target | Answer:
        """The route and name of a request (the framework's decoded *tail* after the prefix,
        the *raw_path*), or the answer that refuses it."""
        where = locate(raw_path, tail)
        if isinstance(where, Miss):
            return self.json(404, where.message, where.name)
        allowed = METHODS[where.route]
        if method not in allowed:
            answer = self.json(405, f"method not allowed (use {' or '.join(allowed)})", where.name)
            return attrs.evolve(answer, headers={**answer.headers, "Allow": ", ".join(allowed)})
        problem = self.name_problem(where.name)  # cheap, and the application's rule never
        if problem is not None:  # sees an 8,000-character name or a NUL
            return self.json(404, problem, where.name)
        if not await self.is_authorized(request, where.name):
            return self.json(403, "forbidden", where.name)
        return where

    def json(self, status: int, message: str, name: str) -> Answer:
        """``{"error": message, "instance": name}`` (a name longer than the routes accept cut
        to that length)."""
        return json_answer(status, message, body_name(name, self.max_name_length))

    def name_problem(self, name: str) -> str | None:
        """Why the routes do not pass *name* on (``None``: they do). Nothing is sent."""
        if len(name) > self.max_name_length:
            return (
                f"instance name too long: {len(name)} characters (at most {self.max_name_length})"
            )
        if name in (".", ".."):
            return "the instance name cannot be '.' or '..' (browsers resolve them as paths)"
        try:
            build_qr_image_url(name)  # the client's own name check; pure, no key
        except (InvalidInstanceNameError, TypeError, ValueError) as exc:
            return str(exc)
        return None

    def _log_raised(self, what: str, shown: str, exc: BaseException) -> None:
        """An error with the traceback, once a minute per cause (what failed, and the type); a
        debug line for the repeats, so a rule that fails on every request cannot flood."""
        cause = (type(exc).__qualname__, what)
        now = self._clock()
        log = logger.debug
        if now - self._raised.get(cause, -math.inf) >= REPEAT_AFTER:
            self._raised[cause] = now
            log = logger.error
        log("%s for instance %s; refusing (403)\n%s", what, shown, _describe(exc))

    async def is_authorized(self, request: RequestT, name: str) -> bool:
        """Ask the application's rule; fail closed.

        ``True`` or ``False``, or an awaitable of one (awaited once), is the verdict. Any
        other result is a programming error: logged once (as an error) and refused; an
        awaitable among them is closed or cancelled, so no "never awaited" warning follows.
        The framework's own HTTP exceptions (``passthrough``, such as a redirect to a login
        page) propagate; any other exception refuses and is logged (as an error with its
        traceback and shortened text, once a minute per cause; repeats as debug lines). A
        cancellation of the request's own task propagates.
        """
        shown = shown_name(name)
        verdict: object
        try:
            verdict = self._authorize(request, name)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except self._passthrough:
            raise
        except asyncio.CancelledError as exc:
            if _being_cancelled():
                raise
            # the awaitable authorize returned was cancelled, not this request
            self._log_raised("authorize's awaitable was cancelled", shown, exc)
            return False
        except Exception as exc:
            self._log_raised("authorize raised", shown, exc)
            return False
        if type(verdict) is bool:
            return verdict
        nested = inspect.isawaitable(verdict)
        if nested:
            _discard(verdict)
        kind = "an awaitable of an awaitable" if nested else type(verdict).__qualname__
        if kind in self._reported:
            log = logger.debug
        else:
            self._reported.add(kind)
            log = logger.error
        log(
            "authorize returned %s for instance %s: it must return True or False (or an "
            "awaitable of one, awaited once); refusing (403). Logged once per kind of result.",
            kind,
            shown,
        )
        return False


def json_answer(status: int, message: str, name: str) -> Answer:
    body = json.dumps({"error": message, "instance": name}).encode()
    headers = {"Content-Type": JSON_TYPE, "Cache-Control": NO_STORE}
    return Answer(status, headers, body)


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
    log("QR for instance %s failed (%s) -> %d", shown_name(name), upstream, status)
    return json_answer(status, message, name)


def etag_matches(header: str | None, digest: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2) of ``If-None-Match`` with our ETag, ``"<digest>"``.

    *header* is the field value (several header lines joined with ``,``): ``*``, or a list of
    entity tags, each ``"..."`` or ``W/"..."``. A malformed field matches nothing from where
    it goes wrong: the full answer is always a safe reply.
    """
    if header is None:
        return False
    text = header.strip(" \t")
    if text == "*":
        return True
    at, end = 0, len(text)
    while at < end:
        while at < end and text[at] in " \t,":
            at += 1
        if at == end:
            return False
        if text.startswith("W/", at):
            at += 2
        if at == end or text[at] != '"':
            return False
        close = text.find('"', at + 1)
        if close < 0:
            return False
        if text[at + 1 : close] == digest:
            return True
        at = close + 1
        while at < end and text[at] in " \t":
            at += 1
        if at < end and text[at] != ",":
            return False
    return False


def unavailable_answer(state: Unavailable, name: str, now: float) -> Answer:
    """``503`` while the instance's watch has no current QR (what its viewers are told too),
    with ``Retry-After`` when the next try is known."""
    answer = json_answer(503, state.message, name)
    if state.retry_at is None:
        return answer
    return attrs.evolve(
        answer,
        headers={**answer.headers, "Retry-After": str(max(1, math.ceil(state.retry_at - now)))},
    )


async def png_answer(
    hub: QRHub, name: str, if_none_match: str | None, max_age: float = DEFAULT_MAX_AGE
) -> Answer:
    """The instance's current QR PNG: while it is watched, the watch's (polled at most
    *max_age* seconds ago; older, or while its polls fail, a ``503``: the page says the same);
    else fetched now, one upstream request for all concurrent callers (whole: the ETag is its
    SHA-256, and an invalid image must become a 502, not a half-sent 200). ``304`` when
    *if_none_match* names it."""
    now = asyncio.get_running_loop().time()
    states = [watch.state(now, max_age) for watch in hub.watches(name)]
    images = [state for state in states if isinstance(state, QRImage)]
    image: QRImage | None = max(images, key=lambda qr: qr.fetched_at) if images else None
    if image is None:
        for state in states:
            if isinstance(state, Unavailable):
                return unavailable_answer(state, name, now)
        try:
            image = await hub.fetch(name)
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
