"""Reads of the table that subscriptions asking for the same thing at the same time share.

After a deploy or a network blip, thousands of clients reconnect at once, and most of their
subscriptions ask exactly the same question: their stream's head, or what they missed since
a cursor. One query per question, not one per subscription, keeps the pool (or SQLite's
single thread) free for writers, and keeps the surge of result rows out of memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class _Read:
    __slots__ = ("begun", "task")

    def __init__(self, fetch: Callable[[], Awaitable[Any]], previous: asyncio.Task[Any] | None):
        self.begun = False
        self.task: asyncio.Task[Any] = asyncio.ensure_future(self._run(fetch, previous))

    async def _run(
        self, fetch: Callable[[], Awaitable[Any]], previous: asyncio.Task[Any] | None
    ) -> Any:
        if previous is not None:
            await asyncio.wait((previous,))  # whatever its outcome
        self.begun = True
        return await fetch()


class SharedReads:
    """``read(key, fetch)``: ``fetch()``'s answer, shared with every caller of the same key
    whose call came before the read began.

    A shared answer must be as fresh as the one a caller would have got alone: the caller
    relies on it holding everything committed before it asked (what it subscribed to the hub
    after, or what the gap it saw had skipped). So a caller joins a read only while that read
    has not begun; later callers are queued for one more read, run when it ends and shared by
    all of them. A key has at most one read running and one waiting."""

    def __init__(self) -> None:
        # Per key, its newest read: running, or waiting for the one running to end.
        self._newest: dict[Hashable, _Read] = {}

    async def read(self, key: Hashable, fetch: Callable[[], Awaitable[T]]) -> T:
        newest = self._newest.get(key)
        if newest is not None and newest.task.get_loop() is not asyncio.get_running_loop():
            newest = None  # left behind by a loop that has gone (tests run one per test)
        if newest is None or newest.begun:
            newest = _Read(fetch, None if newest is None else newest.task)
            self._newest[key] = newest
            newest.task.add_done_callback(lambda task: self._landed(key, task))
        # Shielded: one caller going away must not cancel the others' read.
        answer: T = await asyncio.shield(newest.task)
        return answer

    def _landed(self, key: Hashable, task: asyncio.Task[Any]) -> None:
        newest = self._newest.get(key)
        if newest is not None and newest.task is task:
            del self._newest[key]
        if not task.cancelled():
            task.exception()  # its callers may all have gone: it is seen either way

    def __len__(self) -> int:
        """Keys with a read running or waiting."""
        return len(self._newest)
