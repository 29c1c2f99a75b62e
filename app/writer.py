"""Storing events: versions, positions, commit, and handing them to live subscribers.

Plain appends are group-committed (``EventWriter``): one commit, one fsync, for many events.
Whatever the path, an account's head row is bumped first and then its orders' (sorted), so
every writer takes its row locks in the same order and none can deadlock another.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from tortoise import connections
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from app import idempotency, metrics, tracing
from app.errors import Conflict
from app.hooks import outbox
from app.models import OrderEvent
from app.records import (
    COLUMN_NAMES,
    COLUMNS,
    GIVEN_COLUMNS,
    PendingEvent,
    StoredEvent,
    column_values,
)
from app.sql import placeholders

if TYPE_CHECKING:
    from app.tracer import Span

logger = logging.getLogger(__name__)

MAX_BATCH = 200


class Publisher(Protocol):
    """Hands committed events to live subscribers (``app.broker``)."""

    def notify_sql(self) -> str | None:
        """SQL that NOTIFYs one event, over a row of its columns; None when not needed."""
        ...

    async def in_transaction(
        self, connection: BaseDBAsyncClient, events: Sequence[StoredEvent]
    ) -> None: ...

    def after_commit(self, events: Sequence[StoredEvent]) -> None: ...


class EventWriter:
    """While one transaction commits, the plain appends that arrive queue up, and the next
    transaction stores all of them at once, in a few statements whatever their number (on
    PostgreSQL one, ``_one_statement``; on SQLite one per account and two more). Nobody waits
    for a batch to fill: an append that finds the writer idle starts a transaction at once.
    Each request still gets its answer only after its own event is committed."""

    def __init__(
        self,
        publisher: Publisher | None = None,
        *,
        max_batch: int = MAX_BATCH,
        on_deliveries: Callable[[], None] | None = None,
    ):
        self._publisher = publisher
        # Told after a commit that wrote webhook deliveries (``app.hooks.outbox``).
        self._on_deliveries = on_deliveries
        self._max_batch = max_batch
        # Each append's row, its answer, and its request's span (None while tracing is off).
        self._queue: list[tuple[PendingEvent, asyncio.Future[StoredEvent], Span | None]] = []
        self._draining: asyncio.Task[None] | None = None

    async def append(
        self,
        row: PendingEvent,
        *,
        key: idempotency.Key | None = None,
        expected_version: int | None = None,
    ) -> StoredEvent:
        """Stores ``row`` as the next event of its order and returns it once committed."""
        if key is not None or expected_version is not None:
            tracer = tracing.active  # tested here: while tracing is off, not even a call
            if tracer is None:
                stored = await self._append_checked(row, key, expected_version)
            else:
                with tracer.span("writer append"):
                    stored = await self._append_checked(row, key, expected_version)
            metrics.EVENTS_APPENDED.inc()
            if self._publisher is not None:
                self._publisher.after_commit([stored])
            return stored
        future: asyncio.Future[StoredEvent] = asyncio.get_running_loop().create_future()
        tracer = tracing.active
        self._queue.append((row, future, None if tracer is None else tracer.current()))
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain())
        # Shielded: a client that goes away must not cancel a write others are waiting for.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                rows = [row for row, _, _ in batch]
                tracer = tracing.active
                try:
                    if tracer is None:
                        stored = await self._append_batch(rows)
                    else:
                        with tracer.batch(span for _, _, span in batch):
                            stored = await self._append_batch(rows)
                except Exception as error:
                    for _, future, _ in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                metrics.EVENTS_APPENDED.inc(len(stored))
                metrics.BATCH_SIZE.observe(len(stored))
                if self._publisher is not None:
                    self._publisher.after_commit(stored)
                for (_, future, _), event in zip(batch, stored, strict=True):
                    if not future.done():
                        future.set_result(event)
        finally:
            self._draining = None

    def _delivered_to_outbox(self, deliveries: int) -> None:
        """After a commit that wrote ``deliveries``: tells whoever delivers them."""
        if deliveries and self._on_deliveries is not None:
            self._on_deliveries()

    async def _append_batch(self, rows: list[PendingEvent]) -> list[StoredEvent]:
        """Stores the rows, and their webhook deliveries with them."""
        created_at = datetime.now(UTC)
        for row in rows:
            row.created_at = created_at
        client = connections.get("default")
        if client.capabilities.dialect == "postgres":
            notify = None if self._publisher is None else self._publisher.notify_sql()
            deliveries = await _store_in_one_statement(client, rows, created_at, notify)
            self._delivered_to_outbox(deliveries)
            return [StoredEvent.from_row(row) for row in rows]
        async with in_transaction() as connection:
            by_account: dict[str, list[PendingEvent]] = defaultdict(list)
            by_order: dict[tuple[str, str], list[PendingEvent]] = defaultdict(list)
            for row in rows:
                by_account[row.account_id].append(row)
                by_order[(row.account_id, row.order_id)].append(row)
            for account_id in sorted(by_account):
                members = by_account[account_id]
                last = await _bump_position(connection, account_id, len(members))
                for offset, row in enumerate(members):
                    row.position = last - len(members) + 1 + offset
            latest = await _bump_versions(
                connection, {key: len(members) for key, members in sorted(by_order.items())}
            )
            for order_key, members in by_order.items():
                for offset, row in enumerate(members):
                    row.version = latest[order_key] - len(members) + 1 + offset
            stored = [StoredEvent.from_row(row) for row in rows]
            await _insert(connection, rows)
            deliveries = await outbox.write_for_stored(connection, [row.event_id for row in rows])
            if self._publisher is not None:
                await self._publisher.in_transaction(connection, stored)
        self._delivered_to_outbox(deliveries)
        return stored

    async def _append_checked(
        self, pending: PendingEvent, key: idempotency.Key | None, expected_version: int | None
    ) -> StoredEvent:
        """An append with an idempotency key or an expected version, in a transaction of its
        own: its checks decide whether the event is stored at all."""
        async with in_transaction() as connection:
            if key is not None and not await idempotency.claim(connection, key):
                raise idempotency.KeyTaken()
            position = await _bump_position(connection, pending.account_id, 1)
            version = (
                await _bump_versions(connection, {(pending.account_id, pending.order_id): 1})
            )[(pending.account_id, pending.order_id)]
            if expected_version is not None and version - 1 != expected_version:
                # Raising rolls back the version bump and the key claim with it.
                raise Conflict(
                    f"expected order version {expected_version}, but it is at {version - 1}",
                    currentVersion=version - 1,
                    expectedVersion=expected_version,
                )
            row = OrderEvent(
                **{
                    **dataclasses.asdict(pending),
                    "version": version,
                    "position": position,
                    "created_at": datetime.now(UTC),
                }
            )
            # Through the ORM: the idempotency key records the row's sequence number.
            await row.save(using_db=connection, force_create=True)
            if key is not None:
                await idempotency.record_event(connection, key, row.seq)
            stored = StoredEvent.from_row(row)
            deliveries = await outbox.write_for_stored(connection, [row.event_id])
            if self._publisher is not None:
                await self._publisher.in_transaction(connection, [stored])
        self._delivered_to_outbox(deliveries)
        return stored


_ROW = "(" + ", ".join("?" * len(COLUMN_NAMES)) + ")"


async def _insert(connection: BaseDBAsyncClient, rows: list[PendingEvent]) -> None:
    """One multi-row INSERT for the batch: the ORM's bulk_create spent a noticeable share of
    a write's CPU building its query (docs/benchmarks.md). The datetime goes to the driver as
    it is: Tortoise's SQLite adapter writes the same text as the ORM does; the state is a
    str, its text."""
    values = ", ".join(_ROW for _ in rows)
    sql = f"INSERT INTO order_events ({COLUMNS}) VALUES {values}"  # noqa: S608
    params: list[object] = []
    for row in rows:
        params.extend(column_values(row))
    await connection.execute_query(placeholders(connection, sql), params)


@functools.cache
def _one_statement(notify: str | None) -> str:
    """A batch in one statement on PostgreSQL: positions, versions, rows and notifications,
    with no BEGIN or COMMIT round trip (a single statement is its own transaction) — one
    round trip per batch instead of five, and the account's row lock held for that one
    statement rather than across round trips, which is what limits an account's writes.

    The lock order is the one every writer keeps (the module's docstring): PostgreSQL runs
    data-modifying CTEs in no set order, so ``orders`` reads ``accounts`` in a condition on
    no column of its rows — a one-time filter, decided (by running ``accounts`` to its end,
    which takes every account row of the batch, in account order) before ``orders`` takes
    its first row; then the order rows in (account, order) order. A test reads the plan.
    The rows and their notifications go in the batch's order, each event's version and
    position counted from its head row's new value like ``_append_batch``'s other path.
    ``hooked`` writes the events' webhook deliveries (``app.hooks.outbox``); every row
    answered carries how many."""
    arrays = ", ".join(f"${i}::text[]" for i in range(1, len(GIVEN_COLUMNS) + 1))
    created_at = len(GIVEN_COLUMNS) + 1
    row_values = ", ".join(
        f"${created_at}::timestamptz" if name == "created_at" else name for name in COLUMN_NAMES
    )
    selected = "event.version, event.position, (SELECT count(*) FROM hooked)"
    source = "numbered"
    if notify is not None:
        selected += f", {notify}"
        source = f"(SELECT numbered.*, ${created_at + 1}::text AS created_at FROM numbered)"  # noqa: S608
    return f"""
WITH given AS (
    SELECT * FROM unnest({arrays}) WITH ORDINALITY AS given({", ".join(GIVEN_COLUMNS)}, n)
), accounts AS (
    INSERT INTO account_streams AS head (account_id, position)
    SELECT account_id, count(*) FROM given GROUP BY account_id ORDER BY account_id
    ON CONFLICT (account_id) DO UPDATE SET position = head.position + excluded.position
    RETURNING head.account_id, head.position AS last
), orders AS (
    INSERT INTO order_streams AS head (account_id, order_id, version)
    SELECT account_id, order_id, count(*) FROM given
    WHERE (SELECT count(*) FROM accounts) > 0
    GROUP BY account_id, order_id ORDER BY account_id, order_id
    ON CONFLICT (account_id, order_id) DO UPDATE SET version = head.version + excluded.version
    RETURNING head.account_id, head.order_id, head.version AS last
), numbered AS (
    SELECT given.*,
        orders.last - count(*) OVER by_order + row_number() OVER (by_order ORDER BY n)
            AS version,
        accounts.last - count(*) OVER by_account + row_number() OVER (by_account ORDER BY n)
            AS position
    FROM given JOIN accounts USING (account_id) JOIN orders USING (account_id, order_id)
    WINDOW by_order AS (PARTITION BY account_id, order_id), by_account AS (PARTITION BY account_id)
), stored AS (
    INSERT INTO order_events ({COLUMNS})
    SELECT {row_values}
    FROM numbered ORDER BY n
), hooked AS (
    {outbox.insert_sql("postgres", "numbered", f"${created_at}::timestamptz")} RETURNING 1
)
SELECT {selected} FROM (SELECT * FROM {source} AS event ORDER BY n) AS event
"""  # noqa: S608 (no input in the text)


async def _store_in_one_statement(
    client: BaseDBAsyncClient, rows: list[PendingEvent], created_at: datetime, notify: str | None
) -> int:
    """Stores a batch with ``_one_statement`` (PostgreSQL) and numbers its rows; returns how
    many webhook deliveries it wrote."""
    # One array per given column (the state is a str: asyncpg takes it as its text).
    params: list[object] = [[getattr(row, name) for row in rows] for name in GIVEN_COLUMNS]
    params.append(created_at)
    if notify is not None:
        params.append(created_at.isoformat())
    _, numbers = await client.execute_query(_one_statement(notify), params)
    for row, (version, position, *_) in zip(rows, numbers, strict=True):
        row.version = version
        row.position = position
    # Every row carries the batch's count of deliveries.
    return int(numbers[0][2]) if numbers else 0


async def _bump_position(connection: BaseDBAsyncClient, account_id: str, count: int) -> int:
    """Takes ``count`` positions in the account; returns the last. Locks the account's row
    until commit (PostgreSQL; SQLite has one writer at a time anyway)."""
    sql = placeholders(
        connection,
        "INSERT INTO account_streams (account_id, position) VALUES (?, ?) "
        "ON CONFLICT (account_id) "
        "DO UPDATE SET position = account_streams.position + excluded.position "
        "RETURNING position",
    )
    rows = await connection.execute_query_dict(sql, [account_id, count])
    return int(rows[0]["position"])


async def _bump_versions(
    connection: BaseDBAsyncClient, counts: dict[tuple[str, str], int]
) -> dict[tuple[str, str], int]:
    """Takes ``counts[order]`` versions of each order in one statement; returns the last of
    each. Rows are locked in the order given: callers pass them sorted."""
    values = ", ".join("(?, ?, ?)" for _ in counts)
    sql = placeholders(
        connection,
        f"INSERT INTO order_streams (account_id, order_id, version) VALUES {values} "  # noqa: S608
        "ON CONFLICT (account_id, order_id) "
        "DO UPDATE SET version = order_streams.version + excluded.version "
        "RETURNING account_id, order_id, version",
    )
    params: list[object] = []
    for (account_id, order_id), count in counts.items():
        params.extend((account_id, order_id, count))
    rows = await connection.execute_query_dict(sql, params)
    return {(row["account_id"], row["order_id"]): int(row["version"]) for row in rows}
