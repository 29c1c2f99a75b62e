"""Idempotency keys on createOrderEvent: safe retries, conflicts, concurrency, expiry."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import idempotency
from app.models import IdempotencyKey, OrderEvent
from tests.conftest import ACCOUNT, GraphQLClient, Mint
from tests.servers import running_servers

CREATE = """
mutation Create($order: ID!, $event: OrderEventInput!, $key: String, $expected: Int) {
  createOrderEvent(accountId: "T12345678", orderId: $order, event: $event,
                   idempotencyKey: $key, expectedVersion: $expected) {
    id version createdAt serviceStatus
  }
}
"""
EVENT = {"service": "locker", "serviceStatus": "ready_for_pickup", "metadata": {"box": 7}}


def variables(key: str | None = "retry-1", order: str = "o-1", **event: Any) -> dict[str, Any]:
    return {"order": order, "event": {**EVENT, **event}, "key": key}


def created(body: dict[str, Any]) -> dict[str, Any]:
    assert "errors" not in body, body
    event: dict[str, Any] = body["data"]["createOrderEvent"]
    return event


def error_code(body: dict[str, Any]) -> str:
    code: str = body["errors"][0]["extensions"]["code"]
    return code


async def test_retry_returns_the_same_event_and_stores_one(client: GraphQLClient) -> None:
    first = created(await client.execute(CREATE, variables()))
    again = created(await client.execute(CREATE, variables()))

    assert again == first
    assert await OrderEvent.all().count() == 1


async def test_same_key_with_other_fields_is_a_conflict(client: GraphQLClient) -> None:
    created(await client.execute(CREATE, variables()))

    body = await client.execute(CREATE, variables(serviceStatus="picked_up"))

    assert error_code(body) == "CONFLICT"
    assert "different request" in body["errors"][0]["message"]
    assert body["data"] is None
    assert await OrderEvent.all().count() == 1


async def test_same_key_for_another_order_is_a_conflict(client: GraphQLClient) -> None:
    created(await client.execute(CREATE, variables(order="o-1")))

    body = await client.execute(CREATE, variables(order="o-2"))

    assert error_code(body) == "CONFLICT"
    assert await OrderEvent.filter(order_id="o-2").count() == 0


async def test_twenty_concurrent_requests_with_one_key_create_one_event(
    client: GraphQLClient,
) -> None:
    bodies = await asyncio.gather(*(client.execute(CREATE, variables()) for _ in range(20)))

    answers = [created(body) for body in bodies]
    assert all(answer == answers[0] for answer in answers)
    assert await OrderEvent.all().count() == 1


async def test_keys_of_different_callers_do_not_collide(client: GraphQLClient, mint: Mint) -> None:
    kitchen = created(await client.execute(CREATE, variables(), token=mint(sub="kitchen")))
    courier = created(await client.execute(CREATE, variables(), token=mint(sub="courier")))

    assert kitchen["id"] != courier["id"]
    assert [kitchen["version"], courier["version"]] == [1, 2]


async def test_keys_of_different_accounts_do_not_collide(client: GraphQLClient, mint: Mint) -> None:
    created(await client.execute(CREATE, variables()))
    other = "T87654321"
    document = CREATE.replace(ACCOUNT, other)

    body = await client.execute(document, variables(), token=mint(account=other))

    assert created(body)["version"] == 1
    assert await OrderEvent.filter(account_id=other).count() == 1


async def test_request_failing_validation_does_not_consume_its_key(
    client: GraphQLClient,
) -> None:
    body = await client.execute(CREATE, variables(service=""))
    assert error_code(body) == "BAD_USER_INPUT"

    event = created(await client.execute(CREATE, variables()))

    assert event["version"] == 1
    assert await IdempotencyKey.all().count() == 1


@pytest.mark.parametrize(
    ("key", "reason"),
    [("", "1 to 255"), ("k" * 256, "1 to 255"), ("bad\x00key", "printable")],
)
async def test_malformed_key_is_bad_input(client: GraphQLClient, key: str, reason: str) -> None:
    body = await client.execute(CREATE, variables(key=key))

    assert error_code(body) == "BAD_USER_INPUT"
    [error] = body["errors"][0]["extensions"]["errors"]
    assert error["field"] == "idempotencyKey"
    assert reason in error["message"]
    assert await OrderEvent.all().count() == 0


async def test_key_of_255_characters_is_accepted(client: GraphQLClient) -> None:
    assert created(await client.execute(CREATE, variables(key="k" * 255)))["version"] == 1


async def test_expired_keys_are_purged(client: GraphQLClient) -> None:
    created(await client.execute(CREATE, variables(key="old")))
    created(await client.execute(CREATE, variables(key="fresh")))
    await IdempotencyKey.filter(key="old").update(expires_at=int(time.time()) - 1)

    purged = await idempotency.purge_expired(batch=1)

    assert purged == 1
    assert [row.key for row in await IdempotencyKey.all()] == ["fresh"]


async def test_expired_key_is_free_for_a_new_request(client: GraphQLClient) -> None:
    created(await client.execute(CREATE, variables()))
    await IdempotencyKey.all().update(expires_at=int(time.time()) - 1)

    second = created(await client.execute(CREATE, variables(serviceStatus="picked_up")))

    assert second["version"] == 2


async def test_keys_are_kept_for_the_configured_time(client: GraphQLClient) -> None:
    created(await client.execute(CREATE, variables()))

    row = await IdempotencyKey.get()

    assert row.expires_at - time.time() == pytest.approx(24 * 3600, abs=60)


# Expected versions ----------------------------------------------------------------------


async def test_expected_version_zero_creates_the_first_event(client: GraphQLClient) -> None:
    event = created(await client.execute(CREATE, variables(key=None) | {"expected": 0}))
    assert event["version"] == 1


async def test_expected_version_matching_appends(client: GraphQLClient) -> None:
    created(await client.execute(CREATE, variables(key=None)))

    event = created(await client.execute(CREATE, variables(key=None) | {"expected": 1}))

    assert event["version"] == 2


async def test_stale_expected_version_is_a_conflict_with_the_current_version(
    client: GraphQLClient,
) -> None:
    for _ in range(3):
        created(await client.execute(CREATE, variables(key=None)))

    body = await client.execute(CREATE, variables(key=None) | {"expected": 1})

    assert body["data"] is None
    [error] = body["errors"]
    assert error["extensions"]["code"] == "CONFLICT"
    assert error["extensions"]["currentVersion"] == 3
    assert await OrderEvent.all().count() == 3


async def test_expected_version_on_an_order_without_events_reports_zero(
    client: GraphQLClient,
) -> None:
    body = await client.execute(CREATE, variables(key=None) | {"expected": 4})

    assert body["errors"][0]["extensions"]["currentVersion"] == 0
    assert await OrderEvent.all().count() == 0


async def test_negative_expected_version_is_bad_input(client: GraphQLClient) -> None:
    body = await client.execute(CREATE, variables(key=None) | {"expected": -1})

    assert body["errors"][0]["extensions"]["errors"][0]["field"] == "expectedVersion"


async def test_retry_of_a_succeeded_request_returns_its_event_not_a_conflict(
    client: GraphQLClient,
) -> None:
    first = created(await client.execute(CREATE, variables() | {"expected": 0}))

    again = created(await client.execute(CREATE, variables() | {"expected": 0}))

    assert again == first


async def test_version_conflict_does_not_consume_the_key(client: GraphQLClient) -> None:
    created(await client.execute(CREATE, variables(key=None)))
    body = await client.execute(CREATE, variables() | {"expected": 0})
    assert error_code(body) == "CONFLICT"

    event = created(await client.execute(CREATE, variables() | {"expected": 1}))

    assert event["version"] == 2


async def append_with_retries(
    client: GraphQLClient, order: str, writer: int, count: int, conflicts: list[int]
) -> None:
    """Appends ``count`` events, each after reading the version and retrying on conflict."""
    known = 0
    for index in range(count):
        while True:
            body = await client.execute(
                CREATE,
                variables(key=None, order=order, serviceStatus=f"w{writer}-{index}")
                | {"expected": known},
            )
            if "errors" not in body:
                known = body["data"]["createOrderEvent"]["version"]
                break
            extensions = body["errors"][0]["extensions"]
            assert extensions["code"] == "CONFLICT"
            assert extensions["currentVersion"] > known
            conflicts.append(extensions["currentVersion"])
            known = extensions["currentVersion"]


async def test_concurrent_writers_with_expected_versions_stay_gap_free(
    client: GraphQLClient,
) -> None:
    conflicts: list[int] = []

    await asyncio.gather(*(append_with_retries(client, "o-9", w, 5, conflicts) for w in range(6)))

    versions = (
        await OrderEvent.filter(order_id="o-9")
        .order_by("version")
        .values_list("version", flat=True)
    )
    assert list(versions) == list(range(1, 31))
    statuses = await OrderEvent.filter(order_id="o-9").values_list("service_status", flat=True)
    assert sorted(statuses) == sorted(f"w{w}-{i}" for w in range(6) for i in range(5))


# Several server processes on one PostgreSQL database -----------------------------------


async def test_one_key_across_two_server_processes_creates_one_event(
    client: GraphQLClient,
    postgres_only: None,
    server_env: dict[str, str],
    tmp_path: Path,
) -> None:
    with running_servers(2, server_env, tmp_path) as servers:
        async with httpx.AsyncClient(timeout=30) as http:

            async def post(index: int) -> dict[str, Any]:
                server = servers[index % 2]
                response = await http.post(
                    f"{server.url}/graphql",
                    json={"query": CREATE, "variables": variables()},
                    headers={"authorization": f"Bearer {client.default_token}"},
                )
                body: dict[str, Any] = response.json()
                return body

            bodies = await asyncio.gather(*(post(i) for i in range(20)))

    answers = [created(body) for body in bodies]
    assert all(answer == answers[0] for answer in answers)
    assert await OrderEvent.all().count() == 1


async def test_expected_versions_across_two_server_processes_stay_gap_free(
    client: GraphQLClient,
    postgres_only: None,
    server_env: dict[str, str],
    tmp_path: Path,
) -> None:
    conflicts: list[int] = []
    with running_servers(2, server_env, tmp_path) as servers:
        clients = [
            GraphQLClient(
                http=httpx.AsyncClient(base_url=server.url, timeout=30),
                default_token=client.default_token,
            )
            for server in servers
        ]
        try:
            await asyncio.gather(
                *(append_with_retries(clients[w % 2], "o-m", w, 5, conflicts) for w in range(6))
            )
        finally:
            for each in clients:
                await each.http.aclose()

    versions = (
        await OrderEvent.filter(order_id="o-m")
        .order_by("version")
        .values_list("version", flat=True)
    )
    assert list(versions) == list(range(1, 31))


@pytest.mark.parametrize(
    ("order", "event", "expected", "request_hash"),
    [
        (
            "o-1",
            {},
            None,
            "0b4b8d7b432c6a94d897678d57b01e290c66a5e21c4b3e6c0b3cb3f336698e25",
        ),
        (
            "o-2",
            {"state": "PENDING", "description": "zwölf", "metadata": {"box": 7, "ü": [1.5, None]}},
            0,
            "e12d14bd870699ccc8a13a5d2f567e5c57dcf8d2f1f2c42853a3e84217340e27",
        ),
    ],
)
async def test_a_request_hashes_as_it_always_did(
    client: GraphQLClient,
    order: str,
    event: dict[str, Any],
    expected: int | None,
    request_hash: str,
) -> None:
    # Keys stored by earlier releases must still match their retries: these hashes were
    # stored before the fingerprint was built from NewEvent's fields.
    body = await client.execute(CREATE, {**variables(order=order, **event), "expected": expected})

    created(body)
    claim = await IdempotencyKey.get(key="retry-1")
    assert claim.request_hash == request_hash
