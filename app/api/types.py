"""The GraphQL types of the public contract; their descriptions land in schema.graphql."""

from __future__ import annotations

import dataclasses
import functools
from datetime import datetime
from functools import partial
from operator import attrgetter
from typing import Final

import strawberry
from strawberry.scalars import JSON

from app.memo import ByIdentity
from app.records import (
    FIELD_NAMES,
    NEW_EVENT_FIELDS,
    EventPage,
    EventState,
    NewEvent,
    StoredEvent,
    links,
)

OrderEventState = strawberry.enum(
    EventState,
    name="OrderEventState",
    description=(
        "The state of an event. On an order's event collection, the combined state: FAILURE "
        "if any event is ERROR or FAILURE; otherwise PENDING if there are no events or the "
        "latest event of any service is PENDING; otherwise SUCCESS."
    ),
)


@strawberry.input(description="A status report about an order from one service.")
class OrderEventInput:
    service: str = strawberry.field(
        description=(
            "The type of service reporting, to tell this status apart from other services' "
            "(for example `kitchen`). 1 to 255 characters, no control characters."
        )
    )
    service_status: str = strawberry.field(
        description=(
            "The status reported by the service, for example `ready_for_pickup`. "
            "1 to 255 characters, no control characters."
        )
    )
    state: OrderEventState | None = strawberry.field(  # type: ignore[valid-type]
        default=EventState.SUCCESS, description="The state of the event; null means SUCCESS."
    )
    description: str | None = strawberry.field(
        default=None,
        description="A short reason for the status, for example `food prepared`. At most 1000 "
        "characters.",
    )
    metadata: JSON | None = strawberry.field(
        default=None,
        description=(
            "Free-form service data, for example a pickup location. Must be a JSON object, at "
            "most 64 KiB as compact JSON and 32 levels deep; returned exactly as given, key "
            "order included."
        ),
    )

    def to_new_event(self) -> NewEvent:
        """The event this input posts: its same-named fields, a null one taking NewEvent's
        default (so a null ``state`` is SUCCESS)."""
        return NewEvent(
            **{
                name: value
                for name in NEW_EVENT_FIELDS
                if (value := getattr(self, name)) is not None
            }
        )


@strawberry.type(description="A link related to a resource.")
class Link:
    href: str
    rel: str


@strawberry.type(description="A status event of an order, as stored.")
class OrderStatusEvent:
    id: strawberry.ID = strawberry.field(description="The event's id, a UUID v4 string.")
    event_type: str = strawberry.field(
        description="`service-event` for status events posted by services."
    )
    account_id: strawberry.ID = strawberry.field(description="The account the order belongs to.")
    order_id: strawberry.ID = strawberry.field(description="The merchant's order id.")
    state: OrderEventState = strawberry.field(  # type: ignore[valid-type]
        description="The state of the event."
    )
    service: str = strawberry.field(description="The type of service that reported the status.")
    service_status: str = strawberry.field(description="The status reported by the service.")
    description: str | None = strawberry.field(description="A short reason for the status.")
    metadata: JSON | None = strawberry.field(description="Service data, exactly as posted.")
    created_at: datetime = strawberry.field(
        description="Server time of creation, RFC 3339 with time zone."
    )
    created_by: str = strawberry.field(
        description="Who created the event: the access token's subject (the client id)."
    )
    version: int = strawberry.field(
        description=(
            "The order's version when the event was created: its position in the order's "
            "stream, 1 for the first event, then 2, 3, ... without gaps."
        )
    )
    # What the computed fields are worked out from, when they are asked for.
    stored: strawberry.Private[StoredEvent]
    public_url: strawberry.Private[str]

    @strawberry.field(description="Links related to the event.")
    def links(self) -> list[Link]:
        return _links(self.stored.account_id, self.stored.order_id, self.public_url)

    @strawberry.field(
        description=(
            "Opaque position of this event; pass it as `after` to read or watch what came after it."
        )
    )
    def cursor(self) -> str:
        return self.stored.cursor

    @classmethod
    def from_event(cls, event: StoredEvent, public_url: str) -> OrderStatusEvent:
        """The API's view of a stored event: its same-named fields as they are (an ID is a
        str, JSON any value); links and cursor are worked out when asked for."""
        # Filled in one go rather than through the dataclass's __init__: a page makes one per
        # event, and every field is given here as __init__ would insist.
        made = object.__new__(cls)
        vars(made).update(
            zip(_COPIED_FIELDS, _read_copied(event), strict=True),
            stored=event,
            public_url=public_url,
        )
        return made


@functools.lru_cache(maxsize=4096)
def _links(account_id: str, order_id: str, public_url: str) -> list[Link]:
    """An order's links (the same for all its events), made once per order."""
    return [Link(href=link.href, rel=link.rel) for link in links(account_id, order_id, public_url)]


# OrderStatusEvent's fields that StoredEvent has too.
_COPIED_FIELDS: Final = tuple(
    field.name for field in dataclasses.fields(OrderStatusEvent) if field.name in FIELD_NAMES
)
_read_copied: Final = attrgetter(*_COPIED_FIELDS)
# A page read again from the page cache is the same list of the same events.
_pages: ByIdentity[list[OrderStatusEvent]] = ByIdentity(1_000)


def _page_views(events: list[StoredEvent], public_url: str) -> list[OrderStatusEvent]:
    return [OrderStatusEvent.from_event(event, public_url) for event in events]


@strawberry.type(description="Where a page of results ends.")
class PageInfo:
    has_next_page: bool = strawberry.field(description="Whether more events follow this page.")
    end_cursor: str | None = strawberry.field(
        description=(
            "The cursor of the page's last event; on an empty page the `after` that was asked "
            "for, so a poller can keep passing it."
        )
    )


@strawberry.type(description="A page of an order's events, with the order's combined state.")
class OrderEventCollection:
    events: list[OrderStatusEvent] = strawberry.field(description="Events in version order.")
    state: OrderEventState = strawberry.field(  # type: ignore[valid-type]
        description="The combined state over all of the order's events, not just this page."
    )
    page_info: PageInfo

    @classmethod
    def from_page(cls, page: EventPage, public_url: str) -> OrderEventCollection:
        return cls(
            events=_pages.get(page.events, partial(_page_views, public_url=public_url), public_url),
            state=page.state,
            page_info=PageInfo(has_next_page=page.has_next_page, end_cursor=page.end_cursor),
        )
