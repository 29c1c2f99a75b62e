"""The order-event service: append an event to an order's stream, read a stream back.

Rules live here, not in the GraphQL layer: input validation, authorization against the
caller's scopes, reading by cursor and the combined state of an order. The records taken and
given, cursors among them, are ``app.records``'.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, Final

from tortoise.connection import get_connection

from app import idempotency, validation
from app.auth import Principal
from app.encoding import new_event_id
from app.errors import BadUserInput, Conflict, FieldError, Forbidden
from app.memo import ByIdentity
from app.models import OrderEvent
from app.records import (
    COLUMNS,
    NEW_EVENT_FIELDS,
    EventPage,
    EventState,
    NewEvent,
    PendingEvent,
    StoredEvent,
    decode_cursor,
)
from app.sql import fetch
from app.writer import EventWriter

SERVICE_EVENT = "service-event"


# Authorization -----------------------------------------------------------------------------


def authorize(principal: Principal, account_id: str, allowed: bool, action: str) -> None:
    if principal.account_id != account_id:
        raise Forbidden(f"this token is for account {principal.account_id}, not {account_id}")
    if not allowed:
        raise Forbidden(f"this token's scopes do not allow {action}")


def _authorize_read(principal: Principal, account_id: str, order_id: str) -> None:
    authorize(
        principal,
        account_id,
        principal.can_read_order(order_id),
        f"reading events of order {order_id!r}",
    )


# Writing -----------------------------------------------------------------------------------


def _validate_new_event(
    account_id: str,
    order_id: str,
    event: NewEvent,
    idempotency_key: str | None,
    expected_version: int | None,
) -> str | None:
    """Checks every rule of the contract; returns the metadata's JSON text."""
    errors: list[FieldError] = []
    validation.check_account_id(account_id, "accountId", errors)
    validation.check_order_id(order_id, "orderId", errors)
    metadata_text: str | None = validation.check_event(event, "event", errors).get("metadata")
    if idempotency_key is not None:
        validation.check_idempotency_key(idempotency_key, "idempotencyKey", errors)
    if expected_version is not None and expected_version < 0:
        errors.append(FieldError("expectedVersion", "must be 0 or more"))
    if errors:
        raise BadUserInput(errors)
    return metadata_text


async def create_event(
    principal: Principal,
    account_id: str,
    order_id: str,
    event: NewEvent,
    *,
    idempotency_key: str | None = None,
    expected_version: int | None = None,
    key_ttl_seconds: int = 86400,
    writer: EventWriter,
) -> StoredEvent:
    """Appends ``event`` to the order's stream and returns it as stored (after commit).

    With ``idempotency_key``, a repeat of an earlier request returns the event that request
    stored, and a different request with the key is a conflict. With ``expected_version``, the
    event is stored only while the order's current version (0 before its first event) is that.
    """
    metadata_text = _validate_new_event(
        account_id, order_id, event, idempotency_key, expected_version
    )
    authorize(
        principal,
        account_id,
        principal.can_write_order(order_id),
        f"writing events of order {order_id!r}",
    )
    # The posted fields as they are stored.
    given = {name: getattr(event, name) for name in NEW_EVENT_FIELDS}
    given["metadata"] = metadata_text
    key = None
    if idempotency_key is not None:
        key = idempotency.Key(
            account_id=account_id,
            subject=principal.subject,
            key=idempotency_key,
            ttl_seconds=key_ttl_seconds,
            request_hash=_request_hash(order_id, given, expected_version),
        )
        if replayed := await _replay(key):
            return replayed
    row = PendingEvent(
        event_id=new_event_id(),
        account_id=account_id,
        order_id=order_id,
        event_type=SERVICE_EVENT,
        created_by=principal.subject,
        **given,
    )
    try:
        return await writer.append(row, key=key, expected_version=expected_version)
    except idempotency.KeyTaken:
        assert key is not None
        if replayed := await _replay(key):
            return replayed
        # The claim that beat this request expired in the meantime: nothing to replay.
        return await writer.append(row, key=key, expected_version=expected_version)


# A field added to NewEvent later is hashed only when it is not at its default, so a request
# that leaves it out keeps its hash, and keys stored before the field was added still match.
# These were hashed at their defaults from the start, and still are.
_HASHED_AT_DEFAULT: Final = frozenset({"state", "description", "metadata"})
_UNHASHED_DEFAULTS: Final = {
    field.name: field.default
    for field in fields(NewEvent)
    if field.default is not MISSING and field.name not in _HASHED_AT_DEFAULT
}


def _request_hash(order_id: str, given: Mapping[str, Any], expected_version: int | None) -> str:
    """What identifies a request with an idempotency key: its order, the event's fields as
    stored and the version it expects."""
    request = {
        name: value
        for name, value in given.items()
        if name not in _UNHASHED_DEFAULTS or value != _UNHASHED_DEFAULTS[name]
    }
    return idempotency.fingerprint(order_id=order_id, expected_version=expected_version, **request)


async def _replay(key: idempotency.Key) -> StoredEvent | None:
    """The event stored by an earlier request with ``key``; a conflict if that request
    was a different one."""
    claimed = await idempotency.find(key)
    if claimed is None or claimed.event_seq is None:
        return None
    if claimed.request_hash != key.request_hash:
        raise Conflict(
            "this idempotency key was already used for a different request "
            "(another order or other event fields); use a new key for a new request",
            idempotencyKey=key.key,
        )
    row = await OrderEvent.get(seq=claimed.event_seq)
    return StoredEvent.from_row(row)


# Reading -----------------------------------------------------------------------------------


async def list_events(
    principal: Principal,
    account_id: str,
    order_id: str,
    *,
    first: int,
    after: str | None,
    max_page_size: int,
) -> EventPage:
    """One page of an order's events in version order, with the order's combined state."""
    errors: list[FieldError] = []
    validation.check_account_id(account_id, "accountId", errors)
    validation.check_order_id(order_id, "orderId", errors)
    if not 0 <= first <= max_page_size:
        errors.append(FieldError("first", f"must be between 0 and {max_page_size}"))
    after_version = 0
    if after is not None:
        try:
            _, after_version = decode_cursor(after)
        except BadUserInput as error:
            errors.extend(error.errors)
    if errors:
        raise BadUserInput(errors)
    _authorize_read(principal, account_id, order_id)

    state, rows = await read_page(account_id, order_id, after_version, first + 1)
    # The same list for the same rows: a page read again from the page cache is then the
    # same object all the way (what is made from it can be remembered, see app.memo).
    events = rows if len(rows) <= first else _first.get(rows, lambda rows: rows[:first], first)
    return EventPage(
        events=events,
        state=state,
        has_next_page=len(rows) > first,
        end_cursor=events[-1].cursor if events else after,
    )


_first: ByIdentity[list[StoredEvent]] = ByIdentity(1_000)


# The order's combined state, its latest event's id and a page of its events, in one
# statement (``read_page``). The state conditions are written exactly as the partial indexes
# of migration 0002 are, so that each flag is one probe of a small index whatever the
# order's length.
PAGE_SQL = (
    "SELECT flags.failed, flags.pending, flags.latest, page.* FROM (SELECT"  # noqa: S608
    " EXISTS (SELECT 1 FROM order_events"
    "  WHERE account_id = ? AND order_id = ? AND state IN ('error', 'failure')) AS failed,"
    " EXISTS (SELECT 1 FROM order_events e"
    "  WHERE e.account_id = ? AND e.order_id = ? AND e.state = 'pending'"
    "  AND NOT EXISTS (SELECT 1 FROM order_events later"
    "   WHERE later.account_id = e.account_id AND later.order_id = e.order_id"
    "   AND later.service = e.service AND later.version > e.version)) AS pending,"
    " (SELECT event_id FROM order_events"
    "  WHERE account_id = ? AND order_id = ? ORDER BY version DESC LIMIT 1) AS latest"
    ") AS flags LEFT JOIN ("
    f" SELECT {COLUMNS} FROM order_events"
    "  WHERE account_id = ? AND order_id = ? AND version > ? ORDER BY version LIMIT ?"
    ") AS page ON 1 = 1 ORDER BY page.version"
)

LATEST_SQL = (
    "SELECT event_id FROM order_events WHERE account_id = ? AND order_id = ?"
    " ORDER BY version DESC LIMIT 1"
)


@dataclass(frozen=True)
class _Page:
    latest: str  # the order's latest event when the page was read
    state: EventState
    events: list[StoredEvent]


class PageCache:
    """Pages read recently, each with the id of its order's latest event at the time.

    An order's events never change and its versions have no gaps, so while its latest event
    is the same one, so is every page of it: the same events, the same combined state. A
    cached page is therefore checked with one index lookup (``LATEST_SQL``) instead of read
    again. Ids, not versions, are compared: an event id is never used twice, even by a
    database restored from a backup or emptied and filled again. The cache holds at most
    ``max_events`` events; the least recently used pages go first.
    """

    def __init__(self, max_events: int = 10_000) -> None:
        self.max_events = max_events
        self._pages: OrderedDict[tuple[object, ...], _Page] = OrderedDict()
        self._events = 0

    def get(self, key: tuple[object, ...]) -> _Page | None:
        page = self._pages.get(key)
        if page is not None:
            self._pages.move_to_end(key)
        return page

    def put(self, key: tuple[object, ...], page: _Page) -> None:
        old = self._pages.pop(key, None)
        if old is not None:
            self._events -= len(old.events)
        if len(page.events) > self.max_events:
            return
        self._pages[key] = page
        self._events += len(page.events)
        while self._events > self.max_events:
            _, evicted = self._pages.popitem(last=False)
            self._events -= len(evicted.events)

    def clear(self) -> None:
        self._pages.clear()
        self._events = 0


pages = PageCache()


async def read_page(
    account_id: str, order_id: str, after_version: int, limit: int
) -> tuple[EventState, list[StoredEvent]]:
    """The order's combined state and up to ``limit`` of its events after ``after_version``,
    in one round trip.

    Combined state: ``failure`` if any event failed; ``pending`` if there are none or any
    service's latest event is pending; otherwise ``success``. The flags row is joined to the
    page, so it comes back even when the page is empty.
    """
    connection = get_connection("default")
    key = (id(connection), account_id, order_id, after_version, limit)
    cached = pages.get(key)
    if cached is not None:
        latest = await fetch(connection, LATEST_SQL, [account_id, order_id])
        if latest and latest[0][0] == cached.latest:
            return cached.state, cached.events
    rows = await fetch(connection, PAGE_SQL, [account_id, order_id] * 4 + [after_version, limit])
    failed, pending, latest_id, first_event_id = rows[0][:4]
    state = state_from_flags(failed=bool(failed), pending=bool(pending), empty=latest_id is None)
    events = [] if first_event_id is None else [StoredEvent.from_columns(row, 3) for row in rows]
    if latest_id is not None:
        pages.put(key, _Page(latest=latest_id, state=state, events=events))
    return state, events


def state_from_flags(*, failed: bool, pending: bool, empty: bool) -> EventState:
    if failed:
        return EventState.FAILURE
    if empty or pending:
        return EventState.PENDING
    return EventState.SUCCESS


async def events_after(
    account_id: str, order_id: str | None, after: int, limit: int
) -> list[StoredEvent]:
    """Up to ``limit`` events after ``after``: of one order by version, or of the whole
    account by position."""
    if order_id is None:
        query = OrderEvent.filter(account_id=account_id, position__gt=after).order_by("position")
    else:
        query = OrderEvent.filter(
            account_id=account_id, order_id=order_id, version__gt=after
        ).order_by("version")
    return [StoredEvent.from_row(row) for row in await query.limit(limit)]


async def cursor_of(principal: Principal, account_id: str, order_id: str, event_id: str) -> str:
    """The cursor of an order's event named by its id (REST's ``starting_after`` names the
    last event seen), checked as a read of the order: input, then the caller's account and
    scope, and only then the store, so that nobody learns which ids another account holds."""
    errors: list[FieldError] = []
    validation.check_account_id(account_id, "accountId", errors)
    validation.check_order_id(order_id, "orderId", errors)
    well_formed = 1 <= len(event_id) <= validation.EVENT_ID_MAX and event_id.isprintable()
    if errors or not well_formed:
        raise BadUserInput([*errors, *([] if well_formed else [_NOT_AN_EVENT])])
    _authorize_read(principal, account_id, order_id)
    row = await OrderEvent.filter(
        account_id=account_id, order_id=order_id, event_id=event_id
    ).first()
    if row is None:
        raise BadUserInput([_NOT_AN_EVENT])
    return StoredEvent.from_row(row).cursor


_NOT_AN_EVENT = FieldError("after", "is not the id of an event of this order")


async def latest(account_id: str, order_id: str | None) -> StoredEvent | None:
    """The order's latest event, or without ``order_id`` the account's."""
    if order_id is None:
        query = OrderEvent.filter(account_id=account_id).order_by("-position")
    else:
        query = OrderEvent.filter(account_id=account_id, order_id=order_id).order_by("-version")
    row = await query.first()
    return None if row is None else StoredEvent.from_row(row)
