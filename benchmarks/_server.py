"""Loopback benchmark server: a minimal stand-in for ``GET /api/v1/instance/qr/image``.

It is deliberately *not* the project's ``FakeWachatServer``: the throughput benchmark wants the
cheapest possible server (one fixed PNG, no per-request work) so that the numbers measure the
clients, not the server. It runs in its own process (see :class:`ServerProcess`) so the
client's ``time.process_time()`` only counts client work.

Endpoints:

* ``GET /api/v1/instance/qr/image?instanceName=...`` with ``Authorization: Bearer <key>``:
  200 + a fixed, real QR PNG (made with segno) in ``ok`` mode, 502 in ``storm`` mode,
  401 on a wrong/missing key, 400 without ``instanceName``. Every request is counted.
* ``GET /_stats``: ``{"requests": <count>, "mode": "ok"|"storm"}``.
* ``POST /_reset``: zero the counter. ``POST /_mode?mode=ok|storm``: switch mode.

Run standalone: ``python benchmarks/_server.py --port 8080 --api-key KEY [--mode storm]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import aiohttp
import segno
from aiohttp import web

QR_PATH = "/api/v1/instance/qr/image"
BENCH_API_KEY = "bench-key-not-a-secret"  # loopback only; not a real credential
MODES = ("ok", "storm")


def whatsapp_like_payload(seed: str = "bench") -> str:
    """A QR payload shaped like WhatsApp Web's (``2@ref,noise,identity,adv``, ~225 chars)."""

    def b64(label: str) -> str:
        return base64.b64encode(hashlib.sha256(f"{seed}:{label}".encode()).digest()).decode()

    ref = base64.b64encode(hashlib.sha512(seed.encode()).digest()).decode()[:88]
    return f"2@{ref},{b64('noise')},{b64('identity')},{b64('adv')}"


def make_png(payload: str | None = None) -> bytes:
    """A real, scannable QR PNG (version 9, 366x366 px, about 1 KB), like the API serves."""
    buf = io.BytesIO()
    segno.make(payload or whatsapp_like_payload(), error="l").save(
        buf, kind="png", scale=6, border=4
    )
    return buf.getvalue()


STATS_KEY = web.AppKey("stats", dict)


def make_app(
    *, api_key: str = BENCH_API_KEY, mode: str = "ok", png: bytes | None = None
) -> web.Application:
    """Build the benchmark application (usable in-process by tests, or in a child process)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    body = png if png is not None else make_png()
    expected_auth = f"Bearer {api_key}"
    stats: dict[str, object] = {"requests": 0, "mode": mode}
    error_body = json.dumps({"error": "Failed to fetch or decode the QR code image."}).encode()

    async def qr_image(request: web.Request) -> web.Response:
        stats["requests"] = int(stats["requests"]) + 1  # type: ignore[call-overload]
        if request.headers.get("Authorization") != expected_auth:
            return web.Response(
                status=401, body=b'{"error":"Unauthorized"}', content_type="application/json"
            )
        if not request.query.get("instanceName"):
            return web.Response(
                status=400,
                body=b'{"error":"instanceName is required"}',
                content_type="application/json",
            )
        if stats["mode"] == "storm":
            return web.Response(status=502, body=error_body, content_type="application/json")
        return web.Response(body=body, content_type="image/png")

    async def get_stats(_request: web.Request) -> web.Response:
        return web.json_response(stats)

    async def reset(_request: web.Request) -> web.Response:
        stats["requests"] = 0
        return web.json_response(stats)

    async def set_mode(request: web.Request) -> web.Response:
        new_mode = request.query.get("mode", "")
        if new_mode not in MODES:
            return web.json_response({"error": f"mode must be one of {MODES}"}, status=400)
        stats["mode"] = new_mode
        return web.json_response(stats)

    app = web.Application()
    app[STATS_KEY] = stats
    app.router.add_get(QR_PATH, qr_image)
    app.router.add_get("/_stats", get_stats)
    app.router.add_post("/_reset", reset)
    app.router.add_post("/_mode", set_mode)
    return app


async def start_in_process(
    *, api_key: str = BENCH_API_KEY, mode: str = "ok"
) -> tuple[web.AppRunner, str]:
    """Start the app on 127.0.0.1 (random port) in the running loop; return (runner, root URL)."""
    runner = web.AppRunner(
        make_app(api_key=api_key, mode=mode), access_log=None, keepalive_timeout=600
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def _serve(port: int, api_key: str, mode: str) -> None:
    runner = web.AppRunner(
        make_app(api_key=api_key, mode=mode),
        access_log=None,
        keepalive_timeout=600,
        handle_signals=False,
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=2048)
    await site.start()
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGINT/SIGTERM; print ``PORT <n>`` once listening."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=BENCH_API_KEY)
    parser.add_argument("--mode", choices=MODES, default="ok")
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    args = parser.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(_serve(args.port, args.api_key, args.mode))
    return 0


class ServerProcess:
    """Run this module's server in a child process; use as a (sync) context manager.

    ``cpu`` pins the child to one CPU (Linux), so client and server do not share a core.
    """

    def __init__(
        self, *, api_key: str = BENCH_API_KEY, mode: str = "ok", cpu: int | None = None
    ) -> None:
        self.api_key = api_key
        self._argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--api-key",
            api_key,
            "--mode",
            mode,
        ]
        if cpu is not None:
            self._argv += ["--cpu", str(cpu)]
        self._proc: subprocess.Popen[str] | None = None
        self.root_url = ""

    @property
    def base_url(self) -> str:
        """The API base URL (what ``WachatClient(base_url=...)`` expects)."""
        return f"{self.root_url}/api/v1"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> ServerProcess:
        self._proc = subprocess.Popen(self._argv, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.startswith("PORT "):
            self._proc.kill()
            raise RuntimeError(f"benchmark server failed to start (got {line!r})")
        self.root_url = f"http://127.0.0.1:{int(line.split()[1])}"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()


async def control(root_url: str, action: str, **query: str) -> dict[str, object]:
    """Call a control endpoint (``_stats``, ``_reset``, ``_mode``) outside any timed section.

    Async (its own short-lived session) so it also works when the server runs in the same loop.
    """
    method = "GET" if action == "_stats" else "POST"
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{root_url}/{action}", params=query) as resp,
    ):
        resp.raise_for_status()
        result: dict[str, object] = await resp.json()
    return result


if __name__ == "__main__":
    raise SystemExit(main())
