"""The little that raw SQL needs to run on SQLite and PostgreSQL alike."""

from __future__ import annotations

import functools

from tortoise.backends.base.client import BaseDBAsyncClient


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
