"""The outbox: an event's deliveries, one per active hook of its account, written by the
writer in the transaction that stores the event (``app.writer``). An acknowledged event thus
always has its deliveries, whatever happens to the process after the commit.

The rows are written by one ``INSERT … SELECT`` from the hooks table: for an account without
active hooks it finds nothing and writes nothing (an index probe of ``hooks_account``), and it
is right for every process at once, with no cache to keep fresh.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from tortoise.backends.base.client import BaseDBAsyncClient

from app.models import HookAttempt, HookDelivery
from app.sql import placeholders

# The events a hook may subscribe to (Dintero's name) and the one sent to test a hook.
ORDER_EVENT_ADD: Final = "shopping_order_event_add"
PING: Final = "ping"
EVENTS: Final = (ORDER_EVENT_ADD,)

# A delivery's states: still to make (or being made), received, given up on.
PENDING: Final = "pending"
DELIVERED: Final = "delivered"
FAILED: Final = "failed"

# A random UUID v4 as text, made by the database for each row.
_UUID: Final = {
    "postgres": "gen_random_uuid()::text",
    "sqlite": (
        "lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4'"
        " || substr(lower(hex(randomblob(2))), 2) || '-'"
        " || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(lower(hex(randomblob(2))), 2)"
        " || '-' || lower(hex(randomblob(6)))"
    ),
}
# Now, in Unix milliseconds (a delivery's ``next_attempt_at``: due from its creation on, so
# that due deliveries are taken in the order they fell due).
NOW_MS: Final = {
    "postgres": "(extract(epoch FROM clock_timestamp()) * 1000)::bigint",
    "sqlite": "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
}


def now_ms() -> int:
    """Now in Unix milliseconds, as the deliveries' times are kept."""
    return int(time.time() * 1000)


COLUMNS: Final = (
    "event_delivery, hook_id, account_id, event, order_id, version, event_id, status,"
    " attempts, next_attempt_at, created_at"
)


def insert_sql(dialect: str, source: str, created_at: str, where: str = "") -> str:
    """``INSERT … SELECT`` of the deliveries of the events in ``source`` (a table or CTE
    aliased ``event``, with the columns ``account_id``, ``order_id``, ``version`` and
    ``event_id``), one for each active hook of the event's account; ``created_at`` is the
    SQL of their creation time. Due at once."""
    return (
        f"INSERT INTO hook_deliveries ({COLUMNS}) "  # noqa: S608 (no input in the text)
        f"SELECT {_UUID[dialect]}, hook.id, event.account_id, '{ORDER_EVENT_ADD}',"
        f" event.order_id, event.version, event.event_id, '{PENDING}', 0, {NOW_MS[dialect]},"
        f" {created_at}"
        f" FROM {source} AS event"
        " JOIN hooks AS hook ON hook.account_id = event.account_id AND hook.active"
        f"{where} ORDER BY event.account_id, event.order_id, event.version"
    )


@functools.cache
def _for_stored_sql(dialect: str, count: int) -> str:
    ids = ", ".join("?" * count)
    return (
        insert_sql(dialect, "order_events", "event.created_at", f" WHERE event.event_id IN ({ids})")
        + " RETURNING 1"
    )


async def write_for_stored(connection: BaseDBAsyncClient, event_ids: Sequence[str]) -> int:
    """Writes the deliveries of events already inserted in ``connection``'s transaction;
    returns how many."""
    dialect = connection.capabilities.dialect
    sql = placeholders(connection, _for_stored_sql(dialect, len(event_ids)))
    _, rows = await connection.execute_query(sql, list(event_ids))
    return len(rows)


async def purge_delivered(retention_seconds: float) -> int:
    """Deletes what is older than ``retention_seconds``: deliveries received (the version
    order reads only those not received) and the log's attempts. Deliveries still pending
    or given up on stay, whatever their age. Returns how many rows went."""
    cutoff = datetime.now(UTC) - timedelta(seconds=retention_seconds)
    deliveries = await _purge(HookDelivery, cutoff, status=DELIVERED)
    attempts = await _purge(HookAttempt, cutoff)
    return deliveries + attempts


async def _purge(model: type[HookDelivery | HookAttempt], cutoff: datetime, **where: Any) -> int:
    """Deletes ``model``'s rows older than ``cutoff`` (and matching ``where``) by a range
    of its primary key, not by reading the whole table: rows are written in the order of
    their times, so the first one not older than the cutoff bounds those that are (an index
    of their times would be one more entry for every delivery written). A row written out
    of that order (an attempt is logged once answered, its time is when it began) goes at
    the first purge after the rows before it are old too."""
    first_kept = await (
        model.filter(created_at__gte=cutoff).order_by("id").limit(1).values_list("id", flat=True)
    )
    old = model.filter(created_at__lt=cutoff, **where)
    if first_kept:
        old = old.filter(id__lt=first_kept[0])
    return int(await old.delete())
