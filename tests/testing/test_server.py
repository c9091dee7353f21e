"""FakeWachatServer (``wachat_async.testing._server``): lifecycle, configuration, and the
whole server end to end over loopback with a plain aiohttp client.

What each request is answered is specified in test_handlers.py; here the same behaviour is
checked through real sockets, as users see it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import aiohttp
import aiohttp.web
import pytest

from wachat_async.testing import Conditions, FakeInstance, FakeWachatServer, Fault
from wachat_async.testing._server import _url_host

from ._support import (
    KEY,
    NAME,
    OTHER_KEY,
    PNG_SIGNATURE,
    Clock,
    decode_qr,
    get,
    sync_get,
    wait_for_requests,
)

# --- addresses: which families each host serves --------------------------------------------


async def _answers(family: socket.AddressFamily, address: str, port: int) -> bool:
    """Whether an HTTP request to *address*:*port* over *family* gets an HTTP answer."""
    try:
        reader, writer = await asyncio.open_connection(address, port, family=family)
    except OSError:
        return False
    try:
        writer.write(b"GET /api/v1/instance/state HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        return (await reader.readline()).startswith(b"HTTP/1.1 ")
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this machine")
@pytest.mark.parametrize(
    ("host", "ipv4", "ipv6"),
    [
        pytest.param("::", True, True, id="ipv6-any-is-dual-stack"),
        pytest.param("", True, True, id="empty-is-dual-stack"),
        pytest.param("0.0.0.0", True, False, id="ipv4-any"),  # noqa: S104 - the case under test
        pytest.param("127.0.0.1", True, False, id="ipv4-loopback"),
        pytest.param("::1", False, True, id="ipv6-loopback"),
    ],
)
async def test_each_host_serves_the_families_it_names(host: str, ipv4: bool, ipv6: bool) -> None:
    """ "::" and "" take IPv4 and IPv6 clients on one port (dual stack, where the OS allows);
    "0.0.0.0" and the loopback addresses their own family only; base_url always answers."""
    dual = host in ("::", "") and socket.has_dualstack_ipv6()
    async with FakeWachatServer(KEY, host=host) as server:
        server.add_instance(NAME)
        port = server.port
        reached = (
            await _answers(socket.AF_INET, "127.0.0.1", port),
            await _answers(socket.AF_INET6, "::1", port),
        )
        async with aiohttp.ClientSession() as http:
            status, _, _ = await get(http, server, route="/instance/state")
        assert server.dual_stack is dual
    if host in ("::", "") and not dual:  # pragma: no cover - an OS without dual-stack sockets
        ipv4 = host == ""
    assert reached == (ipv4, ipv6)
    assert status == 200
    assert not server.dual_stack  # closed: the flag only describes a running server's socket


@pytest.mark.skipif(not socket.has_dualstack_ipv6(), reason="no dual-stack IPv6 here")
async def test_a_dual_stack_site_that_fails_to_start_closes_its_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the site cannot start, the socket made for it is closed and nothing claims dual stack."""
    made: list[socket.socket] = []
    real = socket.create_server

    def recording(*args: Any, **kwargs: Any) -> socket.socket:
        made.append(real(*args, **kwargs))
        return made[-1]

    async def refuse(self: object) -> None:
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(socket, "create_server", recording)
    monkeypatch.setattr(aiohttp.web.SockSite, "start", refuse)
    server = FakeWachatServer(KEY, host="::")
    with pytest.raises(OSError, match="already in use"):
        await server.start()
    assert [sock.fileno() for sock in made] == [-1]  # closed
    assert not server.dual_stack


# --- auth and the 200 path -------------------------------------------------------------------


@pytest.mark.parametrize("via", ["bearer", "query"], ids=["bearer-header", "apikey-query"])
async def test_qr_served_with_either_auth(
    fake: FakeWachatServer, http: aiohttp.ClientSession, via: str
) -> None:
    """Both documented ways to send the key get the PNG."""
    status, _, body = await get(http, fake, via=via)
    assert (status, body[:8]) == (200, PNG_SIGNATURE)


async def test_png_response_headers(fake: FakeWachatServer, http: aiohttp.ClientSession) -> None:
    """The PNG comes with image/png, no-store caching and an exact Content-Length."""
    _, headers, body = await get(http, fake)
    assert (headers["Content-Type"], headers["Cache-Control"], headers["Content-Length"]) == (
        "image/png",
        "no-store",
        str(len(body)),
    )


async def test_png_is_a_scannable_qr_of_the_payload(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """zxing decodes the served PNG to exactly qr_payload(name)."""
    _, _, body = await get(http, fake)
    assert decode_qr(body) == fake.qr_payload(NAME) == f"wachat-fake:{NAME}:0"


async def test_png_is_cached_per_payload(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """Two requests within one rotation get byte-identical PNGs."""
    first, second = await get(http, fake), await get(http, fake)
    assert first[2] == second[2]


@pytest.mark.parametrize(
    "name",
    ["a&b=c", "x#frag", "with space", "ünïcødé-店", "a/b/c", "t1_x?apiKey=y", "+plus%20"],
    ids=["ampersand", "hash", "space", "unicode", "slash", "query-like", "plus-percent"],
)
async def test_hostile_names_round_trip(
    fake: FakeWachatServer, http: aiohttp.ClientSession, name: str
) -> None:
    """Names are stored, matched, logged and encoded verbatim."""
    fake.add_instance(name)
    status, _, body = await get(http, fake, name)
    assert (status, decode_qr(body), fake.requests[-1].instance_name) == (
        200,
        f"wachat-fake:{name}:0",
        name,
    )


# --- error statuses --------------------------------------------------------------------------


def configure_restricted(server: FakeWachatServer) -> None:
    """Add OTHER_KEY as a restricted key owning 'restricted'."""
    server.add_api_key(OTHER_KEY, restricted=True)
    server.add_instance("restricted", api_key=OTHER_KEY)


def configure_non_baileys(server: FakeWachatServer) -> None:
    """Add a non-Baileys instance 'cloud'."""
    server.add_instance("cloud", integration="WHATSAPP-BUSINESS")


def configure_foreign(server: FakeWachatServer) -> None:
    """Add 'foreign', owned by another key."""
    server.add_instance("foreign", api_key=OTHER_KEY)


def nothing(server: FakeWachatServer) -> None:
    """No extra setup."""


@pytest.mark.parametrize(
    ("setup", "name", "key", "status", "error"),
    [
        (nothing, NAME, None, 401, "Unauthorized"),
        (nothing, NAME, "wrong-key", 401, "Unauthorized"),
        (nothing, None, KEY, 400, "Bad Request"),
        (nothing, "   ", KEY, 400, "Bad Request"),
        (nothing, "no-such-instance", KEY, 404, "Not Found"),
        (configure_foreign, "foreign", KEY, 404, "Not Found"),
        (configure_restricted, "restricted", OTHER_KEY, 403, "Forbidden"),
        (configure_non_baileys, "cloud", KEY, 409, "Conflict"),
    ],
    ids=[
        "401-missing-key",
        "401-invalid-key",
        "400-missing-name",
        "400-blank-name",
        "404-unknown",
        "404-other-keys-instance",
        "403-restricted-key",
        "409-not-baileys",
    ],
)
async def test_documented_error_statuses(
    fake: FakeWachatServer,
    http: aiohttp.ClientSession,
    setup: Callable[[FakeWachatServer], None],
    name: str | None,
    key: str | None,
    status: int,
    error: str,
) -> None:
    """Each documented failure answers its status with the JSON error body."""
    setup(fake)
    got_status, headers, body = await get(http, fake, name, key=key)
    parsed = json.loads(body)
    assert (got_status, headers["Content-Type"], parsed["success"], parsed["error"]) == (
        status,
        "application/json",
        False,
        error,
    )
    assert isinstance(parsed["message"], str)
    assert parsed["message"]


@pytest.mark.parametrize(
    "route",
    ["/instance/qr/image", "/", "/api/v2/instance/qr/image", "/api/v1/instance/qr"],
    ids=["no-api-prefix", "root", "wrong-version", "truncated"],
)
async def test_unknown_route_404_is_distinct_from_a_missing_instance(
    fake: FakeWachatServer, http: aiohttp.ClientSession, route: str
) -> None:
    """A wrong base URL answers 404 "No such route", never the API's "instance not found"."""
    async with http.get(
        fake.url + route, params={"instanceName": NAME}, headers={"Authorization": f"Bearer {KEY}"}
    ) as response:
        body = await response.json()
    status, _, missing = await get(http, fake, name="t1_nothere0_store")
    assert (response.status, body["error"]) == (404, "No such route")
    assert "/api/v1" in body["message"]
    assert (status, json.loads(missing)["error"]) == (404, "Not Found")


async def test_wrong_method_is_a_405(fake: FakeWachatServer, http: aiohttp.ClientSession) -> None:
    """POST to the QR route is 405 with an Allow header."""
    async with http.post(fake.base_url + "/instance/qr/image") as response:
        assert (response.status, response.headers["Allow"]) == (405, "GET, HEAD")


def test_missing_segno_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the testing extra the server refuses to start, naming the install command."""
    monkeypatch.setitem(sys.modules, "segno", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'wachat-async[testing]'")):
        FakeWachatServer(KEY)


def test_missing_segno_fails_at_construction_in_a_fresh_process() -> None:
    """In a process whose import system cannot find segno, construction fails at once."""
    code = (
        "import sys\n"
        "sys.modules['segno'] = None\n"
        "from wachat_async.testing import FakeWachatServer\n"
        "try:\n"
        "    FakeWachatServer()\n"
        "except ImportError as exc:\n"
        "    print('refused:', exc)\n"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.startswith("refused: segno is required")
    assert "pip install 'wachat-async[testing]'" in done.stdout


async def test_segno_lost_after_start_is_a_500_with_install_hint(
    fake: FakeWachatServer,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Safety net: segno vanishing after start makes the QR route say how to install it."""
    monkeypatch.setitem(sys.modules, "segno", None)
    status, _, body = await get(http, fake)
    assert (status, "wachat-async[testing]" in json.loads(body)["message"]) == (500, True)
    assert "wachat-async[testing]" in caplog.text


# --- instances and keys ----------------------------------------------------------------------


async def test_auto_create_makes_unknown_names_for_the_caller(
    http: aiohttp.ClientSession,
) -> None:
    """auto_create=True creates unknown instances as Baileys, owned by the requesting key."""
    async with FakeWachatServer(KEY, auto_create=True) as server:
        server.add_api_key(OTHER_KEY)
        status, _, _ = await get(http, server, "new")
        other_status, _, _ = await get(http, server, "new", key=OTHER_KEY)
        assert (status, other_status, server.instances["new"]) == (
            200,
            404,
            FakeInstance(
                name="new", integration="WHATSAPP-BAILEYS", state="connecting", friendly_name="new"
            ),
        )


async def test_removed_instance_is_404(fake: FakeWachatServer, http: aiohttp.ClientSession) -> None:
    """remove_instance makes later requests 404."""
    await get(http, fake)
    fake.remove_instance(NAME)
    status, _, _ = await get(http, fake)
    assert (status, NAME in fake.instances) == (404, False)


def test_add_instances_returns_snapshots() -> None:
    """add_instances returns one FakeInstance per name with the friendly name derived."""
    server = FakeWachatServer(KEY)
    created = server.add_instances([NAME, "plain"], state="close")
    assert [(i.name, i.friendly_name, i.state) for i in created] == [
        (NAME, "jakarta_store", "close"),
        ("plain", "plain", "close"),
    ]


@pytest.mark.parametrize(
    "names",
    [["dup", "dup"], ["existing"], ["ok", "  "]],
    ids=["duplicate-in-batch", "already-exists", "blank-name"],
)
def test_add_instances_is_all_or_nothing(names: list[str]) -> None:
    """A bad batch raises ValueError and adds nothing."""
    server = FakeWachatServer(KEY)
    server.add_instance("existing")
    with pytest.raises(ValueError, match="instance"):
        server.add_instances(names)
    assert list(server.instances) == ["existing"]


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"integration": ""}, ValueError),
        ({"state": ""}, ValueError),
        ({"api_key": " padded "}, ValueError),
        ({"api_key": 42}, TypeError),
    ],
    ids=["empty-integration", "empty-state", "padded-key", "non-str-key"],
)
def test_add_instance_validates_arguments(kwargs: dict[str, Any], exc: type[Exception]) -> None:
    """Bad add_instance arguments fail loudly."""
    with pytest.raises(exc):
        FakeWachatServer(KEY).add_instance("x", **kwargs)


def test_add_instance_rejects_non_str_name() -> None:
    """Instance names must be strings."""
    with pytest.raises(TypeError, match="instance name"):
        FakeWachatServer(KEY).add_instance(7)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "operation",
    [
        lambda s: s.remove_instance("ghost"),
        lambda s: s.set_state("ghost", "open"),
        lambda s: s.rotate_qr("ghost"),
        lambda s: s.qr_payload("ghost"),
    ],
    ids=["remove_instance", "set_state", "rotate_qr", "qr_payload"],
)
def test_unknown_instance_operations_raise_keyerror(
    operation: Callable[[FakeWachatServer], object],
) -> None:
    """Operating on an instance that does not exist is a KeyError naming it."""
    with pytest.raises(KeyError, match="ghost"):
        operation(FakeWachatServer(KEY))


# --- rotation --------------------------------------------------------------------------------


async def test_qr_rotates_with_the_clock(
    fake: FakeWachatServer, http: aiohttp.ClientSession, clock: Clock
) -> None:
    """Just before the period the QR is unchanged; at the period it changes."""
    _, _, before = await get(http, fake)
    clock.now += 19.999
    _, _, same = await get(http, fake)
    clock.now += 0.001
    _, _, after = await get(http, fake)
    assert (decode_qr(before), decode_qr(same), decode_qr(after)) == (
        f"wachat-fake:{NAME}:0",
        f"wachat-fake:{NAME}:0",
        f"wachat-fake:{NAME}:1",
    )


async def test_rotate_qr_forces_a_new_payload(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """rotate_qr changes the served QR at once and returns the new payload."""
    _, _, before = await get(http, fake)
    new_payload = fake.rotate_qr(NAME)
    _, _, after = await get(http, fake)
    assert (decode_qr(after), new_payload) == (f"wachat-fake:{NAME}:1", f"wachat-fake:{NAME}:1")
    assert before != after


async def test_no_rotation_when_disabled(clock: Clock) -> None:
    """qr_rotation=None keeps the payload however far the clock moves."""
    server = FakeWachatServer(KEY, qr_rotation=None, clock=clock)
    server.add_instance(NAME)
    clock.now += 1e6
    assert server.qr_payload(NAME) == f"wachat-fake:{NAME}:0"


# --- scripts and faults on the wire ----------------------------------------------------------


async def test_script_is_consumed_in_order_then_normal(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """[502, 504, 200] then normal: one entry per QR request."""
    fake.script(NAME, [502, 504, 200])
    statuses = [(await get(http, fake))[0] for _ in range(4)]
    assert (statuses, fake.pending_script(NAME)) == ([502, 504, 200, 200], ())


def test_script_replaces_and_empty_clears() -> None:
    """script() replaces the queue; an empty list clears it."""
    server = FakeWachatServer(KEY)
    server.script(NAME, [502])
    server.script(NAME, [504, Fault(drop=True)])
    replaced = server.pending_script(NAME)
    server.script(NAME, [])
    assert (replaced, server.pending_script(NAME)) == ((Fault(status=504), Fault(drop=True)), ())


@pytest.mark.parametrize("entry", ["502", 502.0, True, None], ids=["str", "float", "bool", "none"])
def test_script_rejects_non_status_entries(entry: object) -> None:
    """Script entries are int statuses or Fault objects only."""
    with pytest.raises((TypeError, ValueError)):
        FakeWachatServer(KEY).script(NAME, [entry])  # type: ignore[list-item]


async def test_retry_after_is_sent_verbatim(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """Retry-After goes out exactly as scripted, garbage included."""
    fake.script(NAME, [Fault(status=502, retry_after="soon-ish, maybe")])
    _, headers, _ = await get(http, fake)
    assert headers["Retry-After"] == "soon-ish, maybe"


async def test_overrides_replace_body_type_and_add_headers(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """body, content_type and headers override a scripted response."""
    fake.script(
        NAME,
        [Fault(status=502, content_type="text/html", body=b"<html>", headers={"X-Fake": "1"})],
    )
    status, headers, body = await get(http, fake)
    assert (status, headers["Content-Type"], headers["X-Fake"], body) == (
        502,
        "text/html",
        "1",
        b"<html>",
    )


async def test_status_200_fault_overrides_a_normal_png(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """Fault(body=...) on a 200 serves that body with the normal PNG content type."""
    fake.script(NAME, [Fault(body=b"not a png")])
    status, headers, body = await get(http, fake)
    assert (status, headers["Content-Type"], body) == (200, "image/png", b"not a png")


async def test_truncate_gives_a_payload_error(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """truncate sends the full Content-Length but half the body, then closes."""
    fake.script(NAME, [Fault(truncate=True)])
    with pytest.raises(aiohttp.ClientPayloadError) as info:
        await get(http, fake)
    assert "content length" in str(info.value).lower()


async def test_drop_gives_server_disconnected(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """drop closes without a response (aiohttp retries a GET once, so two drops are needed)."""
    fake.script(NAME, [Fault(drop=True), Fault(drop=True)])
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await get(http, fake)
    assert [r.status for r in fake.requests] == [0, 0]


async def test_hang_ends_when_the_client_leaves(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """A client that gives up on a hanging request frees it; the server keeps serving."""
    fake.script(NAME, [Fault(hang=True)])
    pending = asyncio.ensure_future(get(http, fake))
    await wait_for_requests(fake, 1)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    status, _, _ = await get(http, fake)
    assert (status, [r.status for r in fake.requests]) == (200, [0, 200])


async def test_head_with_a_scripted_fault_has_no_body(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """HEAD answers a scripted 502 with its headers only; the connection stays usable."""
    fake.script(NAME, [Fault(status=502, retry_after="1")])
    async with http.head(
        fake.base_url + "/instance/qr/image",
        params={"instanceName": NAME},
        headers={"Authorization": f"Bearer {KEY}"},
    ) as response:
        head = (response.status, response.headers["Retry-After"], await response.read())
    status, _, body = await get(http, fake)
    assert (head, status, body[:8]) == ((502, "1", b""), 200, PNG_SIGNATURE)


@pytest.mark.parametrize(
    "fault",
    [Fault(hang=True), Fault(delay=3600), Fault(delay=3600, hang=True)],
    ids=["hang", "long-delay", "delay-then-hang"],
)
async def test_close_cuts_off_waiting_requests(http: aiohttp.ClientSession, fault: Fault) -> None:
    """Closing the server while a request waits finishes at once; the client sees an error."""
    server = FakeWachatServer(KEY)
    await server.start()
    server.add_instance(NAME)
    server.script(NAME, [fault])
    pending = asyncio.ensure_future(get(http, server))
    await wait_for_requests(server, 1)
    await server.close()
    with pytest.raises(aiohttp.ClientError):
        await pending


async def test_close_cuts_off_requests_waiting_out_the_latency(
    http: aiohttp.ClientSession,
) -> None:
    """latency delays every route; closing the server ends those waits at once."""
    server = FakeWachatServer(KEY, latency=3600)
    await server.start()
    server.add_instance(NAME)
    routes = ("/instance/qr/image", "/instance/state", "/nope")
    pending = [asyncio.ensure_future(get(http, server, route=route)) for route in routes]
    for _ in range(100):
        await asyncio.sleep(0)
    answered_early = [p.done() for p in pending]
    await server.close()
    outcomes = await asyncio.gather(*pending, return_exceptions=True)
    assert answered_early == [False] * 3
    assert all(isinstance(o, aiohttp.ClientError) for o in outcomes), outcomes


# --- state route -----------------------------------------------------------------------------


async def test_state_body_has_the_documented_shape(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """Before connecting: the reference shape, profile fields null."""
    status, headers, body = await get(http, fake, route="/instance/state")
    assert (status, headers["Content-Type"]) == (200, "application/json")
    assert json.loads(body) == {
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


async def test_set_state_open_is_reflected(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """After set_state('open') both state fields say open and the profile is filled in."""
    updated = fake.set_state(NAME, "open")
    _, _, body = await get(http, fake, via="query", route="/instance/state")
    parsed = json.loads(body)
    number = parsed["instance"]["number"]
    assert (updated.state, parsed["data"]["instance"]["state"], parsed["instance"]["state"]) == (
        "open",
        "open",
        "open",
    )
    assert (parsed["instance"]["owner"], parsed["instance"]["profileName"]) == (
        f"{number}@s.whatsapp.net",
        "Fake jakarta_store",
    )


@pytest.mark.parametrize("state", ["", None], ids=["empty", "none"])
def test_set_state_rejects_empty(state: object) -> None:
    """States are non-empty strings."""
    server = FakeWachatServer(KEY)
    server.add_instance(NAME)
    with pytest.raises(ValueError, match="state"):
        server.set_state(NAME, state)  # type: ignore[arg-type]


async def test_state_reports_non_baileys_integration(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """The integration field reports what the instance was created with."""
    fake.add_instance("cloud", integration="WHATSAPP-BUSINESS")
    _, _, body = await get(http, fake, "cloud", route="/instance/state")
    assert json.loads(body)["instance"]["integration"] == "WHATSAPP-BUSINESS"


# --- request log -----------------------------------------------------------------------------


async def test_request_log_records_what_arrived(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """A record holds method, path, name, query minus apiKey, auth, status, user agent."""
    await get(http, fake, via="query", headers={"User-Agent": "probe/1"})
    record = fake.requests[-1]
    assert (
        record.method,
        record.path,
        record.instance_name,
        dict(record.query),
        record.auth_via,
        record.key_valid,
        record.status,
        record.user_agent,
        record.time,
    ) == (
        "GET",
        "/api/v1/instance/qr/image",
        NAME,
        {"instanceName": NAME},
        "query",
        True,
        200,
        "probe/1",
        1000.0,
    )


@pytest.mark.parametrize("via", ["bearer", "query"], ids=["bearer-header", "apikey-query"])
async def test_request_record_never_shows_the_key(
    fake: FakeWachatServer, http: aiohttp.ClientSession, via: str
) -> None:
    """repr/str of a record (headers and query included) never contain the API key."""
    await get(http, fake, via=via)
    record = fake.requests[-1]
    assert KEY not in repr(record)
    assert KEY not in str(record)
    assert KEY not in repr(fake.requests)
    assert KEY not in repr(fake)
    if via == "bearer":
        assert record.headers["authorization"] == "Bearer <redacted>"


async def test_request_count_filters(fake: FakeWachatServer, http: aiohttp.ClientSession) -> None:
    """request_count filters by instance and by path, with or without the /api/v1 prefix."""
    fake.add_instance("b")
    await get(http, fake)
    await get(http, fake)
    await get(http, fake, "b")
    await get(http, fake, route="/instance/state")
    assert (
        fake.request_count(),
        fake.request_count(NAME),
        fake.request_count(NAME, path="/instance/qr/image"),
        fake.request_count(path="/api/v1/instance/state"),
        fake.request_count("b"),
    ) == (4, 3, 2, 1, 1)


async def test_reset_log_clears_log_and_counts(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """reset_log forgets requests and counts."""
    await get(http, fake)
    fake.reset_log()
    assert (fake.requests, fake.request_count()) == ([], 0)


async def test_bounded_log_keeps_exact_counts(http: aiohttp.ClientSession) -> None:
    """max_logged_requests bounds the log; request_count stays exact."""
    async with FakeWachatServer(KEY, max_logged_requests=2) as server:
        server.add_instance(NAME)
        for _ in range(5):
            await get(http, server)
        assert (len(server.requests), server.request_count(NAME)) == (2, 5)


async def test_zero_log_limit_only_counts(http: aiohttp.ClientSession) -> None:
    """max_logged_requests=0 keeps no records but still counts."""
    async with FakeWachatServer(KEY, max_logged_requests=0) as server:
        server.add_instance(NAME)
        await get(http, server)
        assert (server.requests, server.request_count(NAME)) == ([], 1)


async def test_access_log_omits_query(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """access_log=True logs method, path and status but never the query (apiKey)."""
    caplog.set_level(logging.INFO, logger="wachat_async.testing.access")
    async with FakeWachatServer(KEY, access_log=True) as server:
        server.add_instance(NAME)
        await get(http, server, via="query")
    messages = [r.getMessage() for r in caplog.records if r.name == "wachat_async.testing.access"]
    assert len(messages) == 1
    assert "GET /api/v1/instance/qr/image 200" in messages[0]
    assert KEY not in caplog.text


# --- lifecycle -------------------------------------------------------------------------------


async def test_urls_and_port(fake: FakeWachatServer) -> None:
    """url, base_url and port agree."""
    assert (fake.url, fake.base_url) == (
        f"http://127.0.0.1:{fake.port}",
        f"http://127.0.0.1:{fake.port}/api/v1",
    )


def test_addresses_need_a_started_server() -> None:
    """port/url/base_url before start explain what to do."""
    server = FakeWachatServer(KEY)
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.base_url
    assert "not started" in repr(server)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "[::1]"),
        ("[::1]", "[::1]"),
        ("0.0.0.0", "127.0.0.1"),  # noqa: S104
        ("::", "[::1]"),
        ("", "127.0.0.1"),
    ],
    ids=["ipv4", "ipv6", "ipv6-bracketed", "all-ipv4", "all-ipv6", "all-empty"],
)
def test_url_host_brackets_ipv6(host: str, expected: str) -> None:
    """IPv6 hosts are bracketed in URLs; a wildcard bind is reached through loopback."""
    assert _url_host(host) == expected


async def test_server_cannot_restart() -> None:
    """start() after start (or after close) is refused; close() is idempotent."""
    server = FakeWachatServer(KEY)
    async with server:
        with pytest.raises(RuntimeError, match="running"):
            await server.start()
    await server.close()
    with pytest.raises(RuntimeError, match="closed"):
        await server.start()


async def test_close_without_start_is_a_no_op() -> None:
    """Closing a never-started server works and leaves it closed."""
    server = FakeWachatServer(KEY)
    await server.close()
    assert "closed" in repr(server)


async def test_port_in_use_raises_oserror() -> None:
    """A busy port fails start() with OSError."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = FakeWachatServer(KEY, port=busy.getsockname()[1])
        with pytest.raises(OSError, match="address"):
            await server.start()


def test_repr_hides_the_key() -> None:
    """The server's repr never contains its keys."""
    server = FakeWachatServer(KEY)
    server.add_api_key(OTHER_KEY)
    assert KEY not in repr(server)
    assert OTHER_KEY not in repr(server)


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"api_key": ""}, ValueError),
        ({"api_key": " padded-SECRET"}, ValueError),
        ({"api_key": "SECRET\r\nX: y"}, ValueError),
        ({"api_key": None}, TypeError),
        ({"qr_rotation": 0}, ValueError),
        ({"qr_rotation": float("inf")}, ValueError),
        ({"latency": -0.1}, ValueError),
        ({"latency": "1"}, TypeError),
        ({"max_logged_requests": -1}, ValueError),
    ],
    ids=[
        "empty-key",
        "padded-key",
        "crlf-key",
        "none-key",
        "zero-rotation",
        "infinite-rotation",
        "negative-latency",
        "str-latency",
        "negative-log-limit",
    ],
)
def test_constructor_validates(kwargs: dict[str, Any], exc: type[Exception]) -> None:
    """Bad constructor arguments fail at construction, never echoing the key."""
    kwargs.setdefault("api_key", KEY)
    with pytest.raises(exc) as info:
        FakeWachatServer(**kwargs)
    assert "SECRET" not in str(info.value)


def test_run_in_thread_serves_sync_code() -> None:
    """run_in_thread serves urllib from a plain sync function and stops on exit."""
    with FakeWachatServer(KEY, qr_rotation=None).run_in_thread() as server:
        server.add_instance(NAME)
        _, body = sync_get(f"{server.base_url}/instance/qr/image?instanceName={NAME}", KEY)
        url = server.base_url
    assert decode_qr(body) == f"wachat-fake:{NAME}:0"
    with pytest.raises(urllib.error.URLError):
        sync_get(url)


def test_run_in_thread_reraises_startup_errors() -> None:
    """A startup failure on the server thread is raised in the caller."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = FakeWachatServer(KEY, port=busy.getsockname()[1])
        with pytest.raises(OSError, match="address"), server.run_in_thread():
            pass  # pragma: no cover - never entered


def test_run_in_thread_reraises_shutdown_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error while the server thread shuts down is raised in the caller."""
    server = FakeWachatServer(KEY)
    real_close = server.close

    async def failing_close() -> None:
        await real_close()
        raise RuntimeError("boom")

    monkeypatch.setattr(server, "close", failing_close)
    running = server.run_in_thread()
    running.__enter__()
    with pytest.raises(RuntimeError, match="boom"):
        running.__exit__(None, None, None)


async def test_close_on_a_foreign_loop_is_refused() -> None:
    """A threaded server cannot be closed from another loop (its context manager does it)."""
    with (
        FakeWachatServer(KEY).run_in_thread() as server,
        pytest.raises(RuntimeError, match="loop"),
    ):
        await server.close()


async def test_threaded_server_works_from_async_tests(http: aiohttp.ClientSession) -> None:
    """A run_in_thread server answers an aiohttp client on the test's loop."""
    with FakeWachatServer(KEY).run_in_thread() as server:
        server.add_instance(NAME)
        status, _, _ = await get(http, server)
    assert status == 200


async def test_conditions_answer_429_with_retry_after_then_502_for_an_outage(
    fake: FakeWachatServer, http: aiohttp.ClientSession, clock: Clock
) -> None:
    """On the wire: a request over the rate is a 429 with Retry-After and the API's JSON error
    shape; an outage is a 502; clearing the conditions restores the PNG. The state route is
    never limited."""
    fake.set_conditions(Conditions(rate_limit=1, retry_after=3))
    assert (await get(http, fake))[0] == 200
    status, headers, body = await get(http, fake)
    assert (status, headers["Retry-After"], json.loads(body)["success"]) == (429, "3", False)
    assert (await get(http, fake, route="/instance/state"))[0] == 200
    fake.set_conditions(Conditions(outage=1))
    assert (await get(http, fake))[0] == 502
    clock.now += 1
    fake.set_conditions(None)
    status, _, body = await get(http, fake)
    assert (status, body[:8]) == (200, PNG_SIGNATURE)


def test_set_conditions_takes_conditions_only(wachat_server: FakeWachatServer) -> None:
    """A mapping of options is not silently taken for conditions."""
    with pytest.raises(TypeError, match="conditions must be a Conditions, not dict"):
        wachat_server.set_conditions({"rate_limit": 1})  # type: ignore[arg-type]


@pytest.mark.parametrize("level", [logging.DEBUG, logging.WARNING], ids=["debug", "warning"])
@pytest.mark.parametrize("size", [9_000, 20_000], ids=["over-8190", "20000"])
async def test_an_over_long_authorization_header_never_reaches_the_log(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], level: int, size: int
) -> None:
    """aiohttp's parser error quotes the header's first bytes (a client's key): the fake
    server logs one line naming the error instead, at any level."""
    caplog.set_level(level)
    key = "sk-OVERLONG-" + "k" * size
    async with FakeWachatServer("test-key") as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"GET /api/v1/instance/state?instanceName=t1_abc HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {key}\r\n\r\n".encode()
        )
        await writer.drain()
        status = await reader.readline()
        writer.close()
    out, err = capfd.readouterr()
    assert b" 400 " in status
    logged = caplog.text + out + err
    assert "sk-OVERLONG" not in logged
    assert "not valid HTTP (LineTooLong)" in caplog.text
