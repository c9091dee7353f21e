"""Deciding and sending answers (``wachat_async.testing._handlers``).

The first half specifies the decisions as functions of a request's facts and the registry,
without a socket; the second half sends given answers over loopback with a bare aiohttp app.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, MultiDict

from wachat_async.testing import FakeInstance, Fault
from wachat_async.testing._handlers import (
    QR_PATH,
    STATE_PATH,
    Answer,
    Asked,
    Routes,
    Waiting,
    authenticate,
    decide_other,
    decide_qr,
    decide_state,
    record,
    send,
)
from wachat_async.testing._registry import Registry

from ._support import KEY, NAME, OTHER_KEY, Clock

RESTRICTED_KEY = "restricted-KEY-77aa"


def draw(name: str, payload: str) -> bytes:
    """A stand-in renderer: the 'PNG' is the payload's text."""
    return b"PNG:" + payload.encode()


def no_segno(name: str, payload: str) -> bytes:
    """A renderer whose segno is gone."""
    raise ImportError("segno is required to render QR codes: pip install 'wachat-async[testing]'")


@pytest.fixture
def registry() -> Registry:
    """KEY owns NAME and a non-Baileys 'cloud'; OTHER_KEY owns 'foreign'; a restricted key
    owns 'restricted'. QR rotation on a hand clock at generation 0."""
    state = Registry(
        KEY, clock=Clock(), qr_rotation=20.0, auto_create=False, max_logged_requests=None
    )
    state.add_key(RESTRICTED_KEY, restricted=True)
    state.add_instances([FakeInstance(name=NAME, friendly_name="jakarta_store")], owner=KEY)
    state.add_instances(
        [FakeInstance(name="cloud", friendly_name="cloud", integration="WHATSAPP-BUSINESS")],
        owner=KEY,
    )
    state.add_instances([FakeInstance(name="foreign", friendly_name="foreign")], owner=OTHER_KEY)
    state.add_instances(
        [FakeInstance(name="restricted", friendly_name="restricted")], owner=RESTRICTED_KEY
    )
    return state


def asked(
    name: str | None = NAME,
    *,
    key: str | None = KEY,
    via: str = "bearer",
    path: str = QR_PATH,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> Asked:
    """The facts of a request for *name* presenting *key* via a Bearer header or ?apiKey=."""
    query = MultiDict[str]() if name is None else MultiDict[str](instanceName=name)
    sent = CIMultiDict(headers or {})
    if key is not None and via == "bearer":
        sent["Authorization"] = f"Bearer {key}"
    elif key is not None:
        query["apiKey"] = key
    return Asked(method=method, path=path, query=query, headers=sent)


def qr(facts: Asked, registry: Registry, renderer: Callable[[str, str], bytes] = draw) -> Answer:
    """decide_qr on *facts* with their authentication."""
    return decide_qr(facts, authenticate(facts, registry), registry, renderer)


def error_of(answer: Answer) -> tuple[int, str, str]:
    """(status, Content-Type, error reason) of a JSON error answer."""
    return answer.status, answer.headers["Content-Type"], json.loads(answer.body)["error"]


# --- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (asked(), ("bearer", True, False)),
        (asked(via="query"), ("query", True, False)),
        (asked(key="wrong"), ("bearer", False, False)),
        (asked(key=None), (None, False, False)),
        (asked(key=RESTRICTED_KEY), ("bearer", True, True)),
        (asked(key=None, headers={"Authorization": f"Basic {KEY}"}), (None, False, False)),
        (
            asked(key=None, headers={"authorization": f"  bearer   {KEY}  "}),
            ("bearer", True, False),
        ),
        (asked(key=None, headers={"Authorization": "Bearer"}), ("bearer", False, False)),
    ],
    ids=[
        "bearer",
        "query",
        "wrong-key",
        "no-key",
        "restricted",
        "basic-is-no-key",
        "lowercase-padded-bearer",
        "bearer-without-credentials",
    ],
)
def test_authenticate(
    registry: Registry, facts: Asked, expected: tuple[str | None, bool, bool]
) -> None:
    """The key's source, validity and restriction, from the header or the query."""
    auth = authenticate(facts, registry)
    assert (auth.via, auth.valid, auth.restricted) == expected


def test_bearer_header_wins_over_query_key(registry: Registry) -> None:
    """With both, the header's key is the one checked."""
    facts = asked(key="wrong")
    facts = Asked(path=QR_PATH, query={"instanceName": NAME, "apiKey": KEY}, headers=facts.headers)
    assert (authenticate(facts, registry).valid, qr(facts, registry).status) == (False, 401)


def test_auth_repr_never_shows_the_key(registry: Registry) -> None:
    """The presented key is not in the Auth value's repr."""
    assert KEY not in repr(authenticate(asked(), registry))


# --- the QR route ------------------------------------------------------------------------------


def test_qr_answer_is_the_drawn_png(registry: Registry) -> None:
    """A valid request gets 200, image/png, no-store and the PNG of the current payload."""
    answer = qr(asked(), registry)
    assert (answer.status, dict(answer.headers), answer.body) == (
        200,
        {"Content-Type": "image/png", "Cache-Control": "no-store"},
        f"PNG:wachat-fake:{NAME}:0".encode(),
    )
    assert (answer.delay, answer.misbehaviour, answer.sent_status) == (0.0, None, 200)


@pytest.mark.parametrize(
    ("facts", "status", "error"),
    [
        (asked(key=None), 401, "Unauthorized"),
        (asked(key="wrong"), 401, "Unauthorized"),
        (asked(None, key=None), 401, "Unauthorized"),
        (asked(None), 400, "Bad Request"),
        (asked(""), 400, "Bad Request"),
        (asked(" \t"), 400, "Bad Request"),
        (asked("no-such-instance"), 404, "Not Found"),
        (asked("foreign"), 404, "Not Found"),
        (asked("restricted", key=RESTRICTED_KEY), 403, "Forbidden"),
        (asked("cloud"), 409, "Conflict"),
    ],
    ids=[
        "401-missing-key",
        "401-invalid-key",
        "401-before-400",
        "400-missing-name",
        "400-empty-name",
        "400-blank-name",
        "404-unknown",
        "404-other-keys-instance",
        "403-restricted-key",
        "409-not-baileys",
    ],
)
def test_documented_errors(registry: Registry, facts: Asked, status: int, error: str) -> None:
    """Each documented failure is its status with the API's JSON error body."""
    answer = qr(facts, registry)
    assert error_of(answer) == (status, "application/json", error)
    assert json.loads(answer.body)["success"] is False
    assert json.loads(answer.body)["message"]


def test_restricted_key_still_gets_404_for_unknown_names(registry: Registry) -> None:
    """The lookup (404) comes before the plan check (403)."""
    assert qr(asked("ghost", key=RESTRICTED_KEY), registry).status == 404


def test_missing_segno_is_a_500_naming_the_extra(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """A renderer without segno answers 500 with the install hint, and logs it."""
    answer = qr(asked(), registry, no_segno)
    assert (answer.status, "wachat-async[testing]" in json.loads(answer.body)["message"]) == (
        500,
        True,
    )
    assert "wachat-async[testing]" in caplog.text


# --- scripts -----------------------------------------------------------------------------------


def test_script_is_consumed_one_entry_per_request_then_normal(registry: Registry) -> None:
    """[502, 504, 200] then normal behaviour."""
    registry.set_script(NAME, [Fault(status=502), Fault(status=504), Fault()])
    statuses = [qr(asked(), registry).status for _ in range(4)]
    assert (statuses, registry.pending_script(NAME)) == ([502, 504, 200, 200], ())


@pytest.mark.parametrize(
    "facts",
    [asked(key="wrong"), asked(key=None), asked(None), asked("  ")],
    ids=["wrong-key", "no-key", "no-name", "blank-name"],
)
def test_script_waits_for_auth_and_name(registry: Registry, facts: Asked) -> None:
    """A 401 or 400 leaves the script untouched."""
    registry.set_script(NAME, [Fault(status=502)])
    registry.set_script("  ", [Fault(status=502)])
    qr(facts, registry)
    assert (registry.pending_script(NAME), registry.pending_script("  ")) == (
        (Fault(status=502),),
        (Fault(status=502),),
    )


def test_scripted_status_comes_before_the_lookup() -> None:
    """A scripted error answers even for unknown names, and never auto-creates them."""
    state = Registry(KEY, clock=Clock(), qr_rotation=None, auto_create=True, max_logged_requests=0)
    state.set_script("ghost", [Fault(status=502)])
    first = qr(asked("ghost"), state)
    created_before_second = dict(state.instances())
    second = qr(asked("ghost"), state)
    assert (first.status, created_before_second, second.status) == (502, {}, 200)


def test_scripted_200_keeps_the_normal_outcome(registry: Registry) -> None:
    """Fault(status=200) runs the lookup: an unknown name is still 404 (and consumed)."""
    registry.set_script("ghost", [Fault(retry_after="1")])
    answer = qr(asked("ghost"), registry)
    assert (answer.status, answer.headers["Retry-After"], registry.pending_script("ghost")) == (
        404,
        "1",
        (),
    )


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (502, "Bad Gateway", "Failed to fetch or decode the QR code image."),
        (504, "Gateway Timeout", "Wachat API request timed out."),
        (429, "Too Many Requests", "Simulated HTTP 429 response."),
        (599, "Error", "Simulated HTTP 599 response."),
        (201, "Created", "Simulated HTTP 201 response."),
    ],
    ids=["502-documented", "504-documented", "429-generic", "599-unnamed", "201-success-status"],
)
def test_scripted_error_bodies(registry: Registry, status: int, error: str, message: str) -> None:
    """Scripted statuses carry the documented (or a generic) JSON error body."""
    registry.set_script(NAME, [Fault(status=status)])
    answer = qr(asked(), registry)
    assert (answer.status, answer.headers["Content-Type"], json.loads(answer.body)) == (
        status,
        "application/json",
        {"success": False, "error": error, "message": message},
    )


def test_fault_overrides_are_applied_on_top(registry: Registry) -> None:
    """body, content_type, Retry-After and headers replace or join the answer's own."""
    registry.set_script(
        NAME,
        [
            Fault(
                status=502,
                retry_after="soon-ish, maybe",
                content_type="text/html",
                body=b"<html>",
                headers={"X-Fake": "1", "cache-control": "max-age=5"},
            )
        ],
    )
    answer = qr(asked(), registry)
    headers = {name.lower(): value for name, value in answer.headers.items()}
    assert (answer.status, headers, answer.body) == (
        502,
        {
            "content-type": "text/html",
            "cache-control": "max-age=5",
            "retry-after": "soon-ish, maybe",
            "x-fake": "1",
            "content-length": "6",
        },
        b"<html>",
    )


def test_content_length_is_always_the_true_length(registry: Registry) -> None:
    """A scripted Content-Length header cannot lie about the body."""
    registry.set_script(NAME, [Fault(body=b"12345", headers={"Content-Length": "999"})])
    answer = qr(asked(), registry)
    assert (answer.headers["Content-Length"], answer.headers["Content-Type"]) == ("5", "image/png")


@pytest.mark.parametrize(
    ("fault", "delay", "misbehaviour", "sent"),
    [
        (Fault(delay=2.5), 2.5, None, 200),
        (Fault(truncate=True), 0.0, "truncate", 200),
        (Fault(status=502, drop=True), 0.0, "drop", 0),
        (Fault(delay=1, hang=True), 1.0, "hang", 0),
    ],
    ids=["delay", "truncate", "drop", "delay-then-hang"],
)
def test_fault_timing_and_misbehaviour_reach_the_answer(
    registry: Registry, fault: Fault, delay: float, misbehaviour: str | None, sent: int
) -> None:
    """Delays and transport misbehaviour are part of the decision; drop/hang send nothing."""
    registry.set_script(NAME, [fault])
    answer = qr(asked(), registry)
    assert (answer.delay, answer.misbehaviour, answer.sent_status) == (delay, misbehaviour, sent)


def test_missing_segno_wins_over_the_script(registry: Registry) -> None:
    """The install hint gets through: a scripted drop on a 200 is not applied to the 500."""
    registry.set_script(NAME, [Fault(drop=True)])
    answer = qr(asked(), registry, no_segno)
    assert (answer.status, answer.misbehaviour, registry.pending_script(NAME)) == (500, None, ())


# --- the state route and the others ------------------------------------------------------------


def test_state_answer_has_the_documented_shape(registry: Registry) -> None:
    """Before connecting: the reference shape, profile fields null."""
    facts = asked(path=STATE_PATH)
    answer = decide_state(facts, authenticate(facts, registry), registry)
    assert (answer.status, answer.headers["Content-Type"]) == (200, "application/json")
    assert json.loads(answer.body) == {
        "success": True,
        "data": {"instance": {"instanceName": NAME, "state": "connecting"}},
        "instance": {
            "instanceName": "jakarta_store",
            "apiInstanceName": NAME,
            "internalName": NAME,
            "state": "connecting",
            "profileName": None,
            "profilePictureUrl": None,
            "number": None,
            "owner": None,
            "integration": "WHATSAPP-BAILEYS",
        },
    }


def test_open_state_fills_in_the_profile(registry: Registry) -> None:
    """Once open: a stable number, its WhatsApp owner id and a profile name."""
    registry.set_state(NAME, "open")
    facts = asked(path=STATE_PATH, via="query")
    first = json.loads(decide_state(facts, authenticate(facts, registry), registry).body)
    again = json.loads(decide_state(facts, authenticate(facts, registry), registry).body)
    number = first["instance"]["number"]
    assert (first["instance"]["owner"], first["instance"]["profileName"], first) == (
        f"{number}@s.whatsapp.net",
        "Fake jakarta_store",
        again,
    )
    assert number.startswith("62812")


@pytest.mark.parametrize(
    ("facts", "status"),
    [
        (asked(key=None, path=STATE_PATH), 401),
        (asked(key="wrong", path=STATE_PATH), 401),
        (asked(None, path=STATE_PATH), 400),
        (asked("ghost", path=STATE_PATH), 404),
        (asked("foreign", path=STATE_PATH), 404),
    ],
    ids=["401-missing-key", "401-invalid-key", "400-missing-name", "404-unknown", "404-foreign"],
)
def test_state_errors(registry: Registry, facts: Asked, status: int) -> None:
    """The state route authenticates and looks up like the QR route."""
    answer = decide_state(facts, authenticate(facts, registry), registry)
    assert (answer.status, json.loads(answer.body)["success"]) == (status, False)


def test_state_route_ignores_scripts(registry: Registry) -> None:
    """State requests neither see nor consume the QR script."""
    registry.set_script(NAME, [Fault(status=502)])
    facts = asked(path=STATE_PATH)
    answer = decide_state(facts, authenticate(facts, registry), registry)
    assert (answer.status, registry.pending_script(NAME)) == (200, (Fault(status=502),))


@pytest.mark.parametrize("path", [QR_PATH, STATE_PATH], ids=["qr", "state"])
def test_other_methods_on_api_paths_are_405(path: str) -> None:
    """A known path with another method is 405 with Allow: GET, HEAD."""
    answer = decide_other(asked(path=path, method="POST"))
    assert (answer.status, answer.headers["Allow"], json.loads(answer.body)["error"]) == (
        405,
        "GET, HEAD",
        "Method Not Allowed",
    )


@pytest.mark.parametrize(
    "path",
    ["/instance/qr/image", "/", "/api/v2/instance/qr/image", "/api/v1/instance/qr"],
    ids=["no-api-prefix", "root", "wrong-version", "truncated"],
)
def test_unknown_routes_say_so(path: str) -> None:
    """Other paths are a 404 "No such route" naming the request and the /api/v1 prefix."""
    answer = decide_other(asked(path=path, method="PUT"))
    body = json.loads(answer.body)
    assert (answer.status, body["error"], body["success"]) == (404, "No such route", False)
    assert f"PUT {path}" in body["message"]
    assert "/api/v1" in body["message"]


# --- recording ---------------------------------------------------------------------------------


def test_record_holds_what_arrived_without_the_key(registry: Registry) -> None:
    """method, path, name, query minus apiKey (first value wins), auth, status, agent, time."""
    facts = Asked(
        path=QR_PATH,
        query=MultiDict([("instanceName", NAME), ("apiKey", KEY), ("x", "1"), ("x", "2")]),
        headers={"User-Agent": "probe/1"},
    )
    auth = authenticate(facts, registry)
    record(registry, facts, auth, qr(facts, registry))
    (kept,) = registry.requests()
    assert (
        kept.method,
        kept.path,
        kept.instance_name,
        dict(kept.query),
        kept.auth_via,
        kept.key_valid,
        kept.status,
        kept.user_agent,
        kept.time,
    ) == (
        "GET",
        QR_PATH,
        NAME,
        {"instanceName": NAME, "x": "1"},
        "query",
        True,
        200,
        "probe/1",
        1000,
    )
    assert KEY not in repr(kept)


@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {KEY}", f"Basic {KEY}", KEY, f"bearer {KEY} trailing"],
    ids=["bearer", "basic", "bare", "bearer-with-extra"],
)
def test_record_redacts_every_authorization(registry: Registry, authorization: str) -> None:
    """Whatever the scheme, the recorded Authorization is "Bearer <redacted>"."""
    facts = asked(key=None, headers={"Authorization": authorization})
    auth = authenticate(facts, registry)
    record(registry, facts, auth, qr(facts, registry))
    (kept,) = registry.requests()
    assert (kept.headers["authorization"], KEY in repr(kept)) == ("Bearer <redacted>", False)


@settings(max_examples=60, deadline=None)
@given(
    key=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=6).filter(
        lambda k: k.strip() == k
    ),
    via=st.sampled_from(["bearer", "query"]),
    extra=st.dictionaries(st.text(min_size=1, max_size=5), st.text(max_size=5), max_size=3),
)
def test_records_never_hold_the_presented_key(key: str, via: str, extra: dict[str, str]) -> None:
    """For any key, either way it is sent, the record's repr and str never contain it."""

    def kept_with(key: str) -> tuple[bool, object]:
        state = Registry(
            key, clock=Clock(), qr_rotation=None, auto_create=True, max_logged_requests=None
        )
        base = asked(NAME, key=key, via=via)
        query = MultiDict(base.query)
        query.extend((k, v) for k, v in extra.items() if k != "apiKey" and key not in k + v)
        facts = Asked(path=QR_PATH, query=query, headers=base.headers)
        auth = authenticate(facts, state)
        record(state, facts, auth, qr(facts, state))
        (kept,) = state.requests()
        return auth.valid, kept

    # A key that is a word of every record ("user_a" of user_agent) proves nothing either way.
    _, other = kept_with("\u2603" * len(key))
    assume(key not in repr(other) and key not in str(other))
    valid, kept = kept_with(key)
    assert (valid, key in repr(kept), key in str(kept)) == (True, False, False)


def test_counting_only_builds_no_record(registry: Registry) -> None:
    """max_logged_requests=0 counts the request and keeps nothing."""
    state = Registry(KEY, clock=Clock(), qr_rotation=None, auto_create=True, max_logged_requests=0)
    facts = asked()
    record(state, facts, authenticate(facts, state), qr(facts, state))
    assert (state.requests(), state.count(NAME, (QR_PATH,))) == ([], 1)


# --- sending -----------------------------------------------------------------------------------


class RecordingWaiting(Waiting):
    """A Waiting that notes every pause and returns at once (no test sleeps)."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses: list[float | None] = []

    async def pause(self, seconds: float | None) -> None:
        self.pauses.append(seconds)


class Wire:
    """A bare aiohttp app that sends whatever Answer the test sets, via send()."""

    def __init__(self) -> None:
        self.answer = Answer(status=204, headers={}, body=b"")
        self.waiting: Waiting = RecordingWaiting()
        self.entered = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = TestServer(app)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.entered.set()
        return await send(request, self.answer, self.waiting)

    def url(self, path: str = "/") -> str:
        return str(self.server.make_url(path))


@pytest.fixture
async def wire() -> AsyncIterator[Wire]:
    """A started Wire."""
    w = Wire()
    async with w.server:
        yield w


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session."""
    async with aiohttp.ClientSession() as s:
        yield s


async def test_complete_answer_is_sent_as_decided(
    wire: Wire, session: aiohttp.ClientSession
) -> None:
    """Status, headers and body go out as the answer says."""
    wire.answer = Answer(status=502, headers={"Content-Type": "x/y", "X-A": "1"}, body=b"abc")
    async with session.get(wire.url()) as response:
        got = (response.status, response.headers["Content-Type"], response.headers["X-A"])
        assert (*got, await response.read()) == (502, "x/y", "1", b"abc")


async def test_head_gets_headers_without_a_body(wire: Wire, session: aiohttp.ClientSession) -> None:
    """HEAD: the same status and Content-Length, no body, and the connection stays usable."""
    wire.answer = Answer(
        status=502, headers={"Content-Type": "x/y", "Content-Length": "3"}, body=b"abc"
    )
    async with session.head(wire.url()) as response:
        head = (response.status, response.headers["Content-Length"], await response.read())
    async with session.get(wire.url()) as response:
        body = await response.read()
    assert (head, body) == ((502, "3", b""), b"abc")


async def test_delay_is_waited_before_answering(wire: Wire, session: aiohttp.ClientSession) -> None:
    """The answer's delay is one pause, then the full answer."""
    wire.answer = Answer(status=200, headers={}, body=b"ok", delay=60)
    async with session.get(wire.url()) as response:
        body = await response.read()
    assert (wire.waiting.pauses, body) == ([60], b"ok")  # type: ignore[attr-defined]


async def test_truncate_sends_the_full_length_and_half_the_body(
    wire: Wire, session: aiohttp.ClientSession
) -> None:
    """Content-Length promises all of it; half arrives, then the connection closes."""
    wire.answer = Answer(status=200, headers={}, body=b"0123456789", misbehaviour="truncate")
    async with session.get(wire.url()) as response:
        assert response.headers["Content-Length"] == "10"
        with pytest.raises(aiohttp.ClientPayloadError, match=r"(?i)content length"):
            await response.read()


async def test_drop_closes_without_a_response(wire: Wire, session: aiohttp.ClientSession) -> None:
    """drop: the client sees the server disconnect."""
    wire.answer = Answer(status=200, headers={}, body=b"x", misbehaviour="drop")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with session.get(wire.url()):
            pass  # pragma: no cover - never entered


async def test_hang_lasts_until_the_server_closes(
    wire: Wire, session: aiohttp.ClientSession
) -> None:
    """hang: no response until Waiting.close(), then the connection is cut."""
    wire.waiting = Waiting()
    wire.answer = Answer(status=200, headers={}, body=b"x", misbehaviour="hang")
    pending = asyncio.ensure_future(session.get(wire.url()))
    await wire.entered.wait()
    for _ in range(10):
        await asyncio.sleep(0)
    still_waiting = not pending.done()
    wire.waiting.close()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await pending
    assert still_waiting


async def test_closing_cuts_answers_still_to_be_sent(
    wire: Wire, session: aiohttp.ClientSession
) -> None:
    """Once the server is closing, even a plain answer is cut instead of sent."""
    wire.waiting = Waiting()
    wire.waiting.close()
    wire.answer = Answer(status=200, headers={}, body=b"x", delay=3600)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with session.get(wire.url()):
            pass  # pragma: no cover - never entered


# --- waiting -----------------------------------------------------------------------------------


async def test_pause_zero_returns() -> None:
    """A zero-second pause ends on its own timer."""
    waiting = Waiting()
    await asyncio.wait_for(waiting.pause(0), timeout=60)
    assert not waiting.closing


async def test_close_wakes_every_pause_and_later_ones_return_at_once() -> None:
    """close() ends pending pauses (forever and long ones); a pause after close never waits."""
    waiting = Waiting()
    pauses = [asyncio.ensure_future(waiting.pause(s)) for s in (None, 3600, None)]
    await asyncio.sleep(0)
    waiting.close()
    waiting.close()  # twice, before the woken pauses ran: harmless
    await asyncio.wait_for(asyncio.gather(*pauses), timeout=60)
    await asyncio.wait_for(waiting.pause(None), timeout=60)
    assert waiting.closing


# --- routes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "route", "status"),
    [
        ("GET", f"{QR_PATH}?instanceName={NAME}", "qr", 200),
        ("GET", f"{STATE_PATH}?instanceName={NAME}", "state", 200),
        ("GET", "/nope", "other", 404),
    ],
    ids=["qr", "state", "other"],
)
async def test_every_route_waits_the_latency_then_decides_and_records(
    registry: Registry, method: str, path: str, route: str, status: int
) -> None:
    """Routes pause for latency first, then answer and record the request."""
    waiting = RecordingWaiting()
    routes = Routes(registry, draw, waiting, latency=5)
    request = make_mocked_request(method, path, headers={"Authorization": f"Bearer {KEY}"})
    handler: Callable[[web.Request], Any] = getattr(routes, route)
    response = await handler(request)
    assert (waiting.pauses, response.status, [r.status for r in registry.requests()]) == (
        [5],
        status,
        [status],
    )


async def test_no_latency_no_pause(registry: Registry) -> None:
    """Without latency a plain answer never pauses."""
    waiting = RecordingWaiting()
    routes = Routes(registry, draw, waiting)
    request = make_mocked_request("GET", f"{QR_PATH}?instanceName={NAME}&apiKey={KEY}")
    response = await routes.qr(request)
    assert (waiting.pauses, response.status) == ([], 200)


def test_answer_repr_shows_the_body_size_not_its_bytes() -> None:
    """An Answer's repr names the body's length, never its content."""
    answer = Answer(status=200, headers={}, body=b"secret-ish PNG bytes")
    assert ("<20 bytes>" in repr(answer), "secret-ish" in repr(answer)) == (True, False)
