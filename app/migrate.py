"""``python -m app.migrate``: apply pending migrations to the configured database."""

from __future__ import annotations

import asyncio

from app.db import apply_migrations
from app.settings import Settings


def main() -> None:
    asyncio.run(apply_migrations(Settings.from_env().database_url))


if __name__ == "__main__":
    main()
