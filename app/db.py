"""Database configuration and migrations, for SQLite and PostgreSQL alike; what an outage
looks like from here.

On PostgreSQL every wait on the database is bounded (a new connection, one statement, a free
connection from the pool), so that a request fails with "database unavailable" rather than
hanging while the server is down or stalled; when it comes back, nothing needs restarting.
"""

from __future__ import annotations

import pkgutil
import sqlite3
import time
from collections.abc import Generator
from importlib import import_module
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from tortoise import Tortoise
from tortoise.backends.asyncpg.client import AsyncpgDBClient
from tortoise.backends.base.config_generator import expand_db_url
from tortoise.connection import get_connections
from tortoise.exceptions import DBConnectionError
from tortoise.migrations.api import migrate

from app import metrics
from app.settings import Settings

MODELS = ["app.models"]
MIGRATIONS = "app.migrations"
# The app label of the models, as Tortoise records applied migrations under it.
APP_LABEL = "models"
MIGRATIONS_TABLE = "tortoise_migrations"
ASYNCPG_ENGINE = "tortoise.backends.asyncpg"


def is_postgres(database_url: str) -> bool:
    return urlsplit(database_url).scheme in {"postgres", "postgresql", "asyncpg", "psycopg"}


def tortoise_config(database_url: str, settings: Settings | None = None) -> dict[str, Any]:
    """The Tortoise config for ``database_url``; creates a SQLite file's folder. Timeouts and
    pool sizes come from ``settings`` (their defaults without); a value given in the URL's
    query (``?timeout=3``) wins. On PostgreSQL, ``DB_CONNECT_TIMEOUT_SECONDS`` bounds a new
    connection (asyncpg's ``timeout``) and ``DB_COMMAND_TIMEOUT_SECONDS`` one statement
    (``command_timeout``) and the wait for a pooled connection (``PostgresClient``)."""
    settings = settings or Settings()
    connection = expand_db_url(database_url)
    credentials = connection["credentials"]
    if connection["engine"] == ASYNCPG_ENGINE:
        connection["engine"] = __name__  # PostgresClient, as ``client_class`` below
        credentials.setdefault("timeout", settings.db_connect_timeout_seconds)
        # Tortoise leaves this one a string when it comes from the URL; asyncpg wants a number.
        credentials["command_timeout"] = float(
            credentials.get("command_timeout", settings.db_command_timeout_seconds)
        )
        # Tortoise opens the pool on first use, one request at a time under a lock: with
        # connections to open at once and the server down, requests would queue there a
        # connect timeout each. So by default (DB_POOL_MIN_SIZE 0) the pool opens empty.
        credentials.setdefault("minsize", settings.db_pool_min_size)
        credentials.setdefault("maxsize", settings.db_pool_max_size)
    if connection["engine"] == "tortoise.backends.sqlite":
        path = credentials["file_path"]
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # FULL: an acknowledged event survives power loss, not just a crash of this process.
        credentials.setdefault("synchronous", "FULL")
        credentials.setdefault("busy_timeout", 5000)
    return {
        "connections": {"default": connection},
        "apps": {
            APP_LABEL: {
                "models": MODELS,
                "default_connection": "default",
                "migrations": MIGRATIONS,
            }
        },
        "use_tz": True,
        "timezone": "UTC",
    }


async def apply_migrations(database_url: str) -> None:
    """Bring the database's schema up to date with ``app/migrations``."""
    await migrate(config=tortoise_config(database_url))
    await Tortoise.close_connections()


def known_migrations() -> frozenset[str]:
    """The names of the migrations in ``app/migrations``, as Tortoise records them."""
    package = import_module(MIGRATIONS)
    # The same selection as Tortoise's MigrationLoader.
    return frozenset(
        name
        for _, name, is_package in pkgutil.iter_modules(package.__path__)
        if not is_package and name[0] not in "_~"
    )


# What an outage looks like ------------------------------------------------------------------

# SQLite's "another connection holds the lock past busy_timeout".
_SQLITE_BUSY = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}


def is_unavailable(error: BaseException) -> bool:
    """True when ``error`` (or one it was raised from) says the database could not be
    reached or did not answer in time, rather than that a statement or the data was wrong:
    the request may succeed if tried again later."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_outage(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_outage(error: BaseException) -> bool:
    if isinstance(error, OSError | DBConnectionError):
        # OSError: refused, reset, unreachable, unresolvable; TimeoutError is one too.
        return True
    if isinstance(
        error,
        asyncpg.InterfaceError  # the connection was lost or closed under the request
        # The server's goodbye arrived on an idle connection just before it was handed out.
        | asyncpg.InternalClientError
        | asyncpg.PostgresConnectionError  # SQLSTATE class 08
        | asyncpg.OperatorInterventionError  # class 57: shut down, starting up, cancelled
        | asyncpg.TooManyConnectionsError,
    ):
        return True
    if isinstance(error, sqlite3.OperationalError):
        return (getattr(error, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_BUSY
    return False


# Tortoise's asyncpg client, with a bounded wait for a pooled connection ----------------------


class _BoundedPool:
    """An asyncpg pool, whose ``acquire`` waits at most ``timeout`` seconds for a free
    connection (then raises TimeoutError); the rest is the pool's. Counts the connections
    handed out, and the waits for one when all are (``app.metrics``)."""

    def __init__(self, pool: asyncpg.Pool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._in_use = 0

    def acquire(self) -> _Acquiring:
        """A connection, as asyncpg's ``acquire`` gives it: awaited (Tortoise, which then
        calls ``release``), or with ``async with``."""
        return _Acquiring(self)

    async def take(self) -> Any:
        waiting = self._in_use >= self._pool.get_max_size()
        started = time.perf_counter() if waiting else 0.0
        try:
            connection = await self._pool.acquire(timeout=self._timeout)
        finally:
            if waiting:  # a wait that timed out counts too
                metrics.DB_POOL_WAIT.observe(time.perf_counter() - started)
        self._in_use += 1
        metrics.DB_POOL_IN_USE.inc()
        return connection

    async def release(self, connection: Any) -> None:
        try:
            await self._pool.release(connection)
        finally:
            self._in_use -= 1
            metrics.DB_POOL_IN_USE.dec()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


class _Acquiring:
    """``_BoundedPool.acquire()``: awaitable, and an async context manager releasing the
    connection at its end."""

    __slots__ = ("_connection", "_pool")

    def __init__(self, pool: _BoundedPool) -> None:
        self._pool = pool
        self._connection: Any = None

    def __await__(self) -> Generator[Any, None, Any]:
        return self._pool.take().__await__()

    async def __aenter__(self) -> Any:
        self._connection = await self._pool.take()
        return self._connection

    async def __aexit__(self, *exc_info: object) -> None:
        await self._pool.release(self._connection)


class _Connection(asyncpg.Connection):  # type: ignore[misc]  # asyncpg ships no types
    """asyncpg's connection, on which a transaction that fails to begin (the server went
    away, or did not answer in time, or the task was cancelled) ends the connection and
    stops being its task's connection.

    Tortoise's ``in_transaction()`` takes a connection from the pool and makes the
    transaction the task's connection before its BEGIN, outside the ``async with`` that would
    give both back: a failed BEGIN would keep the connection checked out for good, and make
    the task's next ``in_transaction()`` a savepoint on the failed one. Ended, the
    connection goes back to the pool, which opens a new one in its place when next asked."""

    __slots__ = ("client",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client: PostgresClient | None = None  # set by the client's pool

    def transaction(
        self, *, isolation: Any = None, readonly: bool = False, deferrable: bool = False
    ) -> Any:
        transaction = super().transaction(
            isolation=isolation, readonly=readonly, deferrable=deferrable
        )
        if self.is_in_transaction():
            return transaction  # a savepoint: its failure is the enclosing transaction's
        return _Beginning(transaction, self)

    def begin_failed(self, transaction: _Beginning) -> None:
        if not self.is_closed():
            self.terminate()
        client = self.client
        if client is None:
            return
        connections = get_connections()
        current = connections.get(client.connection_name)
        # Tortoise's transaction client holds the asyncpg transaction it is starting; its
        # task gets the pool's client back, as the transaction's end would have given it.
        if getattr(current, "transaction", None) is transaction:
            connections.set(client.connection_name, client)


class _Beginning:
    """An asyncpg transaction whose failed ``start`` (what Tortoise calls) is reported to
    its connection."""

    __slots__ = ("_connection", "_transaction")

    def __init__(self, transaction: Any, connection: _Connection) -> None:
        self._transaction = transaction
        self._connection = connection

    async def start(self) -> None:
        try:
            await self._transaction.start()
        except BaseException:
            self._connection.begin_failed(self)
            raise

    async def __aenter__(self) -> Any:
        return await self._transaction.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self._transaction.__aexit__(*exc_info)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transaction, name)


async def _keep_session(_connection: asyncpg.Connection) -> None:
    """The pool's reset between two users of a connection, beyond what asyncpg always does
    (roll back an open transaction, drop listeners): nothing. asyncpg's default sends
    ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` after every use, one
    more round trip per statement outside a transaction; this service leaves no session
    state on pooled connections to reset (no SET, advisory locks, cursors or LISTEN: the
    broker listens on a connection of its own)."""


class PostgresClient(AsyncpgDBClient):
    """Tortoise's asyncpg client, but a request waits for a free connection from the pool
    no longer than one statement may take (``command_timeout``; Tortoise's own waits forever,
    so a stalled server would make requests queue without end), a failed BEGIN leaks
    nothing (``_Connection``), and a connection goes back to the pool without a reset query
    (``_keep_session``). After an outage nothing needs restarting: asyncpg's pool replaces a
    connection that died the next time it is handed out."""

    connection_class = _Connection

    async def create_pool(self, **kwargs: Any) -> Any:
        kwargs.setdefault("reset", _keep_session)
        kwargs.setdefault("init", self._adopt)
        pool = await super().create_pool(**kwargs)
        return _BoundedPool(pool, kwargs.get("command_timeout"))

    async def _adopt(self, connection: asyncpg.Connection) -> None:
        if isinstance(connection, _Connection):
            connection.client = self


# Tortoise takes a backend's client class from this name in the module named as its engine.
client_class = PostgresClient
