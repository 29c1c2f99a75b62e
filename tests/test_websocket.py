"""How the graphql-transport-ws handler (``app.api.websocket``) reads a connection's messages.

The handler reads them itself rather than through Strawberry's ``iter_json`` (fewer frames
suspended under each idle connection, and no message kept once handled); what a client sees
must be Strawberry's behaviour all the same. Subscriptions themselves are in
``test_subscriptions.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from app.auth import LocalIssuer
from tests.conftest import GraphQLClient
from tests.helpers import ACCOUNT, eventually
from tests.live import SUBSCRIBE, serving, subscriber, watching
from tests.servers import Server
from tests.wsclient import LEGACY_WS, PROTOCOLS, TRANSPORT_WS, WSClient, ws_connect


@pytest.fixture(scope="module")
def server(
    server_env: dict[str, str],
    issuer: LocalIssuer,
    tmp_path_factory: pytest.TempPathFactory,
    websocket_protocol: str,
) -> Iterator[Server]:
    log_dir = tmp_path_factory.mktemp("server")
    with serving(server_env, log_dir, reader(issuer), websocket_protocol) as started:
        yield started


def reader(issuer: LocalIssuer) -> str:
    return issuer.mint(account_id=ACCOUNT, scope="read:shopping")


async def test_each_message_is_answered_in_turn(
    server: Server, client: GraphQLClient, issuer: LocalIssuer
) -> None:
    async with subscriber(server, reader(issuer)) as ws:
        for _ in range(3):
            await ws.send({"type": "ping"})
        replies = [await ws.connection_message() for _ in range(3)]

    assert [reply["type"] for reply in replies] == ["pong", "pong", "pong"]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        pytest.param("{not json", "WebSocket message must be valid JSON", id="not-json"),
        pytest.param(
            '{"type": "ping", "type": "pong"}',
            "WebSocket message must be valid JSON",
            id="a-repeated-key-is-not-json-either",
        ),
        pytest.param(
            b'{"type": "connection_init"}', "WebSocket message type must be text", id="binary"
        ),
    ],
)
async def test_a_message_that_is_not_json_text_closes_with_4400(
    server: Server, client: GraphQLClient, message: str | bytes, reason: str
) -> None:
    async with ws_connect(server.url) as ws:
        await ws.websocket.send(message)
        closed = await ws.closed()

    assert closed == (4400, reason)


async def test_a_message_of_an_unknown_type_closes_with_4400(
    server: Server, client: GraphQLClient, issuer: LocalIssuer
) -> None:
    async with subscriber(server, reader(issuer)) as ws:
        await ws.send({"type": "shout"})
        closed = await ws.closed()

    assert closed == (4400, "Unknown message type: shout")


# Messages that are JSON but no message of the protocol --------------------------------------
# graphql-transport-ws closes the socket with 4400 on a message "of a type or format which is
# not specified" (its PROTOCOL.md). The legacy graphql-ws protocol keeps the connection: its
# server answers a message it cannot read with ``connection_error`` and ignores it, and an
# operation that cannot start with ``error`` for that operation (subscriptions-transport-ws,
# PROTOCOL.md). Either way the server logs one line, without a traceback.

QUERY = 'subscription { orderEvents(accountId: "T12345678") { id } }'
# Each protocol's names of the messages that start and stop an operation, as the cases below
# write them.
KINDS = {
    TRANSPORT_WS: {"<start>": "subscribe", "<stop>": "complete"},
    LEGACY_WS: {"<start>": "start", "<stop>": "stop"},
}

# (message, reason): JSON that is no message of the protocol.
NOT_MESSAGES: dict[str, tuple[Any, str]] = {
    "a-list": ([], "a message must be a JSON object"),
    "a-number": (1, "a message must be a JSON object"),
    "a-string": ("<start>", "a message must be a JSON object"),
    "null": (None, "a message must be a JSON object"),
    "no-type": ({"id": "1"}, "a message's type must be a string"),
    "type-not-text": ({"type": 5}, "a message's type must be a string"),
    "start-without-id": (
        {"type": "<start>", "payload": {"query": QUERY}},
        "a <start> message's id must be a string",
    ),
    "id-not-text": (
        {"id": 1, "type": "<start>", "payload": {"query": QUERY}},
        "a <start> message's id must be a string",
    ),
    "stop-id-not-text": ({"id": ["1"], "type": "<stop>"}, "a <stop> message's id must be a string"),
}


def starting(payload: Any) -> dict[str, Any]:
    return {"id": "1", "type": "<start>", "payload": payload}


# (message, reason): a message starting operation "1" whose payload is no request.
BAD_REQUESTS: dict[str, tuple[Any, str]] = {
    "no-payload": ({"id": "1", "type": "<start>"}, "the payload must be an object"),
    "payload-null": (starting(None), "the payload must be an object"),
    "payload-a-list": (starting([]), "the payload must be an object"),
    "no-query": (starting({}), "the payload's query must be a string"),
    "query-not-text": (starting({"query": 5}), "the payload's query must be a string"),
    "variables-not-an-object": (
        starting({"query": QUERY, "variables": "x"}),
        "the payload's variables must be an object or null",
    ),
    "variables-a-list": (
        starting({"query": QUERY, "variables": [1]}),
        "the payload's variables must be an object or null",
    ),
    "operation-name-not-text": (
        starting({"query": QUERY, "operationName": 5}),
        "the payload's operationName must be a string or null",
    ),
}


def in_protocol(text: str, protocol: str) -> str:
    for placeholder, name in KINDS[protocol].items():
        text = text.replace(placeholder, name)
    return text


def message_text(message: Any, protocol: str) -> str:
    return in_protocol(json.dumps(message), protocol)


async def logged_for_one_connection(server: Server, since: int) -> str:
    """What the server wrote since ``since`` (a length of its output), once the connection's
    access line is among it: the connection's handler is over."""
    await eventually(
        lambda: '"method":"WEBSOCKET"' in server.output()[since:], "the connection's access line"
    )
    return server.output()[since:]


def assert_logged_once(logged: str, reason: str) -> None:
    assert logged.count("invalid WebSocket message") == 1, logged
    assert reason in logged and "Traceback" not in logged, logged


INVALID = {**NOT_MESSAGES, **BAD_REQUESTS}


@pytest.mark.parametrize(("message", "reason"), INVALID.values(), ids=INVALID.keys())
async def test_a_json_text_that_is_no_message_closes_with_4400(
    server: Server, client: GraphQLClient, issuer: LocalIssuer, message: Any, reason: str
) -> None:
    since = len(server.output())
    async with subscriber(server, reader(issuer)) as ws:
        await ws.websocket.send(message_text(message, TRANSPORT_WS))
        closed = await ws.closed()

    expected = in_protocol(reason, TRANSPORT_WS)
    assert closed == (4400, expected)
    assert_logged_once(await logged_for_one_connection(server, since), expected)


async def still_usable(ws: WSClient) -> None:
    """Fails unless the connection still runs operations: one that is refused for its input
    (and so needs no data) is answered with its error."""
    op = await ws.subscribe(SUBSCRIBE, watching(after="not-a-cursor"))
    assert (await ws.error(op))["extensions"]["code"] == "BAD_USER_INPUT"


@pytest.mark.parametrize(("message", "reason"), NOT_MESSAGES.values(), ids=NOT_MESSAGES.keys())
async def test_a_json_text_that_is_no_message_is_a_connection_error_on_graphql_ws(
    server: Server, client: GraphQLClient, issuer: LocalIssuer, message: Any, reason: str
) -> None:
    since = len(server.output())
    async with subscriber(server, reader(issuer), LEGACY_WS) as ws:
        await ws.websocket.send(message_text(message, LEGACY_WS))
        reply = await ws.connection_message()
        await still_usable(ws)

    expected = in_protocol(reason, LEGACY_WS)
    assert reply == {"type": "connection_error", "payload": {"message": expected}}
    assert_logged_once(await logged_for_one_connection(server, since), expected)


@pytest.mark.parametrize(("message", "reason"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
async def test_a_start_message_that_is_no_request_is_an_operation_error_on_graphql_ws(
    server: Server, client: GraphQLClient, issuer: LocalIssuer, message: Any, reason: str
) -> None:
    since = len(server.output())
    async with subscriber(server, reader(issuer), LEGACY_WS) as ws:
        await ws.websocket.send(message_text(message, LEGACY_WS))
        reply = await ws.message("1")
        await still_usable(ws)

    assert reply == {"type": "error", "id": "1", "payload": {"message": reason}}
    assert_logged_once(await logged_for_one_connection(server, since), reason)


async def test_an_unknown_message_type_is_a_connection_error_on_graphql_ws(
    server: Server, client: GraphQLClient, issuer: LocalIssuer
) -> None:
    async with subscriber(server, reader(issuer), LEGACY_WS) as ws:
        await ws.send({"type": "shout"})
        reply = await ws.connection_message()
        await still_usable(ws)

    assert reply == {"type": "connection_error", "payload": {"message": "unknown message type"}}


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_message_that_is_no_message_before_connection_init_is_refused_alike(
    server: Server, client: GraphQLClient, protocol: str
) -> None:
    async with ws_connect(server.url, protocol) as ws:
        await ws.websocket.send("[]")
        if protocol == TRANSPORT_WS:
            assert await ws.closed() == (4400, "a message must be a JSON object")
        else:
            reply = await ws.connection_message()
            assert reply["payload"] == {"message": "a message must be a JSON object"}


async def test_only_the_first_invalid_message_of_a_connection_is_logged(
    server: Server, client: GraphQLClient, issuer: LocalIssuer
) -> None:
    since = len(server.output())
    async with subscriber(server, reader(issuer), LEGACY_WS) as ws:
        for _ in range(3):
            await ws.websocket.send("[]")
            await ws.connection_message()

    assert_logged_once(
        await logged_for_one_connection(server, since), "a message must be a JSON object"
    )


async def test_text_that_is_not_json_is_a_connection_error_on_graphql_ws(
    server: Server, client: GraphQLClient, issuer: LocalIssuer
) -> None:
    since = len(server.output())
    async with subscriber(server, reader(issuer), LEGACY_WS) as ws:
        await ws.websocket.send("{not json")
        reply = await ws.connection_message()
        await still_usable(ws)

    reason = "WebSocket message must be valid JSON"
    assert reply == {"type": "connection_error", "payload": {"message": reason}}
    assert_logged_once(await logged_for_one_connection(server, since), reason)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        pytest.param({"type": "x" * 200}, "Unknown message type: xxx", id="unknown-type"),
        pytest.param({"type": "é" * 100}, "Unknown message type: ééé", id="non-ascii-type"),
    ],
)
async def test_a_close_reason_quoting_the_client_is_cut_to_fit_a_close_frame(
    server: Server, client: GraphQLClient, issuer: LocalIssuer, message: Any, reason: str
) -> None:
    since = len(server.output())
    async with subscriber(server, reader(issuer)) as ws:
        await ws.send(message)
        code, said = await ws.closed()

    assert code == 4400 and said.startswith(reason)
    # What fits: 123 bytes, or one less where a character would be cut in two.
    assert 122 <= len(said.encode()) <= 123
    assert "Traceback" not in await logged_for_one_connection(server, since)


# Documents refused before anything runs are answered as over HTTP: BAD_USER_INPUT, in an
# ``error`` message for the operation; the connection stays open.
# (query, operationName, the error's message or its start)
REFUSED_DOCUMENTS = {
    "syntax-error": ("subscription {", None, "Syntax Error: Expected Name, found <EOF>."),
    "too-many-tokens": (
        "subscription { " + "a " * 1000 + "}",
        None,
        "Syntax Error: Document contains more than 1000 tokens. Parsing aborted.",
    ),
    "long-name": ("a" * 200, None, "Syntax Error: Unexpected Name 'aaa"),
    "empty": ("", None, 'Request data is missing a "query" value'),
    "unknown-operation-name": (QUERY, "Other", 'Unknown operation named "Other".'),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("query", "operation_name", "message"), REFUSED_DOCUMENTS.values(), ids=REFUSED_DOCUMENTS.keys()
)
async def test_a_document_refused_before_it_runs_is_bad_input_of_its_operation(
    server: Server,
    client: GraphQLClient,
    issuer: LocalIssuer,
    protocol: str,
    query: str,
    operation_name: str | None,
    message: str,
) -> None:
    since = len(server.output())
    async with subscriber(server, reader(issuer), protocol) as ws:
        payload = {"query": query, "operationName": operation_name}
        await ws.send({"id": "1", "type": KINDS[protocol]["<start>"], "payload": payload})
        error = await ws.error("1")
        await still_usable(ws)

    assert error["message"].startswith(message)
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    logged = await logged_for_one_connection(server, since)
    assert "Traceback" not in logged and "unexpected error" not in logged, logged


async def test_a_query_on_graphql_ws_is_bad_input_of_its_operation(
    server: Server, client: GraphQLClient, issuer: LocalIssuer
) -> None:
    # Strawberry's graphql-ws handler runs subscriptions only; graphql-transport-ws runs all.
    async with subscriber(server, reader(issuer), LEGACY_WS) as ws:
        error = await ws.error(await ws.subscribe("{ __typename }"))
        await still_usable(ws)

    assert (error["message"], error["extensions"]["code"]) == (
        "queries are not allowed",
        "BAD_USER_INPUT",
    )
