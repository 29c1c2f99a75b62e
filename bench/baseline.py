"""The baseline: a plain Starlette endpoint doing the same durable insert, naively.

One JSON POST, one single-row INSERT through the same Tortoise connection (same driver,
same database settings), committed before the response; and one GET reading an order's
rows. No GraphQL, no tokens, no validation beyond the JSON parse: what a hand-written REST
endpoint would do.

    uvicorn --factory bench.baseline:create_app   (DATABASE_URL as for the service)
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tortoise.connection import get_connection
from tortoise.contrib.starlette import RegisterTortoise

from app.db import tortoise_config
from app.sql import placeholders

TABLE = """
CREATE TABLE IF NOT EXISTS baseline_events (
    id {serial} PRIMARY KEY,
    account_id VARCHAR(9) NOT NULL,
    order_id VARCHAR(128) NOT NULL,
    service VARCHAR(255) NOT NULL,
    service_status VARCHAR(255) NOT NULL,
    created_at VARCHAR(40) NOT NULL
);
CREATE INDEX IF NOT EXISTS baseline_events_order ON baseline_events (account_id, order_id, id);
"""


async def create_event(request: Request) -> Response:
    body = json.loads(await request.body())
    connection = get_connection("default")
    created_at = datetime.now(UTC).isoformat()
    sql = placeholders(
        connection,
        "INSERT INTO baseline_events (account_id, order_id, service, service_status, created_at)"
        " VALUES (?, ?, ?, ?, ?) RETURNING id",
    )
    rows = await connection.execute_query_dict(
        sql,
        [body["accountId"], body["orderId"], body["service"], body["serviceStatus"], created_at],
    )
    return JSONResponse({"id": rows[0]["id"], "createdAt": created_at})


async def list_events(request: Request) -> Response:
    connection = get_connection("default")
    sql = placeholders(
        connection,
        "SELECT id, account_id, order_id, service, service_status, created_at"
        " FROM baseline_events WHERE account_id = ? AND order_id = ? ORDER BY id LIMIT ?",
    )
    rows = await connection.execute_query_dict(
        sql,
        [
            request.path_params["account_id"],
            request.path_params["order_id"],
            int(request.query_params.get("first", "20")),
        ],
    )
    return JSONResponse({"events": [dict(row) for row in rows]})


def create_app() -> Starlette:
    url = os.environ["DATABASE_URL"]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with RegisterTortoise(app, config=tortoise_config(url)):
            connection = get_connection("default")
            serial = "BIGSERIAL" if connection.capabilities.dialect == "postgres" else "INTEGER"
            await connection.execute_script(TABLE.format(serial=serial))
            yield

    return Starlette(
        routes=[
            Route("/events", create_event, methods=["POST"]),
            Route("/accounts/{account_id}/orders/{order_id}/events", list_events),
            Route("/healthz", lambda _: JSONResponse({"status": "ok"})),
        ],
        lifespan=lifespan,
    )
