"""The hub: which subscriptions an event reaches, and what a full buffer does."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from app.broker import RESYNC, Hub, Item, PostgresBroker, Subscription
from app.encoding import encode_json
from app.records import EventState, StoredEvent

ACCOUNT = "T12345678"
OTHER_ACCOUNT = "T87654321"
CREATED_AT = datetime(2026, 1, 1, tzinfo=UTC)


def event(order_id: str = "o-1", version: int = 1, account_id: str = ACCOUNT) -> StoredEvent:
    return StoredEvent(
        id=f"{account_id}/{order_id}/{version}",
        account_id=account_id,
        order_id=order_id,
        version=version,
        position=version,
        event_type="service-event",
        state=EventState.SUCCESS,
        service="kitchen",
        service_status="accepted",
        description=None,
        metadata=None,
        created_at=CREATED_AT,
        created_by="kitchen-1",
    )


async def pending(subscription: Subscription) -> list[Item | None]:
    """Every item the subscription hands out without waiting (None: it has overflowed)."""
    items: list[Item | None] = []
    while True:
        getting = asyncio.ensure_future(subscription.get())
        # One turn of the loop: get() returns at once when it has something to give.
        await asyncio.sleep(0)
        if not getting.done():
            getting.cancel()
            return items
        items.append(getting.result())
        if items[-1] is None:
            return items


async def test_order_subscription_receives_its_orders_events() -> None:
    hub = Hub()
    subscription = hub.subscribe(ACCOUNT, "o-1", limit=10)

    hub.publish(event("o-1", 1))
    hub.publish(event("o-1", 2))

    assert await pending(subscription) == [event("o-1", 1), event("o-1", 2)]


async def test_order_subscription_leaves_out_other_orders_and_accounts() -> None:
    hub = Hub()
    subscription = hub.subscribe(ACCOUNT, "o-1", limit=10)

    hub.publish(event("o-2"))
    hub.publish(event("o-1", account_id=OTHER_ACCOUNT))

    assert await pending(subscription) == []


async def test_account_subscription_receives_every_order_of_its_account() -> None:
    hub = Hub()
    subscription = hub.subscribe(ACCOUNT, None, limit=10)

    hub.publish(event("o-1"))
    hub.publish(event("o-2"))
    hub.publish(event("o-1", account_id=OTHER_ACCOUNT))

    assert await pending(subscription) == [event("o-1"), event("o-2")]


async def test_event_reaches_both_the_order_and_the_account_subscription() -> None:
    hub = Hub()
    by_order = hub.subscribe(ACCOUNT, "o-1", limit=10)
    by_account = hub.subscribe(ACCOUNT, None, limit=10)

    hub.publish(event("o-1"))

    assert (await pending(by_order), await pending(by_account)) == ([event("o-1")], [event("o-1")])


async def test_waiting_get_wakes_up_on_publish() -> None:
    hub = Hub()
    subscription = hub.subscribe(ACCOUNT, "o-1", limit=10)
    waiting = asyncio.ensure_future(subscription.get())
    await asyncio.sleep(0)

    hub.publish(event("o-1"))

    async with asyncio.timeout(1):
        assert await waiting == event("o-1")


async def test_overflow_ends_the_subscription_and_drops_what_it_buffered() -> None:
    hub = Hub()
    subscription = hub.subscribe(ACCOUNT, "o-1", limit=3)

    for version in range(1, 5):
        hub.publish(event("o-1", version))

    assert await pending(subscription) == [None]


async def test_overflowed_subscription_takes_nothing_more() -> None:
    hub = Hub()
    subscription = hub.subscribe(ACCOUNT, "o-1", limit=1)
    hub.publish(event("o-1", 1))
    hub.publish(event("o-1", 2))

    hub.publish(event("o-1", 3))

    assert [await subscription.get(), await subscription.get()] == [None, None]


async def test_buffer_up_to_its_limit_does_not_overflow() -> None:
    hub = Hub()
    subscription = hub.subscribe(ACCOUNT, "o-1", limit=3)

    for version in range(1, 4):
        hub.publish(event("o-1", version))

    assert await pending(subscription) == [event("o-1", v) for v in range(1, 4)]


async def test_overflow_of_one_subscription_leaves_the_others_alone() -> None:
    hub = Hub()
    small = hub.subscribe(ACCOUNT, "o-1", limit=1)
    large = hub.subscribe(ACCOUNT, "o-1", limit=10)

    hub.publish(event("o-1", 1))
    hub.publish(event("o-1", 2))

    assert (await pending(small), await pending(large)) == (
        [None],
        [event("o-1", 1), event("o-1", 2)],
    )


async def test_resync_reaches_every_subscription() -> None:
    hub = Hub()
    subscriptions = [
        hub.subscribe(ACCOUNT, "o-1", limit=10),
        hub.subscribe(ACCOUNT, "o-2", limit=10),
        hub.subscribe(ACCOUNT, None, limit=10),
        hub.subscribe(OTHER_ACCOUNT, None, limit=10),
    ]

    hub.resync_all()

    assert [await pending(s) for s in subscriptions] == [[RESYNC]] * 4


@pytest.mark.parametrize("order_id", ["o-1", None], ids=["order", "account"])
async def test_closed_subscription_is_forgotten(order_id: str | None) -> None:
    hub = Hub()
    subscription = hub.subscribe(ACCOUNT, order_id, limit=10)

    subscription.close()

    assert (hub.wants(ACCOUNT, "o-1"), hub.subscription_count) == (False, 0)


async def test_closed_subscription_receives_nothing() -> None:
    hub = Hub()
    subscription = hub.subscribe(ACCOUNT, "o-1", limit=10)
    subscription.close()

    hub.publish(event("o-1"))
    hub.resync_all()

    assert await pending(subscription) == []


async def test_closing_one_subscription_keeps_the_others_of_its_order() -> None:
    hub = Hub()
    closing = hub.subscribe(ACCOUNT, "o-1", limit=10)
    staying = hub.subscribe(ACCOUNT, "o-1", limit=10)
    closing.close()

    hub.publish(event("o-1"))

    assert (hub.subscription_count, await pending(staying)) == (1, [event("o-1")])


async def test_closing_twice_is_harmless() -> None:
    hub = Hub()
    subscription = hub.subscribe(ACCOUNT, None, limit=10)
    other = hub.subscribe(ACCOUNT, None, limit=10)

    subscription.close()
    subscription.close()

    assert (hub.subscription_count, hub.wants(ACCOUNT, "o-1")) == (1, True)
    other.close()


async def test_a_notification_nobody_here_watches_is_not_decoded() -> None:
    broker = PostgresBroker("postgres://nowhere.invalid/db")
    watched = event("o-1")
    ignored = event("o-2")
    subscription = broker.hub.subscribe(ACCOUNT, "o-1", limit=10)

    decoded = [
        await broker._decode(encode_json(e.to_record()).decode()) for e in (watched, ignored)
    ]

    assert decoded == [watched, None]
    subscription.close()
