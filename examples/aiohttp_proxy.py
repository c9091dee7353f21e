"""Show WhatsApp QR codes in a web page without giving the browser your Wachat API key.

An ``<img>`` cannot send an ``Authorization`` header, so the tempting fix is
``<img src="https://app.wachat.net/api/v1/instance/qr/image?instanceName=...&apiKey=SECRET">``,
which puts the key in browser history, logs and analytics. Instead, this aiohttp.web app serves
``<img src="/qr/NAME.png">`` from its own route, which fetches the PNG server-side with header
auth (``WachatClient.stream_qr_image``) and streams it through:

* ``Cache-Control: no-store``: a QR code is a short-lived login credential; no cache keeps it.
* API errors become sensible statuses: 404 stays 404, 400 stays 400, 409 stays 409, 502/504 and
  timeouts become 502/504, and auth/subscription problems become a bare 500 (details are logged
  server-side, never sent to the browser).
* When the browser goes away the upstream fetch is cancelled: run the app with
  ``handler_cancellation=True`` (as :func:`main` does) so aiohttp cancels the handler.

Put the QR route behind your own login: whoever can load ``/qr/NAME.png`` can link a phone to
that instance. Pass ``instances=`` to serve only the names you list.

Run it from a clone, after ``pip install -e '.[examples]'``::

    python examples/aiohttp_proxy.py                      # demo against the embedded fake server
    WACHAT_API_KEY=... python examples/aiohttp_proxy.py t1_mq9r2jov_jakarta_store

It listens on 127.0.0.1:8081 (``--host``, ``--port``; 8080 is the fake server's own default). A
port that is already taken is a one-line error and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import logging
import os
import socket
import sys
from collections.abc import Collection, Sequence
from errno import EADDRINUSE
from urllib.parse import quote

from aiohttp import web

from wachat_async import (
    AuthenticationError,
    BadRequestError,
    GatewayTimeoutError,
    InstanceNotFoundError,
    QRNotSupportedError,
    SubscriptionRestrictedError,
    WachatClient,
    WachatError,
    WachatTimeoutError,
    qr_img_tag,
)

logger = logging.getLogger("wachat_proxy")

CLIENT: web.AppKey[WachatClient] = web.AppKey("wachat_client", WachatClient)
INSTANCES: web.AppKey[frozenset[str] | None] = web.AppKey("wachat_instances")

NO_STORE = {"Cache-Control": "no-store"}
DEMO_INSTANCE = "t1_demo0001_store"
#: Not 8080, where ``wachat-qr fake-server`` and ``python -m wachat_async.testing`` listen.
DEFAULT_PORT = 8081


class CannotListenError(Exception):
    """The app could not bind its address (port taken, no permission, unknown host)."""


def error_status(exc: Exception) -> tuple[int, str]:
    """Map a client error to the status and the (detail-free) text the browser gets."""
    if isinstance(exc, InstanceNotFoundError):
        return 404, "No such WhatsApp instance."
    if isinstance(exc, (BadRequestError, ValueError)):
        return 400, "Invalid instance name."
    if isinstance(exc, QRNotSupportedError):
        return 409, "This instance has no QR code (only WhatsApp Baileys instances have one)."
    if isinstance(exc, (GatewayTimeoutError, WachatTimeoutError)):
        return 504, "The QR code service timed out. Try again."
    if isinstance(exc, (AuthenticationError, SubscriptionRestrictedError)):
        # Our configuration is wrong, not the browser's request: say nothing more.
        return 500, "Internal server error."
    # 502 upstream, undocumented statuses, transport failures, invalid images.
    return 502, "The QR code service failed. Try again."


async def qr_png(request: web.Request) -> web.StreamResponse:
    """``GET /qr/{name}.png``: stream the instance's QR PNG fetched with header auth."""
    name = request.match_info["name"]
    allowed = request.app[INSTANCES]
    if allowed is not None and name not in allowed:
        raise web.HTTPNotFound(text="No such WhatsApp instance.", headers=NO_STORE)
    client = request.app[CLIENT]
    response = web.StreamResponse(
        headers={
            "Content-Type": "image/png",
            "X-Content-Type-Options": "nosniff",
            **NO_STORE,
        }
    )
    try:
        async with client.stream_qr_image(name) as stream:
            async for chunk in stream:
                if not response.prepared:
                    # Headers go out only with the first bytes, so every failure before them
                    # still gets its own status.
                    await response.prepare(request)
                await response.write(chunk)
    except (WachatError, ValueError) as exc:
        if response.prepared:
            # Part of the PNG is already out: the status cannot change. Drop the connection so
            # the browser sees a truncated response instead of a complete-looking broken image.
            logger.warning("QR stream for %r failed mid-body: %s", name, type(exc).__name__)
            if request.transport is not None:
                request.transport.close()
            return response
        status, text = error_status(exc)
        log = logger.error if status == 500 else logger.warning
        log("QR for %r failed: %s -> %d", name, exc, status)
        return web.Response(status=status, text=text, headers=NO_STORE)
    except ConnectionError:
        # The browser went away while we were writing; aiohttp handles the closed socket.
        return response
    if not response.prepared:  # pragma: no cover - the client never yields an empty PNG
        await response.prepare(request)
    return response


async def index(request: web.Request) -> web.Response:
    """``GET /``: a page with one ``<img src="/qr/NAME.png">`` per configured instance."""
    items = "\n".join(_figure(name) for name in sorted(request.app[INSTANCES] or ()))
    page = (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>Link WhatsApp</title></head>"
        f"<body><h1>Scan with WhatsApp</h1>\n{items}\n</body></html>"
    )
    return web.Response(
        text=page,
        content_type="text/html",
        headers={
            **NO_STORE,
            "Content-Security-Policy": "default-src 'none'; img-src 'self'",
            "Referrer-Policy": "no-referrer",
        },
    )


def _figure(name: str) -> str:
    src = f"/qr/{quote(name, safe='')}.png"
    caption = html.escape(name, quote=True)
    img = qr_img_tag(src, alt=f"QR code for {name}")
    return f"<figure>{img}<figcaption>{caption}</figcaption></figure>"


def create_app(
    client: WachatClient, *, instances: Collection[str] | None = None
) -> web.Application:
    """Build the app around *client*, which it borrows (the caller opens and closes it).

    *instances*: the names the page shows and the QR route serves; any other name is a 404 that
    never reaches Wachat. ``None`` serves any name (only do that behind your own access control).
    """
    app = web.Application()
    app[CLIENT] = client
    app[INSTANCES] = None if instances is None else frozenset(instances)
    app.router.add_get("/", index)
    app.router.add_get("/qr/{name}.png", qr_png)
    return app


def _listen_error(host: str, port: int, exc: OSError) -> str:
    """One line saying why *host*:*port* cannot be bound (asyncio's text repeats the address)."""
    if isinstance(exc, socket.gaierror) or not exc.errno:
        reason = exc.strerror or str(exc) or type(exc).__name__
    else:
        reason = os.strerror(exc.errno)
    hint = " (another program uses it: choose a port with --port)"
    return f"cannot listen on {host}:{port}: {reason}" + (hint if exc.errno == EADDRINUSE else "")


async def serve(host: str, port: int, names: Sequence[str]) -> None:
    """Run the app until cancelled, against Wachat or (without WACHAT_API_KEY) the fake server."""
    async with contextlib.AsyncExitStack() as stack:
        if os.environ.get("WACHAT_API_KEY"):
            client = await stack.enter_async_context(WachatClient())
        else:
            from wachat_async.testing import FakeWachatServer

            fake = await stack.enter_async_context(FakeWachatServer())
            names = names or [DEMO_INSTANCE]
            for name in names:
                fake.add_instance(name)
            client = await stack.enter_async_context(
                WachatClient(api_key=fake.api_key, base_url=fake.base_url)
            )
            print(f"WACHAT_API_KEY is not set: serving demo QR codes from {fake.base_url}")
        runner = web.AppRunner(create_app(client, instances=names), handler_cancellation=True)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise CannotListenError(_listen_error(host, port, exc)) from exc
        bound_host, bound_port = runner.addresses[0][:2]
        if ":" in bound_host:
            bound_host = f"[{bound_host}]"
        print(f"Open http://{bound_host}:{bound_port}/ (Ctrl-C to stop)", flush=True)
        await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("instances", nargs="*", help="instance names to show")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="default: %(default)s")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        asyncio.run(serve(args.host, args.port, args.instances))
    except KeyboardInterrupt:
        pass
    except CannotListenError as exc:
        print(f"aiohttp_proxy.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
