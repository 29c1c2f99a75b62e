"""The GraphQL endpoint over WebSocket: authentication, token expiry, pings and draining.

Both subprotocols are served: ``graphql-transport-ws`` (current) and the legacy
``graphql-ws``. Strawberry's handlers do the protocol; these subclasses add what the service
promises on top: the token is checked before the connection is acknowledged, a socket never
outlives its token, a drained connection tells its client to resume elsewhere, and a message
that is no message of the protocol is refused as each protocol has it, and every operation
started takes a request from its caller's rate-limit bucket, HTTP's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Container
from typing import TYPE_CHECKING, Any, cast

from starlette.websockets import WebSocket, WebSocketState
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.http.async_base_view import AsyncWebSocketAdapter
from strawberry.http.exceptions import NonTextMessageReceived, WebSocketDisconnected
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler

from app import live, metrics, tracing
from app.api import access
from app.api.context import Context
from app.api.documents import Compiler, Payloads, Plan
from app.api.persisted import PersistedQueries, PersistedQueryRefusal
from app.api.types import OrderStatusEvent
from app.errors import RateLimited, ServiceError
from app.ratelimit import Limiter, caller_key
from app.records import StoredEvent
from app.timers import Deadline, deadlines

if TYPE_CHECKING:
    from app.tracer import OperationSpan

logger = logging.getLogger(__name__)

GOING_AWAY = 1001
# Forbidden, for a token refused at connection_init and for one that expired. Not 4401
# (Unauthorized), which the graphql-ws client takes for fatal and never retries: on 4403 it
# reconnects, reading lazy connectionParams again, so a fresh token flows in.
FORBIDDEN = 4403


class Connections:
    """The open WebSocket connections of this process, for token expiry and draining."""

    def __init__(self) -> None:
        self.open: set[TransportWSHandler | LegacyWSHandler] = set()

    async def drain_all(self, grace_seconds: float) -> None:
        """Completes every open subscription and closes with 1001 (going away), so clients
        reconnect elsewhere and resume with their last cursor."""
        handlers = list(self.open)
        if handlers:
            logger.info("closing %d WebSocket connections: server going away", len(handlers))
            await asyncio.wait(
                [asyncio.create_task(handler.drain()) for handler in handlers],
                timeout=grace_seconds,
            )


def find_authorization(connection_params: Any) -> str | None:
    """The token of a ``connection_init`` payload: its ``Authorization``, in any letter case
    (the view checks it, or else the upgrade request's header, before acknowledging; a bad
    one closes with 4403 on graphql-transport-ws, ``connection_error`` on graphql-ws)."""
    if isinstance(connection_params, dict):
        for key, value in connection_params.items():
            if isinstance(key, str) and key.lower() == "authorization" and isinstance(value, str):
                return value
    return None


class _TimersMixin:
    """Timers instead of sleeping tasks: a connection waiting for its token to expire (or
    for its next ping, or for ``connection_init``) holds a ``Deadline`` in the loop's shared
    heap (``app.timers.deadlines``), not a task with a coroutine stack and a future,
    nor a loop timer of its own: thousands of idle connections each keep less."""

    context: Context
    websocket: AsyncWebSocketAdapter
    _expiry: Deadline | None = None
    # A close started by a timer, referenced until it is done.
    _closing: asyncio.Future[None] | None = None

    def watch_expiry(self) -> None:
        """Closes the connection (4403, "access token expired") when its token expires, ending
        its subscriptions: a socket never outlives its token."""
        principal = self.context.principal
        if principal is None:
            return
        delay = max(0.0, principal.expires_at - time.time())
        self._expiry = deadlines().call_later(delay, self._expired)

    def _expired(self) -> None:
        self._expiry = None
        self.close_later(FORBIDDEN, "access token expired")

    def stop_watching_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def close_later(self, code: int, reason: str) -> None:
        self._closing = asyncio.ensure_future(_close_quietly(self.websocket.close, code, reason))

    @property
    def socket(self) -> WebSocket:
        """Starlette's WebSocket under Strawberry's adapter."""
        return cast(ASGIWebSocketAdapter, self.websocket).ws

    def log_connection(self, started: float) -> None:
        """The connection's access log line (uvicorn's own lines for it are off: see
        ``app.api.access.ConnectionLines``)."""
        access.log_connection(
            self.socket.scope, self.context.request_id, self.context.principal, started
        )

    def forget_connection_params(self) -> None:
        # The connection_init payload carries the token; once checked, the principal is
        # all that is needed, and the payload need not live as long as the connection.
        self.context.connection_params = None


async def _close_quietly(close: Any, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await close(code, reason)


# The longest a connection whose operation was refused over its rate limit goes unread.
_OVER_LIMIT_PAUSE = 0.5

# A close frame carries at most 125 bytes: the code's 2 and the reason's.
_CLOSE_REASON_MAX = 123
# Where the view leaves why it refused a connection_init, on the connection's state.
REFUSAL = "refusal"


class WebSocketAdapter(ASGIWebSocketAdapter):
    """Strawberry's adapter (the view's ``websocket_adapter_class``), its close reasons cut to
    what a close frame carries: Strawberry puts a client's text into some (an unknown message
    type), and a longer reason would fail the close itself."""

    async def close(self, code: int, reason: str) -> None:
        if code == FORBIDDEN and reason == "Forbidden":
            # Strawberry's refusal at connection_init says no more: say why (the view kept it).
            why = getattr(self.ws.state, REFUSAL, None)
            if why:
                reason = f"Forbidden: {why}"
        fitting = reason.encode()[:_CLOSE_REASON_MAX].decode(errors="ignore")
        await super().close(code, fitting)


def message_problem(message: object, naming_an_operation: Container[str]) -> str | None:
    """What makes ``message`` no message of a GraphQL-over-WebSocket protocol, as far as its
    shape goes: an object with a string ``type`` and, for the types in
    ``naming_an_operation``, a string ``id``. None when it is one."""
    if not isinstance(message, dict):
        return "a message must be a JSON object"
    kind = message.get("type")
    if not isinstance(kind, str):
        return "a message's type must be a string"
    if kind in naming_an_operation and not isinstance(message.get("id"), str):
        return f"a {kind} message's id must be a string"
    return None


def request_problem(payload: object) -> str | None:
    """What makes the payload of a message starting an operation no GraphQL request (both
    protocols ask for the same: a query string, variables an object, an operation name a
    string); None when it is one."""
    if not isinstance(payload, dict):
        return "the payload must be an object"
    if not isinstance(payload.get("query"), str):
        return "the payload's query must be a string"
    if not isinstance(payload.get("variables"), dict | None):
        return "the payload's variables must be an object or null"
    if not isinstance(payload.get("operationName"), str | None):
        return "the payload's operationName must be a string or null"
    return None


class _MessagesMixin(_TimersMixin):
    """Reading a connection's messages, for both handlers. Strawberry reads through an async
    generator (``iter_json``) and ``receive_text``: three more suspended frames under every
    idle connection, and the last message (for a subscriber, its whole subscribe document)
    kept alive by the loop's variables while the connection waits for the next. Here a
    message is dropped once handled. Each operation a message starts is counted against its
    caller's rate limit first."""

    view: Any
    subprotocol: str
    # The protocol's handler has them; handle_unreadable answers text that is not JSON.
    handle_message: Callable[[Any], Awaitable[None]]
    handle_unreadable: Callable[[str], Awaitable[None]]
    _reported_invalid = False

    async def read_messages(self) -> None:
        """Handles the connection's messages in turn until it closes; a binary message raises
        ``NonTextMessageReceived``."""
        socket = self.socket
        while socket.application_state is not WebSocketState.DISCONNECTED:
            received = await socket.receive()
            if received["type"] == "websocket.disconnect":
                break
            try:
                text = received["text"]
            except KeyError:
                raise NonTextMessageReceived() from None
            del received
            try:
                message = self.view.decode_json(text)
            except json.JSONDecodeError:
                del text
                await self.handle_unreadable("WebSocket message must be valid JSON")
                continue
            del text
            await self.handle_message(message)
            del message

    rate_limiter: Limiter | None = None
    # The connection's caller as the rate limiter knows it, from its acknowledgement on.
    _caller: str | None = None

    def connection_accepted(self) -> None:
        """What follows a connection's acknowledgement, under either protocol."""
        self.forget_connection_params()
        self.watch_expiry()
        client = self.socket.client
        self._caller = caller_key(self.context.principal, client.host if client else None)

    async def over_limit(self) -> RateLimited | None:
        """Takes a request from the caller's bucket (the one its HTTP requests take from)
        for an operation the connection starts: the refusal when the caller is over its
        limit, else None. Called before the operation's document is even read, so that a
        refusal costs little more than reading the message."""
        limiter, caller = self.rate_limiter, self._caller
        if limiter is None or caller is None:
            return None
        try:
            waiting = limiter.take(caller)
            if waiting is not None:  # a store shared by several processes
                await waiting
        except RateLimited as error:
            return error
        return None

    async def hold_back(self, refusal: RateLimited) -> None:
        """Once an operation over the limit is refused, reads nothing more from the
        connection until its caller may start another, or ``_OVER_LIMIT_PAUSE`` at most: a
        client sending faster than its limit is then held back by TCP, instead of costing
        the server a refusal per message. (Events of its subscriptions still go out.)"""
        await asyncio.sleep(min(refusal.retry_after, _OVER_LIMIT_PAUSE))

    persisted: PersistedQueries

    def persisted_refusal(self, payload: object) -> PersistedQueryRefusal | None:
        """Puts in the payload of a message starting an operation the document it runs (its
        query, or the one its persisted query names: ``PersistedQueries.document``, as over
        HTTP). The refusal when there is none it may run, else None."""
        if not isinstance(payload, dict):
            return None  # request_problem says what is wrong with it
        try:
            payload["query"] = self.persisted.document(
                payload.get("query"), payload.get("extensions")
            )
        except PersistedQueryRefusal as refusal:
            return refusal
        return None

    def report_invalid(self, reason: str) -> None:
        """Logs a message refused as no message of the protocol: the first of the connection
        only (graphql-ws keeps the connection open, and a client could send them forever),
        one line, no traceback: the client's mistake, not the server's."""
        if self._reported_invalid:
            return
        self._reported_invalid = True
        logger.warning(
            "invalid WebSocket message request_id=%s protocol=%s reason=%r",
            self.context.request_id,
            self.subprotocol,
            reason,
        )


def _service_error(refusal: ServiceError) -> dict[str, Any]:
    return {
        "message": refusal.message,
        "extensions": {"code": refusal.code, **refusal.extensions},
    }


def _limit_error(limit: int) -> dict[str, Any]:
    return {
        "message": f"subscription limit reached: at most {limit} per connection; "
        "complete one first",
        "extensions": {"code": "RATE_LIMITED"},
    }


class LiveOperation(Operation[Context, None]):
    """A compiled ``orderEvents`` subscription (see ``app.api.documents``), fed by the hub
    through a ``live.Feed``: no task while it waits for events. Each event's payload is
    built once per document and shared by every subscriber; frames are JSON text already
    and are sent as they are."""

    __slots__ = ("feed", "plan", "prefix", "span")

    def __init__(self, handler: TransportWSHandler, operation_id: str, plan: Plan) -> None:
        # The document and variables are not kept: the plan and the feed are all it needs.
        super().__init__(handler, operation_id, "", None, None)
        self.plan = plan
        # Interned: most clients number their operations alike, so subscribers share it.
        self.prefix = sys.intern(
            json.dumps({"id": operation_id, "type": "next"})[:-1] + ',"payload":'
        )
        self.feed: live.Feed | None = None
        self.span: OperationSpan | None = None  # its span while tracing is on

    async def send_event(self, event: StoredEvent) -> None:
        if self.completed:
            return
        handler = cast(TransportWSHandler, self.handler)
        public_url = handler.context.settings.public_url
        text = handler.payloads.text(
            self.plan, event.id, lambda: OrderStatusEvent.from_event(event, public_url)
        )
        try:
            await handler.send_text(self.prefix + text + "}")
        except Exception:
            # The connection is going away: its reader ends every operation.
            self.stop()

    async def end(self, error: Exception) -> None:
        handler = cast(TransportWSHandler, self.handler)
        located = self.plan.error(error, handler.context.request_id)
        payload: Any = {"data": None, "errors": [located.formatted]}
        with contextlib.suppress(Exception):
            await self.send_operation_message({"id": self.id, "type": "next", "payload": payload})
        with contextlib.suppress(Exception):
            await self.send_operation_message({"id": self.id, "type": "complete"})
        if self.span is not None:
            self.span.end()

    def stop(self) -> None:
        if self.feed is not None:
            self.feed.close()
        if self.span is not None:
            self.span.end()


class TransportWSHandler(_MessagesMixin, BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws, with pings while idle; a message that is no message of the
    protocol closes the connection with 4400."""

    subprotocol = GRAPHQL_TRANSPORT_WS_PROTOCOL
    connections: Connections
    ping_interval: float
    compiler: Compiler
    payloads: Payloads
    _init_timer: Deadline | None = None
    _ping_timer: Deadline | None = None
    _pinging: asyncio.Future[None] | None = None
    _closed = False

    def send_text(self, text: str) -> Awaitable[None]:
        """Sends a frame of JSON text as Starlette's ``WebSocket.send_text`` does, one
        coroutine fewer: the live route sends one frame per subscriber per event."""
        return self.socket.send({"type": "websocket.send", "text": text})

    async def handle_message(self, message: Any) -> None:
        # Strawberry reads a message's fields as if they were there, of the right types.
        problem = message_problem(message, ("subscribe", "complete"))
        if problem is not None:
            await self.handle_invalid_message(problem)
            return
        await super().handle_message(message)

    async def handle_invalid_message(self, error_message: str) -> None:
        self.report_invalid(error_message)
        await super().handle_invalid_message(error_message)

    async def handle_unreadable(self, reason: str) -> None:
        await self.handle_invalid_message(reason)

    async def handle_subscribe(self, message: Any) -> None:
        # An id in use closes the connection (4409, Strawberry's): nothing to count then.
        if self.connection_acknowledged and message["id"] not in self.operations:
            limited = await self.over_limit()
            if limited is not None:
                error = _service_error(limited)
                refused: Any = {"id": message["id"], "type": "error", "payload": [error]}
                await self.send_message(refused)
                await self.hold_back(limited)
                return
        if (
            self.connection_acknowledged
            and message["id"] not in self.operations
            and (unknown := self.persisted_refusal(message.get("payload"))) is not None
        ):
            errors = [_service_error(unknown)]
            answer: Any = {"id": message["id"], "type": "error", "payload": errors}
            await self.send_message(answer)
            return
        # Before connection_init, Strawberry closes with 4401 whatever the payload.
        if self.connection_acknowledged and (problem := request_problem(message.get("payload"))):
            await self.handle_invalid_message(problem)
            return
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
        if self.connection_acknowledged and message["id"] not in self.operations:
            operation = self._live_operation(message)
            if operation is not None:
                self.operations[operation.id] = operation
                assert operation.feed is not None
                operation.feed.start()
                return
        await super().handle_subscribe(message)

    def _live_operation(self, message: Any) -> LiveOperation | None:
        """The compiled route for ``message``, or None for the ordinary one."""
        payload = message["payload"]
        if not isinstance(payload, dict) or not isinstance(message["id"], str):
            return None
        plan = self.compiler.subscription_plan(payload["query"], payload.get("operationName"))
        if plan is None:
            return None
        arguments = plan.arguments(payload.get("variables"))
        if arguments is None:
            return None  # the ordinary route reports it exactly as it always does
        account_id, order_id, after = (
            arguments["account_id"],
            arguments.get("order_id"),
            arguments.get("after"),
        )
        operation = LiveOperation(self, message["id"], plan)
        try:
            operation.feed = live.watch(
                self.context.require_principal(),
                self.context.broker,
                account_id,
                order_id,
                after,
                operation,
                buffer_size=self.context.settings.subscription_buffer,
            )
        except Exception:
            return None  # the ordinary route reports it exactly as it always does
        operation.span = tracing.operation(plan.operation.value, plan.name, current=False)
        return operation

    async def cleanup_operation(self, operation_id: str) -> None:
        operation = self.operations.get(operation_id)
        if isinstance(operation, LiveOperation):
            del self.operations[operation_id]
            operation.stop()
            return
        await super().cleanup_operation(operation_id)

    async def handle(self) -> None:
        """Strawberry's ``handle``, reading with ``read_messages``; the behaviour is
        Strawberry's: a binary or non-JSON message closes the connection with 4400, a
        disconnect ends the loop, and ``shutdown`` always runs."""
        started = time.perf_counter()
        self.connections.open.add(self)
        metrics.WEBSOCKET_CONNECTIONS.inc()
        if self.ping_interval > 0:
            self._schedule_ping()
        try:
            self.on_request_accepted()
            try:
                try:
                    await self.read_messages()
                except NonTextMessageReceived:
                    await self.handle_invalid_message("WebSocket message type must be text")
            except WebSocketDisconnected:
                pass
            finally:
                await self.shutdown()
        finally:
            self._closed = True
            self.connections.open.discard(self)
            metrics.WEBSOCKET_CONNECTIONS.dec()
            self.stop_watching_expiry()
            for timer in (self._init_timer, self._ping_timer):
                if timer is not None:
                    timer.cancel()
            self._init_timer = self._ping_timer = None
            self.log_connection(started)

    def on_request_accepted(self) -> None:
        # Strawberry runs a task that sleeps until the init timeout and then lingers,
        # cancelled, with its traceback, for the connection's life: a timer does the same.
        delay = self.connection_init_wait_timeout.total_seconds()
        self._init_timer = deadlines().call_later(delay, self._init_timed_out)

    def _init_timed_out(self) -> None:
        self._init_timer = None
        if self.connection_init_received:
            return
        self.connection_timed_out = True
        self.close_later(4408, "Connection initialisation timeout")

    async def handle_connection_init(self, message: Any) -> None:
        if self._init_timer is not None and not self.connection_timed_out:
            self._init_timer.cancel()
            self._init_timer = None
        await super().handle_connection_init(message)
        if self.connection_acknowledged:
            self.connection_accepted()

    def _schedule_ping(self) -> None:
        self._ping_timer = deadlines().call_later(self.ping_interval, self._ping)

    def _ping(self) -> None:
        self._ping_timer = None
        self._pinging = asyncio.ensure_future(self._send_ping())

    async def _send_ping(self) -> None:
        with contextlib.suppress(Exception):
            await self.send_message({"type": "ping"})
        self._pinging = None
        if not self._closed:
            self._schedule_ping()

    async def drain(self) -> None:
        for operation_id, operation in list(self.operations.items()):
            with contextlib.suppress(Exception):
                await operation.send_operation_message({"id": operation_id, "type": "complete"})
            if isinstance(operation, LiveOperation):
                operation.stop()
            elif operation.task is not None:
                operation.task.cancel()
        await _close_quietly(self.websocket.close, GOING_AWAY, "server going away")


# The messages a graphql-ws client sends.
_LEGACY_MESSAGES = frozenset({"connection_init", "connection_terminate", "start", "stop"})


class LegacyWSHandler(_MessagesMixin, BaseGraphQLWSHandler[Context, None]):
    """graphql-ws, whose keep-alive (``ka``) is its own; a message that is no message of the
    protocol is answered with ``connection_error`` (or ``error`` for the operation it would
    start) and the connection stays open."""

    subprotocol = GRAPHQL_WS_PROTOCOL
    connections: Connections
    init_timeout: float

    async def handle(self) -> None:
        """Strawberry's ``handle``, reading with ``read_messages``: a binary message closes
        the connection with 1002 as there, but text that is not JSON is answered with
        ``connection_error``, as the protocol has it, rather than ignored without a word."""
        started = time.perf_counter()
        self.connections.open.add(self)
        metrics.WEBSOCKET_CONNECTIONS.inc()
        # graphql-ws has no init timeout of its own: without one, a connection could stay
        # open unauthenticated for as long as its client likes.
        waiting = deadlines().call_later(self.init_timeout, self._close_unless_initialised)
        try:
            try:
                try:
                    await self.read_messages()
                except NonTextMessageReceived:
                    await self.websocket.close(1002, "WebSocket message type must be text")
            except WebSocketDisconnected:
                pass
            finally:
                if self.keep_alive_task is not None:
                    self.keep_alive_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await self.keep_alive_task
                await self.cleanup()
        finally:
            waiting.cancel()
            self.connections.open.discard(self)
            metrics.WEBSOCKET_CONNECTIONS.dec()
            self.stop_watching_expiry()
            self.log_connection(started)

    async def handle_message(self, message: Any) -> None:
        # Strawberry reads a message's fields as if they were there, of the right types, and
        # ignores a type it does not know.
        problem = message_problem(message, ("start", "stop"))
        if problem is None and message["type"] not in _LEGACY_MESSAGES:
            problem = "unknown message type"
        if problem is not None:
            await self.refuse_message(problem)
            return
        await super().handle_message(message)

    async def handle_unreadable(self, reason: str) -> None:
        await self.refuse_message(reason)

    async def refuse_message(self, reason: str) -> None:
        """Answers a message that is no message of the protocol as the protocol has it:
        ``connection_error``, and the message is otherwise ignored."""
        self.report_invalid(reason)
        refusal: Any = {"type": "connection_error", "payload": {"message": reason}}
        await self.send_message(refusal)

    def _close_unless_initialised(self) -> None:
        if not self.connection_acknowledged:
            self.close_later(4408, "Connection initialisation timeout")

    async def handle_start(self, message: Any) -> None:
        if self.connection_acknowledged:
            limited = await self.over_limit()
            if limited is not None:
                # A start replaces the operation of its id, as in Strawberry, even one refused.
                await self.cleanup_operation(message["id"])
                error = _service_error(limited)
                refused: Any = {"type": "error", "id": message["id"], "payload": error}
                await self.send_message(refused)
                await self.hold_back(limited)
                return
        if self.connection_acknowledged and (
            unknown := self.persisted_refusal(message.get("payload"))
        ):
            await self.cleanup_operation(message["id"])
            answer: Any = {"type": "error", "id": message["id"], "payload": _service_error(unknown)}
            await self.send_message(answer)
            return
        # Before connection_init, Strawberry closes with 4401 whatever the payload.
        if self.connection_acknowledged and (problem := request_problem(message.get("payload"))):
            self.report_invalid(problem)
            # A start replaces the operation of its id, as in Strawberry, even one that fails.
            await self.cleanup_operation(message["id"])
            refusal: Any = {"type": "error", "id": message["id"], "payload": {"message": problem}}
            await self.send_message(refusal)
            return
        limit = self.max_subscriptions_per_connection
        if (
            self.connection_acknowledged
            and limit is not None
            and message["id"] not in self.tasks
            and len(self.tasks) >= limit
        ):
            refusal = {"type": "error", "id": message["id"], "payload": _limit_error(limit)}
            await self.send_message(refusal)
            return
        await super().handle_start(message)

    async def handle_connection_init(self, message: Any) -> None:
        await super().handle_connection_init(message)
        if self.connection_acknowledged:
            self.connection_accepted()

    async def drain(self) -> None:
        # Cancelling an operation makes the legacy handler send its "complete".
        with contextlib.suppress(Exception):
            await self.cleanup()
        await _close_quietly(self.websocket.close, GOING_AWAY, "server going away")
