"""Slots, the connection queue's semaphore: fast path, FIFO order, cancellation (_slots.py)."""

from __future__ import annotations

import asyncio
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wachat_async import ClientClosedError
from wachat_async._client import _ConnectionQueue
from wachat_async._retry import slot_wait
from wachat_async._slots import Slots


async def settle(turns: int = 20) -> None:
    """Let every task that can run, run (no real sleeping: loop turns only)."""
    for _ in range(turns):
        await asyncio.sleep(0)


class Users:
    """Tasks that each take a slot, hold it until told to let go, then give it back."""

    def __init__(self, slots: Slots) -> None:
        self.slots = slots
        self.acquired: list[int] = []  # in the order they got their slot
        self.queued: list[int] = []  # those that found no free slot, in the order they asked
        self.holding: set[int] = set()
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.done: dict[int, asyncio.Event] = {}

    def start(self, i: int, *, fast: bool = True) -> None:
        self.done[i] = asyncio.Event()
        self.tasks[i] = asyncio.create_task(self._user(i, fast))

    async def _user(self, i: int, fast: bool) -> None:
        if self.slots.free == 0:
            self.queued.append(i)
        if not (fast and self.slots.try_acquire()):
            await self.slots.acquire()
        self.acquired.append(i)
        self.holding.add(i)
        try:
            await self.done[i].wait()
        finally:
            self.holding.discard(i)
            self.slots.release()


def test_a_free_slot_is_taken_without_waiting() -> None:
    """try_acquire takes free slots down to zero, then refuses; release gives one back."""
    slots = Slots(2)
    assert [slots.try_acquire(), slots.try_acquire(), slots.try_acquire()] == [True, True, False]
    assert (slots.free, slots.locked()) == (0, True)
    slots.release()
    assert (slots.free, slots.locked()) == (1, False)


async def test_acquire_with_a_free_slot_does_not_suspend() -> None:
    """acquire() on a free slot returns without yielding to the loop."""
    slots = Slots(1)
    other_ran: list[bool] = []
    asyncio.get_running_loop().call_soon(other_ran.append, True)
    await slots.acquire()
    assert (other_ran, slots.free) == ([], 0)


def test_release_with_no_waiters_and_no_holder_is_refused() -> None:
    """One release too many raises ValueError instead of creating a slot."""
    slots = Slots(1)
    with pytest.raises(ValueError, match="more often"):
        slots.release()
    assert slots.free == 1


@pytest.mark.parametrize(
    "limit",
    [
        pytest.param(0, id="zero"),
        pytest.param(-1, id="negative"),
        pytest.param(True, id="bool"),
        pytest.param(1.5, id="float"),
        pytest.param("2", id="str"),
    ],
)
def test_bad_limits_are_refused(limit: object) -> None:
    """A limit must be an int >= 1 (or None)."""
    with pytest.raises(ValueError, match="limit"):
        Slots(limit)  # type: ignore[arg-type]


def test_no_limit_means_effectively_unlimited() -> None:
    """Slots(None) never runs out in practice."""
    slots = Slots(None)
    assert all(slots.try_acquire() for _ in range(10_000))
    assert slots.free == sys.maxsize - 10_000


async def test_waiters_are_served_first_in_first_out() -> None:
    """With one slot, queued callers get it in the order they asked, whatever releases it."""
    slots = Slots(1)
    users = Users(slots)
    for i in range(5):
        users.start(i)
        await settle()
    for i in range(5):
        assert users.holding == {i}
        users.done[i].set()
        await settle()
    assert users.acquired == [0, 1, 2, 3, 4]
    assert (slots.free, slots.waiting) == (1, 0)


async def test_a_newcomer_cannot_overtake_a_woken_waiter() -> None:
    """Between a release and the woken waiter running, the slot is not free for anyone else."""
    slots = Slots(1)
    assert slots.try_acquire()
    waiter = asyncio.create_task(slots.acquire())
    await settle()
    slots.release()  # handed to the waiter, which has not run yet
    assert (slots.free, slots.try_acquire()) == (0, False)
    await waiter
    assert slots.free == 0
    slots.release()
    assert slots.free == 1


async def test_cancelled_while_waiting_leaves_the_queue() -> None:
    """A waiter cancelled in the queue is gone from it; the next one gets the slot."""
    slots = Slots(1)
    users = Users(slots)
    for i in range(3):
        users.start(i)
    await settle()
    assert slots.waiting == 2
    users.tasks[1].cancel()
    await settle()
    assert slots.waiting == 1
    users.done[0].set()
    await settle()
    assert users.holding == {2}
    users.done[2].set()
    await settle()
    assert users.acquired == [0, 2]
    assert (slots.free, slots.waiting) == (1, 0)
    assert users.tasks[1].cancelled()


async def test_a_release_right_after_a_cancel_skips_the_cancelled_waiter() -> None:
    """Released in the same turn a waiter is cancelled (before it could leave the queue): the
    slot goes to the next live waiter, without error."""
    slots = Slots(1)
    assert slots.try_acquire()
    cancelled = asyncio.create_task(slots.acquire())
    served = asyncio.create_task(slots.acquire())
    await settle()
    cancelled.cancel()
    slots.release()  # the cancelled waiter is still first in the queue
    await served
    await settle()
    assert cancelled.cancelled()
    assert (slots.free, slots.waiting) == (0, 0)
    slots.release()
    assert slots.free == 1


@pytest.mark.parametrize("kind", [Slots, _ConnectionQueue], ids=["slots", "connection-queue"])
@pytest.mark.parametrize("queued_behind", [0, 1, 3], ids=["alone", "one-behind", "three-behind"])
async def test_cancelled_after_being_handed_a_slot_passes_it_on(
    kind: type[Slots], queued_behind: int
) -> None:
    """A waiter handed the slot but cancelled before it ran gives it to the next waiter, or back
    to free: the slot is never lost."""
    slots = kind(1)
    assert slots.try_acquire()
    first = asyncio.create_task(slots.acquire())
    await settle()
    users = Users(slots)
    for i in range(queued_behind):
        users.start(i)
    await settle()
    slots.release()  # hands the slot to `first`...
    first.cancel()  # ...which is cancelled before it could run
    await settle()
    assert first.cancelled()
    if queued_behind:
        assert users.holding == {0}
        for i in range(queued_behind):
            users.done[i].set()
            await settle()
        assert users.acquired == list(range(queued_behind))
    assert (slots.free, slots.waiting) == (1, 0)


async def test_a_waiter_cancelled_at_its_deadline_does_not_keep_a_slot() -> None:
    """asyncio.timeout around a waiting acquire: TimeoutError, and the slot count is intact."""
    slots = Slots(1)
    assert slots.try_acquire()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0):
            await slots.acquire()
    slots.release()
    assert (slots.free, slots.waiting) == (1, 0)


def test_repr_shows_the_counts() -> None:
    """repr() gives free, limit and the number waiting."""
    assert repr(Slots(3)) == "<Slots free=3 limit=3 waiting=0>"


_ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("start"), st.booleans()),
        st.tuples(st.just("finish"), st.integers(0, 30)),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
        st.tuples(st.just("turn"), st.integers(1, 3)),
    ),
    max_size=50,
)


@pytest.mark.parametrize("kind", [Slots, _ConnectionQueue], ids=["slots", "connection-queue"])
@settings(max_examples=150, deadline=None)
@given(limit=st.integers(1, 3), actions=_ACTIONS)
def test_random_interleavings_keep_the_count_and_the_order(
    kind: type[Slots], limit: int, actions: list[tuple[str, object]]
) -> None:
    """Any mix of arrivals, releases, cancellations (waiting, holding, or just woken) and loop
    turns: never more holders than slots, queued callers served in arrival order, and once
    everything settles every slot is free again."""

    async def scenario() -> None:
        slots = kind(limit)
        users = Users(slots)
        for action, arg in actions:
            if action == "start":
                users.start(len(users.tasks), fast=bool(arg))
            elif action == "finish" and users.tasks:
                users.done[int(arg) % len(users.tasks)].set()
            elif action == "cancel" and users.tasks:
                users.tasks[int(arg) % len(users.tasks)].cancel()
            elif action == "turn":
                for _ in range(int(arg)):
                    await asyncio.sleep(0)
            assert len(users.holding) + slots.free <= limit
        await settle()
        assert len(users.holding) + slots.free == limit  # quiet: every slot held or free
        served = [i for i in users.acquired if i in users.queued]
        assert served == [i for i in users.queued if i in served]
        for event in users.done.values():
            event.set()
        await settle()
        assert (slots.free, slots.waiting, users.holding) == (limit, 0, set())

    asyncio.run(scenario())


# -- the client's connection queue: Slots that can be closed (wachat_async/_client.py) -------


async def test_a_closed_queue_refuses_at_once_and_sends_nothing() -> None:
    """acquire() on a closed queue raises ClientClosedError (attempts=0), even with slots free;
    closing twice is harmless."""
    queue = _ConnectionQueue(2)
    queue.close()
    queue.close()
    with pytest.raises(ClientClosedError, match="is closed") as info:
        await queue.acquire()
    assert (info.value.attempts, queue.free) == (0, 2)


@pytest.mark.parametrize("waiting", [1, 3], ids=["one-waiter", "three-waiters"])
async def test_close_wakes_every_waiter_and_each_refuses(waiting: int) -> None:
    """Calls queued when the queue closes are all woken and refused (nothing sent); the holders
    that give their slots back afterwards never over-release."""
    queue = _ConnectionQueue(1)
    assert queue.try_acquire()
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
    assert (queue.free, queue.waiting, queue.in_use) == (1, 0, 0)


async def test_a_waiter_woken_by_close_then_cancelled_gives_back_nothing() -> None:
    """Cancelled after close() woke it (before it ran): it held no slot, so it releases none."""
    queue = _ConnectionQueue(1)
    assert queue.try_acquire()
    waiter = asyncio.create_task(queue.acquire())
    await settle()
    queue.close()
    waiter.cancel()
    await settle()
    assert waiter.cancelled()
    queue.release()
    assert queue.free == 1


async def test_a_cancelled_wait_is_marked_with_the_slots_in_use() -> None:
    """The CancelledError of a wait carries how many slots were held, which the retry loop
    reads to say a deadline was spent queueing."""
    queue = _ConnectionQueue(2)
    assert queue.try_acquire()
    assert queue.try_acquire()
    with pytest.raises(TimeoutError) as info:
        async with asyncio.timeout(0):
            await queue.acquire()
    assert slot_wait(info.value) == 2
    assert (queue.free, queue.waiting) == (0, 0)


def test_close_wakes_a_waiter_of_a_loop_that_has_ended() -> None:
    """A waiter left in a loop that is closed now: close() still finishes its future (the loop
    cannot schedule the wake-up, and that is not an error)."""
    queue = _ConnectionQueue(1)
    assert queue.try_acquire()
    loop = asyncio.new_event_loop()
    task = loop.create_task(queue.acquire())
    loop.run_until_complete(asyncio.sleep(0))  # the task is now waiting
    loop.close()
    (future,) = queue._waiters
    queue.close()
    assert future.done()
    assert queue.waiting == 0
    task._log_destroy_pending = False  # type: ignore[attr-defined]  # its loop is gone
