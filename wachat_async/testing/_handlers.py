"""The fake server's routes: deciding what to answer a request, apart from sending it.

Deciding (the top half) is a function of the request's facts (:class:`Asked`: method, path,
query, headers), the key they present (:func:`authenticate`) and the :class:`~._registry.Registry`
(keys, instances, scripts), and it returns an :class:`Answer`: status, headers, body (JSON or
PNG), a delay and a transport misbehaviour. It may consume a scripted fault or auto-create an
instance, but it never touches a socket, so it is tested without one. The order of its checks
is the API's: key (401), then ``instanceName`` (400), then the script, then the instance (404),
the key's plan (403) and the integration (409).

Sending (the bottom half) turns an :class:`Answer` into bytes on the wire with aiohttp.web,
including the misbehaviours: ``drop`` and ``hang`` close the connection without a response,
``truncate`` sends the full ``Content-Length`` and half the body. A cut connection hands aiohttp
a response it can no longer send, which aiohttp treats as a premature client disconnection and
logs at DEBUG only, so no tracebacks reach the log. Every wait (``latency``, ``Fault.delay``,
``Fault.hang``) waits on a future that :meth:`Waiting.close` resolves, so closing the server
never waits for a sleeping handler.

This module never imports the client (the fake must describe the API, not the library under
test) and never puts an API key in a record, a log line or an answer.
"""

from __future__ import annotations

import asyncio
import functools
import http
import json
import logging
import zlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Literal

import attrs
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ._faults import Fault, Misbehaviour, as_fault, misbehaviour
from ._png import INSTALL_HINT, qr_payload
from ._registry import BAILEYS, FakeInstance, RecordedRequest, Registry

__all__ = [
    "API_PREFIX",
    "QR_PATH",
    "STATE_PATH",
    "Answer",
    "Asked",
    "Auth",
    "Draw",
    "Routes",
    "Waiting",
    "authenticate",
    "decide_other",
    "decide_qr",
    "decide_state",
    "record",
    "send",
]

_log = logging.getLogger("wachat_async.testing")

API_PREFIX = "/api/v1"
QR_PATH = f"{API_PREFIX}/instance/qr/image"
STATE_PATH = f"{API_PREFIX}/instance/state"
#: The admin route of a server made with ``admin=True`` (see :meth:`Routes.admin`).
ADMIN_PATH = "/_fake/{name}/{action}"

#: Draws the QR PNG of (instance name, payload); raises ImportError without segno.
Draw = Callable[[str, str], bytes]

# The documented statuses, with the short reason and sentence the error body carries.
_ERRORS: Mapping[int, tuple[str, str]] = MappingProxyType(
    {
        400: ("Bad Request", "The instanceName query parameter is required."),
        401: ("Unauthorized", "Missing or invalid API key."),
        403: ("Forbidden", "Subscription restriction prevented QR code generation."),
        404: ("Not Found", "Instance not found for this API key."),
        405: ("Method Not Allowed", "This endpoint only supports GET."),
        409: ("Conflict", "QR code is only available for WhatsApp Baileys instances."),
        500: ("Internal Server Error", INSTALL_HINT),
        502: ("Bad Gateway", "Failed to fetch or decode the QR code image."),
        504: ("Gateway Timeout", "Wachat API request timed out."),
    }
)

_PNG_HEADERS: Mapping[str, str] = MappingProxyType(
    {"Content-Type": "image/png", "Cache-Control": "no-store"}
)
_JSON_HEADERS: Mapping[str, str] = MappingProxyType(
    {"Content-Type": "application/json", "Cache-Control": "no-store"}
)
_NOT_ALLOWED_HEADERS: Mapping[str, str] = MappingProxyType({**_JSON_HEADERS, "Allow": "GET, HEAD"})


# --------------------------------------------------------------------------------------------
# Facts and answers
# --------------------------------------------------------------------------------------------


def _case_insensitive(headers: Mapping[str, str]) -> Mapping[str, str]:
    if isinstance(headers, (CIMultiDict, CIMultiDictProxy)):
        return headers  # aiohttp's own: no copy on the hot path
    return CIMultiDictProxy(CIMultiDict(headers))


@attrs.frozen(kw_only=True)
class Asked:
    """The facts of one request that decide its answer (and go into its record).

    ``query`` and ``headers`` may be multi-mappings (aiohttp's); ``headers`` is made
    case-insensitive if it is not already.
    """

    method: str = "GET"
    path: str
    query: Mapping[str, str] = attrs.field(factory=dict)
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_case_insensitive)

    @classmethod
    def of(cls, request: web.BaseRequest) -> Asked:
        """The facts of an aiohttp request."""
        return cls(
            method=request.method, path=request.path, query=request.query, headers=request.headers
        )

    @property
    def instance_name(self) -> str | None:
        """The ``instanceName`` query parameter, as sent."""
        return self.query.get("instanceName")


@attrs.frozen(kw_only=True)
class Auth:
    """The key a request presented and what the registry says of it (the key is never shown)."""

    key: str | None = attrs.field(repr=False)
    via: Literal["bearer", "query"] | None
    valid: bool
    restricted: bool = False


def _bytes_repr(body: bytes) -> str:
    return f"<{len(body)} bytes>"


@attrs.frozen(kw_only=True)
class Answer:
    """What to answer one request with: decided by ``decide_*``, sent by :func:`send`.

    ``delay`` is waited before answering; ``misbehaviour`` replaces or spoils the answer on the
    wire (``drop``, ``hang``: nothing is sent; ``truncate``: half the body, then the close).
    """

    status: int
    headers: Mapping[str, str] = attrs.field(eq=False, hash=False)
    body: bytes = attrs.field(repr=_bytes_repr)
    delay: float = 0.0
    misbehaviour: Misbehaviour | None = None

    @property
    def sent_status(self) -> int:
        """The status a client sees: 0 when no response is sent at all (drop, hang)."""
        return 0 if self.misbehaviour in ("drop", "hang") else self.status


# --------------------------------------------------------------------------------------------
# Deciding
# --------------------------------------------------------------------------------------------


def _parse_bearer(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip()


def authenticate(asked: Asked, registry: Registry) -> Auth:
    """The key in ``Authorization: Bearer`` (it wins) or else ``?apiKey=``, and its standing."""
    key = _parse_bearer(asked.headers.get("Authorization"))
    via: Literal["bearer", "query"] | None = "bearer"
    if key is None:
        key = asked.query.get("apiKey")
        via = None if key is None else "query"
    restricted = registry.restriction(key)
    return Auth(key=key, via=via, valid=restricted is not None, restricted=bool(restricted))


@functools.cache
def _error_body(status: int) -> bytes:
    reason, message = _ERRORS.get(status, (None, None))
    if reason is None or message is None:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Error"
        message = f"Simulated HTTP {status} response."
    return json.dumps({"success": False, "error": reason, "message": message}).encode()


@functools.cache
def _error(status: int) -> Answer:
    """The API's JSON error answer for *status* (a generic sentence for undocumented ones)."""
    headers = _NOT_ALLOWED_HEADERS if status == 405 else _JSON_HEADERS
    return Answer(status=status, headers=headers, body=_error_body(status))


def _with_fault(answer: Answer, fault: Fault) -> Answer:
    """*answer* with *fault*'s overrides, delay and misbehaviour applied on top."""
    body = answer.body if fault.body is None else fault.body
    headers = CIMultiDict(answer.headers)
    if fault.content_type:
        headers["Content-Type"] = fault.content_type
    if fault.retry_after is not None:
        headers["Retry-After"] = fault.retry_after
    headers.update(fault.headers)
    headers["Content-Length"] = str(len(body))  # the true length, whatever the script said
    return Answer(
        status=answer.status,
        headers=CIMultiDictProxy(headers),
        body=body,
        delay=fault.delay,
        misbehaviour=misbehaviour(fault),
    )


def _name_and_key(asked: Asked, auth: Auth) -> tuple[str, str] | Answer:
    """What both API routes answer first: 401 without a valid key, 400 without a name."""
    if not auth.valid or auth.key is None:
        return _error(401)
    name = asked.instance_name
    if name is None or not name.strip():
        return _error(400)
    return name, auth.key


def decide_qr(asked: Asked, auth: Auth, registry: Registry, draw: Draw) -> Answer:
    """``GET /instance/qr/image``: the PNG, a documented error, or the next scripted fault.

    A scripted status other than 200 answers before the instance lookup (so unknown names can
    be scripted); a scripted 200 behaves normally with the fault's overrides on top. When segno
    is missing the answer is a 500 naming the install command, whatever the script says.
    """
    checked = _name_and_key(asked, auth)
    if isinstance(checked, Answer):
        return checked
    name, key = checked
    fault = registry.next_fault(name)
    if fault is not None and fault.status != 200:
        answer = _error(fault.status)
    elif (found := registry.find(name, key)) is None:
        answer = _error(404)
    elif auth.restricted:
        answer = _error(403)
    elif found[0].integration != BAILEYS:
        answer = _error(409)
    else:
        try:
            png = draw(name, qr_payload(name, found[1]))
        except ImportError:
            _log.error(INSTALL_HINT)
            return _error(500)
        answer = Answer(status=200, headers=_PNG_HEADERS, body=png)
    return answer if fault is None else _with_fault(answer, fault)


def decide_state(asked: Asked, auth: Auth, registry: Registry) -> Answer:
    """``GET /instance/state``: the instance's state, or 401, 400, 404 like the QR route.

    Scripts are for the QR route only: this route neither sees nor consumes them.
    """
    checked = _name_and_key(asked, auth)
    if isinstance(checked, Answer):
        return checked
    found = registry.find(*checked)
    if found is None:
        return _error(404)
    return Answer(status=200, headers=_JSON_HEADERS, body=_state_body(found[0]))


def decide_other(asked: Asked) -> Answer:
    """Any other request: 405 (with ``Allow``) on an API path, else a 404 that says the route is
    unknown, distinct from the API's "instance not found", so a client can tell a wrong base URL.
    """
    if asked.path in (QR_PATH, STATE_PATH):
        return _error(405)
    body = json.dumps(
        {
            "success": False,
            "error": "No such route",
            "message": f"No such route: {asked.method} {asked.path} (the API is under "
            f"{API_PREFIX}: is the base URL right?)",
        }
    ).encode()
    return Answer(status=404, headers=_JSON_HEADERS, body=body)


def _state_body(info: FakeInstance) -> bytes:
    """The ``GET /instance/state`` body, shaped like the reference (related-endpoints.md)."""
    connected = info.state == "open"
    number = f"62812{zlib.crc32(info.name.encode('utf-8', 'surrogatepass')):010d}"
    return json.dumps(
        {
            "success": True,
            "data": {"instance": {"instanceName": info.name, "state": info.state}},
            "instance": {
                "instanceName": info.friendly_name,
                "apiInstanceName": info.name,
                "internalName": info.name,
                "state": info.state,
                "profileName": f"Fake {info.friendly_name}" if connected else None,
                "profilePictureUrl": None,
                "number": number if connected else None,
                "owner": f"{number}@s.whatsapp.net" if connected else None,
                "integration": info.integration,
            },
        }
    ).encode()


# --------------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------------


def _redacted_headers(headers: Mapping[str, str]) -> CIMultiDictProxy[str]:
    copy = CIMultiDict(headers)
    if "Authorization" in copy:
        copy["Authorization"] = "Bearer <redacted>"  # whatever the scheme: all of it goes
    return CIMultiDictProxy(copy)


def record(registry: Registry, asked: Asked, auth: Auth, answer: Answer) -> None:
    """Count *asked* and log it (without its key) with the status *answer* sends."""
    name = asked.instance_name
    kept: RecordedRequest | None = None
    if registry.keeps_records:
        query: dict[str, str] = {}
        for k, v in asked.query.items():
            if k != "apiKey":
                query.setdefault(k, v)
        kept = RecordedRequest(
            method=asked.method,
            path=asked.path,
            instance_name=name,
            query=MappingProxyType(query),
            auth_via=auth.via,
            key_valid=auth.valid,
            status=answer.sent_status,
            headers=_redacted_headers(asked.headers),
            user_agent=asked.headers.get("User-Agent"),
            time=registry.now(),
        )
    registry.record(name, asked.path, kept)


# --------------------------------------------------------------------------------------------
# Sending
# --------------------------------------------------------------------------------------------


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():  # a timer and close() may both wake it
        waiter.set_result(None)


class Waiting:
    """Every wait of one server's handlers; :meth:`close` ends them all at once."""

    def __init__(self) -> None:
        self._pauses: set[asyncio.Future[None]] = set()
        self.closing = False

    async def pause(self, seconds: float | None) -> None:
        """Sleep *seconds* (``None``: until closed), waking early when the server closes."""
        if self.closing:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = None if seconds is None else loop.call_later(seconds, _resolve, waiter)
        self._pauses.add(waiter)
        try:
            await waiter
        finally:
            self._pauses.discard(waiter)
            if timer is not None:
                timer.cancel()

    def close(self) -> None:
        """Wake every pause now, and make later ones return at once."""
        self.closing = True
        for waiter in self._pauses:
            _resolve(waiter)


def _cut(request: web.BaseRequest) -> None:
    transport = request.transport
    # None only once the connection is lost, and then the handler has been cancelled.
    if transport is not None:  # pragma: no branch
        transport.close()


async def send(request: web.BaseRequest, answer: Answer, waiting: Waiting) -> web.StreamResponse:
    """Wait, then send *answer* on *request*'s connection, misbehaving as it says.

    A server that closes while the answer waits cuts the connection instead.
    """
    if answer.delay:
        await waiting.pause(answer.delay)
    if answer.misbehaviour == "hang":
        await waiting.pause(None)  # until the server closes (or the client leaves: cancelled)
    if answer.misbehaviour in ("drop", "hang") or waiting.closing:
        _cut(request)
        return web.Response()  # unsendable now: aiohttp drops it quietly
    if answer.misbehaviour == "truncate":
        response = web.StreamResponse(status=answer.status, headers=answer.headers)
        response.content_length = len(answer.body)
        await response.prepare(request)
        await response.write(answer.body[: len(answer.body) // 2])
        _cut(request)
        return response
    return web.Response(status=answer.status, body=answer.body, headers=answer.headers)


class Routes:
    """The aiohttp handlers of one server: wait ``latency``, decide, record, send."""

    def __init__(
        self, registry: Registry, draw: Draw, waiting: Waiting, *, latency: float = 0.0
    ) -> None:
        self._registry = registry
        self._draw = draw
        self._waiting = waiting
        self._latency = latency

    async def qr(self, request: web.Request) -> web.StreamResponse:
        """``GET /instance/qr/image``."""
        return await self._serve(
            request, lambda asked, auth: decide_qr(asked, auth, self._registry, self._draw)
        )

    async def state(self, request: web.Request) -> web.StreamResponse:
        """``GET /instance/state``."""
        return await self._serve(
            request, lambda asked, auth: decide_state(asked, auth, self._registry)
        )

    async def other(self, request: web.Request) -> web.StreamResponse:
        """Every other method and path."""
        return await self._serve(request, lambda asked, _auth: decide_other(asked))

    async def admin(self, request: web.Request) -> web.Response:
        """``POST /_fake/{name}/{state|rotate|script}`` (servers made with ``admin=True``), with
        the key as a Bearer token: ``state`` sets the text body (``open`` links the phone),
        ``rotate`` changes the QR, ``script`` queues the statuses of the body (``502,502,200``).
        What the server's methods do, for end-to-end tests in any language. Not recorded."""
        key = _parse_bearer(request.headers.get("Authorization"))
        if self._registry.restriction(key) is None:
            return web.json_response({"error": "send a key as a Bearer token"}, status=401)
        name, action = request.match_info["name"], request.match_info["action"]
        text = (await request.text()).strip()
        try:
            if action == "state":
                if not text:
                    raise ValueError("the body must be the state, such as 'open'")
                self._registry.set_state(name, text)
            elif action == "rotate":
                self._registry.rotate_qr(name)
            elif action == "script":
                faults = [as_fault(int(item)) for item in text.replace(",", " ").split()]
                self._registry.set_script(name, faults)
            else:
                return web.json_response({"error": "use state, rotate or script"}, status=404)
        except KeyError as exc:
            return web.json_response({"error": exc.args[0]}, status=404)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"instance": name, "done": action})

    async def _serve(
        self, request: web.Request, decide: Callable[[Asked, Auth], Answer]
    ) -> web.StreamResponse:
        if self._latency:
            await self._waiting.pause(self._latency)
        asked = Asked.of(request)
        auth = authenticate(asked, self._registry)
        answer = decide(asked, auth)
        record(self._registry, asked, auth, answer)
        return await send(request, answer, self._waiting)
