"""The front door's pieces for an HTTP route beside ``/graphql`` (Get Token, ``app.oauth``):
a request id, the body's size limit, an unexpected error turned into a 500 naming the request
id, the ``x-request-id`` header and the access log line, as ``app.api.endpoint`` gives
``/graphql``. The route says how its answers and its 500 look.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from app.api import access
from app.api.body import limit_body
from app.api.endpoint import Reply
from app.encoding import new_request_id

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
