"""Headless Chromium on the live QR page's watch limits and a closed client, every framework.

* ``max_qrs=2`` against a fake server whose QR the test rotates each time the page shows a new
  one: the page shows the QRs, then the expired state (no QR, the "Show a new QR code" button),
  the watch stops (no further upstream request, the PNG route answers 410); a real mouse click
  on the button brings a new QR from new upstream requests.
* The client closed while the page is open: every reconnect is answered 503, and the page
  waits a growing delay before each next try (each recorded as the page asks for it) instead of
  reconnecting in a loop.

Every wait is on a condition with a generous bound; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests._web import EVERY_FRAMEWORK, LIMIT, serve, until, watch_tasks
from tests.test_browser import CDP, chromium, require_chromium
from wachat_async import WachatClient
from wachat_async.testing import FakeWachatServer

# timeout: Chromium's start and each wait have their own bounds, which fail first, saying which.
pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

KEY = "wk_live_web_S3CRET_4242"
NAME = "t1_mq9r2jov_jakarta_store"
QR = "/instance/qr/image"
PAGE_STATE = """(() => {
    const img = document.getElementById("wachat-qr");
    const status = document.getElementById("wachat-status");
    const again = document.getElementById("wachat-again");
    return {state: status.getAttribute("data-state"), text: status.textContent,
            hidden: img.hidden, src: img.getAttribute("src"),
            loaded: img.complete ? img.naturalWidth : 0,
            button: !again.hidden, disabled: again.disabled, label: again.textContent};
})()"""
#: Records every wait the page asks ``setTimeout`` for (its only timer: the reconnect back-off),
#: then waits as asked. DevTools adds it before the page's own script runs.
RECORD_WAITS = """
window.wachatWaits = [];
const realSetTimeout = window.setTimeout;
window.setTimeout = function (callback, ms) {
  window.wachatWaits.push(ms);
  return realSetTimeout.call(window, callback, ms);
};
"""
RETRY_BASE_MS = 1000  # the page's back-off: 1 s doubling, capped at 30 s, times 0.5 to 1


@pytest.fixture(scope="module")
def chromium_path() -> str:
    return require_chromium()


@pytest.fixture(params=EVERY_FRAMEWORK)
def framework(request: pytest.FixtureRequest) -> str:
    """aiohttp.web, Starlette's routes under FastAPI, and FastAPI's qr_router."""
    return str(request.param)


async def open_tab(cdp: CDP, url: str, init_script: str | None = None) -> str:
    """A new tab on *url* (network events on, *init_script* run before the page's own);
    returns its DevTools session id."""
    target = await cdp.call("Target.createTarget", {"url": "about:blank"})
    attached = await cdp.call(
        "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
    )
    session: str = attached["sessionId"]
    await cdp.call("Network.enable", session=session)
    await cdp.call("Page.enable", session=session)
    if init_script is not None:
        await cdp.call(
            "Page.addScriptToEvaluateOnNewDocument", {"source": init_script}, session=session
        )
    await cdp.call("Page.navigate", {"url": url}, session=session)
    return session


async def evaluate(cdp: CDP, session: str, expression: str) -> Any:
    result = await cdp.call(
        "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session
    )
    return result["result"].get("value")  # none before the page has loaded: the script throws


async def wait_for(
    cdp: CDP, session: str, check: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """The page's state once *check* holds (bounded by LIMIT; a failure names *what*)."""

    async def poll() -> dict[str, Any]:
        while True:
            state = await evaluate(cdp, session, PAGE_STATE)
            if state and check(state):
                return dict(state)
            await asyncio.sleep(0.02)

    try:
        return await asyncio.wait_for(poll(), LIMIT)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


async def click(cdp: CDP, session: str, element_id: str) -> None:
    """A real left click (mouse down and up) in the middle of the element."""
    where = await evaluate(
        cdp,
        session,
        f"""(() => {{ const e = document.getElementById("{element_id}");
            e.scrollIntoView(); const r = e.getBoundingClientRect();
            return {{x: r.x + r.width / 2, y: r.y + r.height / 2}}; }})()""",
    )
    for kind in ("mousePressed", "mouseReleased"):
        await cdp.call(
            "Input.dispatchMouseEvent",
            {"type": kind, "x": where["x"], "y": where["y"], "button": "left", "clickCount": 1},
            session=session,
        )


def requests_sent(cdp: CDP, session: str, since: int = 0) -> list[dict[str, Any]]:
    """The ``Network.requestWillBeSent`` parameters of *session*, from ``cdp.events[since:]``."""
    return [
        e["params"]
        for e in cdp.events[since:]
        if e.get("method") == "Network.requestWillBeSent" and e.get("sessionId") == session
    ]


def is_qr(state: dict[str, Any]) -> bool:
    return state["state"] == "qr" and bool(state["loaded"]) and not state["hidden"]


async def test_chromium_shows_the_expired_state_and_the_button_brings_a_new_qr(
    chromium_path: str, framework: str
) -> None:
    """max_qrs=2: two QRs, then `expired` (the QR hidden, the button shown); the watch stops
    asking upstream and the PNG route answers 410; a click on the button POSTs the restart and
    a new QR shows, fetched from upstream again."""
    async with (
        FakeWachatServer(api_key=KEY, qr_rotation=None) as fake,
        WachatClient(api_key=KEY, base_url=fake.base_url) as client,  # real waits: 1 s polls
        serve(framework, client, fastapi=True, interval=1.0, max_qrs=2) as base,
        chromium(chromium_path) as cdp,
        aiohttp.ClientSession() as http,
    ):
        fake.add_instance(NAME)
        tab = await open_tab(cdp, f"{base}/qr/{NAME}")
        shown: list[str] = []
        while True:  # rotate the QR each time the page shows a new one, until it expires
            state = await wait_for(
                cdp,
                tab,
                lambda s: s["state"] == "expired" or (is_qr(s) and s["src"] not in shown),
                f"QR number {len(shown) + 1} or the expired state",
            )
            if state["state"] == "expired":
                break
            assert len(shown) < 2, f"a third QR showed: {state}"
            shown.append(state["src"])
            fake.rotate_qr(NAME)
        expired = state
        await until(lambda: not watch_tasks(), "the watch stops polling")
        polls = fake.request_count(NAME, path=QR)
        async with http.get(f"{base}/qr/{NAME}.png") as png:
            gone = png.status
        still = await wait_for(cdp, tab, lambda s: s["state"] == "expired", "still expired")
        assert fake.request_count(NAME, path=QR) == polls  # nothing upstream since the limit
        mark = len(cdp.events)
        await click(cdp, tab, "wachat-again")
        again = await wait_for(cdp, tab, is_qr, "a new QR after the click")
        restarted = bool(watch_tasks())
        restarts = [
            r["request"] for r in requests_sent(cdp, tab, mark) if r["request"]["method"] == "POST"
        ]
        polls_after = fake.request_count(NAME, path=QR)
    assert len(shown) == 2
    assert all(src.startswith(f"{base}/qr/{NAME}.png?v=") for src in shown)
    assert expired["hidden"]
    assert expired["src"] is None
    assert "expired" in expired["text"]
    assert expired["button"]
    assert not expired["disabled"]
    assert expired["label"] == "Show a new QR code"
    assert gone == 410
    assert still["hidden"]
    assert still["button"]
    assert [(r["url"], r["headers"].get("Wachat-Restart")) for r in restarts] == [
        (f"{base}/qr/{NAME}/events", "1")
    ]
    assert polls_after > polls  # the restart asked upstream again
    assert restarted
    assert not again["button"]
    assert again["src"].startswith(f"{base}/qr/{NAME}.png?v=")
    assert again["text"].startswith("Scan the QR code")


async def test_chromium_backs_off_while_the_client_is_closed(
    chromium_path: str, framework: str
) -> None:
    """The client closed under an open page: the stream ends, every reconnect is answered 503,
    and the page says it is reconnecting and waits a growing delay before each next try (at
    most one EventSource per wait it asked for, plus the browser's own first reconnect), not
    a tight loop; nothing reaches upstream."""
    async with FakeWachatServer(api_key=KEY, qr_rotation=None) as fake:
        fake.add_instance(NAME)
        client = WachatClient(api_key=KEY, base_url=fake.base_url)
        async with (
            serve(framework, client, fastapi=True, interval=1.0) as base,
            chromium(chromium_path) as cdp,
        ):
            tab = await open_tab(cdp, f"{base}/qr/{NAME}", init_script=RECORD_WAITS)
            await wait_for(cdp, tab, is_qr, "the QR shows")
            assert await evaluate(cdp, tab, "window.wachatWaits") == []
            mark = len(cdp.events)
            await client.aclose()
            sent = fake.request_count()

            async def three_waits() -> None:
                while len(await evaluate(cdp, tab, "window.wachatWaits") or []) < 3:
                    await asyncio.sleep(0.05)

            try:
                await asyncio.wait_for(three_waits(), 2 * LIMIT)
            except TimeoutError:
                raise AssertionError("never happened: three back-off waits") from None
            state = await wait_for(cdp, tab, lambda s: True, "the page's state")
            sources = [r for r in requests_sent(cdp, tab, mark) if r.get("type") == "EventSource"]
            probes = [r for r in requests_sent(cdp, tab, mark) if r.get("type") == "Fetch"]
            waits = await evaluate(cdp, tab, "window.wachatWaits")  # read after: it only grows
            refused = [
                e["params"]["response"]["status"]
                for e in cdp.events[mark:]
                if e.get("method") == "Network.responseReceived"
                and e.get("sessionId") == tab
                and e["params"]["response"]["url"].endswith("/events")
            ]
            assert not watch_tasks()
            assert fake.request_count() == sent  # a closed client asks upstream nothing
    assert state["state"] == "reconnecting"
    assert (state["hidden"], state["src"]) == (True, None)
    assert 2 <= len(sources) <= len(waits) + 1
    assert len(probes) <= len(waits)
    assert refused
    assert set(refused) == {503}
    for attempt, wait in enumerate(waits[:5]):  # doubling from 1 s, each jittered down to half
        full = RETRY_BASE_MS * 2**attempt
        assert full / 2 <= wait <= full, waits
