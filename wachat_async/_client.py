"""``WachatClient``: the public calls and the client's lifecycle.

The client checks its configuration once, owns (or borrows) the aiohttp session and binds it,
with its connection queue, to the running event loop; each public call checks its arguments
and hands one attempt of the transport (``_transport.py``) to the retry loop (``_retry.py``).
It holds the only mutable state of the library. Which attempt to make, how to read a body
and how to map a failure is the transport's business; whether to retry, how long to wait and
when the deadline ends a call is the retry loop's; neither imports the client.

The success path stays bare: ``get_qr_image`` awaits ``Retrier.call``, which awaits the
transport's attempt directly (no wrapper coroutine, no tenacity, no deadline timer unless the
attempt could outlast the deadline).
"""

from __future__ import annotations

import asyncio
import os
import warnings
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from ._errors import ClientClosedError, ConfigurationError, raise_clean
from ._files import PathArg, write_stream
from ._models import InstanceState, QRFailure, QRImage, QRSuccess
from ._network import (
    Proxy,
    SSLOption,
    check_ssl,
    check_trace_configs,
    env_proxy,
    parse_proxy,
    ssl_for_session,
)
from ._polling import DEFAULT_MAX_BACKOFF, FetchMany, QRWatch, fetch_many, watch_qr
from ._redact import Secret, mentions
from ._retry import Retrier, RetryBudget, RetryPolicy
from ._slots import CLOSED_MESSAGE, ConnectionQueue, queue_limit
from ._stream import CHUNK_SIZE, QRStream
from ._transport import DEFAULT_TIMEOUT, Transport, _SanitizedCause
from ._urls import DEFAULT_BASE_URL, _build_qr_image_url, _qr_image_endpoint
from ._validate import (
    check_api_key,
    check_bool,
    check_instance_name,
    check_number,
    check_timeout,
    check_user_agent,
    is_loopback_host,
)
from ._version import __version__

# QRStream, DEFAULT_TIMEOUT and _SanitizedCause lived here before the split: still importable.
__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_TIMEOUT",
    "QRStream",
    "_SanitizedCause",
    "WachatClient",
]

DEFAULT_MAX_IMAGE_BYTES = 5 * 1024**2


class _Unset:
    """The default of a :meth:`WachatClient.with_options` argument: keep the current value."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unchanged>"


_UNSET: Any = _Unset()


class WachatClient:
    """Async client for ``GET /instance/qr/image`` (and ``GET /instance/state``).

    Use it as an async context manager (or call :meth:`aclose`)::

        async with WachatClient() as client:          # key from WACHAT_API_KEY
            qr = await client.get_qr_image("t1_abc_store")
            qr.save("qr.png")

    The key comes from *api_key* or ``WACHAT_API_KEY`` and is sent only as
    ``Authorization: Bearer``; it never appears in a repr, an exception or a log line. The base
    URL comes from *base_url*, ``WACHAT_BASE_URL`` or the production default; plain ``http://``
    is refused for anything but loopback unless *allow_insecure_http*.

    *timeout* (seconds or an ``aiohttp.ClientTimeout``) bounds each attempt; the retry policy's
    ``deadline`` bounds a whole call. *retry* is a :class:`RetryPolicy`
    (``RetryPolicy.disabled()`` for none) and *retry_budget* the :class:`RetryBudget` that all
    calls of this client share (one of its own by default). Bodies larger than
    *max_image_bytes* raise :class:`ResponseTooLargeError` without being read.

    Without *session* the client creates its own on first use, inside the running event loop,
    with at most *max_connections* connections; if a later call runs in another loop (a second
    ``asyncio.run``, a re-run notebook cell) it opens a fresh one there, transparently. A
    *session* you pass is borrowed, never closed: the client uses its connector (pool, limits,
    TLS, DNS), trace configs and default proxy (with its ``proxy_auth``), and none of its
    request defaults (headers,
    cookies, auth, ``base_url``, ``raise_for_status``, timeout, middlewares, ``trust_env``).

    Networks (see the README's "Networks"): *ssl* is aiohttp's: ``None`` verifies against the
    default trust store, an ``ssl.SSLContext`` is used as is (a private CA:
    ``ssl.create_default_context(cafile=...)``), ``False`` skips verification and warns
    :class:`InsecureTLSWarning`. *proxy* is an ``http://HOST:PORT`` proxy URL, the port explicit
    (credentials allowed: they are sent as ``Proxy-Authorization`` and never shown);
    ``https://`` goes through ``CONNECT``, so the proxy never sees the key, and a plain
    ``http://`` base URL through a proxy needs *allow_insecure_http*. *trust_env* (default off,
    so a process's environment never reroutes the key without the code saying so) reads
    ``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY`` and ``~/.netrc`` (for the proxy's credentials
    only) as aiohttp does, when the session opens, and then builds a fresh default TLS context.
    ``SSL_CERT_FILE``/``SSL_CERT_DIR`` are OpenSSL's and not gated by *trust_env*: with no
    *ssl* they are read when a default context is built, which without *trust_env* is once,
    when aiohttp is imported. One client (and its views) per running event loop: a call from
    another thread's loop while the first still runs is a :class:`ConfigurationError`.
    *trace_configs* are ``aiohttp.TraceConfig`` objects for the client's own session
    (OpenTelemetry's ``create_trace_config()``: one span per attempt). With a borrowed
    *session* these four belong on that session, and passing them is a
    :class:`ConfigurationError`.

    :meth:`with_options` returns a view with another timeout, retry policy, size cap or
    user agent that shares this client's session, connection queue and retry budget.

    Every call (get, stream, save, state, and so ``fetch_many`` and ``watch_qr``) first waits
    for one of the client's connection slots (``max_connections``, or the borrowed connector's
    ``limit``/``limit_per_host``); each attempt's *timeout* starts only once it has one, and a
    retry gives its slot back while it waits out its backoff. The policy's ``deadline`` bounds
    the whole call, waiting included.
    """

    # Class-level defaults: a client whose __init__ raised is still a valid object for repr()
    # (a traceback rendered with locals shows ``self``) and for __del__.
    _session: aiohttp.ClientSession | None = None
    _borrowed: aiohttp.ClientSession | None = None
    _owns_session = True
    _loop: asyncio.AbstractEventLoop | None = None
    _loop_guard: AsyncGenerator[None, None] | None = None
    _closed = False

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: aiohttp.ClientTimeout | float | None = None,
        retry: RetryPolicy | None = None,
        retry_budget: RetryBudget | None = None,
        max_connections: int = 100,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        session: aiohttp.ClientSession | None = None,
        allow_insecure_http: bool = False,
        user_agent: str | None = None,
        ssl: SSLOption = None,
        proxy: str | None = None,
        trust_env: bool = False,
        trace_configs: Sequence[aiohttp.TraceConfig] | None = None,
    ) -> None:
        self._root = self
        self._views: weakref.WeakSet[WachatClient] = weakref.WeakSet()
        #: What a view changed, by option: its repr lists each once, with the value in force.
        self._view_options: dict[str, str] = {}
        # The key is a Secret from the first line that reads it: a traceback rendered with its
        # frames' locals (rich, pytest --showlocals) shows repr() of each, and this frame holds
        # the key while the rest of the configuration is checked.
        if isinstance(api_key, str):
            api_key = Secret(api_key)
        elif api_key is not None:
            kind = type(api_key).__name__
            api_key = None  # the raw value leaves this frame before anything is raised
            raise ConfigurationError(f"api_key must be a str, not {kind}")
        if isinstance(proxy, (str, URL)):
            # The same care for the proxy URL, which may hold a password.
            proxy = Secret(str(proxy))
        key = _env_key() if api_key is None else api_key
        if key is None or not key.strip():
            raise ConfigurationError(
                "No Wachat API key: set the WACHAT_API_KEY environment variable or pass the "
                "api_key argument"
            )
        try:
            self._api_key = Secret(check_api_key(key))
        except (TypeError, ValueError) as exc:
            raise_clean(ConfigurationError(str(exc)))
        self._owns_session = session is None
        self._borrowed = session
        # Every message below may quote an argument: redact the key from all of them.
        secrets = (self._api_key,)
        base = base_url or os.environ.get("WACHAT_BASE_URL") or DEFAULT_BASE_URL
        try:
            qr_url = _qr_image_endpoint(base)
            ua = check_user_agent(user_agent)
            attempt_timeout = check_timeout(timeout)
            check_bool(allow_insecure_http, "allow_insecure_http")
            check_number(max_connections, "max_connections", integer=True, minimum=1)
            check_number(max_image_bytes, "max_image_bytes", integer=True, minimum=64)
            if retry is not None and not isinstance(retry, RetryPolicy):
                raise TypeError(f"retry must be a RetryPolicy or None, not {type(retry).__name__}")
            if retry_budget is not None and not isinstance(retry_budget, RetryBudget):
                raise TypeError(
                    f"retry_budget must be a RetryBudget or None, not {type(retry_budget).__name__}"
                )
            check_bool(trust_env, "trust_env")
        except (TypeError, ValueError) as exc:
            raise_clean(ConfigurationError(str(exc), secrets=secrets))
        if attempt_timeout is None:
            attempt_timeout = DEFAULT_TIMEOUT
        if session is not None:
            given = [
                name
                for name, value in (
                    ("ssl", ssl is not None),
                    ("proxy", proxy is not None),
                    ("trust_env", trust_env),
                    ("trace_configs", bool(trace_configs)),
                )
                if value
            ]
            if given:
                raise ConfigurationError(
                    f"{', '.join(given)} cannot be combined with session=: a borrowed session "
                    "brings its own connector, so set these on your session instead "
                    "(aiohttp.TCPConnector(ssl=...), aiohttp.ClientSession(proxy=..., "
                    "trace_configs=...)), or pass no session",
                    secrets=secrets,
                )
        self._proxy: Proxy | None = parse_proxy(proxy, secrets=secrets)
        self._ssl = check_ssl(ssl, secrets=secrets)
        self._trust_env = trust_env
        self._trace_configs = check_trace_configs(trace_configs)
        api_base = qr_url.parent.parent.parent
        if mentions(f"{api_base} {api_base.host} {api_base.path}", secrets):
            # It would be in every request line (and so in every access log) and in repr().
            del base_url, base, qr_url, api_base  # nor may a traceback's locals show it
            raise ConfigurationError(
                "base_url contains the API key; the key goes in api_key (or WACHAT_API_KEY) "
                "only, and is sent as an Authorization header"
            )
        if (
            api_base.scheme == "http"
            and not allow_insecure_http
            and not is_loopback_host(api_base.host or "")
        ):
            raise ConfigurationError(
                f"Refusing plain http:// to {api_base.host}: the API key would travel in "
                "clear text. Use https://, or pass allow_insecure_http=True if you mean it "
                "(only 127.0.0.0/8, ::1 and the name localhost count as loopback).",
                secrets=secrets,
            )
        if api_base.scheme == "http" and self._proxy is not None and not allow_insecure_http:
            raise ConfigurationError(_http_through_proxy(api_base, self._proxy, "proxy="))
        self._allow_insecure_http = allow_insecure_http
        self._base_url: URL = api_base
        self._retry = RetryPolicy() if retry is None else retry
        self._budget = RetryBudget() if retry_budget is None else retry_budget
        self._retrier = Retrier(self._retry, self._budget, attempt_timeout=attempt_timeout.total)
        self._max_connections = max_connections
        #: How many requests this client runs at once (None: no limit): the pool's own size, so
        #: a call queues here, before its per-attempt timeout starts, never inside aiohttp's pool.
        self._slot_limit = queue_limit(max_connections, session)
        self._slots = ConnectionQueue(self._slot_limit)
        self._closed = False
        self._transport = Transport(
            api_key=self._api_key,
            qr_url=qr_url,
            timeout=attempt_timeout,
            max_image_bytes=max_image_bytes,
            user_agent=ua or _default_user_agent(),
            borrowed=session is not None,
            slots=self._slots,
        )
        self._transport.set_proxy(self._proxy)

    # -- per-call options ------------------------------------------------------------------

    def with_options(
        self,
        *,
        timeout: aiohttp.ClientTimeout | float | None = _UNSET,
        retry: RetryPolicy | None = _UNSET,
        max_image_bytes: int = _UNSET,
        user_agent: str | None = _UNSET,
    ) -> WachatClient:
        """A view of this client with other per-call options; everything else is shared.

        The view uses this client's session (no new one is opened), its connection queue
        (``max_connections`` bounds the client and all its views together), its retry
        budget, key, base URL and network options; each argument given replaces the
        current value (``None`` restores the constructor's default), so a view of a view
        keeps what it does not change. Cheap enough to make per request::

            fast = client.with_options(timeout=3.0, retry=RetryPolicy.disabled())
            qr = await fast.get_qr_image("t1_abc_store")   # the fleet poller keeps 30 s

        A view owns nothing: its ``aclose()`` (or ``async with``) closes nothing, and it is
        closed when this client is. Options a view cannot change (``session``, ``proxy``,
        ``ssl``, the key, ...) are a ``TypeError``.
        """
        secrets = self._transport._secrets
        transport = self._transport
        changed: dict[str, str] = {}
        try:
            if timeout is not _UNSET:
                new_timeout = check_timeout(timeout) or DEFAULT_TIMEOUT
                changed["timeout"] = f"timeout={new_timeout.total}"
            else:
                new_timeout = transport.timeout
            if retry is not _UNSET:
                if retry is not None and not isinstance(retry, RetryPolicy):
                    raise TypeError(
                        f"retry must be a RetryPolicy or None, not {type(retry).__name__}"
                    )
                policy = RetryPolicy() if retry is None else retry
                changed["retry"] = "retry" if retry is not None else "retry=default"
            else:
                policy = self._retry
            if max_image_bytes is not _UNSET:
                check_number(max_image_bytes, "max_image_bytes", integer=True, minimum=64)
                changed["max_image_bytes"] = f"max_image_bytes={max_image_bytes}"
            else:
                max_image_bytes = transport.max_image_bytes
            if user_agent is not _UNSET:
                agent = check_user_agent(user_agent) or _default_user_agent()
                changed["user_agent"] = "user_agent"
            else:
                agent = transport.user_agent
        except (TypeError, ValueError) as exc:
            raise_clean(ConfigurationError(str(exc), secrets=secrets))
        root = self._root
        view: WachatClient = object.__new__(WachatClient)
        view.__dict__.update(self.__dict__)
        view._root = root
        view._loop_guard = None
        view._owns_session = False
        view._view_options = {**self._view_options, **changed}
        view._retry = policy
        view._retrier = Retrier(policy, self._budget, attempt_timeout=new_timeout.total)
        view._transport = transport.evolve(
            timeout=new_timeout, max_image_bytes=max_image_bytes, user_agent=agent
        )
        view.__dict__.pop("_views", None)
        root._views.add(view)
        return view

    def _share_binding(self) -> None:
        """Give every live view this client's session, loop and connection queue."""
        for view in list(self._views):
            view._session, view._loop, view._slots = self._session, self._loop, self._slots
            view._closed = self._closed
            view._transport.session = self._session
            view._transport.slots = self._slots
            view._transport.set_proxy(self._transport.proxy)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The API base URL this client talks to (no credentials in it)."""
        return str(self._base_url)

    @property
    def retry_policy(self) -> RetryPolicy:
        """The :class:`RetryPolicy` in force."""
        return self._retry

    @property
    def retry_budget(self) -> RetryBudget:
        """The :class:`RetryBudget` shared by this client's calls (its counters are live)."""
        return self._budget

    @property
    def closed(self) -> bool:
        """True after :meth:`aclose` (for a view: after its client's); a closed client refuses
        every call (:class:`ClientClosedError`)."""
        return getattr(self, "_root", self)._closed  # a half-built client has no _root

    async def _bind(self) -> aiohttp.ClientSession:
        """Make the session (and the connection queue) belong to the running event loop.

        Runs on the first call and again whenever the loop has changed since (a module-level
        client used by two ``asyncio.run`` calls, a re-run notebook cell). The client's own
        session is replaced transparently: the old one is closed without that loop, which
        has ended or at least is not running (a loop left open by
        ``new_event_loop().run_until_complete()``): its sockets are closed at once and nothing
        is left scheduled or pending on it. A borrowed session cannot be replaced, so one that
        belongs to another loop (or is closed) is a :class:`ConfigurationError`.
        """
        root = self._root
        if root is not self:
            return await root._bind_for_view()
        if self._closed:
            raise ClientClosedError(CLOSED_MESSAGE, attempts=0)
        loop = asyncio.get_running_loop()
        bound = self._loop
        if self._session is not None and bound not in (None, loop) and bound.is_running():
            # Another thread's loop is using the session right now: closing it would break
            # that thread's calls under it.
            raise ConfigurationError(_OTHER_LOOP_MESSAGE)
        borrowed = self._borrowed
        proxy = self._proxy
        if borrowed is None and proxy is None and self._trust_env:
            # Read when the session opens, as aiohttp would per request: one base URL. Before
            # the old session is let go of: a proxy variable that cannot work raises here.
            proxy = env_proxy(self._base_url, secrets=(self._api_key,))
            plain = self._base_url.scheme == "http"
            if proxy is not None and plain and not self._allow_insecure_http:
                raise ConfigurationError(
                    _http_through_proxy(self._base_url, proxy, "HTTP_PROXY, trust_env=True")
                    + " (or exclude the host with NO_PROXY)"
                )
        old = self._session, self._loop_guard
        self._session, self._loop, self._loop_guard = None, None, None
        self._transport.session = None
        if borrowed is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                ttl_dns_cache=300,
                ssl=ssl_for_session(self._ssl, trust_env=self._trust_env),
            )
            session = _private_session(
                connector,
                self._transport.timeout,
                trace_configs=list(self._trace_configs) or None,
                proxy=None if proxy is None else proxy.url,
            )
            # asyncio.run() finishes every live async generator before it closes the loop:
            # this one closes the session then, while the loop can still close its sockets.
            guard = _close_at_loop_end(session)
            await guard.asend(None)
            self._loop_guard = guard
        else:
            session = self._view_of(borrowed, loop)
        self._session, self._loop = session, loop
        self._slots = ConnectionQueue(self._slot_limit)
        self._transport.session, self._transport.slots = session, self._slots
        self._transport.set_proxy(proxy)
        self._share_binding()
        # Only now may this coroutine suspend: concurrent calls find the new session bound.
        await self._dispose(*old)
        return session

    async def _bind_for_view(self) -> aiohttp.ClientSession:
        """Bind this (root) client for a view's call, unless it already is for this loop."""
        session = self._session
        if self._closed or session is None or self._loop is not asyncio.get_running_loop():
            return await self._bind()
        return session

    def _view_of(
        self, borrowed: aiohttp.ClientSession, loop: asyncio.AbstractEventLoop
    ) -> aiohttp.ClientSession:
        """A session of our own over the borrowed session's connector.

        The connector (its pool, limits, TLS and DNS settings) is what a borrowed session lends,
        with its trace configs and its default proxy (with its ``proxy_auth``). None of its
        request defaults applies: headers (another API's ``Authorization``), cookies, ``auth``,
        ``base_url``, ``raise_for_status``, ``timeout``, middlewares, ``trust_env`` (which
        would also read ``~/.netrc``), ``auto_decompress``, ``read_bufsize``: aiohttp cannot
        switch every one of them off per request (default headers, cookies and ``auth`` it
        always merges in).
        """
        connector = borrowed.connector
        if borrowed.closed or connector is None:
            raise ConfigurationError(
                "The aiohttp.ClientSession passed as session= is closed; pass an open session "
                "(it is borrowed, never closed by the client), or none to let the client own one"
            )
        if (
            getattr(borrowed, "_loop", loop) is not loop
            or getattr(connector, "_loop", loop) is not loop
        ):
            raise ConfigurationError(
                "The aiohttp.ClientSession passed as session= belongs to another event loop "
                "(an aiohttp session works only in the loop that created it, e.g. one "
                "asyncio.run() call). Create the session inside the loop that uses the client, "
                "or pass no session: the client's own session follows the running loop."
            )
        view = _private_session(
            connector,
            self._transport.timeout,
            connector_owner=False,
            trace_configs=list(borrowed.trace_configs) or None,
            # aiohttp has no public getter for these two; a version without them lends none.
            proxy=getattr(borrowed, "_default_proxy", None),
        )
        auth = getattr(borrowed, "_default_proxy_auth", None)
        if isinstance(auth, aiohttp.BasicAuth):
            # Set as the lender's session holds it: passing proxy_auth= again would repeat
            # aiohttp's DeprecationWarning for it (the lender has had theirs) on every bind.
            with suppress(AttributeError):
                view._default_proxy_auth = auth
        return view

    async def _unbind(self) -> None:
        """Let go of the session (closing our own, detaching a view of a borrowed one)."""
        session, guard = self._session, self._loop_guard
        self._session, self._loop, self._loop_guard = None, None, None
        self._transport.session = None
        self._share_binding()
        await self._dispose(session, guard)

    async def _dispose(
        self,
        session: aiohttp.ClientSession | None,
        guard: AsyncGenerator[None, None] | None,
    ) -> None:
        if session is None:
            return
        if not self._owns_session:
            session.detach()  # the connector is the lender's: never closed here
            return
        loop = getattr(session, "_loop", None)
        if loop is asyncio.get_running_loop():
            if guard is not None:
                await guard.aclose()  # runs the guard's ``finally``: closes the session
            if not session.closed:
                await session.close()
            return
        if loop is not None and loop.is_running():
            # Another thread runs that loop (a client shared between threads): close it there.
            if guard is not None:
                with suppress(Exception):
                    await asyncio.wrap_future(
                        asyncio.run_coroutine_threadsafe(guard.aclose(), loop)
                    )
            return
        # The session's loop is not running: it has ended (closed), or it is merely idle (a
        # loop left open by new_event_loop().run_until_complete(), a notebook's old loop).
        # Nothing may wait on it, and whatever is scheduled on it may never run: close the
        # sockets now, mark the session and its connector closed, finish the guard.
        _close_now(session)
        if guard is not None:
            _finish_now(guard)

    async def __aenter__(self) -> WachatClient:
        if self._session is None or self._loop is not asyncio.get_running_loop():
            await self._bind()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client's own session (a borrowed one is left open). Idempotent.

        From then on every call raises :class:`ClientClosedError`; so do the calls waiting for
        a connection slot right now (they are woken, and send nothing) and, on the client's own
        session, the requests in flight. Safe from any event loop, also after the loop the
        session was used in has ended.
        On a view (:meth:`with_options`) it does nothing: the client it came from owns the
        session, and closing that client closes its views.
        """
        if self._root is not self:
            return
        self._closed = True
        # A request still in flight (through this client or one of its views) fails as
        # ClientClosedError.
        for client in (self, *self._views):
            client._transport.closed = True
        self._slots.close()  # calls waiting for a slot are refused now, not left waiting
        await self._unbind()

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        session = getattr(self, "_session", None)
        if session is None or getattr(self, "_root", self) is not self:
            return
        if not getattr(self, "_owns_session", True):
            session.detach()  # a view of a borrowed session: nothing of ours to close
        elif not session.closed:
            loop = getattr(session, "_loop", None)
            if loop is None or loop.is_closed() or not loop.is_running():
                # Its sockets cannot be closed by a loop that does not run: close them here
                # (first: the warning may be an error), so that one warning, ours, says it all
                # instead of aiohttp's and asyncio's as well.
                with suppress(Exception):
                    _close_now(session)
                guard = getattr(self, "_loop_guard", None)
                if guard is not None:
                    _finish_now(guard)
            _warn(
                "Unclosed WachatClient: use 'async with WachatClient() as client' "
                "or 'await client.aclose()'",
                ResourceWarning,
                source=self,
            )

    def __repr__(self) -> str:
        if getattr(self, "_base_url", None) is None:  # __init__ raised before it was checked
            return "<WachatClient state=unconfigured>"
        opened = self._session is not None or self._borrowed is not None
        state = "closed" if self._closed else ("open" if opened else "unopened")
        extra = ""
        proxy = self._transport.proxy or self._proxy
        if proxy is not None:
            extra += f" proxy={proxy.display}"  # host and port only: never the credentials
        if self._trust_env:
            extra += " trust_env=True"
        if self._ssl is False:
            extra += " ssl=False"
        if self._root is not self:
            extra += f" view({', '.join(self._view_options.values())})"
        return f"<WachatClient base_url={self.base_url!r} state={state}{extra}>"

    # -- public calls ----------------------------------------------------------------------

    async def get_qr_image(self, instance_name: str) -> QRImage:
        """Fetch the instance's current QR code as a validated :class:`QRImage`.

        Raises the :class:`APIStatusError` subclass for the status (after retrying 502/504 per
        the policy), :class:`InvalidImageError`, :class:`ResponseTooLargeError`,
        :class:`WachatConnectionError` or :class:`WachatTimeoutError`.
        """
        name = check_instance_name(instance_name)
        if self._loop is not asyncio.get_running_loop() or self._session is None:
            await self._bind()
        return await self._retrier.call(name, self._slots, self._transport.fetch_image)

    @asynccontextmanager
    async def stream_qr_image(
        self, instance_name: str, *, chunk_size: int = CHUNK_SIZE
    ) -> AsyncIterator[QRStream]:
        """Open the QR image and yield a :class:`QRStream` of its bytes.

        The status and headers are checked (and 502/504 retried) before the stream is yielded;
        once the first chunk is handed over nothing is retried. The PNG header is validated
        before the first chunk, and the chunk structure and the ``IEND`` trailer at the end
        (the rules of :class:`QRImage`); the size cap is enforced while reading. Leaving the
        block releases the connection, read or not::

            async with client.stream_qr_image("t1_abc_store") as stream:
                async for chunk in stream:
                    await response.write(chunk)
        """
        name = check_instance_name(instance_name)
        check_number(chunk_size, "chunk_size", integer=True, minimum=1)
        if self._loop is not asyncio.get_running_loop() or self._session is None:
            await self._bind()
        stream = await self._retrier.call(
            name, self._slots, self._transport.open_stream, chunk_size
        )
        try:
            yield stream
        finally:
            stream.close()

    async def save_qr_image(self, instance_name: str, path: PathArg) -> Path:
        """Stream the QR PNG to *path* atomically and durably; return ``Path(path)``.

        The path is checked first (a folder, a socket or a missing parent folder raises an
        :class:`OSError` naming *path*, before any request). For a regular file (or a new one)
        the body streams into a temporary file in the target folder, which is fsynced and
        renamed into place only once the whole PNG has arrived and validated, then the folder
        is fsynced; on any error or cancellation the temporary file is removed and *path* is
        left as it was. A new file is readable by its owner only (mode 0600: whoever scans the
        QR links a phone to the instance); a replaced file keeps its mode. A symlink is
        followed (the PNG lands at its target; the link stays a link). A device or FIFO
        (``/dev/null``, a named pipe) is written to directly and never replaced: the validated
        PNG is written once it is complete, or nothing at all; a FIFO with no reader yet is
        waited for (cancel the call to give up). Disk waits run in a worker thread, so the
        event loop never blocks on the disk. ``~`` is not expanded.
        """
        name = check_instance_name(instance_name)
        if self._loop is not asyncio.get_running_loop() or self._session is None:
            await self._bind()
        transport = self._transport
        return await write_stream(
            path, lambda sink: self._retrier.call(name, self._slots, transport.save_once, sink)
        )

    async def get_instance_state(self, instance_name: str) -> InstanceState:
        """``GET /instance/state``: whether the instance's phone is linked yet.

        Unknown state strings are kept as they are; only ``"open"`` counts as connected.
        """
        name = check_instance_name(instance_name)
        if self._loop is not asyncio.get_running_loop() or self._session is None:
            await self._bind()
        return await self._retrier.call(name, self._slots, self._transport.fetch_state)

    def fetch_many(
        self,
        instance_names: Iterable[str],
        *,
        concurrency: int = 32,
        dedupe: bool = True,
        on_progress: Callable[[QRSuccess | QRFailure], object] | None = None,
    ) -> FetchMany:
        """Fetch many QR codes, *concurrency* at a time; a :class:`QRSuccess` or
        :class:`QRFailure` per name as each completes.

        ``dedupe=True``: one result per distinct name (the names seen are remembered).
        ``dedupe=False``: every name pulled is fetched, so ``itertools.cycle(names)`` is a
        polling loop in memory bounded by *concurrency*. Either way one name is never in flight
        twice at once within the batch (two batches do not know of each other), an invalid
        name becomes a :class:`QRFailure` with an :class:`InvalidInstanceNameError`, and the
        event loop is never held.

        Returns a :class:`FetchMany`: iterate it, ideally inside ``async with`` so that leaving
        the block cancels what is still in flight. *concurrency* is capped at the client's
        connection slots (``max_connections``, or a borrowed connector's limit), and each fetch
        queues for a slot before its timeout starts. Closing the client ends the batch with
        :class:`ClientClosedError`, raised from the loop; a batch whose pending result was
        cancelled (``asyncio.wait_for`` around ``anext``) raises ``RuntimeError`` from then on.
        See :func:`wachat_async._polling.fetch_many`.
        """
        return fetch_many(
            self.get_qr_image,
            instance_names,
            concurrency=min(concurrency, self._slot_limit)
            if self._slot_limit is not None and type(concurrency) is int
            else concurrency,
            dedupe=dedupe,
            on_progress=on_progress,
        )

    def watch_qr(
        self,
        instance_name: str,
        *,
        interval: float = 5.0,
        until_connected: bool = False,
        jitter: float = 0.1,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
    ) -> QRWatch:
        """Poll one instance and yield its QR each time it changes (by content hash).

        Never more often than once a second (a smaller *interval* is raised to 1 s). Transient
        errors go through the retry policy and watching goes on, waiting twice as long after
        each failure in a row, up to *max_backoff* seconds; terminal errors (401/403/404/409,
        ...) are raised. With *until_connected* the watch ends cleanly once
        :meth:`get_instance_state` reports ``"open"``. Returns a :class:`QRWatch`: its
        ``shown`` counts the QR codes seen. See :func:`wachat_async._polling.watch_qr`.
        """
        name = check_instance_name(instance_name)
        return watch_qr(
            self.get_qr_image,
            name,
            interval=interval,
            jitter=jitter,
            get_state=self.get_instance_state if until_connected else None,
            sleep=self._retrier.sleep,
            max_backoff=max_backoff,
        )

    def qr_image_url(self, instance_name: str, *, expose_api_key: bool = False) -> str:
        """The QR image URL for this client's base URL.

        Without *expose_api_key* the URL carries no key (for header auth or a proxy). With
        ``expose_api_key=True`` it carries this client's key as ``apiKey`` for a bare ``<img>``
        tag, and :class:`ApiKeyExposureWarning` is emitted: see :func:`build_qr_image_url`.
        """
        return _build_qr_image_url(
            instance_name,
            api_key=self._api_key if expose_api_key is True else None,
            base_url=self._base_url,
            expose_api_key=expose_api_key,
            stacklevel=2,
        )


def _env_key() -> Secret | None:
    """``WACHAT_API_KEY`` as a :class:`Secret` (None when unset): the plain value lives only
    in this frame, which raises nothing."""
    value = os.environ.get("WACHAT_API_KEY")
    return None if value is None else Secret(value)


_OTHER_LOOP_MESSAGE = (
    "This WachatClient is in use by an event loop that is running in another thread: a client "
    "(and its views) belongs to one running event loop at a time. Make one client per thread "
    "(or per event loop), or run every call in one loop (asyncio.run_coroutine_threadsafe)"
)


def _http_through_proxy(base: URL, proxy: Proxy, source: str) -> str:
    """Why a plain http:// base URL through a proxy is refused without allow_insecure_http."""
    return (
        f"Refusing plain http:// to {base.host} through the HTTP proxy {proxy.display} "
        f"({source}): a plain-http request goes to the proxy as it is, so the proxy and the "
        "network to it would read the API key in clear text (and the proxy would resolve "
        f"{base.host} itself). Use https:// (the key then travels inside the proxy's CONNECT "
        "tunnel), or pass allow_insecure_http=True if you mean it"
    )


def _default_user_agent() -> str:
    return f"wachat-async/{__version__} aiohttp/{aiohttp.__version__}"


def _private_session(
    connector: aiohttp.BaseConnector,
    timeout: aiohttp.ClientTimeout,
    *,
    connector_owner: bool = True,
    trace_configs: list[aiohttp.TraceConfig] | None = None,
    proxy: Any = None,
) -> aiohttp.ClientSession:
    """A session whose every request default is ours: no cookies (a dummy jar), no default
    headers or auth, no base URL, no status raising, no middlewares, no environment."""
    return aiohttp.ClientSession(
        connector=connector,
        connector_owner=connector_owner,
        timeout=timeout,
        cookie_jar=aiohttp.DummyCookieJar(),
        raise_for_status=False,
        auto_decompress=True,
        trust_env=False,
        trace_configs=trace_configs,
        proxy=proxy,
    )


async def _close_at_loop_end(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    """Suspended for as long as the session's loop runs; finishing it closes the session.

    ``asyncio.run`` (and ``asyncio.Runner``) finish every live async generator before closing
    the loop, so a client left open in a script or a notebook cell releases its connections
    while their loop can still close them, and its next call opens a session on the new loop.
    """
    try:
        yield
    finally:
        await session.close()


def _close_now(session: aiohttp.ClientSession) -> None:
    """Close a session whose event loop is not running, without that loop and without warnings.

    A closed loop does not close its transports, and an idle one may never run again, so each
    socket is closed here: its transport is aborted and the ``connection_lost`` call that the
    abort scheduled on the loop is made now instead (the scheduled one is cancelled, so a loop
    that does run again does not make it twice). Then the connector is marked closed without
    scheduling anything (no close task left pending on that loop) and the session detached
    from it. Best effort: these are asyncio's and aiohttp's private internals, each step
    guarded; a transport of another kind (uvloop) is aborted and left to its loop.
    """
    connector = session.connector
    if connector is not None:
        pooled = getattr(connector, "_conns", {}).values()
        protocols = [proto for conns in pooled for proto, _ in conns]
        for proto in [*protocols, *getattr(connector, "_acquired", ())]:
            _close_transport(getattr(proto, "transport", None))
        with suppress(Exception):
            connector._close()  # what close() does, without the task that waits on the loop
        if not connector.closed:  # a subclass's _close() failed first: the base one, then
            with suppress(Exception):
                aiohttp.BaseConnector._close(connector)
    session.detach()  # closed now; its connector is closed above


def _close_transport(transport: asyncio.BaseTransport | None) -> None:
    """Abort *transport* and close its socket now (see :func:`_close_now`)."""
    if transport is None:
        return
    with suppress(Exception):
        transport.abort()  # type: ignore[attr-defined]
    # Over TLS the socket belongs to the transport beneath the TLS layer.
    inner = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
    for current in (transport, inner):
        lost = getattr(current, "_call_connection_lost", None)
        if lost is None or getattr(current, "_sock", None) is None:
            continue
        for handle in list(getattr(getattr(current, "_loop", None), "_ready", ())):
            if getattr(handle, "_callback", None) == lost:
                handle.cancel()  # scheduled by abort(): made here instead
        with suppress(Exception):
            lost(None)  # closes the socket (and tells the protocol the connection is gone)


def _finish_now(guard: AsyncGenerator[None, None]) -> None:
    """Finish the loop-end guard without a loop: its ``finally`` awaits the session's close,
    which returns at once for a closed session. A guard that would really wait is dropped."""
    step = guard.aclose()
    try:
        step.send(None)
    except StopIteration:
        return
    except Exception:  # best effort: there is nobody to report it to
        return
    step.close()  # pragma: no cover - the session was closed first, so nothing awaits
