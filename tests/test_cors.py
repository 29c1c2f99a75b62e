"""CORS: pages on ALLOWED_ORIGINS may call the API from a browser, other pages may not."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ClientWith

SHOP = "https://shop.example"
ELSEWHERE = "https://evil.example"


def preflight(origin: str) -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }


async def test_a_preflight_from_an_allowed_origin_is_answered(client_with: ClientWith) -> None:
    client = client_with(allowed_origins=(SHOP,))

    response = await client.http.options("/graphql", headers=preflight(SHOP))

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == SHOP


async def test_a_preflight_allows_the_token_and_json_headers(client_with: ClientWith) -> None:
    client = client_with(allowed_origins=(SHOP,))

    response = await client.http.options("/graphql", headers=preflight(SHOP))

    allowed = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type"} <= {h.lower() for h in allowed}


async def test_a_preflight_from_another_origin_is_refused(client_with: ClientWith) -> None:
    client = client_with(allowed_origins=(SHOP,))

    response = await client.http.options("/graphql", headers=preflight(ELSEWHERE))

    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


async def test_no_origin_is_allowed_by_default(client: Any) -> None:
    response = await client.http.options("/graphql", headers=preflight(SHOP))

    assert "access-control-allow-origin" not in response.headers


async def test_a_response_to_an_allowed_origin_may_be_read(client_with: ClientWith) -> None:
    client = client_with(allowed_origins=(SHOP,))

    response = await client.post("{ __typename }", headers={"origin": SHOP})

    assert response.headers["access-control-allow-origin"] == SHOP


async def test_a_response_to_another_origin_may_not_be_read(client_with: ClientWith) -> None:
    client = client_with(allowed_origins=(SHOP,))

    response = await client.post("{ __typename }", headers={"origin": ELSEWHERE})

    assert "access-control-allow-origin" not in response.headers


async def test_an_allowed_origin_may_read_the_request_id(client_with: ClientWith) -> None:
    client = client_with(allowed_origins=(SHOP,))

    response = await client.post("{ __typename }", headers={"origin": SHOP})

    assert "x-request-id" in response.headers["access-control-expose-headers"]


async def test_credentials_are_never_allowed(client_with: ClientWith) -> None:
    client = client_with(allowed_origins=("*",))

    response = await client.http.options("/graphql", headers=preflight(SHOP))

    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers


# One document a compiled plan answers, one the view answers (app.api.documents).
ANSWERED_BY = {
    "a plan": '{ orderEvents(accountId: "T12345678", orderId: "o-1") { state } }',
    "the view": "{ __typename }",
}


@pytest.mark.parametrize("query", ANSWERED_BY.values(), ids=ANSWERED_BY.keys())
async def test_a_response_without_origin_says_it_depends_on_the_origin(
    client_with: ClientWith, query: str
) -> None:
    # A cache must not hand a browser's page a response made for a request without Origin.
    client = client_with(allowed_origins=(SHOP,))

    response = await client.post(query)

    assert response.status_code == 200
    assert "errors" not in response.json()
    assert "Origin" in response.headers.get_list("vary")
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("query", ANSWERED_BY.values(), ids=ANSWERED_BY.keys())
async def test_a_response_to_an_allowed_origin_says_it_depends_on_the_origin(
    client_with: ClientWith, query: str
) -> None:
    client = client_with(allowed_origins=(SHOP,))

    response = await client.post(query, headers={"origin": SHOP})

    assert response.headers["access-control-allow-origin"] == SHOP
    assert response.headers.get_list("vary") == ["Origin"]
