"""The connection queue (``_slots.py``): FIFO slots, cancellation, closing, sizing."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wachat_async import ClientClosedError
from wachat_async._slots import ConnectionQueue, queue_limit, slot_wait


async def settle(turns: int = 20) -> None:
    """Let every task that can run, run (no real sleeping: loop turns only)."""
    for _ in range(turns):
        await asyncio.sleep(0)


class Users:
    """Tasks that each take a slot, hold it until told to let go, then give it back."""

    def __init__(self, queue: ConnectionQueue) -> None:
        self.queue = queue
        self.acquired: list[int] = []  # in the order they got their slot
        self.queued: list[int] = []  # those that found no free slot, in the order they asked
        self.holding: set[int] = set()
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.done: dict[int, asyncio.Event] = {}

    def start(self, i: int) -> None:
        self.done[i] = asyncio.Event()
        self.tasks[i] = asyncio.create_task(self._user(i))

    async def _user(self, i: int) -> None:
        if self.queue.locked():
            self.queued.append(i)
        await self.queue.acquire()
        self.acquired.append(i)
        self.holding.add(i)
        try:
            await self.done[i].wait()
        finally:
            self.holding.discard(i)
            self.queue.release()


async def test_a_free_slot_is_taken_without_suspending() -> None:
    """acquire() with a slot free returns without yielding to the loop; the last one taken
    locks the queue, and a release unlocks it."""
    queue = ConnectionQueue(2)
    other_ran: list[bool] = []
    asyncio.get_running_loop().call_soon(other_ran.append, True)
    await queue.acquire()
    assert (other_ran, queue.in_use, queue.locked()) == ([], 1, False)
    await queue.acquire()
    assert (queue.in_use, queue.locked()) == (2, True)
    queue.release()
    assert (queue.in_use, queue.locked()) == (1, False)


async def test_no_limit_never_locks() -> None:
    """ConnectionQueue(None) never makes a call wait."""
    queue = ConnectionQueue(None)
    for _ in range(10_000):
        await queue.acquire()
    assert (queue.in_use, queue.locked()) == (10_000, False)


async def test_waiters_are_served_first_in_first_out() -> None:
    """With one slot, queued callers get it in the order they asked, whatever releases it."""
    queue = ConnectionQueue(1)
    users = Users(queue)
    for i in range(5):
        users.start(i)
        await settle()
    assert queue.waiting == 4
    for i in range(5):
        assert users.holding == {i}
        users.done[i].set()
        await settle()
    assert users.acquired == [0, 1, 2, 3, 4]
    assert (queue.in_use, queue.waiting) == (0, 0)


async def test_a_newcomer_cannot_overtake_a_woken_waiter() -> None:
    """Between a release and the woken waiter running, the slot is not free for anyone else."""
    queue = ConnectionQueue(1)
    await queue.acquire()
    waiter = asyncio.create_task(queue.acquire())
    await settle()
    queue.release()  # handed to the waiter, which has not run yet
    assert queue.locked()
    newcomer = asyncio.create_task(queue.acquire())
    await waiter
    await settle()
    assert (newcomer.done(), queue.in_use, queue.waiting) == (False, 1, 1)
    queue.release()
    await newcomer
    queue.release()
    assert (queue.in_use, queue.locked()) == (0, False)


async def test_cancelled_while_waiting_leaves_the_queue() -> None:
    """A waiter cancelled in the queue is gone from it; the next one gets the slot."""
    queue = ConnectionQueue(1)
    users = Users(queue)
    for i in range(3):
        users.start(i)
    await settle()
    assert queue.waiting == 2
    users.tasks[1].cancel()
    await settle()
    assert queue.waiting == 1
    users.done[0].set()
    await settle()
    assert users.holding == {2}
    users.done[2].set()
    await settle()
    assert users.acquired == [0, 2]
    assert (queue.in_use, queue.waiting) == (0, 0)
    assert users.tasks[1].cancelled()


async def test_a_release_right_after_a_cancel_skips_the_cancelled_waiter() -> None:
    """Released in the same turn a waiter is cancelled (before it could leave the queue): the
    slot goes to the next live waiter, without error."""
    queue = ConnectionQueue(1)
    await queue.acquire()
    cancelled = asyncio.create_task(queue.acquire())
    served = asyncio.create_task(queue.acquire())
    await settle()
    cancelled.cancel()
    queue.release()  # the cancelled waiter is still first in the queue
    await served
    await settle()
    assert cancelled.cancelled()
    assert (queue.in_use, queue.waiting) == (1, 0)


@pytest.mark.parametrize("queued_behind", [0, 1, 3], ids=["alone", "one-behind", "three-behind"])
async def test_cancelled_after_being_handed_a_slot_passes_it_on(queued_behind: int) -> None:
    """A waiter handed the slot but cancelled before it ran gives it to the next waiter, or back
    to the queue: the slot is never lost."""
    queue = ConnectionQueue(1)
    await queue.acquire()
    first = asyncio.create_task(queue.acquire())
    await settle()
    users = Users(queue)
    for i in range(queued_behind):
        users.start(i)
    await settle()
    queue.release()  # hands the slot to `first`...
    first.cancel()  # ...which is cancelled before it could run
    await settle()
    assert first.cancelled()
    if queued_behind:
        assert users.holding == {0}
        for i in range(queued_behind):
            users.done[i].set()
            await settle()
        assert users.acquired == list(range(queued_behind))
    assert (queue.in_use, queue.waiting, queue.locked()) == (0, 0, False)


async def test_a_wait_cancelled_at_its_deadline_is_marked_and_keeps_no_slot() -> None:
    """asyncio.timeout around a waiting acquire: TimeoutError whose cancellation carries how
    many slots were held (the retry loop says the deadline was spent queueing), and the slot
    count is intact."""
    queue = ConnectionQueue(2)
    await queue.acquire()
    await queue.acquire()
    with pytest.raises(TimeoutError) as info:
        async with asyncio.timeout(0):
            await queue.acquire()
    assert slot_wait(info.value) == 2
    assert (queue.in_use, queue.waiting) == (2, 0)


def test_repr_shows_the_counts() -> None:
    """repr() gives the limit, the slots in use and the number waiting."""
    assert repr(ConnectionQueue(3)) == "<ConnectionQueue limit=3 in_use=0 waiting=0>"


_ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("start"), st.just(0)),
        st.tuples(st.just("finish"), st.integers(0, 30)),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
        st.tuples(st.just("turn"), st.integers(1, 3)),
    ),
    max_size=50,
)


@settings(max_examples=150, deadline=None)
@given(limit=st.integers(1, 3), actions=_ACTIONS)
def test_random_interleavings_keep_the_count_and_the_order(
    limit: int, actions: list[tuple[str, int]]
) -> None:
    """Any mix of arrivals, releases, cancellations (waiting, holding, or just woken) and loop
    turns: never more holders than slots, queued callers served in arrival order, and once
    everything settles every slot is free again."""

    async def scenario() -> None:
        queue = ConnectionQueue(limit)
        users = Users(queue)
        for action, arg in actions:
            if action == "start":
                users.start(len(users.tasks))
            elif action == "finish" and users.tasks:
                users.done[arg % len(users.tasks)].set()
            elif action == "cancel" and users.tasks:
                users.tasks[arg % len(users.tasks)].cancel()
            elif action == "turn":
                for _ in range(arg):
                    await asyncio.sleep(0)
            assert queue.in_use == len(users.holding) <= limit
        await settle()
        served = [i for i in users.acquired if i in users.queued]
        assert served == [i for i in users.queued if i in served]
        for event in users.done.values():
            event.set()
        await settle()
        assert (queue.in_use, queue.waiting, queue.locked(), users.holding) == (0, 0, False, set())

    asyncio.run(scenario())


# -- closing ------------------------------------------------------------------------------


async def test_a_closed_queue_refuses_at_once_and_sends_nothing() -> None:
    """acquire() on a closed queue raises ClientClosedError (attempts=0), even with slots free;
    closing twice is harmless."""
    queue = ConnectionQueue(2)
    queue.close()
    queue.close()
    with pytest.raises(ClientClosedError, match="is closed") as info:
        await queue.acquire()
    assert (info.value.attempts, queue.in_use) == (0, 0)


@pytest.mark.parametrize("waiting", [1, 3], ids=["one-waiter", "three-waiters"])
async def test_close_wakes_every_waiter_at_once_and_each_refuses(waiting: int) -> None:
    """Calls queued when the queue closes are all woken in one loop turn and refused (nothing
    sent); the holder gives its slot back afterwards."""
    queue = ConnectionQueue(1)
    await queue.acquire()
    waiters = [asyncio.create_task(queue.acquire()) for _ in range(waiting)]
    await settle()
    assert queue.waiting == waiting
    queue.close()
    await settle()
    assert all(w.done() for w in waiters), "close() left a waiter waiting"
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert [type(r) for r in results] == [ClientClosedError] * waiting
    assert all("while this call waited" in str(r) for r in results)
    queue.release()  # the holder finishes after the close
    assert (queue.in_use, queue.waiting) == (0, 0)


async def test_a_waiter_woken_by_close_then_cancelled_is_cancelled() -> None:
    """Cancelled after close() woke it (before it ran): it ends cancelled, holding nothing."""
    queue = ConnectionQueue(1)
    await queue.acquire()
    waiter = asyncio.create_task(queue.acquire())
    await settle()
    queue.close()
    waiter.cancel()
    await settle()
    assert waiter.cancelled()
    queue.release()
    assert (queue.in_use, queue.waiting) == (0, 0)


def test_close_with_a_waiter_of_a_loop_that_has_ended_does_not_raise() -> None:
    """A waiter left in a loop that is closed now cannot be woken, and that is not an error."""
    queue = ConnectionQueue(1)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(queue.acquire())
    task = loop.create_task(queue.acquire())
    loop.run_until_complete(asyncio.sleep(0))  # the task is now waiting
    loop.close()
    queue.close()
    assert queue.closed
    task._log_destroy_pending = False  # type: ignore[attr-defined]  # its loop is gone


# -- sizing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("connector", "expected"),
    [
        pytest.param({"limit": 7, "limit_per_host": 0}, 7, id="limit"),
        pytest.param({"limit": 0, "limit_per_host": 3}, 3, id="limit-per-host"),
        pytest.param({"limit": 5, "limit_per_host": 2}, 2, id="both"),
        pytest.param({"limit": 0, "limit_per_host": 0}, None, id="unlimited"),
    ],
)
async def test_a_borrowed_session_sizes_the_queue_from_its_connector(
    connector: dict[str, int], expected: int | None
) -> None:
    """The connector's limit and limit_per_host, the smaller one that is set (0: no limit);
    max_connections does not apply to a borrowed session."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(**connector)) as session:
        assert queue_limit(100, session) == expected


async def test_the_queue_size_is_max_connections_without_a_session_and_none_for_a_closed_one() -> (
    None
):
    """The client's own session: max_connections. A closed borrowed session has no connector
    (the client refuses it when it binds): no limit, rather than an error here."""
    session = aiohttp.ClientSession()
    await session.close()
    assert (queue_limit(9, None), queue_limit(9, session)) == (9, None)
