"""The front door's pieces for every HTTP route (``/graphql``, Get Token, the REST events):
``serve``, the frame around a route's answer (a request id, the body's size limit, an
unexpected error turned into a 500 naming the request id, the ``x-request-id`` header and the
access log line); ``caller``, the bearer token's caller and its turn of the rate limit
(``take_turn``, ``retry_after``). The route gives the answer and how its 500 looks, and notes
what the access line says of the caller and the errors on the request's ``access.Exchange``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app import tracing
from app.api import access
from app.api.body import limit_body
from app.api.context import Context, authenticate
from app.encoding import new_request_id
from app.errors import RateLimited
from app.load import REQUESTS
from app.ratelimit import Limiter, caller_key

if TYPE_CHECKING:
    from app.api.view import GraphQLView

logger = logging.getLogger("app.errors")


class Reply:
    """A complete response, sent as two ASGI messages."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self, status: int, body: bytes, content_type: str, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        self.status = status
        self.body = body
        self.headers = [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", content_type.encode()),
            *((name.encode(), value.encode()) for name, value in headers),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


Answer = Callable[[Request, access.Exchange], Awaitable[Reply | Response]]


async def serve(
    scope: Scope,
    receive: Receive,
    send: Send,
    answer: Answer,
    internal_error: Callable[[str], Reply],
    max_body_bytes: int,
    added: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Answers one HTTP request with ``answer``, adding ``added`` to its headers;
    ``internal_error(request_id)`` is the reply when it raises. With tracing on, all of it
    is the request's span (``app.tracing``)."""
    started = time.perf_counter()
    request = Request(scope, limit_body(scope, receive, max_body_bytes))
    request_id = new_request_id()
    exchange = access.Exchange(scope, request_id)
    # Not tracing.request(): while tracing is off, a request pays no call for it.
    tracer = tracing.active
    span = None if tracer is None else tracer.request(scope)
    REQUESTS.begin()
    try:
        try:
            reply = await answer(request, exchange)
        except Exception:
            logger.exception("unexpected error request_id=%s", request_id)
            reply = internal_error(request_id)
            exchange.error_codes = ["INTERNAL_SERVER_ERROR"]
        if isinstance(reply, Reply):
            reply.headers.append((b"x-request-id", request_id.encode()))
            reply.headers.extend(added)
            status = reply.status
        else:
            reply.headers["x-request-id"] = request_id
            # Appended, not merged: a header listed twice is one list (RFC 9110, 5.3).
            reply.raw_headers.extend(added)
            status = reply.status_code
        try:
            await reply(scope, request.receive, send)
        finally:
            exchange.log(status, started)
            if span is not None:
                span.answered(status, exchange.error_codes)
    finally:
        REQUESTS.end()
        if span is not None:
            span.end()


async def caller(
    request: Request, exchange: access.Exchange, view: GraphQLView, rate_limiter: Limiter | None
) -> Context:
    """The request's context as ``/graphql`` makes it: the caller its bearer token names (or
    why the token was refused: ``Context.require_principal`` says so when it matters), then
    one turn of the caller's rate limit, which raises ``RateLimited`` when none is left."""
    context = view.new_context(request, None, exchange.request_id)
    header = request.headers.get("authorization")
    if header is not None:
        await authenticate(context, header, view.validator)
    exchange.principal = context.principal
    # After the token is checked, so that nobody can spend another's requests.
    address = request.client.host if request.client else None
    await take_turn(rate_limiter, caller_key(context.principal, address))
    return context


async def take_turn(limiter: Limiter | None, key: str) -> None:
    """One request of ``key``'s budget; ``RateLimited`` when it is spent."""
    if limiter is None:
        return
    waiting = limiter.take(key)
    if waiting is not None:  # a store shared by several processes
        await waiting


def retry_after(error: RateLimited) -> str:
    """``Retry-After``: whole seconds, at least 1."""
    return str(max(1, math.ceil(error.retry_after)))
