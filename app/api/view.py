"""The GraphQL endpoint: authentication, media types and status codes over HTTP; the
WebSocket side is in ``app.api.websocket``.

Follows the GraphQL-over-HTTP specification: ``application/graphql-response+json`` when the
client accepts it (a request that fails before execution is then a 400), otherwise
``application/json`` with 200 for every well-formed request. A missing or refused token on an
operation that needs one is a 401 with ``WWW-Authenticate``, whatever the media type.

Before GraphQL sees a request: its body is at most ``MAX_BODY_BYTES`` of strict JSON, POSTed as
``application/json`` (``app.api.body``), and its caller is within its rate limit
(``app.ratelimit``, checked once the token is). Every request leaves one access log line
(``app.api.access``).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from cross_web import AsyncHTTPRequestAdapter, HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError, MissingQueryError
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.schema import BaseSchema
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.types import ExecutionResult
from strawberry.types.unset import UNSET, UnsetType

from app.api import access, fastpath
from app.api.body import InvalidJSON, decode_json, limit_body
from app.api.context import Context
from app.api.errors import convert, refusal_body
from app.api.websocket import Connections, LegacyWSHandler, TransportWSHandler, find_authorization
from app.auth import KeySourceError, TokenError, TokenValidator
from app.broker import Broker
from app.encoding import encode_json, new_request_id
from app.errors import RateLimited
from app.graphiql import graphiql_html
from app.ratelimit import RateLimiter
from app.settings import Settings
from app.writer import EventWriter

GRAPHQL_RESPONSE = "application/graphql-response+json"
_OBJECT_OR_LIST = re.compile(rb"[ \t\r\n]*[{\[]")
JSON = "application/json"
# Set on a request whose caller the fast HTTP route (app.api.fasthttp) has already counted.
RATE_COUNTED = "rate_counted"


class GraphQLApp(GraphQL[Context, None]):
    def __init__(
        self,
        schema: BaseSchema,
        settings: Settings,
        validator: TokenValidator,
        broker: Broker,
        writer: EventWriter,
    ) -> None:
        super().__init__(
            schema,
            graphql_ide="graphiql" if settings.graphiql else None,
            keep_alive=settings.ws_ping_interval_seconds > 0,
            keep_alive_interval=settings.ws_ping_interval_seconds,
            connection_init_wait_timeout=timedelta(seconds=settings.ws_init_timeout_seconds),
            max_subscriptions_per_connection=settings.max_subscriptions_per_connection,
            allowed_origins=settings.allowed_origins,
        )
        self.settings = settings
        self.validator = validator
        self.broker = broker
        self.writer = writer
        self.compiler = fastpath.Compiler(schema, settings)
        self.connections = Connections()
        self.rate_limiter = (
            RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
            if settings.rate_limit_per_second > 0
            else None
        )
        # Handler classes of this app's own, bound to its connections and settings.
        self.graphql_transport_ws_handler_class = type(
            "AppTransportWSHandler",
            (TransportWSHandler,),
            {
                "connections": self.connections,
                "ping_interval": settings.ws_ping_interval_seconds,
                "compiler": self.compiler,
                "payloads": fastpath.Payloads(),
            },
        )
        self.graphql_ws_handler_class = type(
            "AppLegacyWSHandler",
            (LegacyWSHandler,),
            {"connections": self.connections, "init_timeout": settings.ws_init_timeout_seconds},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        started = time.perf_counter()
        request = Request(scope, limit_body(scope, receive, self.settings.max_body_bytes))
        request.state.request_id = new_request_id()
        try:
            response = await self.run(request)
        except HTTPException as error:
            if isinstance(error.__cause__, InvalidOperationTypeError):
                # GraphQL over HTTP: a mutation sent with GET is 405, naming the method to use.
                response = _request_error(error.reason, 405)
                response.headers["allow"] = "POST"
            else:
                response = _request_error(error.reason, error.status_code)
            request.state.error_codes = ["BAD_USER_INPUT"]
        except MissingQueryError:
            response = _request_error("No GraphQL query found in the request", 400)
            request.state.error_codes = ["BAD_USER_INPUT"]
        except RateLimited as error:
            response = rate_limited_response(error)
            request.state.error_codes = [error.code]
        except Exception:
            access.log_request(request, 500, started)
            raise
        response.headers["x-request-id"] = request.state.request_id
        try:
            await response(scope, receive, send)
        finally:
            access.log_request(request, response.status_code, started)

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        request_id = getattr(request.state, "request_id", None) or new_request_id()
        request.state.request_id = request_id
        context = Context(
            request=request,
            response=response,
            settings=self.settings,
            broker=self.broker,
            writer=self.writer,
            request_id=request_id,
        )
        header = request.headers.get("authorization")
        if header is not None:
            await self._authenticate(context, header)
        if isinstance(request, Request):
            request.state.principal = context.principal
            if self.rate_limiter is not None and not getattr(request.state, RATE_COUNTED, False):
                # After the token is checked, so that nobody can spend another's requests.
                principal = context.principal
                client = request.client.host if request.client else None
                self.rate_limiter.take(
                    (principal.account_id, principal.subject) if principal else client
                )
        return context

    async def _authenticate(self, context: Context, header: str) -> None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            context.auth_error = "the Authorization header must be 'Bearer <access token>'"
            return
        try:
            context.principal = await self.validator.validate(token.strip())
        except TokenError as error:
            context.auth_error = f"invalid access token: {error}"
        except KeySourceError as error:
            context.key_error = error

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        header = find_authorization(context.connection_params)
        if header is not None:
            context.principal, context.auth_error = None, None
            await self._authenticate(context, header)
        elif context.principal is None and context.auth_error is None:
            context.auth_error = (
                'an access token is required: send {"Authorization": "Bearer <token>"} '
                "as the connection_init payload"
            )
        if context.principal is None:
            message = context.auth_error or "the token issuer's keys are unavailable"
            raise ConnectionRejectionError({"message": message})
        return cast(UnsetType, UNSET)

    def decode_json(self, data: str | bytes) -> object:
        # Strict JSON for HTTP bodies, GET variables and WebSocket messages alike.
        return decode_json(data)

    def parse_json(self, data: str | bytes) -> Any:
        try:
            return decode_json(data)
        except InvalidJSON as error:
            raise HTTPException(400, f"the request is not valid JSON: {error.reason}") from None

    async def parse_http_body(
        self, request: AsyncHTTPRequestAdapter
    ) -> GraphQLRequestData | list[GraphQLRequestData]:
        if request.method == "POST":
            # Compared as written, as Strawberry compares it after this check.
            media_type = (request.content_type or "").split(";")[0].strip()
            if media_type != JSON:
                raise HTTPException(
                    415, "a GraphQL request is POSTed as Content-Type: application/json"
                )
            # Strawberry takes any JSON other than a list for an object; a string or a number
            # would fail inside it as a server error. (The body is read once and kept.)
            if not _OBJECT_OR_LIST.match(await request.get_body()):
                raise HTTPException(
                    400, "the request body must be a JSON object with the operation's `query`"
                )
        return await super().parse_http_body(request)

    async def execute_single(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        sub_response: Response,
        context: Context,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        plan = self.compiler.plan(
            request_data.query, request_data.operation_name, request_adapter.method
        )
        if plan is not None:
            request.state.operation = plan.name
            try:
                result: ExecutionResult = await fastpath.execute(
                    plan, context, request_data.variables
                )
                return result
            except fastpath.Fallback:
                pass
        return await super().execute_single(
            request, request_adapter, sub_response, context, root_value, request_data
        )

    async def get_sub_response(self, request: Request | WebSocket) -> Response:
        sub_response = await super().get_sub_response(request)
        request.state.sub_response = sub_response
        sub_response.media_type = negotiate(request.headers.get("accept", ""))
        return sub_response

    async def render_graphql_ide(self, request: Request) -> HTMLResponse:
        return HTMLResponse(graphiql_html(self.settings))

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        sub_response: Response = request.state.sub_response
        shaped = shape_result(
            result, sub_response.media_type or JSON, getattr(request.state, "request_id", "-")
        )
        request.state.error_codes = shaped.codes
        if shaped.status is not None:
            sub_response.status_code = shaped.status
        for name, value in shaped.headers:
            sub_response.headers[name] = value
        return shaped.body

    def encode_json(self, data: object) -> str:
        # Text, not bytes: Strawberry sends bytes over WebSockets as binary frames, which
        # browser clients (graphql-ws, Apollo) cannot read.
        return encode_json(data).decode()

    def create_response(
        self, response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse], sub_response: Response
    ) -> Response:
        response = super().create_response(response_data, sub_response)
        media_type = sub_response.media_type or JSON
        response.headers["content-type"] = f"{media_type}; charset=utf-8"
        return response


def negotiate(accept: str) -> str:
    """The response media type: graphql-response+json only when the client asks for it first."""
    for part in accept.split(","):
        media_type = part.split(";")[0].strip().lower()
        if media_type == GRAPHQL_RESPONSE:
            return GRAPHQL_RESPONSE
        if media_type in {JSON, "*/*", "application/*"}:
            return JSON
    return JSON


@dataclass(frozen=True)
class Shaped:
    """An execution result as the HTTP response carries it."""

    body: GraphQLHTTPResponse
    status: int | None  # None: the default, 200
    headers: tuple[tuple[str, str], ...]
    codes: list[str]  # the errors' extensions.code, for the access log


def shape_result(result: ExecutionResult, media_type: str, request_id: str) -> Shaped:
    """The body, status and extra headers of ``result`` answered as ``media_type``."""
    errors = result.errors or []
    if errors:
        # A syntax error raised by ParserCache's parse hook escapes the operation hook that
        # maps errors (ErrorCodes): map whatever it missed here, so every error has a code.
        errors = [
            error if (error.extensions or {}).get("code") else convert(error, request_id)
            for error in errors
        ]
    body: GraphQLHTTPResponse = {"data": result.data}
    if errors:
        body["errors"] = [error.formatted for error in errors]
    if result.extensions:
        body["extensions"] = result.extensions

    codes = {(e.extensions or {}).get("code") for e in errors}
    failed_before_execution = result.data is None and all(not e.path for e in errors)
    status: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    if "UNAUTHENTICATED" in codes:
        status = 401
        headers = (("www-authenticate", 'Bearer error="invalid_token"'),)
    elif failed_before_execution and media_type == GRAPHQL_RESPONSE:
        status = 400
    if failed_before_execution:
        # No operation ran, so per the specification there is no data entry at all.
        del body["data"]
    return Shaped(body, status, headers, sorted(str(code) for code in codes))


def rate_limited_response(error: RateLimited) -> Response:
    response = JSONResponse(refusal_body(error), status_code=429, media_type=JSON)
    response.headers["retry-after"] = str(max(1, math.ceil(error.retry_after)))
    return response


def _request_error(message: str, status_code: int) -> Response:
    """A request the endpoint could not even read, answered as a GraphQL error body."""
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
    return JSONResponse(body, status_code=status_code, media_type=JSON)
