"""The PostgreSQL pool hands connections back without asyncpg's reset query, and still
never passes on an open transaction (app/db.py)."""

from __future__ import annotations

from typing import Any

import pytest
from tortoise.connection import get_connection

from app import db


@pytest.fixture
def pool(client: Any, database_url: str) -> Any:
    if not database_url.startswith("postgres"):
        pytest.skip("the pool is PostgreSQL's")
    connection = get_connection("default")
    assert isinstance(connection, db.PostgresClient)
    return connection._pool


async def test_no_reset_query_is_sent_on_release(pool: Any) -> None:
    sent: list[str] = []
    async with pool.acquire() as connection:
        connection.add_query_logger(lambda record: sent.append(record.query))
        await connection.fetchval("SELECT 1")
    assert sent == ["SELECT 1"]


async def test_a_transaction_left_open_is_rolled_back_on_release(pool: Any) -> None:
    async with pool.acquire() as connection:
        await connection.execute("BEGIN")
        await connection.execute(
            "INSERT INTO account_streams (account_id, position) VALUES ('T00000001', 1)"
        )
        backend = await connection.fetchval("SELECT pg_backend_pid()")
    for _ in range(pool.get_size()):
        async with pool.acquire() as connection:
            if await connection.fetchval("SELECT pg_backend_pid()") == backend:
                assert not connection.is_in_transaction()
    async with pool.acquire() as connection:
        count = await connection.fetchval(
            "SELECT count(*) FROM account_streams WHERE account_id = 'T00000001'"
        )
    assert count == 0
