"""The live QR page: one ``<img id="wachat-qr">`` that follows the event stream and one
``<p id="wachat-status">`` that reads ``connected`` once the phone is linked.

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
from urllib.parse import quote

__all__ = ["PAGE_HEADERS", "page_html"]

SCRIPT: Final = """
(function () {
  "use strict";
  var img = document.getElementById("wachat-qr");
  var status = document.getElementById("wachat-status");
  var source = new EventSource(img.getAttribute("data-events"));
  function say(text) { status.textContent = text; }
  source.addEventListener("qr", function (e) {
    img.src = JSON.parse(e.data).src;
    img.hidden = false;
    say("Scan the QR code with WhatsApp (Linked devices)");
  });
  source.addEventListener("connected", function () {
    source.close();
    img.hidden = true;
    img.removeAttribute("src");
    say("connected");
  });
  source.addEventListener("error", function (e) {
    if (typeof e.data === "string") {  /* our own error event: final */
      source.close();
      img.hidden = true;
      say("error: " + JSON.parse(e.data).error);
    } else if (source.readyState !== EventSource.CLOSED) {
      say("reconnecting\\u2026");  /* the browser retries by itself */
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
    segment = "./" + quote(name, safe="")  # "./": a name like "a:b" is not a URL scheme
    title = html.escape(name, quote=True)
    events = html.escape(f"{segment}/events", quote=True)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>Link WhatsApp: {title}</title><style>{STYLE}</style></head>\n"
        f"<body><h1>Link WhatsApp</h1><p>{title}</p>\n"
        f'<img id="wachat-qr" alt="WhatsApp QR code" width="264" height="264" hidden '
        f'data-events="{events}">\n'
        '<p id="wachat-status" role="status">Waiting for the QR code\u2026</p>\n'
        f"<script>{SCRIPT}</script>\n"
        "</body></html>\n"
    ).encode()
