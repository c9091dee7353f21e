"""The client's connection queue: a call queues here, before its per-attempt timeout starts,
never inside aiohttp's pool. An ``asyncio.Semaphore``: FIFO in CPython since gh-90155 (not
promised by the docs; tests/test_slots.py checks it)."""

from __future__ import annotations

import asyncio
import sys
from contextlib import suppress
from typing import TYPE_CHECKING

from ._errors import ClientClosedError

if TYPE_CHECKING:
    import aiohttp

__all__ = ["CLOSED_MESSAGE", "ConnectionQueue", "note_slot_wait", "queue_limit", "slot_wait"]

CLOSED_MESSAGE = "WachatClient is closed; create a new client (a closed one cannot be reused)"

#: The attribute that marks a ``CancelledError`` which ended a wait for a connection slot.
_SLOT_WAIT = "_wachat_slots_in_use"


def note_slot_wait(cancelled: BaseException, in_use: int) -> None:
    """Mark *cancelled*, which ended a wait for a slot, with how many slots were in use."""
    setattr(cancelled, _SLOT_WAIT, in_use)


def slot_wait(error: BaseException) -> int | None:
    """How many slots were in use when the deadline's *error* found the attempt queueing for
    one (None if it was not queueing): its cause or context is the marked ``CancelledError``."""
    for cancelled in (error.__cause__, error.__context__):
        in_use: int | None = getattr(cancelled, _SLOT_WAIT, None)
        if in_use is not None:
            return in_use
    return None


def queue_limit(max_connections: int, session: aiohttp.ClientSession | None) -> int | None:
    """How many requests a client sends at once (None: no limit): *max_connections*, or what a
    borrowed *session*'s connector allows to one host (aiohttp's 0 means unlimited)."""
    if session is None:
        return max_connections
    connector = session.connector
    if connector is None:  # a closed session: the client refuses it when it binds
        return None
    limits = [n for n in (connector.limit, connector.limit_per_host) if n]
    return min(limits) if limits else None


class ConnectionQueue:
    """*limit* connection slots (None: unlimited); once closed, :meth:`acquire` and every call
    waiting refuse. A wait the deadline cancels is marked (:func:`note_slot_wait`)."""

    __slots__ = ("_slots", "closed", "in_use", "limit", "waiting")

    def __init__(self, limit: int | None) -> None:
        self.limit: int | None = limit
        self.closed: bool = False
        #: Slots held now, and calls waiting for one.
        self.in_use: int = 0
        self.waiting: int = 0
        self._slots = asyncio.Semaphore(sys.maxsize if limit is None else limit)

    def __repr__(self) -> str:
        return f"<ConnectionQueue limit={self.limit} in_use={self.in_use} waiting={self.waiting}>"

    def locked(self) -> bool:
        """True when a call now would wait for a slot (the semaphore's own ``locked()``,
        from these counters: a slot handed to a waiter counts until the waiter runs)."""
        return self.limit is not None and self.in_use + self.waiting >= self.limit

    async def acquire(self) -> None:
        """Take a slot, waiting in FIFO order when none is free."""
        if self.closed:
            raise ClientClosedError(CLOSED_MESSAGE, attempts=0)
        self.waiting += 1  # close() wakes this many
        try:
            await self._slots.acquire()
        except asyncio.CancelledError as exc:
            note_slot_wait(exc, self.in_use)
            raise
        finally:
            self.waiting -= 1
        if self.closed:
            raise ClientClosedError(
                "WachatClient was closed while this call waited for a connection slot "
                "(nothing was sent)",
                attempts=0,
            )
        self.in_use += 1

    def release(self) -> None:
        """Give a slot back (to the longest waiter, if any)."""
        self.in_use -= 1
        self._slots.release()

    def close(self) -> None:
        """Refuse every later :meth:`acquire` and wake every call waiting now (each refuses)."""
        if self.closed:
            return
        self.closed = True
        for _ in range(self.waiting):
            with suppress(RuntimeError):  # a waiter of a loop that has ended cannot be woken
                self._slots.release()
