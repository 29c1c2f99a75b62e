"""The outbox (app.hooks.outbox): an event's webhook deliveries are written with it, in its
transaction, one per active hook of its account, on every path of the writer."""

from __future__ import annotations

import asyncio
import uuid

from app.hooks import outbox
from app.models import HookDelivery, OrderEvent
from tests.conftest import GraphQLClient
from tests.helpers import ACCOUNT, ORDER, OTHER_ACCOUNT, create, created
from tests.receiver import add_hook


async def test_an_event_gets_a_delivery_for_each_active_hook_of_its_account(
    client: GraphQLClient,
) -> None:
    first, second = await add_hook(), await add_hook()
    await add_hook(active=False)
    await add_hook(OTHER_ACCOUNT)

    event = await created(client)

    rows = await HookDelivery.all().order_by("hook_id")
    assert [row.hook_id for row in rows] == [first.id, second.id]
    for row in rows:
        assert (row.account_id, row.order_id, row.version) == (ACCOUNT, ORDER, 1)
        assert (row.event_id, row.event, row.status) == (
            event["id"],
            outbox.ORDER_EVENT_ADD,
            "pending",
        )
        assert str(uuid.UUID(row.event_delivery)) == row.event_delivery
    assert rows[0].event_delivery != rows[1].event_delivery


async def test_an_account_without_hooks_gets_no_deliveries(client: GraphQLClient) -> None:
    await add_hook(OTHER_ACCOUNT)

    await created(client)

    assert await HookDelivery.all().count() == 0


async def test_a_batch_of_concurrent_events_gets_one_delivery_each(client: GraphQLClient) -> None:
    await add_hook()

    bodies = await asyncio.gather(*(create(client, f"order-{i % 3}") for i in range(30)))

    assert all("errors" not in body for body in bodies)
    deliveries = {(row.order_id, row.version, row.event_id) for row in await HookDelivery.all()}
    events = {(row.order_id, row.version, row.event_id) for row in await OrderEvent.all()}
    assert deliveries == events
    assert len(deliveries) == 30


async def test_an_event_with_an_idempotency_key_gets_its_delivery_once(
    client: GraphQLClient,
) -> None:
    await add_hook()
    query = """mutation { createOrderEvent(accountId: "T12345678", orderId: "order-1",
        idempotencyKey: "k-1", event: {service: "kitchen", serviceStatus: "ready"}) { id } }"""

    answers = [await client.execute(query) for _ in range(3)]

    (row,) = await HookDelivery.all()
    assert row.event_id == answers[0]["data"]["createOrderEvent"]["id"]


async def test_an_event_with_an_expected_version_gets_its_delivery(client: GraphQLClient) -> None:
    await add_hook()
    query = """mutation { createOrderEvent(accountId: "T12345678", orderId: "order-1",
        expectedVersion: 0, event: {service: "kitchen", serviceStatus: "ready"}) { version } }"""

    await client.execute(query)
    await client.execute(query)  # a conflict: nothing stored, no delivery

    (row,) = await HookDelivery.all()
    assert row.version == 1
