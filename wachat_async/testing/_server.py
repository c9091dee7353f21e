"""The embedded fake Wachat server: :class:`FakeWachatServer`, its lifecycle and configuration.

Everything public is re-exported from :mod:`wachat_async.testing`; see its docstring for usage.
This module is the public face: it checks the arguments users give, starts and stops the
aiohttp.web application on loopback (on the running loop or a private thread), and hands its
configuration to the parts that do the work: :mod:`._registry` (what the server knows),
:mod:`._handlers` (what each request is answered, and sending it), :mod:`._png` (QR images),
:mod:`._faults` (scripted misbehaviour). It never decides an answer itself, and never imports the
client: the fake must describe the API, not the library under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Literal

from aiohttp import http_exceptions, web
from aiohttp.abc import AbstractAccessLogger

from ._faults import Conditions, Fault, as_fault, bad_header_text
from ._handlers import ADMIN_PATH, API_PREFIX, QR_PATH, STATE_PATH, Routes, Waiting
from ._png import PngCache, require_segno
from ._png import qr_payload as _qr_payload
from ._registry import BAILEYS, FakeInstance, RecordedRequest, Registry, friendly_name
from ._tls import DEFAULT_TLS_HOSTNAMES, ThrowawayCA

__all__ = ["Conditions", "FakeInstance", "FakeWachatServer", "Fault", "RecordedRequest"]

_log = logging.getLogger("wachat_async.testing")


def _unquoted(record: logging.LogRecord) -> bool:
    """aiohttp's parser errors quote the request (an over-long ``Authorization`` header, a
    client's key): logged as one line naming the error, never its text or traceback."""
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, http_exceptions.HttpProcessingError):
        record.msg, record.args, record.exc_info, record.exc_text = (
            "a request that is not valid HTTP (%s): refused with 400, its text not shown",
            (type(error).__name__,),
            None,
            None,
        )
    return True


#: aiohttp's server logger for this server's requests (instead of ``aiohttp.server``).
_server_log = logging.getLogger("wachat_async.testing.server")
_server_log.addFilter(_unquoted)


class _AccessLogger(AbstractAccessLogger):
    """Access log without query strings: ``?apiKey=`` must never reach a log."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """One line per request: remote, method, path (no query), status, duration."""
        self.logger.info(
            "%s %s %s %s %.6fs",
            request.remote,
            request.method,
            request.path,
            response.status,
            time,
        )


#: The hosts that mean "every interface" of both families (``0.0.0.0`` is IPv4's only).
_ANY_ADDRESS = ("", "::")


def _url_host(host: str) -> str:
    # Bound to every interface: the address to *connect* to is loopback, not 0.0.0.0 / ::.
    if host in ("", "0.0.0.0"):  # noqa: S104 - a comparison, not a bind
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _check_key(key: object, what: str = "api_key") -> str:
    if not isinstance(key, str):
        raise TypeError(f"{what} must be a str, not {type(key).__name__}")
    if not key.strip() or key != key.strip() or bad_header_text(key):
        # Never quote the key: even a malformed one may be a secret.
        raise ValueError(f"{what} must be non-empty, without surrounding whitespace or CR/LF/NUL")
    return key


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"instance name must be a str, not {type(name).__name__}")
    if not name.strip():
        raise ValueError("instance name must not be empty or whitespace")
    return name


def _check_text(what: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty str, not {value!r}")
    return value


class FakeWachatServer:
    """A real HTTP server that behaves like Wachat's QR endpoints, for tests and demos.

    See :mod:`wachat_async.testing` for a tour. Configure it from any thread; serve it with
    ``async with server:`` (on the current loop) or ``with server.run_in_thread():`` (on a
    private loop in a daemon thread, for synchronous code).

    ``tls=True`` serves HTTPS with a certificate from a throwaway CA made for this server
    (trustme, in the ``testing`` extra), valid for *tls_hostnames* (``127.0.0.1``,
    ``localhost`` and ``::1`` by default). :attr:`ssl_context` is a client context that trusts
    that CA and nothing else, for ``WachatClient(ssl=server.ssl_context)``; :attr:`ca_pem` and
    :meth:`write_ca_file` give the CA certificate to code that wants a file (``--ca-file``,
    ``SSL_CERT_FILE``). A client that does not trust the CA fails verification, exactly as
    it would against a private CA in production.

    ``admin=True`` adds ``POST /_fake/{name}/state`` (body ``open``: the phone is linked),
    ``/_fake/{name}/rotate`` and ``/_fake/{name}/script`` (body ``502,502,200``), with the key
    as a Bearer token: :meth:`set_state`, :meth:`rotate_qr` and :meth:`script` from a shell or
    any language's end-to-end test (``--admin`` on the command line).
    """

    def __init__(
        self,
        api_key: str = "test-key",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        qr_rotation: float | None = 20.0,
        auto_create: bool = False,
        latency: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        access_log: bool = False,
        max_logged_requests: int | None = None,
        tls: bool = False,
        tls_hostnames: Iterable[str] | None = None,
        admin: bool = False,
    ) -> None:
        _check_key(api_key)
        if not isinstance(admin, bool):
            raise TypeError(f"admin must be a bool, not {type(admin).__name__}")
        self._admin = admin
        require_segno()  # fail here, not with a 500 on the first QR request
        if not isinstance(tls, bool):
            raise TypeError(f"tls must be a bool, not {type(tls).__name__}")
        if tls_hostnames is not None and not tls:
            raise ValueError("tls_hostnames needs tls=True")
        # Made here, so a missing trustme fails at construction, not at start().
        self._ca = (
            ThrowawayCA(DEFAULT_TLS_HOSTNAMES if tls_hostnames is None else tls_hostnames)
            if tls
            else None
        )
        if qr_rotation is not None and (
            isinstance(qr_rotation, bool)
            or not isinstance(qr_rotation, (int, float))
            or not math.isfinite(qr_rotation)
            or qr_rotation <= 0
        ):
            raise ValueError(
                f"qr_rotation must be a positive number of seconds or None, not {qr_rotation!r}"
            )
        if isinstance(latency, bool) or not isinstance(latency, (int, float)):
            raise TypeError(f"latency must be a number of seconds, not {latency!r}")
        if not math.isfinite(latency) or latency < 0:
            raise ValueError(f"latency must be a finite number >= 0, not {latency!r}")
        if max_logged_requests is not None and (
            type(max_logged_requests) is not int or max_logged_requests < 0
        ):
            raise ValueError(
                f"max_logged_requests must be an int >= 0 or None, not {max_logged_requests!r}"
            )
        self._api_key = api_key
        self._host = host
        self._requested_port = port
        self._latency = float(latency)
        self._access_log = access_log
        self._registry = Registry(
            api_key,
            clock=clock,
            qr_rotation=None if qr_rotation is None else float(qr_rotation),
            auto_create=auto_create,
            max_logged_requests=max_logged_requests,
        )
        self._pngs = PngCache()
        self._waiting = Waiting()

        self._status: Literal["new", "running", "closed"] = "new"
        self._started_in: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._dual_stack = False

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving on the running loop (``port=0`` picks a free port)."""
        if self._status != "new":
            raise RuntimeError(f"FakeWachatServer cannot be started: it is {self._status}")
        self._started_in = asyncio.get_running_loop()
        routes = Routes(self._registry, self._pngs.png, self._waiting, latency=self._latency)
        app = web.Application()
        app.router.add_get(QR_PATH, routes.qr)
        app.router.add_get(STATE_PATH, routes.state)
        if self._admin:
            app.router.add_post(ADMIN_PATH, routes.admin)
        app.router.add_route("*", "/{tail:.*}", routes.other)
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log_class=_AccessLogger,
            access_log=logging.getLogger("wachat_async.testing.access")
            if self._access_log
            else None,
            # Cancel a handler when its client goes away (a hanging fault must not outlive it).
            handler_cancellation=True,
            # Handlers finish at once on close (see Waiting); this only bounds surprises.
            shutdown_timeout=1.0,
            logger=_server_log,
        )
        await runner.setup()
        try:
            server_context = None if self._ca is None else self._ca.server_context()
            site: web.BaseSite
            sock: socket.socket | None = None
            if self._host in _ANY_ADDRESS and socket.has_dualstack_ipv6():
                # asyncio binds "::" with IPV6_V6ONLY (IPv4 clients refused) and "" as two
                # sockets (two ports when port=0): one dual-stack socket serves both families.
                sock = socket.create_server(
                    ("::", self._requested_port), family=socket.AF_INET6, dualstack_ipv6=True
                )
                site = web.SockSite(runner, sock, ssl_context=server_context)
                self._dual_stack = True
            else:
                site = web.TCPSite(
                    runner, self._host, self._requested_port, ssl_context=server_context
                )
            await site.start()
        except BaseException:
            self._dual_stack = False
            if sock is not None:
                sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self._status = "running"
        _log.debug("fake Wachat server listening on %s", self.base_url)

    async def close(self) -> None:
        """Stop serving: open requests (hanging ones included) are cut off promptly. Idempotent."""
        if self._status != "running":
            self._status = "closed"
            return
        if asyncio.get_running_loop() is not self._started_in:
            raise RuntimeError(
                "close() must be awaited on the loop that started the server "
                "(servers from run_in_thread() are closed by its context manager)"
            )
        self._status = "closed"
        self._dual_stack = False
        self._waiting.close()
        assert self._runner is not None
        await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> FakeWachatServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[FakeWachatServer]:
        """Serve on a private event loop in a daemon thread for the duration of a ``with``.

        For synchronous tests, notebooks and scripts, and for async tests that must not
        depend on their own loop. Leaving the block closes the server and joins the thread.
        """
        ready = threading.Event()
        started: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        failure: list[BaseException] = []

        async def serve() -> None:
            stop = asyncio.Event()
            async with self:
                started.append((asyncio.get_running_loop(), stop))
                ready.set()
                await stop.wait()

        def target() -> None:
            try:
                asyncio.run(serve())
            except BaseException as exc:  # handed to the caller's thread below
                failure.append(exc)
            finally:
                ready.set()

        thread = threading.Thread(target=target, name="wachat-fake-server", daemon=True)
        thread.start()
        ready.wait()
        if not started:
            thread.join()
            raise failure[0]
        loop, stop = started[0]
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join()
            if failure:
                raise failure[0]

    # -- addresses ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound TCP port (known once started)."""
        if self._port is None:
            raise RuntimeError("FakeWachatServer is not started: use 'async with server:'")
        return self._port

    @property
    def url(self) -> str:
        """The server root, e.g. ``http://127.0.0.1:8080`` (``https://`` with ``tls=True``)."""
        scheme = "http" if self._ca is None else "https"
        return f"{scheme}://{_url_host(self._host)}:{self.port}"

    @property
    def dual_stack(self) -> bool:
        """Whether the server, bound to ``"::"`` or ``""`` (every interface), takes IPv4 and
        IPv6 clients on one socket (where the OS allows it: Linux, macOS, Windows). Then
        ``http://127.0.0.1:PORT`` reaches it as well as :attr:`url`'s ``[::1]``. False for any
        other host, and for ``"::"`` on an OS that only binds it IPv6-only."""
        return self._dual_stack

    @property
    def base_url(self) -> str:
        """The API base URL to give a client, e.g. ``http://127.0.0.1:8080/api/v1``."""
        return self.url + API_PREFIX

    @property
    def api_key(self) -> str:
        """The default valid API key (owner of instances added without ``api_key=``)."""
        return self._api_key

    # -- TLS ----------------------------------------------------------------------------------

    @property
    def tls(self) -> bool:
        """Whether this server speaks HTTPS (``tls=True``)."""
        return self._ca is not None

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """A new client ``ssl.SSLContext`` that trusts this server's CA only (``tls=True``).

        Host names are checked as usual: dial one of ``tls_hostnames``. Pass it as
        ``WachatClient(ssl=server.ssl_context)`` or ``aiohttp.TCPConnector(ssl=...)``.
        """
        return self._require_ca().client_context()

    @property
    def ca_pem(self) -> bytes:
        """The throwaway CA's certificate, PEM-encoded (``tls=True``)."""
        return self._require_ca().ca_pem

    def write_ca_file(self, path: str | os.PathLike[str]) -> Path:
        """Write the CA certificate (:attr:`ca_pem`) to *path*, e.g. for ``--ca-file`` or
        ``SSL_CERT_FILE``; returns the path."""
        return self._require_ca().write_ca_file(path)

    def _require_ca(self) -> ThrowawayCA:
        if self._ca is None:
            raise RuntimeError("this FakeWachatServer speaks plain HTTP: create it with tls=True")
        return self._ca

    def __repr__(self) -> str:
        where = self.base_url if self._port is not None else "not started"
        return f"<FakeWachatServer {where} {self._status} instances={len(self._registry)}>"

    # -- configuration --------------------------------------------------------------------------

    def add_api_key(self, key: str, *, restricted: bool = False) -> None:
        """Accept *key*; ``restricted=True`` makes the QR route answer 403 for its instances."""
        self._registry.add_key(_check_key(key, "key"), restricted=bool(restricted))

    def add_instance(
        self,
        name: str,
        *,
        api_key: str | None = None,
        integration: str = BAILEYS,
        state: str = "connecting",
    ) -> FakeInstance:
        """Create an instance owned by *api_key* (default: the server key; unknown keys are added).

        A non-Baileys *integration* makes the QR route answer 409. Names are stored verbatim:
        ``&``, ``#``, spaces, ``/`` and any unicode are fine. Duplicate names raise ValueError.
        """
        return self.add_instances([name], api_key=api_key, integration=integration, state=state)[0]

    def add_instances(
        self,
        names: Iterable[str],
        *,
        api_key: str | None = None,
        integration: str = BAILEYS,
        state: str = "connecting",
    ) -> list[FakeInstance]:
        """Bulk :meth:`add_instance` (all or nothing: nothing is added if one name is bad)."""
        owner = self._api_key if api_key is None else _check_key(api_key)
        _check_text("integration", integration)
        _check_text("state", state)
        infos = [
            FakeInstance(
                name=_check_name(name),
                integration=integration,
                state=state,
                friendly_name=friendly_name(name),
            )
            for name in names
        ]
        self._registry.add_instances(infos, owner=owner)
        return infos

    def remove_instance(self, name: str) -> None:
        """Delete an instance (later requests for it get 404 unless ``auto_create``)."""
        self._registry.remove_instance(name)
        self._pngs.forget(name)

    def set_state(self, name: str, state: str) -> FakeInstance:
        """Change what the state route reports, e.g. ``"open"`` once "scanned"."""
        if not isinstance(state, str) or not state:
            raise ValueError(f"state must be a non-empty str, not {state!r}")
        return self._registry.set_state(name, state)

    def rotate_qr(self, name: str) -> str:
        """Make *name*'s QR change now (no sleeping in tests); returns the new payload."""
        self._registry.rotate_qr(name)
        return self.qr_payload(name)

    def qr_payload(self, name: str) -> str:
        """The text the QR served for *name* encodes right now (for assertions)."""
        return _qr_payload(name, self._registry.generation(name))

    def script(self, name: str, responses: Iterable[int | Fault]) -> None:
        """Queue the next QR responses for *name* (replacing any queue left over).

        Each QR request for *name* consumes one entry, after authentication and the
        instanceName check and before the instance lookup (so unknown names can be scripted).
        An int is ``Fault(status=n)``; 200 means "normal behaviour". When the queue is empty
        the instance behaves normally again.
        """
        _check_name(name)
        self._registry.set_script(name, [as_fault(item) for item in responses])

    def set_conditions(self, conditions: Conditions | None = None) -> None:
        """Make every instance's QR requests meet *conditions* (a rate limit, an outage, a
        share of 502s or hangs) from now on, replacing earlier ones; ``None`` clears them. A
        scripted fault comes first, and the rate limit does not count it.
        """
        if conditions is not None and not isinstance(conditions, Conditions):
            raise TypeError(f"conditions must be a Conditions, not {type(conditions).__name__}")
        self._registry.set_conditions(conditions or Conditions())

    def pending_script(self, name: str) -> tuple[Fault, ...]:
        """The scripted responses for *name* not consumed yet."""
        return self._registry.pending_script(name)

    # -- inspection -----------------------------------------------------------------------------

    @property
    def instances(self) -> Mapping[str, FakeInstance]:
        """A snapshot of all instances, by name."""
        return self._registry.instances()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received (oldest first; the newest ``max_logged_requests`` if set)."""
        return self._registry.requests()

    def request_count(self, instance_name: str | None = None, *, path: str | None = None) -> int:
        """How many requests arrived, optionally only for one instance and/or one path.

        *path* is the request path, with or without the ``/api/v1`` prefix
        (``"/instance/qr/image"``). Counts stay exact even when the log is bounded.
        """
        paths = None if path is None else (path, API_PREFIX + path)
        return self._registry.count(instance_name, paths)

    def reset_log(self) -> None:
        """Forget recorded requests and counts (instances, keys and scripts are kept)."""
        self._registry.reset_log()
