"""The front door (app/api/endpoint.py): a compiled document is answered as Strawberry's
view answers it, anything else goes to the view, and what the front door refuses itself is
refused alike whichever route the document would have taken.

Each case is sent twice against the same data: once as it comes (the plan answers it) and once
with plans switched off; status, headers, body and access log line must agree, with what
differs between two writes (ids, times, versions) masked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest

from app.api.documents import Compiler
from app.api.endpoint import query_parameters
from app.api.view import GraphQLView
from app.auth import TokenValidator
from tests.conftest import ClientWith, GraphQLClient, Mint
from tests.test_documents import mask

ACCOUNT, ORDER = "T12345678", "o-1"
READ = (
    'query Read($o: ID!, $first: Int) { orderEvents(accountId: "T12345678", orderId: $o,'
    " first: $first) { state events { id version state service metadata createdAt cursor }"
    " pageInfo { hasNextPage endCursor } } }"
)
WRITE = (
    "mutation Write($o: ID!, $e: OrderEventInput!, $v: Int) { createOrderEvent("
    'accountId: "T12345678", orderId: $o, event: $e, expectedVersion: $v) '
    "{ id version state description metadata createdAt } }"
)
EVENT = {"service": "kitchen", "serviceStatus": "ready", "metadata": {"ü": [1, 2.5, None]}}


class Routes:
    """Counts the requests that reach the ordinary route (Strawberry's view)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ordinary = 0
        run = GraphQLView.run

        async def counted(view: GraphQLView, *args: Any, **kwargs: Any) -> Any:
            self.ordinary += 1
            return await run(view, *args, **kwargs)

        monkeypatch.setattr(GraphQLView, "run", counted)


@pytest.fixture
def routes(monkeypatch: pytest.MonkeyPatch) -> Routes:
    return Routes(monkeypatch)


@contextmanager
def fast_route_off(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with monkeypatch.context() as patch:
        patch.setattr(Compiler, "plan", lambda *_args, **_kwargs: None)
        yield


def _lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "app.access"]


def _request(client: GraphQLClient, spec: dict[str, Any], token: str | None) -> Any:
    headers = {"accept": "application/json", **spec.get("headers", {})}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    if spec.get("method") == "GET":
        return client.http.get("/graphql?" + urlencode(spec["params"]), headers=headers)
    return client.http.post(
        "/graphql",
        content=spec.get("content") or json.dumps(spec["json"]),
        headers={"content-type": "application/json", **headers},
    )


def _comparable(response: httpx.Response) -> dict[str, Any]:
    headers = dict(response.headers)
    assert len(headers.pop("x-request-id")) == 32
    headers.pop("content-length")  # masked values differ in length
    return {"status": response.status_code, "headers": headers, "body": mask(response.json())}


def _comparable_line(line: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in line.items() if key not in {"requestId", "durationMs"}}


CASES: dict[str, dict[str, Any]] = {
    "read": {"json": {"query": READ, "variables": {"o": ORDER, "first": 2}}},
    "read by name": {
        "json": {"query": READ, "variables": {"o": ORDER}, "operationName": "Read"},
    },
    "read over GET": {
        "method": "GET",
        "params": {"query": READ, "variables": json.dumps({"o": ORDER})},
    },
    "read, graphql-response+json": {
        "json": {"query": READ, "variables": {"o": ORDER}},
        "headers": {"accept": "application/graphql-response+json"},
    },
    "read of an order with nothing": {"json": {"query": READ, "variables": {"o": "nothing"}}},
    "read with a bad page size": {"json": {"query": READ, "variables": {"o": ORDER, "first": -1}}},
    "write": {"json": {"query": WRITE, "variables": {"o": ORDER, "e": EVENT}}},
    "write with bad input, graphql-response+json": {
        "json": {"query": WRITE, "variables": {"o": ORDER, "e": {**EVENT, "service": " "}}},
        "headers": {"accept": "application/graphql-response+json"},
    },
    "write at the wrong version": {
        "json": {"query": WRITE, "variables": {"o": ORDER, "e": EVENT, "v": 99}},
    },
    "read from a browser's Origin": {
        "json": {"query": READ, "variables": {"o": ORDER}},
        "headers": {"origin": "https://shop.example"},
    },
}


@pytest.mark.parametrize("case", list(CASES))
async def test_the_fast_route_answers_as_the_ordinary_one(
    client: GraphQLClient,
    routes: Routes,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    caplog.set_level(logging.INFO, logger="app.access")
    for state in ("SUCCESS", "PENDING", "SUCCESS"):
        await client.execute(WRITE, {"o": ORDER, "e": {**EVENT, "state": state}})
    spec = CASES[case]
    caplog.clear()
    routes.ordinary = 0

    fast = await _request(client, spec, client.default_token)
    assert routes.ordinary == 0, "the fast route should have answered"
    with fast_route_off(monkeypatch):
        ordinary = await _request(client, spec, client.default_token)
    assert routes.ordinary == 1

    assert _comparable(fast) == _comparable(ordinary)
    assert fast.content.startswith(b"{") and b"\\u" not in fast.content  # UTF-8, compact
    fast_line, ordinary_line = _lines(caplog)
    assert _comparable_line(fast_line) == _comparable_line(ordinary_line)
    assert fast_line["requestId"] == fast.headers["x-request-id"]


async def test_a_forbidden_write_is_answered_alike(
    client: GraphQLClient, routes: Routes, mint: Mint, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"json": {"query": WRITE, "variables": {"o": ORDER, "e": EVENT}}}
    token = mint("read:shopping")

    fast = await _request(client, spec, token)
    assert routes.ordinary == 0
    with fast_route_off(monkeypatch):
        ordinary = await _request(client, spec, token)

    assert _comparable(fast) == _comparable(ordinary)
    assert fast.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"


STEP_ASIDE: dict[str, tuple[dict[str, Any], int]] = {
    "a key the route does not know": (
        {"json": {"query": READ, "variables": {"o": ORDER}, "documentId": "x"}},
        200,
    ),
    "variables that are not an object": ({"json": {"query": READ, "variables": [1]}}, 400),
    "a document without a plan": (
        {"json": {"query": "{ __typename }"}},
        200,
    ),
    "a variable the plan will not coerce": (
        {"json": {"query": READ, "variables": {"o": ORDER, "first": "2"}}},
        200,
    ),
    "a mutation over GET": (
        {"method": "GET", "params": {"query": WRITE, "variables": json.dumps({"o": ORDER})}},
        405,
    ),
    "a GET with a parameter twice": (
        {"method": "GET", "params": [("query", READ), ("query", READ)]},
        200,
    ),
    "server-sent events asked for": (
        {
            "json": {"query": READ, "variables": {"o": ORDER}},
            "headers": {"accept": "text/event-stream"},
        },
        200,
    ),
}
# Refused by the front door before either route is chosen.
REFUSED: dict[str, tuple[dict[str, Any], int]] = {
    "another media type": (
        {
            "content": json.dumps({"query": READ, "variables": {"o": ORDER}}),
            "headers": {"content-type": "text/plain"},
        },
        415,
    ),
    "JSON with a key twice": (
        {"content": '{"query": "{ x }", "query": "{ y }"}'},
        400,
    ),
}


@pytest.mark.parametrize("case", list(STEP_ASIDE))
async def test_the_fast_route_steps_aside(client: GraphQLClient, routes: Routes, case: str) -> None:
    spec, status = STEP_ASIDE[case]

    response = await _request(client, spec, client.default_token)

    assert routes.ordinary == 1, "the ordinary route should have answered"
    assert response.status_code == status, response.text


@pytest.mark.parametrize("case", list(REFUSED))
async def test_the_front_door_refuses_what_no_route_takes(
    client: GraphQLClient, routes: Routes, case: str
) -> None:
    spec, status = REFUSED[case]

    response = await _request(client, spec, client.default_token)

    assert routes.ordinary == 0
    assert response.status_code == status, response.text
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_of_two_authorization_headers_the_first_counts(
    client: GraphQLClient, mint: Mint
) -> None:
    headers = [
        ("authorization", f"Bearer {client.default_token}"),
        ("authorization", f"Bearer {mint('read:shopping')}"),
        ("content-type", "application/json"),
    ]

    response = await client.http.post(
        "/graphql",
        content=json.dumps({"query": WRITE, "variables": {"o": ORDER, "e": EVENT}}),
        headers=headers,
    )

    assert response.status_code == 200
    assert response.json()["data"]["createOrderEvent"]["version"] == 1


@pytest.mark.parametrize("token", [None, "not-a-token", "Basic abc"])
async def test_without_a_valid_token_both_routes_refuse_alike(
    client: GraphQLClient, monkeypatch: pytest.MonkeyPatch, token: str | None
) -> None:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = token if " " in token else f"Bearer {token}"

    async def send() -> httpx.Response:
        return await client.http.post(
            "/graphql", json={"query": READ, "variables": {"o": ORDER}}, headers=headers
        )

    response = await send()
    with fast_route_off(monkeypatch):
        ordinary = await send()

    assert response.status_code == 401
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert _comparable(response) == _comparable(ordinary)


async def test_a_body_over_the_limit_is_refused_unread(
    client_with: ClientWith, routes: Routes
) -> None:
    limited = client_with(max_body_bytes=200)
    padding = "x" * 300

    response = await limited.post(READ + "#" + padding, {"o": ORDER})

    assert routes.ordinary == 0
    assert response.status_code == 413


async def test_rate_limit_refusals_match_and_count_each_request_once(
    client_with: ClientWith, routes: Routes, monkeypatch: pytest.MonkeyPatch
) -> None:
    limited = client_with(rate_limit_per_second=0.001, rate_limit_burst=2)
    # Counted by the front door, then answered by the view: one request, one token.
    fallback = await limited.post(READ, {"o": ORDER, "first": "2"})
    assert routes.ordinary == 1
    assert fallback.status_code == 200

    second = await limited.post(READ, {"o": ORDER})
    assert second.status_code == 200, "the first request was counted twice"
    fast = await limited.post(READ, {"o": ORDER})
    assert routes.ordinary == 1
    with fast_route_off(monkeypatch):
        ordinary = await limited.post(READ, {"o": ORDER})

    assert fast.status_code == ordinary.status_code == 429
    assert _comparable(fast)["headers"].keys() == _comparable(ordinary)["headers"].keys()
    assert fast.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert fast.headers["retry-after"] == ordinary.headers["retry-after"]


async def test_another_method_is_405_naming_the_methods_there_are(client: GraphQLClient) -> None:
    response = await client.http.put("/graphql", json={"query": "{ __typename }"})

    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_a_fault_in_the_front_door_is_a_500_with_the_request_id(
    client: GraphQLClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*_args: Any) -> None:
        raise RuntimeError("the validator broke")

    monkeypatch.setattr(TokenValidator, "validate", broken)

    response = await client.post(READ, {"o": ORDER})

    request_id = response.headers["x-request-id"]
    assert response.status_code == 500
    error = response.json()["errors"][0]
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR", "requestId": request_id}
    assert "validator" not in response.text
    assert any(request_id in record.getMessage() and record.exc_info for record in caplog.records)


@pytest.mark.parametrize(
    "query_string",
    [
        urlencode({"query": "query { a }", "variables": '{"o": "x y+z&ü"}'}),
        "query=%7Ba%7D&&operationName=",
        "query=a+b%2Bc&variables=",
        "query",
        "query=x;y=1",
        "query=%E2%82%AC%ZZ",
    ],
)
def test_a_query_string_is_read_as_starlette_reads_it(query_string: str) -> None:
    expected = dict(parse_qsl(query_string, keep_blank_values=True))

    assert query_parameters(query_string.encode()) == expected


@pytest.mark.parametrize("query_string", ["query=a&query=b", "query=a&documentId=x"])
def test_a_parameter_twice_or_unknown_is_left_to_the_view(query_string: str) -> None:
    assert query_parameters(query_string.encode()) is None
