"""Shared checks for the hostile suite: every case must leave nothing behind and leak nothing.

The ``guard`` fixture records the tasks alive before a test and, after it, asserts that no task
is left pending, that ``gc.collect()`` raises no ``ResourceWarning`` (unclosed transports,
sessions, clients), that no log record (any logger, DEBUG and up) contains the API key and that
asyncio logged no error ("Task exception was never retrieved", "Unclosed ..."). Tests hand it
every exception they see (``guard.exception(exc)``) and every client (``guard.client(client)``)
for the per-object checks.
"""

from __future__ import annotations

import array
import asyncio
import gc
import html
import json
import logging
import re
import sys
import traceback
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote

import aiohttp
import pytest

from wachat_async import RetryPolicy, WachatClient

#: A distinctive key with characters that change under URL-encoding ('/', '+', '=').
KEY = "wk_live_H0st1le/Key+7f3a9c1e=5b2d"
#: The key's first characters and a fragment from its middle, so a partly printed key is
#: caught too (a key cut short by an excerpt shows its start).
KEY_PARTS = (KEY[:8], "7f3a9c1e")
#: Forms of the key that count as a leak, compared case-insensitively: the key as sent,
#: URL-encoded, JSON-escaped (also PHP's "\/" and "\uXXXX" for what is not a letter or
#: digit), HTML-escaped (entities, decimal and hex references), and its parts. Beyond these,
#: :func:`leaked` also looks in the text with those encodings undone.
LEAK_FORMS = tuple(
    dict.fromkeys(
        (
            KEY,
            quote(KEY, safe=""),
            quote_plus(KEY),
            json.dumps(KEY)[1:-1],
            KEY.replace("/", "\\/"),
            "".join(c if c.isalnum() else f"\\u{ord(c):04x}" for c in KEY),
            html.escape(KEY),
            "".join(c if c.isalnum() else f"&#{ord(c)};" for c in KEY),
            "".join(c if c.isalnum() else f"&#x{ord(c):x};" for c in KEY),
            *KEY_PARTS,
        )
    )
)
_BACKSLASH_ESCAPE = re.compile(r"\\+(?:u\{?([0-9a-fA-F]{4,6})\}?|x([0-9a-fA-F]{2})|([^\\]))")
NAME = "t1_hostile_store"

#: Small per-attempt limits so a stall becomes a timeout after 0.3 s, not 15 s. Loopback answers
#: take well under a millisecond, so 0.3 s is only reached by a real stall (or a machine so
#: overloaded that the test process is off the CPU for that long).
FAST_TIMEOUT = aiohttp.ClientTimeout(total=3.0, sock_connect=1.0, sock_read=0.3)


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1) or match.group(2)
    return chr(int(code, 16)) if code else match.group(3)


def decoded(text: str) -> str:
    """*text* with backslash escapes (JSON, JavaScript, Python), HTML references and
    percent-encoding undone, twice over (an encoding inside an encoding)."""
    for _ in range(2):
        text = unquote(html.unescape(_BACKSLASH_ESCAPE.sub(_unescape, text)))
    return text


def leaked(text: str) -> str | None:
    """The leak form found in *text* (case-insensitive), or in *text* decoded, or None."""
    folded = text.casefold()
    found = next((form for form in LEAK_FORMS if form.casefold() in folded), None)
    if found is None:
        plain = decoded(text).casefold()
        forms = (KEY, *KEY_PARTS)
        found = next((f"{form} (encoded)" for form in forms if form.casefold() in plain), None)
    return found


def assert_clean_text(text: str, where: str) -> None:
    """Fail if *text* holds the key, or cannot be written out as UTF-8 (a lone surrogate from
    a hostile header would crash a log handler or a terminal)."""
    form = leaked(text)
    assert form is None, f"API key ({form!r}) leaked into {where}: {text[:300]!r}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # pragma: no cover - only on failure
        pytest.fail(f"{where} is not UTF-8 encodable ({exc.reason}): {text[:300]!r}")


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """*exc* and every exception reachable through ``__cause__``/``__context__``/groups."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
        todo += list(getattr(current, "exceptions", ()))


def exception_texts(exc: BaseException, *, formatted: bool = True) -> Iterator[tuple[str, str]]:
    """(where, text) for everything a user or a log could see of *exc* and its chain (and, if
    *formatted*, the whole traceback as printed)."""
    if formatted:
        yield "formatted traceback", "".join(traceback.format_exception(exc))
    for link in exception_chain(exc):
        label = type(link).__name__
        yield f"str({label})", str(link)
        yield f"repr({label})", repr(link)
        for i, arg in enumerate(link.args):
            yield f"{label}.args[{i}]", repr(arg)
        for note in getattr(link, "__notes__", ()):
            yield f"{label}.__notes__", str(note)
        for attr, value in vars(link).items():
            yield f"{label}.{attr}", f"{value!s} {value!r}"


def assert_clean_exception(exc: BaseException, *, formatted: bool = True) -> None:
    """No form of the key anywhere in *exc*, its chain, notes, attributes or traceback."""
    for where, text in exception_texts(exc, formatted=formatted):
        assert_clean_text(text, where)


def record_texts(record: logging.LogRecord) -> Iterable[str]:
    """Everything a handler could write for *record*."""
    yield logging.Formatter("%(name)s %(levelname)s %(message)s").format(record)
    yield repr(record.args)
    yield from (f"{v!s}" for v in vars(record).values())


def assert_pool_clean(client: WachatClient) -> None:
    """No connection of the client's own pool is checked out."""
    session = client._state.session
    if session is None:
        return
    connector = session.connector
    assert isinstance(connector, aiohttp.BaseConnector)
    assert not connector._acquired, f"{len(connector._acquired)} connection(s) checked out"


def client_sockets(client: WachatClient) -> Iterator[Any]:
    """The sockets of *client*'s pool: checked out, then idle."""
    session = client._state.session
    if session is None or session.connector is None:
        return
    connector = session.connector
    protocols = list(connector._acquired)
    protocols += [proto for conns in connector._conns.values() for proto, _ in conns]
    for protocol in protocols:
        transport = getattr(protocol, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None and sock.fileno() >= 0:
            yield sock


def unread_bytes(sock: Any) -> int:
    """Bytes the kernel holds for *sock* that its owner has not read yet (``FIONREAD``; 0
    where that ioctl does not exist, i.e. Windows, where resets are then not synchronised)."""
    try:
        import fcntl
        import termios
    except ImportError:  # pragma: no cover - not POSIX
        return 0
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    return count[0]


def unread_by(client: WachatClient) -> Callable[[int], int | None]:
    """A ``RawServer.peer_unread`` probe: bytes waiting unread in *client*'s socket whose local
    port is the one given, None if the client has no such connection."""

    def probe(port: int) -> int | None:
        for sock in client_sockets(client):
            if sock.getsockname()[1] == port:
                return unread_bytes(sock)
        return None

    return probe


def assert_no_partial_files(folder: Path, *, allowed: Iterable[str] = ()) -> None:
    """*folder* holds nothing but the *allowed* names (no ``.part`` or temp files)."""
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(allowed), f"unexpected files left in {folder}: {names}"


def hostile_client(base_url: str, **kwargs: Any) -> WachatClient:
    """A client for a hostile server: the test KEY, short timeouts, zero-wait retries."""
    kwargs.setdefault("timeout", FAST_TIMEOUT)
    kwargs.setdefault("retry", RetryPolicy(zero_wait=True))
    return WachatClient(api_key=KEY, base_url=base_url, **kwargs)


class Guard:
    """Collects what a test saw; the fixture checks it all at teardown."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.exceptions: list[BaseException] = []

    def exception(self, exc: BaseException, *, formatted: bool = True) -> None:
        """Check *exc* now (and keep it for the teardown report). Formatting the traceback is
        the slow part; a test checking thousands of alike errors may do it for a sample."""
        assert_clean_exception(exc, formatted=formatted)
        self.exceptions.append(exc)

    def text(self, text: str, where: str) -> None:
        """Check some output (CLI stdout/stderr, a repr) now."""
        assert_clean_text(text, where)

    def logs(self) -> None:
        """No log record holds the key; asyncio logged no error."""
        for record in self.caplog.records:
            for text in record_texts(record):
                assert_clean_text(text, f"log record {record.name}:{record.levelname}")
        asyncio_errors = [
            r.getMessage()
            for r in self.caplog.records
            if r.name.startswith("asyncio") and r.levelno >= logging.WARNING
        ]
        assert not asyncio_errors, f"asyncio complained: {asyncio_errors}"


async def settle(baseline: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """Give the loop a few turns (bounded) and return tasks alive that were not in *baseline*."""
    me = asyncio.current_task()
    extra: set[asyncio.Task[Any]] = set()
    for _ in range(50):
        extra = {t for t in asyncio.all_tasks() if t is not me and t not in baseline}
        if not extra:
            break
        await asyncio.sleep(0.001)
    return extra


def collect_garbage() -> list[str]:
    """Run gc and return every warning and unraisable exception it produced."""
    problems: list[str] = []
    old_hook = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        problems.append(f"unraisable: {unraisable.exc_value!r} in {unraisable.object!r}")

    sys.unraisablehook = hook
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
            gc.collect()
    finally:
        sys.unraisablehook = old_hook
    problems += [f"{w.category.__name__}: {w.message}" for w in caught]
    return problems


@pytest.fixture(scope="package", autouse=True)
def _frozen_heap() -> Iterator[None]:
    """Freeze the objects alive before this package runs, so the per-test ``gc.collect()``
    scans only what the test made (a full collection of the whole test session's heap, twice
    per case, would dominate the suite's run time). Garbage left by earlier test files is
    collected first, and whatever it complains about is theirs, not this package's."""
    collect_garbage()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture
async def guard(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Guard]:
    """Resource and secret checks around one hostile test (see the module docstring)."""
    caplog.set_level(logging.DEBUG)
    baseline = set(asyncio.all_tasks())
    checker = Guard(caplog)
    yield checker
    leftover = await settle(baseline)
    assert not leftover, f"tasks left pending: {leftover}"
    problems = collect_garbage()
    assert not problems, f"resource problems after the test: {problems}"
    gc.freeze()  # what survives is not this test's garbage: the next test scans only its own
    checker.logs()
