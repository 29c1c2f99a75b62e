"""The hub: which subscriptions an event reaches, and what a full buffer does."""

from __future__ import annotations

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


def pending(subscription: Subscription) -> list[Item | None]:
    """Every item the subscription holds (None last: it has overflowed)."""
    items: list[Item | None] = []
    while (item := subscription.take()) is not None:
        items.append(item)
    if subscription.overflowed:
        items.append(None)
    return items


def subscribed(hub: Hub, account_id: str, order_id: str | None, limit: int) -> Subscription:
    subscription = Subscription(hub, account_id, order_id, limit)
    hub.add(subscription)
    return subscription


async def test_order_subscription_receives_its_orders_events() -> None:
    hub = Hub()
    subscription = subscribed(hub, ACCOUNT, "o-1", limit=10)

    hub.publish(event("o-1", 1))
    hub.publish(event("o-1", 2))

    assert pending(subscription) == [event("o-1", 1), event("o-1", 2)]


async def test_order_subscription_leaves_out_other_orders_and_accounts() -> None:
    hub = Hub()
    subscription = subscribed(hub, ACCOUNT, "o-1", limit=10)

    hub.publish(event("o-2"))
    hub.publish(event("o-1", account_id=OTHER_ACCOUNT))

    assert pending(subscription) == []


async def test_account_subscription_receives_every_order_of_its_account() -> None:
    hub = Hub()
    subscription = subscribed(hub, ACCOUNT, None, limit=10)

    hub.publish(event("o-1"))
    hub.publish(event("o-2"))
    hub.publish(event("o-1", account_id=OTHER_ACCOUNT))

    assert pending(subscription) == [event("o-1"), event("o-2")]


async def test_event_reaches_both_the_order_and_the_account_subscription() -> None:
    hub = Hub()
    by_order = subscribed(hub, ACCOUNT, "o-1", limit=10)
    by_account = subscribed(hub, ACCOUNT, None, limit=10)

    hub.publish(event("o-1"))

    assert (pending(by_order), pending(by_account)) == ([event("o-1")], [event("o-1")])


async def test_overflow_ends_the_subscription_and_drops_what_it_buffered() -> None:
    hub = Hub()
    subscription = subscribed(hub, ACCOUNT, "o-1", limit=3)

    for version in range(1, 5):
        hub.publish(event("o-1", version))

    assert pending(subscription) == [None]


async def test_overflowed_subscription_takes_nothing_more() -> None:
    hub = Hub()
    subscription = subscribed(hub, ACCOUNT, "o-1", limit=1)
    hub.publish(event("o-1", 1))
    hub.publish(event("o-1", 2))

    hub.publish(event("o-1", 3))

    assert [subscription.take(), subscription.take()] == [None, None]
    assert subscription.overflowed


async def test_buffer_up_to_its_limit_does_not_overflow() -> None:
    hub = Hub()
    subscription = subscribed(hub, ACCOUNT, "o-1", limit=3)

    for version in range(1, 4):
        hub.publish(event("o-1", version))

    assert pending(subscription) == [event("o-1", v) for v in range(1, 4)]


async def test_overflow_of_one_subscription_leaves_the_others_alone() -> None:
    hub = Hub()
    small = subscribed(hub, ACCOUNT, "o-1", limit=1)
    large = subscribed(hub, ACCOUNT, "o-1", limit=10)

    hub.publish(event("o-1", 1))
    hub.publish(event("o-1", 2))

    assert (pending(small), pending(large)) == (
        [None],
        [event("o-1", 1), event("o-1", 2)],
    )


async def test_resync_reaches_every_subscription() -> None:
    hub = Hub()
    subscriptions = [
        subscribed(hub, ACCOUNT, "o-1", limit=10),
        subscribed(hub, ACCOUNT, "o-2", limit=10),
        subscribed(hub, ACCOUNT, None, limit=10),
        subscribed(hub, OTHER_ACCOUNT, None, limit=10),
    ]

    hub.resync_all()

    assert [pending(s) for s in subscriptions] == [[RESYNC]] * 4


@pytest.mark.parametrize("order_id", ["o-1", None], ids=["order", "account"])
async def test_closed_subscription_is_forgotten(order_id: str | None) -> None:
    hub = Hub()
    subscription = subscribed(hub, ACCOUNT, order_id, limit=10)

    subscription.close()

    assert (hub.wants(ACCOUNT, "o-1"), hub.subscription_count) == (False, 0)


async def test_closed_subscription_receives_nothing() -> None:
    hub = Hub()
    subscription = subscribed(hub, ACCOUNT, "o-1", limit=10)
    subscription.close()

    hub.publish(event("o-1"))
    hub.resync_all()

    assert pending(subscription) == []


async def test_closing_one_subscription_keeps_the_others_of_its_order() -> None:
    hub = Hub()
    closing = subscribed(hub, ACCOUNT, "o-1", limit=10)
    staying = subscribed(hub, ACCOUNT, "o-1", limit=10)
    closing.close()

    hub.publish(event("o-1"))

    assert (hub.subscription_count, pending(staying)) == (1, [event("o-1")])


async def test_closing_twice_is_harmless() -> None:
    hub = Hub()
    subscription = subscribed(hub, ACCOUNT, None, limit=10)
    other = subscribed(hub, ACCOUNT, None, limit=10)

    subscription.close()
    subscription.close()

    assert (hub.subscription_count, hub.wants(ACCOUNT, "o-1")) == (1, True)
    other.close()


async def test_a_notification_nobody_here_watches_is_not_decoded() -> None:
    broker = PostgresBroker("postgres://nowhere.invalid/db")
    watched = event("o-1")
    ignored = event("o-2")
    subscription = subscribed(broker.hub, ACCOUNT, "o-1", limit=10)

    decoded = [
        await broker._decode(encode_json(e.to_record()).decode()) for e in (watched, ignored)
    ]

    assert decoded == [watched, None]
    subscription.close()
