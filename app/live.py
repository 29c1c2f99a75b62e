"""Watching an order's stream, or a whole account's, live and resumable.

A ``Feed`` numbers what it has delivered by version (one order) or position (the account);
both are gap-free and in commit order (see ``app.models``), so it subscribes to the hub
before it reads where to start, skips what it has delivered, and catches up from the table
whenever the next number is not the one it expected or the broker says notifications may
have been lost: every event once, in order, whether it came from the table or the hub.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Coroutine, Generator
from functools import partial
from typing import Any, Protocol

from app import events, metrics, validation
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
) -> tuple[int, int, str] | None:
    """Refuses a watch that may not start (bad input, missing scope); returns where ``after``
    points, as a ``Feed`` takes it: (position, version, cursor)."""
    errors: list[FieldError] = []
    validation.check_account_id(account_id, "accountId", errors)
    if order_id is not None:
        validation.check_order_id(order_id, "orderId", errors)
    start: tuple[int, int, str] | None = None
    if after is not None:
        try:
            start = (*decode_cursor(after), after)
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
    """Where a ``Feed`` delivers: the compiled WebSocket route's operation, or a ``Handoff``
    for the GraphQL resolver."""

    async def send_event(self, event: StoredEvent) -> None:
        """Delivers one event; the feed awaits it before the next."""

    async def end(self, error: Exception) -> None:
        """The feed has ended on ``error`` (``SlowConsumer``, or the database failing);
        it is out of the hub already and delivers nothing more."""


class Feed(Subscription):
    """One subscriber's stream, pushed to by the hub, holding no task or coroutine while
    nothing happens (thousands of idle subscriptions cost their buffers, not suspended
    coroutine stacks): a task runs only while there is something to deliver or to read from
    the table, and ends once the buffer is empty. Subscribed before the start is read;
    ``SlowConsumer`` when the buffer overflows (it fills while the receiver's ``send_event``
    waits). Call ``check`` first."""

    __slots__ = ("_after", "_closed", "_loop", "_progress", "_receiver", "_started", "_task")

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
        self._started = False

    def start(self) -> None:
        self._hub.add(self)  # first, so nothing committed from now on slips past
        if not self._started:
            self._started = True
            metrics.SUBSCRIPTIONS.inc()
        if self._task is None:
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
                metrics.sent_at_once(item)
                self._send_now(item)
                return
        super().push(item)
        if self._task is None and not self._closed:
            self._task = self._loop.create_task(self._run())

    def _send_now(self, event: StoredEvent) -> None:
        """Starts ``send_event`` here, as an eager task would: if it completes without
        waiting, no task is made; if it must wait (the socket's buffer is full), a task
        carries it on from there and then delivers whatever arrived meanwhile."""
        sending = self._receiver.send_event(event)
        try:
            waiting_for = sending.send(None)
        except StopIteration:
            return
        except Exception as error:
            self._task = self._loop.create_task(self._end(error))
            return
        self._task = self._loop.create_task(self._run(_Resumed(sending, waiting_for)))

    def close(self) -> None:
        """Stops delivering (the operation completed, or its connection closed)."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            metrics.SUBSCRIPTIONS.dec()
        super().close()
        self._items.clear()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _run(self, sending: Awaitable[None] | None = None) -> None:
        try:
            if sending is not None:
                await sending
            progress = self._progress
            if progress is None:
                resuming = self._after is not None
                progress = self._progress = await self._start()
                if resuming:
                    metrics.GAP_FILL_RESUME.inc()
                    await self._catch_up(progress)
            while True:
                if self._closed:
                    return
                if self.overflowed:
                    metrics.OVERFLOWS.inc()
                    raise SlowConsumer(progress.cursor)
                item = self.take()
                if item is None:
                    # Nothing left, and no await since the check: the next push starts a task.
                    self._task = None
                    return
                if item is RESYNC:
                    metrics.GAP_FILL_RESYNC.inc()
                    await self._catch_up(progress)
                    continue
                assert isinstance(item, StoredEvent)
                number = _number(item, self.order_id)
                if number <= progress.number:
                    continue  # delivered already, from the table
                if number > progress.number + 1:
                    # Something between was missed by the feed: the table has it, and this.
                    metrics.GAP_FILL_GAP.inc()
                    await self._catch_up(progress)
                    continue
                progress.advance(number, item)
                metrics.sent_from_buffer(item)
                await self._receiver.send_event(item)
        except Exception as error:
            await self._end(error)

    async def _start(self) -> _Progress:
        if self._after is not None:
            position, version, cursor = self._after
            self._after = None
            return _Progress(position if self.order_id is None else version, cursor)
        last = await _latest(self.account_id, self.order_id)
        if last is None:
            return _Progress(0, START_CURSOR)
        return _Progress(_number(last, self.order_id), last.cursor)

    async def _catch_up(self, progress: _Progress) -> None:
        async for event in _catch_up(self.account_id, self.order_id, progress):
            await self._receiver.send_event(event)

    async def _end(self, error: Exception) -> None:
        if not self._closed:
            self.close()
            await self._receiver.end(error)


class _Resumed(Generator[Any, None, None]):
    """What is left of a coroutine that ran outside any task until it had to wait, for a
    task to await: the task first waits for what the coroutine waits for (its first
    ``send`` returns what the coroutine yielded, as the coroutine's own would have), then
    runs the rest of it. Only the coroutine protocol is used, no part of asyncio's."""

    __slots__ = ("_coroutine", "_handed", "_waiting_for")

    def __init__(self, coroutine: Coroutine[Any, Any, None], waiting_for: Any) -> None:
        self._coroutine = coroutine
        self._waiting_for = waiting_for
        self._handed = False

    def __await__(self) -> Generator[Any, None, None]:
        return self

    def send(self, value: None) -> Any:
        if not self._handed:
            self._handed = True
            return self._waiting_for
        return self._coroutine.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        # Whatever the task throws in (a cancellation) reaches the coroutine where it waits.
        self._handed = True
        if val is None:
            return self._coroutine.throw(typ)
        return self._coroutine.throw(val.with_traceback(tb))


class Handoff:
    """A ``Receiver`` that an async iterator takes events from (the GraphQL resolver's).
    ``send_event`` returns once its event is taken, so a consumer that stops taking leaves
    the events in the feed's buffer, which overflows as it would behind a slow socket."""

    __slots__ = ("_given", "_item", "_taker")

    def __init__(self) -> None:
        self._item: StoredEvent | Exception | None = None
        self._given: asyncio.Future[None] | None = None  # done once ``_item`` is taken
        self._taker: asyncio.Future[StoredEvent | Exception] | None = None

    async def send_event(self, event: StoredEvent) -> None:
        await self._give(event)

    async def end(self, error: Exception) -> None:
        await self._give(error)

    async def take(self) -> StoredEvent:
        """The next event; raises the error the feed ended on."""
        given = self._given
        item: StoredEvent | Exception | None
        if given is not None and not given.done():
            item = self._item
            given.set_result(None)
        else:
            self._taker = asyncio.get_running_loop().create_future()
            try:
                item = await self._taker
            finally:
                self._taker = None
        if isinstance(item, Exception):
            raise item
        assert item is not None
        return item

    async def _give(self, item: StoredEvent | Exception) -> None:
        taker = self._taker
        if taker is not None and not taker.done():
            taker.set_result(item)  # taken at once: the consumer was waiting for it
            return
        self._item = item
        self._given = asyncio.get_running_loop().create_future()
        try:
            await self._given
        finally:
            self._item = self._given = None


def watch(
    principal: Principal,
    broker: Broker,
    account_id: str,
    order_id: str | None,
    after: str | None,
    receiver: Receiver,
    *,
    buffer_size: int,
) -> Feed:
    """The feed of a watch that may start (``check`` refuses one that may not), not started."""
    start = check(principal, account_id, order_id, after)
    return Feed(broker, account_id, order_id, start, receiver, buffer_size=buffer_size)
