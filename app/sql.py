"""The little that raw SQL needs to run on SQLite and PostgreSQL alike."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

from tortoise.backends.base.client import BaseDBAsyncClient

from app import sqlite_reads


def placeholders(connection: BaseDBAsyncClient, sql: str) -> str:
    """Rewrites ``?`` placeholders to ``$1, $2, ...`` for PostgreSQL."""
    if connection.capabilities.dialect != "postgres":
        return sql
    return _numbered(sql)


@functools.lru_cache(maxsize=512)
def _numbered(sql: str) -> str:
    # Remembered: the same statements come back all the time (a batch's INSERT once per
    # batch size), and rewriting one of 2,600 placeholders is not free.
    parts = sql.split("?")
    return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], start=1))


async def fetch(
    connection: BaseDBAsyncClient, sql: str, params: list[Any]
) -> Sequence[Sequence[Any]]:
    """Rows as the driver gives them (sqlite3.Row, asyncpg.Record), to be read by position:
    copying each into a dict first cost a read more than building its events. On SQLite,
    read on the event loop when that can be done (``app.sqlite_reads``)."""
    inline = sqlite_reads.reader_for(connection)
    if inline is not None:
        rows = inline.fetch(sql, params)
        if rows is not None:
            return rows
    _, records = await connection.execute_query(placeholders(connection, sql), params)
    return cast("Sequence[Sequence[Any]]", records)
