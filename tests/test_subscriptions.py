"""The orderEvents subscription end to end: a real server process on a free port, a real
WebSocket client, events written through the server's HTTP endpoint.

Most tests share one server with the default settings; the limits, the small buffer and the
shutdown need servers of their own. Several processes on one database, and the listener's
reconnection, are in ``test_subscriptions_pg.py``.

A subscription without ``after`` starts at the head of its stream when the server gets to
reading it, which a client cannot see. So most tests first store a "seed" event and subscribe
after its cursor: what is written from then on must arrive, however late the server starts.
Once a subscriber has received an event, the next one written can only come live.
"""

from __future__ import annotations

import asyncio
import base64
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from app.auth import LocalIssuer
from app.settings import Settings
from tests.conftest import GraphQLClient, Mint
from tests.helpers import ACCOUNT, ORDER, OTHER_ACCOUNT, WAIT, create, created, eventually, timeline
from tests.live import (
    ERROR_CODES,
    SUBSCRIBE,
    expired_token,
    http_api,
    ids,
    received,
    serving,
    subscriber,
    versions,
    watching,
)
from tests.servers import Server, migrate, running_servers
from tests.wsclient import LEGACY_WS, PROTOCOLS, TRANSPORT_WS, ws_connect

SHOP = "http://shop.example"
WATCHED_FIELDS = ("id", "accountId", "orderId", "version", "serviceStatus", "cursor")


def as_watched(event: dict[str, Any]) -> dict[str, Any]:
    """An event returned by createOrderEvent, with the fields SUBSCRIBE selects."""
    return {field: event[field] for field in WATCHED_FIELDS}


@pytest.fixture(scope="module")
def server(
    server_env: dict[str, str],
    issuer: LocalIssuer,
    tmp_path_factory: pytest.TempPathFactory,
    websocket_protocol: str,
) -> Iterator[Server]:
    """The server most tests use: default settings, plus one allowed browser origin."""
    env = {**server_env, "ALLOWED_ORIGINS": SHOP}
    log_dir = tmp_path_factory.mktemp("server")
    with serving(env, log_dir, reader_token(issuer), websocket_protocol) as started:
        yield started


@pytest.fixture(scope="module")
def limits_server(
    server_env: dict[str, str],
    issuer: LocalIssuer,
    tmp_path_factory: pytest.TempPathFactory,
    websocket_protocol: str,
) -> Iterator[Server]:
    env = {
        **server_env,
        "WS_INIT_TIMEOUT_SECONDS": "0.5",
        "WS_PING_INTERVAL_SECONDS": "0.3",
        "MAX_SUBSCRIPTIONS_PER_CONNECTION": "2",
    }
    log_dir = tmp_path_factory.mktemp("limits-server")
    with serving(env, log_dir, reader_token(issuer), websocket_protocol) as started:
        yield started


@pytest.fixture(scope="module")
def small_buffer_server(
    server_env: dict[str, str],
    issuer: LocalIssuer,
    tmp_path_factory: pytest.TempPathFactory,
    websocket_protocol: str,
) -> Iterator[Server]:
    env = {**server_env, "SUBSCRIPTION_BUFFER": "4"}
    log_dir = tmp_path_factory.mktemp("small-buffer-server")
    with serving(env, log_dir, reader_token(issuer), websocket_protocol) as started:
        yield started


def reader_token(issuer: LocalIssuer) -> str:
    return issuer.mint(account_id=ACCOUNT, scope="read:shopping")


@pytest.fixture
async def api(server: Server, client: GraphQLClient, mint: Mint) -> AsyncIterator[GraphQLClient]:
    """Writes and reads through the server's HTTP endpoint (``client``: empty tables)."""
    async with http_api(server, mint()) as http:
        yield http


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


# Delivery ----------------------------------------------------------------------------------


async def test_subscriber_receives_each_event_written_while_it_watches(
    server: Server, api: GraphQLClient, mint: Mint, protocol: str
) -> None:
    seed = await created(api)
    async with subscriber(server, mint(), protocol) as ws:
        op = await ws.subscribe(SUBSCRIBE, watching(after=seed["cursor"]))
        written = [await created(api, serviceStatus="accepted")]
        results = await ws.events(op, 1)
        written.append(await created(api, serviceStatus="ready_for_pickup"))
        results += await ws.events(op, 1)

    assert received(results) == [as_watched(event) for event in written]


# Every field, so the compiled route (app/api/documents.py) and graphql-core's are compared
# whole; the fragment keeps the second document off the compiled route.
EVERY_FIELD = (
    "id eventType accountId orderId state service serviceStatus description metadata"
    " createdAt createdBy version cursor links { href rel __typename } __typename"
)
COMPILED = (
    "subscription($accountId: ID!, $orderId: ID, $after: String) {"
    " watched: orderEvents(accountId: $accountId, orderId: $orderId, after: $after)"
    f" {{ {EVERY_FIELD} }} }}"
)
ORDINARY = (
    "subscription($accountId: ID!, $orderId: ID, $after: String) {"
    " watched: orderEvents(accountId: $accountId, orderId: $orderId, after: $after)"
    " { ...All } } fragment All on OrderStatusEvent {" + f" {EVERY_FIELD} }}"
)


async def test_compiled_and_ordinary_routes_deliver_the_same_payload(
    server: Server, api: GraphQLClient, mint: Mint
) -> None:
    seed = await created(api)
    async with subscriber(server, mint()) as ws:
        compiled = await ws.subscribe(COMPILED, watching(after=seed["cursor"]))
        ordinary = await ws.subscribe(ORDINARY, watching(after=seed["cursor"]))
        await created(api, metadata={"z": [1, 2.5, None], "a": {"b": "ø"}}, state="PENDING")
        results = (await ws.events(compiled, 1), await ws.events(ordinary, 1))

    assert results[0] == results[1]
    assert results[0][0]["watched"]["metadata"] == {"z": [1, 2.5, None], "a": {"b": "ø"}}


async def test_concurrently_written_events_arrive_once_each_in_version_order(
    server: Server, api: GraphQLClient, mint: Mint
) -> None:
    seed = await created(api)
    async with subscriber(server, mint()) as ws:
        op = await ws.subscribe(SUBSCRIBE, watching(after=seed["cursor"]))
        await created(api)
        results = await ws.events(op, 1)
        await asyncio.gather(*(created(api, serviceStatus=f"step-{n}") for n in range(10)))
        results += await ws.events(op, 10)
        # A duplicate of any of them would arrive before the next one.
        await created(api)
        results += await ws.events(op, 1)

    assert versions(results) == list(range(2, 14))


async def test_account_stream_receives_every_order_in_the_order_written(
    server: Server, api: GraphQLClient, mint: Mint
) -> None:
    seed = await created(api, "o-0")
    async with subscriber(server, mint()) as ws:
        op = await ws.subscribe(SUBSCRIBE, watching(None, after=seed["cursor"]))
        written = [await created(api, order) for order in ("o-1", "o-2", "o-1", "o-3", "o-2")]
        results = await ws.events(op, 5)

    assert received(results) == [as_watched(event) for event in written]


async def test_order_stream_leaves_out_other_orders(
    server: Server, api: GraphQLClient, mint: Mint
) -> None:
    seed = await created(api, "o-1")
    async with subscriber(server, mint()) as ws:
        op = await ws.subscribe(SUBSCRIBE, watching("o-1", after=seed["cursor"]))
        await created(api, "o-2")
        mine = await created(api, "o-1")
        results = await ws.events(op, 1)

    assert received(results) == [as_watched(mine)]


async def test_account_stream_leaves_out_other_accounts(
    server: Server, api: GraphQLClient, mint: Mint
) -> None:
    seed = await created(api, "o-1")
    async with subscriber(server, mint()) as ws:
        op = await ws.subscribe(SUBSCRIBE, watching(None, after=seed["cursor"]))
        async with http_api(server, mint(account=OTHER_ACCOUNT)) as other:
            body = await other.execute(
                "mutation($e: OrderEventInput!) { createOrderEvent(accountId: "
                f'"{OTHER_ACCOUNT}", orderId: "o-1", event: $e) {{ id }} }}',
                {"e": {"service": "kitchen", "serviceStatus": "accepted"}},
            )
            assert "errors" not in body, body
        mine = await created(api, "o-1")
        results = await ws.events(op, 1)

    assert received(results) == [as_watched(mine)]


async def test_without_after_the_subscription_starts_at_the_head(
    server: Server, api: GraphQLClient, mint: Mint
) -> None:
    for _ in range(2):
        await created(api)

    async with subscriber(server, mint()) as ws:
        op = await ws.subscribe(SUBSCRIBE, watching())
        # When the server reads the head is not visible to a client: keep writing until an
        # event arrives; whatever arrives first must be newer than what was stored before.
        arriving = asyncio.ensure_future(ws.events(op, 1, timeout=WAIT))
        while not arriving.done():
            await created(api)
            await asyncio.wait((arriving,), timeout=0.05)
        first = received(arriving.result())[0]

    assert first["version"] > 2


# Resuming ----------------------------------------------------------------------------------


async def test_after_replays_the_stored_events_then_live_ones(
    server: Server, api: GraphQLClient, mint: Mint
) -> None:
    written = [await created(api) for _ in range(5)]

    async with subscriber(server, mint()) as ws:
        op = await ws.subscribe(SUBSCRIBE, watching(after=written[1]["cursor"]))
        results = await ws.events(op, 3)
        await created(api)
        results += await ws.events(op, 1)

    assert versions(results) == [3, 4, 5, 6]


async def test_cursor_from_the_query_resumes_the_subscription(
    server: Server, api: GraphQLClient, mint: Mint
) -> None:
    for _ in range(4):
        await created(api)
    page = await timeline(api, first=2)

    async with subscriber(server, mint()) as ws:
        after = page["data"]["orderEvents"]["pageInfo"]["endCursor"]
        op = await ws.subscribe(SUBSCRIBE, watching(after=after))
        results = await ws.events(op, 2)

    assert versions(results) == [3, 4]


async def test_cursor_from_the_subscription_pages_the_query(
    server: Server, api: GraphQLClient, mint: Mint
) -> None:
    written = [await created(api) for _ in range(4)]
    async with subscriber(server, mint()) as ws:
        op = await ws.subscribe(SUBSCRIBE, watching(after=written[0]["cursor"]))
        events = received(await ws.events(op, 3))

    page = await timeline(api, after=events[0]["cursor"])

    assert [event["version"] for event in page["data"]["orderEvents"]["events"]] == [3, 4]


async def test_cursor_from_an_order_stream_resumes_the_account_stream(
    server: Server, api: GraphQLClient, mint: Mint
) -> None:
    written = [await created(api, order) for order in ("o-1", "o-2", "o-1", "o-2", "o-3")]
    async with subscriber(server, mint()) as ws:
        op = await ws.subscribe(SUBSCRIBE, watching("o-1", after=written[0]["cursor"]))
        from_order_stream = received(await ws.events(op, 1))[0]
        account_op = await ws.subscribe(
            SUBSCRIBE, watching(None, after=from_order_stream["cursor"])
        )
        results = await ws.events(account_op, 2)

    assert ids(received(results)) == ids(written[3:])


async def test_cursor_from_the_account_stream_resumes_an_order_stream(
    server: Server, api: GraphQLClient, mint: Mint
) -> None:
    written = [await created(api, order) for order in ("o-2", "o-1", "o-2", "o-1", "o-1")]
    async with subscriber(server, mint()) as ws:
        op = await ws.subscribe(SUBSCRIBE, watching(None, after=written[0]["cursor"]))
        from_account_stream = received(await ws.events(op, 4))
        # The account stream's cursor of the first o-1 event.
        after = from_account_stream[0]["cursor"]
        order_op = await ws.subscribe(SUBSCRIBE, watching("o-1", after=after))
        results = await ws.events(order_op, 2)

    assert ids(received(results)) == ids([written[3], written[4]])


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# (orderId, after): a cursor that was not made here, and numbers beyond the columns that the
# order's stream (version, int4) and the account's (position, int8) compare them with.
BAD_CURSORS = {
    "not-a-cursor": (ORDER, "not-a-cursor"),
    "version-beyond-int4": (ORDER, _b64(f"1:1:{2**31}")),
    "position-beyond-int8": (None, _b64(f"1:{2**63}:1")),
}


@pytest.mark.parametrize("document", [COMPILED, ORDINARY], ids=["compiled", "ordinary"])
@pytest.mark.parametrize(("order_id", "after"), BAD_CURSORS.values(), ids=BAD_CURSORS.keys())
async def test_after_that_is_no_cursor_is_bad_user_input(
    server: Server,
    api: GraphQLClient,
    mint: Mint,
    protocol: str,
    document: str,
    order_id: str | None,
    after: str,
) -> None:
    async with subscriber(server, mint(), protocol) as ws:
        op = await ws.subscribe(document, watching(order_id, after=after))
        error = await ws.error(op)

    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert [item["field"] for item in error["extensions"]["errors"]] == ["after"]


WRITERS = 3
EVENTS_PER_WRITER = 20
RESUME_EVERY = 5


async def write_steadily(api: GraphQLClient, orders: list[str], writer: int) -> list[Any]:
    """One writer: an event to each of ``orders`` in turn, with short pauses, so that the
    writers interleave with each other and with a subscriber's reconnections."""
    events = []
    for n, order in enumerate(orders):
        events.append(await created(api, order, serviceStatus=f"writer-{writer}-{n}"))
        await asyncio.sleep(0.005)
    return events


async def watch_with_reconnections(
    server: Server, token: str, order_id: str | None, after: str, count: int
) -> list[dict[str, Any]]:
    """Reads ``count`` events after ``after``, reconnecting every RESUME_EVERY events with the
    cursor of the last event received; returns them in the order received."""
    events: list[dict[str, Any]] = []
    while len(events) < count:
        async with subscriber(server, token) as ws:
            op = await ws.subscribe(SUBSCRIBE, watching(order_id, after=after))
            batch = received(await ws.events(op, min(RESUME_EVERY, count - len(events))))
        events += batch
        after = batch[-1]["cursor"]
    return events


async def test_resuming_under_concurrent_writers_misses_and_repeats_nothing(
    server: Server, api: GraphQLClient, mint: Mint
) -> None:
    start = [await created(api) for _ in range(5)]
    total = len(start) + WRITERS * EVENTS_PER_WRITER

    writers = [
        asyncio.create_task(write_steadily(api, [ORDER] * EVENTS_PER_WRITER, n))
        for n in range(WRITERS)
    ]
    events = await watch_with_reconnections(
        server, mint(), ORDER, start[-1]["cursor"], total - len(start)
    )
    await asyncio.gather(*writers)

    assert [event["version"] for event in events] == list(range(len(start) + 1, total + 1))


async def test_resuming_the_account_stream_under_concurrent_writers_follows_the_stored_order(
    server: Server, api: GraphQLClient, mint: Mint
) -> None:
    orders = ["o-1", "o-2", "o-3"]
    start = [await created(api, order) for order in orders]
    count = WRITERS * EVENTS_PER_WRITER

    writers = [
        asyncio.create_task(
            write_steadily(api, [orders[(n + i) % 3] for i in range(EVENTS_PER_WRITER)], n)
        )
        for n in range(WRITERS)
    ]
    events = await watch_with_reconnections(server, mint(), None, start[-1]["cursor"], count)
    written = [event for batch in await asyncio.gather(*writers) for event in batch]
    # The stream as stored, read in one go now that the writers are done.
    async with subscriber(server, mint()) as ws:
        op = await ws.subscribe(SUBSCRIBE, watching(None, after=start[-1]["cursor"]))
        stored = received(await ws.events(op, count))

    assert (ids(events), sorted(ids(events))) == (ids(stored), sorted(ids(written)))


# Authorization, per subscription -------------------------------------------------------------


async def test_order_scope_cannot_watch_the_whole_account(
    server: Server, api: GraphQLClient, mint: Mint
) -> None:
    async with subscriber(server, mint("read:shopping:/orders/o-1/events")) as ws:
        op = await ws.subscribe(SUBSCRIBE, watching(None))
        error = await ws.error(op)

    assert error["extensions"]["code"] == "FORBIDDEN"


async def test_order_scope_watches_its_order(
    server: Server, api: GraphQLClient, mint: Mint
) -> None:
    seed = await created(api, "o-1")
    async with subscriber(server, mint("read:shopping:/orders/o-1/events")) as ws:
        op = await ws.subscribe(SUBSCRIBE, watching("o-1", after=seed["cursor"]))
        event = await created(api, "o-1")
        results = await ws.events(op, 1)

    assert received(results) == [as_watched(event)]


async def test_order_scope_cannot_watch_another_order(
    server: Server, api: GraphQLClient, mint: Mint
) -> None:
    async with subscriber(server, mint("read:shopping:/orders/o-1/events")) as ws:
        op = await ws.subscribe(SUBSCRIBE, watching("o-2"))
        error = await ws.error(op)

    assert error["extensions"]["code"] == "FORBIDDEN"


async def test_any_order_scope_watches_the_whole_account(
    server: Server, api: GraphQLClient, mint: Mint
) -> None:
    seed = await created(api, "o-0")
    async with subscriber(server, mint("read:shopping:/orders/ANY/events")) as ws:
        op = await ws.subscribe(SUBSCRIBE, watching(None, after=seed["cursor"]))
        written = [await created(api, order) for order in ("o-1", "o-2")]
        results = await ws.events(op, 2)

    assert received(results) == [as_watched(event) for event in written]


@pytest.mark.parametrize("order_id", [ORDER, None], ids=["order", "account"])
@pytest.mark.parametrize(
    "scope", ["write:shopping", "write:shopping:/orders/ANY/events", "admin:orders"]
)
async def test_token_without_a_read_scope_cannot_subscribe(
    server: Server, api: GraphQLClient, mint: Mint, scope: str, order_id: str | None
) -> None:
    async with subscriber(server, mint(scope)) as ws:
        op = await ws.subscribe(SUBSCRIBE, watching(order_id))
        error = await ws.error(op)

    assert error["extensions"]["code"] == "FORBIDDEN"


@pytest.mark.parametrize("order_id", [ORDER, None], ids=["order", "account"])
async def test_token_of_another_account_cannot_subscribe(
    server: Server, api: GraphQLClient, mint: Mint, protocol: str, order_id: str | None
) -> None:
    async with subscriber(server, mint(), protocol) as ws:
        op = await ws.subscribe(SUBSCRIBE, watching(order_id, account_id=OTHER_ACCOUNT))
        error = await ws.error(op)

    assert error["extensions"]["code"] == "FORBIDDEN"


async def test_connection_stays_usable_after_a_refused_subscription(
    server: Server, api: GraphQLClient, mint: Mint, protocol: str
) -> None:
    seed = await created(api, "o-1")
    async with subscriber(server, mint("read:shopping:/orders/o-1/events"), protocol) as ws:
        refused = await ws.subscribe(SUBSCRIBE, watching("o-2"))
        await ws.error(refused)
        op = await ws.subscribe(SUBSCRIBE, watching("o-1", after=seed["cursor"]))
        event = await created(api, "o-1")
        results = await ws.events(op, 1)

    assert received(results) == [as_watched(event)]


# Authentication, at connection_init ---------------------------------------------------------


@pytest.mark.parametrize("key", ["Authorization", "authorization", "AUTHORIZATION"])
async def test_token_in_the_init_payload_authenticates_whatever_the_key_case(
    server: Server, api: GraphQLClient, mint: Mint, key: str
) -> None:
    seed = await created(api)
    async with ws_connect(server.url) as ws:
        await ws.init({key: f"Bearer {mint()}"})
        assert (await ws.connection_message())["type"] == "connection_ack"
        op = await ws.subscribe(SUBSCRIBE, watching(after=seed["cursor"]))
        event = await created(api)
        results = await ws.events(op, 1)

    assert received(results) == [as_watched(event)]


async def test_token_in_the_upgrade_request_authenticates(
    server: Server, api: GraphQLClient, mint: Mint, protocol: str
) -> None:
    seed = await created(api)
    async with ws_connect(
        server.url, protocol, headers={"Authorization": f"Bearer {mint()}"}
    ) as ws:
        await ws.init({})
        assert (await ws.connection_message())["type"] == "connection_ack"
        op = await ws.subscribe(SUBSCRIBE, watching(after=seed["cursor"]))
        event = await created(api)
        results = await ws.events(op, 1)

    assert received(results) == [as_watched(event)]


def bad_credentials(settings: Settings, mint: Mint) -> dict[str, tuple[dict[str, str], Any]]:
    """(upgrade headers, connection_init payload) that must not open a connection."""
    return {
        "no token": ({}, {}),
        "malformed token": ({}, {"Authorization": "Bearer not-a-jwt"}),
        "not a bearer token": ({}, {"Authorization": f"Basic {mint()}"}),
        "expired token": ({}, {"Authorization": f"Bearer {expired_token(settings)}"}),
        "token with a broken signature": ({}, {"Authorization": f"Bearer {mint()[:-6]}AAAAAA"}),
        "bad token in the upgrade request": ({"Authorization": "Bearer not-a-jwt"}, {}),
    }


# How each refusal's close reason begins (a close frame carries 123 bytes of it).
REFUSAL_REASONS = {
    "no token": "an access token is required",
    "malformed token": "invalid access token: ",
    "not a bearer token": "the Authorization header must be 'Bearer <access token>'",
    "expired token": "invalid access token: token expired",
    "token with a broken signature": "invalid access token: ",
    "bad token in the upgrade request": "invalid access token: ",
}


@pytest.mark.parametrize(
    "case",
    [
        "no token",
        "malformed token",
        "not a bearer token",
        "expired token",
        "token with a broken signature",
        "bad token in the upgrade request",
    ],
)
async def test_bad_credentials_are_refused_at_init_with_4403(
    server: Server, client: GraphQLClient, settings: Settings, mint: Mint, case: str
) -> None:
    headers, payload = bad_credentials(settings, mint)[case]
    async with ws_connect(server.url, headers=headers) as ws:
        await ws.init(payload)
        code, reason = await ws.closed()

    assert code == 4403
    assert reason.startswith(f"Forbidden: {REFUSAL_REASONS[case]}"), reason


@pytest.mark.parametrize("case", ["no token", "malformed token", "expired token"])
async def test_bad_credentials_are_refused_at_init_on_the_legacy_protocol(
    server: Server, client: GraphQLClient, settings: Settings, mint: Mint, case: str
) -> None:
    headers, payload = bad_credentials(settings, mint)[case]
    async with ws_connect(server.url, LEGACY_WS, headers=headers) as ws:
        await ws.init(payload)
        reply = await ws.connection_message()
        await ws.closed()

    assert reply["type"] == "connection_error"


async def test_operation_before_connection_init_closes_4401(
    server: Server, client: GraphQLClient, protocol: str
) -> None:
    async with ws_connect(server.url, protocol) as ws:
        await ws.subscribe(SUBSCRIBE, watching())
        code, _ = await ws.closed()

    assert code == 4401


async def test_expiring_token_closes_the_connection_4403_which_clients_retry(
    server: Server, client: GraphQLClient, mint: Mint, protocol: str
) -> None:
    async with subscriber(server, mint(ttl=2), protocol) as ws:
        await ws.subscribe(SUBSCRIBE, watching())
        closed = await ws.closed(timeout=6)

    # 4401 is fatal to the graphql-ws client; on 4403 it reconnects with fresh
    # connectionParams.
    assert closed == (4403, "access token expired")


# Limits --------------------------------------------------------------------------------------


async def test_connection_without_init_is_closed_4408(
    limits_server: Server, client: GraphQLClient
) -> None:
    async with ws_connect(limits_server.url) as ws:
        code, _ = await ws.closed(timeout=3)

    assert code == 4408


async def test_legacy_connection_without_init_is_closed(
    limits_server: Server, client: GraphQLClient
) -> None:
    # The legacy protocol has no close code for it; the connection must not stay open
    # unauthenticated for longer than the init timeout.
    # closed() fails the test if the connection is still open after 3 s.
    async with ws_connect(limits_server.url, LEGACY_WS) as ws:
        await ws.closed(timeout=3)


async def test_subscription_beyond_the_limit_is_refused(
    limits_server: Server, client: GraphQLClient, mint: Mint, protocol: str
) -> None:
    async with subscriber(limits_server, mint(), protocol) as ws:
        for order in ("o-1", "o-2"):
            await ws.subscribe(SUBSCRIBE, watching(order))
        third = await ws.subscribe(SUBSCRIBE, watching("o-3"))
        error = await ws.error(third)

    assert "limit" in error["message"]


async def test_refusal_beyond_the_subscription_limit_carries_an_error_code(
    limits_server: Server, client: GraphQLClient, mint: Mint
) -> None:
    async with subscriber(limits_server, mint()) as ws:
        for order in ("o-1", "o-2"):
            await ws.subscribe(SUBSCRIBE, watching(order))
        third = await ws.subscribe(SUBSCRIBE, watching("o-3"))
        error = await ws.error(third)

    assert error.get("extensions", {}).get("code") in ERROR_CODES


async def test_stopped_subscription_frees_its_place(
    limits_server: Server, client: GraphQLClient, mint: Mint, protocol: str
) -> None:
    token = mint()
    async with (
        subscriber(limits_server, token, protocol) as ws,
        http_api(limits_server, token) as http,
    ):
        seed = await created(http, "o-3")
        first = await ws.subscribe(SUBSCRIBE, watching("o-1"))
        await ws.subscribe(SUBSCRIBE, watching("o-2"))
        await ws.stop(first)
        third = await ws.subscribe(SUBSCRIBE, watching("o-3", after=seed["cursor"]))
        event = await created(http, "o-3")
        results = await ws.events(third, 1)

    assert received(results) == [as_watched(event)]


async def test_server_pings_an_idle_connection(
    limits_server: Server, client: GraphQLClient, mint: Mint, protocol: str
) -> None:
    async with subscriber(limits_server, mint(), protocol) as ws:
        kinds = [await ws.wait_for_ping(timeout=2) for _ in range(3)]

    assert kinds == ["ping" if protocol == TRANSPORT_WS else "ka"] * 3


# Browser origins -----------------------------------------------------------------------------


async def test_handshake_from_another_origin_is_refused_with_403(
    server: Server, client: GraphQLClient
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(server.url, origin="http://evil.example"):
            pass

    assert refused.value.response.status_code == 403
    await eventually(lambda: "evil.example" in server.output(), "the refusal's log line")
    assert "add that origin to ALLOWED_ORIGINS" in server.output()
    assert "`allowed_origins`" not in server.output()


async def test_handshake_from_an_allowed_origin_is_accepted(
    server: Server, client: GraphQLClient, mint: Mint
) -> None:
    async with ws_connect(server.url, origin=SHOP) as ws:
        await ws.init({"Authorization": f"Bearer {mint()}"})
        reply = await ws.connection_message()

    assert reply["type"] == "connection_ack"


# Slow consumers ------------------------------------------------------------------------------

SLOW_EVENTS = 200
# Big events fill the kernel's socket buffers after a few dozen, so the server has to wait
# for the client; its buffer (SUBSCRIPTION_BUFFER=4) then overflows.
BIG_METADATA = {"blob": "x" * 50_000}
SUBSCRIBE_WITH_METADATA = SUBSCRIBE.replace("cursor", "cursor metadata")


async def overflow(
    server: Server, token: str
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Subscribes after a first event, stops reading while SLOW_EVENTS big events are
    written, then reads what the server sent. Returns the first event, the events received
    and the error that ended the subscription."""
    async with (
        ws_connect(server.url, max_queue=1, receive_buffer=16 * 1024) as ws,
        http_api(server, token) as http,
    ):
        await ws.init_with_token(token)
        seed = await created(http)
        op = await ws.subscribe(SUBSCRIBE_WITH_METADATA, watching(after=seed["cursor"]))
        for n in range(SLOW_EVENTS):
            await created(http, serviceStatus=f"step-{n}", metadata=BIG_METADATA)
        results, error = await ws.results_until_error(op, timeout=15)
    return seed, received(results), error


async def test_slow_consumer_is_ended_with_rate_limited_and_its_last_cursor(
    small_buffer_server: Server, client: GraphQLClient, mint: Mint
) -> None:
    seed, events, error = await overflow(small_buffer_server, mint())

    last_cursor = (events[-1] if events else seed)["cursor"]
    assert error["extensions"] == {"code": "RATE_LIMITED", "resumeAfter": last_cursor}


async def test_resuming_after_an_overflow_delivers_the_rest(
    small_buffer_server: Server, client: GraphQLClient, mint: Mint
) -> None:
    token = mint()
    _, events, error = await overflow(small_buffer_server, token)

    async with subscriber(small_buffer_server, token) as ws:
        op = await ws.subscribe(SUBSCRIBE, watching(after=error["extensions"]["resumeAfter"]))
        rest = received(await ws.events(op, SLOW_EVENTS - len(events), timeout=15))

    assert [event["version"] for event in events + rest] == list(range(2, SLOW_EVENTS + 2))


# Graceful shutdown ---------------------------------------------------------------------------


async def test_sigterm_completes_open_subscriptions_then_closes_going_away(
    server_env: dict[str, str],
    client: GraphQLClient,
    mint: Mint,
    protocol: str,
    tmp_path: Path,
    websocket_protocol: str,
) -> None:
    token = mint()
    with serving(server_env, tmp_path, token, websocket_protocol) as stopping:
        async with subscriber(stopping, token, protocol) as ws, http_api(stopping, token) as http:
            seed = await created(http)
            op = await ws.subscribe(SUBSCRIBE, watching(after=seed["cursor"]))
            await created(http)
            await ws.events(op, 1)
            stopping.process.send_signal(signal.SIGTERM)
            last = await ws.message(op)
            code, _ = await ws.closed()

    assert (last["type"], code) == ("complete", 1001)


# The database connection ---------------------------------------------------------------------


async def test_subscriptions_stopped_at_once_on_a_fresh_server_leave_it_working(
    server_env: dict[str, str],
    settings: Settings,
    client: GraphQLClient,
    mint: Mint,
    tmp_path: Path,
    websocket_protocol: str,
) -> None:
    # Tortoise opened its connection on first use, under a lock that a query cancelled
    # meanwhile never released: a subscription stopped at once on a fresh server wedged it
    # for good. The server now opens its connection before serving; its first queries are
    # the subscriptions' here, each stopped as soon as it is sent.
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("the server's own SQLite database is what this test starts fresh")
    database_url = f"sqlite://{tmp_path}/own.sqlite3"
    migrate(database_url)
    token = mint()
    env = {**server_env, "DATABASE_URL": database_url}
    with running_servers(1, env, tmp_path, websocket_protocol) as (fresh,):
        try:
            async with subscriber(fresh, token) as ws, http_api(fresh, token) as http:
                for _ in range(20):
                    await ws.stop(await ws.subscribe(SUBSCRIBE, watching()))
                body = await create(http)
        finally:
            # A wedged server would not stop on SIGTERM; its shutdown is not tested here.
            fresh.process.kill()

    assert body["data"]["createOrderEvent"]["version"] == 1
