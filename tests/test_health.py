"""The probes: /healthz (the process runs) and /readyz (the database answers and its
migrations are applied). The database being down is in ``test_faults_postgres.py``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.db import known_migrations
from tests.conftest import POSTGRES_URL, GraphQLClient, _asyncpg_url, _with_database
from tests.servers import migrate, start_server, stop_server


async def test_healthz_says_ok(client: GraphQLClient) -> None:
    response = await client.http.get("/healthz")

    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    assert response.headers["cache-control"] == "no-store"


async def test_readyz_says_ready_when_the_database_answers_and_is_migrated(
    client: GraphQLClient,
) -> None:
    response = await client.http.get("/readyz")

    assert (response.status_code, response.json()) == (
        200,
        {"status": "ready", "database": "ok", "migrations": "applied"},
    )
    assert response.headers["cache-control"] == "no-store"


@pytest.fixture
async def unmigrated_database_url(database_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of the run's kind, never migrated."""
    if not database_url.startswith("postgres"):
        yield f"sqlite://{tmp_path}/unmigrated.sqlite3"
        return
    name = f"order_events_unmigrated_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_asyncpg_url(POSTGRES_URL))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield _with_database(POSTGRES_URL, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_readyz_lists_the_migrations_not_applied_until_they_are(
    unmigrated_database_url: str, server_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**server_env, "DATABASE_URL": unmigrated_database_url}
    server = start_server(env, tmp_path / "server.log")
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            before = await http.get("/readyz")
            await asyncio.to_thread(migrate, unmigrated_database_url)
            after = await http.get("/readyz")
    finally:
        stop_server(server)

    assert (before.status_code, before.json()) == (
        503,
        {
            "status": "not ready",
            "database": "ok",
            "migrations": "pending",
            "pending": sorted(known_migrations()),
            "reason": "database migrations are not applied: run `python -m app.migrate`",
        },
    )
    assert after.status_code == 200
