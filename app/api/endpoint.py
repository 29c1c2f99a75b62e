"""The ``/graphql`` front door: every request to the endpoint passes here once.

For HTTP, each concern is handled here whichever route then answers: the request id, the
bearer token, the rate limit, the body's size and strict JSON, the response's media type, the
shape and status of errors, and the access log line. A document with a plan
(``app.api.documents``) is then run directly; any other request goes on to Strawberry's view
(``app.api.view``) with the context made here. WebSockets go to the view as they come.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_plus

from cross_web import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.exceptions import MissingQueryError
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.types import ExecutionResult

from app import tracing
from app.api import access, documents, frontdoor
from app.api.body import InvalidJSON, decode_json
from app.api.context import Context, authenticate
from app.api.frontdoor import Reply
from app.api.persisted import PersistedQueries, PersistedQueryRefusal
from app.api.view import INVALID_TOKEN, JSON, GraphQLView, negotiate, shape_result
from app.encoding import encode_json
from app.errors import RateLimited, ServiceError, Unauthenticated
from app.ratelimit import Limiter, caller_key

logger = logging.getLogger("app.errors")

# The members of a request a plan can take (of ``extensions``, it reads only the persisted
# query; the schema reads none); any other is the view's.
_REQUEST_KEYS = frozenset({"query", "variables", "operationName", "extensions"})


class Endpoint:
    """The ``/graphql`` endpoint. ``cors``, the application's CORS middleware, applies to
    requests from a browser's page (those with an ``Origin`` header). Any other request skips
    the middleware's pass over its response and gets the headers the middleware adds to such
    a request (``Vary: Origin``), learnt from the middleware itself at the first one."""

    def __init__(
        self,
        view: GraphQLView,
        compiler: documents.Compiler,
        rate_limiter: Limiter | None,
        cors: Middleware | None = None,
    ) -> None:
        self.view = view
        self.compiler = compiler
        self.rate_limiter = rate_limiter
        self._cors = cors
        self._cross_origin = cors.cls(self._http, *cors.args, **cors.kwargs) if cors else None
        # What the middleware adds for a request without Origin; None until learnt.
        self._same_origin_headers: list[tuple[bytes, bytes]] | None = None if cors else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            # A WebSocket connection: its span lasts as long as it does, its operations in it.
            span = tracing.request(scope)
            try:
                await self.view(scope, receive, send)
            finally:
                if span is not None:
                    span.end()
            return
        headers = _read_headers(scope)
        if b"origin" in headers and self._cross_origin is not None:
            await self._cross_origin(scope, receive, send)
            return
        added = self._same_origin_headers
        if added is None:
            assert self._cors is not None
            added = self._same_origin_headers = await _added_without_origin(self._cors)
        await self._answer_http(scope, receive, send, headers, added)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._answer_http(scope, receive, send, _read_headers(scope), ())

    async def _answer_http(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: _Headers,
        added: Iterable[tuple[bytes, bytes]],
    ) -> None:
        async def answer(request: Request, state: access.Exchange) -> Reply | Response:
            return await self._answer(request, state, headers)

        await frontdoor.serve(
            scope, receive, send, answer, _internal_error, self.view.settings.max_body_bytes, added
        )

    async def _answer(
        self, request: Request, state: access.Exchange, headers: _Headers
    ) -> Reply | Response:
        """The reply to ``request``; what its access line says is noted in ``state``."""
        view = self.view
        request_id = state.request_id
        context = view.new_context(request, None, request_id)
        header = headers.get(b"authorization")
        if header is not None:
            await authenticate(context, header, view.validator)
        state.principal = context.principal
        if self.rate_limiter is not None:
            # After the token is checked, so that nobody can spend another's requests.
            client = request.client.host if request.client else None
            try:
                # frontdoor.take_turn's work, inline: no coroutine of its own per request.
                waiting = self.rate_limiter.take(caller_key(context.principal, client))
                if waiting is not None:  # a store shared by several processes
                    await waiting
            except RateLimited as error:
                state.error_codes = [error.code]
                retry = frontdoor.retry_after(error)
                return _refusal(error, 429, headers=[("retry-after", retry)])
        if context.auth_error is not None:
            # A token presented and refused is a 401 whatever the operation, even one that
            # runs without a token (introspection): the client must learn its token is bad.
            refused = Unauthenticated(context.auth_error)
            state.error_codes = [refused.code]
            return _refusal(refused, 401, headers=INVALID_TOKEN)
        try:
            operation = await _operation(request, headers, self.compiler.persisted)
        except HTTPException as error:
            state.error_codes = ["BAD_USER_INPUT"]
            return _request_error(error.reason, error.status_code)
        except PersistedQueryRefusal as error:
            state.error_codes = [error.code]
            return _refusal(error, error.status, error.headers)
        # Without a token only introspection may run (app.api.limits), and no plan is of
        # introspection: such requests go straight on, and never compile a document.
        if operation is not None and context.principal is not None:
            query, variables, operation_name = operation
            plan = self.compiler.plan(query, operation_name, state.method)
            if plan is not None:
                state.operation = plan.name
                state.field = plan.field_node.name.value
                result = await documents.execute(plan, context, variables)
                if result is not None:
                    return self._reply(state, result, headers)
        return await self._view(request, context, state)

    def _reply(self, state: access.Exchange, result: ExecutionResult, headers: _Headers) -> Reply:
        media_type, content_type = _media_type(headers.get(b"accept", ""))
        shaped = shape_result(result, media_type, state.request_id)
        state.error_codes = shaped.codes
        body = encode_json(shaped.body)
        return Reply(shaped.status or 200, body, content_type, shaped.headers)

    async def _view(
        self, request: Request, context: Context, state: access.Exchange
    ) -> Reply | Response:
        # The view notes the operation's name and the errors' codes in the request's state.
        noted = request.state
        noted.request_id = state.request_id
        try:
            reply = await self.view.run(request, context=context)
        except HTTPException as error:
            state.error_codes = ["BAD_USER_INPUT"]
            if isinstance(error.__cause__, InvalidOperationTypeError):
                # GraphQL over HTTP: a mutation sent with GET is 405, naming the method to use.
                return _request_error(error.reason, 405, headers=[("allow", "POST")])
            headers = [("allow", "GET, POST")] if error.status_code == 405 else []
            return _request_error(error.reason, error.status_code, headers=headers)
        except MissingQueryError:
            state.error_codes = ["BAD_USER_INPUT"]
            return _request_error("No GraphQL query found in the request", 400)
        except PersistedQueryRefusal as error:  # from the view's parse_http_body
            state.error_codes = [error.code]
            return _refusal(error, error.status, error.headers)
        else:
            state.error_codes = getattr(noted, "error_codes", state.error_codes)
            return reply
        finally:
            state.operation = getattr(noted, "operation", state.operation)
            state.field = getattr(noted, "field", state.field)


_Headers = dict[bytes, str]
# The request headers the front door reads; the first of each counts, as Starlette reads it.
_READ = frozenset({b"authorization", b"accept", b"content-type", b"origin"})


@functools.lru_cache(maxsize=64)
def _media_type(accept: str) -> tuple[str, str]:
    """The response's media type for an ``Accept`` header (the same text request after
    request), and its ``Content-Type``."""
    media_type = negotiate(accept)
    return media_type, f"{media_type}; charset=utf-8"


async def _added_without_origin(cors: Middleware) -> list[tuple[bytes, bytes]]:
    """The headers the ``cors`` middleware adds to a response, without headers of its own, to
    a request without ``Origin``."""
    sent: list[Message] = []

    async def bare(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def keep(message: Message) -> None:
        sent.append(message)

    async def nothing() -> Message:
        return {"type": "http.disconnect"}

    probe = {"type": "http", "method": "GET", "path": "/", "query_string": b"", "headers": []}
    await cors.cls(bare, *cors.args, **cors.kwargs)(probe, nothing, keep)
    return [(bytes(name), bytes(value)) for name, value in sent[0]["headers"]]


def _read_headers(scope: Scope) -> _Headers:
    headers: _Headers = {}
    for name, value in scope["headers"]:
        if name in _READ and name not in headers:
            headers[name] = value.decode("latin-1")
    return headers


async def _operation(
    request: Request, headers: _Headers, persisted: PersistedQueries
) -> tuple[Any, Any, Any] | None:
    """The request's document (its query, or the one its persisted query names), variables
    and operation name, when a plan may take them: None for anything else (a batch, a
    parameter twice, a stream asked for, extensions that are no object). Reads a POST's body
    within the size limit as strict JSON, and refuses what no route would take
    (``HTTPException``, ``PersistedQueryRefusal``)."""
    accept = headers.get(b"accept", "")
    # Streaming transports (server-sent events, multipart) are Strawberry's to negotiate.
    if "text/event-stream" in accept or "multipart/" in accept:
        data: Any = None
    elif request.method == "GET":
        data = _get_request(request.scope["query_string"])
    elif request.method == "POST":
        data = await _post_request(request, headers)
    else:
        return None
    if not isinstance(data, dict) or not data.keys() <= _REQUEST_KEYS:
        return None  # a batch, or what the view reads (and refuses) as it always does
    extensions = data.get("extensions")
    if not isinstance(extensions, dict | None):
        return None
    query = persisted.document(data.get("query"), extensions)
    return query, data.get("variables"), data.get("operationName")


def _get_request(query_string: bytes) -> dict[str, Any] | None:
    """A GET's request, its variables and extensions read as JSON; None when the view is to
    read it."""
    params: dict[str, Any] | None = query_parameters(query_string)
    if params is None:
        return None
    for name in _JSON_PARAMETERS:
        if params.get(name):
            read = _extensions_once if name == "extensions" else decode_json
            try:
                params[name] = read(params[name])
            except InvalidJSON:
                return None  # the view says what is wrong with it
        else:
            params.pop(name, None)
    return params


async def _post_request(request: Request, headers: _Headers) -> object:
    """A POST's body within the size limit as strict JSON, which must be an object or a
    batch."""
    # Compared as written, as Strawberry compares it.
    media_type = headers.get(b"content-type", "").split(";")[0].strip()
    if media_type != JSON:
        raise HTTPException(415, "a GraphQL request is POSTed as Content-Type: application/json")
    try:
        data = decode_json(await request.body())
    except InvalidJSON as error:
        raise HTTPException(400, f"the request is not valid JSON: {error.reason}") from None
    if not isinstance(data, dict | list):
        raise HTTPException(
            400, "the request body must be a JSON object with the operation's `query`"
        )
    return data


def query_parameters(query_string: bytes) -> dict[str, str] | None:
    """A GET's parameters as Starlette reads them (``parse_qsl``, blank values kept), or None
    when one is not a request's or comes twice (the view then reads them). The names, the
    document and the extensions (a persisted query's hash), the same text request after
    request, are unquoted once each."""
    params: dict[str, str] = {}
    for part in query_string.decode("latin-1").split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        name = _unquote_once(name)
        if name in params or name not in _REQUEST_KEYS:
            return None
        params[name] = _unquote_once(value) if name in _REPEATED else unquote_plus(value)
    return params


# A GET's parameters whose text comes again and again (a document, a persisted query's hash).
_REPEATED = frozenset({"query", "extensions"})
# A GET's parameters that are JSON text; blank, they are left out.
_JSON_PARAMETERS = ("variables", "extensions")


@functools.lru_cache(maxsize=256)
def _unquote_once(raw: str) -> str:
    return unquote_plus(raw)


@functools.lru_cache(maxsize=256)
def _extensions_once(raw: str) -> object:
    """A GET's extensions read as strict JSON once per text (a persisted query's hash comes
    again and again). Shared by the requests that send it: nothing changes it."""
    return decode_json(raw)


def _refusal(
    error: ServiceError,
    status: int,
    headers: Iterable[tuple[str, str]] = (),
    extensions: dict[str, Any] | None = None,
) -> Reply:
    """A ``ServiceError`` raised before GraphQL ran (a rate limit), as a GraphQL error body."""
    members = {"code": error.code, **error.extensions, **(extensions or {})}
    body = {"errors": [{"message": error.message, "extensions": members}]}
    return Reply(status, encode_json(body), JSON, headers)


def _internal_error(request_id: str) -> Reply:
    error = ServiceError(f"Internal server error (request id {request_id})")
    return _refusal(error, 500, extensions={"requestId": request_id})


def _request_error(message: str, status: int, headers: Iterable[tuple[str, str]] = ()) -> Reply:
    """A request the endpoint could not even read."""
    body = {
        "errors": [
            {
                "message": message,
                "extensions": {
                    "code": "BAD_USER_INPUT",
                    "errors": [{"field": "request", "message": message}],
                },
            }
        ]
    }
    return Reply(status, encode_json(body), JSON, headers)


class GraphQLRoute:
    """Sends requests for ``path`` to ``endpoint`` ahead of the rest of the application: the
    endpoint is the whole of the route there, and the router's and middleware's layers would
    be one more pass through Python for each request (and, for a WebSocket, for each frame)."""

    def __init__(self, app: ASGIApp, endpoint: ASGIApp, path: str = "/graphql") -> None:
        self.app = app
        self.endpoint = endpoint
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] in ("http", "websocket")
            and scope["path"] == self.path
            and not scope.get("root_path")
        ):
            await self.endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)
