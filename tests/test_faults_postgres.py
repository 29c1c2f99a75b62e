"""The database going away under a running server, and coming back.

PostgreSQL is stopped (``pg_ctl stop``: clients are disconnected, as in a shutdown or a
crash) or frozen (SIGSTOP: connections stay open and nothing answers, as with a hung host).
While it is gone, requests fail at once or within the configured timeouts, with an error
that says so; /readyz says not ready while /healthz stays ok. When it is back, writers and
subscribers carry on without a restart of the server.

Each module gets a cluster of its own (``own_postgres``), never the shared server; these tests
run in the PostgreSQL pass of ``scripts/test``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app.auth import LocalIssuer
from app.settings import Settings
from tests.conftest import ALL_SCOPES, TABLES
from tests.helpers import ACCOUNT, CREATE, ORDER, WAIT, create_variables, event_input, eventually
from tests.live import SUBSCRIBE, received, subscriber, watching
from tests.pgcluster import Cluster
from tests.servers import READ_ALL, Server, migrate, start_server, stop_server, stored_events

# Small, so that the tests wait little; the bounds asserted below are multiples of them.
CONNECT_TIMEOUT = 1.0
COMMAND_TIMEOUT = 1.0
POOL_SIZE = 2
# No request may take longer than this while the database is down or frozen: a statement's
# timeout, then the cancellation's connection attempt, with room for a slow machine.
NO_HANG = 3 * (CONNECT_TIMEOUT + COMMAND_TIMEOUT)
# Generous bounds for things that must happen "by themselves", so a failure means never.
RECOVERY_BOUND = WAIT
# How often the listener fails to reconnect before the database comes back in the test under
# load: enough for it to be backing off.
LISTENER_FAILURES = 3
LISTENER_FAILED = "reconnecting the listener failed"  # app.broker's warning


@dataclass
class Outage:
    """What the tests need of the module's cluster: its URL, a token, server settings."""

    cluster: Cluster
    token: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def outage(own_postgres: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Outage:
    data_dir = tmp_path_factory.mktemp("outage-data")
    migrate(own_postgres.url)
    issuer = LocalIssuer.load_or_create(Settings(database_url=own_postgres.url, data_dir=data_dir))
    env = {
        "DATABASE_URL": own_postgres.url,
        "DATA_DIR": str(data_dir),
        "GRAPHIQL": "false",
        "RATE_LIMIT_PER_SECOND": "0",
        "DB_CONNECT_TIMEOUT_SECONDS": str(CONNECT_TIMEOUT),
        "DB_COMMAND_TIMEOUT_SECONDS": str(COMMAND_TIMEOUT),
        "DB_POOL_MAX_SIZE": str(POOL_SIZE),
        "READINESS_TIMEOUT_SECONDS": "1",
    }
    token = issuer.mint(account_id=ACCOUNT, scope=ALL_SCOPES, subject="kitchen-1")
    return Outage(cluster=own_postgres, token=token, env=env)


@pytest.fixture
async def server(outage: Outage, tmp_path: Path) -> AsyncIterator[Server]:
    """A server on the module's cluster, whose tables are empty; the cluster is up again
    afterwards, whatever the test did to it."""
    connection = await asyncpg.connect(outage.cluster.asyncpg_dsn, timeout=10)
    try:
        await connection.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")
    finally:
        await connection.close()
    running = start_server(outage.env, tmp_path / "server.log")
    try:
        yield running
    finally:
        outage.cluster.resume()
        if not outage.cluster.running():
            outage.cluster.start()
        stop_server(running)


@pytest.fixture
async def api(server: Server, outage: Outage) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"authorization": f"Bearer {outage.token}"}
    # The client's own timeout is far above NO_HANG: a request that hangs fails the test by
    # the assertion on its duration, not by the client giving up first.
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as http:
        yield http


async def post(api: httpx.AsyncClient, query: str, variables: dict[str, Any]) -> httpx.Response:
    return await api.post("/graphql", json={"query": query, "variables": variables})


async def write(api: httpx.AsyncClient, order_id: str = ORDER, **fields: Any) -> dict[str, Any]:
    response = await post(api, CREATE, create_variables(order_id, event=event_input(**fields)))
    body: dict[str, Any] = response.json()
    return body


def assert_database_unavailable(response: httpx.Response, cluster: Cluster) -> None:
    """The clear error of an outage: retryable, with the request id, and nothing about the
    database's address or statements, nor the driver's words."""
    body = response.json()
    assert body["data"] is None, body
    [error] = body["errors"]
    request_id = response.headers["x-request-id"]
    assert (
        error["message"]
        == f"The database is unavailable; try again shortly (request id {request_id})"
    )
    assert error["extensions"] == {
        "code": "INTERNAL_SERVER_ERROR",
        "requestId": request_id,
        "retryable": True,
    }
    text = response.text.replace(request_id, "").lower()
    for secret in ("127.0.0.1", str(cluster.port), "postgres", "select", "asyncpg", "refused"):
        assert secret not in text, response.text


async def timed(awaitable: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await awaitable
    return response, time.monotonic() - started


# The database stopped --------------------------------------------------------------------------


async def test_writes_fail_at_once_with_a_retryable_error_while_the_database_is_stopped(
    outage: Outage, api: httpx.AsyncClient
) -> None:
    assert "errors" not in await write(api)
    outage.cluster.stop()

    response, took = await timed(post(api, CREATE, create_variables()))

    assert_database_unavailable(response, outage.cluster)
    assert took < NO_HANG


async def test_reads_fail_at_once_with_a_retryable_error_while_the_database_is_stopped(
    outage: Outage, api: httpx.AsyncClient
) -> None:
    outage.cluster.stop()

    variables = {"accountId": ACCOUNT, "orderId": ORDER}
    response, took = await timed(post(api, READ_ALL, variables))

    assert_database_unavailable(response, outage.cluster)
    assert took < NO_HANG


async def test_readyz_says_the_database_is_unavailable_while_healthz_stays_ok(
    outage: Outage, api: httpx.AsyncClient
) -> None:
    outage.cluster.stop()

    ready, health = await api.get("/readyz"), await api.get("/healthz")

    assert (ready.status_code, ready.json()) == (
        503,
        {"status": "not ready", "database": "unavailable", "reason": "the database did not answer"},
    )
    assert (health.status_code, health.json()) == (200, {"status": "ok"})


async def test_readyz_is_ready_again_once_the_database_is_back(
    outage: Outage, api: httpx.AsyncClient
) -> None:
    outage.cluster.stop()
    assert (await api.get("/readyz")).status_code == 503
    outage.cluster.start()

    async def ready() -> bool:
        return (await api.get("/readyz")).status_code == 200

    await eventually(ready, "/readyz answering 200")


# The database frozen ---------------------------------------------------------------------------


async def test_requests_to_a_frozen_database_fail_within_the_timeouts_instead_of_hanging(
    outage: Outage, api: httpx.AsyncClient
) -> None:
    outage.cluster.pause()
    read = {"accountId": ACCOUNT, "orderId": ORDER}

    # Many more requests than pooled connections: those waiting for a connection are
    # bounded too, not only those holding one.
    results = await asyncio.gather(
        *(timed(post(api, READ_ALL, read)) for _ in range(8 * POOL_SIZE)),
        *(timed(post(api, CREATE, create_variables())) for _ in range(4)),
        timed(api.get("/readyz")),
    )

    *requests, (ready, _) = results
    for response, took in requests:
        assert_database_unavailable(response, outage.cluster)
        assert took < NO_HANG
    assert ready.status_code == 503


async def test_requests_succeed_again_once_a_frozen_database_thaws(
    outage: Outage, api: httpx.AsyncClient
) -> None:
    outage.cluster.pause()
    assert_database_unavailable(await post(api, CREATE, create_variables()), outage.cluster)
    outage.cluster.resume()

    async def writes() -> bool:
        return "errors" not in await write(api)

    await eventually(writes, "a successful write")
    assert [event["version"] for event in await stored_events(api, outage.token, ORDER)] == [1]


# Stopped and restarted under load --------------------------------------------------------------


@dataclass
class WriteLoad:
    """Concurrent writers appending to one order, each as fast as answers come back."""

    api: httpx.AsyncClient
    writers: int
    acknowledged: list[dict[str, Any]] = field(default_factory=list)
    refused: list[httpx.Response] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._write(n)) for n in range(self.writers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _write(self, writer: int) -> None:
        index = 0
        while not self._stop.is_set():
            variables = create_variables(event=event_input(serviceStatus=f"w{writer}-{index}"))
            response = await post(self.api, CREATE, variables)
            index += 1
            body = response.json()
            if "errors" in body:
                self.refused.append(response)
                # Spinning on an outage helps nobody: a client backs off a little.
                await asyncio.sleep(0.02)
            else:
                self.acknowledged.append(body["data"]["createOrderEvent"])

    async def until(self, what: str, condition: Callable[[], bool]) -> None:
        async def holds() -> bool:
            for task in self._tasks:
                if task.done():
                    task.result()  # a writer that failed fails the test here, with its error
                    raise AssertionError("a writer stopped")
            return condition()

        await eventually(holds, what)


@pytest.mark.parametrize("how", ["fast", "immediate"])
async def test_writers_and_subscribers_recover_by_themselves_after_a_restart_under_load(
    outage: Outage, server: Server, api: httpx.AsyncClient, how: str
) -> None:
    """``fast`` is a clean shutdown, ``immediate`` a crash (recovery from the WAL on start)."""
    async with subscriber(server, outage.token) as ws:
        watch = await ws.subscribe(SUBSCRIBE, watching())
        load = WriteLoad(api, writers=6)
        load.start()
        await load.until("30 writes", lambda: len(load.acknowledged) >= 30)

        await asyncio.to_thread(outage.cluster.stop, how)
        await load.until("20 refused writes", lambda: len(load.refused) >= 20)
        not_ready = await api.get("/readyz")
        await eventually(
            lambda: server.output().count(LISTENER_FAILED) >= LISTENER_FAILURES,
            f"{LISTENER_FAILURES} failed reconnections of the listener",
        )
        await asyncio.to_thread(outage.cluster.start)
        back = len(load.acknowledged)
        await load.until("30 writes after the restart", lambda: len(load.acknowledged) >= back + 30)
        await load.stop()

        stored = await stored_events(api, outage.token, ORDER)
        delivered = received(await ws.events(watch, len(stored), timeout=RECOVERY_BOUND))
        # Exactly once: the next event is the next one delivered, nothing repeated before it.
        after = await write(api, serviceStatus="after")
        [following] = received(await ws.events(watch, 1, timeout=RECOVERY_BOUND))

    assert not_ready.status_code == 503
    for response in load.refused:
        assert_database_unavailable(response, outage.cluster)
    assert [event["version"] for event in stored] == list(range(1, len(stored) + 1))
    stored_by_id = {event["id"]: event for event in stored}
    for event in load.acknowledged:
        assert stored_by_id.get(event["id"]) == event
    assert [event["id"] for event in delivered] == [event["id"] for event in stored]
    assert following["id"] == after["data"]["createOrderEvent"]["id"]
    assert (await api.get("/readyz")).status_code == 200
