"""The fake Wachat server itself, exercised with a plain aiohttp client over loopback."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import zxingcpp
from multidict import CIMultiDictProxy
from PIL import Image

from wachat_async.testing import FakeInstance, FakeWachatServer, Fault, RecordedRequest, _server
from wachat_async.testing import __main__ as cli
from wachat_async.testing._server import _resolve, _url_host

pytest_plugins = ["pytester"]

KEY = "fake-KEY-5f3c9a1e7b"
OTHER_KEY = "other-KEY-0c8d2b"
CLI_KEY = "cli-KEY-9d1e"
NAME = "t1_mq9r2jov_jakarta_store"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Clock:
    """A hand-driven clock for rotation tests."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    """A fake clock starting at 1000 s."""
    return Clock()


@pytest.fixture
async def fake(clock: Clock) -> AsyncIterator[FakeWachatServer]:
    """A started server (key KEY, 20 s rotation on the fake clock) with one Baileys instance."""
    async with FakeWachatServer(KEY, clock=clock) as server:
        server.add_instance(NAME)
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session."""
    async with aiohttp.ClientSession() as session:
        yield session


async def get(
    http: aiohttp.ClientSession,
    server: FakeWachatServer,
    name: str | None = NAME,
    *,
    key: str | None = KEY,
    via: str = "bearer",
    route: str = "/instance/qr/image",
    **kwargs: Any,
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    """GET a route and return (status, headers, body)."""
    params = {} if name is None else {"instanceName": name}
    headers = dict(kwargs.pop("headers", {}))
    if key is not None and via == "bearer":
        headers["Authorization"] = f"Bearer {key}"
    elif key is not None:
        params["apiKey"] = key
    async with http.get(server.base_url + route, params=params, headers=headers, **kwargs) as r:
        return r.status, r.headers, await r.read()


def sync_get(url: str, key: str | None = None) -> tuple[int, bytes]:
    """GET *url* with urllib (blocking), optionally with a Bearer key."""
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback http only
    with urllib.request.urlopen(request) as response:  # noqa: S310
        return response.status, response.read()


def decode_qr(png: bytes) -> str:
    """The text of the single QR code in *png*."""
    result = zxingcpp.read_barcode(Image.open(io.BytesIO(png)))
    assert result is not None, "no QR code found"
    return result.text


async def wait_for_requests(server: FakeWachatServer, count: int) -> None:
    """Yield to the loop until the server has logged *count* requests (bounded)."""
    for _ in range(5000):
        if server.request_count() >= count:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"server logged {server.request_count()} requests, wanted {count}")


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


async def test_overlong_name_gets_a_digest_payload(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """A name too long for a QR code is encoded as a digest, still scannable."""
    name = "n" * 3000
    fake.add_instance(name)
    _, _, body = await get(http, fake, name)
    assert decode_qr(body) == fake.qr_payload(name)
    assert fake.qr_payload(name).startswith("wachat-fake:sha256=")


# --- error statuses ----------------------------------------------------------------------------


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


async def test_auth_is_checked_before_the_name(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """No key and no instanceName is a 401, not a 400."""
    status, _, _ = await get(http, fake, None, key=None)
    assert status == 401


async def test_non_bearer_authorization_is_not_a_key(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """'Authorization: Basic <key>' does not authenticate."""
    async with http.get(
        fake.base_url + "/instance/qr/image",
        params={"instanceName": NAME},
        headers={"Authorization": f"Basic {KEY}"},
    ) as response:
        assert (response.status, fake.requests[-1].auth_via) == (401, None)


async def test_bearer_header_wins_over_query_key(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """With both, the header key is the one checked."""
    async with http.get(
        fake.base_url + "/instance/qr/image",
        params={"instanceName": NAME, "apiKey": KEY},
        headers={"Authorization": "Bearer wrong"},
    ) as response:
        assert (response.status, fake.requests[-1].auth_via) == (401, "bearer")


async def test_unknown_route_is_a_json_404(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """Paths the API does not have answer 404 with a JSON body, and are logged."""
    status, headers, body = await get(http, fake, route="/instance/nope")
    assert (status, headers["Content-Type"], json.loads(body)["success"]) == (
        404,
        "application/json",
        False,
    )
    assert fake.request_count(path="/instance/nope") == 1


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


# --- instances and keys -----------------------------------------------------------------------


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


# --- rotation ----------------------------------------------------------------------------------


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


# --- scripts -----------------------------------------------------------------------------------


async def test_script_is_consumed_in_order_then_normal(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """[502, 504, 200] then normal: one entry per QR request."""
    fake.script(NAME, [502, 504, 200])
    statuses = [(await get(http, fake))[0] for _ in range(4)]
    assert (statuses, fake.pending_script(NAME)) == ([502, 504, 200, 200], ())


async def test_script_does_not_apply_to_the_state_route(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """State requests neither see nor consume the QR script."""
    fake.script(NAME, [502])
    status, _, _ = await get(http, fake, route="/instance/state")
    assert (status, fake.pending_script(NAME)) == (200, (Fault(status=502),))


async def test_script_applies_to_unknown_names(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """A scripted fault wins over the 404 of an unknown instance."""
    fake.script("ghost", [502])
    first, _, _ = await get(http, fake, "ghost")
    second, _, _ = await get(http, fake, "ghost")
    assert (first, second) == (502, 404)


async def test_scripted_200_is_normal_behaviour(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """200 in a script still runs the lookup (an unknown name stays 404)."""
    fake.script("ghost", [200])
    status, _, _ = await get(http, fake, "ghost")
    assert (status, fake.pending_script("ghost")) == (404, ())


async def test_auth_is_checked_before_the_script(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """A bad key gets 401 and leaves the script untouched."""
    fake.script(NAME, [502])
    status, _, _ = await get(http, fake, key="wrong")
    assert (status, len(fake.pending_script(NAME))) == (401, 1)


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


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (502, "Bad Gateway", "Failed to fetch or decode the QR code image."),
        (504, "Gateway Timeout", "Wachat API request timed out."),
        (429, "Too Many Requests", "Simulated HTTP 429 response."),
        (599, "Error", "Simulated HTTP 599 response."),
    ],
    ids=["502-documented", "504-documented", "429-generic", "599-unnamed"],
)
async def test_scripted_error_bodies(
    fake: FakeWachatServer,
    http: aiohttp.ClientSession,
    status: int,
    error: str,
    message: str,
) -> None:
    """Scripted statuses carry the documented (or a generic) JSON error body."""
    fake.script(NAME, [status])
    got, headers, body = await get(http, fake)
    assert (got, headers["Content-Type"], json.loads(body)) == (
        status,
        "application/json",
        {"success": False, "error": error, "message": message},
    )


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


async def test_delay_then_normal_response(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """A short delay still ends in the normal response."""
    fake.script(NAME, [Fault(delay=0.005)])
    status, _, body = await get(http, fake)
    assert (status, decode_qr(body)) == (200, fake.qr_payload(NAME))


async def test_long_delay_outlasts_client_timeout(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """A delay longer than the client's timeout makes the client time out."""
    fake.script(NAME, [Fault(delay=60)])
    with pytest.raises(asyncio.TimeoutError):
        await get(http, fake, timeout=aiohttp.ClientTimeout(total=0.02))


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


async def test_hang_ends_when_the_client_gives_up(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """A hanging request times out on the client; the server keeps serving."""
    fake.script(NAME, [Fault(hang=True)])
    with pytest.raises(asyncio.TimeoutError):
        await get(http, fake, timeout=aiohttp.ClientTimeout(total=0.02))
    status, _, _ = await get(http, fake)
    assert status == 200


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


async def test_latency_delays_every_route(http: aiohttp.ClientSession) -> None:
    """latency applies to every route, so a short client timeout expires on each."""
    async with FakeWachatServer(KEY, latency=3600) as server:
        server.add_instance(NAME)
        outcomes = []
        for route in ("/instance/qr/image", "/instance/state", "/nope"):
            try:
                await get(http, server, route=route, timeout=aiohttp.ClientTimeout(total=0.01))
            except asyncio.TimeoutError:
                outcomes.append("timeout")
        assert outcomes == ["timeout"] * 3


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"status": 99}, ValueError),
        ({"status": 600}, ValueError),
        ({"status": True}, ValueError),
        ({"delay": -1}, ValueError),
        ({"delay": float("nan")}, ValueError),
        ({"delay": "1"}, TypeError),
        ({"retry_after": "1\r\nX-Evil: 1"}, ValueError),
        ({"retry_after": 2}, TypeError),
        ({"content_type": "text/html\n"}, ValueError),
        ({"body": "text"}, TypeError),
        ({"headers": [("a", "b")]}, TypeError),
        ({"headers": {"X-A": 1}}, TypeError),
        ({"headers": {"Bad:Name": "v"}}, ValueError),
        ({"headers": {"X-A": "v\r\nX-B: w"}}, ValueError),
        ({"truncate": 1}, TypeError),
        ({"truncate": True, "drop": True}, ValueError),
        ({"drop": True, "hang": True}, ValueError),
    ],
    ids=[
        "status-too-low",
        "status-too-high",
        "status-bool",
        "negative-delay",
        "nan-delay",
        "str-delay",
        "crlf-retry-after",
        "int-retry-after",
        "newline-content-type",
        "str-body",
        "headers-not-mapping",
        "header-value-not-str",
        "colon-in-header-name",
        "crlf-header-value",
        "int-flag",
        "truncate-and-drop",
        "drop-and-hang",
    ],
)
def test_fault_validates_fields(kwargs: dict[str, Any], exc: type[Exception]) -> None:
    """Impossible or header-injecting faults are refused at construction."""
    with pytest.raises(exc):
        Fault(**kwargs)


def test_fault_is_hashable_and_repr_hides_body() -> None:
    """Faults are frozen values; the repr shows the body's size, not its bytes."""
    fault = Fault(status=502, body=b"secret-ish bytes", headers={"X-A": "1"})
    assert hash(fault) == hash(Fault(status=502, body=b"secret-ish bytes"))
    assert "<16 bytes>" in repr(fault)
    assert "secret-ish" not in repr(fault)


# --- state route -------------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    ("name", "key", "status"),
    [(NAME, None, 401), (NAME, "wrong", 401), (None, KEY, 400), ("ghost", KEY, 404)],
    ids=["401-missing-key", "401-invalid-key", "400-missing-name", "404-unknown"],
)
async def test_state_route_errors(
    fake: FakeWachatServer,
    http: aiohttp.ClientSession,
    name: str | None,
    key: str | None,
    status: int,
) -> None:
    """The state route authenticates and looks up like the QR route."""
    got, _, body = await get(http, fake, name, key=key, route="/instance/state")
    assert (got, json.loads(body)["success"]) == (status, False)


async def test_state_reports_non_baileys_integration(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """The integration field reports what the instance was created with."""
    fake.add_instance("cloud", integration="WHATSAPP-BUSINESS")
    _, _, body = await get(http, fake, "cloud", route="/instance/state")
    assert json.loads(body)["instance"]["integration"] == "WHATSAPP-BUSINESS"


# --- request log -------------------------------------------------------------------------------


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


async def test_invalid_key_is_logged_as_invalid(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """A wrong key is recorded with key_valid False and status 401."""
    await get(http, fake, key="nope")
    record = fake.requests[-1]
    assert (record.auth_via, record.key_valid, record.status) == ("bearer", False, 401)


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


# --- lifecycle ---------------------------------------------------------------------------------


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


def test_resolve_ignores_done_futures() -> None:
    """Waking a waiter twice (timer and close racing) is harmless."""
    loop = asyncio.new_event_loop()
    try:
        waiter: asyncio.Future[None] = loop.create_future()
        _resolve(waiter)
        _resolve(waiter)
        assert waiter.result() is None
    finally:
        loop.close()


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


# --- pytest plugin -----------------------------------------------------------------------------


def test_plugin_is_registered(pytestconfig: pytest.Config) -> None:
    """The pytest11 entry point loads the plugin."""
    assert pytestconfig.pluginmanager.has_plugin("wachat_async")


def test_wachat_server_fixture_in_sync_test(wachat_server: FakeWachatServer) -> None:
    """The fixture is started, empty, keyed 'test-key', and serves sync clients."""
    wachat_server.add_instance(NAME)
    _, body = sync_get(
        f"{wachat_server.base_url}/instance/state?instanceName={NAME}&apiKey=test-key"
    )
    assert json.loads(body)["success"] is True
    assert (wachat_server.api_key, list(wachat_server.instances)) == ("test-key", [NAME])


async def test_wachat_server_fixture_in_async_test(
    wachat_server: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """The same fixture serves an async client on the test's loop."""
    wachat_server.add_instance(NAME)
    status, _, _ = await get(http, wachat_server, key="test-key")
    assert status == 200


def test_wachat_server_factory_passes_options(
    wachat_server_factory: Callable[..., FakeWachatServer],
) -> None:
    """The factory starts independent servers with the given options."""
    first = wachat_server_factory(auto_create=True)
    second = wachat_server_factory("other-key")
    assert (first.port != second.port, second.api_key) == (True, "other-key")


def test_plugin_import_is_cheap() -> None:
    """Importing the plugin loads neither the server module nor segno."""
    code = (
        "import sys, wachat_async.testing._plugin; "
        "print('wachat_async.testing._server' in sys.modules, 'segno' in sys.modules)"
    )
    out = subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "False"]


def test_fixture_works_in_a_users_suite(pytester: pytest.Pytester) -> None:
    """A user's test file using the fixtures passes, even with pytest-asyncio disabled."""
    pytester.makepyfile(
        """
        import json, urllib.request

        def test_state(wachat_server):
            wachat_server.add_instance("t1_abc_store", state="open")
            url = (wachat_server.base_url
                   + "/instance/state?instanceName=t1_abc_store&apiKey=test-key")
            with urllib.request.urlopen(url) as response:
                assert json.load(response)["instance"]["state"] == "open"

        def test_factory(wachat_server_factory):
            assert wachat_server_factory(latency=0.0).port > 0
        """
    )
    result = pytester.runpytest("-p", "no:asyncio", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


# --- command line ------------------------------------------------------------------------------


def test_cli_parses_options() -> None:
    """Options are parsed into their types; --instance repeats, --instances counts."""
    args = cli._build_parser().parse_args(
        ["--port", "0", "--api-key", "k", "--instance", "a", "--instance", "b", "--rotation", "0"]
    )
    assert (args.port, args.api_key, args.instance_names, args.rotation) == (
        0,
        "k",
        ["a", "b"],
        0.0,
    )
    assert cli._names(args) == ["a", "b"]


def test_cli_serves_the_readme_names_by_default() -> None:
    """Without --instance the names of the README's examples are served, plus any generated."""
    args = cli._build_parser().parse_args(["--instances", "3"])
    names = cli._names(args)
    assert names[: len(cli.DEFAULT_INSTANCES)] == list(cli.DEFAULT_INSTANCES)
    assert names[len(cli.DEFAULT_INSTANCES) :] == cli.generated_names(3)
    assert len(set(names)) == len(names) == len(cli.DEFAULT_INSTANCES) + 3


def test_default_names_cover_every_name_the_docs_expect_to_exist() -> None:
    """Every t1_ name in the README, docs and examples is served, except the ones shown missing."""
    root = Path(__file__).resolve().parent.parent
    texts = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    texts += sorted((root / "examples").glob("*.py"))
    used = {m for path in texts for m in re.findall(r"\bt1_[A-Za-z0-9_]+", path.read_text())}
    # Names the docs use as the example of a missing or failing instance.
    missing = {n for n in used if re.search(r"gone|no_such|nothere|typo|stroe", n)}
    # Names the docs create themselves (a test's own fake server).
    added = {m for p in texts for m in re.findall(r'add_instance\("(t1_\w+)"', p.read_text())}
    assert used - missing - added <= set(cli.DEFAULT_INSTANCES)
    assert missing.isdisjoint(cli.DEFAULT_INSTANCES)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rotation", "soon"], "not a number: 'soon'"),
        (["--rotation", "-1"], "must be a finite number >= 0, got '-1'"),
        (["--latency", "inf"], "must be a finite number >= 0, got 'inf'"),
        (["--duration", "0"], "must be a finite number > 0, got '0'"),
        (["--port", "-1"], "must be an integer from 0 to 65535, got '-1'"),
        (["--port", "65536"], "must be an integer from 0 to 65535, got '65536'"),
        (["--log-limit", "-5"], "must be an integer >= 0, got '-5'"),
        (["--instances", "-1"], "must be an integer from 0 to 100000, got '-1'"),
        (["--instances", "a,b"], "give names with --instance NAME"),
        (["--instance", " "], "must not be empty or whitespace"),
        (["--instance", "a\nb"], "control characters: 'a\\nb'"),
        (["--api-key", " padded "], "without surrounding whitespace"),
    ],
    ids=[
        "non-number",
        "negative-rotation",
        "infinite-latency",
        "zero-duration",
        "negative-port",
        "port-too-high",
        "negative-log-limit",
        "negative-count",
        "names-for-a-count",
        "blank-name",
        "newline-name",
        "padded-key",
    ],
)
def test_cli_rejects_bad_values_with_the_true_bound(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad values exit 2 with one error line that states the real bound, and a --help hint."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert (code, err.count("\n")) == (2, 2)
    assert message in err.splitlines()[0]
    assert err.splitlines()[1] == f"{cli.PROG}: hint: try '{cli.PROG} --help'"
    assert " padded " not in err


@pytest.mark.parametrize(
    "argv",
    [["--rotation", "0"], ["--latency", "0"], ["--port", "0"], ["--instances", "0"]],
    ids=["rotation", "latency", "port", "instances"],
)
def test_cli_accepts_the_documented_zeros(argv: list[str]) -> None:
    """0 is a documented value of these options (never, none, any free port, no extras)."""
    args = cli._build_parser().parse_args(argv)
    assert getattr(args, {"--instances": "generated"}.get(argv[0], argv[0][2:])) == 0


def test_cli_serves_until_sigint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """main() serves requests, stops cleanly on SIGINT and never prints the key."""
    statuses: list[int] = []

    async def probe(server: FakeWachatServer) -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{server.base_url}/instance/qr/image",
                params={"instanceName": "a", "apiKey": CLI_KEY},
            ) as response,
        ):
            statuses.append(response.status)
        signal.raise_signal(signal.SIGINT)  # what Ctrl-C does

    class ProbedServer(FakeWachatServer):
        async def start(self) -> None:
            await super().start()
            probes.append(asyncio.ensure_future(probe(self)))

    probes: list[asyncio.Future[None]] = []
    monkeypatch.setattr(_server, "FakeWachatServer", ProbedServer)
    argv = ["--port", "0", "--api-key", CLI_KEY, "--instance", "a", "--instance", "b"]
    code = cli.main([*argv, "--rotation", "5"])
    out, err = capsys.readouterr()
    assert (code, statuses, [p.done() for p in probes]) == (0, [200], [True])
    assert out.startswith("Fake Wachat server listening on http://127.0.0.1:")
    assert "Instances (2): a, b; any other name: 404" in out
    assert "QR codes change every 5 s" in err
    assert err.endswith("Stopped.\n")
    assert CLI_KEY not in out + err


def test_cli_busy_port_exits_8(capsys: pytest.CaptureFixture[str]) -> None:
    """A busy port is one line on stderr with exit status 8 (as in wachat-qr's table)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code = cli.main(["--port", str(busy.getsockname()[1])])
    err = capsys.readouterr().err
    assert (code, err.count("\n")) == (8, 1)
    assert err.startswith(f"{cli.PROG}: error: cannot listen on 127.0.0.1:")


def test_cli_without_segno_exits_2_with_the_install_hint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the testing extra: one line naming the install command, before listening."""
    monkeypatch.setitem(sys.modules, "segno", None)
    code = cli.main(["--port", "0", "--duration", "0.01"])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert "pip install 'wachat-async[testing]'" in err


def test_cli_access_log_configures_logging(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--access-log turns on logging to stderr before serving."""
    configured: list[dict[str, Any]] = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: configured.append(kw))
    assert cli.main(["--access-log", "--port", "0", "--duration", "0.01"]) == 0
    assert configured[0]["level"] == logging.INFO


def test_cli_unexpected_error_is_one_line_and_exit_70(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug is reported in one line plus a hint to use --debug, which shows the traceback."""

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(_server.FakeWachatServer, "add_instances", broken)
    code = cli.main(["--port", "0"])
    err = capsys.readouterr().err
    debug_code = cli.main(["--port", "0", "--debug"])
    debug_err = capsys.readouterr().err
    assert (code, err.count("\n")) == (70, 2)
    assert err.startswith(f"{cli.PROG}: error: internal error: RuntimeError: boom\n")
    assert "--debug" in err
    assert "Traceback" not in err
    assert (debug_code, "Traceback (most recent call last)" in debug_err) == (70, True)


def _serve_in_a_process(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "wachat_async.testing", "--port", "0", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # pragma: no cover - only when the test already failed
            proc.kill()
            proc.wait()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_python_dash_m_runs_until_sigint() -> None:
    """`python -m wachat_async.testing` prints the URL first and exits 0 on Ctrl-C."""
    proc = _serve_in_a_process("--api-key", KEY)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        base_url = first.rsplit(" ", 1)[-1].strip()
        status, _ = sync_get(f"{base_url}/instance/qr/image?instanceName=t1_demo0001_store", KEY)
    finally:
        out, err = _stop(proc)
    assert (proc.returncode, status, base_url.startswith("http://127.0.0.1:")) == (0, 200, True)
    assert KEY not in first + out + err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_readme_ten_lines_work_with_the_printed_exports(tmp_path: Path) -> None:
    """Copy the printed export lines, run the README's ten-line example: it saves qr.png."""
    proc = _serve_in_a_process()
    try:
        assert proc.stdout is not None
        exports: dict[str, str] = {}
        for line in iter(proc.stdout.readline, ""):
            if line.strip().startswith("export "):
                name, _, value = line.strip().removeprefix("export ").partition("=")
                exports[name] = value
            if line.startswith("Instances"):
                break
        blocks = re.findall(
            r"```python\n(.*?)```", (Path(__file__).parent.parent / "README.md").read_text(), re.S
        )
        (example,) = [b for b in blocks if "asyncio.run(main())" in b]
        (tmp_path / "example.py").write_text(example, encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "example.py"],
            cwd=tmp_path,
            env={**os.environ, **exports},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        _stop(proc)
    assert sorted(exports) == ["WACHAT_API_KEY", "WACHAT_BASE_URL"]
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("QRImage(instance_name='t1_mq9r2jov_jakarta_store'")
    assert (tmp_path / "qr.png").read_bytes().startswith(PNG_SIGNATURE)


def _outbound_address() -> str | None:
    """This machine's own non-loopback address (a UDP "connect" sends nothing), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed to the internet
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address  # noqa: S104


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_all_interfaces_prints_urls_that_work() -> None:
    """--host 0.0.0.0 prints a loopback base URL that answers, and one for other machines."""
    proc = _serve_in_a_process("--host", "0.0.0.0")  # noqa: S104 - the case under test
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        lines = [proc.stdout.readline() for _ in range(4)]
        base_url = first.rsplit(" ", 1)[-1].strip()
        status, png = sync_get(f"{base_url}/instance/qr/image?instanceName={NAME}", "demo")
        own, remote = _outbound_address(), 200
        if own is not None:  # the same server, reached through a non-loopback interface
            port = base_url.rsplit(":", 1)[1].split("/")[0]
            url = f"http://{own}:{port}/api/v1/instance/state?instanceName={NAME}"
            remote, _ = sync_get(url, "demo")
    finally:
        _stop(proc)
    assert remote == 200
    assert base_url.startswith("http://127.0.0.1:")
    assert (status, png[:8]) == (200, PNG_SIGNATURE)
    assert any("From another machine: WACHAT_BASE_URL=http://" in line for line in lines)
    assert any("--allow-insecure-http" in line for line in lines)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
def test_python_dash_m_stops_quietly_when_its_reader_is_gone() -> None:
    """stdout is a pipe nobody reads (`| head` that already quit): exit 141, stderr empty."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    try:
        done = subprocess.run(
            [sys.executable, "-m", "wachat_async.testing", "--port", "0", "--duration", "30"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


def test_cli_broken_pipe_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stdout whose reader went away ends main() with 141 and nothing on stderr."""

    class Gone(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Gone())
    code = cli.main(["--port", "0", "--duration", "30"])
    assert (code, capsys.readouterr().err) == (141, "")


# --- exports -----------------------------------------------------------------------------------


def test_public_surface() -> None:
    """wachat_async.testing exports exactly the four public names."""
    import wachat_async.testing as testing

    assert sorted(testing.__all__) == [
        "FakeInstance",
        "FakeWachatServer",
        "Fault",
        "RecordedRequest",
    ]
    assert set(testing.__all__) <= set(dir(testing))
    assert testing.RecordedRequest is RecordedRequest


def test_unknown_attribute_is_an_attribute_error() -> None:
    """The lazy module raises AttributeError for names it does not have."""
    import wachat_async.testing as testing

    with pytest.raises(AttributeError, match="nope"):
        _ = testing.nope
