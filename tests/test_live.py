"""Live delivery (``app.live.Feed``) with a hub the test plays by hand.

Events are stored through the app (so the table holds them), but reach the hub only when a
test pushes them: repeated, late, out of order or not at all, as a real feed may. Whatever
the hub does, every event must be delivered once, in order.

Each scenario runs on both consumers of a feed: ``pushed``, a receiver as the compiled
WebSocket route has (``app.api.websocket.LiveOperation``), whose sends can be held as a full
socket holds them; and ``subscribed``, the GraphQL resolver (the ordinary route) run by
Strawberry in-process, read as Strawberry's handlers read it. Then what only one of them
shows: no task while idle, sends that wait, the reads feeds share.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, cast

import pytest

from app import events, live
from app.api.context import Context
from app.api.schema import schema
from app.auth import Principal
from app.broker import RESYNC, Hub, LocalBroker, Subscription
from app.errors import SlowConsumer
from app.models import OrderEvent
from app.records import StoredEvent
from app.settings import Settings
from tests.conftest import GraphQLClient
from tests.helpers import ACCOUNT, ORDER, created, eventually
from tests.live import SUBSCRIBE, watching

WAIT = 2.0


def reader() -> Principal:
    return Principal(
        subject="screen-1",
        account_id=ACCOUNT,
        scopes=frozenset({"read:shopping"}),
        expires_at=time.time() + 3600,
    )


async def store(client: GraphQLClient, *orders: str) -> list[StoredEvent]:
    """Stores an event for each of ``orders`` (in turn) and returns them as stored."""
    events = []
    for order in orders:
        event_id = (await created(client, order))["id"]
        events.append(StoredEvent.from_row(await OrderEvent.get(event_id=event_id)))
    return events


def ids(events: list[StoredEvent]) -> list[str]:
    return [event.id for event in events]


class Ended(Exception):
    """A subscription ended with a GraphQL error other than RATE_LIMITED."""

    def __init__(self, errors: list[Any]) -> None:
        super().__init__(errors)
        self.extensions = errors[0].extensions


class Watcher:
    """One consumer of a feed on a broker of the test's own."""

    # How many of the events pushed while the consumer is held it still gets: those on
    # their way to it before it stopped reading.
    in_flight: int

    def __init__(self, broker: LocalBroker) -> None:
        self.broker = broker

    def feed(self, *items: StoredEvent | object) -> None:
        for item in items:
            if isinstance(item, StoredEvent):
                self.broker.hub.publish(item)
            else:
                self.broker.hub.resync_all()

    async def take(self, n: int) -> list[str]:
        """The ids of the next ``n`` events."""
        async with asyncio.timeout(WAIT):
            return [await self.next() for _ in range(n)]

    async def take_until_ended(self) -> tuple[list[str], Exception]:
        """The ids of the events delivered until the feed ended, and what it ended on."""
        taken = []
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    taken.append(await self.next())
                except Exception as error:
                    return taken, error

    async def next(self) -> str:
        """The id of the next event."""
        raise NotImplementedError

    async def delivers_nothing_more(self) -> bool:
        raise NotImplementedError

    def hold(self) -> None:
        """Stops reading, as a client that reads nothing more (the socket fills)."""

    def release(self) -> None:
        """Reads again."""

    async def close(self) -> None:
        raise NotImplementedError


class Inbox:
    """A receiver that keeps what it is sent; ``gate`` (when cleared) holds each send, as a
    socket whose buffer is full would."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[StoredEvent | Exception] = asyncio.Queue()
        self.gate = asyncio.Event()
        self.gate.set()

    async def send_event(self, event: StoredEvent) -> None:
        await self.gate.wait()
        self.received.put_nowait(event)

    async def end(self, error: Exception) -> None:
        self.received.put_nowait(error)


class Pushed(Watcher):
    """A ``live.Feed`` delivering to an ``Inbox``, as the compiled WebSocket route's."""

    in_flight = 1  # the send under way

    def __init__(
        self, broker: LocalBroker, order_id: str | None, after: str | None, buffer_size: int
    ) -> None:
        super().__init__(broker)
        self.inbox = Inbox()
        self.feed_ = live.watch(
            reader(), broker, ACCOUNT, order_id, after, self.inbox, buffer_size=buffer_size
        )
        self.feed_.start()

    async def next(self) -> str:
        item = await self.inbox.received.get()
        if isinstance(item, Exception):
            raise item
        return item.id

    async def delivers_nothing_more(self) -> bool:
        await settled()
        return self.inbox.received.empty()

    def hold(self) -> None:
        self.inbox.gate.clear()

    def release(self) -> None:
        self.inbox.gate.set()

    async def close(self) -> None:
        self.feed_.close()


class Subscribed(Watcher):
    """The ``orderEvents`` subscription's resolver, run by Strawberry in-process. Like
    Strawberry's handlers it asks for the next result as soon as it has the last one
    (unless held); RATE_LIMITED comes back as ``SlowConsumer``."""

    # The result the reader asked for before it stopped, and the event waiting in the
    # handoff for the reader to take it.
    in_flight = 2

    def __init__(self, broker: LocalBroker, stream: AsyncGenerator[Any, None]) -> None:
        super().__init__(broker)
        self.stream = stream
        self.held = False
        self.asked: asyncio.Task[Any] | None = None

    @classmethod
    async def open(
        cls,
        settings: Settings,
        broker: LocalBroker,
        order_id: str | None,
        after: str | None,
        buffer_size: int,
    ) -> Subscribed:
        context = Context(
            request=cast(Any, None),
            response=None,
            settings=replace(settings, subscription_buffer=buffer_size),
            broker=broker,
            writer=cast(Any, None),
            request_id="test",
            principal=reader(),
        )
        stream = await schema.subscribe(
            SUBSCRIBE, variable_values=watching(order_id, after=after), context_value=context
        )
        assert isinstance(stream, AsyncGenerator), stream
        subscribed = cls(broker, stream)
        subscribed.ask()
        # The resolver subscribes to the hub when it first runs; as a server's subscription
        # does before anything is written, it has by the time the test goes on.
        async with asyncio.timeout(WAIT):
            while broker.hub.subscription_count == 0 and not subscribed.asked.done():  # noqa: ASYNC110
                await asyncio.sleep(0)
        return subscribed

    def ask(self) -> None:
        self.asked = asyncio.ensure_future(anext(self.stream))

    async def next(self) -> str:
        if self.asked is None:
            self.ask()
        assert self.asked is not None
        result = await self.asked
        self.asked = None
        if not self.held:
            self.ask()
        if result.errors:
            extensions = result.errors[0].extensions or {}
            if extensions.get("code") == "RATE_LIMITED":
                raise SlowConsumer(extensions["resumeAfter"])
            raise Ended(result.errors)
        event_id: str = result.data["orderEvents"]["id"]
        return event_id

    async def delivers_nothing_more(self) -> bool:
        try:
            await self.next()
        except StopAsyncIteration:
            return True
        return False

    def hold(self) -> None:
        self.held = True

    def release(self) -> None:
        self.held = False

    async def close(self) -> None:
        # As Strawberry stops an operation: its task, waiting for the next result, is
        # cancelled; then the generator is closed.
        if self.asked is not None:
            self.asked.cancel()
            await asyncio.gather(self.asked, return_exceptions=True)
            self.asked = None
        await self.stream.aclose()


Watch = Callable[..., Awaitable[Watcher]]
Open = Callable[..., Awaitable[Pushed]]


@pytest.fixture
async def opened() -> AsyncIterator[list[Watcher]]:
    """The watchers a test opens; closed at its end."""
    watchers: list[Watcher] = []
    yield watchers
    for watcher in watchers:
        await watcher.close()


def opener(kind: str, settings: Settings, opened: list[Watcher]) -> Watch:
    async def open_watcher(
        order_id: str | None,
        after: str | None,
        *,
        buffer_size: int = 100,
        broker: LocalBroker | None = None,
    ) -> Watcher:
        broker = broker or LocalBroker()
        watcher: Watcher
        if kind == "pushed":
            watcher = Pushed(broker, order_id, after, buffer_size)
        else:
            watcher = await Subscribed.open(settings, broker, order_id, after, buffer_size)
        opened.append(watcher)
        return watcher

    return open_watcher


@pytest.fixture(params=["pushed", "subscribed"])
def watch(request: pytest.FixtureRequest, settings: Settings, opened: list[Watcher]) -> Watch:
    """``await watch(order_id, after, buffer_size=, broker=)``: a watcher of the kind the
    test runs with."""
    return opener(request.param, settings, opened)


@pytest.fixture
def pushed(settings: Settings, opened: list[Watcher]) -> Open:
    """The same, always pushed: for what only a feed shows."""
    return cast(Open, opener("pushed", settings, opened))


async def settled() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def caught_up(watcher: Any) -> None:
    """Waits until the feed has read the table from its cursor on and is idle. Loop turns
    are not enough: on PostgreSQL the read is a round trip to the server."""
    await eventually(lambda: watcher.feed_._task is None, "the feed catching up")


# Every event once, in order, whatever the hub does ---------------------------------------------


async def test_events_the_table_delivered_are_not_delivered_again_from_the_feed(
    client: GraphQLClient, watch: Watch
) -> None:
    e = await store(client, ORDER, ORDER, ORDER)
    watcher = await watch(ORDER, after=e[0].cursor)
    taken = await watcher.take(2)  # from the table

    e += await store(client, ORDER)
    watcher.feed(e[1], e[2], e[3])
    taken += await watcher.take(1)

    assert taken == ids(e[1:4])


async def test_a_repeated_event_is_delivered_once(client: GraphQLClient, watch: Watch) -> None:
    e = await store(client, ORDER, ORDER)
    watcher = await watch(ORDER, after=e[0].cursor)
    taken = await watcher.take(1)

    e += await store(client, ORDER, ORDER)
    watcher.feed(e[2], e[2], e[3])
    taken += await watcher.take(2)

    assert taken == ids(e[1:4])


async def test_an_event_the_feed_skipped_is_read_from_the_table(
    client: GraphQLClient, watch: Watch
) -> None:
    e = await store(client, ORDER, ORDER)
    watcher = await watch(ORDER, after=e[0].cursor)
    taken = await watcher.take(1)

    e += await store(client, ORDER, ORDER, ORDER)
    watcher.feed(e[4])  # e[2] and e[3] never come
    taken += await watcher.take(3)

    assert taken == ids(e[1:5])


async def test_events_the_feed_delivers_out_of_order_are_delivered_in_order_once(
    client: GraphQLClient, watch: Watch
) -> None:
    e = await store(client, ORDER, ORDER)
    watcher = await watch(ORDER, after=e[0].cursor)
    taken = await watcher.take(1)

    e += await store(client, ORDER, ORDER)
    watcher.feed(e[3], e[2])
    e += await store(client, ORDER)
    watcher.feed(e[4])
    taken += await watcher.take(3)

    assert taken == ids(e[1:5])


async def test_resync_catches_up_from_the_table(client: GraphQLClient, watch: Watch) -> None:
    e = await store(client, ORDER, ORDER)
    watcher = await watch(ORDER, after=e[0].cursor)
    taken = await watcher.take(1)

    e += await store(client, ORDER, ORDER)
    watcher.feed(RESYNC)
    taken += await watcher.take(2)

    assert taken == ids(e[1:4])


async def test_account_watch_fills_gaps_in_position_order_across_orders(
    client: GraphQLClient, watch: Watch
) -> None:
    e = await store(client, "o-1", "o-2")
    watcher = await watch(None, after=e[0].cursor)
    taken = await watcher.take(1)

    e += await store(client, "o-2", "o-1", "o-3")
    watcher.feed(e[4], e[2])
    taken += await watcher.take(3)

    assert taken == ids(e[1:5])


async def test_order_watch_leaves_out_other_orders_the_feed_brings(
    client: GraphQLClient, watch: Watch
) -> None:
    e = await store(client, "o-1", "o-1")
    watcher = await watch("o-1", after=e[0].cursor)
    taken = await watcher.take(1)

    e += await store(client, "o-2", "o-1")
    watcher.feed(e[2], e[3])
    taken += await watcher.take(1)

    assert taken == ids([e[1], e[3]])


# Slow consumers, closing, failures -------------------------------------------------------------


async def test_a_consumer_that_stops_reading_is_ended_with_the_cursor_of_the_last_event_it_got(
    client: GraphQLClient, watch: Watch
) -> None:
    e = await store(client, ORDER)
    watcher = await watch(ORDER, after=e[0].cursor, buffer_size=2)
    await settled()

    watcher.hold()
    # More than the consumer can have on its way plus what the buffer holds.
    e += await store(client, *[ORDER] * (watcher.in_flight + 3))
    watcher.feed(*e[1:])
    watcher.release()
    taken, ended = await watcher.take_until_ended()

    # What was on its way arrives; then the end, with the cursor of the last of it.
    assert taken == ids(e[1 : 1 + watcher.in_flight])
    assert isinstance(ended, SlowConsumer)
    assert ended.resume_after == e[watcher.in_flight].cursor
    assert watcher.broker.hub.subscription_count == 0


class BurstHub(Hub):
    """A hub whose subscriptions overflow as soon as they are made: as if more events than
    fit in the buffer were committed between a watcher subscribing and it reading."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def add(self, subscription: Subscription) -> None:
        super().add(subscription)
        for _ in range(self.limit + 1):
            subscription.push(RESYNC)


async def test_overflow_before_any_event_leaves_a_way_to_resume_without_loss(
    client: GraphQLClient, watch: Watch
) -> None:
    # The order has no events when the watcher starts, and its buffer overflows before it
    # delivers any: resubscribing as told (after=resumeAfter) must still deliver every event
    # committed since it first subscribed.
    burst = LocalBroker()
    burst.hub = BurstHub(limit=2)
    first = await watch(ORDER, after=None, buffer_size=2, broker=burst)
    with pytest.raises(SlowConsumer) as ended:
        await first.take(1)
    e = await store(client, ORDER, ORDER)

    resumed = await watch(ORDER, after=ended.value.resume_after)

    assert await resumed.take(2) == ids(e)


async def test_a_closed_subscription_leaves_the_hub_and_delivers_nothing_more(
    client: GraphQLClient, watch: Watch
) -> None:
    e = await store(client, ORDER)
    watcher = await watch(ORDER, after=e[0].cursor)
    await settled()

    await watcher.close()
    e += await store(client, ORDER)
    watcher.feed(e[1])
    await settled()

    assert watcher.broker.hub.subscription_count == 0
    assert await watcher.delivers_nothing_more()


async def test_a_database_failure_ends_the_subscription_with_the_error(
    monkeypatch: pytest.MonkeyPatch, watch: Watch
) -> None:
    async def failing_latest(account_id: str, order_id: str | None) -> None:
        raise ConnectionError("database unavailable")

    monkeypatch.setattr(events, "latest", failing_latest)
    watcher = await watch(ORDER, after=None)

    _, ended = await watcher.take_until_ended()

    if isinstance(watcher, Subscribed):
        # The resolver's error, as the GraphQL layer reports an outage.
        assert isinstance(ended, Ended)
        assert ended.extensions is not None
        assert (ended.extensions["code"], ended.extensions["retryable"]) == (
            "INTERNAL_SERVER_ERROR",
            True,
        )
    else:
        assert isinstance(ended, ConnectionError)
    assert watcher.broker.hub.subscription_count == 0


# What only a pushed feed shows -----------------------------------------------------------------


async def test_an_idle_feed_runs_no_task_and_sends_the_next_event_at_once(
    client: GraphQLClient, pushed: Open
) -> None:
    e = await store(client, ORDER, ORDER)
    watcher = await pushed(ORDER, after=e[0].cursor)
    assert await watcher.take(1) == [e[1].id]
    await settled()
    assert watcher.feed_._task is None

    e += await store(client, ORDER)
    watcher.feed(e[2])

    # Delivered within the push itself: no task was needed.
    assert watcher.inbox.received.get_nowait() == e[2]
    assert watcher.feed_._task is None


async def test_a_send_that_must_wait_keeps_later_events_in_order(
    client: GraphQLClient, pushed: Open
) -> None:
    e = await store(client, ORDER)
    watcher = await pushed(ORDER, after=e[0].cursor)
    await caught_up(watcher)

    watcher.hold()
    e += await store(client, ORDER, ORDER, ORDER)
    watcher.feed(*e[1:])
    await settled()
    assert watcher.inbox.received.empty()
    watcher.release()

    assert await watcher.take(3) == ids(e[1:])
    await settled()
    assert watcher.feed_._task is None


async def test_a_send_that_fails_at_once_ends_the_feed_with_its_error(
    client: GraphQLClient, pushed: Open
) -> None:
    e = await store(client, ORDER)
    watcher = await pushed(ORDER, after=e[0].cursor)
    await caught_up(watcher)

    async def refuse(event: StoredEvent) -> None:
        raise ConnectionResetError("socket gone")

    watcher.inbox.send_event = refuse  # type: ignore[method-assign]
    e += await store(client, ORDER)
    watcher.feed(e[1])

    with pytest.raises(ConnectionResetError):
        await watcher.take(1)
    assert watcher.broker.hub.subscription_count == 0


async def test_a_feed_closed_while_a_send_waits_delivers_nothing_more(
    client: GraphQLClient, pushed: Open
) -> None:
    e = await store(client, ORDER)
    watcher = await pushed(ORDER, after=e[0].cursor)
    await caught_up(watcher)
    watcher.hold()
    e += await store(client, ORDER, ORDER)
    watcher.feed(e[1], e[2])  # the first send waits, the second is buffered

    await watcher.close()
    watcher.release()
    await settled()

    assert watcher.inbox.received.empty()
    assert watcher.broker.hub.subscription_count == 0
    assert watcher.feed_._task is None


# Reads that feeds share -------------------------------------------------------------------------


async def test_subscriptions_starting_together_share_one_lookup_of_the_head(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lookups = 0

    async def slow_latest(account_id: str, order_id: str | None) -> None:
        nonlocal lookups
        lookups += 1
        await asyncio.sleep(0.05)

    monkeypatch.setattr(events, "latest", slow_latest)

    answers = await asyncio.gather(*(live._latest(ACCOUNT, ORDER) for _ in range(20)))

    assert (lookups, answers) == (1, [None] * 20)


def count_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the table reads feeds make from now on: head lookups and catch-up reads."""
    reads = {"latest": 0, "events_after": 0}
    for name in reads:
        real = getattr(events, name)

        async def counted(*args: object, _name: str = name, _real: object = real) -> object:
            reads[_name] += 1
            return await _real(*args)  # type: ignore[operator]

        monkeypatch.setattr(events, name, counted)
    return reads


async def started(feeds: list[Pushed]) -> None:
    async with asyncio.timeout(WAIT):
        # A feed signals nothing when it has read where to start; polled.
        while any(watcher.feed_._progress is None for watcher in feeds):  # noqa: ASYNC110
            await asyncio.sleep(0.001)


async def test_subscriptions_starting_together_read_the_head_once_and_nothing_after_it(
    client: GraphQLClient, pushed: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reconnect storm without cursors: the head is read after they subscribed, so what
    # commits later reaches them through the hub, and there is nothing to catch up on.
    e = await store(client, ORDER)
    reads = count_reads(monkeypatch)
    broker = LocalBroker()
    many = [await pushed(ORDER, after=None, broker=broker) for _ in range(50)]
    await started(many)

    e += await store(client, ORDER)
    broker.hub.publish(e[1])

    assert [await watcher.take(1) for watcher in many] == [[e[1].id]] * 50
    assert reads == {"latest": 1, "events_after": 0}


async def test_subscriptions_resuming_from_one_cursor_share_one_catch_up_read(
    client: GraphQLClient, pushed: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = await store(client, ORDER, ORDER, ORDER)
    reads = count_reads(monkeypatch)
    broker = LocalBroker()
    many = [await pushed(ORDER, after=e[0].cursor, broker=broker) for _ in range(50)]

    assert [await watcher.take(2) for watcher in many] == [[e[1].id, e[2].id]] * 50
    assert reads == {"latest": 0, "events_after": 1}


async def test_a_subscription_starting_while_the_head_is_read_gets_a_head_read_after_it(
    client: GraphQLClient, pushed: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first lookup's answer predates an event committed before the second subscription
    # started. Sharing that answer would hand the second one the older event later on; it
    # must start from a head read after it subscribed.
    e = await store(client, ORDER)
    real_latest = events.latest
    answered, release = asyncio.Event(), asyncio.Event()

    async def slow_first_latest(account_id: str, order_id: str | None) -> StoredEvent | None:
        answer = await real_latest(account_id, order_id)
        if not answered.is_set():
            answered.set()
            await release.wait()  # the answer is on its way back, slowly
        return answer

    monkeypatch.setattr(events, "latest", slow_first_latest)
    broker = LocalBroker()
    first = await pushed(ORDER, after=None, broker=broker)
    async with asyncio.timeout(WAIT):
        await answered.wait()
    e += await store(client, ORDER)  # not published: neither feed had it live
    second = await pushed(ORDER, after=None, broker=broker)
    release.set()
    await started([first, second])

    e += await store(client, ORDER)
    broker.hub.publish(e[2])

    assert await second.take(1) == [e[2].id]
    assert await first.take(2) == [e[1].id, e[2].id]  # its gap is filled from the table
