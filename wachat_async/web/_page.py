"""The live QR page: one ``<img id="wachat-qr">`` that follows the event stream, one
``<p id="wachat-status">`` that reads ``connected`` once the phone is linked, and one
``<button id="wachat-again">`` ("Show a new QR code") shown once the watch has expired.

Self-contained: one inline script and one inline style, allowed by their hashes in the
``Content-Security-Policy`` (no ``unsafe-inline``, nothing loaded from elsewhere). The page
holds no API key and loads only same-origin, key-less URLs (the event stream and the PNG
route), relative to its own address, so it works under any mount point.
"""

from __future__ import annotations

import base64
import hashlib
import html
from typing import Final

from ._paths import segment

__all__ = ["PAGE_HEADERS", "page_html"]

SCRIPT: Final = """
(function () {
  "use strict";
  var img = document.getElementById("wachat-qr");
  var status = document.getElementById("wachat-status");
  var again = document.getElementById("wachat-again");
  var events = img.getAttribute("data-events"), source, failures = 0;
  function show(state, text) {  /* the QR shows only while it is current (state "qr") */
    status.setAttribute("data-state", state);
    status.textContent = text;
    again.hidden = state !== "expired";
    if (state !== "qr") img.removeAttribute("src");  /* no stale QR that a phone could scan */
    img.hidden = !img.getAttribute("src");
  }
  function stop(state, text) {  /* final: no QR, no more events */
    if (source) source.close();
    show(state, text);
  }
  function probe() {  /* why it closed: 401/403/404-type refusals are final; else retry */
    var ctl = new AbortController();
    fetch(events, {signal: ctl.signal, cache: "no-store"}).then(function (r) {
      ctl.abort();
      if (r.status >= 400 && r.status < 500 && r.status !== 408 && r.status !== 429) {
        stop("refused", "Live updates stopped: the server refused them. Reload the page to retry.");
      } else {
        retry();
      }
    }, retry);
  }
  function retry() {  /* gateway error or network failure: back off, capped at 30 s */
    var wait = Math.min(30000, 1000 * Math.pow(2, failures++)) * (0.5 + Math.random() / 2);
    show("reconnecting", "reconnecting\u2026");
    setTimeout(open, wait);
  }
  function open() {
    source = new EventSource(events);
    source.addEventListener("open", function () { failures = 0; });
    source.addEventListener("qr", function (e) {
      img.src = new URL(JSON.parse(e.data).src, source.url).href;
      show("qr", "Scan the QR code with WhatsApp (Linked devices)");
    });
    source.addEventListener("unavailable", function (e) {
      var d = JSON.parse(e.data);
      var when = d.retry_in === null ? "" : " in " + Math.ceil(d.retry_in) + " s";
      var text = "QR code unavailable (" + d.error + "); retrying" + when + "\u2026";
      show("unavailable", text);
    });
    source.addEventListener("expired", function (e) {  /* the watch stopped: no QR to scan */
      var d = JSON.parse(e.data);
      show("expired", "This QR code expired: the phone was not linked after " + d.qrs_shown +
        " QR code(s).");
    });
    source.addEventListener("connected", function () {
      stop("connected", "connected");
    });
    source.addEventListener("failed", function (e) {
      stop("failed", "error: " + JSON.parse(e.data).error);
    });
    source.addEventListener("error", function () {  /* EventSource's own: not an event of ours */
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        probe();
      } else {
        show("reconnecting", "reconnecting\u2026");  /* the browser retries by itself */
      }
    });
  }
  function refused(text) {
    again.disabled = false;
    if (status.getAttribute("data-state") === "expired") {
      show("expired", "A new QR code could not be requested (" + text + "); try again.");
    }
  }
  again.addEventListener("click", function () {  /* one watch for every viewer: all see it */
    again.disabled = true;
    fetch(events, {method: "POST", headers: {"Wachat-Restart": "1"}, cache: "no-store"})
      .then(function (r) {
        if (!r.ok) return refused("HTTP " + r.status);
        again.disabled = false;
        if (status.getAttribute("data-state") === "expired") {
          show("waiting", "Waiting for the QR code\u2026");
        }
        if (source.readyState === EventSource.CLOSED) open();
      }, function () { refused("network error"); });
  });
  open();
  img.addEventListener("error", function () {
    if (img.getAttribute("src")) {
      show("broken", "The QR code image did not load; waiting for the next one\u2026");
    }
  });
})();
"""

STYLE: Final = (
    "body{font-family:system-ui,sans-serif;text-align:center;margin:2em}"
    "img{image-rendering:pixelated;width:264px;height:264px}"
)


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


PAGE_HEADERS: Final = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_csp_hash(SCRIPT)}; style-src {_csp_hash(STYLE)}; "
        "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def page_html(name: str) -> bytes:
    """The page for *name*, served at ``{prefix}/{name}`` (its URLs are relative to that)."""
    title = html.escape(name, quote=True)  # "./": a name like "a:b" is not a URL scheme
    events = html.escape(f"./{segment(name)}/events", quote=True)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>Link WhatsApp: {title}</title><style>{STYLE}</style></head>\n"
        f"<body><h1>Link WhatsApp</h1><p>{title}</p>\n"
        f'<img id="wachat-qr" alt="WhatsApp QR code" width="264" height="264" hidden '
        f'data-events="{events}">\n'
        '<p id="wachat-status" role="status" data-state="waiting">'
        "Waiting for the QR code\u2026</p>\n"
        '<button id="wachat-again" type="button" hidden>Show a new QR code</button>\n'
        f"<script>{SCRIPT}</script>\n"
        "</body></html>\n"
    ).encode()
