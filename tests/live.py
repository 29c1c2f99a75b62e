"""What the live-delivery test modules share: the subscription document and clients that talk
to a real server process, over HTTP (to write and read) and over WebSocket (to watch)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey

from app.settings import Settings
from tests.conftest import ALL_SCOPES, GraphQLClient
from tests.helpers import ACCOUNT, ORDER
from tests.servers import SERVED_PROTOCOL, Server, running_servers
from tests.wsclient import TIMEOUT, TRANSPORT_WS, WSClient, ws_connect

SUBSCRIBE = """
subscription Watch($accountId: ID!, $orderId: ID, $after: String) {
  orderEvents(accountId: $accountId, orderId: $orderId, after: $after) {
    id accountId orderId version serviceStatus cursor
  }
}
"""

FIRST_QUERY = f'{{ orderEvents(accountId: "{ACCOUNT}", orderId: "{ORDER}") {{ state }} }}'

# The contract's extensions.code values.
ERROR_CODES = {
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "BAD_USER_INPUT",
    "NOT_FOUND",
    "CONFLICT",
    "RATE_LIMITED",
    "INTERNAL_SERVER_ERROR",
}


def watching(
    order_id: str | None = ORDER, *, account_id: str = ACCOUNT, after: str | None = None
) -> dict[str, Any]:
    """Variables of SUBSCRIBE; ``order_id=None`` watches the whole account."""
    variables: dict[str, Any] = {"accountId": account_id}
    if order_id is not None:
        variables["orderId"] = order_id
    if after is not None:
        variables["after"] = after
    return variables


def received(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events in a list of subscription results."""
    return [result["orderEvents"] for result in results]


def versions(results: list[dict[str, Any]]) -> list[int]:
    return [event["version"] for event in received(results)]


def ids(events: list[dict[str, Any]]) -> list[str]:
    return [event["id"] for event in events]


@contextmanager
def serving(
    env: dict[str, str], log_dir: Path, token: str, websocket: str = SERVED_PROTOCOL
) -> Iterator[Server]:
    """A server process with ``env`` (and the WebSocket protocol ``websocket``) whose
    database connection is open.

    A SQLite server opens its connection on first use; a subscription cancelled while that
    happens wedges the server (see test_subscriptions.py, "database connection"), so servers
    shared by several tests are made to open it with a first query.
    """
    with running_servers(1, env, log_dir, websocket) as (server,):
        response = httpx.post(
            f"{server.url}/graphql",
            json={"query": FIRST_QUERY},
            headers={"authorization": f"Bearer {token}"},
            timeout=TIMEOUT,
        )
        assert "errors" not in response.json(), response.text
        yield server


@asynccontextmanager
async def http_api(server: Server, token: str) -> AsyncIterator[GraphQLClient]:
    """A GraphQL client posting to the server process's HTTP endpoint with ``token``."""
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http:
        yield GraphQLClient(http=http, default_token=token)


@asynccontextmanager
async def subscriber(
    server: Server, token: str, protocol: str = TRANSPORT_WS, **options: Any
) -> AsyncIterator[WSClient]:
    """A WebSocket connection to the server, initialised with ``token``."""
    async with ws_connect(server.url, protocol, **options) as client:
        await client.init_with_token(token)
        yield client


def expired_token(settings: Settings, *, expired_seconds_ago: int = 600) -> str:
    """A token signed with the development issuer's key that expired long enough ago to be
    past the server's leeway (``mint`` refuses to make one)."""
    key = ECKey.import_key(json.loads(settings.signing_key_path.read_text(encoding="utf-8")))
    now = int(time.time())
    claims = {
        "iss": settings.issuer,
        "sub": "kitchen-1",
        "aud": f"{settings.audience_base}/{ACCOUNT}",
        "scope": ALL_SCOPES,
        "iat": now - 3600,
        "nbf": now - 3600,
        "exp": now - expired_seconds_ago,
    }
    header = {"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}
    return jwt.encode(header, claims, key, algorithms=["ES256"])
