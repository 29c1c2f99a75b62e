"""Rate limits over WebSocket: every operation a connection starts (a query, mutation or
subscription; ``subscribe`` on graphql-transport-ws, ``start`` on graphql-ws) takes a request
from the same per-caller bucket as HTTP. One over is an ``error`` of that operation with
RATE_LIMITED and a retry-after hint; the connection stays open and nothing runs.

A real server process, under both uvicorn WebSocket protocols; each test is a caller of its
own (a subject of its own), so the tests share the server but not a bucket.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator

import pytest

from app.auth import LocalIssuer
from app.models import OrderEvent
from tests.conftest import GraphQLClient
from tests.helpers import ACCOUNT, CREATE, ORDER, create_variables
from tests.live import SUBSCRIBE, http_api, serving, subscriber, watching
from tests.servers import Server
from tests.wsclient import LEGACY_WS, PROTOCOLS, TRANSPORT_WS, WSClient

BURST = 3
_subjects = (f"ws-caller-{n}" for n in itertools.count())


@pytest.fixture(scope="module")
def server(
    server_env: dict[str, str],
    issuer: LocalIssuer,
    tmp_path_factory: pytest.TempPathFactory,
    websocket_protocol: str,
) -> Iterator[Server]:
    """A server allowing each caller a burst of BURST requests and (practically) no more."""
    env = {**server_env, "RATE_LIMIT_PER_SECOND": "0.001", "RATE_LIMIT_BURST": str(BURST)}
    log_dir = tmp_path_factory.mktemp("ratelimit-server")
    with serving(env, log_dir, token(issuer), websocket_protocol) as started:
        yield started


def token(issuer: LocalIssuer, subject: str | None = None) -> str:
    return issuer.mint(
        account_id=ACCOUNT,
        scope="read:shopping write:shopping",
        subject=subject or next(_subjects),
    )


@pytest.fixture
def caller(issuer: LocalIssuer) -> str:
    """The token of a caller no other test is."""
    return token(issuer)


@pytest.fixture
async def ws(server: Server, client: GraphQLClient, caller: str) -> AsyncIterator[WSClient]:
    """A graphql-transport-ws connection of ``caller`` (``client``: empty tables)."""
    async with subscriber(server, caller, TRANSPORT_WS) as connection:
        yield connection


async def still_open(ws: WSClient) -> None:
    await ws.send({"type": "ping"})
    assert (await ws.connection_message())["type"] == "pong"


async def test_mutations_over_the_burst_are_refused_and_not_stored(ws: WSClient) -> None:
    ops = [await ws.subscribe(CREATE, create_variables()) for _ in range(BURST + 2)]
    results = [await ws.message(op) for op in ops]

    assert [r["type"] for r in results] == ["next"] * BURST + ["error"] * 2
    assert await OrderEvent.filter(account_id=ACCOUNT, order_id=ORDER).count() == BURST


async def test_a_refused_operation_is_rate_limited_with_a_retry_after_hint(ws: WSClient) -> None:
    for _ in range(BURST):
        await ws.events(await ws.subscribe("{ __typename }"), 1)

    error = await ws.error(await ws.subscribe("{ __typename }"))
    await still_open(ws)

    assert error["extensions"]["code"] == "RATE_LIMITED"
    assert 0 < error["extensions"]["retryAfter"] <= 1000


async def test_an_operation_over_the_limit_is_refused_before_its_document_is_read(
    ws: WSClient,
) -> None:
    for _ in range(BURST):
        await ws.events(await ws.subscribe("{ __typename }"), 1)

    error = await ws.error(await ws.subscribe("query {"))

    assert error["extensions"]["code"] == "RATE_LIMITED"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_subscriptions_over_the_burst_are_refused(
    server: Server, client: GraphQLClient, caller: str, issuer: LocalIssuer, protocol: str
) -> None:
    # Another caller writes: a first event, after which the subscriptions start (so that
    # each gets the next however soon it is written after they are let through), then that.
    async with http_api(server, token(issuer)) as writer:
        first = await writer.execute(CREATE, create_variables())
        after = first["data"]["createOrderEvent"]["cursor"]
        async with subscriber(server, caller, protocol) as ws:
            ops = [await ws.subscribe(SUBSCRIBE, watching(after=after)) for _ in range(BURST + 1)]
            refused = await ws.error(ops[-1])
            body = await writer.execute(CREATE, create_variables())
            assert "errors" not in body, body
            delivered = [await ws.events(op, 1) for op in ops[:-1]]

    assert refused["extensions"]["code"] == "RATE_LIMITED"
    assert len(delivered) == BURST


async def test_a_query_start_over_the_limit_on_graphql_ws_is_rate_limited(
    server: Server, client: GraphQLClient, caller: str
) -> None:
    # graphql-ws runs no queries (BAD_USER_INPUT), but each start still counts.
    async with subscriber(server, caller, LEGACY_WS) as ws:
        codes = [
            (await ws.error(await ws.subscribe("{ __typename }")))["extensions"]["code"]
            for _ in range(BURST + 1)
        ]

    assert codes == ["BAD_USER_INPUT"] * BURST + ["RATE_LIMITED"]


async def test_http_and_websocket_share_the_callers_bucket(
    server: Server, client: GraphQLClient, caller: str
) -> None:
    async with http_api(server, caller) as http:
        for _ in range(BURST):
            assert (await http.post("{ __typename }")).status_code == 200
    async with subscriber(server, caller) as ws:
        error = await ws.error(await ws.subscribe("{ __typename }"))

    assert error["extensions"]["code"] == "RATE_LIMITED"


async def test_websocket_operations_spend_the_callers_http_requests(
    server: Server, client: GraphQLClient, caller: str
) -> None:
    async with subscriber(server, caller) as ws:
        for _ in range(BURST):
            await ws.events(await ws.subscribe("{ __typename }"), 1)
    async with http_api(server, caller) as http:
        response = await http.post("{ __typename }")

    assert response.status_code == 429


async def test_another_caller_is_not_limited(
    server: Server, client: GraphQLClient, caller: str, issuer: LocalIssuer
) -> None:
    async with subscriber(server, caller) as ws:
        for _ in range(BURST):
            await ws.events(await ws.subscribe("{ __typename }"), 1)
    async with subscriber(server, token(issuer)) as ws:
        results = await ws.events(await ws.subscribe("{ __typename }"), 1)

    assert results == [{"__typename": "Query"}]
