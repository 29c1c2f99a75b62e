"""Watching a stream (``app.live.watch``) with a feed the test plays by hand.

Events are stored through the app (so the table holds them), but reach the watcher's hub
only when a test pushes them: repeated, late, out of order or not at all, as a real feed
may. Whatever the feed does, the watcher must yield each event once, in order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

import pytest

import app.events
from app import live
from app.auth import Principal
from app.broker import RESYNC, Hub, LocalBroker, Subscription
from app.errors import SlowConsumer
from app.models import OrderEvent
from app.records import StoredEvent
from tests.conftest import GraphQLClient
from tests.helpers import ACCOUNT, ORDER, created

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


class Watcher:
    """``live.watch`` on a broker of the test's own."""

    def __init__(
        self,
        order_id: str | None,
        after: str | None,
        *,
        buffer_size: int = 100,
        broker: LocalBroker | None = None,
    ) -> None:
        self.broker = broker or LocalBroker()
        self.stream: AsyncGenerator[StoredEvent, None] = live.watch(
            reader(),
            self.broker,
            ACCOUNT,
            order_id,
            after,
            buffer_size=buffer_size,
        )

    def feed(self, *items: StoredEvent | object) -> None:
        for item in items:
            if isinstance(item, StoredEvent):
                self.broker.hub.publish(item)
            else:
                self.broker.hub.resync_all()

    async def take(self, n: int) -> list[str]:
        """The ids of the next ``n`` events."""
        taken = []
        async with asyncio.timeout(WAIT):
            for _ in range(n):
                taken.append((await anext(self.stream)).id)
        return taken

    async def close(self) -> None:
        await self.stream.aclose()


@pytest.fixture
async def watchers() -> AsyncGenerator[list[Watcher], None]:
    """Watchers a test opens; closed at its end."""
    opened: list[Watcher] = []
    yield opened
    for watcher in opened:
        await watcher.close()


def ids(events: list[StoredEvent]) -> list[str]:
    return [event.id for event in events]


async def test_events_the_table_delivered_are_not_delivered_again_from_the_feed(
    client: GraphQLClient, watchers: list[Watcher]
) -> None:
    e = await store(client, ORDER, ORDER, ORDER)
    watcher = Watcher(ORDER, after=e[0].cursor)
    watchers.append(watcher)
    taken = await watcher.take(2)  # from the table

    e += await store(client, ORDER)
    watcher.feed(e[1], e[2], e[3])
    taken += await watcher.take(1)

    assert taken == ids(e[1:4])


async def test_a_repeated_event_is_delivered_once(
    client: GraphQLClient, watchers: list[Watcher]
) -> None:
    e = await store(client, ORDER, ORDER)
    watcher = Watcher(ORDER, after=e[0].cursor)
    watchers.append(watcher)
    taken = await watcher.take(1)

    e += await store(client, ORDER, ORDER)
    watcher.feed(e[2], e[2], e[3])
    taken += await watcher.take(2)

    assert taken == ids(e[1:4])


async def test_an_event_the_feed_skipped_is_read_from_the_table(
    client: GraphQLClient, watchers: list[Watcher]
) -> None:
    e = await store(client, ORDER, ORDER)
    watcher = Watcher(ORDER, after=e[0].cursor)
    watchers.append(watcher)
    taken = await watcher.take(1)

    e += await store(client, ORDER, ORDER, ORDER)
    watcher.feed(e[4])  # e[2] and e[3] never come
    taken += await watcher.take(3)

    assert taken == ids(e[1:5])


async def test_events_the_feed_delivers_out_of_order_are_delivered_in_order_once(
    client: GraphQLClient, watchers: list[Watcher]
) -> None:
    e = await store(client, ORDER, ORDER)
    watcher = Watcher(ORDER, after=e[0].cursor)
    watchers.append(watcher)
    taken = await watcher.take(1)

    e += await store(client, ORDER, ORDER)
    watcher.feed(e[3], e[2])
    e += await store(client, ORDER)
    watcher.feed(e[4])
    taken += await watcher.take(3)

    assert taken == ids(e[1:5])


async def test_resync_catches_up_from_the_table(
    client: GraphQLClient, watchers: list[Watcher]
) -> None:
    e = await store(client, ORDER, ORDER)
    watcher = Watcher(ORDER, after=e[0].cursor)
    watchers.append(watcher)
    taken = await watcher.take(1)

    e += await store(client, ORDER, ORDER)
    watcher.feed(RESYNC)
    taken += await watcher.take(2)

    assert taken == ids(e[1:4])


async def test_account_watch_fills_gaps_in_position_order_across_orders(
    client: GraphQLClient, watchers: list[Watcher]
) -> None:
    e = await store(client, "o-1", "o-2")
    watcher = Watcher(None, after=e[0].cursor)
    watchers.append(watcher)
    taken = await watcher.take(1)

    e += await store(client, "o-2", "o-1", "o-3")
    watcher.feed(e[4], e[2])
    taken += await watcher.take(3)

    assert taken == ids(e[1:5])


async def test_order_watch_leaves_out_other_orders_the_feed_brings(
    client: GraphQLClient, watchers: list[Watcher]
) -> None:
    e = await store(client, "o-1", "o-1")
    watcher = Watcher("o-1", after=e[0].cursor)
    watchers.append(watcher)
    taken = await watcher.take(1)

    e += await store(client, "o-2", "o-1")
    watcher.feed(e[2], e[3])
    taken += await watcher.take(1)

    assert taken == ids([e[1], e[3]])


async def test_overflow_ends_the_watch_with_the_cursor_of_the_last_event_delivered(
    client: GraphQLClient, watchers: list[Watcher]
) -> None:
    e = await store(client, ORDER, ORDER)
    watcher = Watcher(ORDER, after=e[0].cursor, buffer_size=2)
    watchers.append(watcher)
    await watcher.take(1)

    e += await store(client, ORDER, ORDER, ORDER)
    watcher.feed(*e[2:])
    with pytest.raises(SlowConsumer) as ended:
        await watcher.take(1)

    assert ended.value.resume_after == e[1].cursor


class BurstHub(Hub):
    """A hub whose subscriptions overflow as soon as they are made: as if more events than
    fit in the buffer were committed between a watcher subscribing and it reading."""

    def subscribe(self, account_id: str, order_id: str | None, limit: int) -> Subscription:
        subscription = super().subscribe(account_id, order_id, limit)
        for _ in range(limit + 1):
            subscription.push(RESYNC)
        return subscription


async def test_overflow_before_any_event_leaves_a_way_to_resume_without_loss(
    client: GraphQLClient, watchers: list[Watcher]
) -> None:
    # The order has no events when the watcher starts, and its buffer overflows before it
    # delivers any: resubscribing as told (after=resumeAfter) must still deliver every event
    # committed since it first subscribed.
    burst = LocalBroker()
    burst.hub = BurstHub()
    first = Watcher(ORDER, after=None, buffer_size=2, broker=burst)
    watchers.append(first)
    with pytest.raises(SlowConsumer) as ended:
        await first.take(1)
    e = await store(client, ORDER, ORDER)

    resumed = Watcher(ORDER, after=ended.value.resume_after)
    watchers.append(resumed)

    assert await resumed.take(2) == ids(e)


async def test_subscriptions_starting_together_share_one_lookup_of_the_head(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lookups = 0

    async def slow_latest(account_id: str, order_id: str | None) -> None:
        nonlocal lookups
        lookups += 1
        await asyncio.sleep(0.05)

    monkeypatch.setattr(app.events, "latest", slow_latest)

    answers = await asyncio.gather(*(live._latest(ACCOUNT, ORDER) for _ in range(20)))

    assert (lookups, answers) == (1, [None] * 20)
