"""createOrderEvent over HTTP: every field of the event it returns, and the row it stores."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.models import OrderEvent
from app.settings import Settings
from tests.helpers import ACCOUNT, ORDER, OTHER_ACCOUNT, create, created, event_input

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")

PICKUP = {
    "pickup_location": {
        "latitude": 37.42242,
        "longitude": -122.08585,
        "postal_code": "0342",
        "address": "Smallwei",
    }
}


async def test_id_is_a_uuid4_string(client: Any) -> None:
    event_id = (await created(client))["id"]

    assert len(event_id) <= 40
    assert str(uuid.UUID(event_id)) == event_id
    assert uuid.UUID(event_id).version == 4


async def test_every_event_gets_its_own_id(client: Any) -> None:
    first, second = await created(client), await created(client)

    assert first["id"] != second["id"]


async def test_event_type_is_service_event(client: Any) -> None:
    assert (await created(client))["eventType"] == "service-event"


async def test_account_and_order_are_those_posted_to(client: Any) -> None:
    event = await created(client, "pos-42")

    assert (event["accountId"], event["orderId"]) == (ACCOUNT, "pos-42")


async def test_state_defaults_to_success(client: Any) -> None:
    assert (await created(client))["state"] == "SUCCESS"


@pytest.mark.parametrize("state", ["ERROR", "FAILURE", "SUCCESS", "PENDING"])
async def test_state_is_the_one_posted(client: Any, state: str) -> None:
    assert (await created(client, state=state))["state"] == state


async def test_null_state_means_success(client: Any) -> None:
    assert (await created(client, state=None))["state"] == "SUCCESS"


async def test_service_and_status_are_the_ones_posted(client: Any) -> None:
    event = await created(client, service="courier", serviceStatus="picked_up")

    assert (event["service"], event["serviceStatus"]) == ("courier", "picked_up")


async def test_description_defaults_to_null(client: Any) -> None:
    assert (await created(client))["description"] is None


async def test_description_is_the_one_posted(client: Any) -> None:
    assert (await created(client, description="food prepared"))["description"] == "food prepared"


async def test_metadata_defaults_to_null(client: Any) -> None:
    assert (await created(client))["metadata"] is None


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param(PICKUP, id="pickup-location"),
        pytest.param({"zeta": 1, "alpha": 2, "mid": 3}, id="key-order"),
        pytest.param({"b": {"z": [1, {"y": None, "x": True}], "a": {}}, "a": []}, id="nested"),
        pytest.param({"big": 2**63 + 1, "bigger": 10**30, "negative": -(2**70)}, id="large-ints"),
        pytest.param({"small": 1e-7, "huge": 1.5e300, "third": 0.1 + 0.2}, id="floats"),
        pytest.param(
            {"adresse": "Storgata 1, Tromsø", "emoji": "🍕", "名前": "寿司"}, id="unicode"
        ),
        pytest.param({}, id="empty-object"),
    ],
)
async def test_metadata_comes_back_exactly_as_posted(client: Any, metadata: dict[str, Any]) -> None:
    returned = (await created(client, metadata=metadata))["metadata"]

    # json.dumps keeps key order, which dict equality would ignore.
    assert json.dumps(returned) == json.dumps(metadata)


async def test_metadata_keeps_its_key_order_when_read_back(client: Any) -> None:
    await created(client, metadata={"zeta": 1, "alpha": {"y": 2, "b": 3}})

    body = await client.execute(
        '{ orderEvents(accountId: "T12345678", orderId: "order-1") { events { metadata } } }'
    )

    (event,) = body["data"]["orderEvents"]["events"]
    assert json.dumps(event["metadata"]) == json.dumps({"zeta": 1, "alpha": {"y": 2, "b": 3}})


async def test_created_at_is_rfc3339_with_a_time_zone(client: Any) -> None:
    created_at = (await created(client))["createdAt"]

    assert RFC3339.match(created_at), created_at


async def test_created_at_is_the_time_of_creation(client: Any) -> None:
    before = datetime.now(UTC)
    created_at = datetime.fromisoformat((await created(client))["createdAt"])

    assert before - timedelta(seconds=1) <= created_at <= datetime.now(UTC) + timedelta(seconds=1)


async def test_created_by_is_the_token_subject(client: Any, mint: Any) -> None:
    body = await create(client, token=mint(sub="courier-7"))

    assert body["data"]["createOrderEvent"]["createdBy"] == "courier-7"


async def test_versions_of_an_order_count_up_from_one(client: Any) -> None:
    versions = [(await created(client))["version"] for _ in range(3)]

    assert versions == [1, 2, 3]


async def test_another_order_starts_at_version_one(client: Any) -> None:
    await created(client, "order-a")
    await created(client, "order-a")

    assert (await created(client, "order-b"))["version"] == 1


async def test_the_same_order_id_in_another_account_starts_at_version_one(
    client: Any, mint: Any
) -> None:
    await created(client, ORDER)
    await created(client, ORDER)

    body = await create(client, ORDER, OTHER_ACCOUNT, token=mint(account=OTHER_ACCOUNT))

    assert body["data"]["createOrderEvent"]["version"] == 1


async def test_links_point_to_the_orders_events(client: Any, settings: Settings) -> None:
    links = (await created(client))["links"]

    assert links == [
        {
            "href": f"{settings.public_url}/v1/accounts/{ACCOUNT}/shopping/orders/{ORDER}/events",
            "rel": "events",
        }
    ]


async def test_links_percent_encode_the_order_id(client: Any) -> None:
    (link,) = (await created(client, "a b?#%"))["links"]

    assert link["href"].endswith("/shopping/orders/a%20b%3F%23%25/events")


async def test_cursor_is_a_non_empty_string(client: Any) -> None:
    cursor = (await created(client))["cursor"]

    assert isinstance(cursor, str) and cursor


async def test_every_event_gets_its_own_cursor(client: Any) -> None:
    first, second = await created(client), await created(client)

    assert first["cursor"] != second["cursor"]


async def test_the_stored_row_matches_the_response(client: Any) -> None:
    event = await created(
        client, state="PENDING", description="on its way", metadata=PICKUP, serviceStatus="sent"
    )

    row = await OrderEvent.get(event_id=event["id"])

    assert (row.account_id, row.order_id, row.version) == (ACCOUNT, ORDER, 1)
    assert (row.event_type, row.state, row.service, row.service_status) == (
        "service-event",
        "pending",
        "kitchen",
        "sent",
    )
    assert (row.description, row.created_by) == ("on its way", "kitchen-1")
    assert json.dumps(json.loads(row.metadata or "null")) == json.dumps(PICKUP)
    assert row.created_at == datetime.fromisoformat(event["createdAt"])


async def test_the_stored_row_of_a_bare_event_has_no_description_or_metadata(
    client: Any,
) -> None:
    event = await created(client)

    row = await OrderEvent.get(event_id=event["id"])

    assert (row.description, row.metadata) == (None, None)


async def test_posting_creates_exactly_one_row(client: Any) -> None:
    await create(client, event=event_input())

    assert await OrderEvent.all().count() == 1
