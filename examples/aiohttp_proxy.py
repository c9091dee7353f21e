"""Show live WhatsApp QR codes in an aiohttp.web app without giving the browser your API key.

An ``<img>`` cannot send an ``Authorization`` header, so the tempting fix is
``<img src="https://app.wachat.net/api/v1/instance/qr/image?instanceName=...&apiKey=SECRET">``,
which puts the key in browser history, logs and analytics. Instead this app mounts
:func:`wachat_async.web.aiohttp.qr_routes`, which fetches server-side with header auth:

* ``/qr/NAME.png``: the PNG (``ETag``, ``no-store``, JSON errors, never a 500);
* ``/qr/NAME/events``: server-sent events as the QR rotates, then ``connected``;
* ``/qr/NAME``: a page that follows them (one upstream watch per instance, however many tabs).

Whoever can load these routes can link a phone to the instance, so ``authorize`` is required.
Here it is an allow-list (``instances=``); in your app, check that the session's user owns the
instance (see :func:`may_see`).

Run it from a clone, after ``pip install -e '.[examples]'``::

    python examples/aiohttp_proxy.py                      # demo against the embedded fake server
    WACHAT_API_KEY=... python examples/aiohttp_proxy.py t1_mq9r2jov_jakarta_store

It listens on 127.0.0.1:8081 (``--host``, ``--port``; 8080 is the fake server's own default). A
port that is already taken is a one-line error and exit status 1. Ctrl-C or SIGTERM stops it at
once: open QR pages see their event stream end cleanly and reconnect to the next process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import logging
import os
import signal
import socket
import sys
from collections.abc import Collection, Sequence
from errno import EADDRINUSE

from aiohttp import web

from wachat_async import WachatClient, qr_img_tag
from wachat_async.web import end_event_streams, route_path
from wachat_async.web.aiohttp import qr_routes

INSTANCES: web.AppKey[frozenset[str] | None] = web.AppKey("wachat_instances")

DEMO_INSTANCE = "t1_demo0001_store"
#: Not 8080, where ``wachat-qr fake-server`` and ``python -m wachat_async.testing`` listen.
DEFAULT_PORT = 8081


class CannotListenError(Exception):
    """The app could not bind its address (port taken, no permission, unknown host)."""


def may_see(request: web.Request, instance_name: str) -> bool:
    """The app's own rule: here an allow-list; in a real app, "the session's user owns it"::

    session = await aiohttp_session.get_session(request)      # an async rule works too
    return instance_name in await owned_instances(session.get("user_id"))
    """
    allowed = request.app[INSTANCES]
    return allowed is None or instance_name in allowed


async def index(request: web.Request) -> web.Response:
    """``GET /``: per instance, its QR (a key-less ``<img>``) and a link to its live page."""
    items = "\n".join(_figure(name) for name in sorted(request.app[INSTANCES] or ()))
    page = (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>Link WhatsApp</title></head>"
        f"<body><h1>Scan with WhatsApp</h1>\n{items}\n</body></html>"
    )
    return web.Response(
        text=page,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; img-src 'self'",
            "Referrer-Policy": "no-referrer",
        },
    )


def _figure(name: str) -> str:
    path = route_path(name)  # the page; a trailing ".png" of a name is quoted (%2E)
    img = qr_img_tag(route_path(name, "png"), alt=f"QR code for {name}")
    caption = f'<a href="{html.escape(path)}">{html.escape(name)}</a> (live page)'
    return f"<figure>{img}<figcaption>{caption}</figcaption></figure>"


def create_app(
    client: WachatClient, *, instances: Collection[str] | None = None
) -> web.Application:
    """Build the app around *client*, which it borrows (the caller opens and closes it).

    *instances*: the names the page shows and the QR routes serve; any other name is a 403
    that never reaches Wachat. ``None`` serves any name (only behind your own access control).
    """
    app = web.Application()
    app[INSTANCES] = None if instances is None else frozenset(instances)
    app.router.add_get("/", index)
    app.add_routes(qr_routes(client, prefix="/qr", authorize=may_see))
    app.on_shutdown.append(end_event_streams)  # open QR pages must not hold up a shutdown
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
        stop = asyncio.Event()  # SIGTERM (a deploy) stops as Ctrl-C does; the streams end first
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()


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
