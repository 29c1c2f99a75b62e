"""The REST events (app.rest): Dintero's shape of the operations GraphQL runs, with the same
rules, through the same front door."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app import events, validation
from app.settings import Settings
from tests.conftest import ClientWith, GraphQLClient, Mint
from tests.helpers import ACCOUNT, ORDER, OTHER_ACCOUNT, created, stored_rows

PATH = f"/v1/accounts/{ACCOUNT}/shopping/orders/{ORDER}/events"
KITCHEN = {"service": "kitchen", "service_status": "ready_for_pickup"}
MEMBERS = {
    "id",
    "event_type",
    "created_at",
    "created_by",
    "version",
    "state",
    "service",
    "service_status",
    "description",
    "metadata",
    "_links",
}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def post(
    client: GraphQLClient,
    body: Any = None,
    *,
    path: str = PATH,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = {**bearer(token or client.default_token or ""), **(headers or {})}
    return await client.http.post(path, json=KITCHEN if body is None else body, headers=sent)


async def get(
    client: GraphQLClient, path: str = PATH, token: str | None = None, **params: Any
) -> httpx.Response:
    headers = bearer(token or client.default_token or "")
    return await client.http.get(path, params=params, headers=headers)


def fields_of(response: httpx.Response) -> list[str]:
    error = response.json()["error"]
    assert error["code"] == "BAD_USER_INPUT", error
    return [item["field"] for item in error["errors"]]


async def test_post_answers_the_order_status_event_in_dintero_names(
    client: GraphQLClient, settings: Settings
) -> None:
    metadata = {"pickup_location": {"latitude": 37.42242, "postal_code": "0342"}}
    response = await post(client, {**KITCHEN, "description": "food prepared", "metadata": metadata})

    assert response.status_code == 200, response.text
    event = response.json()
    assert set(event) == MEMBERS
    assert (event["state"], event["version"], event["created_by"]) == ("success", 1, "kitchen-1")
    assert (event["event_type"], event["metadata"]) == ("service-event", metadata)
    assert event["_links"] == [{"href": f"{settings.public_url}{PATH}", "rel": "events"}]


async def test_post_leaves_out_members_without_a_value(client: GraphQLClient) -> None:
    response = await post(client, {**KITCHEN, "state": "pending"})

    assert response.json()["state"] == "pending"
    assert "description" not in response.json()
    assert "metadata" not in response.json()


async def test_get_answers_the_events_the_combined_state_and_the_version_as_etag(
    client: GraphQLClient,
) -> None:
    first = (await post(client, {**KITCHEN, "state": "pending"})).json()
    second = (await post(client, {"service": "courier", "service_status": "picked_up"})).json()

    response = await get(client)

    assert response.status_code == 200
    assert response.json() == {"events": [first, second], "state": "pending"}
    assert response.headers["etag"] == '"2"'


async def test_get_of_an_order_without_events_is_empty_pending_at_version_0(
    client: GraphQLClient,
) -> None:
    response = await get(client)

    assert response.json() == {"events": [], "state": "pending"}
    assert response.headers["etag"] == '"0"'


async def test_get_pages_by_limit_and_starting_after_an_event_id(
    client: GraphQLClient, settings: Settings
) -> None:
    ids = [(await post(client)).json()["id"] for _ in range(3)]

    first = await get(client, limit=2)
    rest = await get(client, limit=2, starting_after=ids[1])

    assert [event["id"] for event in first.json()["events"]] == ids[:2]
    next_page = f"{settings.public_url}{PATH}?limit=2&starting_after={ids[1]}"
    assert first.headers["link"] == f'<{next_page}>; rel="next"'
    assert [event["id"] for event in rest.json()["events"]] == ids[2:]
    assert "link" not in rest.headers
    assert first.headers["etag"] == rest.headers["etag"] == '"3"'


async def test_get_without_limit_gives_the_timeline_up_to_the_page_cap(
    client_with: ClientWith,
) -> None:
    client = client_with(max_page_size=2)
    for _ in range(3):
        await post(client)

    response = await get(client)

    assert len(response.json()["events"]) == 2
    assert 'rel="next"' in response.headers["link"]


async def test_paging_refusals_name_the_rest_parameters(client: GraphQLClient) -> None:
    over = await get(client, limit=100_000)
    unknown = await get(client, starting_after="no-such-event")
    word = await get(client, limit="ten")

    assert (over.status_code, fields_of(over)) == (400, ["limit"])
    assert fields_of(unknown) == ["starting_after"]
    assert fields_of(word) == ["limit"]


async def test_400_lists_every_bad_member_in_rest_names_and_stores_nothing(
    client: GraphQLClient,
) -> None:
    body = {
        "service": "kitchen",
        "service_status": "",
        "description": "x" * (validation.DESCRIPTION_MAX + 1),
        "metadata": [1],
    }
    response = await post(client, body, path=f"/v1/accounts/X1/shopping/orders/{ORDER}/events")

    assert response.status_code == 400
    assert fields_of(response) == ["aid", "service_status", "description", "metadata"]
    assert await stored_rows() == (0, 0)


async def test_400_names_members_of_the_wrong_type_missing_or_unknown(
    client: GraphQLClient,
) -> None:
    body = {"service": 5, "state": "SUCCESS", "colour": "red"}
    response = await post(client, body)

    assert response.status_code == 400
    assert sorted(fields_of(response)) == ["colour", "service", "service_status", "state"]
    assert await stored_rows() == (0, 0)


async def test_400_names_bad_values_beside_bad_types(client: GraphQLClient) -> None:
    body = {"service": "", "service_status": 5, "state": "done", "description": "\x00"}
    response = await post(client, body)

    assert fields_of(response) == ["service", "service_status", "state", "description"]
    assert await stored_rows() == (0, 0)


@pytest.mark.parametrize("body", [b"{", b'{"service": "a", "service": "b"}', b"[]", b"NaN"])
async def test_a_body_that_is_no_strict_json_object_is_400(
    client: GraphQLClient, body: bytes
) -> None:
    headers = {**bearer(client.default_token or ""), "content-type": "application/json"}
    response = await client.http.post(PATH, content=body, headers=headers)

    assert (response.status_code, fields_of(response)) == (400, ["body"])


async def test_a_body_of_another_media_type_is_415(client: GraphQLClient) -> None:
    headers = {**bearer(client.default_token or ""), "content-type": "text/plain"}
    response = await client.http.post(PATH, content=b"{}", headers=headers)

    assert response.status_code == 415
    assert response.json()["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"


async def test_a_body_over_the_limit_is_413_and_stores_nothing(client_with: ClientWith) -> None:
    client = client_with(max_body_bytes=100)
    response = await post(client, {**KITCHEN, "description": "x" * 200})

    assert response.status_code == 413
    assert await stored_rows() == (0, 0)


async def test_no_token_is_401_with_www_authenticate(client: GraphQLClient) -> None:
    response = await client.http.post(PATH, json=KITCHEN)

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "UNAUTHENTICATED"
    assert await stored_rows() == (0, 0)


async def test_a_bad_token_is_401(client: GraphQLClient) -> None:
    response = await get(client, token="not-a-jwt")

    assert response.status_code == 401


async def test_reading_scope_cannot_write_and_other_accounts_are_forbidden(
    client: GraphQLClient, mint: Mint
) -> None:
    read_only = await post(client, token=mint("read:shopping"))
    foreign = await get(client, token=mint(account=OTHER_ACCOUNT))

    assert (read_only.status_code, read_only.json()["error"]["code"]) == (403, "FORBIDDEN")
    assert foreign.status_code == 403
    assert await stored_rows() == (0, 0)


async def test_another_account_learns_nothing_of_event_ids_from_starting_after(
    client: GraphQLClient, mint: Mint
) -> None:
    existing = (await post(client)).json()["id"]
    foreign = mint(account=OTHER_ACCOUNT)

    known = await get(client, token=foreign, starting_after=existing)
    unknown = await get(client, token=foreign, starting_after="no-such-event")

    # The same refusal whether the id is there or not: the account is checked first.
    assert known.status_code == unknown.status_code == 403
    assert known.json() == unknown.json()


async def test_over_the_rate_limit_is_429_with_retry_after(client_with: ClientWith) -> None:
    client = client_with(rate_limit_per_second=0.001, rate_limit_burst=1)
    await get(client)
    response = await get(client)

    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["error"]["code"] == "RATE_LIMITED"


async def test_other_methods_are_405_naming_the_allowed(client: GraphQLClient) -> None:
    response = await client.http.delete(PATH, headers=bearer(client.default_token or ""))

    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"


async def test_idempotency_key_replays_and_refuses_another_request(
    client: GraphQLClient,
) -> None:
    key = {"idempotency-key": "k-1"}
    first = await post(client, headers=key)
    again = await post(client, headers=key)
    other = await post(client, {**KITCHEN, "service_status": "late"}, headers=key)

    assert again.json() == first.json()
    assert (other.status_code, other.json()["error"]["code"]) == (409, "CONFLICT")
    assert await stored_rows() == (1, 1)


async def test_idempotency_key_is_the_graphql_one(client: GraphQLClient) -> None:
    response = await post(client, headers={"idempotency-key": "x" * 256})

    assert fields_of(response) == ["Idempotency-Key"]


async def test_if_match_is_the_expected_version(client: GraphQLClient) -> None:
    await post(client)
    matched = await post(client, headers={"if-match": '"1"'})
    stale = await post(client, headers={"if-match": '"1"'})
    unreadable = await post(client, headers={"if-match": "1"})

    assert (matched.status_code, matched.json()["version"]) == (200, 2)
    assert (stale.status_code, stale.headers["etag"]) == (412, '"2"')
    assert fields_of(unreadable) == ["If-Match"]
    assert await stored_rows() == (2, 1)


async def test_graphql_and_rest_see_the_same_events(client: GraphQLClient) -> None:
    from_graphql = await created(client)

    (event,) = (await get(client)).json()["events"]

    assert event["id"] == from_graphql["id"]
    assert event["_links"] == from_graphql["links"]


def reading_raises(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(events, "list_events", failing)


async def test_an_unexpected_error_is_500_with_the_request_id(
    client: GraphQLClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    reading_raises(monkeypatch, RuntimeError("secret detail"))
    response = await get(client)

    assert response.status_code == 500
    assert response.headers["x-request-id"] in response.json()["error"]["message"]
    assert "secret" not in response.text


async def test_the_database_unavailable_is_503_with_retry_after(
    client: GraphQLClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    reading_raises(monkeypatch, ConnectionRefusedError("database down"))
    response = await get(client)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert "retry-after" in response.headers


async def test_the_link_of_an_order_id_with_reserved_characters_leads_back_to_it(
    client: GraphQLClient, settings: Settings
) -> None:
    path = f"/v1/accounts/{ACCOUNT}/shopping/orders/table%207%3Fa%26b/events"
    event = (await post(client, path=path)).json()

    (link,) = event["_links"]
    followed = await get(client, link["href"].removeprefix(settings.public_url))

    assert link["href"] == f"{settings.public_url}{path}"
    assert followed.json()["events"] == [event]
