"""The fast HTTP route: the compiled documents' requests answered at the ASGI level (and
WebSockets handed straight to the GraphQL view).

Most HTTP traffic is a few fixed documents (``app.api.fastpath`` compiles them), sent with a
valid token as plain JSON. For those, the general path (Starlette's request objects,
Strawberry's view, the middleware stack) costs more than the database round trip. This
middleware answers them itself, with the same checks, the same service calls, the same
response shaping (``app.api.view.shape_result``) and the same access log line.

It steps aside — hands the request, body included, to the application unchanged — whenever
anything is out of the ordinary: another path or method, an ``Origin`` header (CORS is the
stack's), a media type or ``Accept`` other than JSON, a body that is too large or not strict
JSON, request keys other than ``query``, ``variables`` and ``operationName``, a document
without a plan, a missing or refused token, or a plan that falls back before running. The
ordinary route then gives the ordinary answer, errors included; ``tests/test_fasthttp.py``
holds the two routes to the same responses.
"""

from __future__ import annotations

import functools
import time
from typing import Any
from urllib.parse import unquote_plus

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import access, fastpath
from app.api.body import InvalidJSON, decode_json
from app.api.context import Context
from app.api.view import (
    JSON,
    RATE_COUNTED,
    GraphQLApp,
    negotiate,
    rate_limited_response,
    shape_result,
)
from app.auth import KeySourceError, Principal, TokenError
from app.encoding import encode_json, new_request_id
from app.errors import RateLimited

_KEYS = frozenset({"query", "variables", "operationName"})


class _StepAside(Exception):
    """Not for this route: the application answers the request."""


class FastHTTP:
    def __init__(self, app: ASGIApp, graphql: GraphQLApp, path: str = "/graphql") -> None:
        self.app = app
        self.graphql = graphql
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "websocket"
            and scope["path"] == self.path
            and not scope.get("root_path")
        ):
            # Straight to the view: CORS leaves WebSockets alone (the view checks their
            # Origin), and the router's and exception middleware's frames, a WebSocket object
            # and two send wrappers would otherwise live as long as each connection and wrap
            # every frame sent.
            await self.graphql(scope, receive, send)
            return
        if (
            scope["type"] != "http"
            or scope["path"] != self.path
            or scope.get("root_path")
            or scope["method"] not in ("GET", "POST")
        ):
            await self.app(scope, receive, send)
            return
        read: list[Message] = []
        try:
            await self._answer(scope, receive, send, read)
        except _StepAside:
            await self.app(scope, _replay(read, receive), send)

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, read: list[Message]
    ) -> None:
        started = time.perf_counter()
        authorization = content_type = accept = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is not None:
                    raise _StepAside  # which one counts is the ordinary route's to say
                authorization = value
            elif name == b"content-type":
                content_type = value
            elif name == b"accept":
                accept = value
            elif name == b"origin":
                raise _StepAside
        if authorization is None:
            raise _StepAside
        media_type = JSON if accept is None else _accepted(accept)

        method = scope["method"]
        if method == "POST":
            if content_type is None or content_type.split(b";")[0].strip() != b"application/json":
                raise _StepAside
            request = _from_body(await self._body(scope, receive, read))
        else:
            request = _from_query_string(scope["query_string"])
        query, variables, operation_name = request

        graphql = self.graphql
        plan = graphql.compiler.plan(query, operation_name, method)
        if plan is None:
            raise _StepAside
        principal = await self._principal(authorization)

        request_id = new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        client = scope.get("client")
        log = {
            "request_id": request_id,
            "method": method,
            "operation": plan.name,
            "principal": principal,
            "client": client[0] if client else None,
            "started": started,
        }
        if graphql.rate_limiter is not None:
            try:
                graphql.rate_limiter.take((principal.account_id, principal.subject))
            except RateLimited as error:
                response = rate_limited_response(error)
                response.headers["x-request-id"] = request_id
                response.headers["vary"] = "Origin"
                await response(scope, receive, send)
                access.write_line(status=429, errors=[error.code], **log)
                return
            # Should the plan fall back, the ordinary route must not count the request again.
            state[RATE_COUNTED] = True

        context = Context(
            request=Request(scope),
            response=None,
            settings=graphql.settings,
            broker=graphql.broker,
            writer=graphql.writer,
            request_id=request_id,
            principal=principal,
        )
        try:
            result = await fastpath.execute(plan, context, variables)
        except fastpath.Fallback:
            raise _StepAside from None
        except Exception:
            access.write_line(status=500, errors=[], **log)
            raise

        shaped = shape_result(result, media_type, request_id)
        body = encode_json(shaped.body)
        status = shaped.status or 200
        headers = [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", media_type.encode() + b"; charset=utf-8"),
            *((name.encode(), value.encode()) for name, value in shaped.headers),
            (b"x-request-id", request_id.encode()),
            # As the CORS middleware marks every response: it depends on the Origin.
            (b"vary", b"Origin"),
        ]
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            access.write_line(status=status, errors=shaped.codes, **log)

    async def _body(self, scope: Scope, receive: Receive, read: list[Message]) -> bytes:
        """The whole body, within the size limit; every message read is kept in ``read``."""
        limit = self.graphql.settings.max_body_bytes
        chunks = []
        size = 0
        while True:
            message = await receive()
            read.append(message)
            if message["type"] != "http.request":
                raise _StepAside  # the client went away: the application sees it so
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _StepAside  # refused as too large by the application
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _principal(self, authorization: bytes) -> Principal:
        scheme, _, token = authorization.decode("latin-1").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _StepAside
        try:
            return await self.graphql.validator.validate(token)
        except (TokenError, KeySourceError):
            raise _StepAside from None


def _accepted(accept: bytes) -> str:
    text = accept.decode("latin-1")
    # Streaming transports (server-sent events, multipart) are Strawberry's to negotiate.
    if "text/event-stream" in text or "multipart/" in text:
        raise _StepAside
    return negotiate(text)


def _from_body(body: bytes) -> tuple[str, dict[str, Any] | None, object]:
    try:
        data = decode_json(body)
    except InvalidJSON:
        raise _StepAside from None
    if not isinstance(data, dict) or not data.keys() <= _KEYS:
        raise _StepAside
    query, variables = data.get("query"), data.get("variables")
    if not isinstance(query, str) or not (variables is None or isinstance(variables, dict)):
        raise _StepAside
    return query, variables, data.get("operationName")


def _from_query_string(query_string: bytes) -> tuple[str, dict[str, Any] | None, object]:
    params: dict[str, str] = {}
    # As parse_qsl(keep_blank_values=True) reads it (as Starlette does), but the document,
    # the same text request after request, is unquoted once.
    for part in query_string.decode("latin-1").split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        name = unquote_plus(name)
        if name in params:
            raise _StepAside
        params[name] = _unquote_document(value) if name == "query" else unquote_plus(value)
    if not params.keys() <= _KEYS or "query" not in params:
        raise _StepAside
    variables: dict[str, Any] | None = None
    if params.get("variables"):
        try:
            decoded = decode_json(params["variables"])
        except InvalidJSON:
            raise _StepAside from None
        if not isinstance(decoded, dict):
            raise _StepAside
        variables = decoded
    return params["query"], variables, params.get("operationName")


@functools.lru_cache(maxsize=256)
def _unquote_document(raw: str) -> str:
    return unquote_plus(raw)


def _replay(read: list[Message], receive: Receive) -> Receive:
    """``receive`` that first gives back the messages the fast route already read."""
    pending = list(read)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
