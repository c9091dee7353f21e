"""Show WhatsApp QR codes in a FastAPI page without giving the browser your Wachat API key.

The page uses ``<img src="/qr/NAME.png">``; that route fetches the PNG server-side with header
auth (``WachatClient.stream_qr_image``) and streams it through, so the key never reaches the
browser (compare ``?apiKey=`` in an ``<img>`` URL, which lands in history, logs and analytics).

* The app's lifespan owns one :class:`WachatClient` (one connection pool for all requests).
* ``Cache-Control: no-store`` on the image: a QR code is a short-lived login credential.
* API errors become sensible statuses: 404 stays 404, 400 stays 400, 409 stays 409, 502/504 and
  timeouts become 502/504, auth/subscription problems a bare 500 (details only in the log).
* If the browser disconnects, the upstream fetch is cancelled, whether we are still waiting for
  Wachat or already streaming (:class:`QRImageResponse` watches for ``http.disconnect``).

Put the QR route behind your own login: whoever can load ``/qr/NAME.png`` can link a phone to
that instance. ``Settings.instances`` limits the names served.

Run it from a clone, after ``pip install -e '.[examples]'`` (FastAPI, uvicorn and the fake
server)::

    python examples/fastapi_proxy.py                      # demo against the embedded fake server
    WACHAT_API_KEY=... python examples/fastapi_proxy.py t1_mq9r2jov_jakarta_store
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import html
import logging
import os
from collections.abc import AsyncIterator, Sequence
from urllib.parse import quote

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from wachat_async import (
    AuthenticationError,
    BadRequestError,
    GatewayTimeoutError,
    InstanceNotFoundError,
    QRNotSupportedError,
    RetryPolicy,
    SubscriptionRestrictedError,
    WachatClient,
    WachatError,
    WachatTimeoutError,
    qr_img_tag,
)

logger = logging.getLogger("wachat_proxy")

NO_STORE = {"Cache-Control": "no-store"}
DEMO_INSTANCE = "t1_demo0001_store"


@dataclasses.dataclass(frozen=True)
class Settings:
    """How the app reaches Wachat and which instances it serves.

    *api_key*/*base_url* default to ``WACHAT_API_KEY``/``WACHAT_BASE_URL`` (the client reads
    them); *timeout* and *retry* go to :class:`WachatClient` as they are. *instances* is the
    allow-list the page shows and the QR route serves (``None``: any name; only behind your own
    access control). *demo* starts the embedded fake server instead of talking to Wachat.
    """

    api_key: str | None = dataclasses.field(default=None, repr=False)
    base_url: str | None = None
    timeout: float | None = None
    retry: RetryPolicy | None = None
    instances: tuple[str, ...] | None = None
    demo: bool = False


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


class QRImageResponse(Response):
    """Streams one instance's QR PNG; the status is decided only once Wachat has answered.

    A plain ``StreamingResponse`` must commit to a status before the upstream call, and does
    not notice a disconnect while the endpoint is still awaiting Wachat. This response opens
    the upstream stream itself, inside a task group that also listens for ``http.disconnect``
    and cancels everything when it arrives.
    """

    media_type = "image/png"

    def __init__(self, client: WachatClient, instance_name: str) -> None:
        # No Response.__init__: it would render an empty body and announce Content-Length: 0.
        self.client = client
        self.instance_name = instance_name
        self.status_code = 200
        self.background = None
        self.init_headers({**NO_STORE, "X-Content-Type-Options": "nosniff"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:

            async def cancel_on_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                logger.info("browser left; cancelling QR fetch for %r", self.instance_name)
                tg.cancel_scope.cancel()

            tg.start_soon(cancel_on_disconnect)
            try:
                await self._respond(scope, receive, send)
            except WachatError as exc:  # before OSError: WachatTimeoutError is a TimeoutError
                failure = exc
            except OSError:
                pass  # ASGI >= 2.4 servers report a gone client by raising from send()
            except Exception as exc:
                failure = exc  # re-raised below, outside the task group (no ExceptionGroup)
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False
        try:
            async with self.client.stream_qr_image(self.instance_name) as stream:
                async for chunk in stream:
                    if not started:
                        # Headers go out with the first bytes: every failure before them
                        # still gets its own status.
                        started = True
                        await send(
                            {
                                "type": "http.response.start",
                                "status": 200,
                                "headers": self.raw_headers,
                            }
                        )
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (WachatError, ValueError) as exc:
            if started:
                # The status is out; failing the ASGI call makes the server drop the
                # connection, so the browser sees a truncated response, not a complete one.
                logger.warning("QR stream for %r failed mid-body: %s", self.instance_name, exc)
                raise
            status, text = error_status(exc)
            log = logger.error if status == 500 else logger.warning
            log("QR for %r failed: %s -> %d", self.instance_name, exc, status)
            await PlainTextResponse(text, status_code=status, headers=NO_STORE)(
                scope, receive, send
            )
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; its lifespan opens the :class:`WachatClient` and closes it on shutdown."""
    settings = Settings() if settings is None else settings
    allowed = None if settings.instances is None else frozenset(settings.instances)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            api_key: str | None = settings.api_key
            base_url: str | None = settings.base_url
            if settings.demo:
                from wachat_async.testing import FakeWachatServer

                fake = await stack.enter_async_context(FakeWachatServer())
                for name in settings.instances or ():
                    fake.add_instance(name)
                api_key, base_url = fake.api_key, fake.base_url
                logger.info("demo mode: QR codes come from the fake server at %s", base_url)
            app.state.client = await stack.enter_async_context(
                WachatClient(
                    api_key=api_key,
                    base_url=base_url,
                    timeout=settings.timeout,
                    retry=settings.retry,
                )
            )
            yield

    app = FastAPI(title="Wachat QR proxy", lifespan=lifespan)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        """A page with one ``<img src="/qr/NAME.png">`` per configured instance."""
        items = "\n".join(_figure(name) for name in sorted(allowed or ()))
        page = (
            "<!doctype html>\n<html><head><meta charset='utf-8'><title>Link WhatsApp</title>"
            f"</head><body><h1>Scan with WhatsApp</h1>\n{items}\n</body></html>"
        )
        return HTMLResponse(
            page,
            headers={
                **NO_STORE,
                "Content-Security-Policy": "default-src 'none'; img-src 'self'",
                "Referrer-Policy": "no-referrer",
            },
        )

    @app.get(
        "/qr/{name}.png",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "The QR code PNG."}},
    )
    async def qr_png(name: str, request: Request) -> Response:
        """Stream the instance's QR PNG, fetched server-side with header auth."""
        if allowed is not None and name not in allowed:
            return PlainTextResponse("No such WhatsApp instance.", 404, headers=NO_STORE)
        return QRImageResponse(request.app.state.client, name)

    return app


def _figure(name: str) -> str:
    img = qr_img_tag(f"/qr/{quote(name, safe='')}.png", alt=f"QR code for {name}")
    return f"<figure>{img}<figcaption>{html.escape(name)}</figcaption></figure>"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("instances", nargs="*", help="instance names to show")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        parser.exit(1, "This example runs under uvicorn: pip install -e '.[examples]'\n")
    demo = not os.environ.get("WACHAT_API_KEY")
    names = tuple(args.instances) or ((DEMO_INSTANCE,) if demo else ())
    if demo:
        print("WACHAT_API_KEY is not set: serving demo QR codes from the embedded fake server")
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(create_app(Settings(instances=names, demo=demo)), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
