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
    QRExpiredError,
    QRImage,
    SubscriptionRestrictedError,
    WachatClient,
    WachatError,
    build_qr_image_url,
)

from ._hub import (
    CLOSED,
    CONNECTED,
    DEFAULT_LINKING_TIMEOUT,
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_MAX_QRS,
    QRHub,
    Unavailable,
    being_cancelled,
    error_status,
    hook_signals,
    stopping,
    stopping_message,
)
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
#: ``Retry-After`` (seconds) of a ``503`` whose next try is not known (the app stops...).
RETRY_AFTER: Final = 2
#: The same exception from ``authorize`` (type and place) is an error at most this often.
REPEAT_AFTER: Final = 60.0
_SHOWN_ERROR: Final = 200  # characters of an exception's text from authorize, in a log line


@attrs.frozen
class Answer:
    """A framework-neutral HTTP answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes = b""


@attrs.frozen
class Options:
    """``qr_routes``' checked options (see its docstring)."""

    interval: float
    heartbeat: float
    max_name_length: int
    max_age: float
    max_backoff: float
    max_qrs: int | None
    linking_timeout: float | None

    @property
    def limits(self) -> tuple[int | None, float | None]:
        return self.max_qrs, self.linking_timeout


def _seconds(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{what} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def _count(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{what} must be at least 1, got {value!r}")
    return value


def check_route_options(
    prefix: object,
    authorize: object,
    interval: object,
    heartbeat: object,
    max_name_length: object = DEFAULT_MAX_NAME_LENGTH,
    max_age: object = DEFAULT_MAX_AGE,
    max_backoff: object = DEFAULT_MAX_BACKOFF,
    max_qrs: object = DEFAULT_MAX_QRS,
    linking_timeout: object = DEFAULT_LINKING_TIMEOUT,
) -> tuple[str, Options]:
    """Check ``qr_routes``' options at construction time; return the normalised prefix and
    the options."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    if prefix and (not prefix.startswith("/") or "{" in prefix or "}" in prefix):
        raise ValueError(f"prefix must be empty or start with '/' (no braces), got {prefix!r}")
    if not callable(authorize):
        raise TypeError(
            "authorize must be a callable authorize(request, instance_name) -> bool (or an "
            "async one): whoever scans a QR links a phone, so the routes are never open"
        )
    options = Options(
        _seconds("interval", interval),
        _seconds("heartbeat", heartbeat),
        _count("max_name_length", max_name_length),
        _seconds("max_age", max_age),
        _seconds("max_backoff", max_backoff),
        None if max_qrs is None else _count("max_qrs", max_qrs),
        None if linking_timeout is None else _seconds("linking_timeout", linking_timeout),
    )
    return prefix.rstrip("/"), options


def route_kit(
    passthrough: tuple[type[BaseException], ...],
    client: WachatClient | Callable[[RequestT], WachatClient],
    prefix: object,
    authorize: Authorize[RequestT],
    options: Mapping[str, object],
) -> tuple[str, Options, Gate[RequestT], Callable[[RequestT], WachatClient]]:
    """What both ``qr_routes`` start from, once their options are checked: the normalised
    prefix, the :class:`Options`, the :class:`Gate` (*passthrough*: the framework's HTTP
    exceptions) and how to find the client of a request."""
    base, checked = check_route_options(prefix, authorize, **options)
    if not isinstance(client, WachatClient) and not callable(client):
        raise TypeError(
            f"client must be a WachatClient or a callable request -> WachatClient, not "
            f"{type(client).__name__}"
        )

    def client_for(request: RequestT) -> WachatClient:
        return client if isinstance(client, WachatClient) else client(request)

    return base, checked, Gate(authorize, checked.max_name_length, passthrough), client_for


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
        hook_signals()  # before the first await: a signal during authorize ends the stream
        where = self.check(method, raw_path, tail)
        if isinstance(where, Target) and not await self.is_authorized(request, where.name):
            return self.json(403, "forbidden", where.name)
        return where

    def check(self, method: str, raw_path: str | None, tail: str) -> Target | Answer:
        """:meth:`admit` without ``authorize``: the route (404, 405) and the name (404)."""
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
            if being_cancelled():
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


def json_answer(status: int, message: str, name: str, retry_after: float = RETRY_AFTER) -> Answer:
    """``{"error": message, "instance": name}``; a ``503`` says when to try again."""
    body = json.dumps({"error": message, "instance": name}).encode()
    headers = {"Content-Type": JSON_TYPE, "Cache-Control": NO_STORE}
    if status == 503:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
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


def stopping_answer(name: str) -> Answer:
    """``503`` while the app stops or its client is closed (the browser retries later)."""
    return json_answer(503, stopping_message(), name)


def events_refusal(client: WachatClient, name: str) -> Answer | None:
    """Why the event route must not open a stream: the app is stopping or its client is
    closed, so a stream would end at once and the browser reconnect in a loop; a ``503``
    instead makes the page back off."""
    return stopping_answer(name) if stopping() or client.closed else None


#: The request header a restart (``POST {prefix}/{name}/events``) must carry: a cross-site
#: form cannot send it, and a cross-site ``fetch`` with it needs CORS (no CSRF).
RESTART_HEADER: Final = "Wachat-Restart"


def restart_answer(hub: QRHub, name: str, header: str | None) -> Answer:
    """``204`` once every expired watch of *name* polls again (for all its viewers; nothing
    to do is a ``204`` too: the call is idempotent); ``400`` unless :data:`RESTART_HEADER`
    is ``1`` or ``true``; ``503`` once the app stops."""
    if header is None or header.strip().lower() not in ("1", "true"):
        return json_answer(400, f"a restart needs the header {RESTART_HEADER}: 1", name)
    if stopping():
        return stopping_answer(name)
    hub.restart(name)
    return Answer(204, {"Cache-Control": NO_STORE})


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
    with ``Retry-After`` at the next try (a poll under way: :data:`RETRY_AFTER`)."""
    wait = RETRY_AFTER if state.retry_at is None else state.retry_at - now
    return json_answer(503, state.message, name, wait)


async def png_answer(
    hub: QRHub, name: str, if_none_match: str | None, max_age: float = DEFAULT_MAX_AGE
) -> Answer:
    """The instance's current QR PNG: while it is watched, the watch's (polled at most
    *max_age* seconds ago; older, or while its polls fail, a ``503``: the page says the same;
    expired, a ``410``; before its first poll ends, its first poll's); else fetched now, one
    upstream request for all concurrent callers (whole: the ETag is its SHA-256, and an
    invalid image must become a 502, not a half-sent 200). ``304`` when *if_none_match* names
    it. On shutdown (:meth:`QRHub.close`) a waiting request answers ``503`` at once, and
    so does any later one."""
    if stopping():
        return stopping_answer(name)
    loop = asyncio.get_running_loop()
    image: QRImage | None = None
    while image is None and (watches := hub.watches(name)):
        now = loop.time()
        states = [watch.state(now, max_age) for watch in watches]
        images = [state for state in states if isinstance(state, QRImage)]
        expired = [state for state in states if isinstance(state, QRExpiredError)]
        if images:
            image = max(images, key=lambda qr: qr.fetched_at)
        elif expired:  # no upstream request: the limit holds for the PNG route too
            return json_answer(*error_status(expired[0]), name)
        elif unavailable := [state for state in states if isinstance(state, Unavailable)]:
            return unavailable_answer(unavailable[0], name, now)
        else:  # first polls under way: one upstream request serves the viewers and this one
            watch = watches[0]
            await watch.wait(watch.version)
            if watch.ended is CLOSED:
                return stopping_answer(name)
            if isinstance(watch.ended, BaseException):
                return error_answer(watch.ended, name)
            if watch.ended is CONNECTED:
                break
    if image is None:
        try:
            image = await hub.fetch(name)
        except asyncio.CancelledError:
            if being_cancelled():
                raise
            return stopping_answer(name)  # hub.close() cancelled the fetch: the app stops
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
