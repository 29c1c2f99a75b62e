"""Everything that lists an event's fields agrees with ``StoredEvent``: a field added to one
place and not to another fails here, not in production."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from app.api.schema import schema
from app.api.types import OrderEventInput
from app.models import AccountStream, OrderEvent, OrderStream
from app.records import (
    COLUMN_NAMES,
    COLUMNS,
    FIELD_NAMES,
    GIVEN_COLUMNS,
    NEW_EVENT_FIELDS,
    POSITION_MAX,
    VERSION_MAX,
    NewEvent,
    PendingEvent,
    StoredEvent,
)


def _field_names(cls: Any) -> list[str]:
    return [field.name for field in dataclasses.fields(cls)]


def _nullable(annotation: Any) -> bool:
    return isinstance(annotation, types.UnionType) and type(None) in typing.get_args(annotation)


def test_the_model_has_exactly_the_stored_columns() -> None:
    described = OrderEvent.describe(serializable=True)
    columns = {field["db_column"]: field["nullable"] for field in described["data_fields"]}

    assert described["pk_field"]["db_column"] == "seq"
    assert set(columns) == set(COLUMN_NAMES)
    hints = typing.get_type_hints(StoredEvent)
    nullable = {
        column: _nullable(hints[name])
        for name, column in zip(FIELD_NAMES, COLUMN_NAMES, strict=True)
    }
    assert columns == nullable


def test_columns_follow_the_fields_in_order() -> None:
    assert len(COLUMN_NAMES) == len(FIELD_NAMES)
    assert COLUMN_NAMES[FIELD_NAMES.index("id")] == "event_id"
    assert ", ".join(COLUMN_NAMES) == COLUMNS


def test_a_pending_event_has_every_column() -> None:
    assert set(_field_names(PendingEvent)) == set(COLUMN_NAMES)
    assert set(COLUMN_NAMES) - set(GIVEN_COLUMNS) == {"version", "position", "created_at"}


def test_every_posted_field_is_stored() -> None:
    assert set(NEW_EVENT_FIELDS) <= set(GIVEN_COLUMNS)


def test_the_graphql_input_has_exactly_the_posted_fields() -> None:
    assert _field_names(OrderEventInput) == _field_names(NewEvent)


def test_the_graphql_event_shows_stored_fields_and_what_derives_from_them() -> None:
    # What GraphQL shows of the type, by the fields' Python names.
    shown_type = schema.schema_converter.type_map["OrderStatusEvent"].implementation
    shown = {
        field.extensions["strawberry-definition"].python_name
        for field in shown_type.fields.values()
    }

    assert shown - set(FIELD_NAMES) == {"links", "cursor"}
    # Kept from clients on purpose: cursors carry it.
    assert set(FIELD_NAMES) - shown == {"position"}


def test_an_input_null_takes_the_posted_default() -> None:
    given = OrderEventInput(service="kitchen", service_status="cooking", state=None)

    assert given.to_new_event() == NewEvent(service="kitchen", service_status="cooking")


def _largest(model: Any, name: str) -> int:
    described = model.describe(serializable=True)
    field = next(field for field in described["data_fields"] if field["name"] == name)
    largest: int = field["constraints"]["le"]
    return largest


def test_cursors_take_exactly_the_numbers_the_columns_hold() -> None:
    assert {_largest(OrderEvent, "position"), _largest(AccountStream, "position")} == {POSITION_MAX}
    assert {_largest(OrderEvent, "version"), _largest(OrderStream, "version")} == {VERSION_MAX}
