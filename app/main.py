"""The ASGI application: ``create_app(settings)``, or ``create_app_from_env`` for uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from tortoise.connection import get_connection
from tortoise.contrib.starlette import RegisterTortoise

from app import health, idempotency, metrics, oauth, openapi, purging, rest, tracing
from app.api import access
from app.api.documents import Compiler
from app.api.endpoint import Endpoint, GraphQLRoute
from app.api.schema import schema
from app.api.view import GraphQLView
from app.auth import LocalIssuer, TokenValidator, key_source
from app.broker import create_broker
from app.clients import Revocations
from app.db import tortoise_config
from app.graphiql import graphiql_routes
from app.hooks import outbox
from app.hooks import rest as hooks_rest
from app.hooks.dispatcher import Dispatcher, Doorbell
from app.ratelimit import create_limiter
from app.settings import Settings
from app.shutdown import drain_on_signals
from app.writer import EventWriter


def create_app(settings: Settings) -> Starlette:
    keys = key_source(settings)
    # Clients get tokens here only while the server is its own issuer (app.oauth); with an
    # external one, the token path is not served (404).
    issuer = keys if isinstance(keys, LocalIssuer) else None
    revocations = Revocations() if issuer is not None else None
    broker = create_broker(settings.database_url)
    compiler = Compiler(schema, settings)
    # One limiter for HTTP requests and WebSocket operations alike: one bucket per caller.
    rate_limiter = create_limiter(settings)
    # Rung by the writer when it wrote webhook deliveries (app.hooks).
    doorbell = Doorbell()
    graphql = GraphQLView(
        schema,
        settings,
        TokenValidator(settings, keys, revocations.is_revoked if revocations else None),
        broker,
        EventWriter(broker, on_deliveries=doorbell.ring),
        compiler,
        rate_limiter,
    )
    cors = _cors(settings)
    endpoint = Endpoint(graphql, compiler, rate_limiter, cors)

    routes: list[BaseRoute] = [
        *health.routes(settings.readiness_timeout_seconds),
        *metrics.routes(settings),
        # Dintero's REST shape of the same operations, through the same front door.
        Route(rest.PATH, rest.EventsEndpoint(graphql, rate_limiter), methods=None),
        *hooks_rest.routes(graphql, rate_limiter),
        Route(openapi.PATH, openapi.route(settings)),
    ]
    token_endpoint = None
    if issuer is not None:

        async def published_keys(_: Request) -> Response:
            # Read each time: a rotation (scripts/keys rotate) changes it.
            return JSONResponse(issuer.jwks(), headers={"cache-control": "public, max-age=300"})

        token_endpoint = oauth.TokenEndpoint(settings, issuer, rate_limiter)
        routes.append(Route("/.well-known/jwks.json", published_keys))
        routes.append(Route(oauth.PATH, token_endpoint, methods=None))
    if settings.graphiql:
        routes.extend(graphiql_routes(settings))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with RegisterTortoise(app, config=tortoise_config(settings.database_url, settings)):
            # Tortoise opens its connection lazily, under a lock that a request cancelled
            # while it opens would never release (every later query would wait forever):
            # open it here, before any request can.
            await get_connection("default").execute_query("SELECT 1")
            await broker.start()
            refresher = None
            if issuer is not None and revocations is not None:
                # Before the first request, when the database answers (it may be down, or not
                # migrated yet: /readyz says so): then tried again every few seconds.
                await oauth.refresh_revocations(revocations)
                refresher = asyncio.create_task(
                    oauth.keep_fresh(revocations, issuer, settings.client_refresh_seconds)
                )
            purgers = [
                asyncio.create_task(
                    purging.forever(
                        settings.idempotency_purge_interval_seconds,
                        idempotency.purge_expired,
                        "expired idempotency keys",
                    )
                ),
                asyncio.create_task(
                    purging.forever(
                        settings.idempotency_purge_interval_seconds,
                        partial(outbox.purge_delivered, settings.webhook_retention_days * 86400),
                        "webhook deliveries and attempts past WEBHOOK_RETENTION_DAYS",
                    )
                ),
            ]
            dispatcher = None
            if settings.webhook_delivery:
                dispatcher = Dispatcher(settings, doorbell)
                await dispatcher.start()
            restore_signals = drain_on_signals(graphql.connections, settings.shutdown_grace_seconds)
            try:
                yield
            finally:
                restore_signals()
                # Normally drained already, when the signal came; this covers other stops.
                await graphql.connections.drain_all(settings.shutdown_grace_seconds)
                for task in (*purgers, refresher):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                if dispatcher is not None:
                    await dispatcher.stop()
                await broker.stop()
                if rate_limiter is not None:
                    await rate_limiter.close()
                if token_endpoint is not None:
                    await token_endpoint.close()
                metrics.process_stopped()
                # uvicorn ends the process by the signal: no exit handler would send them.
                await tracing.flush()

    middleware = [
        # CORS applies to /graphql (the endpoint applies it) as to every route; WebSockets
        # pass it untouched (the view checks their Origin).
        Middleware(GraphQLRoute, endpoint=endpoint),
        cors,
    ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware)
    app.state.settings = settings
    app.state.broker = broker
    app.state.doorbell = doorbell
    app.state.rate_limiter = rate_limiter
    app.state.revocations = revocations
    return app


def create_app_from_env() -> Starlette:
    access.configure()
    settings = Settings.from_env()
    tracing.configure(settings)
    return create_app(settings)


def _cors(settings: Settings) -> Middleware:
    """Browsers on ALLOWED_ORIGINS may call the API; pages elsewhere may not. Tokens travel in
    the Authorization header, never in cookies, so no credentials are allowed."""
    return Middleware(
        CORSMiddleware,
        allow_origins=settings.allowed_origins,
        allow_methods=["GET", "POST"],
        allow_headers=["authorization", "content-type", "idempotency-key", "if-match"],
        expose_headers=["x-request-id", "retry-after", "etag", "link"],
        allow_credentials=False,
        max_age=600,
    )
