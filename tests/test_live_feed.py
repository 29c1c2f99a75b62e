"""``app.live.Feed``, the push-driven shape of ``live.watch`` that compiled WebSocket
subscriptions use: the same scenarios as ``tests/test_live.py`` (every event once, in order,
whatever the feed does), run against a feed, and what only a feed has: no task while idle,
sends that have to wait, closing. A feed overflows only while a send waits (its consumer is
the socket), so the overflow scenario is its own here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator

import pytest

from app import events, live
from app.broker import LocalBroker
from app.errors import SlowConsumer
from app.events import StoredEvent
from tests import test_live
from tests.conftest import GraphQLClient
from tests.helpers import ACCOUNT, ORDER, eventually
from tests.test_live import (  # the generator's scenarios, run here against a feed
    WAIT,
    reader,
    store,
    test_a_repeated_event_is_delivered_once,
    test_account_watch_fills_gaps_in_position_order_across_orders,
    test_an_event_the_feed_skipped_is_read_from_the_table,
    test_events_the_feed_delivers_out_of_order_are_delivered_in_order_once,
    test_events_the_table_delivered_are_not_delivered_again_from_the_feed,
    test_order_watch_leaves_out_other_orders_the_feed_brings,
    test_resync_catches_up_from_the_table,
)

__all__ = [
    "test_a_repeated_event_is_delivered_once",
    "test_account_watch_fills_gaps_in_position_order_across_orders",
    "test_an_event_the_feed_skipped_is_read_from_the_table",
    "test_events_the_feed_delivers_out_of_order_are_delivered_in_order_once",
    "test_events_the_table_delivered_are_not_delivered_again_from_the_feed",
    "test_order_watch_leaves_out_other_orders_the_feed_brings",
    "test_resync_catches_up_from_the_table",
]


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


class FeedWatcher(test_live.Watcher):
    """``test_live.Watcher`` over a ``live.Feed`` (its ``feed`` is the same)."""

    def __init__(
        self,
        order_id: str | None,
        after: str | None,
        *,
        buffer_size: int = 100,
        broker: LocalBroker | None = None,
    ) -> None:
        self.broker = broker or LocalBroker()
        self.inbox = Inbox()
        start = live.check(reader(), ACCOUNT, order_id, after)
        self.feed_ = live.Feed(
            self.broker,
            ACCOUNT,
            order_id,
            None if start is None or after is None else (*start, after),
            self.inbox,
            buffer_size=buffer_size,
        )
        self.feed_.start()

    async def take(self, n: int) -> list[str]:
        taken = []
        async with asyncio.timeout(WAIT):
            for _ in range(n):
                item = await self.inbox.received.get()
                if isinstance(item, Exception):
                    raise item
                taken.append(item.id)
        return taken

    async def close(self) -> None:
        self.feed_.close()


@pytest.fixture(autouse=True)
def feed_watchers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(test_live, "Watcher", FeedWatcher)
    yield


@pytest.fixture
async def watchers() -> AsyncGenerator[list[FeedWatcher], None]:
    opened: list[FeedWatcher] = []
    yield opened
    for watcher in opened:
        await watcher.close()


async def settled() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def caught_up(watcher: FeedWatcher) -> None:
    """Waits until the feed has read the table from its cursor on and is idle. Loop turns
    are not enough: on PostgreSQL the read is a round trip to the server."""
    await eventually(lambda: watcher.feed_._task is None, "the feed catching up")


async def test_an_idle_feed_runs_no_task_and_sends_the_next_event_at_once(
    client: GraphQLClient, watchers: list[FeedWatcher]
) -> None:
    e = await store(client, ORDER, ORDER)
    watcher = FeedWatcher(ORDER, after=e[0].cursor)
    watchers.append(watcher)
    assert await watcher.take(1) == [e[1].id]
    await settled()
    assert watcher.feed_._task is None

    e += await store(client, ORDER)
    watcher.feed(e[2])

    # Delivered within the push itself: no task was needed.
    assert watcher.inbox.received.get_nowait() == e[2]
    assert watcher.feed_._task is None


async def test_a_send_that_must_wait_keeps_later_events_in_order(
    client: GraphQLClient, watchers: list[FeedWatcher]
) -> None:
    e = await store(client, ORDER)
    watcher = FeedWatcher(ORDER, after=e[0].cursor)
    watchers.append(watcher)
    await caught_up(watcher)

    watcher.inbox.gate.clear()
    e += await store(client, ORDER, ORDER, ORDER)
    watcher.feed(*e[1:])
    await settled()
    assert watcher.inbox.received.empty()
    watcher.inbox.gate.set()

    assert await watcher.take(3) == [event.id for event in e[1:]]
    await settled()
    assert watcher.feed_._task is None


async def test_a_feed_that_overflows_while_a_send_waits_ends_with_the_last_cursor(
    client: GraphQLClient, watchers: list[FeedWatcher]
) -> None:
    e = await store(client, ORDER)
    watcher = FeedWatcher(ORDER, after=e[0].cursor, buffer_size=2)
    watchers.append(watcher)
    await caught_up(watcher)

    watcher.inbox.gate.clear()
    e += await store(client, ORDER, ORDER, ORDER, ORDER, ORDER)
    watcher.feed(*e[1:])
    watcher.inbox.gate.set()

    assert await watcher.take(1) == [e[1].id]  # the send that was under way completes
    with pytest.raises(SlowConsumer) as ended:
        await watcher.take(1)
    assert ended.value.resume_after == e[1].cursor
    assert watcher.broker.hub.subscription_count == 0


async def test_a_closed_feed_leaves_the_hub_and_delivers_nothing_more(
    client: GraphQLClient, watchers: list[FeedWatcher]
) -> None:
    e = await store(client, ORDER)
    watcher = FeedWatcher(ORDER, after=e[0].cursor)
    await caught_up(watcher)
    watcher.inbox.gate.clear()
    e += await store(client, ORDER, ORDER)
    watcher.feed(e[1], e[2])  # the first send waits, the second is buffered

    await watcher.close()
    watcher.inbox.gate.set()
    await settled()

    assert watcher.inbox.received.empty()
    assert watcher.broker.hub.subscription_count == 0
    assert watcher.feed_._task is None


async def test_a_database_failure_ends_the_feed_with_the_error(
    monkeypatch: pytest.MonkeyPatch, watchers: list[FeedWatcher]
) -> None:
    async def failing_latest(account_id: str, order_id: str | None) -> None:
        raise ConnectionError("database unavailable")

    monkeypatch.setattr(events, "latest", failing_latest)
    watcher = FeedWatcher(ORDER, after=None)
    watchers.append(watcher)

    with pytest.raises(ConnectionError):
        await watcher.take(1)
    assert watcher.broker.hub.subscription_count == 0


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


async def started(feeds: list[FeedWatcher]) -> None:
    async with asyncio.timeout(WAIT):
        # A feed signals nothing when it has read where to start; polled.
        while any(watcher.feed_._progress is None for watcher in feeds):  # noqa: ASYNC110
            await asyncio.sleep(0.001)


async def test_subscriptions_starting_together_read_the_head_once_and_nothing_after_it(
    client: GraphQLClient, watchers: list[FeedWatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reconnect storm without cursors: the head is read after they subscribed, so what
    # commits later reaches them through the hub, and there is nothing to catch up on.
    e = await store(client, ORDER)
    reads = count_reads(monkeypatch)
    broker = LocalBroker()
    many = [FeedWatcher(ORDER, after=None, broker=broker) for _ in range(50)]
    watchers.extend(many)
    await started(many)

    e += await store(client, ORDER)
    broker.hub.publish(e[1])

    assert [await watcher.take(1) for watcher in many] == [[e[1].id]] * 50
    assert reads == {"latest": 1, "events_after": 0}


async def test_subscriptions_resuming_from_one_cursor_share_one_catch_up_read(
    client: GraphQLClient, watchers: list[FeedWatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    e = await store(client, ORDER, ORDER, ORDER)
    reads = count_reads(monkeypatch)
    broker = LocalBroker()
    many = [FeedWatcher(ORDER, after=e[0].cursor, broker=broker) for _ in range(50)]
    watchers.extend(many)

    assert [await watcher.take(2) for watcher in many] == [[e[1].id, e[2].id]] * 50
    assert reads == {"latest": 0, "events_after": 1}


async def test_a_subscription_starting_while_the_head_is_read_gets_a_head_read_after_it(
    client: GraphQLClient, watchers: list[FeedWatcher], monkeypatch: pytest.MonkeyPatch
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
    first = FeedWatcher(ORDER, after=None, broker=broker)
    watchers.append(first)
    async with asyncio.timeout(WAIT):
        await answered.wait()
    e += await store(client, ORDER)  # not published: neither feed had it live
    second = FeedWatcher(ORDER, after=None, broker=broker)
    watchers.append(second)
    release.set()
    await started([first, second])

    e += await store(client, ORDER)
    broker.hub.publish(e[2])

    assert await second.take(1) == [e[2].id]
    assert await first.take(2) == [e[1].id, e[2].id]  # its gap is filled from the table
