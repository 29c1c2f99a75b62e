"""What the root fields do, for their resolvers and for compiled documents alike
(``app.api.documents`` finds a field's function here by the field's Python name)."""

from __future__ import annotations

from app import events
from app.api.context import Context
from app.api.types import OrderEventCollection, OrderEventInput, OrderStatusEvent


async def create_order_event(
    context: Context,
    account_id: str,
    order_id: str,
    event: OrderEventInput,
    idempotency_key: str | None,
    expected_version: int | None,
) -> OrderStatusEvent:
    stored = await events.create_event(
        context.require_principal(),
        account_id,
        order_id,
        event.to_new_event(),
        idempotency_key=idempotency_key,
        expected_version=expected_version,
        key_ttl_seconds=context.settings.idempotency_key_ttl_seconds,
        writer=context.writer,
    )
    return OrderStatusEvent.from_event(stored, context.settings.public_url)


async def order_events(
    context: Context,
    account_id: str,
    order_id: str,
    first: int | None,
    after: str | None,
) -> OrderEventCollection:
    page = await events.list_events(
        context.require_principal(),
        account_id,
        order_id,
        # An explicit null means the default, as leaving it out does.
        first=50 if first is None else first,
        after=after,
        max_page_size=context.settings.max_page_size,
    )
    return OrderEventCollection.from_page(page, context.settings.public_url)
