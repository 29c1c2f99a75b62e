"""What every benchmark needs: fresh migrated databases, servers on free ports, a token."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers import SERVED_PROTOCOL, Server, start_server, stop_server

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
ACCOUNT = "T12345678"


@contextmanager
def database(kind: str, workdir: Path) -> Iterator[str]:
    """A fresh, migrated database of ``kind``; dropped afterwards."""
    if kind == "sqlite":
        url = f"sqlite://{workdir}/bench-{time.monotonic_ns()}.sqlite3"
        migrate(url)
        yield url
        return
    name = f"order_events_bench_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    psql(f'CREATE DATABASE "{name}"')
    url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        migrate(url)
        yield url
    finally:
        psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate(url: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "app.migrate"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        check=True,
    )


def psql(sql: str, url: str = POSTGRES_URL) -> None:
    dsn = url.replace("postgres://", "postgresql://", 1)
    subprocess.run(
        ["psql", dsn, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql], check=True, capture_output=True
    )


# Events n = 0 .. count-1: ten per order, orders spread over ten accounts (T12345670 ..
# T12345679), versions 1..10 in each order and positions gap-free in each account, as the
# service would have written them; then the head rows that match.
_SEED_COLUMNS = (
    "event_id, account_id, order_id, version, position, event_type, state, service,"
    " service_status, description, metadata, created_at, created_by"
)
_SEED_VALUES = (
    "'seed-' || n, 'T1234567' || ((n / 10) % 10), 'seed-' || (n / 10), n % 10 + 1,"
    " (n / 100) * 10 + n % 10 + 1, 'service-event', 'success', 'seed', 'seeded', NULL,"
    " '{{\"n\":' || n || '}}', {now}, 'seed'"
)
_SEED_HEADS = (
    "INSERT INTO account_streams (account_id, position)"
    " SELECT account_id, MAX(position) FROM order_events GROUP BY account_id;"
    "INSERT INTO order_streams (account_id, order_id, version)"
    " SELECT account_id, order_id, MAX(version) FROM order_events GROUP BY account_id, order_id;"
)


def seed(url: str, count: int) -> None:
    """Fills a fresh database with ``count`` events, as fast as each database allows."""
    if url.startswith("sqlite://"):
        connection = sqlite3.connect(url.removeprefix("sqlite://"))
        values = _SEED_VALUES.format(now="strftime('%Y-%m-%d %H:%M:%f+00:00', 'now')")
        connection.executescript(
            f"WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq"
            f" WHERE n < {count - 1})"
            f" INSERT INTO order_events ({_SEED_COLUMNS}) SELECT {values} FROM seq;"
            f"{_SEED_HEADS} ANALYZE;"
        )
        connection.commit()
        connection.close()
        return
    values = _SEED_VALUES.format(now="now()")
    psql(
        f"INSERT INTO order_events ({_SEED_COLUMNS})"
        f" SELECT {values} FROM generate_series(0, {count - 1}) AS n;"
        f"{_SEED_HEADS}",
        url,
    )
    # As a table that grew over time would be: vacuumed (autovacuum would otherwise start on
    # the freshly loaded rows in the middle of a measurement, and the first reads would set
    # their hint bits), analysed, and with the load's pages written out by a checkpoint
    # rather than during the measurement. VACUUM cannot run in the INSERT's transaction.
    psql("VACUUM (ANALYZE) order_events, account_streams, order_streams", url)
    psql("CHECKPOINT", url)


def service_env(url: str, workdir: Path, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": url,
        "DATA_DIR": str(workdir / "data"),
        "GRAPHIQL": "false",
        "WS_PING_INTERVAL_SECONDS": "0",
        # One caller drives thousands of requests a second here: no per-caller limit.
        "RATE_LIMIT_PER_SECOND": "0",
        # The large fan-outs hold more WebSocket connections than a process takes by default.
        "MAX_CONNECTIONS": "0",
        **extra,
    }


@contextmanager
def service(
    url: str, workdir: Path, *uvicorn_args: str, websocket: str = SERVED_PROTOCOL, **env: str
) -> Iterator[Server]:
    """The service as scripts/serve runs it (``start_server`` passes uvicorn the same WebSocket
    arguments), so that the fan-out's memory and CPU figures are those of the deployed
    server; ``websocket="stock"`` serves WebSockets with stock uvicorn's protocol instead."""
    running = start_server(
        service_env(url, workdir, **env),
        workdir / f"service-{time.monotonic_ns()}.log",
        *uvicorn_args,
        websocket=websocket,
    )
    try:
        yield running
    finally:
        stop_server(running)


@contextmanager
def baseline(url: str, workdir: Path) -> Iterator[Server]:
    running = start_server(
        {"DATABASE_URL": url},
        workdir / f"baseline-{time.monotonic_ns()}.log",
        factory="bench.baseline:create_app",
    )
    try:
        yield running
    finally:
        stop_server(running)
