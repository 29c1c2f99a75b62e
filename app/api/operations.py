"""What the query and the mutation do, shared by their resolvers and ``app.api.fastpath``."""

from __future__ import annotations

from app import events
from app.api.context import Context
from app.records import EventPage, NewEvent, StoredEvent


async def create_order_event(
    context: Context,
    account_id: str,
    order_id: str,
    event: NewEvent,
    idempotency_key: str | None,
    expected_version: int | None,
) -> StoredEvent:
    return await events.create_event(
        context.require_principal(),
        account_id,
        order_id,
        event,
        idempotency_key=idempotency_key,
        expected_version=expected_version,
        key_ttl_seconds=context.settings.idempotency_key_ttl_seconds,
        writer=context.writer,
    )


async def order_events(
    context: Context, account_id: str, order_id: str, first: int | None, after: str | None
) -> EventPage:
    return await events.list_events(
        context.require_principal(),
        account_id,
        order_id,
        # An explicit null means the default, as leaving it out does.
        first=50 if first is None else first,
        after=after,
        max_page_size=context.settings.max_page_size,
    )
