"""GraphQL over HTTP: media types, status codes, GET, unreadable requests, request ids and
masked internal errors."""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx
import pytest

import app.events
from tests.helpers import (
    CREATE,
    INTROSPECTION,
    ORDER_EVENTS,
    create_variables,
    error_code,
    stored_rows,
)

GRAPHQL_RESPONSE = "application/graphql-response+json"
READ = '{ orderEvents(accountId: "T12345678", orderId: "order-1") { state } }'
WRITE = (
    'mutation { createOrderEvent(accountId: "T12345678", orderId: "order-1", '
    'event: {service: "kitchen", serviceStatus: "ready"}) { version } }'
)
ACCEPT_GRAPHQL_RESPONSE = {"accept": GRAPHQL_RESPONSE}


def media_type(response: httpx.Response) -> str:
    return response.headers["content-type"].split(";")[0].strip()


def bearer(client: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {client.default_token}"}


# GraphiQL's page, and only to a browser opening the endpoint.

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


async def test_a_browser_opening_the_endpoint_gets_graphiqls_page(client_with: Any) -> None:
    browser = client_with(graphiql=True)

    response = await browser.http.get("/graphql", headers={"accept": BROWSER_ACCEPT})

    assert (response.status_code, media_type(response)) == (200, "text/html")


# A persisted query's hash alone, as Apollo Client sends it over GET: one this server does not
# know is answered as the client expects (tests/test_persisted.py).
_PERSISTED = {"extensions": '{"persistedQuery":{"version":1,"sha256Hash":"ab"}}'}
_NOT_FOUND = (200, "PERSISTED_QUERY_NOT_FOUND")


@pytest.mark.parametrize(
    ("params", "accept", "answer"),
    [
        ({}, "*/*", (400, "BAD_USER_INPUT")),
        ({}, "application/json", (400, "BAD_USER_INPUT")),
        (_PERSISTED, "*/*", _NOT_FOUND),
        (_PERSISTED, BROWSER_ACCEPT, _NOT_FOUND),
        ({"operationName": "Timeline"}, BROWSER_ACCEPT, (400, "BAD_USER_INPUT")),
        ({"variables": "{}"}, BROWSER_ACCEPT, (400, "BAD_USER_INPUT")),
    ],
)
async def test_a_get_that_is_not_a_browser_opening_the_page_gets_a_graphql_answer(
    client_with: Any, params: dict[str, str], accept: str, answer: tuple[int, str]
) -> None:
    other = client_with(graphiql=True)

    response = await other.http.get("/graphql", params=params, headers={"accept": accept})

    status, code = answer
    assert (response.status_code, media_type(response)) == (status, "application/json")
    assert error_code(response.json()) == code


# A token presented and refused.


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        ("Bearer not-a-jwt", "invalid access token: "),
        ("Basic a2l0Y2hlbjpzZWNyZXQ=", "the Authorization header must be 'Bearer <access token>'"),
    ],
)
async def test_a_refused_token_is_401_even_on_what_runs_without_one(
    client: Any, method: str, authorization: str, reason: str
) -> None:
    headers = {"authorization": authorization}
    if method == "GET":
        response = await client.http.get(
            "/graphql", params={"query": INTROSPECTION}, headers=headers
        )
    else:
        response = await client.post(INTROSPECTION, token=None, headers=headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert error_code(response.json()) == "UNAUTHENTICATED"
    assert response.json()["errors"][0]["message"].startswith(reason)


async def test_introspection_without_a_token_runs(client: Any) -> None:
    response = await client.http.get("/graphql", params={"query": INTROSPECTION})

    assert response.status_code == 200
    assert "errors" not in response.json()


# Media types and status codes.


async def test_json_is_the_default_response_type(client: Any) -> None:
    response = await client.post(READ)

    assert (response.status_code, media_type(response)) == (200, "application/json")


async def test_graphql_response_json_when_the_client_accepts_it(client: Any) -> None:
    response = await client.post(READ, headers=ACCEPT_GRAPHQL_RESPONSE)

    assert (response.status_code, media_type(response)) == (200, GRAPHQL_RESPONSE)


async def test_json_when_the_client_prefers_it(client: Any) -> None:
    response = await client.post(
        READ, headers={"accept": f"application/json, {GRAPHQL_RESPONSE};q=0.9"}
    )

    assert media_type(response) == "application/json"


async def test_a_syntax_error_is_400_without_data_in_graphql_response_json(client: Any) -> None:
    response = await client.post("{ orderEvents(", headers=ACCEPT_GRAPHQL_RESPONSE)

    assert response.status_code == 400
    assert "data" not in response.json()


async def test_a_syntax_error_is_200_in_json(client: Any) -> None:
    response = await client.post("{ orderEvents(")

    assert response.status_code == 200


@pytest.mark.parametrize("accept", ["application/json", GRAPHQL_RESPONSE])
async def test_a_syntax_error_is_bad_user_input(client: Any, accept: str) -> None:
    response = await client.post("{ orderEvents(", headers={"accept": accept})

    assert error_code(response.json()) == "BAD_USER_INPUT"


async def test_an_unknown_field_is_400_in_graphql_response_json(client: Any) -> None:
    response = await client.post("{ nothingHere }", headers=ACCEPT_GRAPHQL_RESPONSE)

    assert response.status_code == 400
    assert error_code(response.json()) == "BAD_USER_INPUT"


async def test_a_bad_variable_is_400_in_graphql_response_json(client: Any) -> None:
    variables = create_variables(event={"serviceStatus": "ready"})

    response = await client.post(CREATE, variables, headers=ACCEPT_GRAPHQL_RESPONSE)

    assert response.status_code == 400
    assert "data" not in response.json()


async def test_an_error_during_execution_is_200_with_data_in_graphql_response_json(
    client: Any,
) -> None:
    variables = create_variables(account_id="t1")

    response = await client.post(CREATE, variables, headers=ACCEPT_GRAPHQL_RESPONSE)

    assert response.status_code == 200
    assert response.json()["data"] is None


async def test_a_missing_token_is_401_in_graphql_response_json(client: Any) -> None:
    response = await client.post(READ, token=None, headers=ACCEPT_GRAPHQL_RESPONSE)

    assert (response.status_code, media_type(response)) == (401, GRAPHQL_RESPONSE)


# GET.


async def test_a_query_may_be_sent_with_get(client: Any) -> None:
    response = await client.http.get("/graphql", params={"query": READ}, headers=bearer(client))

    assert response.status_code == 200
    assert response.json() == {"data": {"orderEvents": {"state": "PENDING"}}}


async def test_get_takes_variables_as_json(client: Any) -> None:
    params = {
        "query": ORDER_EVENTS,
        "variables": '{"accountId": "T12345678", "orderId": "order-1", "first": 1}',
    }

    response = await client.http.get("/graphql", params=params, headers=bearer(client))

    assert response.json()["data"]["orderEvents"]["events"] == []


async def test_introspection_may_be_sent_with_get_without_a_token(client: Any) -> None:
    response = await client.http.get("/graphql", params={"query": INTROSPECTION})

    assert response.json() == {"data": {"__schema": {"queryType": {"name": "Query"}}}}


async def test_a_mutation_over_get_is_405_naming_post(client: Any) -> None:
    response = await client.http.get("/graphql", params={"query": WRITE}, headers=bearer(client))

    assert (response.status_code, response.headers["allow"]) == (405, "POST")


async def test_a_mutation_over_get_gets_a_graphql_error_body(client: Any) -> None:
    response = await client.http.get("/graphql", params={"query": WRITE}, headers=bearer(client))

    assert error_code(response.json()) == "BAD_USER_INPUT"


async def test_a_mutation_over_get_stores_nothing(client: Any) -> None:
    await client.http.get("/graphql", params={"query": WRITE}, headers=bearer(client))

    assert await stored_rows() == (0, 0)


# Requests the endpoint cannot read.


async def test_a_malformed_json_body_is_400_with_a_graphql_error(client: Any) -> None:
    response = await client.http.post(
        "/graphql",
        content=b'{"query": "{ __typename ',
        headers={"content-type": "application/json", **bearer(client)},
    )

    assert (response.status_code, media_type(response)) == (400, "application/json")
    assert error_code(response.json()) == "BAD_USER_INPUT"


async def test_a_body_without_a_query_is_400_with_a_graphql_error(client: Any) -> None:
    response = await client.http.post("/graphql", json={"variables": {}}, headers=bearer(client))

    assert response.status_code == 400
    assert error_code(response.json()) == "BAD_USER_INPUT"


# Request ids.


async def test_every_response_carries_a_request_id(client: Any) -> None:
    response = await client.post(READ)

    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


async def test_request_ids_differ_between_requests(client: Any) -> None:
    first, second = await client.post(READ), await client.post(READ)

    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_a_request_the_endpoint_cannot_read_carries_a_request_id(client: Any) -> None:
    response = await client.http.post(
        "/graphql", content=b"{", headers={"content-type": "application/json"}
    )

    assert "x-request-id" in response.headers


# Internal errors.


@pytest.fixture
def broken_state(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret SQL detail: SELECT * FROM order_events")

    monkeypatch.setattr(app.events, "read_page", fail)


@pytest.mark.usefixtures("broken_state")
async def test_an_internal_error_reveals_nothing_to_the_client(client: Any) -> None:
    response = await client.post(READ)

    assert "secret" not in response.text
    assert "Traceback" not in response.text
    assert "SELECT" not in response.text


@pytest.mark.usefixtures("broken_state")
async def test_an_internal_error_carries_the_request_id(client: Any) -> None:
    response = await client.post(READ)

    (error,) = response.json()["errors"]
    assert error["extensions"] == {
        "code": "INTERNAL_SERVER_ERROR",
        "requestId": response.headers["x-request-id"],
    }


@pytest.mark.usefixtures("broken_state")
async def test_an_internal_error_is_logged_with_its_traceback_and_request_id(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        response = await client.post(READ)

    request_id = response.headers["x-request-id"]
    (record,) = [r for r in caplog.records if request_id in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert "secret SQL detail" in caplog.text
    assert "Traceback" in caplog.text


async def test_a_client_error_is_not_logged_as_an_internal_error(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        await client.post(CREATE, create_variables(event={"serviceStatus": "ready"}))

    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
