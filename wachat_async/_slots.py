"""Connection slots: a FIFO counting semaphore whose uncontended acquire is a plain decrement.

The client's connection queue is taken and given back on every call. ``asyncio.Semaphore``
creates a coroutine per ``acquire()`` and runs Python-level bookkeeping on each release (about
12k instructions per call under callgrind); here, when a slot is free, taking it is
``slots.free -= 1`` (or :meth:`Slots.try_acquire`), and giving it back with nobody waiting is
one increment. Only a caller that must wait creates a future.

Rules:

* FIFO: a released slot goes straight to the longest waiter (it never becomes ``free`` while
  someone waits), so a newcomer cannot overtake the queue.
* Cancellation: a waiter cancelled while waiting leaves the queue; a waiter cancelled *after*
  being handed a slot, before it could run, passes the slot on (to the next waiter, or back to
  ``free``). No slot is ever lost or duplicated.
* ``release()`` more often than acquisitions raises ``ValueError`` (like
  ``asyncio.BoundedSemaphore``).

Like ``asyncio.Semaphore`` it belongs to no event loop until someone waits; the futures it
creates belong to the loop of the waiter. Never imports the client.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from contextlib import suppress

__all__ = ["Slots"]


class Slots:
    """*limit* slots (``None``: unlimited), taken with :meth:`acquire` or, without awaiting,
    :meth:`try_acquire`, and given back with :meth:`release`.

    The fast path, for code that must not create a coroutine when a slot is free::

        if not slots.try_acquire():
            await slots.acquire()
        try:
            ...
        finally:
            slots.release()

    ``free`` is the number of slots nobody holds; ``waiting`` the number of callers queued.
    """

    __slots__ = ("_waiters", "free", "limit")

    #: How many slots there are (``sys.maxsize`` for no limit).
    limit: int
    #: How many slots nobody holds right now.
    free: int

    def __init__(self, limit: int | None = None) -> None:
        if limit is None:
            limit = sys.maxsize
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("limit must be an int >= 1 or None")
        self.limit = limit
        self.free = limit
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __repr__(self) -> str:
        return f"<Slots free={self.free} limit={self.limit} waiting={self.waiting}>"

    @property
    def waiting(self) -> int:
        """Callers queued for a slot (not counting cancelled ones)."""
        return sum(not f.done() for f in self._waiters)

    def locked(self) -> bool:
        """True when an :meth:`acquire` now would wait."""
        return self.free <= 0

    def try_acquire(self) -> bool:
        """Take a slot if one is free, without waiting; True if taken."""
        if self.free > 0:
            self.free -= 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a slot, waiting in FIFO order for one if none is free."""
        if self.free > 0:
            self.free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # Handed a slot, then cancelled before running: the slot is ours, pass it on.
                self.release()
            else:
                with suppress(ValueError):  # already dropped by a release() that skipped it
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back: to the longest waiter if there is one, else to ``free``."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():  # a cancelled waiter leaves on its own; skip it
                waiter.set_result(None)
                return
        if self.free >= self.limit:
            raise ValueError("Slots.release() called more often than acquire()")
        self.free += 1
