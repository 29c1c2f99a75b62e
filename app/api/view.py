"""Strawberry's view behind the front door (``app.api.endpoint``): the GraphQL-over-HTTP
requests no plan takes, GraphiQL's page, and WebSockets (their protocols are in
``app.api.websocket``).

Follows the GraphQL-over-HTTP specification: ``application/graphql-response+json`` when the
client accepts it (a request that fails before execution is then a 400), otherwise
``application/json`` with 200 for every well-formed request. A missing or refused token on an
operation that needs one is a 401 with ``WWW-Authenticate``, whatever the media type.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from cross_web import AsyncHTTPRequestAdapter, HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.schema import BaseSchema
from strawberry.types import ExecutionResult
from strawberry.types.unset import UNSET, UnsetType

from app.api.body import InvalidJSON, decode_json
from app.api.context import Context, authenticate
from app.api.documents import Compiler, Payloads
from app.api.errors import convert
from app.api.websocket import (
    REFUSAL,
    Connections,
    LegacyWSHandler,
    TransportWSHandler,
    WebSocketAdapter,
    find_authorization,
)
from app.auth import TokenValidator
from app.broker import Broker
from app.encoding import encode_json, new_request_id
from app.graphiql import graphiql_html
from app.ratelimit import Limiter
from app.settings import Settings
from app.writer import EventWriter

GRAPHQL_RESPONSE = "application/graphql-response+json"
JSON = "application/json"


_logger = logging.getLogger("app.api")
# The parameters of a GraphQL request over GET (GraphQL over HTTP, and Apollo's extensions).
_GRAPHQL_PARAMETERS = frozenset({"query", "variables", "operationName", "extensions"})


class _OriginRefusals(logging.Filter):
    """Drops Strawberry's line for a refused WebSocket origin: the view writes its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            isinstance(record.msg, str)
            and record.msg.startswith("Rejected WebSocket connection from origin")
        )


_STRAWBERRY_WS = logging.getLogger("strawberry.ws")
_ORIGIN_REFUSALS = _OriginRefusals()


class GraphQLView(GraphQL[Context, None]):
    websocket_adapter_class = WebSocketAdapter

    def __init__(
        self,
        schema: BaseSchema,
        settings: Settings,
        validator: TokenValidator,
        broker: Broker,
        writer: EventWriter,
        compiler: Compiler,
        rate_limiter: Limiter | None = None,
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
        _STRAWBERRY_WS.addFilter(_ORIGIN_REFUSALS)  # once: addFilter skips it when there
        self.settings = settings
        self.validator = validator
        self.broker = broker
        self.writer = writer
        self.compiler = compiler
        self.connections = Connections()
        # Handler classes of this app's own, bound to its connections and settings.
        self.graphql_transport_ws_handler_class = type(
            "AppTransportWSHandler",
            (TransportWSHandler,),
            {
                "connections": self.connections,
                "ping_interval": settings.ws_ping_interval_seconds,
                "compiler": self.compiler,
                "persisted": self.compiler.persisted,
                "payloads": Payloads(),
                "rate_limiter": rate_limiter,
            },
        )
        self.graphql_ws_handler_class = type(
            "AppLegacyWSHandler",
            (LegacyWSHandler,),
            {
                "connections": self.connections,
                "init_timeout": settings.ws_init_timeout_seconds,
                "persisted": self.compiler.persisted,
                "rate_limiter": rate_limiter,
            },
        )

    def is_websocket_origin_allowed(self, request: WebSocket, origin: str) -> bool:
        """Strawberry's rule (``ALLOWED_ORIGINS``); a refusal is logged naming the setting a
        developer sets, where Strawberry's own line names its constructor's argument."""
        allowed: bool = super().is_websocket_origin_allowed(request, origin)
        if not allowed:
            _logger.warning(
                "refused a WebSocket from a page on %r: if it should connect, add that origin "
                "to ALLOWED_ORIGINS (scheme, host and port exactly; now %s)",
                origin,
                " ".join(self.settings.allowed_origins) or "empty",
            )
        return allowed

    def new_context(self, request: Request | WebSocket, response: Any, request_id: str) -> Context:
        return Context(
            request=request,
            response=response,
            settings=self.settings,
            broker=self.broker,
            writer=self.writer,
            request_id=request_id,
        )

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        # WebSockets only: the front door gives HTTP requests their context.
        context = self.new_context(request, response, new_request_id())
        header = request.headers.get("authorization")
        if header is not None:
            await authenticate(context, header, self.validator)
        return context

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        header = find_authorization(context.connection_params)
        if header is not None:
            context.principal, context.auth_error = None, None
            await authenticate(context, header, self.validator)
        elif context.principal is None and context.auth_error is None:
            context.auth_error = (
                'an access token is required: send {"Authorization": "Bearer <token>"} '
                "as the connection_init payload"
            )
        if context.principal is None:
            message = context.auth_error or "the token issuer's keys are unavailable"
            # graphql-transport-ws closes with 4403: the adapter puts this in its reason.
            setattr(context.request.state, REFUSAL, message)
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
        """Strawberry's reading, with each operation's document the one its persisted query
        names (``PersistedQueries.document``, as on the compiled route); a refusal goes to
        the front door, which answers it."""
        data = await super().parse_http_body(request)
        persisted = self.compiler.persisted
        for operation in data if isinstance(data, list) else (data,):
            document = persisted.document(operation.query, operation.extensions)
            operation.query = cast("str | None", document)
        return data

    async def get_sub_response(self, request: Request | WebSocket) -> Response:
        sub_response = await super().get_sub_response(request)
        request.state.sub_response = sub_response
        sub_response.media_type = negotiate(request.headers.get("accept", ""))
        return sub_response

    def should_render_graphql_ide(self, request: Any) -> bool:
        """GraphiQL's page goes to a browser opening the endpoint: a GET asking for
        ``text/html`` with no GraphQL parameter at all. Strawberry serves it to ``*/*`` too
        and looks only at ``query``, so that a persisted-query GET (``extensions`` alone) from
        a client accepting anything got a web page instead of an answer."""
        return (
            request.method == "GET"
            and "text/html" in request.headers.get("accept", "")
            and not _GRAPHQL_PARAMETERS.intersection(request.query_params.keys())
        )

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


# What a 401 says the caller should do (RFC 6750, 3).
INVALID_TOKEN = (("www-authenticate", 'Bearer error="invalid_token"'),)


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
        # An error raised in an extension's hook escapes the operation hook that maps errors
        # (ErrorCodes): map whatever it missed here, so every error has a code.
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
        headers = INVALID_TOKEN
    elif failed_before_execution and media_type == GRAPHQL_RESPONSE:
        status = 400
    if failed_before_execution:
        # No operation ran, so per the specification there is no data entry at all.
        del body["data"]
    return Shaped(body, status, headers, sorted(str(code) for code in codes))
