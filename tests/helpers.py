"""GraphQL documents and small helpers the HTTP-level test modules share."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from app.models import OrderEvent, OrderStream

ACCOUNT = "T12345678"
OTHER_ACCOUNT = "T87654321"
ORDER = "order-1"
# How long a test waits for something that must happen by itself before it fails: far above
# what it takes on a loaded machine, so that reaching it means "never".
WAIT = 30.0

EVENT_FIELDS = """
    id eventType accountId orderId state service serviceStatus description metadata
    createdAt createdBy version links { href rel } cursor
"""

CREATE = f"""
mutation Create($accountId: ID!, $orderId: ID!, $event: OrderEventInput!) {{
  createOrderEvent(accountId: $accountId, orderId: $orderId, event: $event) {{
    {EVENT_FIELDS}
  }}
}}
"""

ORDER_EVENTS = """
query Timeline($accountId: ID!, $orderId: ID!, $first: Int, $after: String) {
  orderEvents(accountId: $accountId, orderId: $orderId, first: $first, after: $after) {
    events { version state service cursor }
    state
    pageInfo { hasNextPage endCursor }
  }
}
"""

INTROSPECTION = "{ __schema { queryType { name } } }"


def event_input(**fields: Any) -> dict[str, Any]:
    """A valid OrderEventInput; keyword arguments replace or add fields."""
    return {"service": "kitchen", "serviceStatus": "ready_for_pickup", **fields}


def create_variables(
    order_id: str = ORDER, account_id: str = ACCOUNT, event: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "accountId": account_id,
        "orderId": order_id,
        "event": event_input() if event is None else event,
    }


async def create(
    client: Any,
    order_id: str = ORDER,
    account_id: str = ACCOUNT,
    *,
    event: dict[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Posts createOrderEvent and returns the response body; ``options`` (``token=``,
    ``headers=``) go to the client."""
    body: dict[str, Any] = await client.execute(
        CREATE, create_variables(order_id, account_id, event), **options
    )
    return body


async def created(client: Any, order_id: str = ORDER, **fields: Any) -> dict[str, Any]:
    """Creates an event (``fields`` on top of a valid input) that must succeed; returns it."""
    body = await create(client, order_id, event=event_input(**fields))
    assert "errors" not in body, body
    event: dict[str, Any] = body["data"]["createOrderEvent"]
    return event


async def timeline(
    client: Any,
    order_id: str = ORDER,
    account_id: str = ACCOUNT,
    *,
    first: int | None = None,
    after: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Posts orderEvents and returns the response body; ``options`` go to the client."""
    variables: dict[str, Any] = {"accountId": account_id, "orderId": order_id}
    if first is not None:
        variables["first"] = first
    if after is not None:
        variables["after"] = after
    body: dict[str, Any] = await client.execute(ORDER_EVENTS, variables, **options)
    return body


def only_error(body: dict[str, Any]) -> dict[str, Any]:
    """The response's single error (failing unless there is exactly one)."""
    assert len(body.get("errors") or []) == 1, body
    error: dict[str, Any] = body["errors"][0]
    return error


def error_code(body: dict[str, Any]) -> str:
    code: str = only_error(body)["extensions"]["code"]
    return code


def bad_fields(body: dict[str, Any]) -> list[str]:
    """The fields a BAD_USER_INPUT error names, in its order."""
    error = only_error(body)
    assert error["extensions"]["code"] == "BAD_USER_INPUT", body
    return [item["field"] for item in error["extensions"]["errors"]]


async def stored_rows() -> tuple[int, int]:
    """(events, order streams) in the database."""
    return await OrderEvent.all().count(), await OrderStream.all().count()


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], what: str, *, within: float = WAIT
) -> None:
    """Waits until ``condition`` (a function, or a coroutine function) holds, checking it
    every few milliseconds; fails naming ``what`` if it still does not after ``within``
    seconds. For what a test cannot be told of, such as a line in another process's log."""
    deadline = time.monotonic() + within
    while True:
        holds = condition()
        if inspect.isawaitable(holds):
            holds = await holds
        if holds:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within} s")
        await asyncio.sleep(0.01)
