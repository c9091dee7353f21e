"""Headless Chromium follows the live QR page of wachat_async.web, on both frameworks.

The page is served by an aiohttp.web app and by a FastAPI app under uvicorn, against the fake
server. The test rotates the QR each time every tab shows the current one, so the image changes
at least twice, then links the phone; the status must read ``connected``. No browser request
carries the key, and the fake server's request log shows one upstream watch for three tabs.
Chromium is driven as in tests/test_browser.py (DevTools over a websocket, no extra package).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests._web import serve, until
from tests.test_browser import CDP, chromium, require_chromium
from wachat_async import WachatClient
from wachat_async.testing import FakeWachatServer

# timeout: Chromium's start and each wait have their own bounds (tests/_web.py's LIMIT,
# tests/test_browser.py's), which fail first, saying which.
pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

KEY = "wk_live_web_S3CRET_4242"
NAME = "t1_mq9r2jov_jakarta_store"
TABS = 3
STATE_SCRIPT = """(() => {
    const img = document.getElementById("wachat-qr");
    const status = document.getElementById("wachat-status");
    return {src: img.getAttribute("src"), loaded: img.complete ? img.naturalWidth : 0,
            status: status.textContent};
})()"""


@pytest.fixture(scope="module")
def chromium_path() -> str:
    return require_chromium()


async def open_tab(cdp: CDP, url: str) -> str:
    """A new tab on *url*, with network events on; returns its DevTools session id."""
    target = await cdp.call("Target.createTarget", {"url": "about:blank"})
    attached = await cdp.call(
        "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
    )
    session: str = attached["sessionId"]
    await cdp.call("Network.enable", session=session)
    await cdp.call("Page.enable", session=session)
    await cdp.call("Page.navigate", {"url": url}, session=session)
    return session


async def tab_state(cdp: CDP, session: str) -> dict[str, Any]:
    result = await cdp.call(
        "Runtime.evaluate", {"expression": STATE_SCRIPT, "returnByValue": True}, session=session
    )
    # Before the page has loaded, the script throws (no elements yet) and there is no value.
    value: dict[str, Any] = result["result"].get("value") or {}
    return {"src": None, "loaded": 0, "status": "", **value}


@pytest.mark.parametrize("framework", ["aiohttp", "starlette"], ids=["aiohttp", "fastapi"])
async def test_chromium_follows_the_live_qr_until_connected(
    chromium_path: str, framework: str
) -> None:
    """Three tabs see the QR change twice, then read `connected`; one watch; no key sent."""
    async with (
        FakeWachatServer(api_key=KEY, qr_rotation=None) as fake,
        WachatClient(api_key=KEY, base_url=fake.base_url) as client,  # real waits: 1 s polls
        serve(framework, client, fastapi=True, interval=1.0) as base,
        chromium(chromium_path) as cdp,
    ):
        fake.add_instance(NAME)
        page_url = f"{base}/qr/{NAME}"
        sessions = [await open_tab(cdp, page_url) for _ in range(TABS)]
        shown: list[set[str]] = [set() for _ in sessions]
        widths: set[int] = set()
        linked = False
        done = asyncio.Event()

        async def drive() -> None:
            nonlocal linked
            while True:
                states = [await tab_state(cdp, s) for s in sessions]
                for seen, state in zip(shown, states, strict=True):
                    if state["src"] and state["loaded"]:
                        seen.add(state["src"])
                        widths.add(state["loaded"])
                if all(state["status"] == "connected" for state in states):
                    done.set()
                    return
                current = {state["src"] for state in states}
                everyone_sees_it = len(current) == 1 and all(s["loaded"] for s in states)
                if everyone_sees_it and not linked:
                    if min(len(seen) for seen in shown) < 3:
                        fake.rotate_qr(NAME)
                    else:
                        fake.set_state(NAME, "open")
                        linked = True
                    # Wait for the next announcement before acting again.
                    before = current
                    await until_changed(before)
                await asyncio.sleep(0.02)

        async def until_changed(before: set[str | None]) -> None:
            while True:
                states = [await tab_state(cdp, s) for s in sessions]
                if {s["src"] for s in states} != before or any(
                    s["status"] == "connected" for s in states
                ):
                    return
                await asyncio.sleep(0.02)

        await asyncio.wait_for(drive(), 60)
        await until(done.is_set, "every tab reads connected")
        finals = [await tab_state(cdp, s) for s in sessions]
        sent = [
            e["params"]["request"]
            for e in cdp.events
            if e.get("method") == "Network.requestWillBeSent" and e.get("sessionId") in sessions
        ]
        qr_polls = fake.request_count(NAME, path="/instance/qr/image")
        state_polls = fake.request_count(NAME, path="/instance/state")
        browser_hits = [r for r in fake.requests if r.auth_via != "bearer"]

    # Every tab showed at least three different QR codes (two changes), then "connected".
    assert all(len(seen) >= 3 for seen in shown), shown
    assert all(src.startswith(f"{base}/qr/{NAME}.png?v=") for seen in shown for src in seen)
    assert len(widths) == 1
    assert all(state["status"] == "connected" for state in finals)
    # Nothing the browser sent carries the key, in the URL or in a header.
    urls = [request["url"] for request in sent]
    assert any(url.endswith("/events") for url in urls)
    assert any(".png?v=" in url for url in urls)
    for request in sent:
        assert KEY not in request["url"]
        assert "apiKey" not in request["url"]
        assert all(KEY not in str(value) for value in request.get("headers", {}).values())
    assert browser_hits == []  # the browser never talked to Wachat itself
    # One watch for three tabs: its rounds are state + QR, the last state said "open"; every
    # PNG the tabs loaded came from the watch, never from another upstream fetch.
    assert state_polls == qr_polls + 1
    assert qr_polls >= 3


@pytest.mark.parametrize("framework", ["aiohttp", "starlette"], ids=["aiohttp", "fastapi"])
async def test_chromium_follows_a_name_with_a_slash_and_unicode(
    chromium_path: str, framework: str
) -> None:
    """A name with ``/``, unicode and a space is one percent-encoded segment: the page's own
    relative URLs (events, then the announced PNG) resolve to it in a real browser."""
    from urllib.parse import quote

    name = "shop/\u00e9t\u00e9 1"
    segment = quote(name, safe="")
    async with (
        FakeWachatServer(api_key=KEY, qr_rotation=None) as fake,
        WachatClient(api_key=KEY, base_url=fake.base_url) as client,
        serve(framework, client, fastapi=True, interval=1.0) as base,
        chromium(chromium_path) as cdp,
    ):
        fake.add_instance(name)
        session = await open_tab(cdp, f"{base}/qr/{segment}")

        async def state() -> dict[str, Any]:
            return await tab_state(cdp, session)

        async def wait_for(check: Any, what: str) -> dict[str, Any]:
            async def poll() -> dict[str, Any]:
                while not check(current := await state()):
                    await asyncio.sleep(0.02)
                return current

            try:
                return await asyncio.wait_for(poll(), 30)
            except TimeoutError:
                raise AssertionError(f"never happened: {what}") from None

        shown = await wait_for(lambda s: s["src"] and s["loaded"], "the QR shows")
        fake.set_state(name, "open")
        await wait_for(lambda s: s["status"] == "connected", "the page reads connected")
        qr_fetches = [r.instance_name for r in fake.requests if r.path.endswith("/qr/image")]
    assert shown["src"].startswith(f"{base}/qr/{segment}.png?v=")  # resolved by the page
    assert set(qr_fetches) == {name}


PAGE_STATE = """(() => {
    const img = document.getElementById("wachat-qr");
    const status = document.getElementById("wachat-status");
    return {state: status.getAttribute("data-state"), text: status.textContent,
            hidden: img.hidden, src: img.getAttribute("src")};
})()"""


async def decoded(cdp: Any, session: str) -> list[str]:
    """The QR codes zxing-cpp reads in a screenshot of the tab (what a phone's camera sees)."""
    import base64
    import io

    import zxingcpp
    from PIL import Image

    shot = await cdp.call("Page.captureScreenshot", {"format": "png"}, session=session)
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"])))
    return [found.text for found in zxingcpp.read_barcodes(image)]


@pytest.mark.parametrize("framework", ["aiohttp", "starlette"], ids=["aiohttp", "fastapi"])
async def test_chromium_shows_outages_and_final_states_honestly(
    chromium_path: str, framework: str
) -> None:
    """An outage hides the QR (a screenshot decodes none) and says it is retrying, and the
    QR comes back; an image that fails to load is replaced by a message until the next one;
    after a deploy the page reconnects and shows the QR again; the server's final event
    and a refused reconnect (the session expired: 403) replace the QR with a message
    instead of leaving the old QR and "reconnecting..." forever."""
    from tests._web import deploy
    from wachat_async import RetryPolicy

    allowed = {"yes": True}
    async with (
        FakeWachatServer(api_key=KEY, qr_rotation=None) as fake,
        WachatClient(
            api_key=KEY, base_url=fake.base_url, retry=RetryPolicy(max_attempts=1)
        ) as client,
        serve(
            framework,
            client,
            fastapi=True,
            interval=1.0,
            max_backoff=1.0,
            authorize=lambda request, name: allowed["yes"],
        ) as base,
        chromium(chromium_path) as cdp,
    ):
        fake.add_instance(NAME)
        tab = await open_tab(cdp, f"{base}/qr/{NAME}")
        gone = await open_tab(cdp, f"{base}/qr/t1_nosuch00_store")

        async def wait_for(session: str, check: Any, what: str) -> dict[str, Any]:
            async def poll() -> dict[str, Any]:
                while True:
                    result = await cdp.call(
                        "Runtime.evaluate",
                        {"expression": PAGE_STATE, "returnByValue": True},
                        session=session,
                    )
                    current = result["result"].get("value")
                    if current and check(current):
                        return dict(current)
                    await asyncio.sleep(0.02)

            try:
                return await asyncio.wait_for(poll(), 30)
            except TimeoutError:
                raise AssertionError(f"never happened: {what}") from None

        shown = await wait_for(tab, lambda s: s["state"] == "qr" and not s["hidden"], "a QR")
        # Decoded before the outage is scripted (it would hide the QR), once it is painted.
        for _ in range(100):
            seen = await decoded(cdp, tab)
            if seen:
                break
            await asyncio.sleep(0.1)
        fake.script(NAME, [502, 502])
        down = await wait_for(tab, lambda s: s["state"] == "unavailable", "the outage shows")
        unseen = await decoded(cdp, tab)
        back = await wait_for(tab, lambda s: s["state"] == "qr", "the QR comes back")
        # The next image fails to load (the browser is told so by DevTools): no stale QR.
        await cdp.call("Fetch.enable", {"patterns": [{"urlPattern": "*.png*"}]}, session=tab)
        fake.rotate_qr(NAME)
        paused = await cdp.wait_event("Fetch.requestPaused", tab)
        await cdp.call(
            "Fetch.failRequest",
            {"requestId": paused["params"]["requestId"], "errorReason": "Failed"},
            session=tab,
        )
        broken = await wait_for(tab, lambda s: s["state"] == "broken", "a broken image shows")
        await cdp.call("Fetch.disable", session=tab)
        fake.rotate_qr(NAME)
        await wait_for(tab, lambda s: s["state"] == "qr", "the next QR loads")
        failed = await wait_for(gone, lambda s: s["state"] == "failed", "a final event")
        await deploy()  # a deploy: the stream ends, the page reconnects by itself
        await wait_for(tab, lambda s: s["state"] == "reconnecting", "the page reconnects")
        again = await wait_for(tab, lambda s: s["state"] == "qr", "the QR after reconnecting")
        # A proxy answers 502 while the app restarts: transient, the page keeps retrying.
        cdp.events[:] = [e for e in cdp.events if e.get("method") != "Fetch.requestPaused"]
        await cdp.call("Fetch.enable", {"patterns": [{"urlPattern": "*/events*"}]}, session=tab)
        await deploy()
        for _ in range(2):  # the EventSource's reconnect, then the page's probe
            paused = await cdp.wait_event("Fetch.requestPaused", tab)
            await cdp.call(
                "Fetch.fulfillRequest",
                {"requestId": paused["params"]["requestId"], "responseCode": 502},
                session=tab,
            )
            cdp.events.remove(paused)
        gateway = await wait_for(tab, lambda s: s["state"] == "reconnecting", "still retrying")
        await cdp.call("Fetch.disable", session=tab)
        await wait_for(tab, lambda s: s["state"] == "qr", "the QR after the proxy's 502")
        allowed["yes"] = False
        await deploy()  # a deploy: the page reconnects, and is refused
        refused = await wait_for(tab, lambda s: s["state"] == "refused", "the refusal shows")
    assert shown["hidden"] is False
    assert len(seen) == 1  # the screenshot of a shown QR decodes: the check below can fail
    assert down["hidden"] is True
    assert down["src"] is None
    assert unseen == []  # no stale QR a phone could scan
    assert "unavailable" in down["text"]
    assert "retrying" in down["text"]
    assert back["hidden"] is False
    assert not back["hidden"]
    assert broken["hidden"]
    assert broken["src"] is None
    assert "did not load" in broken["text"]
    assert not again["hidden"]
    assert failed["hidden"]
    assert failed["src"] is None
    assert failed["text"] == "error: no such instance"
    assert refused["hidden"]
    assert refused["src"] is None
    assert "refused" in refused["text"]
    assert (gateway["hidden"], gateway["src"]) == (True, None)


@pytest.mark.parametrize(
    ("example", "ready"),
    [("aiohttp_proxy.py", "Open http"), ("fastapi_proxy.py", "Uvicorn running")],
    ids=["aiohttp", "fastapi"],
)
async def test_chromium_comes_back_after_a_deploy_of_the_shipped_example(
    chromium_path: str, example: str, ready: str
) -> None:
    """The example as its docstring runs it; SIGTERM (a deploy) while the page is open: the
    process exits cleanly, and the page, reconnecting by itself, shows the next process's QR."""
    import signal

    from tests.conftest import EXAMPLES
    from tests.test_web_shutdown import _free_port, _start

    port = _free_port()
    args = [str(EXAMPLES / example), "--port", str(port)]
    old, _ = await _start(args, ready)
    try:
        async with chromium(chromium_path) as cdp:
            tab = await open_tab(cdp, f"http://127.0.0.1:{port}/qr/t1_demo0001_store")

            async def shown(what: str, not_src: str | None = None) -> dict[str, Any]:
                async def poll() -> dict[str, Any]:
                    while True:
                        state = await tab_state(cdp, tab)
                        if state["loaded"] and state["src"] and state["src"] != not_src:
                            return state
                        await asyncio.sleep(0.02)

                try:
                    return await asyncio.wait_for(poll(), 30)
                except TimeoutError:
                    raise AssertionError(f"never happened: {what}") from None

            first = await shown("the first process's QR")
            old.send_signal(signal.SIGTERM)
            old_status = await asyncio.wait_for(old.wait(), 30)
            new, _ = await _start(args, ready)
            try:
                second = await shown("the next process's QR", not_src=first["src"])
            finally:
                new.send_signal(signal.SIGTERM)
                await asyncio.wait_for(new.wait(), 30)
    finally:
        if old.returncode is None:
            old.kill()
            await old.wait()
    assert old_status in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once stopped
    assert second["status"].startswith("Scan the QR code")
