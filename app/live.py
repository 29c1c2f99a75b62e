"""Watching an order's stream, or a whole account's, live and resumable.

A watcher numbers what it has delivered by version (one order) or position (the account);
both are gap-free and in commit order (see ``app.models``), so:

1. it subscribes to the hub first, so nothing committed from then on can slip past;
2. it reads the head (read after subscribing, so every later event comes through the hub),
   or decodes ``after`` and replays what the table holds after it;
3. it then takes live events from its buffer, skipping any it has delivered already, and
   catching up from the table whenever the next number is not the one it expected, or the
   broker says notifications may have been lost.

So every event is delivered once, in order, whether it came from the table or the feed.

Two shapes of the same rules: ``watch``, an async generator (GraphQL resolvers iterate it),
and ``Feed``, which is pushed to: it holds no task, coroutine or future while nothing
happens, and runs a task only while it has something to deliver or to read from the table.
Thousands of idle subscriptions then cost their buffers, not thousands of suspended
coroutine stacks.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from functools import partial
from typing import Any, Protocol

from app import events, validation
from app.auth import Principal
from app.broker import RESYNC, Broker, Item, Subscription
from app.errors import BadUserInput, FieldError, SlowConsumer
from app.records import START_CURSOR, StoredEvent, decode_cursor
from app.shared_reads import SharedReads

CATCH_UP_BATCH = 500


class _Progress:
    """What a watcher has delivered: the last number and that event's cursor (worked out
    only when asked for: a subscriber seldom needs it, and there may be thousands)."""

    __slots__ = ("_cursor", "_event", "number")

    def __init__(self, number: int, cursor: str) -> None:
        self.number = number
        self._cursor = cursor
        self._event: StoredEvent | None = None

    @property
    def cursor(self) -> str:
        return self._cursor if self._event is None else self._event.cursor

    def advance(self, number: int, event: StoredEvent) -> None:
        self.number, self._event = number, event


def _number(event: StoredEvent, order_id: str | None) -> int:
    return event.position if order_id is None else event.version


def check(
    principal: Principal, account_id: str, order_id: str | None, after: str | None
) -> tuple[int, int] | None:
    """Refuses a watch that may not start (bad input, missing scope); returns where ``after``
    points, as (position, version)."""
    errors: list[FieldError] = []
    validation.check_account_id(account_id, "accountId", errors)
    if order_id is not None:
        validation.check_order_id(order_id, "orderId", errors)
    start: tuple[int, int] | None = None
    if after is not None:
        try:
            start = decode_cursor(after)
        except BadUserInput as error:
            errors.extend(error.errors)
    if errors:
        raise BadUserInput(errors)
    if order_id is None:
        events.authorize(
            principal, account_id, principal.can_read_account(), "reading all orders' events"
        )
    else:
        events.authorize(
            principal,
            account_id,
            principal.can_read_order(order_id),
            f"reading events of order {order_id!r}",
        )
    return start


async def watch(
    principal: Principal,
    broker: Broker,
    account_id: str,
    order_id: str | None,
    after: str | None,
    *,
    buffer_size: int,
) -> AsyncGenerator[StoredEvent, None]:
    """Every event of the order (or, without ``order_id``, of the account) after ``after``
    (or from now on, without it), once and in order, until the caller stops iterating."""
    start = check(principal, account_id, order_id, after)
    subscription = broker.hub.subscribe(account_id, order_id, buffer_size)
    try:
        if start is None:
            last = await _latest(account_id, order_id)
            progress = _Progress(0, START_CURSOR)
            if last is not None:
                progress = _Progress(_number(last, order_id), last.cursor)
        else:
            assert after is not None
            position, version = start
            progress = _Progress(position if order_id is None else version, after)
            async for event in _catch_up(account_id, order_id, progress):
                yield event
        while True:
            item = await subscription.get()
            if item is None:
                raise SlowConsumer(progress.cursor)
            if item is RESYNC:
                async for event in _catch_up(account_id, order_id, progress):
                    yield event
                continue
            assert isinstance(item, StoredEvent)
            number = _number(item, order_id)
            if number <= progress.number:
                continue  # delivered already, from the table
            if number > progress.number + 1:
                # Something between was missed by the feed: the table has it, and this one.
                async for event in _catch_up(account_id, order_id, progress):
                    yield event
                continue
            progress.advance(number, item)
            yield item
    finally:
        subscription.close()


# Reconnect storms: thousands of subscriptions asking for the same head, or for what followed
# the same cursor, share one query (see ``app.shared_reads``).
_reads = SharedReads()


async def _latest(account_id: str, order_id: str | None) -> StoredEvent | None:
    """The stream's latest event, read after this call: whatever commits later reaches a
    subscriber that subscribed before calling through the hub."""
    return await _reads.read(
        ("latest", account_id, order_id), lambda: events.latest(account_id, order_id)
    )


async def _catch_up(
    account_id: str, order_id: str | None, progress: _Progress
) -> AsyncIterator[StoredEvent]:
    while True:
        after = progress.number
        batch = await _reads.read(
            ("after", account_id, order_id, after),
            partial(events.events_after, account_id, order_id, after, CATCH_UP_BATCH),
        )
        for event in batch:
            progress.advance(_number(event, order_id), event)
            yield event
        if len(batch) < CATCH_UP_BATCH:
            return


class Receiver(Protocol):
    """Where a ``Feed`` delivers."""

    async def send_event(self, event: StoredEvent) -> None:
        """Delivers one event; the feed awaits it before the next."""

    async def end(self, error: Exception) -> None:
        """The feed has ended on ``error`` (``SlowConsumer``, or the database failing);
        it is out of the hub already and delivers nothing more."""


class Feed(Subscription):
    """``watch`` turned inside out: the hub's ``push`` starts a task only when there is
    something to do, and that task ends once the buffer is empty. Same rules as ``watch``:
    subscribed before the start is read, every event once and in order, gaps and resyncs
    filled from the table, ``SlowConsumer`` on overflow. Call ``check`` first."""

    __slots__ = ("_after", "_closed", "_loop", "_progress", "_receiver", "_task")

    def __init__(
        self,
        broker: Broker,
        account_id: str,
        order_id: str | None,
        after: tuple[int, int, str] | None,
        receiver: Receiver,
        *,
        buffer_size: int,
    ) -> None:
        """``after``: (position, version, cursor) as ``check`` decoded it, or None for
        "from now on"."""
        # Interned: thousands of subscribers to one stream then share its two identifiers
        # (checked by ``check`` already, so bounded in size) for as long as they watch.
        super().__init__(
            broker.hub,
            sys.intern(account_id),
            None if order_id is None else sys.intern(order_id),
            buffer_size,
        )
        self._receiver = receiver
        self._loop = asyncio.get_running_loop()
        self._progress: _Progress | None = None
        self._after = after
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._hub.add(self)  # first, so nothing committed from now on slips past
        self._task = self._loop.create_task(self._run())

    def push(self, item: Item) -> None:
        progress = self._progress
        if (
            self._task is None
            and progress is not None
            and not self._items
            and not self._closed
            and isinstance(item, StoredEvent)
        ):
            # The usual case: nothing pending and the event is the next one. It is sent
            # right here (the payload is shared and the socket almost always takes it at
            # once), without a task per subscriber per event.
            number = _number(item, self.order_id)
            if number <= progress.number:
                return  # delivered already, from the table
            if number == progress.number + 1:
                progress.advance(number, item)
                self._send_now(item)
                return
        super().push(item)
        if self._task is None and not self._closed:
            self._task = self._loop.create_task(self._run())

    def _send_now(self, event: StoredEvent) -> None:
        """Runs the receiver's ``send_event`` eagerly (as Python 3.12's eager tasks do): if
        it completes without waiting, no task is made; if it must wait (the socket's buffer
        is full), a task takes it over and then delivers whatever arrived meanwhile."""
        sending = self._receiver.send_event(event)
        try:
            waiting_for = sending.send(None)
        except StopIteration:
            return
        except Exception as error:
            self._task = self._loop.create_task(self._fail(error))
            return
        self._task = self._loop.create_task(self._finish(sending, waiting_for))

    async def _finish(self, sending: Coroutine[Any, Any, None], waiting_for: Any) -> None:
        try:
            while True:
                # What a task does for the coroutine it runs: take over the future it
                # yielded, wait for it (the coroutine reads its outcome when resumed), and
                # resume it.
                if waiting_for is None:
                    await asyncio.sleep(0)
                else:
                    waiting_for._asyncio_future_blocking = False
                    await asyncio.wait((waiting_for,))
                try:
                    waiting_for = sending.send(None)
                except StopIteration:
                    break
        except Exception as error:
            sending.close()
            await self._fail(error)
            return
        except BaseException:  # cancelled: the feed was closed
            sending.close()
            raise
        await self._run()

    async def _fail(self, error: Exception) -> None:
        if not self._closed:
            self.close()
            await self._receiver.end(error)

    def close(self) -> None:
        """Stops delivering (the operation completed, or its connection closed)."""
        if self._closed:
            return
        self._closed = True
        super().close()
        self._items.clear()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _run(self) -> None:
        try:
            progress = self._progress
            if progress is None:
                resuming = self._after is not None
                progress = self._progress = await self._start()
                if resuming:
                    async for event in _catch_up(self.account_id, self.order_id, progress):
                        await self._receiver.send_event(event)
            while True:
                if self._closed:
                    return
                if self.overflowed:
                    raise SlowConsumer(progress.cursor)
                item = self.take()
                if item is None:
                    # Nothing left, and no await since the check: the next push starts a task.
                    self._task = None
                    return
                if item is RESYNC:
                    async for event in _catch_up(self.account_id, self.order_id, progress):
                        await self._receiver.send_event(event)
                    continue
                assert isinstance(item, StoredEvent)
                number = _number(item, self.order_id)
                if number <= progress.number:
                    continue  # delivered already, from the table
                if number > progress.number + 1:
                    # Something between was missed by the feed: the table has it, and this.
                    async for event in _catch_up(self.account_id, self.order_id, progress):
                        await self._receiver.send_event(event)
                    continue
                progress.advance(number, item)
                await self._receiver.send_event(item)
        except Exception as error:
            if self._closed:
                return
            self.close()
            await self._receiver.end(error)

    async def _start(self) -> _Progress:
        if self._after is not None:
            position, version, cursor = self._after
            self._after = None
            return _Progress(position if self.order_id is None else version, cursor)
        last = await _latest(self.account_id, self.order_id)
        if last is None:
            return _Progress(0, START_CURSOR)
        return _Progress(_number(last, self.order_id), last.cursor)
