"""Database configuration and migrations, for SQLite and PostgreSQL alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tortoise import Tortoise
from tortoise.backends.base.config_generator import expand_db_url
from tortoise.migrations.api import migrate

MODELS = ["app.models"]
MIGRATIONS = "app.migrations"


def is_postgres(database_url: str) -> bool:
    return urlsplit(database_url).scheme in {"postgres", "postgresql", "asyncpg", "psycopg"}


def tortoise_config(database_url: str) -> dict[str, Any]:
    """The Tortoise config for ``database_url``; creates a SQLite file's folder."""
    connection = expand_db_url(database_url)
    if connection["engine"] == "tortoise.backends.sqlite":
        path = connection["credentials"]["file_path"]
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # FULL: an acknowledged event survives power loss, not just a crash of this process.
        connection["credentials"].setdefault("synchronous", "FULL")
        connection["credentials"].setdefault("busy_timeout", 5000)
    return {
        "connections": {"default": connection},
        "apps": {
            "models": {
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
