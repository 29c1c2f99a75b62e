"""Watching an order's stream, or a whole account's, live and resumable.

A watcher numbers what it has delivered by version (one order) or position (the account);
both are gap-free and in commit order (see ``app.models``), so:

1. it subscribes to the hub first, so nothing committed from then on can slip past;
2. it reads the head (or decodes ``after``) and replays what the table holds after it;
3. it then takes live events from its buffer, skipping any it has delivered already, and
   catching up from the table whenever the next number is not the one it expected, or the
   broker says notifications may have been lost.

So every event is delivered once, in order, whether it came from the table or the feed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from app import events, validation
from app.auth import Principal
from app.broker import RESYNC, Broker
from app.errors import BadUserInput, FieldError, SlowConsumer
from app.events import StoredEvent

CATCH_UP_BATCH = 500


@dataclass
class _Progress:
    """What a watcher has delivered: the last number and that event's cursor."""

    number: int
    cursor: str


def _number(event: StoredEvent, order_id: str | None) -> int:
    return event.position if order_id is None else event.version


def check(
    principal: Principal, account_id: str, order_id: str | None, after: str | None
) -> tuple[int, int] | None:
    """Refuses a watch that may not start (bad input, missing scope); returns where ``after``
    points, as (position, version)."""
    errors: list[FieldError] = []
    validation.check_account_id(account_id, "accountId", errors)
    if order_id is not None:
        validation.check_order_id(order_id, "orderId", errors)
    start: tuple[int, int] | None = None
    if after is not None:
        try:
            start = events.decode_cursor(after)
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


async def watch(
    principal: Principal,
    broker: Broker,
    account_id: str,
    order_id: str | None,
    after: str | None,
    *,
    buffer_size: int,
) -> AsyncGenerator[StoredEvent, None]:
    """Every event of the order (or, without ``order_id``, of the account) after ``after``
    (or from now on, without it), once and in order, until the caller stops iterating."""
    start = check(principal, account_id, order_id, after)
    subscription = broker.hub.subscribe(account_id, order_id, buffer_size)
    try:
        if start is None:
            last = await _latest(account_id, order_id)
            progress = _Progress(0, events.START_CURSOR)
            if last is not None:
                progress = _Progress(_number(last, order_id), last.cursor)
        else:
            assert after is not None
            position, version = start
            progress = _Progress(position if order_id is None else version, after)

        async for event in _catch_up(account_id, order_id, progress):
            yield event
        while True:
            item = await subscription.get()
            if item is None:
                raise SlowConsumer(progress.cursor)
            if item is RESYNC:
                async for event in _catch_up(account_id, order_id, progress):
                    yield event
                continue
            assert isinstance(item, StoredEvent)
            number = _number(item, order_id)
            if number <= progress.number:
                continue  # delivered already, from the table
            if number > progress.number + 1:
                # Something between was missed by the feed: the table has it, and this one.
                async for event in _catch_up(account_id, order_id, progress):
                    yield event
                continue
            progress.number, progress.cursor = number, item.cursor
            yield item
    finally:
        subscription.close()


# Stream -> the lookup of its latest event under way. Subscriptions that start together (all
# clients reconnecting after a deploy) share one query per stream instead of queueing
# thousands for the pool. A shared answer may be a little older than a later subscriber's
# start; that subscriber then also gets the few events in between, from the table, as its
# gap check sees them: older events, never a missing one.
_latest_lookups: dict[tuple[str, str | None], asyncio.Task[StoredEvent | None]] = {}


async def _latest(account_id: str, order_id: str | None) -> StoredEvent | None:
    key = (account_id, order_id)
    lookup = _latest_lookups.get(key)
    if lookup is None:
        lookup = asyncio.ensure_future(events.latest(account_id, order_id))
        _latest_lookups[key] = lookup
        lookup.add_done_callback(lambda done: _forget(key, done))
    # Shielded: one subscriber going away must not cancel the others' lookup.
    return await asyncio.shield(lookup)


def _forget(key: tuple[str, str | None], lookup: asyncio.Task[StoredEvent | None]) -> None:
    _latest_lookups.pop(key, None)
    if not lookup.cancelled():
        lookup.exception()  # its subscribers may all have gone: it is seen either way


async def _catch_up(
    account_id: str, order_id: str | None, progress: _Progress
) -> AsyncIterator[StoredEvent]:
    while True:
        batch = await events.events_after(account_id, order_id, progress.number, CATCH_UP_BATCH)
        for event in batch:
            progress.number, progress.cursor = _number(event, order_id), event.cursor
            yield event
        if len(batch) < CATCH_UP_BATCH:
            return
