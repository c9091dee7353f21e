"""Concurrency soak: thousands of calls, every fault mixed at random, against one hostile server.

The mix is seeded (reproducible), bounded in count and in time, and ends with exactly one
outcome per call: the right PNG or the fault's ``WachatError``, never another exception type,
never a hang. Afterwards the pool, the tasks, the folder and the logs must be clean (``guard``).

The mix includes the faults that used to break this (a ``Retry-After`` of non-ASCII digits and
deeply nested JSON error bodies both escaped as non-``WachatError`` exceptions before 25dabca).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from wachat_async import (
    AuthenticationError,
    GatewayTimeoutError,
    InvalidImageError,
    QRFetchFailedError,
    ResponseTooLargeError,
    RetryBudget,
    RetryPolicy,
    UnexpectedStatusError,
    WachatClient,
    WachatConnectionError,
    WachatError,
    WachatTimeoutError,
)

from ._raw_server import (
    Close,
    Drip,
    Hang,
    RawServer,
    RecordedRequest,
    Reset,
    Send,
    chunked,
    gzip_bytes,
    http_response,
    make_png,
)
from .conftest import (
    KEY,
    Guard,
    assert_no_partial_files,
    assert_pool_clean,
    hostile_client,
    unread_by,
)

PNG = make_png(29, 29)
CAP = 4096
SEED = 20261125
CALLS = 2000
CONCURRENCY = 100
BOUND = 60.0  # seconds; the soak takes a few, this only turns a hang into a failure

_CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
_Expect = tuple[type[WachatError], ...] | None  # None: success


def _status(status: int, body: bytes = b"", **kwargs: Any) -> Send:
    kwargs.setdefault("content_type", "text/plain")
    return Send(http_response(status, body, **kwargs))


def _png(body: bytes = PNG, **kwargs: Any) -> Send:
    return Send(http_response(200, body, **kwargs))


_GZIP = [("Content-Encoding", "gzip")]
_CONNECTION = (WachatConnectionError,)
_IMAGE = (InvalidImageError,)
_TOO_LARGE = (ResponseTooLargeError,)
_TIMEOUT = (WachatTimeoutError,)
_STATUS = (UnexpectedStatusError,)

# fault -> (actions for a request, what the caller must get)
FAULTS: dict[str, tuple[Sequence[Any], _Expect]] = {
    "ok": ([_png()], None),
    "ok-gzip": ([_png(gzip_bytes(PNG), headers=_GZIP)], None),
    "ok-chunked": ([Send(_CHUNKED + chunked(PNG[:50], PNG[50:]))], None),
    "ok-drip": ([Drip(http_response(200, PNG), piece=64, delay=0.002)], None),
    "502-then-ok": ([], None),  # stateful, see _script
    "502": ([_status(502, b"<html>Bad Gateway</html>")], (QRFetchFailedError,)),
    "504-json": ([_status(504, json.dumps({"message": "slow"}).encode())], (GatewayTimeoutError,)),
    "502-nested-json": ([_status(502, b"[" * 50_000)], (QRFetchFailedError,)),
    "502-retry-after-superscript": (
        [_status(502, headers=[("Retry-After", "\u00b2".encode().decode("latin-1"))])],
        (QRFetchFailedError,),
    ),
    "500": ([_status(500, b"oops")], _STATUS),
    "302-elsewhere": ([_status(302, headers=[("Location", "http://127.0.0.1:9/")])], _STATUS),
    "401-echoes-key": ([_status(401, f"bad key {KEY}".encode())], (AuthenticationError,)),
    "reset-before-status": ([Reset()], _CONNECTION),
    "close-before-status": ([Close()], _CONNECTION),
    "garbage-status": ([Send(b"HTTP/1.1 ??? what\r\n\r\n"), Close()], _CONNECTION),
    "reset-mid-body": ([Send(http_response(200, PNG)[:-40]), Reset()], _IMAGE),
    "short-body": ([_png(content_length=len(PNG) + 9), Close()], _IMAGE),
    "captive-portal": ([_png(b"<html>login</html>", content_type="text/html")], _IMAGE),
    "not-png": ([_png(b"GIF89a" + bytes(40))], _IMAGE),
    "empty": ([_png(b"")], _IMAGE),
    "gzip-corrupt": ([_png(b"\x1f\x8b\x08\x00" + bytes(30), headers=_GZIP)], _IMAGE),
    "over-cap-length": ([_png(b"", content_length=10**8), Hang()], _TOO_LARGE),
    "over-cap-chunked": (
        [Send(_CHUNKED + chunked(PNG[:-12], *[bytes(1000)] * 6, end=False)), Hang()],
        _TOO_LARGE,
    ),
    "stall-headers": ([Send(b"HTTP/1.1 200 OK\r\n"), Hang()], _TIMEOUT),
    "stall-body": ([Send(http_response(200, PNG)[:-30]), Hang()], _TIMEOUT),
    # Noticed while parsing the head or while reading the body, depending on packet timing.
    "bad-chunk-mid-body": (
        [Send(_CHUNKED + chunked(PNG[:40], end=False) + b"xyz\r\n"), Close()],
        (WachatConnectionError, InvalidImageError),
    ),
}


#: How often each fault is drawn: stalls cost a read timeout each, so they are rarer.
WEIGHTS = [1 if fault.startswith("stall") else 6 for fault in FAULTS]


def _draw(rng: random.Random) -> str:
    return rng.choices(list(FAULTS), WEIGHTS)[0]


def _script() -> Callable[[RecordedRequest], Sequence[Any]]:
    """Answer each request by the fault named in its instanceName ("<n>.<fault>")."""
    seen: Counter[str] = Counter()

    def script(request: RecordedRequest) -> Sequence[Any]:
        name = request.instance_name or ""
        fault = name.partition(".")[2]
        seen[name] += 1
        if fault == "502-then-ok":
            return FAULTS["ok" if seen[name] > 1 else "502"][0]
        return FAULTS[fault][0]

    return script


def _soak_client(server: RawServer) -> WachatClient:
    # An unlimited budget keeps "502-then-ok" deterministic; the budget has its own tests. Two
    # attempts are enough to mix retries in (and keep the soak's request count near 2 per call).
    # 100 calls in flight on one loop (the server's included) on a busy machine can delay a
    # read by a good fraction of a second, so the read timeout is generous here (only the
    # stalls reach it) and the stalls are a small share of the mix (see WEIGHTS).
    return hostile_client(
        server.base_url,
        retry=RetryPolicy(zero_wait=True, max_attempts=2),
        retry_budget=RetryBudget.unlimited(),
        max_image_bytes=CAP,
        timeout=aiohttp.ClientTimeout(total=10.0, sock_connect=5.0, sock_read=3.0),
    )


def _check(outcome: object, fault: str, guard: Guard, sampled: set[object]) -> None:
    expected = FAULTS[fault][1]
    if expected is None:
        assert outcome == PNG, f"{fault}: {outcome!r}"
    else:
        assert isinstance(outcome, expected), f"{fault}: {type(outcome).__name__}: {outcome}"
        # Every error is checked; the full printed traceback once per fault and error type.
        kind = (fault, type(outcome))
        guard.exception(outcome, formatted=kind not in sampled)
        sampled.add(kind)


async def _one(client: WachatClient, mode: str, name: str, folder: Path) -> bytes:
    if mode == "get":
        return (await client.get_qr_image(name)).data
    if mode == "stream":
        async with client.stream_qr_image(name, chunk_size=100) as stream:
            return b"".join([chunk async for chunk in stream])
    return (await client.save_qr_image(name, folder / f"{name}.png")).read_bytes()


async def test_soak_mixed_faults_one_outcome_per_call(guard: Guard, tmp_path: Path) -> None:
    """2,000 calls (100 at a time) over every fault and API: one correct outcome each."""
    rng = random.Random(SEED)
    modes = ("get", "stream", "save")
    plan = [(f"{i}.{_draw(rng)}", rng.choice(modes)) for i in range(CALLS)]
    outcomes: list[list[object]] = [[] for _ in plan]
    gate = asyncio.Semaphore(CONCURRENCY)

    async def call(index: int) -> None:
        name, mode = plan[index]
        async with gate:
            try:
                outcomes[index].append(await _one(client, mode, name, tmp_path))
            except BaseException as exc:  # recorded, then judged: only WachatError may appear
                outcomes[index].append(exc)

    async with RawServer(_script()) as server, _soak_client(server) as client:
        server.peer_unread = unread_by(client)
        await asyncio.wait_for(asyncio.gather(*(call(i) for i in range(CALLS))), BOUND)
        assert_pool_clean(client)

    assert [len(o) for o in outcomes] == [1] * CALLS
    foreign = [
        (name, outcome)
        for (name, _), (outcome,) in zip(plan, outcomes, strict=True)
        if isinstance(outcome, BaseException) and not isinstance(outcome, WachatError)
    ]
    assert not foreign, f"{len(foreign)} non-WachatError outcomes, e.g. {foreign[:3]}"
    sampled: set[object] = set()
    for (name, _), (outcome,) in zip(plan, outcomes, strict=True):
        _check(outcome, name.partition(".")[2], guard, sampled)
    saved = [
        f"{name}.png"
        for (name, mode), (outcome,) in zip(plan, outcomes, strict=True)
        if mode == "save" and outcome == PNG
    ]
    assert_no_partial_files(tmp_path, allowed=saved)
    assert all(r.header("Authorization") == f"Bearer {KEY}" for r in server.requests)
    assert {name.partition(".")[2] for name, _ in plan} == set(FAULTS)  # the mix covered all


async def test_soak_fetch_many_one_result_per_name(guard: Guard) -> None:
    """fetch_many over 300 hostile instances yields exactly one right QRResult per name."""
    rng = random.Random(SEED + 1)
    # No stalls here: each costs a read timeout, and the mixed soak has them.
    faults = [fault for fault in FAULTS if not fault.startswith("stall")]
    names = [f"{i}.{rng.choice(faults)}" for i in range(300)]
    async with RawServer(_script()) as server, _soak_client(server) as client:
        server.peer_unread = unread_by(client)

        async def collect() -> list[Any]:
            return [result async for result in client.fetch_many(names, concurrency=CONCURRENCY)]

        results = await asyncio.wait_for(collect(), BOUND)
        assert_pool_clean(client)
    assert sorted(r.instance_name for r in results) == sorted(names)
    sampled: set[object] = set()
    for result in results:
        outcome = result.image.data if result.ok else result.error
        _check(outcome, result.instance_name.partition(".")[2], guard, sampled)
