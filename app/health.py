"""Probes for process supervisors and load balancers.

    GET /healthz   200 while the process runs and serves HTTP; touches nothing else, so a
                   database outage never gets a healthy process restarted
    GET /readyz    200 when the database answers within READINESS_TIMEOUT_SECONDS and every
                   migration in app/migrations is applied; otherwise 503 saying which

Both answer JSON and are never cached. /readyz asks through the same connection pool that
requests use, so "ready" means this process can reach the database, not only that the
database is up.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tortoise.connection import get_connection
from tortoise.exceptions import OperationalError

from app.db import APP_LABEL, MIGRATIONS_TABLE, is_unavailable, known_migrations
from app.sql import placeholders

logger = logging.getLogger(__name__)

NO_STORE = {"cache-control": "no-store"}


def routes(readiness_timeout_seconds: float) -> list[Route]:
    expected = known_migrations()

    async def readyz(_: Request) -> Response:
        body = await readiness(expected, readiness_timeout_seconds)
        status = 200 if body["status"] == "ready" else 503
        return JSONResponse(body, status_code=status, headers=NO_STORE)

    return [Route("/healthz", healthz), Route("/readyz", readyz)]


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"}, headers=NO_STORE)


async def readiness(expected: frozenset[str], wait_seconds: float) -> dict[str, Any]:
    """The body of /readyz: ``status`` is ``ready`` or ``not ready``, with the reason."""
    try:
        async with asyncio.timeout(wait_seconds):
            applied = await _applied_migrations()
    except Exception as error:
        if is_unavailable(error):
            return _database_unavailable(error)
        if not isinstance(error, OperationalError):
            raise
        # The database answered, without a table of applied migrations: none are.
        applied = set()
    pending = sorted(expected - applied)
    if pending:
        return {
            "status": "not ready",
            "database": "ok",
            "migrations": "pending",
            "pending": pending,
            "reason": "database migrations are not applied: run `python -m app.migrate`",
        }
    return {"status": "ready", "database": "ok", "migrations": "applied"}


async def _applied_migrations() -> set[str]:
    connection = get_connection("default")
    sql = placeholders(
        connection,
        f"SELECT name FROM {MIGRATIONS_TABLE} WHERE app = ?",  # noqa: S608 (constants)
    )
    rows = await connection.execute_query_dict(sql, [APP_LABEL])
    return {str(row["name"]) for row in rows}


def _database_unavailable(error: BaseException) -> dict[str, Any]:
    # Why, for the operator, is in the log; the body stays free of hosts and SQL.
    logger.warning("not ready: database unavailable (%s: %s)", type(error).__name__, error)
    return {
        "status": "not ready",
        "database": "unavailable",
        "reason": "the database did not answer",
    }
