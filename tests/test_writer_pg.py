"""The writer's one-statement batch on PostgreSQL: numbering, lock order, notifications.

A batch of plain appends is stored by one statement (``app.writer._one_statement``): it bumps
the account and order head rows, inserts the rows and NOTIFYs them, with no BEGIN or
COMMIT of its own. These tests hold it to what the multi-statement path guaranteed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from starlette.applications import Starlette
from tortoise import connections

from app.broker import CHANNEL, NOTIFY_SQL, PostgresBroker
from app.models import AccountStream, OrderEvent, OrderStream
from app.records import (
    GIVEN_COLUMNS,
    NEW_EVENT_FIELDS,
    EventState,
    NewEvent,
    PendingEvent,
    StoredEvent,
)
from app.settings import Settings
from app.writer import EventWriter, _one_statement
from tests.conftest import _asyncpg_url, _empty_tables
from tests.helpers import eventually

ACCOUNT = "T12345678"
OTHER_ACCOUNT = "T87654321"


@pytest.fixture(autouse=True)
def _on_postgres(database_url: str) -> None:
    if not database_url.startswith("postgres"):
        pytest.skip("the one-statement batch is PostgreSQL's; SQLite's path is tested throughout")


_ids = itertools.count()


def pending(account_id: str, order_id: str, **fields: Any) -> PendingEvent:
    # A posted event's fields at their defaults (metadata None is its stored form too).
    posted = NewEvent(service="kitchen", service_status="accepted")
    values: dict[str, Any] = {name: getattr(posted, name) for name in NEW_EVENT_FIELDS}
    values.update(
        event_id=f"e-{next(_ids)}",
        account_id=account_id,
        order_id=order_id,
        event_type="service-event",
        created_by="kitchen-1",
    )
    values.update(fields)
    return PendingEvent(**values)


@pytest.fixture
async def tables(app: Starlette) -> None:
    await _empty_tables()


@pytest.fixture
async def notifications(database_url: str, tables: None) -> AsyncIterator[list[str]]:
    """Every payload NOTIFYed on the events' channel while the test runs, in arrival order."""
    received: list[str] = []
    listener = await asyncpg.connect(_asyncpg_url(database_url))
    await listener.add_listener(CHANNEL, lambda *args: received.append(args[3]))
    try:
        yield received
    finally:
        await listener.close()


async def arrived(received: list[str], count: int) -> list[str]:
    await eventually(lambda: len(received) >= count, f"{count} notifications")
    return received


async def test_the_batch_statement_locks_every_account_row_before_any_order_row(
    tables: None,
) -> None:
    connection = connections.get("default")
    row = pending(ACCOUNT, "o")
    params: list[Any] = [[getattr(row, name)] for name in GIVEN_COLUMNS]
    params += [datetime.now(UTC), "2026-01-01T00:00:00+00:00"]

    _, rows = await connection.execute_query(
        "EXPLAIN (VERBOSE, COSTS OFF) " + _one_statement(NOTIFY_SQL), params
    )

    plan = "\n".join(row[0] for row in rows)
    accounts = plan[plan.index("CTE accounts") : plan.index("CTE orders")]
    orders = plan[plan.index("CTE orders") : plan.index("CTE numbered")]
    # Account rows are upserted in account order...
    assert "Sort Key: given_1.account_id\n" in accounts
    # ... all of them (count(*) runs ``accounts`` to its end) before the first order row
    # comes through: a one-time filter is decided before its subplan returns any row.
    filter_at = orders.index("One-Time Filter: ($")
    init_plan = orders[orders.index("InitPlan") : filter_at]
    assert "CTE Scan on accounts" in init_plan
    scan_at = orders.index("CTE Scan on given")
    assert filter_at < scan_at
    # ... and order rows in (account, order) order.
    assert "Sort Key: given_2.account_id, given_2.order_id\n" in orders


async def test_a_batch_numbers_its_events_in_order_across_accounts_and_orders(
    tables: None,
) -> None:
    await OrderStream.create(account_id=ACCOUNT, order_id="b", version=5)
    await AccountStream.create(account_id=ACCOUNT, position=7)
    targets = [
        (OTHER_ACCOUNT, "a"),
        (ACCOUNT, "b"),
        (ACCOUNT, "a"),
        (OTHER_ACCOUNT, "a"),
        (ACCOUNT, "b"),
        (ACCOUNT, "a"),
    ]

    stored = await EventWriter()._append_batch([pending(a, o) for a, o in targets])

    numbers = [(e.account_id, e.order_id, e.version, e.position) for e in stored]
    assert numbers == [
        (OTHER_ACCOUNT, "a", 1, 1),
        (ACCOUNT, "b", 6, 8),
        (ACCOUNT, "a", 1, 9),
        (OTHER_ACCOUNT, "a", 2, 2),
        (ACCOUNT, "b", 7, 10),
        (ACCOUNT, "a", 2, 11),
    ]
    rows = await OrderEvent.all().order_by("seq").values_list("event_id", "version", "position")
    assert rows == [(e.id, e.version, e.position) for e in stored]
    heads = (
        await OrderStream.all()
        .order_by("account_id", "order_id")
        .values_list("account_id", "order_id", "version")
    )
    assert heads == [(ACCOUNT, "a", 2), (ACCOUNT, "b", 7), (OTHER_ACCOUNT, "a", 2)]
    positions = (
        await AccountStream.all().order_by("account_id").values_list("account_id", "position")
    )
    assert positions == [(ACCOUNT, 11), (OTHER_ACCOUNT, 2)]


async def test_a_failed_batch_changes_nothing(tables: None) -> None:
    writer = EventWriter()
    first = await writer._append_batch([pending(ACCOUNT, "a")])
    again = pending(ACCOUNT, "a", event_id=first[0].id)  # the same id: the INSERT fails

    with pytest.raises(Exception, match="duplicate key"):
        await writer._append_batch([pending(ACCOUNT, "b"), again])

    assert await OrderEvent.all().count() == 1
    assert await OrderStream.all().values_list("order_id", "version") == [("a", 1)]
    assert await AccountStream.all().values_list("position", flat=True) == [1]


TRICKY: list[dict[str, Any]] = [
    {"description": 'quotes " and \\ backslashes \n', "metadata": None},
    {"description": "æøå 中文 🍕", "metadata": json.dumps({"nested": {"list": [1, 2.5, None]}})},
    {"description": None, "metadata": json.dumps({"text": "é\\\"'"}, ensure_ascii=False)},
    {"state": EventState.FAILURE, "metadata": "[]"},
]


async def test_notifications_made_by_postgres_read_back_as_the_stored_events(
    database_url: str, notifications: list[str]
) -> None:
    writer = EventWriter(PostgresBroker(database_url))

    stored = await writer._append_batch([pending(ACCOUNT, "n", **extra) for extra in TRICKY])

    received = await arrived(notifications, len(stored))
    decoded = [StoredEvent.from_record(orjson.loads(payload)) for payload in received]
    assert decoded == stored


async def test_a_checked_append_is_notified_by_the_same_expression(
    database_url: str, notifications: list[str]
) -> None:
    writer = EventWriter(PostgresBroker(database_url))

    event = await writer.append(pending(ACCOUNT, "c", **TRICKY[1]), expected_version=0)

    received = await arrived(notifications, 1)
    assert [StoredEvent.from_record(orjson.loads(p)) for p in received] == [event]


async def test_an_event_too_large_for_notify_is_sent_as_a_reference(
    database_url: str, notifications: list[str]
) -> None:
    writer = EventWriter(PostgresBroker(database_url))
    large = json.dumps({"blob": "x" * 10_000})

    stored = await writer._append_batch(
        [pending(ACCOUNT, "big", metadata=large), pending(ACCOUNT, "small")]
    )

    received = await arrived(notifications, 2)
    assert orjson.loads(received[0]) == {"ref": stored[0].id, "a": ACCOUNT, "o": "big"}
    assert StoredEvent.from_record(orjson.loads(received[1])) == stored[1]


async def test_concurrent_writers_over_the_same_rows_neither_deadlock_nor_skip(
    database_url: str, tables: None
) -> None:
    """Three writers, as three processes would be: their batches really run at once, on
    their own connections, over two accounts and their orders in differing orders, with
    checked appends (a transaction of several statements) among them."""
    writers = [EventWriter(PostgresBroker(database_url)) for _ in range(3)]
    orders = [(ACCOUNT, "p"), (OTHER_ACCOUNT, "q"), (ACCOUNT, "q"), (OTHER_ACCOUNT, "p")]

    async def one(n: int) -> StoredEvent:
        writer = writers[n % len(writers)]
        account_id, order_id = orders[(n * 7 + n // 5) % len(orders)]
        if n % 11 == 0:
            # The path of appends with a key or an expected version, without either check.
            return await writer._append_checked(pending(account_id, order_id), None, None)
        return await writer.append(pending(account_id, order_id))

    stored = await asyncio.gather(*(one(n) for n in range(400)))

    by_order: dict[tuple[str, str], list[int]] = defaultdict(list)
    by_account: dict[str, list[int]] = defaultdict(list)
    for event in stored:
        by_order[(event.account_id, event.order_id)].append(event.version)
        by_account[event.account_id].append(event.position)
    for versions in by_order.values():
        assert sorted(versions) == list(range(1, len(versions) + 1))
    for positions in by_account.values():
        assert sorted(positions) == list(range(1, len(positions) + 1))
    assert await OrderEvent.all().count() == 400


@pytest.mark.parametrize(
    "failure",
    [
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        TimeoutError(),  # the server did not answer within the command timeout
        asyncio.CancelledError(),  # the request went away while its BEGIN was under way
    ],
    ids=["connection-lost", "timeout", "cancelled"],
)
async def test_a_transaction_whose_begin_fails_leaks_nothing(
    tables: None, settings: Settings, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    """More failed BEGINs than the pool has connections, then a transaction in the same
    task: had a failed one kept its connection, the pool would be empty (the last append
    would wait out the command timeout and fail); had it stayed the task's connection, the
    last append would be a savepoint on it."""
    failures = settings.db_pool_max_size + 1
    real_start = asyncpg.transaction.Transaction.start

    async def failing_start(transaction: Any) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise failure
        await real_start(transaction)

    monkeypatch.setattr(asyncpg.transaction.Transaction, "start", failing_start)
    writer = EventWriter()
    client = connections.get("default")

    for _ in range(failures):
        with pytest.raises(type(failure)):
            await writer.append(pending(ACCOUNT, "o-1"), expected_version=0)
        assert connections.get("default") is client
    stored = await asyncio.wait_for(
        writer.append(pending(ACCOUNT, "o-1"), expected_version=0),
        settings.db_command_timeout_seconds / 2,
    )

    assert stored.version == 1
