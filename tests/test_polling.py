"""fetch_many (bounded fleet polling) and watch_qr (change detection), unit and end to end."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import itertools
import logging
import struct
import warnings
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import (
    KEY,
    NAME,
    assert_no_connection_checked_out,
    assert_no_key,
    endless,
    status_cases,
)
from wachat_async import (
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    GatewayTimeoutError,
    InstanceNotFoundError,
    InstanceState,
    InvalidImageError,
    InvalidInstanceNameError,
    InvalidResponseError,
    QRExpiredError,
    QRFailure,
    QRFetchFailedError,
    QRImage,
    QRNotSupportedError,
    QRResult,
    QRSuccess,
    ResponseTooLargeError,
    RetryPolicy,
    SubscriptionRestrictedError,
    UnexpectedStatusError,
    WachatClient,
    WachatConnectionError,
    WachatError,
    WachatTimeoutError,
    build_qr_image_url,
)
from wachat_async._polling import (
    MIN_INTERVAL,
    WORKER_TASK_PREFIX,
    FetchMany,
    QRWatch,
    fetch_many,
    is_transient,
    watch_qr,
    watch_wait,
)
from wachat_async._validate import check_instance_name, shown_item
from wachat_async.testing import FakeWachatServer, Fault

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow],
)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


#: A valid 1x1 greyscale PNG.
PNG = (
    b"\x89PNG\r\n\x1a\n"
    + _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    + _chunk(b"IDAT", zlib.compress(b"\x00\x00"))
    + _chunk(b"IEND", b"")
)


def image(name: str, data: bytes = PNG) -> QRImage:
    """A valid QRImage for *name*."""
    return QRImage.from_png(data, instance_name=name)


def workers() -> list[asyncio.Task[object]]:
    """The fetch_many worker tasks that exist right now."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(WORKER_TASK_PREFIX)]


def cancel_requested(task: asyncio.Task[object]) -> bool:
    """Whether *task* is done or has been asked to cancel."""
    return task.done() or task.cancelling() > 0


async def finish(tasks: list[asyncio.Task[object]]) -> None:
    """Wait for *tasks* (a hang guard, not a timing assertion)."""
    if tasks:
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)


class Recorder:
    """A fake fetch: counts calls and in-flight fetches; some names fail or hang."""

    def __init__(
        self,
        *,
        fail: dict[str, BaseException] | None = None,
        hang: set[str] | None = None,
        gates: dict[str, asyncio.Event] | None = None,
    ) -> None:
        self.calls: Counter[str] = Counter()
        self.in_flight = 0
        self.active: set[str] = set()
        self.overlaps: list[str] = []  # names fetched while already in flight (must stay empty)
        self.max_in_flight = 0
        self.max_workers = 0
        self.cancelled: list[str] = []
        self.fail = fail or {}
        self.hang = hang or set()
        self.gates = gates or {}

    async def __call__(self, name: str) -> QRImage:
        self.calls[name] += 1
        self.in_flight += 1
        if name in self.active:
            self.overlaps.append(name)
        self.active.add(name)
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.max_workers = max(self.max_workers, len(workers()))
        try:
            if name in self.gates:
                await self.gates[name].wait()
            if name in self.hang:
                await asyncio.Event().wait()
            for _ in range(3):
                await asyncio.sleep(0)
            if name in self.fail:
                raise self.fail[name]
            return image(name)
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        finally:
            self.in_flight -= 1
            self.active.discard(name)


class Names:
    """An iterable of names that counts its pulls and stops a runaway with an error.

    The guard turns "the batch spins through the iterable without yielding" into a failing
    test instead of a hung one (a held event loop cannot run a timeout).
    """

    def __init__(self, items: Iterable[object], limit: int = 200_000) -> None:
        self.items = iter(items)
        self.pulled = 0
        self.limit = limit

    def __iter__(self) -> Names:
        return self

    def __next__(self) -> object:
        self.pulled += 1
        if self.pulled > self.limit:
            raise RuntimeError(f"runaway: {self.limit} names pulled")
        return next(self.items)


# -- fetch_many: results ------------------------------------------------------------------------


async def test_one_result_per_distinct_name() -> None:
    """Duplicates are fetched once and yield one result; every distinct name gets one."""
    fetch = Recorder()
    names = ["a", "b", "a", "c", "b", "a"]
    results = [r async for r in fetch_many(fetch, names, concurrency=2)]
    assert sorted(r.instance_name for r in results) == ["a", "b", "c"]
    assert fetch.calls == Counter({"a": 1, "b": 1, "c": 1})
    assert all(r.ok and r.image is not None and r.error is None for r in results)


async def test_results_come_in_order_of_completion() -> None:
    """Results are yielded as fetches finish, not in input order."""
    gates = {name: asyncio.Event() for name in "abc"}
    fetch = Recorder(gates=gates)
    order = iter("cab")
    gates[next(order)].set()
    received = []
    async for result in fetch_many(fetch, ["a", "b", "c"], concurrency=3):
        received.append(result.instance_name)
        with contextlib.suppress(StopIteration):
            gates[next(order)].set()
    assert received == ["c", "a", "b"]


async def test_concurrency_is_bounded_by_a_fixed_set_of_workers() -> None:
    """No more than *concurrency* fetches (and worker tasks) exist at once, and it is reached."""
    fetch = Recorder()
    results = [r async for r in fetch_many(fetch, [f"n{i}" for i in range(60)], concurrency=7)]
    assert len(results) == 60
    assert fetch.max_in_flight == 7
    assert fetch.max_workers == 7


async def test_only_as_many_workers_as_names() -> None:
    """Three names at concurrency 100 start three workers, not a hundred."""
    fetch = Recorder()
    results = [r async for r in fetch_many(fetch, ["a", "b", "c"], concurrency=100)]
    assert len(results) == 3
    assert fetch.max_workers == 3


async def test_empty_names_yield_nothing() -> None:
    """An empty iterable ends at once without starting a worker."""
    fetch = Recorder()
    assert [r async for r in fetch_many(fetch, [], concurrency=4)] == []
    assert workers() == []


async def test_wachat_errors_become_results_and_the_rest_go_on() -> None:
    """A failing instance yields a result with the error; the other instances still succeed."""
    error = InstanceNotFoundError(instance_name="b")
    fetch = Recorder(fail={"b": error})
    results = {
        r.instance_name: r async for r in fetch_many(fetch, ["a", "b", "c", "d"], concurrency=2)
    }
    assert results["b"].error is error
    assert results["b"].image is None
    assert not results["b"].ok
    assert [n for n, r in sorted(results.items()) if r.ok] == ["a", "c", "d"]


async def test_names_are_pulled_lazily_from_an_endless_iterable() -> None:
    """An endless generator works: names are pulled only as workers get free."""
    pulled = 0

    def names() -> Iterator[str]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield f"n{i}"

    fetch = Recorder()
    taken = 0
    async with fetch_many(fetch, names(), concurrency=5) as results:
        async for _ in results:
            taken += 1
            if taken == 25:
                break
    # In flight (5) plus at most the queue's slots (5) beyond what was consumed.
    assert 25 <= pulled <= 25 + 5 + 5 + 1
    assert workers() == []


# -- fetch_many: never holds the loop; dedupe ---------------------------------------------------


def _duplicates_forever() -> Iterator[str]:
    """A generator that keeps yielding the same three names."""
    for i in itertools.count():
        yield f"n{i % 3}"


#: Iterables that once froze the event loop (or could): names repeat, forever or for long.
HOLDING_ITERABLES: list[object] = [
    pytest.param(lambda: itertools.cycle(["a", "b"]), id="endless-cycle"),
    pytest.param(lambda: itertools.repeat("a"), id="one-name-forever"),
    pytest.param(_duplicates_forever, id="generator-of-duplicates"),
    pytest.param(
        lambda: itertools.chain(["a"] * 50_000, itertools.cycle(["b", "c"])), id="very-long"
    ),
    pytest.param(lambda: itertools.cycle(["a", "b", "c", "d", "e", "f"]), id="repeats-in-flight"),
    pytest.param(lambda: itertools.repeat(""), id="invalid-name-forever"),
    pytest.param(lambda: itertools.repeat([]), id="unhashable-forever"),
    pytest.param(lambda: itertools.cycle([None, 7, "a", " "]), id="mixed-invalid-cycle"),
]


class InstantFetch(Recorder):
    """A fake fetch that completes without ever suspending (a cache, say)."""

    async def __call__(self, name: str) -> QRImage:
        self.calls[name] += 1
        return image(name)


@pytest.mark.parametrize("fetch_kind", [Recorder, InstantFetch], ids=["suspending", "instant"])
@pytest.mark.parametrize("dedupe", [True, False], ids=["dedupe", "no-dedupe"])
@pytest.mark.parametrize("make_names", HOLDING_ITERABLES)
async def test_no_iterable_holds_the_loop_and_cancelling_ends_it_promptly(
    make_names: Callable[[], Iterable[object]], dedupe: bool, fetch_kind: type[Recorder]
) -> None:
    """Whatever the iterable yields (and even if fetch never suspends), another task keeps
    ticking while the batch runs, and cancelling the consumer ends the batch within a few loop
    iterations."""
    names = Names(make_names())
    fetch = fetch_kind()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    async def consume() -> None:
        async for _ in fetch_many(fetch, names, concurrency=4, dedupe=dedupe):
            pass

    ticking = asyncio.create_task(ticker())
    consumer = asyncio.create_task(consume())
    while ticks < 300:
        await asyncio.sleep(0)
    assert not consumer.done()  # the batch is still running: it was interleaved, not finished
    assert names.pulled > 20  # ... and pulling
    consumer.cancel()
    iterations = 0
    while not consumer.done():
        await asyncio.sleep(0)
        iterations += 1
        assert iterations <= 10, "cancelling the consumer did not end the batch promptly"
    ticking.cancel()
    assert consumer.cancelled()
    assert workers() == []
    assert fetch.overlaps == []
    assert fetch.in_flight == 0


@pytest.mark.parametrize("concurrency", [1, 3, 8], ids=lambda c: f"concurrency-{c}")
async def test_dedupe_false_is_a_polling_loop_with_memory_bounded_by_concurrency(
    concurrency: int,
) -> None:
    """10,000 pulls of an endless cycle: every name pulled is fetched, and what is held at any
    time (workers, queued results, names in flight, names pulled but not yet yielded) never
    exceeds what concurrency allows; nothing remembers the names already seen."""
    names = Names(itertools.cycle(["a", "b", "c", "d", "e"]))
    fetch = Recorder()
    consumed: Counter[str] = Counter()
    backlog = 0
    async with fetch_many(fetch, names, concurrency=concurrency, dedupe=False) as results:
        async for result in results:
            consumed[result.instance_name] += 1
            batch = results._batch
            assert batch is not None
            assert batch.seen is None
            assert batch.running <= len(batch.tasks) <= concurrency
            assert len(batch.in_flight) <= concurrency
            assert batch.queue.qsize() <= concurrency
            backlog = max(backlog, names.pulled - consumed.total())
            if names.pulled >= 10_000:
                break
    assert backlog <= 2 * concurrency + 1
    assert consumed.total() >= 10_000 - 2 * concurrency - 1
    # Round robin: each of the five names was fetched about a fifth of the time.
    assert max(consumed.values()) - min(consumed.values()) <= 2 * concurrency + 1
    assert fetch.calls.total() <= names.pulled
    assert fetch.overlaps == []
    assert workers() == []


async def test_dedupe_false_fetches_a_repeat_again_after_the_one_in_flight() -> None:
    """A name pulled again while its fetch is in flight waits for it, then is fetched again."""
    gate = asyncio.Event()
    fetch = Recorder(gates={"a": gate})
    batch = fetch_many(fetch, ["a", "a", "a", "b"], concurrency=4, dedupe=False)
    first = asyncio.ensure_future(batch.__anext__())
    while fetch.calls["b"] == 0:
        await asyncio.sleep(0)
    for _ in range(20):
        await asyncio.sleep(0)
    assert fetch.calls == Counter({"a": 1, "b": 1})  # the repeats wait for the first "a"
    assert (await first).instance_name == "b"
    gate.set()
    rest = [r.instance_name async for r in batch]
    assert rest == ["a", "a", "a"]
    assert fetch.calls == Counter({"a": 3, "b": 1})
    assert fetch.overlaps == []
    assert fetch.max_in_flight == 2


@pytest.mark.parametrize(
    ("dedupe", "expected"),
    [
        pytest.param(True, Counter({"a": 1, "b": 1, "c": 1}), id="dedupe"),
        pytest.param(False, Counter({"a": 3, "b": 2, "c": 1}), id="no-dedupe"),
    ],
)
async def test_dedupe_decides_whether_repeats_are_fetched(
    dedupe: bool, expected: Counter[str]
) -> None:
    """dedupe=True: one result per distinct name; dedupe=False: one per name pulled."""
    fetch = Recorder()
    names = ["a", "b", "a", "c", "b", "a"]
    results = [r async for r in fetch_many(fetch, names, concurrency=3, dedupe=dedupe)]
    assert Counter(r.instance_name for r in results) == expected
    assert fetch.calls == expected
    assert fetch.overlaps == []


async def test_dedupe_true_ends_a_finite_batch_with_long_runs_of_duplicates() -> None:
    """100,000 pulls that are almost all duplicates end with one result per distinct name,
    while another task keeps being scheduled."""
    names = Names(["a", "b"] * 50_000 + ["c"])
    fetch = Recorder()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    results = [r async for r in fetch_many(fetch, names, concurrency=4)]
    ticking.cancel()
    assert sorted(r.instance_name for r in results) == ["a", "b", "c"]
    assert names.pulled == 100_001 + 1  # every name, then the StopIteration
    assert ticks >= 100_000 // (4 * 16)  # the loop ran other tasks all along


@pytest.mark.parametrize("dedupe", ["no", None, 0], ids=["str", "none", "int"])
def test_dedupe_must_be_a_bool(dedupe: object) -> None:
    """A dedupe that is not a bool is refused at call time."""
    with pytest.raises(TypeError, match="dedupe"):
        fetch_many(Recorder(), ["a"], concurrency=1, dedupe=dedupe)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dedupe", "requests"),
    [pytest.param(True, 1, id="dedupe-default"), pytest.param(False, 3, id="no-dedupe")],
)
async def test_client_fetch_many_passes_dedupe_through(
    server: FakeWachatServer, client: WachatClient, dedupe: bool, requests: int
) -> None:
    """Against the fake server: repeats are one request by default, one each with dedupe=False."""
    kwargs = {} if dedupe else {"dedupe": False}
    results = [r async for r in client.fetch_many([NAME] * 3, concurrency=3, **kwargs)]
    assert len(results) == requests
    assert all(r.ok for r in results)
    assert server.request_count(NAME, path="/instance/qr/image") == requests
    assert_no_connection_checked_out(client)


async def test_client_fetch_many_polls_an_endless_cycle(
    server: FakeWachatServer, client: WachatClient
) -> None:
    """client.fetch_many(itertools.cycle(...), dedupe=False) is a polling loop over real
    sockets: it keeps yielding fresh results until the consumer leaves."""
    other = f"{NAME}_2"
    server.add_instance(other)
    seen: Counter[str] = Counter()
    async with client.fetch_many(
        itertools.cycle([NAME, other]), concurrency=4, dedupe=False
    ) as results:
        async for result in results:
            assert result.ok
            seen[result.instance_name] += 1
            if seen.total() == 40:
                break
    assert set(seen) == {NAME, other}
    assert server.request_count(path="/instance/qr/image") >= 40
    assert workers() == []
    assert_no_connection_checked_out(client)


# -- invalid instance names ---------------------------------------------------------------------

#: Names no method may send, with what the error must say about them.
INVALID_NAMES = [
    pytest.param("", "empty", id="empty"),
    pytest.param("   ", "empty", id="spaces"),
    pytest.param("\t\n", "empty", id="tab-newline-only"),
    pytest.param("a\r\nX-Injected: 1", "control", id="crlf"),
    pytest.param("a\x00b", "control", id="null-byte"),
    pytest.param("\x1b[31mred", "control", id="ansi-escape"),
    pytest.param("a\x85b", "control", id="c1-next-line"),
    pytest.param("a\x7f", "control", id="delete"),
    pytest.param("\ud800", "Unicode", id="lone-surrogate"),
]

#: Items of an iterable of names that are not str at all.
NOT_STRINGS = [
    pytest.param(None, id="none"),
    pytest.param(42, id="int"),
    pytest.param(b"t1_abc", id="bytes"),
    pytest.param(["t1_abc"], id="unhashable-list"),
    pytest.param(object(), id="object"),
]


def assert_shown_safely(message: str, name: str) -> None:
    """*message* quotes *name* with repr and carries no raw control character."""
    assert message.isprintable()
    assert repr(name) in message


@pytest.mark.parametrize(("name", "problem"), INVALID_NAMES)
async def test_fetch_many_reports_an_invalid_name_and_goes_on(name: str, problem: str) -> None:
    """An invalid name is that name's QRFailure (InvalidInstanceNameError); the others are
    fetched, and the invalid one never reaches fetch."""
    fetch = Recorder()
    results = {r.instance_name: r async for r in fetch_many(fetch, ["a", name, "b"], concurrency=2)}
    assert sorted(results) == sorted(["a", name, "b"])
    bad = results[name]
    assert isinstance(bad, QRFailure)
    assert not bad.ok
    assert bad.image is None
    assert isinstance(bad.error, InvalidInstanceNameError)
    assert isinstance(bad.error, WachatError)
    assert isinstance(bad.error, ValueError)
    assert problem in str(bad.error)
    assert bad.error.instance_name == name
    assert_shown_safely(str(bad.error), name)
    assert results["a"].ok
    assert results["b"].ok
    assert fetch.calls == Counter({"a": 1, "b": 1})


@pytest.mark.parametrize("item", NOT_STRINGS)
@pytest.mark.parametrize("dedupe", [True, False], ids=["dedupe", "no-dedupe"])
async def test_fetch_many_reports_a_name_that_is_not_a_str(item: object, dedupe: bool) -> None:
    """None, an int, bytes, a list...: that item's QRFailure (under the very object given)
    says it must be a str; the batch goes on."""
    fetch = Recorder()
    names: list[object] = ["a", item, "b"]
    results = [
        r
        async for r in fetch_many(fetch, names, concurrency=2, dedupe=dedupe)  # type: ignore[arg-type]
    ]
    (bad,) = [r for r in results if not r.ok]
    assert bad.instance_name is item
    assert isinstance(bad.error, InvalidInstanceNameError)
    assert isinstance(bad.error, TypeError)
    assert f"must be a str, not {type(item).__name__}" in str(bad.error)
    assert bad.error.instance_name == shown_item(item)
    assert sorted(r.instance_name for r in results if r.ok) == ["a", "b"]
    assert fetch.calls == Counter({"a": 1, "b": 1})


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        pytest.param(None, None, id="none-is-none"),
        pytest.param(42, "42", id="int"),
        pytest.param(b"t1_abc", "b't1_abc'", id="bytes"),
        pytest.param(["t1_abc"], "['t1_abc']", id="list"),
    ],
)
async def test_a_non_str_names_error_instance_name_is_its_repr(
    item: object, expected: str | None
) -> None:
    """error.instance_name of a non-str item is its repr (None for None): a str like every
    other error's, the same in fetch_many as in a direct call."""
    (result,) = [r async for r in fetch_many(Recorder(), [item], concurrency=1)]  # type: ignore[list-item]
    assert result.error is not None
    assert result.error.instance_name == expected
    with pytest.raises(InvalidInstanceNameError) as direct:
        check_instance_name(item)
    assert direct.value.instance_name == expected


@pytest.mark.parametrize("dedupe", [True, False], ids=["dedupe", "no-dedupe"])
async def test_items_that_are_not_strings_are_reported_each_time(dedupe: bool) -> None:
    """A list, a dict or None is no name at all: each one the iterable gives is reported,
    with dedupe or without (only names are deduplicated)."""
    items: list[object] = [[], [], {}, None, None, "a", "a"]
    outcomes = [
        r
        async for r in fetch_many(Recorder(), items, concurrency=2, dedupe=dedupe)  # type: ignore[arg-type]
    ]
    assert len(outcomes) == (6 if dedupe else 7)
    assert [r.instance_name for r in outcomes if not r.ok] == items[:5]


async def test_an_item_whose_equality_fails_is_still_reported() -> None:
    """An unhashable item whose == raises is reported (not a crash), each time."""

    class Hostile(list[object]):
        def __eq__(self, other: object) -> bool:
            raise ValueError("no comparisons")

        __hash__ = None  # type: ignore[assignment]

    items: list[object] = [Hostile(), Hostile()]
    outcomes = [r async for r in fetch_many(Recorder(), items, concurrency=1)]  # type: ignore[arg-type]
    assert [r.instance_name for r in outcomes] == items


@pytest.mark.parametrize(
    ("dedupe", "failures"), [pytest.param(True, 1, id="dedupe"), pytest.param(False, 3, id="no")]
)
async def test_invalid_names_follow_dedupe_too(dedupe: bool, failures: int) -> None:
    """A repeated invalid name is reported once with dedupe=True, each time without it."""
    results = [
        r async for r in fetch_many(Recorder(), ["", "a", "", ""], concurrency=2, dedupe=dedupe)
    ]
    assert sum(not r.ok for r in results) == failures


async def test_invalid_names_against_the_fake_server(
    server: FakeWachatServer, client: WachatClient
) -> None:
    """client.fetch_many: invalid names become results, valid ones are fetched, and no request
    is sent for the invalid ones."""
    names: list[object] = ["", NAME, " ", None, "x\r\ny", f"{NAME}_missing"]
    results = [r async for r in client.fetch_many(names, concurrency=3)]  # type: ignore[arg-type]
    invalid = [r for r in results if isinstance(r.error, InvalidInstanceNameError)]
    assert len(invalid) == 4
    by_name = {r.instance_name: r for r in results if isinstance(r.instance_name, str)}
    assert by_name[NAME].ok
    assert isinstance(by_name[f"{NAME}_missing"].error, InstanceNotFoundError)
    assert server.request_count(path="/instance/qr/image") == 2
    assert_no_connection_checked_out(client)


def _direct_calls(client: WachatClient, name: object) -> dict[str, Callable[[], object]]:
    """Every public way to use an instance name, as zero-argument callables."""

    async def stream() -> None:
        async with client.stream_qr_image(name):  # type: ignore[arg-type]
            pass  # pragma: no cover

    return {
        "get_qr_image": lambda: client.get_qr_image(name),  # type: ignore[arg-type]
        "stream_qr_image": stream,
        "save_qr_image": lambda: client.save_qr_image(name, "never.png"),  # type: ignore[arg-type]
        "get_instance_state": lambda: client.get_instance_state(name),  # type: ignore[arg-type]
        "watch_qr": lambda: client.watch_qr(name),  # type: ignore[arg-type]
        "qr_image_url": lambda: client.qr_image_url(name),  # type: ignore[arg-type]
        "build_qr_image_url": lambda: build_qr_image_url(name),  # type: ignore[arg-type]
    }


async def _call(call: Callable[[], object]) -> None:
    outcome = call()
    if asyncio.iscoroutine(outcome):
        await outcome


METHODS = [
    "build_qr_image_url",
    "get_instance_state",
    "get_qr_image",
    "qr_image_url",
    "save_qr_image",
    "stream_qr_image",
    "watch_qr",
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("name", "problem"), INVALID_NAMES)
async def test_every_method_raises_invalid_instance_name_error(
    server: FakeWachatServer, client: WachatClient, method: str, name: str, problem: str
) -> None:
    """Each method refuses an invalid name with InvalidInstanceNameError (a WachatError, so a
    handler catching those answers cleanly, and a ValueError), before any request."""
    calls = _direct_calls(client, name)
    assert sorted(calls) == METHODS
    with pytest.raises(InvalidInstanceNameError, match=problem) as caught:
        await _call(calls[method])
    assert isinstance(caught.value, WachatError)
    assert isinstance(caught.value, ValueError)
    assert_shown_safely(str(caught.value), name)
    assert_no_key(str(caught.value), repr(caught.value))
    assert server.request_count() == 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("item", NOT_STRINGS)
async def test_every_method_raises_an_invalid_name_type_error_for_a_non_str(
    server: FakeWachatServer, client: WachatClient, method: str, item: object
) -> None:
    """A name that is not a str (None from a query string, an int, bytes...) raises an
    InvalidInstanceNameError that is also a TypeError, so both ``except WachatError`` (a clean
    4xx in a web handler) and ``except TypeError`` catch it; nothing is sent."""
    with pytest.raises(InvalidInstanceNameError, match="must be a str") as caught:
        await _call(_direct_calls(client, item)[method])
    assert isinstance(caught.value, TypeError)
    assert isinstance(caught.value, WachatError)
    assert caught.value.instance_name == shown_item(item)
    assert server.request_count() == 0


def test_a_long_invalid_name_is_shortened_in_the_message() -> None:
    """A huge invalid name does not make a huge message; the message says how long it was."""
    name = "\x00" + "x" * 100_000
    with pytest.raises(InvalidInstanceNameError) as caught:
        check_instance_name(name)
    message = str(caught.value)
    assert len(message) < 200
    assert "100001 characters" in message
    assert message.isprintable()


@FUZZ
@given(
    st.lists(st.sampled_from(["a", "b", "c", "", " ", "x\x00"]) | st.text(max_size=5), max_size=16),
    st.integers(1, 5),
    st.booleans(),
)
def test_any_text_names_give_one_outcome_each(
    names: list[str], concurrency: int, dedupe: bool
) -> None:
    """For any names: valid ones are fetched, invalid ones reported with a printable message,
    one result per distinct name (dedupe) or per name (no dedupe), never twice in flight."""

    async def run() -> tuple[list[QRSuccess | QRFailure], Recorder]:
        fetch = Recorder()
        batch = fetch_many(fetch, names, concurrency=concurrency, dedupe=dedupe)
        return [r async for r in batch], fetch

    results, fetch = asyncio.run(run())
    expected = Counter(dict.fromkeys(names, 1) if dedupe else names)
    assert Counter(r.instance_name for r in results) == expected
    for result in results:
        if _sendable(result.instance_name):
            assert result.ok
        else:
            assert isinstance(result.error, InvalidInstanceNameError)
            assert str(result.error).isprintable()
    assert fetch.calls == Counter({n: c for n, c in expected.items() if _sendable(n)})
    assert fetch.overlaps == []


def _sendable(name: str) -> bool:
    """What check_instance_name accepts, restated: not blank, no control or surrogate."""
    return bool(name.strip()) and not any(
        ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF for c in name
    )


# -- results: QRResult, QRSuccess, QRFailure ----------------------------------------------------


@pytest.mark.parametrize(
    ("make", "cls", "ok"),
    [
        pytest.param(
            lambda: QRResult(instance_name="a", image=image("a")),
            QRSuccess,
            True,
            id="qrresult-image",
        ),
        pytest.param(
            lambda: QRResult(instance_name="a", image=image("a"), error=None),
            QRSuccess,
            True,
            id="qrresult-image-error-none",
        ),
        pytest.param(
            lambda: QRResult(instance_name="a", error=InstanceNotFoundError()),
            QRFailure,
            False,
            id="qrresult-error",
        ),
        pytest.param(
            lambda: QRResult(instance_name="a", image=None, error=WachatError("x")),
            QRFailure,
            False,
            id="qrresult-error-image-none",
        ),
        pytest.param(
            lambda: QRSuccess(instance_name="a", image=image("a")), QRSuccess, True, id="qrsuccess"
        ),
        pytest.param(
            lambda: QRFailure(instance_name="a", error=WachatError("x")),
            QRFailure,
            False,
            id="qrfailure",
        ),
    ],
)
def test_constructing_a_result_builds_the_matching_subclass(
    make: Callable[[], QRResult], cls: type[QRResult], ok: bool
) -> None:
    """QRResult(...) still works and gives a QRSuccess or a QRFailure; isinstance(x, QRResult)
    holds for both; ok is a plain bool."""
    result = make()
    assert type(result) is cls
    assert isinstance(result, QRResult)
    assert result.ok is ok
    assert (result.image is not None) is ok
    assert (result.error is None) is ok


@pytest.mark.parametrize(
    ("make", "error"),
    [
        pytest.param(lambda: QRResult(instance_name="a"), ValueError, id="neither"),
        pytest.param(
            lambda: QRResult(instance_name="a", image=image("a"), error=WachatError("x")),
            ValueError,
            id="both",
        ),
        pytest.param(
            lambda: QRSuccess(instance_name="a", image=image("a"), error=WachatError("x")),
            ValueError,
            id="success-with-error",
        ),
        pytest.param(
            lambda: QRFailure(instance_name="a", error=WachatError("x"), image=image("a")),
            ValueError,
            id="failure-with-image",
        ),
        pytest.param(lambda: QRSuccess(instance_name="a"), TypeError, id="success-without-image"),
        pytest.param(lambda: QRFailure(instance_name="a"), TypeError, id="failure-without-error"),
        pytest.param(
            lambda: QRSuccess(instance_name="a", image=b"png"),
            TypeError,
            id="success-image-not-qrimage",
        ),
        pytest.param(
            lambda: QRFailure(instance_name="a", error=KeyError("x")),
            TypeError,
            id="failure-error-not-wachat",
        ),
    ],
)
def test_a_result_holds_exactly_one_of_image_and_error(
    make: Callable[[], object], error: type[Exception]
) -> None:
    """Neither, both, or the wrong kind of value is refused, so the narrowed types are true."""
    with pytest.raises(error):
        make()


def test_results_copy_evolve_and_compare_like_value_objects() -> None:
    """The subclasses are frozen attrs value objects: equal by value, hashable, copyable (the
    path pickle takes), evolvable, and frozen."""
    qr = image("a")
    success = QRResult(instance_name="a", image=qr)
    failure = QRResult(instance_name="a", error=InstanceNotFoundError(instance_name="a"))
    assert success == QRSuccess(instance_name="a", image=qr)
    assert hash(success) == hash(QRSuccess(instance_name="a", image=qr))
    assert success != failure
    assert copy.copy(success) == success
    assert copy.deepcopy(success) == success  # the __reduce_ex__ path pickle takes too
    assert type(copy.deepcopy(failure)) is QRFailure
    assert attrs.evolve(success, instance_name="b").instance_name == "b"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        success.instance_name = "c"  # type: ignore[misc]
    assert repr(failure).startswith("QRFailure(instance_name='a', image=None, error=")


async def test_fetch_many_yields_the_subclasses() -> None:
    """fetch_many results are QRSuccess / QRFailure instances (and so QRResult)."""
    fetch = Recorder(fail={"b": InstanceNotFoundError(instance_name="b")})
    results = {r.instance_name: r async for r in fetch_many(fetch, ["a", "b"], concurrency=2)}
    assert type(results["a"]) is QRSuccess
    assert type(results["b"]) is QRFailure
    assert all(isinstance(r, QRResult) for r in results.values())


# -- fetch_many: bugs propagate -----------------------------------------------------------------


async def test_a_non_wachat_exception_propagates_and_cancels_the_rest() -> None:
    """A bug in fetch is raised from the loop and the fetches still in flight are cancelled."""
    fetch = Recorder(fail={"bug": KeyError("bug")}, hang={"h1", "h2"})
    with pytest.raises(KeyError, match="bug"):
        async for _ in fetch_many(fetch, ["h1", "h2", "bug"], concurrency=3):
            pass
    assert sorted(fetch.cancelled) == ["h1", "h2"]
    assert workers() == []


async def test_an_exception_from_the_names_iterable_propagates() -> None:
    """An iterable that raises ends the batch with its exception."""

    def names() -> Iterator[str]:
        yield "a"
        raise RuntimeError("names broke")

    with pytest.raises(RuntimeError, match="names broke"):
        async for _ in fetch_many(Recorder(), names(), concurrency=1):
            pass
    assert workers() == []


async def test_an_iterable_that_fails_at_once_starts_nothing() -> None:
    """An iterable that raises on its first pull raises from __anext__ and starts no task."""

    def names() -> Iterator[str]:
        raise RuntimeError("names broke at once")
        yield "a"  # pragma: no cover

    fetch = Recorder()
    batch = fetch_many(fetch, names(), concurrency=10)
    with pytest.raises(RuntimeError, match="broke at once"):
        await batch.__anext__()
    assert workers() == []
    assert fetch.calls == Counter()
    with pytest.raises(StopAsyncIteration):
        await batch.__anext__()


async def test_an_iterable_that_fails_early_cancels_what_started() -> None:
    """An iterable that raises after two names: raised, and the fetch already started is
    cancelled, with no task left behind."""

    def names() -> Iterator[str]:
        yield "a"
        yield "b"
        raise RuntimeError("names broke early")

    fetch = Recorder(hang={"a", "b"})
    batch = fetch_many(fetch, names(), concurrency=10)
    with pytest.raises(RuntimeError, match="broke early"):
        await batch.__anext__()
    assert workers() == []
    assert fetch.in_flight == 0
    assert set(fetch.cancelled) == set(fetch.calls)


# -- fetch_many: progress ---------------------------------------------------------------------


async def test_on_progress_sees_each_result_before_it_is_yielded() -> None:
    """on_progress is called once per result, before the consumer gets it."""
    seen: list[str] = []
    consumed: list[tuple[str, int]] = []

    def on_progress(result: QRResult) -> None:
        seen.append(result.instance_name)

    async for result in fetch_many(
        Recorder(), ["a", "b", "c"], concurrency=2, on_progress=on_progress
    ):
        consumed.append((result.instance_name, len(seen)))
    assert sorted(seen) == ["a", "b", "c"]
    assert [seen.index(name) + 1 for name, _ in consumed] == [n for _, n in consumed]


async def test_an_exception_in_on_progress_propagates_and_cancels() -> None:
    """A failing progress callback ends the batch and cancels what is in flight."""

    def on_progress(result: QRResult) -> None:
        raise ZeroDivisionError("progress bar broke")

    fetch = Recorder(hang={"h"})
    with pytest.raises(ZeroDivisionError):
        async for _ in fetch_many(fetch, ["h", "a"], concurrency=2, on_progress=on_progress):
            pass
    assert fetch.cancelled == ["h"]
    assert workers() == []


# -- fetch_many: arguments ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("concurrency", "error"),
    [
        pytest.param(0, ValueError, id="zero"),
        pytest.param(-3, ValueError, id="negative"),
        pytest.param(True, TypeError, id="bool"),
        pytest.param(2.5, TypeError, id="float"),
        pytest.param("4", TypeError, id="str"),
    ],
)
def test_concurrency_is_validated_at_call_time(concurrency: object, error: type[Exception]) -> None:
    """A bad concurrency raises when fetch_many is called, before any iteration."""
    with pytest.raises(error, match="concurrency"):
        fetch_many(Recorder(), ["a"], concurrency=concurrency)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "names", [pytest.param("t1_abc", id="str"), pytest.param(b"x", id="bytes")]
)
def test_a_single_string_is_refused(names: object) -> None:
    """A lone string would be iterated letter by letter: refused with a hint."""
    with pytest.raises(TypeError, match="single"):
        fetch_many(Recorder(), names, concurrency=1)  # type: ignore[arg-type]


async def test_client_fetch_many_validates_concurrency(client: WachatClient) -> None:
    """The client method passes the check through: concurrency 0 is a ValueError."""
    with pytest.raises(ValueError, match="concurrency"):
        client.fetch_many([NAME], concurrency=0)


# -- fetch_many: life cycle -------------------------------------------------------------------


async def test_nothing_starts_until_iteration_and_aclose_before_start_is_clean() -> None:
    """Creating the iterator starts no task; aclose before iterating ends it empty."""
    fetch = Recorder()
    batch = fetch_many(fetch, ["a"], concurrency=1)
    await asyncio.sleep(0)
    assert workers() == []
    assert "not started" in repr(batch)
    await batch.aclose()
    assert [r async for r in batch] == []
    assert fetch.calls == Counter()
    assert "finished" in repr(batch)


async def test_iterating_after_the_end_stays_ended() -> None:
    """After StopAsyncIteration, the iterator keeps raising it."""
    batch = fetch_many(Recorder(), ["a"], concurrency=1)
    assert len([r async for r in batch]) == 1
    with pytest.raises(StopAsyncIteration):
        await batch.__anext__()


async def test_repr_while_running_counts_workers() -> None:
    """repr() shows the state and never the names."""
    fetch = Recorder(hang={"secret-name"})
    async with fetch_many(fetch, ["secret-name", "a"], concurrency=2) as batch:
        await batch.__anext__()
        assert repr(batch) == "<FetchMany concurrency=2 running, 1 worker(s)>"


async def test_async_with_and_break_cancels_in_flight_work() -> None:
    """Leaving the async with block after a break leaves no worker task behind."""
    fetch = Recorder(hang={"h1", "h2", "h3"})
    async with fetch_many(fetch, ["h1", "h2", "a", "h3"], concurrency=4) as results:
        async for result in results:
            assert result.instance_name == "a"
            break
    assert workers() == []
    assert sorted(fetch.cancelled) == ["h1", "h2", "h3"]


async def test_aclosing_works_too() -> None:
    """contextlib.aclosing gives the same clean exit as async with."""
    fetch = Recorder(hang={"h"})
    async with contextlib.aclosing(fetch_many(fetch, ["h", "a"], concurrency=2)) as results:
        async for _ in results:
            break
    assert workers() == []
    assert fetch.cancelled == ["h"]


async def test_a_plain_break_cancels_the_workers_at_once() -> None:
    """Without async with, dropping the iterator on break cancels its workers right away."""
    fetch = Recorder(hang={"h1", "h2"})
    running: list[asyncio.Task[object]] = []
    async for _ in fetch_many(fetch, ["h1", "h2", "a"], concurrency=3):
        running = workers()
        break
    assert len(running) == 2  # the worker that fetched "a" ran out of names and ended
    assert all(cancel_requested(t) for t in running)
    await finish(running)
    assert sorted(fetch.cancelled) == ["h1", "h2"]


async def test_cancelling_the_consumer_cancels_the_batch() -> None:
    """When the consuming task is cancelled, its fetches are cancelled and awaited with it."""
    fetch = Recorder(hang={"h1", "h2"})
    got_one = asyncio.Event()
    running: list[asyncio.Task[object]] = []

    async def consume() -> None:
        nonlocal running
        async for _ in fetch_many(fetch, ["h1", "a", "h2"], concurrency=3):
            running = workers()
            got_one.set()

    consumer = asyncio.create_task(consume())
    await got_one.wait()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert running
    assert all(t.done() for t in running)
    assert sorted(fetch.cancelled) == ["h1", "h2"]


def _wait_for_next(results: FetchMany) -> Awaitable[object]:
    """``asyncio.wait_for(anext(results), ...)`` with a tiny timeout, for a result that never
    comes (a timeout of 0 would cancel the ``__anext__`` before it even started)."""
    return asyncio.wait_for(results.__anext__(), timeout=0.01)


@pytest.mark.parametrize(
    "how",
    [
        pytest.param("wait_for", id="wait-for-timeout"),
        pytest.param("cancel", id="task-cancelled"),
    ],
)
async def test_a_cancelled_pending_anext_never_passes_for_the_end_of_the_batch(how: str) -> None:
    """Once a pending __anext__ was cancelled (wait_for timed out, or its task was cancelled),
    the batch is cancelled and every later __anext__ raises RuntimeError saying so: a batch
    cut short is never mistaken for a complete one."""
    fetch = Recorder(hang={"slow"})
    results = fetch_many(fetch, ["slow", "a", "b"], concurrency=1)
    if how == "wait_for":
        with pytest.raises(asyncio.TimeoutError):
            await _wait_for_next(results)
    else:
        pending = asyncio.ensure_future(results.__anext__())
        while not fetch.calls:
            await asyncio.sleep(0)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
    assert fetch.cancelled == ["slow"]
    assert workers() == []
    assert "cancelled" in repr(results)
    for _ in range(2):  # every later call, not only the next one
        with pytest.raises(RuntimeError, match="cancelled while waiting for a result") as info:
            await results.__anext__()
        assert "asyncio.timeout" in str(info.value)
    with pytest.raises(RuntimeError, match="cancelled"):
        async for _ in results:
            pass  # pragma: no cover
    await results.aclose()  # leaving an ``async with`` afterwards is still quiet


async def test_a_batch_closed_normally_still_ends_quietly() -> None:
    """aclose() (leaving ``async with``) is not a cancellation: later iteration just ends."""
    results = fetch_many(Recorder(), ["a", "b"], concurrency=1)
    await results.__anext__()
    await results.aclose()
    assert [r async for r in results] == []


@pytest.mark.parametrize("dedupe", [True, False], ids=["dedupe", "no-dedupe"])
async def test_a_closed_client_ends_the_batch_with_client_closed_error(dedupe: bool) -> None:
    """A fetch that raises ClientClosedError (the client was closed) is not a per-name result:
    the results already done are yielded, then the loop raises it and the fetches still in
    flight are cancelled, even for an endless iterable."""
    closed = ClientClosedError("WachatClient is closed")
    fetch = Recorder(fail={"closed": closed}, hang={"h"})
    names = itertools.chain(["a", "h", "closed"], endless(["x", "y"]))
    got: list[str] = []

    async def consume() -> None:
        async for result in fetch_many(fetch, names, concurrency=3, dedupe=dedupe):
            got.append(result.instance_name)

    with pytest.raises(ClientClosedError) as info:
        await consume()
    assert info.value is closed
    assert "a" in got
    assert "closed" not in got
    assert "h" in fetch.cancelled
    assert workers() == []


# -- fetch_many against the fake server ---------------------------------------------------------


async def test_fleet_of_2000_with_502s_and_404s() -> None:
    """2,000 names, concurrency 100, 5% 502s, 1% 404s: 2,000 right results, no leak, no warning."""
    names = [f"t1_{i:08d}_fleet_{i}" for i in range(2000)]
    missing = set(names[7::100])  # 20 names (1%) the server does not know: 404
    flaky = [n for n in names[3::20] if n not in missing]  # 100 names (5%) that answer 502
    exhausted = set(flaky[::10])  # 10 of them answer 502 more often than the retries allow
    progress: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with FakeWachatServer(api_key=KEY, qr_rotation=None) as server:
            server.add_instances(n for n in names if n not in missing)
            for name in flaky:
                server.script(name, [502] * (4 if name in exhausted else 1))
            async with WachatClient(
                api_key=KEY, base_url=server.base_url, retry=RetryPolicy(zero_wait=True)
            ) as client:
                results = [
                    r
                    async for r in client.fetch_many(
                        names,
                        concurrency=100,
                        on_progress=lambda r: progress.append(r.instance_name),
                    )
                ]
                assert_no_connection_checked_out(client)
                assert client.retry_budget.refused == 0
            assert server.request_count(path="/instance/qr/image") == 2000 + 90 + 30
        gc.collect()
    assert len(results) == 2000
    assert len(progress) == 2000
    by_name = {r.instance_name: r for r in results}
    assert set(by_name) == set(names)
    failures = {n: type(r.error) for n, r in by_name.items() if r.error is not None}
    assert failures == {
        **dict.fromkeys(missing, InstanceNotFoundError),
        **dict.fromkeys(exhausted, QRFetchFailedError),
    }
    assert all(by_name[n].error.attempts == 4 for n in exhausted)  # type: ignore[union-attr]
    assert all(by_name[n].ok for n in flaky if n not in exhausted)
    assert [str(w.message) for w in caught] == []


async def test_break_with_hanging_requests_releases_every_connection(
    server: FakeWachatServer, client: WachatClient
) -> None:
    """Requests that would hang are cancelled on leaving the block; their connections go."""
    hanging = [f"{NAME}_hang{i}" for i in range(5)]
    for name in hanging:
        server.script(name, [Fault(hang=True)])
    async with client.fetch_many([*hanging, NAME], concurrency=6) as results:  # type: ignore[attr-defined]
        async for result in results:
            assert result.instance_name == NAME
            break
    assert workers() == []
    assert_no_connection_checked_out(client)


async def test_plain_break_against_the_server_releases_connections(
    server: FakeWachatServer, client: WachatClient
) -> None:
    """A plain break (no async with) also ends with every connection back."""
    hanging = [f"{NAME}_hang{i}" for i in range(3)]
    for name in hanging:
        server.script(name, [Fault(hang=True)])
    running: list[asyncio.Task[object]] = []
    async for _ in client.fetch_many([*hanging, NAME], concurrency=4):
        running = workers()
        break
    assert len(running) == 3
    await finish(running)
    assert all(task.cancelled() for task in running)
    assert_no_connection_checked_out(client)


async def test_cancelled_consumer_releases_connections(
    server: FakeWachatServer, client: WachatClient
) -> None:
    """Cancelling the consumer mid-fleet leaves no task and no connection behind."""
    hanging = [f"{NAME}_hang{i}" for i in range(3)]
    for name in hanging:
        server.script(name, [Fault(hang=True)])
    got_one = asyncio.Event()

    async def consume() -> None:
        async for _ in client.fetch_many([*hanging, NAME], concurrency=4):
            got_one.set()

    consumer = asyncio.create_task(consume())
    await got_one.wait()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert workers() == []
    assert_no_connection_checked_out(client)


# -- is_transient -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        pytest.param(QRFetchFailedError(), True, id="502"),
        pytest.param(GatewayTimeoutError(), True, id="504"),
        pytest.param(UnexpectedStatusError(status=503), True, id="503"),
        pytest.param(UnexpectedStatusError(status=429), True, id="429"),
        pytest.param(WachatConnectionError("reset"), True, id="connection"),
        pytest.param(WachatTimeoutError("slow"), True, id="timeout"),
        pytest.param(InvalidImageError("cut", truncated=True), True, id="truncated-png"),
        pytest.param(BadRequestError(), False, id="400"),
        pytest.param(AuthenticationError(), False, id="401"),
        pytest.param(SubscriptionRestrictedError(), False, id="403"),
        pytest.param(InstanceNotFoundError(), False, id="404"),
        pytest.param(QRNotSupportedError(), False, id="409"),
        pytest.param(UnexpectedStatusError(status=418), False, id="418"),
        pytest.param(InvalidImageError("html"), False, id="not-a-png"),
        pytest.param(ResponseTooLargeError("big", limit=64), False, id="too-large"),
        pytest.param(InvalidResponseError("no state"), False, id="bad-state-body"),
    ],
)
def test_is_transient(error: WachatError, transient: bool) -> None:
    """Only failures that may go away by themselves are transient."""
    assert is_transient(error) is transient


# -- watch_qr -----------------------------------------------------------------------------------


class Clock:
    """A fake sleep: records the waits and runs an action before selected rounds."""

    def __init__(self, actions: dict[int, object] | None = None) -> None:
        self.waits: list[float] = []
        self.actions = actions or {}

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        action = self.actions.get(len(self.waits))
        if callable(action):
            action()


@pytest.fixture
async def still_server() -> AsyncIterator[FakeWachatServer]:
    """A fake server whose QR codes change only when a test rotates them."""
    async with FakeWachatServer(api_key=KEY, qr_rotation=None) as fake:
        fake.add_instance(NAME)
        yield fake


@pytest.fixture
async def still_client(still_server: FakeWachatServer) -> AsyncIterator[WachatClient]:
    """A zero-wait client bound to still_server."""
    async with WachatClient(
        api_key=KEY, base_url=still_server.base_url, retry=RetryPolicy(zero_wait=True)
    ) as wachat:
        yield wachat
        assert_no_connection_checked_out(wachat)


async def collect(watch: AsyncIterator[QRImage], count: int) -> list[QRImage]:
    """The first *count* images of *watch* (then closes it)."""
    images = []
    async for qr in watch:
        images.append(qr)
        if len(images) == count:
            break
    await watch.aclose()  # type: ignore[attr-defined]
    return images


async def test_watch_yields_only_when_the_qr_changes(
    still_server: FakeWachatServer, still_client: WachatClient
) -> None:
    """Unchanged polls yield nothing; each rotation yields the new QR once."""
    payloads = [still_server.qr_payload(NAME)]

    def rotate() -> None:
        payloads.append(still_server.rotate_qr(NAME))

    clock = Clock({3: rotate, 5: rotate})
    watch = watch_qr(
        still_client.get_qr_image, NAME, interval=2.0, jitter=0.0, get_state=None, sleep=clock
    )
    images = await collect(watch, 3)
    assert len({qr.sha256 for qr in images}) == 3
    assert len(payloads) == 3
    # Rounds 1-3 see the first QR, rounds 4-5 the second, round 6 the third.
    assert still_server.request_count(NAME) == 6
    assert clock.waits == [2.0] * 5


async def test_watch_sleeps_interval_with_jitter() -> None:
    """Each wait is interval * rand(1 - jitter, 1 + jitter)."""
    calls: list[tuple[float, float]] = []

    def rand(low: float, high: float) -> float:
        calls.append((low, high))
        return high

    clock = Clock()
    fetch = Recorder()
    watch = watch_qr(fetch, "a", interval=10.0, jitter=0.25, get_state=None, sleep=clock, rand=rand)
    first = await watch.__anext__()
    assert first.instance_name == "a"
    rounds = asyncio.ensure_future(watch.__anext__())  # same image forever: never yields
    while len(clock.waits) < 3:
        await asyncio.sleep(0)
    rounds.cancel()
    with pytest.raises(asyncio.CancelledError):
        await rounds
    assert calls[:3] == [(0.75, 1.25)] * 3
    assert clock.waits[:3] == [12.5] * 3


async def test_default_jitter_stays_within_bounds() -> None:
    """With the real random source, waits stay within interval * (1 +- jitter)."""
    clock = Clock()
    watch = watch_qr(Recorder(), "a", interval=1.0, jitter=0.1, get_state=None, sleep=clock)
    await watch.__anext__()
    rounds = asyncio.ensure_future(watch.__anext__())
    while len(clock.waits) < 50:
        await asyncio.sleep(0)
    rounds.cancel()
    with pytest.raises(asyncio.CancelledError):
        await rounds
    assert all(0.9 <= w <= 1.1 for w in clock.waits)


async def test_watch_until_connected_ends_cleanly(
    still_server: FakeWachatServer, still_client: WachatClient
) -> None:
    """With until_connected, the watch ends (no error) once the state turns "open"."""
    images = []
    async for qr in still_client.watch_qr(NAME, interval=1.0, until_connected=True):
        images.append(qr)
        still_server.rotate_qr(NAME)
        if len(images) == 2:
            still_server.set_state(NAME, "open")
    assert len(images) == 2
    assert still_server.request_count(NAME, path="/instance/state") == 3
    assert still_server.request_count(NAME, path="/instance/qr/image") == 2


async def test_watch_of_a_connected_instance_yields_nothing(
    still_server: FakeWachatServer, still_client: WachatClient
) -> None:
    """An instance that is already linked ends the watch before any QR is fetched."""
    still_server.set_state(NAME, "open")
    assert [qr async for qr in still_client.watch_qr(NAME, until_connected=True)] == []
    assert still_server.request_count(NAME, path="/instance/qr/image") == 0


async def test_unknown_states_keep_the_watch_going(
    still_server: FakeWachatServer, still_client: WachatClient
) -> None:
    """A state the library does not know ("qr-pending") is not connected: watching goes on."""
    still_server.set_state(NAME, "qr-pending")
    images = await collect(still_client.watch_qr(NAME, until_connected=True), 1)
    assert len(images) == 1


async def test_transient_errors_are_logged_and_watching_goes_on(
    still_server: FakeWachatServer,
    still_client: WachatClient,
    all_logs: pytest.LogCaptureFixture,
) -> None:
    """502s beyond the retry policy are logged as a warning; the next change is still yielded."""
    clock = Clock(
        {
            1: lambda: still_server.script(NAME, [502] * 4),  # round 2 fails after 4 attempts
            2: lambda: still_server.rotate_qr(NAME),
        }
    )
    watch = watch_qr(
        still_client.get_qr_image, NAME, interval=1.0, jitter=0.0, get_state=None, sleep=clock
    )
    images = await collect(watch, 2)
    assert len({qr.sha256 for qr in images}) == 2
    warned = [r for r in all_logs.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert warned[0].name == "wachat_async"
    assert "transient failure 1 in a row (502)" in warned[0].getMessage()
    assert NAME in warned[0].getMessage()
    assert_no_key(*(r.getMessage() for r in all_logs.records))


@pytest.mark.parametrize(
    ("status", "error"),
    status_cases(400, 403, 404, 409, 418),
)
async def test_terminal_errors_end_the_watch(
    still_server: FakeWachatServer,
    still_client: WachatClient,
    status: int,
    error: type[WachatError],
) -> None:
    """A terminal status raises its typed error out of the async for, after one attempt."""
    images: list[QRImage] = []

    async def watch() -> None:
        async for qr in still_client.watch_qr(NAME, interval=1.0):
            images.append(qr)
            still_server.script(NAME, [status])

    with pytest.raises(error) as caught:
        await watch()
    assert len(images) == 1
    assert caught.value.attempts == 1


async def test_a_wrong_key_ends_the_watch(still_server: FakeWachatServer) -> None:
    """401 (wrong key) is terminal, and its message does not carry the key."""
    async with WachatClient(
        api_key="wrong-" + KEY, base_url=still_server.base_url, retry=RetryPolicy(zero_wait=True)
    ) as wrong:
        with pytest.raises(AuthenticationError) as caught:
            async for _ in wrong.watch_qr(NAME):
                pass
    assert_no_key(str(caught.value), repr(caught.value))


async def test_state_check_errors_are_classified_too() -> None:
    """A transient error from the state check is logged; a terminal one is raised."""
    states = iter([WachatTimeoutError("slow"), InstanceState(instance_name="a", state="close")])
    terminal = AuthenticationError()

    async def get_state(name: str) -> InstanceState:
        item = next(states, terminal)
        if isinstance(item, BaseException):
            raise item
        return item

    clock = Clock()
    watch = watch_qr(Recorder(), "a", interval=1.0, jitter=0.0, get_state=get_state, sleep=clock)
    with pytest.raises(AuthenticationError):
        async for _ in watch:
            pass
    # Round 1: state timed out (logged, so the wait doubles). Round 2: state "close", QR
    # yielded (back to the interval). Round 3: 401.
    assert clock.waits == [2.0, 1.0]


@pytest.mark.parametrize(
    ("interval", "jitter", "error"),
    [
        pytest.param(0, 0.1, ValueError, id="zero-interval"),
        pytest.param(-1.0, 0.1, ValueError, id="negative-interval"),
        pytest.param(float("nan"), 0.1, ValueError, id="nan-interval"),
        pytest.param(float("inf"), 0.1, ValueError, id="inf-interval"),
        pytest.param(1.0, -0.1, ValueError, id="negative-jitter"),
        pytest.param(1.0, 1.0, ValueError, id="jitter-one"),
        pytest.param(1.0, float("nan"), ValueError, id="nan-jitter"),
        pytest.param("5", 0.1, TypeError, id="str-interval"),
        pytest.param(1.0, True, TypeError, id="bool-jitter"),
    ],
)
def test_watch_arguments_are_validated_at_call_time(
    interval: float, jitter: float, error: type[Exception]
) -> None:
    """Bad interval/jitter raise when watch_qr is called, not at the first iteration."""
    with pytest.raises(error):
        watch_qr(Recorder(), "a", interval=interval, jitter=jitter, get_state=None, sleep=Clock())


def test_client_watch_qr_validates_at_call_time() -> None:
    """The client method checks its arguments (and the name) without a running loop."""
    client = WachatClient(api_key=KEY, base_url="http://127.0.0.1:9/api/v1")
    with pytest.raises(ValueError, match="interval"):
        client.watch_qr(NAME, interval=0)
    with pytest.raises(ValueError, match="empty"):
        client.watch_qr("  ")


def test_fetch_many_is_public_as_a_type() -> None:
    """fetch_many returns the FetchMany iterator/context manager."""
    assert isinstance(fetch_many(Recorder(), [], concurrency=1), FetchMany)


async def test_failure_count_restarts_after_a_success(all_logs: pytest.LogCaptureFixture) -> None:
    """The "N in a row" of the watch's warnings counts consecutive failures only."""
    white = PNG.replace(
        _chunk(b"IDAT", zlib.compress(b"\x00\x00")), _chunk(b"IDAT", zlib.compress(b"\x00\xff"))
    )
    outcomes: list[QRImage | WachatError] = [
        WachatConnectionError("reset"),
        image(NAME),
        WachatTimeoutError("slow"),
        WachatTimeoutError("slow"),
        image(NAME, white),
    ]

    async def fetch(name: str) -> QRImage:
        outcome = outcomes.pop(0)
        if isinstance(outcome, WachatError):
            raise outcome
        return outcome

    watch = watch_qr(fetch, NAME, interval=1.0, jitter=0.0, get_state=None, sleep=Clock())
    assert len({qr.sha256 for qr in await collect(watch, 2)}) == 2
    warnings = [r.getMessage() for r in all_logs.records if r.levelno == logging.WARNING]
    counts = [[n for n in "123" if f"failure {n} in a row" in m] for m in warnings]
    assert counts == [["1"], ["1"], ["2"]]


# -- watch_qr: the QR's life (minimum interval, backoff, counters) ------------------------------


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        pytest.param(0.001, 1.0, id="tiny"),
        pytest.param(0.5, 1.0, id="half-second"),
        pytest.param(1.0, 1.0, id="floor"),
        pytest.param(3.0, 3.0, id="above-floor"),
    ],
)
async def test_watch_never_polls_faster_than_once_a_second(
    interval: float, expected: float
) -> None:
    """An interval under MIN_INTERVAL (1 s) is raised to it, jitter included."""
    clock = Clock()
    watch = watch_qr(Recorder(), "a", interval=interval, jitter=0.5, get_state=None, sleep=clock)
    assert watch.interval == expected
    await watch.__anext__()
    rounds = asyncio.ensure_future(watch.__anext__())
    while len(clock.waits) < 30:
        await asyncio.sleep(0)
    rounds.cancel()
    with pytest.raises(asyncio.CancelledError):
        await rounds
    assert MIN_INTERVAL == 1.0
    assert min(clock.waits) >= MIN_INTERVAL
    assert max(clock.waits) <= expected * 1.5


@pytest.mark.parametrize(
    ("interval", "failures", "cap", "expected"),
    [
        pytest.param(2.0, 0, 60.0, 2.0, id="success-is-the-interval"),
        pytest.param(2.0, 1, 60.0, 4.0, id="one-failure-doubles"),
        pytest.param(2.0, 4, 60.0, 32.0, id="four-failures"),
        pytest.param(2.0, 5, 60.0, 60.0, id="capped"),
        pytest.param(2.0, 10**6, 60.0, 60.0, id="endless-outage-no-overflow"),
        pytest.param(0.1, 1, 60.0, 2.0, id="floor-before-doubling"),
        pytest.param(90.0, 3, 60.0, 90.0, id="cap-never-below-interval"),
        pytest.param(1.0, 3, 0.5, 1.0, id="cap-never-below-floor"),
    ],
)
def test_watch_wait_backs_off_exponentially_up_to_the_cap(
    interval: float, failures: int, cap: float, expected: float
) -> None:
    """watch_wait doubles per failure in a row from max(interval, 1 s), capped at max_backoff."""
    assert watch_wait(interval, failures, cap) == expected


async def test_consecutive_transient_failures_back_off_then_recover() -> None:
    """Each transient failure in a row doubles the wait up to max_backoff; a success resets it."""
    outcomes: list[QRImage | WachatError] = [
        *(WachatConnectionError("down") for _ in range(6)),
        image("a"),
        WachatConnectionError("down"),
    ]

    async def fetch(name: str) -> QRImage:
        await asyncio.sleep(0)  # the fake sleep never suspends: let the test's loop run
        outcome = outcomes.pop(0) if outcomes else image("a")
        if isinstance(outcome, WachatError):
            raise outcome
        return outcome

    clock = Clock()
    watch = watch_qr(
        fetch, "a", interval=1.0, jitter=0.0, get_state=None, sleep=clock, max_backoff=10.0
    )
    first = await watch.__anext__()
    assert (watch.shown, watch.polls, watch.failures, watch.latest) == (1, 7, 0, first)
    rounds = asyncio.ensure_future(watch.__anext__())
    while len(clock.waits) < 9:
        await asyncio.sleep(0)
    rounds.cancel()
    with pytest.raises(asyncio.CancelledError):
        await rounds
    assert clock.waits[:9] == [2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 1.0, 2.0, 1.0]


async def test_watch_counts_the_qr_codes_shown(
    still_server: FakeWachatServer, still_client: WachatClient
) -> None:
    """QRWatch.shown is the number of different QR codes seen; connected says why it ended."""
    shown = []
    async with still_client.watch_qr(NAME, interval=1.0, until_connected=True) as watch:
        assert isinstance(watch, QRWatch)
        assert (watch.shown, watch.latest, watch.connected) == (0, None, False)
        async for qr in watch:
            shown.append(watch.shown)
            assert watch.latest is qr
            still_server.rotate_qr(NAME)
            if watch.shown == 3:
                still_server.set_state(NAME, "open")
    assert shown == [1, 2, 3]
    assert watch.connected is True
    assert watch.polls == still_server.request_count(NAME, path="/instance/qr/image") == 3
    assert "shown=3" in repr(watch)
    assert "connected" in repr(watch)
    assert_no_key(repr(watch))


async def test_watch_closed_early_is_not_connected(
    still_server: FakeWachatServer, still_client: WachatClient
) -> None:
    """Leaving the async with block stops the watch; connected stays False; aclose is idempotent."""
    async with still_client.watch_qr(NAME, until_connected=True) as watch:
        async for _ in watch:
            break
    await watch.aclose()
    assert (watch.shown, watch.connected) == (1, False)
    with pytest.raises(StopAsyncIteration):
        await watch.__anext__()


async def _consume(watch: QRWatch) -> list[QRImage]:
    return [qr async for qr in watch]


async def test_aclose_from_another_task_cancels_the_request_in_flight(
    still_server: FakeWachatServer, still_client: WachatClient
) -> None:
    """A stop button: aclose() from another task, while the consumer waits on a request that
    hangs, cancels that request and ends the consumer's ``async for``; nothing more is sent."""
    still_server.script(NAME, [200, Fault(hang=True)])
    watch = still_client.watch_qr(NAME)
    consumer = asyncio.create_task(_consume(watch))
    while still_server.request_count(NAME) < 2:  # the second request reached the server
        await asyncio.sleep(0)
    await watch.aclose()
    images = await consumer  # the loop ended: no exception
    for _ in range(20):
        await asyncio.sleep(0)
    assert (len(images), watch.shown, watch.polls) == (1, 1, 2)
    assert still_server.request_count(NAME) == 2
    assert_no_connection_checked_out(still_client)
    await watch.aclose()  # idempotent


async def test_aclose_from_another_task_ends_the_wait_between_polls(
    still_server: FakeWachatServer, still_client: WachatClient
) -> None:
    """aclose() from another task during the wait before the next poll ends the watch there."""
    waiting = asyncio.Event()

    async def sleep(seconds: float) -> None:
        waiting.set()
        await asyncio.Event().wait()  # never ends by itself

    watch = watch_qr(
        still_client.get_qr_image, NAME, interval=1.0, jitter=0.0, get_state=None, sleep=sleep
    )
    consumer = asyncio.create_task(_consume(watch))
    await waiting.wait()
    await watch.aclose()
    assert len(await consumer) == 1
    assert (watch.polls, still_server.request_count(NAME)) == (1, 1)


async def test_a_cancelled_consumer_stays_cancelled_when_aclose_comes_too(
    still_server: FakeWachatServer, still_client: WachatClient
) -> None:
    """Only aclose() turns the cancelled round into the end of the loop: a consumer that was
    cancelled itself still gets its CancelledError."""
    still_server.script(NAME, [200, Fault(hang=True)])
    watch = still_client.watch_qr(NAME)
    consumer = asyncio.create_task(_consume(watch))
    while still_server.request_count(NAME) < 2:
        await asyncio.sleep(0)
    consumer.cancel()
    await watch.aclose()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert_no_connection_checked_out(still_client)


@pytest.mark.parametrize("when", ["before-iterating", "after-the-end"])
async def test_aclose_before_iterating_or_after_the_end_is_quiet(
    still_server: FakeWachatServer, still_client: WachatClient, when: str
) -> None:
    """aclose() before the first __anext__ (nothing is sent) or after the watch ended
    (connected) is quiet, and idempotent; iterating afterwards yields nothing."""
    watch = still_client.watch_qr(NAME, until_connected=True)
    if when == "after-the-end":
        still_server.set_state(NAME, "open")
        assert await _consume(watch) == []
        assert watch.connected
    await watch.aclose()
    await watch.aclose()
    assert await _consume(watch) == []
    assert still_server.request_count(NAME, path="/instance/qr/image") == 0


@pytest.mark.parametrize(
    ("max_backoff", "error"),
    [
        pytest.param(0, ValueError, id="zero"),
        pytest.param(-1.0, ValueError, id="negative"),
        pytest.param(float("inf"), ValueError, id="inf"),
        pytest.param(float("nan"), ValueError, id="nan"),
        pytest.param("60", TypeError, id="str"),
        pytest.param(True, TypeError, id="bool"),
    ],
)
def test_watch_max_backoff_is_validated_at_call_time(
    max_backoff: float, error: type[Exception]
) -> None:
    """A bad max_backoff raises when watch_qr is called (client method included)."""
    client = WachatClient(api_key=KEY, base_url="http://127.0.0.1:9/api/v1")
    with pytest.raises(error, match="max_backoff"):
        client.watch_qr(NAME, max_backoff=max_backoff)


# -- watch_qr limits: max_qrs and linking_timeout ------------------------------------------------


@pytest.mark.parametrize(
    "max_qrs", [pytest.param(1, id="max-qrs-1"), pytest.param(3, id="max-qrs-3")]
)
async def test_max_qrs_ends_the_watch_when_the_last_qr_is_replaced(
    still_server: FakeWachatServer, still_client: WachatClient, max_qrs: int
) -> None:
    """The consumer gets max_qrs QRs; the poll that sees the next one raises, nothing follows."""
    watch = still_client.watch_qr(NAME, max_qrs=max_qrs)
    images = []

    async def consume() -> None:
        async for qr in watch:
            images.append(qr)
            still_server.rotate_qr(NAME)

    with pytest.raises(
        QRExpiredError, match=rf"after {max_qrs} QR code.*start a new watch"
    ) as info:
        await consume()
    assert len({qr.sha256 for qr in images}) == max_qrs
    assert (info.value.qrs_shown, info.value.instance_name) == (max_qrs, NAME)
    assert info.value.elapsed >= 0
    assert still_server.request_count(NAME) == max_qrs + 1
    with pytest.raises(StopAsyncIteration):
        await watch.__anext__()
    await watch.aclose()
    assert still_server.request_count(NAME) == max_qrs + 1


async def test_the_last_qr_allowed_is_watched_until_it_is_replaced(
    still_server: FakeWachatServer, still_client: WachatClient
) -> None:
    """With max_qrs=1 the watch keeps polling the one QR (it can still be scanned) until it
    rotates: polls 1-3 see it, poll 4 sees its successor and raises."""
    clock = Clock({3: lambda: still_server.rotate_qr(NAME)})
    watch = watch_qr(
        still_client.get_qr_image,
        NAME,
        interval=1.0,
        jitter=0.0,
        get_state=None,
        sleep=clock,
        max_qrs=1,
    )
    assert (await watch.__anext__()).instance_name == NAME
    with pytest.raises(QRExpiredError):
        await watch.__anext__()
    assert still_server.request_count(NAME) == 4
    assert watch.shown == 1


async def test_linked_before_the_limit_ends_cleanly(
    still_server: FakeWachatServer, still_client: WachatClient
) -> None:
    """A phone linked while the last QR allowed is on show ends the watch with no error."""
    watch = still_client.watch_qr(NAME, until_connected=True, max_qrs=2, linking_timeout=600)
    images = []
    async for qr in watch:
        images.append(qr)
        still_server.rotate_qr(NAME)
        if len(images) == 2:
            still_server.set_state(NAME, "open")
    assert len(images) == 2
    assert watch.connected


class Ticks:
    """A fake clock reading *values* in turn, then the last one for ever."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def __call__(self) -> float:
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]


async def forever(seconds: float) -> None:
    """A wait between polls that never ends by itself."""
    await asyncio.Event().wait()


@pytest.mark.parametrize(
    ("first_poll", "sleep", "readings", "requests"),
    [
        # Readings: the start, the time left before round 1, before round 2, then the error's.
        pytest.param(200, forever, (0.0, 0.0, 10 - 1e-6, 10.0), 1, id="during-the-wait"),
        pytest.param(200, Clock(), (0.0, 0.0, 10.0), 1, id="before-a-round"),
    ],
)
async def test_linking_timeout_cancels_what_is_running_and_sends_nothing_more(
    still_server: FakeWachatServer,
    still_client: WachatClient,
    first_poll: int | Fault,
    sleep: Callable[[float], Awaitable[None]],
    readings: tuple[float, ...],
    requests: int,
) -> None:
    """linking_timeout, on the watch's clock, bounds a wait or a round that has not started:
    QRExpiredError, no connection left, no request after it."""
    still_server.script(NAME, [first_poll])
    watch = watch_qr(
        still_client.get_qr_image,
        NAME,
        interval=1.0,
        jitter=0.0,
        get_state=None,
        sleep=sleep,
        linking_timeout=10,
        clock=Ticks(*readings),
    )
    with pytest.raises(QRExpiredError, match="/ 10 s; start a new watch") as info:
        async for _ in watch:
            pass
    assert info.value.elapsed == 10.0
    assert info.value.qrs_shown == (0 if isinstance(first_poll, Fault) else 1)
    await watch.aclose()
    assert still_server.request_count(NAME) == requests


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        pytest.param({"max_qrs": 0}, ValueError, id="zero-max-qrs"),
        pytest.param({"max_qrs": -3}, ValueError, id="negative-max-qrs"),
        pytest.param({"max_qrs": 1.5}, TypeError, id="float-max-qrs"),
        pytest.param({"max_qrs": True}, TypeError, id="bool-max-qrs"),
        pytest.param({"linking_timeout": 0}, ValueError, id="zero-linking-timeout"),
        pytest.param({"linking_timeout": -1.0}, ValueError, id="negative-linking-timeout"),
        pytest.param({"linking_timeout": float("nan")}, ValueError, id="nan-linking-timeout"),
        pytest.param({"linking_timeout": float("inf")}, ValueError, id="inf-linking-timeout"),
        pytest.param({"linking_timeout": "60"}, TypeError, id="str-linking-timeout"),
    ],
)
def test_watch_limits_are_validated_at_call_time(
    arguments: dict[str, object], error: type[Exception]
) -> None:
    """Bad limits raise when watch_qr is called, naming the argument."""
    client = WachatClient(api_key=KEY, base_url="http://127.0.0.1:9/api/v1")
    with pytest.raises(error, match=next(iter(arguments))):
        client.watch_qr(NAME, **arguments)  # type: ignore[arg-type]


async def test_linking_timeout_cancels_a_poll_in_flight() -> None:
    """A poll that outlives linking_timeout is cancelled and the watch expires."""
    fetch = Recorder(hang={"a"})
    watch = watch_qr(
        fetch,
        "a",
        interval=1.0,
        jitter=0.0,
        get_state=None,
        sleep=Clock(),
        linking_timeout=10,
        clock=Ticks(0.0, 10 - 1e-6, 12.5),
    )
    with pytest.raises(QRExpiredError, match=r"after 0 QR code.*/ 12 s") as info:
        await watch.__anext__()
    assert (info.value.qrs_shown, info.value.elapsed) == (0, 12.5)
    assert (fetch.calls["a"], fetch.cancelled, fetch.in_flight) == (1, ["a"], 0)
