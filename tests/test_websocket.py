"""How the graphql-transport-ws handler (``app.api.websocket``) reads a connection's messages.

The handler reads them itself rather than through Strawberry's ``iter_json`` (fewer frames
suspended under each idle connection, and no message kept once handled); what a client sees
must be Strawberry's behaviour all the same. Subscriptions themselves are in
``test_subscriptions.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.auth import LocalIssuer
from tests.conftest import GraphQLClient
from tests.helpers import ACCOUNT
from tests.live import serving, subscriber
from tests.servers import Server
from tests.wsclient import ws_connect


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
