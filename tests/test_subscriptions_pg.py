"""Live delivery across server processes on PostgreSQL: NOTIFY from the writer's process to
the subscriber's, and the listening connection's reconnection. (On SQLite these skip: it is
one process's database.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from app.broker import LISTENER_NAME
from app.settings import Settings
from tests.conftest import POSTGRES_URL, GraphQLClient, Mint
from tests.helpers import created
from tests.live import SUBSCRIBE, http_api, ids, received, subscriber, versions, watching
from tests.servers import running_servers

EVENTS = 60
KILL_AFTER = 15


@asynccontextmanager
async def database_admin(settings: Settings) -> AsyncIterator[DatabaseAdmin]:
    """Acts on the test database from a connection to another one (one cannot refuse
    connections to the database one is connected to)."""
    url = urlunsplit(urlsplit(POSTGRES_URL)._replace(scheme="postgresql"))
    connection = await asyncpg.connect(url)
    try:
        yield DatabaseAdmin(connection, urlsplit(settings.database_url).path.lstrip("/"))
    finally:
        await connection.close()


class DatabaseAdmin:
    def __init__(self, connection: asyncpg.Connection, database: str) -> None:
        self.connection = connection
        self.database = database

    async def terminate_listeners(self) -> int:
        """Kills the order-event listener connections to the database; returns how many."""
        killed: int = await self.connection.fetchval(
            "SELECT count(*) FROM ("
            " SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = $1 AND datname = $2"
            ") AS terminated",
            LISTENER_NAME,
            self.database,
        )
        return killed

    @asynccontextmanager
    async def connections_refused(self) -> AsyncIterator[None]:
        """New connections to the database are refused (open ones carry on) until the end."""
        await self.connection.execute(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS false')
        try:
            yield
        finally:
            await self.connection.execute(
                f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS true'
            )


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param(None, id="small"),
        # NOTIFY carries less than 8000 bytes: a larger event goes as a reference, read back
        # by the listening process.
        pytest.param({"blob": "x" * 20_000}, id="too-large-for-a-notification"),
    ],
)
async def test_event_written_through_one_process_reaches_a_subscriber_of_another(
    postgres_only: None,
    server_env: dict[str, str],
    client: GraphQLClient,
    mint: Mint,
    tmp_path: Path,
    websocket_protocol: str,
    metadata: dict[str, str] | None,
) -> None:
    token = mint()
    with running_servers(2, server_env, tmp_path, websocket_protocol) as (watched, written):
        async with subscriber(watched, token) as ws, http_api(written, token) as api:
            seed = await created(api)
            op = await ws.subscribe(SUBSCRIBE, watching(after=seed["cursor"]))
            first = await created(api)
            results = await ws.events(op, 1)
            # The subscription is live now: the next event can only come by notification.
            second = await created(api, metadata=metadata)
            results += await ws.events(op, 1)

    assert ids(received(results)) == ids([first, second])


async def test_account_stream_follows_writes_through_both_processes_in_order(
    postgres_only: None,
    server_env: dict[str, str],
    client: GraphQLClient,
    mint: Mint,
    tmp_path: Path,
    websocket_protocol: str,
) -> None:
    token = mint()
    with running_servers(2, server_env, tmp_path, websocket_protocol) as servers:
        async with (
            subscriber(servers[0], token) as ws,
            http_api(servers[0], token) as api_0,
            http_api(servers[1], token) as api_1,
        ):
            seed = await created(api_1, "o-1")
            op = await ws.subscribe(SUBSCRIBE, watching(None, after=seed["cursor"]))
            written = [await created(api_0, "o-1")]
            results = await ws.events(op, 1)
            for n in range(6):
                written.append(await created((api_0, api_1)[n % 2], f"o-{n % 3}"))
            results += await ws.events(op, 6)

    assert ids(received(results)) == ids(written)


async def test_nothing_is_missed_when_the_listener_connection_is_killed_mid_stream(
    postgres_only: None,
    server_env: dict[str, str],
    settings: Settings,
    client: GraphQLClient,
    mint: Mint,
    tmp_path: Path,
    websocket_protocol: str,
) -> None:
    token = mint()
    with running_servers(1, server_env, tmp_path, websocket_protocol) as (server,):
        async with subscriber(server, token) as ws, http_api(server, token) as api:
            seed = await created(api)
            op = await ws.subscribe(SUBSCRIBE, watching(after=seed["cursor"]))

            async def write() -> None:
                for n in range(EVENTS):
                    await created(api, serviceStatus=f"step-{n}")
                    await asyncio.sleep(0.01)

            writer = asyncio.create_task(write())
            results = await ws.events(op, KILL_AFTER)
            async with database_admin(settings) as admin:
                killed = await admin.terminate_listeners()
            # The broker reconnects within 0.2 to 5 s and catches up from the table.
            results += await ws.events(op, EVENTS - KILL_AFTER, timeout=15)
            await writer

    assert (killed > 0, versions(results)) == (True, list(range(2, EVENTS + 2)))


async def test_events_written_while_the_listener_is_away_arrive_after_it_reconnects(
    postgres_only: None,
    server_env: dict[str, str],
    settings: Settings,
    client: GraphQLClient,
    mint: Mint,
    tmp_path: Path,
    websocket_protocol: str,
) -> None:
    # The listener is kept from reconnecting while events are written (the server writes
    # them on pooled connections it already has open), and no event follows them: only the
    # catch-up after the listener is back can bring them.
    token = mint()
    with running_servers(1, server_env, tmp_path, websocket_protocol) as (server,):
        async with subscriber(server, token) as ws, http_api(server, token) as api:
            seed = await created(api)
            op = await ws.subscribe(SUBSCRIBE, watching(after=seed["cursor"]))
            await created(api)
            results = await ws.events(op, 1)
            async with database_admin(settings) as admin, admin.connections_refused():
                killed = await admin.terminate_listeners()
                for _ in range(5):
                    await created(api)
            results += await ws.events(op, 5, timeout=15)

    assert (killed > 0, versions(results)) == (True, [2, 3, 4, 5, 6, 7])
