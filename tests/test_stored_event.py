"""StoredEvent's fast constructors (from_record, from_row) build what __init__ builds."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from app.models import OrderEvent
from app.records import COLUMNS, EventState, PendingEvent, StoredEvent

EVENT = StoredEvent(
    id="3f2b8c1e-0000-4000-8000-000000000001",
    account_id="T12345678",
    order_id="o-1",
    version=3,
    position=17,
    event_type="service-event",
    state=EventState.PENDING,
    service="kitchen",
    service_status="cooking",
    description="line one\nline two",
    metadata={"b": [1, 2.5, None], "a": {"ü": True}},
    created_at=datetime(2026, 11, 27, 15, 36, 26, 750376, tzinfo=UTC),
    created_by="kitchen-1",
)
FIELDS = {field.name for field in dataclasses.fields(StoredEvent)}


def _same(built: StoredEvent) -> None:
    assert built == EVENT
    assert set(vars(built)) == FIELDS
    assert built.cursor == EVENT.cursor


def test_from_record_builds_what_init_builds() -> None:
    _same(StoredEvent.from_record(EVENT.to_record()))


def test_from_record_reads_sqlite_text_times() -> None:
    record = {**EVENT.to_record(), "created_at": "2026-11-27 15:36:26.750376+00:00"}

    _same(StoredEvent.from_record(record))


@pytest.mark.parametrize("start", [0, 3])
def test_from_columns_builds_what_init_builds(start: int) -> None:
    record = EVENT.to_record()
    row = ("x",) * start + tuple(record[name.strip()] for name in COLUMNS.split(","))

    _same(StoredEvent.from_columns(row, start))


def test_from_row_builds_what_init_builds() -> None:
    record = EVENT.to_record()
    row = OrderEvent(**{**record, "created_at": EVENT.created_at, "state": EVENT.state})

    _same(StoredEvent.from_row(row))


def test_a_built_event_is_still_frozen() -> None:
    built = StoredEvent.from_record(EVENT.to_record())

    try:
        built.version = 4  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        return
    raise AssertionError("a StoredEvent could be changed")


def test_from_row_builds_from_a_numbered_pending_event() -> None:
    record = EVENT.to_record()
    pending = PendingEvent(**{**record, "state": EVENT.state, "created_at": EVENT.created_at})

    _same(StoredEvent.from_row(pending))
