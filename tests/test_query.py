"""orderEvents over HTTP: an order's timeline, its combined state, and paging through it."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from tortoise.connection import get_connection

from app.events import PAGE_SQL
from app.settings import Settings
from tests.helpers import ORDER, bad_fields, created, timeline


def collection(body: dict[str, Any]) -> dict[str, Any]:
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["orderEvents"]
    return result


async def post_states(client: Any, events: list[tuple[str, str]], order_id: str = ORDER) -> None:
    for service, state in events:
        await created(client, order_id, service=service, state=state)


async def test_an_order_without_events_has_an_empty_pending_timeline(client: Any) -> None:
    result = collection(await timeline(client, "never-seen"))

    assert result == {
        "events": [],
        "state": "PENDING",
        "pageInfo": {"hasNextPage": False, "endCursor": None},
    }


async def test_events_come_in_version_order(client: Any) -> None:
    await post_states(client, [("kitchen", "PENDING"), ("courier", "SUCCESS")] * 2)

    events = collection(await timeline(client))["events"]

    assert [e["version"] for e in events] == [1, 2, 3, 4]


async def test_the_cursor_read_back_is_the_one_returned_at_creation(client: Any) -> None:
    cursor = (await created(client))["cursor"]

    (event,) = collection(await timeline(client))["events"]

    assert event["cursor"] == cursor


async def test_only_the_orders_own_events_are_listed(client: Any) -> None:
    await created(client, "order-a")
    await created(client, "order-b")

    events = collection(await timeline(client, "order-a"))["events"]

    assert len(events) == 1


# Combined state.

K, C = "kitchen", "courier"


@pytest.mark.parametrize(
    ("events", "state"),
    [
        pytest.param([(K, "SUCCESS")], "SUCCESS", id="one-success"),
        pytest.param([(K, "ERROR")], "FAILURE", id="an-error"),
        pytest.param([(K, "FAILURE")], "FAILURE", id="a-failure"),
        pytest.param([(K, "FAILURE"), (K, "SUCCESS")], "FAILURE", id="failure-then-success"),
        pytest.param([(K, "ERROR"), (K, "SUCCESS")], "FAILURE", id="error-then-success"),
        pytest.param([(K, "PENDING"), (C, "FAILURE")], "FAILURE", id="failure-beats-pending"),
        pytest.param([(K, "PENDING")], "PENDING", id="one-pending"),
        pytest.param([(K, "SUCCESS"), (K, "PENDING")], "PENDING", id="latest-pending"),
        pytest.param([(K, "PENDING"), (K, "SUCCESS")], "SUCCESS", id="pending-superseded"),
        pytest.param([(K, "SUCCESS"), (C, "PENDING")], "PENDING", id="other-service-pending"),
        pytest.param([(K, "PENDING"), (C, "SUCCESS")], "PENDING", id="later-other-success"),
        pytest.param(
            [(K, "PENDING"), (C, "SUCCESS"), (K, "SUCCESS")], "SUCCESS", id="both-succeeded"
        ),
        pytest.param([(K, "SUCCESS"), (C, "SUCCESS")], "SUCCESS", id="every-service-success"),
    ],
)
async def test_combined_state(client: Any, events: list[tuple[str, str]], state: str) -> None:
    await post_states(client, events)

    assert collection(await timeline(client))["state"] == state


async def test_state_covers_events_beyond_the_page(client: Any) -> None:
    await post_states(client, [(K, "SUCCESS"), (K, "SUCCESS"), (C, "FAILURE")])

    assert collection(await timeline(client, first=1))["state"] == "FAILURE"


async def test_state_covers_events_before_the_page(client: Any) -> None:
    await post_states(client, [(C, "PENDING"), (K, "SUCCESS")])
    first_page = collection(await timeline(client, first=1))

    after = first_page["pageInfo"]["endCursor"]

    assert collection(await timeline(client, after=after))["state"] == "PENDING"


async def test_another_orders_failure_does_not_count(client: Any) -> None:
    await post_states(client, [(K, "FAILURE")], order_id="order-b")
    await post_states(client, [(K, "SUCCESS")])

    assert collection(await timeline(client))["state"] == "SUCCESS"


async def test_the_same_service_in_another_order_does_not_supersede(client: Any) -> None:
    await post_states(client, [(K, "PENDING")])
    await post_states(client, [(K, "SUCCESS")], order_id="order-b")

    assert collection(await timeline(client))["state"] == "PENDING"


# Paging.


async def test_paging_visits_every_event_once_in_order(client: Any) -> None:
    for _ in range(120):
        await created(client)
    versions: list[int] = []
    after = None

    while True:
        page = collection(await timeline(client, first=25, after=after))
        versions += [e["version"] for e in page["events"]]
        after = page["pageInfo"]["endCursor"]
        if not page["pageInfo"]["hasNextPage"]:
            break

    assert versions == list(range(1, 121))


async def test_a_page_that_ends_the_timeline_has_no_next_page(client: Any) -> None:
    await post_states(client, [(K, "SUCCESS")] * 3)

    page_info = collection(await timeline(client, first=3))["pageInfo"]

    assert page_info["hasNextPage"] is False


async def test_a_page_with_events_after_it_has_a_next_page(client: Any) -> None:
    await post_states(client, [(K, "SUCCESS")] * 3)

    page_info = collection(await timeline(client, first=2))["pageInfo"]

    assert page_info["hasNextPage"] is True


async def test_end_cursor_is_the_last_events_cursor(client: Any) -> None:
    await post_states(client, [(K, "SUCCESS")] * 3)

    page = collection(await timeline(client, first=2))

    assert page["pageInfo"]["endCursor"] == page["events"][-1]["cursor"]


async def test_after_a_creation_cursor_come_the_later_events(client: Any) -> None:
    first = await created(client)
    await post_states(client, [(K, "SUCCESS")] * 2)

    events = collection(await timeline(client, after=first["cursor"]))["events"]

    assert [e["version"] for e in events] == [2, 3]


async def test_an_empty_last_page_keeps_the_cursor_passed_in(client: Any) -> None:
    await post_states(client, [(K, "SUCCESS")] * 2)
    after = collection(await timeline(client))["pageInfo"]["endCursor"]

    result = collection(await timeline(client, after=after))

    assert result["events"] == []
    assert result["pageInfo"] == {"hasNextPage": False, "endCursor": after}


async def test_the_default_page_holds_fifty_events(client: Any) -> None:
    for _ in range(51):
        await created(client)

    result = collection(await timeline(client))

    assert (len(result["events"]), result["pageInfo"]["hasNextPage"]) == (50, True)


async def test_first_may_be_the_maximum(client: Any, settings: Settings) -> None:
    result = collection(await timeline(client, first=settings.max_page_size))

    assert result["events"] == []


@pytest.mark.parametrize("first", [201, 10_000, -1])
async def test_first_outside_the_allowed_range_is_bad_user_input(client: Any, first: int) -> None:
    assert bad_fields(await timeline(client, first=first)) == ["first"]


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "after",
    [
        pytest.param("garbage", id="garbage"),
        pytest.param("", id="empty"),
        pytest.param("!!!", id="not-base64"),
        pytest.param(_b64("hello"), id="base64-of-something-else"),
        pytest.param(_b64("1:-1:2"), id="negative-position"),
        pytest.param(_b64("1:5"), id="missing-part"),
        pytest.param(_b64("9:1:1"), id="unknown-format"),
        # Numbers beyond the columns (version int4, position int8): never made here, and
        # PostgreSQL would refuse them as parameters rather than find nothing after them.
        pytest.param(_b64(f"1:1:{2**31}"), id="version-beyond-int4"),
        pytest.param(_b64(f"1:{2**63}:1"), id="position-beyond-int8"),
        pytest.param(_b64(f"1:{10**19 - 1}:{10**10 - 1}"), id="largest-digits"),
    ],
)
async def test_an_after_that_is_not_a_cursor_is_bad_user_input(client: Any, after: str) -> None:
    assert bad_fields(await timeline(client, after=after)) == ["after"]


async def test_cursors_at_the_ends_of_the_columns_ranges_are_taken(client: Any) -> None:
    await created(client)
    smallest, largest = _b64("1:0:0"), _b64(f"1:{2**63 - 1}:{2**31 - 1}")

    pages = [collection(await timeline(client, after=after)) for after in (smallest, largest)]

    assert [[event["version"] for event in page["events"]] for page in pages] == [[1], []]


async def test_bad_first_and_after_are_both_named(client: Any) -> None:
    assert bad_fields(await timeline(client, first=201, after="garbage")) == ["first", "after"]


@pytest.mark.parametrize(
    ("account_id", "order_id", "field"),
    [("t12345678", ORDER, "accountId"), ("T12345678", "a/b", "orderId")],
)
async def test_a_bad_identifier_in_a_read_is_bad_user_input(
    client: Any, account_id: str, order_id: str, field: str
) -> None:
    assert bad_fields(await timeline(client, order_id, account_id)) == [field]


async def test_the_combined_state_is_read_from_the_partial_indexes(client: Any) -> None:
    """The flags' conditions must match migration 0002's indexes word for word, or SQLite
    falls back to reading every event of the order (PostgreSQL proves implication, but its
    choice also depends on table statistics, so the plan is checked on SQLite)."""
    connection = get_connection("default")
    if connection.capabilities.dialect != "sqlite":
        pytest.skip("the plan is checked on SQLite")

    _, rows = await connection.execute_query(
        "EXPLAIN QUERY PLAN " + PAGE_SQL, ["T12345678", ORDER] * 4 + [0, 21]
    )

    plan = " / ".join(str(row["detail"]) for row in rows)
    assert "USING INDEX order_events_failed" in plan, plan
    assert "USING INDEX order_events_pending" in plan, plan
