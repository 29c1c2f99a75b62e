"""The GraphQL endpoint over WebSocket: authentication, token expiry, pings and draining.

Both subprotocols are served: ``graphql-transport-ws`` (current) and the legacy
``graphql-ws``. Strawberry's handlers do the protocol; these subclasses add what the service
promises on top:

- the token from the ``connection_init`` payload (``Authorization``, any letter case) or the
  upgrade request's header is checked before the connection is acknowledged (a bad one:
  close 4403 on graphql-transport-ws, ``connection_error`` on graphql-ws);
- when the token expires, the connection is closed (4401), ending its subscriptions: a socket
  never outlives its token;
- idle pings on graphql-transport-ws (graphql-ws has its own keep-alive, ``ka``);
- ``drain_all`` completes every open subscription and closes with 1001 (going away), so
  clients reconnect elsewhere and resume with their last cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any, cast

from starlette.websockets import WebSocketDisconnect
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler

from app.api import fastpath
from app.api.context import Context

logger = logging.getLogger(__name__)

GOING_AWAY = 1001
TOKEN_EXPIRED = 4401


class Connections:
    """The open WebSocket connections of this process, for token expiry and draining."""

    def __init__(self) -> None:
        self.open: set[TransportWSHandler | LegacyWSHandler] = set()

    async def drain_all(self, grace_seconds: float) -> None:
        handlers = list(self.open)
        if handlers:
            logger.info("closing %d WebSocket connections: server going away", len(handlers))
            await asyncio.wait(
                [asyncio.create_task(handler.drain()) for handler in handlers],
                timeout=grace_seconds,
            )


def find_authorization(connection_params: Any) -> str | None:
    if isinstance(connection_params, dict):
        for key, value in connection_params.items():
            if isinstance(key, str) and key.lower() == "authorization" and isinstance(value, str):
                return value
    return None


class _ExpiryMixin:
    context: Context
    _expiry: asyncio.TimerHandle | None = None

    def watch_expiry(self, close: Any) -> None:
        """Closes the connection when its token expires."""
        principal = self.context.principal
        if principal is None:
            return
        delay = max(0.0, principal.expires_at - time.time())
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(
            delay, lambda: asyncio.ensure_future(_close_quietly(close, TOKEN_EXPIRED))
        )

    def stop_watching_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()


async def _close_quietly(close: Any, code: int) -> None:
    reason = "access token expired" if code == TOKEN_EXPIRED else "server going away"
    with contextlib.suppress(Exception):
        await close(code, reason)


def _limit_error(limit: int) -> dict[str, Any]:
    return {
        "message": f"subscription limit reached: at most {limit} per connection; "
        "complete one first",
        "extensions": {"code": "RATE_LIMITED"},
    }


class TransportWSHandler(_ExpiryMixin, BaseGraphQLTransportWSHandler[Context, None]):
    connections: Connections
    ping_interval: float
    compiler: fastpath.Compiler
    payloads: fastpath.Payloads

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        """The compiled route for plain ``orderEvents`` subscriptions (see app.api.fastpath):
        each event's payload is built once and shared by every subscriber of the document."""
        plan = self.compiler.subscription_plan(operation.query, operation.operation_name)
        if plan is None:
            await super().run_operation(operation)
            return
        try:
            watch = fastpath.start_watch(plan, self.context, operation.variables)
        except fastpath.Fallback:
            await super().run_operation(operation)
            return
        prefix = json.dumps({"id": operation.id, "type": "next"})[:-1] + ',"payload":'
        public_url = self.context.settings.public_url
        # The frames are JSON text already: sent as they are, not encoded again.
        socket = cast(ASGIWebSocketAdapter, self.websocket).ws
        try:
            async with contextlib.aclosing(watch.events) as events:
                async for event in events:
                    if operation.completed:
                        return
                    text = self.payloads.text(plan, event, public_url)
                    await socket.send_text(prefix + text + "}")
        except (asyncio.CancelledError, WebSocketDisconnect):
            raise
        except Exception as error:
            payload: Any = fastpath.error_payload(plan, error, self.context)
            with contextlib.suppress(Exception):
                await operation.send_operation_message(
                    {"id": operation.id, "type": "next", "payload": payload}
                )
        with contextlib.suppress(Exception):
            await operation.send_operation_message({"id": operation.id, "type": "complete"})

    async def handle_subscribe(self, message: Any) -> None:
        # Strawberry refuses with a bare message; the contract wants an error code.
        limit = self.max_subscriptions_per_connection
        if (
            self.connection_acknowledged
            and limit is not None
            and message["id"] not in self.operations
            and len(self.operations) >= limit
        ):
            refusal: Any = {"id": message["id"], "type": "error", "payload": [_limit_error(limit)]}
            await self.send_message(refusal)
            return
        await super().handle_subscribe(message)

    async def handle(self) -> None:
        self.connections.open.add(self)
        pinger = asyncio.create_task(self._ping()) if self.ping_interval > 0 else None
        try:
            await super().handle()
        finally:
            self.connections.open.discard(self)
            self.stop_watching_expiry()
            if pinger is not None:
                pinger.cancel()

    async def handle_connection_init(self, message: Any) -> None:
        await super().handle_connection_init(message)
        if self.connection_acknowledged:
            self.watch_expiry(self.websocket.close)

    async def _ping(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                await asyncio.sleep(self.ping_interval)
                await self.send_message({"type": "ping"})

    async def drain(self) -> None:
        for operation_id, operation in list(self.operations.items()):
            with contextlib.suppress(Exception):
                await operation.send_operation_message({"id": operation_id, "type": "complete"})
            if operation.task is not None:
                operation.task.cancel()
        await _close_quietly(self.websocket.close, GOING_AWAY)


class LegacyWSHandler(_ExpiryMixin, BaseGraphQLWSHandler[Context, None]):
    connections: Connections
    init_timeout: float

    async def handle(self) -> None:
        self.connections.open.add(self)
        # graphql-ws has no init timeout of its own: without one, a connection could stay
        # open unauthenticated for as long as its client likes.
        waiting = asyncio.create_task(self._close_unless_initialised())
        try:
            await super().handle()
        finally:
            waiting.cancel()
            self.connections.open.discard(self)
            self.stop_watching_expiry()

    async def _close_unless_initialised(self) -> None:
        await asyncio.sleep(self.init_timeout)
        if not self.connection_acknowledged:
            with contextlib.suppress(Exception):
                await self.websocket.close(4408, "Connection initialisation timeout")

    async def handle_start(self, message: Any) -> None:
        limit = self.max_subscriptions_per_connection
        if (
            self.connection_acknowledged
            and limit is not None
            and message["id"] not in self.tasks
            and len(self.tasks) >= limit
        ):
            refusal: Any = {"type": "error", "id": message["id"], "payload": _limit_error(limit)}
            await self.send_message(refusal)
            return
        await super().handle_start(message)

    async def handle_connection_init(self, message: Any) -> None:
        await super().handle_connection_init(message)
        if self.connection_acknowledged:
            self.watch_expiry(self.websocket.close)

    async def drain(self) -> None:
        # Cancelling an operation makes the legacy handler send its "complete".
        with contextlib.suppress(Exception):
            await self.cleanup()
        await _close_quietly(self.websocket.close, GOING_AWAY)
