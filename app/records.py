"""Plain records of order events: as a client posts one, on its way to the writer, as stored;
a page of them; cursors. No rules and no I/O, so the service, the writer, the broker and the
GraphQL layer all import them from here. ``StoredEvent``'s fields are the single source of an
event's columns: their names and order, its table row, its insert and its notification.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from operator import attrgetter, itemgetter
from typing import Any, Final
from urllib.parse import quote

from app.errors import BadUserInput, FieldError


class EventState(StrEnum):
    ERROR = "error"
    FAILURE = "failure"
    SUCCESS = "success"
    PENDING = "pending"


_STATES: Final = {state.value: state for state in EventState}


@dataclass(frozen=True)
class NewEvent:
    """What a client posts: the fields of an event that it chooses."""

    service: str
    service_status: str
    state: EventState = EventState.SUCCESS
    description: str | None = None
    metadata: Any = None


@dataclass(frozen=True)
class Link:
    href: str
    rel: str


@dataclass(frozen=True)
class StoredEvent:
    """An event as stored. Its fields are the table's columns, in this order; a column's
    stored form differs only for ``state`` (its text), ``metadata`` (JSON text) and, on
    SQLite, ``created_at`` (ISO 8601 text)."""

    id: str
    account_id: str
    order_id: str
    version: int
    position: int
    event_type: str
    state: EventState
    service: str
    service_status: str
    description: str | None
    metadata: dict[str, Any] | None
    created_at: datetime
    created_by: str

    # Worked out once per event: a cached page or a live event is answered many times.
    # (cached_property writes the instance's __dict__ directly, which a frozen dataclass
    # allows; equality and the fields stay as they are.)
    @cached_property
    def cursor(self) -> str:
        return encode_cursor(self.position, self.version)

    @cached_property
    def created_at_text(self) -> str:
        """``created_at`` in ISO 8601, as the API gives it."""
        return self.created_at.isoformat()

    def to_record(self) -> dict[str, Any]:
        """The event as its table row has it (metadata as JSON text, time as ISO 8601)."""
        record = dict(zip(COLUMN_NAMES, _read_fields(self), strict=True))
        record["state"] = self.state.value
        record["metadata"] = _json_text(self.metadata)
        record["created_at"] = self.created_at_text
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> StoredEvent:
        """From a row read with raw SQL (or anything indexed by column name, such as
        ``to_record``'s dictionary)."""
        return cls.from_columns(_read_items(record))

    @classmethod
    def from_row(cls, row: object) -> StoredEvent:
        """From an object with the columns as attributes (an ``OrderEvent``, a
        ``PendingEvent`` the writer numbered)."""
        return cls.from_columns(column_values(row))

    @classmethod
    def from_columns(cls, row: Sequence[Any], start: int = 0) -> StoredEvent:
        """From a row holding ``COLUMNS`` in that order from ``start`` on. By position:
        sqlite3.Row finds a column by name with a case-blind scan of all its names."""
        # Pages and batches hold many events: filling the instance's __dict__ at once is far
        # cheaper than the frozen dataclass's __init__ (one object.__setattr__ per field).
        # Every field is given, as __init__ would insist: zip(strict=True) sees to it.
        event = object.__new__(cls)
        values = event.__dict__
        values.update(zip(FIELD_NAMES, row[start : start + len(FIELD_NAMES)], strict=True))
        values["state"] = _STATES[values["state"]]
        metadata = values["metadata"]
        if metadata is not None:
            values["metadata"] = json.loads(metadata)
        created_at = values["created_at"]
        if isinstance(created_at, str):  # SQLite keeps datetimes as ISO 8601 text
            values["created_at"] = datetime.fromisoformat(created_at)
        return event


FIELD_NAMES: Final = tuple(field.name for field in fields(StoredEvent))
# A field's column, where the two names differ.
_COLUMN_OF: Final = {"id": "event_id"}
COLUMN_NAMES: Final = tuple(_COLUMN_OF.get(name, name) for name in FIELD_NAMES)
# An event's columns, in the order StoredEvent.from_columns reads them.
COLUMNS: Final = ", ".join(COLUMN_NAMES)
_read_fields = attrgetter(*FIELD_NAMES)
_read_items = itemgetter(*COLUMN_NAMES)
# An object's columns, as a tuple in column order: from attributes named as the columns.
column_values = attrgetter(*COLUMN_NAMES)


def _json_text(value: Any) -> str | None:
    """``metadata`` as stored: compact JSON text, key order and non-ASCII kept."""
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass(slots=True)
class PendingEvent:
    """An event on its way to the writer (``app.writer``): every column in its stored form,
    those the writer hands out at commit (the ones with a default: version, position, time)
    still unset. A plain object, not an ORM model: building and filling a Tortoise model
    cost a write more than the INSERT's SQL."""

    event_id: str
    account_id: str
    order_id: str
    event_type: str
    state: EventState  # a str: drivers store its text
    service: str
    service_status: str
    description: str | None
    metadata: str | None  # as JSON text, as stored
    created_by: str
    version: int = 0
    position: int = 0
    created_at: datetime | None = None


_ASSIGNED: Final = {field.name for field in fields(PendingEvent) if field.default is not MISSING}
# The columns a PendingEvent comes with, in column order; the writer fills in the others.
GIVEN_COLUMNS: Final = tuple(name for name in COLUMN_NAMES if name not in _ASSIGNED)
NEW_EVENT_FIELDS: Final = tuple(field.name for field in fields(NewEvent))


@dataclass(frozen=True)
class EventPage:
    events: list[StoredEvent]
    state: EventState
    has_next_page: bool
    end_cursor: str | None


# An order's event stream in Dintero's REST shape: the route app.rest serves, and the href
# of every event's link, so that a link always leads to what is served.
EVENTS_PATH: Final = "/v1/accounts/{aid}/shopping/orders/{order_id}/events"


def links(account_id: str, order_id: str, public_url: str) -> list[Link]:
    """Where an order's event stream lives (``EVENTS_PATH`` under ``public_url``)."""
    path = EVENTS_PATH.format(aid=quote(account_id, safe=""), order_id=quote(order_id, safe=""))
    return [Link(href=public_url.rstrip("/") + path, rel="events")]


# Cursors -----------------------------------------------------------------------------------
# A cursor names one event by its position in its account and its version in its order, so
# the same cursor resumes an order's stream (by version) and an account's stream (by position).

_CURSOR_PREFIX = "1:"
_CURSOR = re.compile(r"1:([0-9]{1,19}):([0-9]{1,10})")
# The largest position and version their columns hold (int8 and int4; a test holds these to
# the model): a cursor beyond them was not made here, and PostgreSQL refuses such a number as
# a query parameter instead of finding nothing after it.
POSITION_MAX: Final = 2**63 - 1
VERSION_MAX: Final = 2**31 - 1
# Before the first event of any stream: where a watcher that has seen nothing resumes.
START_CURSOR = "MTowOjA"  # encode_cursor(0, 0)


def encode_cursor(position: int, version: int) -> str:
    raw = f"{_CURSOR_PREFIX}{position}:{version}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, field: str = "after") -> tuple[int, int]:
    """Returns (position, version); a cursor that was not made here is bad input."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
        match = _CURSOR.fullmatch(text)
        if match is None:
            raise ValueError(text)
        position, version = int(match[1]), int(match[2])
        if position > POSITION_MAX or version > VERSION_MAX:
            raise ValueError(text)
    except (ValueError, UnicodeError, binascii.Error):
        raise BadUserInput([FieldError(field, "is not a cursor returned by this API")]) from None
    return position, version
