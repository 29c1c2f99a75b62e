"""Concurrent writers through the ASGI app: versions stay 1, 2, 3, ... per order.

On PostgreSQL the requests run on separate pooled connections, so they really race for the
order's head row; on SQLite they share Tortoise's one connection.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from app.models import OrderEvent, OrderStream
from tests.helpers import ACCOUNT, ORDER, OTHER_ACCOUNT, create, event_input

WRITERS = 50


async def write_concurrently(
    client: Any, order_ids: list[str], tokens: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Posts one event per entry of ``order_ids`` (``account/order`` to name another account
    than the client's, with its token in ``tokens``), all at once; returns the created events."""

    def request(n: int, target: str) -> Any:
        account_id, _, order_id = target.rpartition("/")
        options = {"token": tokens[account_id]} if account_id and tokens else {}
        return create(
            client,
            order_id,
            account_id or ACCOUNT,
            event=event_input(serviceStatus=f"status-{n}"),
            **options,
        )

    bodies = await asyncio.gather(*(request(n, t) for n, t in enumerate(order_ids)))
    assert all("errors" not in body for body in bodies), [b for b in bodies if "errors" in b]
    return [body["data"]["createOrderEvent"] for body in bodies]


async def test_concurrent_writers_to_one_order_take_versions_one_to_n(client: Any) -> None:
    events = await write_concurrently(client, [ORDER] * WRITERS)

    assert sorted(e["version"] for e in events) == list(range(1, WRITERS + 1))


async def test_concurrent_writers_to_one_order_store_one_row_each(client: Any) -> None:
    await write_concurrently(client, [ORDER] * WRITERS)

    versions = (
        await OrderEvent.filter(order_id=ORDER)
        .order_by("version")
        .values_list("version", flat=True)
    )

    assert versions == list(range(1, WRITERS + 1))


async def test_concurrent_writers_leave_the_order_at_version_n(client: Any) -> None:
    await write_concurrently(client, [ORDER] * WRITERS)

    stream = await OrderStream.get(account_id=ACCOUNT, order_id=ORDER)

    assert stream.version == WRITERS


async def test_each_stored_version_holds_the_event_returned_with_it(client: Any) -> None:
    events = await write_concurrently(client, [ORDER] * WRITERS)

    stored = dict(await OrderEvent.filter(order_id=ORDER).values_list("version", "event_id"))

    assert stored == {e["version"]: e["id"] for e in events}


async def test_interleaved_writers_keep_every_order_gap_free(client: Any) -> None:
    orders = [f"order-{n}" for n in range(5)]

    events = await write_concurrently(client, orders * 12)

    versions: dict[str, list[int]] = defaultdict(list)
    for event in events:
        versions[event["orderId"]].append(event["version"])
    assert {order: sorted(v) for order, v in versions.items()} == {
        order: list(range(1, 13)) for order in orders
    }


async def test_interleaved_writers_store_every_event(client: Any) -> None:
    orders = [f"order-{n}" for n in range(5)]

    await write_concurrently(client, orders * 12)

    assert await OrderEvent.all().count() == 60


async def test_writers_in_two_accounts_keep_every_order_gap_free(client: Any, mint: Any) -> None:
    tokens = {account: mint(account=account) for account in (ACCOUNT, OTHER_ACCOUNT)}
    targets = [f"{account}/order-{n}" for account in tokens for n in range(3)]

    events = await write_concurrently(client, targets * 10, tokens)

    versions: dict[tuple[str, str], list[int]] = defaultdict(list)
    for event in events:
        versions[event["accountId"], event["orderId"]].append(event["version"])
    assert {target: sorted(v) for target, v in versions.items()} == {
        (account, f"order-{n}"): list(range(1, 11)) for account in tokens for n in range(3)
    }
