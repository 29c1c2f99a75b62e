"""The little that raw SQL needs to run on SQLite and PostgreSQL alike."""

from __future__ import annotations

from tortoise.backends.base.client import BaseDBAsyncClient


def placeholders(connection: BaseDBAsyncClient, sql: str) -> str:
    """Rewrites ``?`` placeholders to ``$1, $2, ...`` for PostgreSQL."""
    if connection.capabilities.dialect != "postgres":
        return sql
    parts = sql.split("?")
    return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], start=1))
