"""Show live WhatsApp QR codes in a FastAPI app without giving the browser your Wachat API key.

The app includes :func:`wachat_async.web.fastapi.qr_router`: ``/qr/NAME.png`` (the PNG, fetched
server-side with header auth), ``/qr/NAME/events`` (server-sent events as the QR rotates, then
``connected``) and ``/qr/NAME`` (a page that follows them). One upstream watch per instance,
however many tabs are open; a tab that closes stops its share at once. An ``APIRouter``: the
app's ``dependencies=`` (your login) run for these routes too, and they are in ``/docs``.

* The app's lifespan owns one :class:`WachatClient` (one connection pool for all requests).
* ``authorize`` is required: whoever can load these routes can link a phone to the instance.
  It is a FastAPI dependency; here the allow-list ``Settings.instances``; in your app, check
  that the session's user owns the instance (see :func:`may_see`).
* Ctrl-C or SIGTERM stops uvicorn at once, open pages or not: their streams end cleanly and
  they reconnect to the next process.

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

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from wachat_async import RetryPolicy, WachatClient, qr_img_tag
from wachat_async.web import route_path
from wachat_async.web.fastapi import qr_router

logger = logging.getLogger("wachat_proxy")

DEMO_INSTANCE = "t1_demo0001_store"


@dataclasses.dataclass(frozen=True)
class Settings:
    """How the app reaches Wachat and which instances it serves.

    *api_key*/*base_url* default to ``WACHAT_API_KEY``/``WACHAT_BASE_URL`` (the client reads
    them); *timeout* and *retry* go to :class:`WachatClient` as they are. *instances* is the
    allow-list the page shows and the QR routes serve (``None``: any name; only behind your own
    access control). *demo* starts the embedded fake server instead of talking to Wachat.
    """

    api_key: str | None = dataclasses.field(default=None, repr=False)
    base_url: str | None = None
    timeout: float | None = None
    retry: RetryPolicy | None = None
    instances: tuple[str, ...] | None = None
    demo: bool = False


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; its lifespan opens the :class:`WachatClient` and closes it on shutdown."""
    settings = Settings() if settings is None else settings
    allowed = None if settings.instances is None else frozenset(settings.instances)

    def may_see(instance_name: str) -> bool:
        """The app's own rule, a dependency: an allow-list here; in a real app, e.g.
        ``instance_name in user.instances`` with ``user = Depends(current_user)``."""
        return allowed is None or instance_name in allowed

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            api_key, base_url = settings.api_key, settings.base_url
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

    def client(request: Request) -> WachatClient:
        wachat: WachatClient = request.app.state.client  # opened by the lifespan
        return wachat

    app = FastAPI(title="Wachat QR proxy", lifespan=lifespan)
    app.include_router(qr_router(client, authorize=may_see), prefix="/qr", tags=["QR"])

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        """Per instance, its QR (a key-less ``<img>``) and a link to its live page."""
        items = "\n".join(_figure(name) for name in sorted(allowed or ()))
        page = (
            "<!doctype html>\n<html><head><meta charset='utf-8'><title>Link WhatsApp</title>"
            f"</head><body><h1>Scan with WhatsApp</h1>\n{items}\n</body></html>"
        )
        return HTMLResponse(
            page,
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": "default-src 'none'; img-src 'self'",
                "Referrer-Policy": "no-referrer",
            },
        )

    return app


def _figure(name: str) -> str:
    path = route_path(name)  # the page; a trailing ".png" of a name is quoted (%2E)
    img = qr_img_tag(route_path(name, "png"), alt=f"QR code for {name}")
    caption = f'<a href="{html.escape(path)}">{html.escape(name)}</a> (live page)'
    return f"<figure>{img}<figcaption>{caption}</figcaption></figure>"


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
