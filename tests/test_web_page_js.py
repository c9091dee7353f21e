"""The live page's script under Node, with a fake DOM, EventSource, fetch and clock: what it
does over minutes of simulated time (a browser test cannot move the clock on EventSource's own
reconnects; this one drives every timer).

* a closed client (every reconnect answered 503): the page backs off, no tight reconnect loop;
* ``expired``: the QR is hidden, the button shows; a click POSTs the restart with its header.

Outside CI a missing Node.js skips these tests; with ``CI=true`` it fails them (``.ci/run``
installs Debian's ``nodejs`` package, which provides ``node``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from wachat_async.web._page import SCRIPT

HARNESS = r"""
const scenario = process.argv[1];
let now = 0, timers = [], seq = 0, opened = [], fetched = [];
function el() {
  const attrs = {}, handlers = {};
  return {hidden: false, textContent: "", className: "", disabled: false,
    set src(v) { attrs.src = String(v); }, get src() { return attrs.src || ""; },
    setAttribute(k, v) { attrs[k] = String(v); },
    getAttribute(k) { return k in attrs ? attrs[k] : null; },
    removeAttribute(k) { delete attrs[k]; },
    addEventListener(k, f) { (handlers[k] = handlers[k] || []).push(f); },
    fire(k, e) { (handlers[k] || []).forEach(f => f(e || {})); }};
}
const elements = {"wachat-qr": el(), "wachat-status": el(), "wachat-again": el()};
elements["wachat-qr"].setAttribute("data-events", "./NAME/events");
global.document = {getElementById: id => elements[id]};
global.setTimeout = (f, ms) => timers.push({at: now + ms, f, n: seq++});
global.AbortController = class { constructor() { this.signal = {}; } abort() {} };
class FakeSource {
  constructor(url) {
    this.url = "http://h/qr/" + url; this.readyState = 0; this.h = {}; opened.push(now);
    source = this; setTimeout(() => this.connect(), 0);
  }
  addEventListener(k, f) { (this.h[k] = this.h[k] || []).push(f); }
  fire(k, e) { (this.h[k] || []).forEach(f => f(e || {})); }
  close() { this.readyState = 2; }
  connect() {
    if (scenario === "closed") { this.readyState = 2; this.fire("error"); return; }
    this.readyState = 1; this.fire("open");
    this.fire("qr", {data: JSON.stringify({src: "../NAME.png?v=1", sha256: "1"})});
    if (scenario === "outage") {
      const down = {instance: "NAME", error: "down", retry_in: 4};
      this.fire("unavailable", {data: JSON.stringify(down)});
      return;
    }
    if (scenario === "blip") { this.readyState = 0; this.fire("error"); return; }
    this.fire("expired", {data: JSON.stringify({instance: "NAME", qrs_shown: 6, elapsed: 120})});
  }
}
FakeSource.CLOSED = 2;
let source;
global.EventSource = FakeSource;
global.fetch = (url, opts) => { fetched.push({at: now, url, opts: opts || {}});
  return Promise.resolve({status: scenario === "closed" ? 503 : 204, ok: scenario !== "closed"}); };
async function settle() { for (let i = 0; i < 20; i++) await Promise.resolve(); }
async function runFor(ms) {
  const end = now + ms;
  for (;;) {
    await settle();
    timers.sort((a, b) => a.at - b.at || a.n - b.n);
    if (!timers.length || timers[0].at > end) break;
    const t = timers.shift(); now = Math.max(now, t.at); t.f();
  }
  now = end;
}
(async () => {
  eval(process.argv[2]);
  await runFor(600000);
  const out = {opened: opened.length, fetched: fetched.length,
    state: elements["wachat-status"].getAttribute("data-state"),
    button: !elements["wachat-again"].hidden, qr: elements["wachat-qr"].getAttribute("src"),
    hidden: elements["wachat-qr"].hidden, text: elements["wachat-status"].textContent};
  if (scenario === "expired") {
    elements["wachat-again"].fire("click");
    await runFor(1000);
    out.post = fetched.map(f => [f.opts.method, f.opts.headers]);
    out.after = elements["wachat-status"].getAttribute("data-state");
    out.buttonAfter = !elements["wachat-again"].hidden;
  }
  console.log(JSON.stringify(out));
})();
"""


def find_node() -> str | None:
    """$NODE, else ``node`` on PATH, else Debian's /usr/bin/node (the ``nodejs`` package)."""
    for candidate in (os.environ.get("NODE"), shutil.which("node"), "/usr/bin/node"):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_node() -> str:
    """The Node.js to use; skip without one, except in CI (CI=true), where that is a failure."""
    node = find_node()
    if node is None:
        message = "no Node.js found (install Debian's 'nodejs' package or set $NODE)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true, so this is a failure, not a skip")
        pytest.skip(message)
    return node


def run_page(scenario: str) -> dict[str, object]:
    node = require_node()
    done = subprocess.run(  # noqa: S603 - our own script, no shell
        [node, "-e", HARNESS, "--", scenario, SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_closed_client_is_retried_with_a_growing_wait_not_in_a_loop() -> None:
    """Every reconnect answered 503 for ten simulated minutes: the page tries again with a
    doubling wait capped at 30 s (jittered), so a few dozen attempts, not hundreds (the
    browser's own `retry:` of 1-4 s would make 150 to 600), and it says it is reconnecting."""
    result = run_page("closed")
    assert result["state"] == "reconnecting"
    assert isinstance(result["opened"], int)
    assert 10 <= result["opened"] <= 45, result
    assert result["fetched"] == result["opened"]  # one probe per refused reconnect


def test_expired_hides_the_qr_and_the_button_asks_for_a_restart() -> None:
    """`expired`: no QR, the button shows; a click POSTs with the Wachat-Restart header and the
    page waits for the next QR (the stream stays open: no reconnect)."""
    result = run_page("expired")
    assert result["state"] == "expired"
    assert result["button"] is True
    assert result["qr"] is None
    assert result["post"] == [["POST", {"Wachat-Restart": "1"}]]
    assert result["after"] == "waiting"
    assert result["buttonAfter"] is False
    assert result["opened"] == 1


@pytest.mark.parametrize(
    ("scenario", "state", "words"),
    [("outage", "unavailable", "retrying in 4 s"), ("blip", "reconnecting", "reconnecting")],
)
def test_a_qr_that_is_not_current_is_not_shown(scenario: str, state: str, words: str) -> None:
    """While the QR is not current (polls fail, the stream reconnects) the page shows no QR a
    phone could scan (no dimmed one): the image is hidden and its `src` removed; the text says
    why."""
    result = run_page(scenario)
    assert (result["state"], result["hidden"], result["qr"]) == (state, True, None)
    assert isinstance(result["text"], str)
    assert words in result["text"]


def test_missing_node_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "find_node", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"no Node\.js found"):
        require_node()


def test_missing_node_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CI=true a missing Node.js is a failure, never a silent skip."""
    monkeypatch.setattr(sys.modules[__name__], "find_node", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_node()
