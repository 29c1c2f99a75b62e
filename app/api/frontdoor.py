"""The front door's pieces for an HTTP route beside ``/graphql`` (Get Token, ``app.oauth``;
the REST events, ``app.rest``): a request id, the body's size limit, an unexpected error
turned into a 500 naming the request id, the ``x-request-id`` header and the access log line
(``serve``), and the caller with its turn of the rate limit (``caller``), as
``app.api.endpoint`` gives ``/graphql``. The route says how its answers and its 500 look.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from app.api import access
from app.api.body import limit_body
from app.api.context import Context, authenticate
from app.api.endpoint import Reply
from app.encoding import new_request_id
from app.errors import RateLimited
from app.ratelimit import Limiter, caller_key

if TYPE_CHECKING:
    from app.api.view import GraphQLView

# The logger ``app.api.endpoint`` writes unexpected errors to.
logger = logging.getLogger("app.errors")

Answer = Callable[[Request], Awaitable[Reply]]


async def serve(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    answer: Answer,
    internal_error: Callable[[str], Reply],
    max_body_bytes: int,
) -> None:
    """Answers one HTTP request with ``answer``; ``internal_error(request_id)`` is the reply
    when it raises. ``request.state.error_codes`` (the log's ``errors``) and
    ``request.state.principal`` (its ``account`` and ``caller``) are the route's to set."""
    started = time.perf_counter()
    request = Request(scope, limit_body(scope, receive, max_body_bytes))
    state = request.state
    request_id = state.request_id = new_request_id()
    state.error_codes = []
    try:
        reply = await answer(request)
    except Exception:
        logger.exception("unexpected error request_id=%s", request_id)
        reply = internal_error(request_id)
        state.error_codes = ["INTERNAL_SERVER_ERROR"]
    reply.headers.append((b"x-request-id", request_id.encode()))
    try:
        await reply(scope, request.receive, send)
    finally:
        access.log_request(request, reply.status, started)


async def caller(request: Request, view: GraphQLView, rate_limiter: Limiter | None) -> Context:
    """The request's context as ``/graphql`` makes it: the caller its bearer token names (or
    why the token was refused: ``Context.require_principal`` says so when it matters), then
    one turn of the caller's rate limit, which raises ``RateLimited`` when none is left."""
    context = view.new_context(request, None, request.state.request_id)
    header = request.headers.get("authorization")
    if header is not None:
        await authenticate(context, header, view.validator)
    request.state.principal = context.principal
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
