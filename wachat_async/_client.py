"""``WachatClient``: the public calls and the client's lifecycle (ARCHITECTURE.md)."""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
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
    http_through_proxy,
    parse_proxy,
    ssl_for_session,
)
from ._polling import DEFAULT_MAX_BACKOFF, FetchMany, QRWatch, fetch_many, watch_qr
from ._redact import Secret, mentions
from ._retry import Retrier, RetryBudget, RetryPolicy
from ._slots import CLOSED_MESSAGE, ConnectionQueue, queue_limit
from ._stats import ClientStats, apply_log_env
from ._stream import CHUNK_SIZE, QRStream
from ._transport import DEFAULT_TIMEOUT, Transport
from ._urls import DEFAULT_BASE_URL, _build_qr_image_url, _qr_image_endpoint
from ._validate import (
    check_api_key,
    check_bool,
    check_instance_name,
    check_number,
    check_timeout,
    check_type,
    check_user_agent,
    is_loopback_host,
)
from ._version import __version__

__all__ = ["DEFAULT_MAX_IMAGE_BYTES", "WachatClient"]

DEFAULT_MAX_IMAGE_BYTES = 5 * 1024**2


class _Unset:
    """The default of a :meth:`WachatClient.with_options` argument: keep the current value."""

    def __repr__(self) -> str:
        return "<unchanged>"


_UNSET: Any = _Unset()


class _State:
    """What a client and its views share (the transport reads it as its ``link``)."""

    __slots__ = ("borrowed", "closed", "guard", "loop", "proxy", "session", "slots", "warned")

    def __init__(self, slots: ConnectionQueue, *, borrowed: bool) -> None:
        self.borrowed = borrowed
        self.session: aiohttp.ClientSession | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.guard: AsyncGenerator[None, None] | None = None
        self.slots = slots
        self.proxy: Proxy | None = None
        self.closed = False
        self.warned = False  # the ResourceWarning of _let_go, once per client

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        session = self.session
        if session is None or session.closed:
            return
        if self.borrowed:
            session.detach()  # our stand-in over the lender's connector: nothing to close
            return
        # Our guard goes with us: asyncio's finaliser closes the session if its loop runs.
        _warn(
            "Unclosed WachatClient: use 'async with WachatClient() as client' "
            "or 'await client.aclose()'",
            ResourceWarning,
            source=self,
        )


class WachatClient:
    """Async client for ``GET /instance/qr/image`` (and ``GET /instance/state``)::

        async with WachatClient() as client:          # key from WACHAT_API_KEY
            qr = await client.get_qr_image("t1_abc_store")
            qr.save("qr.png")

    The key (*api_key* or ``WACHAT_API_KEY``) never appears in a repr, an exception or a log
    line. *timeout* bounds each attempt, the *retry* policy's ``deadline`` a whole call; a call
    first waits for one of *max_connections* slots. A *session* you pass is borrowed, never
    closed. Options: docs/getting-started.md, "Configuring the client"; *ssl*, *proxy*,
    *trust_env* and *trace_configs*: docs/networks.md.
    """

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
        # Secrets from the first line: a traceback rendered with its locals shows their repr().
        if isinstance(api_key, str):
            api_key = Secret(api_key)
        elif api_key is not None:
            kind = type(api_key).__name__
            api_key = None  # the raw value leaves this frame before anything is raised
            raise ConfigurationError(f"api_key must be a str, not {kind}")
        if isinstance(proxy, (str, URL)):
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
        secrets = (self._api_key,)
        apply_log_env()
        base = base_url or os.environ.get("WACHAT_BASE_URL") or DEFAULT_BASE_URL
        try:
            qr_url = _qr_image_endpoint(base)
            ua = check_user_agent(user_agent)
            attempt_timeout = check_timeout(timeout) or DEFAULT_TIMEOUT
            check_bool(allow_insecure_http, "allow_insecure_http")
            check_number(max_connections, "max_connections", integer=True, minimum=1)
            check_number(max_image_bytes, "max_image_bytes", integer=True, minimum=64)
            check_type(retry, RetryPolicy, "retry")
            check_type(retry_budget, RetryBudget, "retry_budget")
            check_bool(trust_env, "trust_env")
        except (TypeError, ValueError) as exc:
            raise_clean(ConfigurationError(str(exc), secrets=secrets))
        options = {"ssl": ssl is not None, "trust_env": trust_env, "trace_configs": trace_configs}
        if session is not None and (given := [name for name, v in options.items() if v]):
            raise ConfigurationError(
                f"{', '.join(given)} cannot be combined with session=: a borrowed session "
                "brings its own connector, so set these on your session instead "
                "(aiohttp.TCPConnector(ssl=...), aiohttp.ClientSession(trace_configs=...)), "
                "or pass no session",
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
            raise ConfigurationError(http_through_proxy(api_base, self._proxy, "proxy="))
        self._allow_insecure_http = allow_insecure_http
        self._base_url = api_base
        self._borrowed = session
        self._retry = RetryPolicy() if retry is None else retry
        self._budget = RetryBudget() if retry_budget is None else retry_budget
        self._max_connections = max_connections
        self._slot_limit = queue_limit(max_connections, session)
        self._state = _State(ConnectionQueue(self._slot_limit), borrowed=session is not None)
        self._retrier = Retrier(self._retry, self._budget, attempt_timeout=attempt_timeout.total)
        self._owner = True  # False for a view: closing it closes nothing
        self._view_options: dict[str, str] = {}  # what a view changed, for its repr
        self._transport = Transport(
            api_key=self._api_key,
            qr_url=qr_url,
            timeout=attempt_timeout,
            max_image_bytes=max_image_bytes,
            user_agent=ua or _default_user_agent(),
            borrowed=session is not None,
            link=self._state,
            counts=self._retrier.counts,  # the client's counters, shared with its views
        )
        self._seen: aiohttp.ClientSession | None = None  # the session last bound (_bind)

    # -- per-call options ------------------------------------------------------------------

    def with_options(
        self,
        *,
        timeout: aiohttp.ClientTimeout | float | None = _UNSET,
        retry: RetryPolicy | None = _UNSET,
        max_image_bytes: int = _UNSET,
        user_agent: str | None = _UNSET,
    ) -> WachatClient:
        """A view of this client with other per-call options, sharing everything else (session,
        connection queue, budget); ``None`` restores the default. Its ``aclose()`` closes
        nothing. Details: docs/networks.md, "Per-call options"."""
        transport = self._transport
        changed: dict[str, str] = {}  # by option, as the view's repr shows it
        new_timeout, policy = transport.timeout, self._retry
        size, agent = transport.max_image_bytes, transport.user_agent
        try:
            if timeout is not _UNSET:
                new_timeout = check_timeout(timeout) or DEFAULT_TIMEOUT
                changed["timeout"] = f"timeout={new_timeout.total}"
            if retry is not _UNSET:
                check_type(retry, RetryPolicy, "retry")
                policy = RetryPolicy() if retry is None else retry
                changed["retry"] = "retry=default" if retry is None else "retry"
            if max_image_bytes is not _UNSET:
                check_number(max_image_bytes, "max_image_bytes", integer=True, minimum=64)
                size = max_image_bytes
                changed["max_image_bytes"] = f"max_image_bytes={size}"
            if user_agent is not _UNSET:
                agent = check_user_agent(user_agent) or _default_user_agent()
                changed["user_agent"] = "user_agent"
        except (TypeError, ValueError) as exc:
            raise_clean(ConfigurationError(str(exc), secrets=(self._api_key,)))
        view: WachatClient = object.__new__(WachatClient)
        view.__dict__.update(self.__dict__)  # the same _State: the view shares it
        view._owner = False
        view._view_options = {**self._view_options, **changed}
        view._retry = policy
        view._retrier = self._retrier.view(policy, new_timeout.total)  # one budget, counts, pacer
        view._transport = transport.evolve(
            timeout=new_timeout, max_image_bytes=size, user_agent=agent
        )
        view._seen = None
        return view

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

    def stats(self) -> ClientStats:
        """A :class:`ClientStats` snapshot of what this client and its views have done so
        far: requests, calls, retries, connection slots, pacing. Details: docs/observability.md."""
        retrier, slots = self._retrier, self._state.slots
        return retrier.counts.snapshot(slots.in_use, slots.waiting, retrier.pacer.snapshot())

    @property
    def closed(self) -> bool:
        """True after :meth:`aclose` (of the client, for a view): every call then refuses."""
        return self._state.closed

    def _stale(self) -> bool:
        """Whether a call must :meth:`_bind` first: in another loop, or after a new session."""
        state = self._state
        return self._seen is not state.session or state.loop is not asyncio.get_running_loop()

    async def _bind(self) -> None:
        """Open the shared session in the running loop (letting an older loop's one go)."""
        state = self._state
        if state.closed:
            raise ClientClosedError(CLOSED_MESSAGE, attempts=0)
        loop = asyncio.get_running_loop()
        if state.loop is not loop:
            old = state.session, state.guard, state.loop
            if old[0] is not None and old[2] is not None and old[2].is_running():
                # Closing the session would break the other thread's calls under it.
                raise ConfigurationError(_OTHER_LOOP_MESSAGE)
            proxy = self._proxy
            if proxy is None and self._trust_env:
                proxy = self._env_proxy()
            # Everything is set before the first await: concurrent calls find it bound.
            state.session, state.guard = self._open(proxy)
            state.loop, state.proxy = loop, proxy
            state.slots = ConnectionQueue(self._slot_limit)
            if state.guard is not None:
                await state.guard.asend(None)
            await self._let_go(*old)
        self._transport.set_proxy(state.proxy)
        self._seen = state.session

    def _env_proxy(self) -> Proxy | None:
        """The proxy ``trust_env`` reads from the environment as a session opens."""
        base = self._base_url
        proxy = env_proxy(base, secrets=(self._api_key,))
        if proxy is not None and base.scheme == "http" and not self._allow_insecure_http:
            raise ConfigurationError(
                http_through_proxy(base, proxy, "HTTP_PROXY, trust_env=True")
                + " (or exclude the host with NO_PROXY)"
            )
        return proxy

    def _open(
        self, proxy: Proxy | None
    ) -> tuple[aiohttp.ClientSession, AsyncGenerator[None, None] | None]:
        """A session for the running loop and the guard that closes it (None when borrowed:
        ours over the lender's connector, since aiohttp always merges a session's defaults)."""
        url = None if proxy is None else proxy.url
        borrowed = self._borrowed
        if borrowed is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                ttl_dns_cache=300,
                ssl=ssl_for_session(self._ssl, trust_env=self._trust_env),
            )
            configs = list(self._trace_configs) or None
            session = _private_session(connector, self._transport.timeout, configs, url)
            return session, _close_at_loop_end(session)
        lent = borrowed.connector
        if borrowed.closed or lent is None:
            raise ConfigurationError(
                "The aiohttp.ClientSession passed as session= is closed; pass an open session "
                "(it is borrowed, never closed by the client), or none to let the client own one"
            )
        configs = list(borrowed.trace_configs) or None
        session = _private_session(lent, self._transport.timeout, configs, url, owner=False)
        return session, None

    async def _let_go(
        self,
        session: aiohttp.ClientSession | None,
        guard: AsyncGenerator[None, None] | None,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        """Close our session in the loop it belongs to; an idle loop is run in a worker thread
        for it. A closed loop, or an idle one with tasks pending, cannot: one ResourceWarning."""
        if session is None or session.closed or loop is None:
            return
        if guard is None:
            session.detach()  # the connector is the lender's
        elif loop is asyncio.get_running_loop():
            await guard.aclose()  # its ``finally`` closes the session
        elif loop.is_running():
            asyncio.run_coroutine_threadsafe(guard.aclose(), loop)
        elif not loop.is_closed() and not asyncio.all_tasks(loop):
            await asyncio.to_thread(loop.run_until_complete, guard.aclose())
        else:
            state = self._state
            if not state.warned:
                state.warned = True
                warnings.warn(_IDLE_LOOP_MESSAGE, ResourceWarning, stacklevel=3)
            if loop.is_closed():
                await guard.aclose()  # marks it closed; the loop's transports keep the sockets
            else:
                asyncio.run_coroutine_threadsafe(guard.aclose(), loop)  # if that loop runs

    async def __aenter__(self) -> WachatClient:
        if self._stale():
            await self._bind()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client's own session (a borrowed one stays open); idempotent, a no-op on a
        view. Later, queued and in-flight calls raise :class:`ClientClosedError`."""
        state = self._state
        if not self._owner or state.closed:
            return
        state.closed = True
        state.slots.close()
        self._retrier.pacer.close()
        old = state.session, state.guard, state.loop
        state.session = state.guard = state.loop = None
        await self._let_go(*old)

    def __repr__(self) -> str:
        if getattr(self, "_base_url", None) is None:  # __init__ raised before it was checked
            return "<WachatClient state=unconfigured>"
        state = self._state
        opened = state.session is not None or self._borrowed is not None
        extra = ""
        proxy = state.proxy or self._proxy
        if proxy is not None:
            extra += f" proxy={proxy.display}"  # host and port only: never the credentials
        if self._trust_env:
            extra += " trust_env=True"
        if self._ssl is False:
            extra += " ssl=False"
        if not self._owner:
            extra += f" view({', '.join(self._view_options.values())})"
        shown = "closed" if state.closed else ("open" if opened else "unopened")
        return f"<WachatClient base_url={self.base_url!r} state={shown}{extra}>"

    # -- public calls ----------------------------------------------------------------------

    async def get_qr_image(self, instance_name: str) -> QRImage:
        """Fetch the instance's current QR code as a validated :class:`QRImage`; errors:
        docs/errors.md."""
        name = check_instance_name(instance_name)
        if self._stale():
            await self._bind()
        return await self._retrier.call(name, self._state.slots, self._transport.fetch_image)

    @asynccontextmanager
    async def stream_qr_image(
        self, instance_name: str, *, chunk_size: int = CHUNK_SIZE
    ) -> AsyncIterator[QRStream]:
        """Yield a :class:`QRStream` of the QR image, its status checked (and retried) first;
        leaving the block releases the connection. Details: docs/fetching.md, "Streaming"."""
        name = check_instance_name(instance_name)
        check_number(chunk_size, "chunk_size", integer=True, minimum=1)
        if self._stale():
            await self._bind()
        stream = await self._retrier.call(
            name, self._state.slots, self._transport.open_stream, chunk_size
        )
        try:
            yield stream
        finally:
            stream.close()

    async def save_qr_image(self, instance_name: str, path: PathArg) -> Path:
        """Write the QR PNG to *path* once it is whole and valid, atomically and durably (in
        place for a device or FIFO); return ``Path(path)``. Details: docs/fetching.md, "Saving"."""
        name = check_instance_name(instance_name)
        if self._stale():
            await self._bind()
        transport = self._transport
        return await write_stream(
            path,
            lambda sink: self._retrier.call(name, self._state.slots, transport.save_once, sink),
        )

    async def get_instance_state(self, instance_name: str) -> InstanceState:
        """``GET /instance/state``: whether the instance's phone is linked (``"open"``)."""
        name = check_instance_name(instance_name)
        if self._stale():
            await self._bind()
        return await self._retrier.call(name, self._state.slots, self._transport.fetch_state)

    def fetch_many(
        self,
        instance_names: Iterable[str],
        *,
        concurrency: int = 32,
        dedupe: bool = True,
        on_progress: Callable[[QRSuccess | QRFailure], object] | None = None,
    ) -> FetchMany:
        """Fetch many QR codes, *concurrency* at a time (at most the client's slots): a
        :class:`FetchMany` of a :class:`QRSuccess` or :class:`QRFailure` per name as each
        completes. Details: docs/fleets.md."""
        return fetch_many(
            self._fleet_fetch,
            instance_names,
            concurrency=self._retrier.pacer.fleet_width(concurrency, self._slot_limit),
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
        max_qrs: int | None = None,
        linking_timeout: float | None = None,
    ) -> QRWatch:
        """A :class:`QRWatch` of one instance's QR each time it changes; with *until_connected*
        it ends once the instance is linked; *max_qrs* / *linking_timeout* end it with
        :class:`QRExpiredError`. Details: docs/fleets.md, "Watching one instance"."""
        name = check_instance_name(instance_name)
        return watch_qr(
            self._fleet_fetch,
            name,
            interval=interval,
            jitter=jitter,
            get_state=self.get_instance_state if until_connected else None,
            sleep=self._retrier.sleep,
            max_backoff=max_backoff,
            max_qrs=max_qrs,
            linking_timeout=linking_timeout,
            clock=self._retrier.clock,
        )

    async def _fleet_fetch(self, name: str) -> QRImage:
        """``get_qr_image`` of a checked name for fleets: a 429 is retried once paced."""
        if self._stale():
            await self._bind()
        fetch = self._transport.fetch_image
        return await self._retrier.call(name, self._state.slots, fetch, fleet=True)

    def qr_image_url(self, instance_name: str, *, expose_api_key: bool = False) -> str:
        """The QR image URL for this client's base URL, without the key unless
        *expose_api_key* (then :class:`ApiKeyExposureWarning`): see :func:`build_qr_image_url`."""
        return _build_qr_image_url(
            instance_name,
            api_key=self._api_key if expose_api_key is True else None,
            base_url=self._base_url,
            expose_api_key=expose_api_key,
            stacklevel=2,
        )


def _env_key() -> Secret | None:
    """``WACHAT_API_KEY`` as a :class:`Secret` (the plain value never reaches the caller)."""
    value = os.environ.get("WACHAT_API_KEY")
    return None if value is None else Secret(value)


_IDLE_LOOP_MESSAGE = (
    "WachatClient: the event loop that holds this client's connections was closed (or has "
    "tasks pending and is not running), so they cannot be closed now. Close the client with "
    "'await client.aclose()' in the loop that used it, or use 'async with'; a script that runs "
    "each call with asyncio.run() needs neither"
)

_OTHER_LOOP_MESSAGE = (
    "This WachatClient is in use by an event loop that is running in another thread: a client "
    "(and its views) belongs to one running event loop at a time. Make one client per thread "
    "(or per event loop), or run every call in one loop (asyncio.run_coroutine_threadsafe)"
)


def _default_user_agent() -> str:
    return f"wachat-async/{__version__} aiohttp/{aiohttp.__version__}"


def _private_session(
    connector: aiohttp.BaseConnector,
    timeout: aiohttp.ClientTimeout,
    trace_configs: list[aiohttp.TraceConfig] | None,
    proxy: URL | None,
    *,
    owner: bool = True,
) -> aiohttp.ClientSession:
    """A session with no request defaults: no cookies, headers, auth or env."""
    return aiohttp.ClientSession(
        connector=connector,
        connector_owner=owner,
        timeout=timeout,
        cookie_jar=aiohttp.DummyCookieJar(),
        raise_for_status=False,
        auto_decompress=True,
        trust_env=False,
        trace_configs=trace_configs,
        proxy=proxy,
    )


async def _close_at_loop_end(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    """Suspended while the session's loop runs: ``asyncio.run`` finishes it (closing the
    session) before it closes the loop."""
    try:
        yield
    finally:
        await session.close()
