"""Fixtures: the app on a database, a clean database per test, tokens and a GraphQL client.

TEST_DATABASE picks the database of a run: ``sqlite`` (the default) or ``postgres``;
``scripts/test`` runs the suite once with each. (One process per database: Tortoise binds its
models to the first database it meets.) PostgreSQL tests skip with the reason when the server
is unreachable, unless REQUIRE_POSTGRES=1 (CI) makes that a failure. Each run works in a
database of its own, created and dropped here.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from tortoise.connection import get_connection

from app.auth import LocalIssuer
from app.db import apply_migrations
from app.hooks.budget import Budget
from app.hooks.dispatcher import Dispatcher
from app.main import create_app
from app.settings import Settings
from tests.pgcluster import (
    Cluster,
    ClusterUnavailable,
    check_own_cluster_possible,
    own_cluster,
)
from tests.servers import WEBSOCKET_PROTOCOLS

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
ACCOUNT = "T12345678"
ALL_SCOPES = "write:shopping read:shopping"
# Marks "the client's own token" apart from None ("no Authorization header").
DEFAULT = "<the client's token>"


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _asyncpg_url(url: str) -> str:
    return urlunsplit(urlsplit(url)._replace(scheme="postgresql"))


async def _postgres_unreachable_reason() -> str | None:
    try:
        connection = await asyncpg.connect(_asyncpg_url(POSTGRES_URL), timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        return (
            f"PostgreSQL at {POSTGRES_URL} is not reachable ({error.__class__.__name__}: {error})"
        )
    await connection.close()
    return None


TEST_DATABASE = os.environ.get("TEST_DATABASE", "sqlite")
if TEST_DATABASE not in {"sqlite", "postgres"}:
    raise pytest.UsageError(f"TEST_DATABASE must be sqlite or postgres, not {TEST_DATABASE!r}")

_DESELECTED_DATABASE_FREE = pytest.StashKey[int]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the PostgreSQL run, deselect the tests that use no database (no ``database_url``,
    directly or through other fixtures): the SQLite run has already run them. So too the
    runs of WebSocket tests under stock uvicorn (``websocket_protocol``), but for the tests
    that run on PostgreSQL only."""
    if TEST_DATABASE != "postgres":
        return
    kept: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        postgres_only = "postgres_only" in fixtures or "own_postgres" in fixtures
        uses_database = "database_url" in fixtures or postgres_only
        callspec = getattr(item, "callspec", None)
        served = callspec is None or callspec.params.get("websocket_protocol") != "stock"
        (kept if uses_database and (served or postgres_only) else deselected).append(item)
    if deselected:
        # Reported by pytest as "N deselected", like -k.
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
    config.stash[_DESELECTED_DATABASE_FREE] = len(deselected)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # `scripts/test tests/test_auth.py` deselects everything on PostgreSQL: that is not the
    # "no tests collected" failure pytest would otherwise report.
    deselected = session.config.stash.get(_DESELECTED_DATABASE_FREE, 0)
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and deselected:
        session.exitstatus = pytest.ExitCode.OK


@pytest.fixture(scope="session", params=[TEST_DATABASE])
async def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path_factory.mktemp('sqlite')}/events.sqlite3"
        return
    reason = await _postgres_unreachable_reason()
    if reason:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason}; REQUIRE_POSTGRES=1 makes this a failure")
        pytest.skip(reason)
    name = f"order_events_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_asyncpg_url(POSTGRES_URL))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield _with_database(POSTGRES_URL, name)
    admin = await asyncpg.connect(_asyncpg_url(POSTGRES_URL))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def settings(database_url: str, data_dir: Path) -> Settings:
    # No rate limit: the whole suite is one caller, far faster than any device. Its tests
    # (tests/test_ratelimit.py, tests/test_oauth.py) set one with other_settings.
    return Settings(
        database_url=database_url,
        data_dir=data_dir,
        graphiql=False,
        rate_limit_per_second=0,
        token_attempts_per_second=0,
        # Webhook tests run dispatchers of their own, with settings of their own.
        webhook_delivery=False,
    )


@pytest.fixture(scope="session")
def issuer(settings: Settings) -> LocalIssuer:
    return LocalIssuer.load_or_create(settings)


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[Starlette]:
    await apply_migrations(settings.database_url)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


TABLES = (
    "order_events",
    "order_streams",
    "account_streams",
    "idempotency_keys",
    "hooks",
    "hook_deliveries",
    "hook_attempts",
)


async def _empty_tables() -> None:
    connection = get_connection("default")
    if connection.capabilities.dialect == "postgres":
        await connection.execute_script(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")
    else:
        names = ", ".join(f"'{table}'" for table in TABLES)
        deletes = "".join(f"DELETE FROM {table};" for table in TABLES)
        await connection.execute_script(
            f"{deletes} DELETE FROM sqlite_sequence WHERE name IN ({names});"
        )


@dataclass
class GraphQLClient:
    """Posts GraphQL operations to the app the way a client would."""

    http: httpx.AsyncClient
    default_token: str | None

    async def post(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        token: str | None = DEFAULT,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        chosen = self.default_token if token is DEFAULT else token
        if chosen is not None:
            all_headers["authorization"] = f"Bearer {chosen}"
        body: dict[str, Any] = {"query": query}
        if variables is not None:
            body["variables"] = variables
        return await self.http.post("/graphql", json=body, headers=all_headers)

    async def execute(
        self, query: str, variables: dict[str, Any] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        response = await self.post(query, variables, **kwargs)
        body: dict[str, Any] = response.json()
        return body


Mint = Callable[..., str]


@pytest.fixture
def mint(issuer: LocalIssuer) -> Mint:
    def make(
        scope: str = ALL_SCOPES,
        *,
        account: str = ACCOUNT,
        sub: str = "kitchen-1",
        ttl: int = 3600,
    ) -> str:
        return issuer.mint(account_id=account, scope=scope, subject=sub, ttl_seconds=ttl)

    return make


@pytest.fixture
async def client(app: Starlette, mint: Mint) -> AsyncIterator[GraphQLClient]:
    await _empty_tables()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield GraphQLClient(http=http, default_token=mint())


@pytest.fixture
def other_settings(settings: Settings) -> Callable[..., Settings]:
    def make(**changes: Any) -> Settings:
        return replace(settings, **changes)

    return make


ClientWith = Callable[..., GraphQLClient]


@pytest.fixture
async def client_with(
    client: GraphQLClient, other_settings: Callable[..., Settings]
) -> AsyncIterator[ClientWith]:
    """``client_with(**settings)``: a client, with ``client``'s token, of an app made with
    other settings on the same database (tables emptied by ``client``). The app's lifespan
    does not run: no broker, no background tasks; fine for reads and for refusals."""
    opened: list[httpx.AsyncClient] = []

    def make(**changes: Any) -> GraphQLClient:
        application = create_app(other_settings(**changes))
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application), base_url="http://test"
        )
        opened.append(http)
        return GraphQLClient(http=http, default_token=client.default_token)

    yield make
    for http in opened:
        await http.aclose()


@pytest.fixture(scope="session")
def server_env(settings: Settings, app: Starlette) -> dict[str, str]:
    """Environment for server processes sharing this test's database and signing key
    (``app`` first, so the migrations have run). Session-wide, so that module-scoped servers
    can use it too: copy it to change it."""
    return {
        "DATABASE_URL": settings.database_url,
        "DATA_DIR": str(settings.data_dir),
        "PUBLIC_URL": settings.public_url,
        "GRAPHIQL": "false",
        "RATE_LIMIT_PER_SECOND": "0",
        "TOKEN_ATTEMPTS_PER_SECOND": "0",
    }


@pytest.fixture(scope="module", params=list(WEBSOCKET_PROTOCOLS), ids=lambda name: f"ws-{name}")
def websocket_protocol(request: pytest.FixtureRequest) -> str:
    """The uvicorn WebSocket protocol a WebSocket test's servers run (``start_server``'s
    ``websocket``): each such test runs under the lighter one scripts/serve passes and under
    stock uvicorn's, which the application must run under alike."""
    name: str = request.param
    return name


@pytest.fixture
def postgres_only(database_url: str) -> None:
    if not database_url.startswith("postgres"):
        pytest.skip("several server processes need PostgreSQL; this run is on SQLite")


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[Cluster]:
    """A PostgreSQL cluster of the module's own, to stop and start (``tests/pgcluster.py``);
    the PostgreSQL pass of ``scripts/test`` runs its tests."""
    if TEST_DATABASE != "postgres":
        pytest.skip("a test with a PostgreSQL cluster of its own runs in the PostgreSQL pass")
    try:
        check_own_cluster_possible()
    except ClusterUnavailable as error:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{error}; REQUIRE_POSTGRES=1 makes this a failure")
        pytest.skip(str(error))
    with own_cluster() as cluster:
        yield cluster


Start = Callable[..., Any]


@pytest.fixture
async def dispatching(
    client: GraphQLClient, app: Starlette, other_settings: Callable[..., Settings]
) -> AsyncIterator[Start]:
    """``await dispatching(**settings)``: a dispatcher of its own running in this process,
    rung by the app's writer; tiny retry delays and loopback receivers allowed by default."""
    started: list[Dispatcher] = []

    async def start(budget: Budget | None = None, **changes: Any) -> Dispatcher:
        settings = other_settings(
            **{
                "webhook_delivery": True,
                "webhook_allow_http": True,
                "webhook_allow_private_networks": True,
                "webhook_retry_base_seconds": 0.02,
                "webhook_poll_interval_seconds": 0.02,
                "webhook_timeout_seconds": 5.0,
                **changes,
            }
        )
        dispatcher = Dispatcher(settings, app.state.doorbell, budget)
        await dispatcher.start()
        started.append(dispatcher)
        return dispatcher

    yield start
    for dispatcher in started:
        await dispatcher.stop()
