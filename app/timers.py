"""Timers shared by the connections of a loop: one loop timer for many callbacks.

A WebSocket connection waits for its token to expire, its next ping and its
``connection_init``; with thousands of idle connections, a loop timer (or a sleeping task)
each costs more memory than the connection's own state (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import weakref
from collections.abc import Callable

# Due within this much counts as due, as asyncio does within its clock's resolution: uvloop's
# clock moves in milliseconds, and a timer it fires a little early is not armed again.
_EARLY = 0.001


class Deadline:
    """A callback due at a time on the loop's clock; ``cancel`` drops it (and what it
    references) at once."""

    __slots__ = ("callback", "owner", "when")

    def __init__(self, owner: Deadlines, when: float, callback: Callable[[], object]) -> None:
        self.owner = owner
        self.when = when
        self.callback: Callable[[], object] | None = callback

    def __lt__(self, other: Deadline) -> bool:
        return self.when < other.when

    def cancel(self) -> None:
        if self.callback is not None:
            self.callback = None
            self.owner.cancelled()


class Deadlines:
    """A heap of ``Deadline`` entries under one loop timer, set for the earliest. A cancelled
    entry stays in the heap until it comes due, or until cancelled ones are half the heap
    (then it is rebuilt), as asyncio does with its own timers.

    Unlike ``loop.call_later``, a callback runs in an empty context, not in a copy of the one
    it was scheduled from (that copy is part of what a loop timer costs): the callbacks here
    (pings, closes) use no context variables."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[Deadline] = []
        self._cancelled = 0
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        self._context = contextvars.Context()

    def call_later(self, delay: float, callback: Callable[[], object]) -> Deadline:
        deadline = Deadline(self, self._loop.time() + max(0.0, delay), callback)
        heapq.heappush(self._heap, deadline)
        if self._timer is None or deadline.when < self._armed_at:
            self._arm()
        return deadline

    def cancelled(self) -> None:
        self._cancelled += 1
        if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
            self._heap = [deadline for deadline in self._heap if deadline.callback is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def __len__(self) -> int:
        """Deadlines waiting, cancelled ones left out."""
        return len(self._heap) - self._cancelled

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        heap = self._heap
        while heap and heap[0].callback is None:
            heapq.heappop(heap)
            self._cancelled -= 1
        if heap:
            self._armed_at = heap[0].when
            self._timer = self._loop.call_at(self._armed_at, self._fire, context=self._context)

    def _fire(self) -> None:
        self._timer = None
        now = self._loop.time() + _EARLY
        heap = self._heap
        due: list[Callable[[], object]] = []
        while heap and heap[0].when <= now:
            deadline = heapq.heappop(heap)
            callback = deadline.callback
            if callback is None:
                self._cancelled -= 1
                continue
            deadline.callback = None
            due.append(callback)
        # Run after the heap is settled: a callback may set a deadline of its own.
        for callback in due:
            try:
                callback()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as error:
                self._loop.call_exception_handler(
                    {"message": f"Exception in deadline callback {callback!r}", "exception": error}
                )
        if self._timer is None:
            self._arm()


_deadlines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines] = (
    weakref.WeakKeyDictionary()
)


def deadlines(loop: asyncio.AbstractEventLoop | None = None) -> Deadlines:
    """The shared timers of ``loop`` (by default the running one)."""
    loop = loop or asyncio.get_running_loop()
    shared = _deadlines.get(loop)
    if shared is None:
        shared = _deadlines[loop] = Deadlines(loop)
    return shared
