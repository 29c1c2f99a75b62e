"""The ASGI application: ``create_app(settings)``, or ``create_app_from_env`` for uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from tortoise.contrib.starlette import RegisterTortoise

from app import idempotency
from app.api.schema import schema
from app.api.view import GraphQLApp
from app.auth import LocalIssuer, TokenValidator, key_source
from app.db import tortoise_config
from app.graphiql import graphiql_routes
from app.settings import Settings


def create_app(settings: Settings) -> Starlette:
    keys = key_source(settings)
    graphql = GraphQLApp(schema, settings, TokenValidator(settings, keys))

    routes: list[BaseRoute] = [
        Route("/graphql", graphql, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", graphql),
        Route("/healthz", _healthz),
    ]
    if isinstance(keys, LocalIssuer):
        jwks = keys.jwks()

        async def published_keys(_: Request) -> Response:
            return JSONResponse(jwks, headers={"cache-control": "public, max-age=300"})

        routes.append(Route("/.well-known/jwks.json", published_keys))
    if settings.graphiql:
        routes.extend(graphiql_routes(settings))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with RegisterTortoise(app, config=tortoise_config(settings.database_url)):
            purger = asyncio.create_task(
                idempotency.purge_forever(settings.idempotency_purge_interval_seconds)
            )
            try:
                yield
            finally:
                purger.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await purger

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.settings = settings
    return app


def create_app_from_env() -> Starlette:
    return create_app(Settings.from_env())


async def _healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})
