"""The GraphQL endpoint over HTTP: authentication, media types and status codes.

Follows the GraphQL-over-HTTP specification: ``application/graphql-response+json`` when the
client accepts it (a request that fails before execution is then a 400), otherwise
``application/json`` with 200 for every well-formed request. A missing or refused token on an
operation that needs one is a 401 with ``WWW-Authenticate``, whatever the media type.
"""

from __future__ import annotations

import uuid
from typing import Any

from cross_web import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import MissingQueryError
from strawberry.http import GraphQLHTTPResponse
from strawberry.schema import BaseSchema
from strawberry.types import ExecutionResult

from app.api.context import Context
from app.api.errors import convert
from app.auth import KeySourceError, TokenError, TokenValidator
from app.graphiql import graphiql_html
from app.settings import Settings

GRAPHQL_RESPONSE = "application/graphql-response+json"
JSON = "application/json"


class GraphQLApp(GraphQL[Context, None]):
    def __init__(self, schema: BaseSchema, settings: Settings, validator: TokenValidator) -> None:
        super().__init__(schema, graphql_ide="graphiql" if settings.graphiql else None)
        self.settings = settings
        self.validator = validator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope, receive)
        request.state.request_id = uuid.uuid4().hex
        try:
            response = await self.run(request)
        except HTTPException as error:
            response = _request_error(error.reason, error.status_code)
        except MissingQueryError:
            response = _request_error("No GraphQL query found in the request", 400)
        response.headers["x-request-id"] = request.state.request_id
        await response(scope, receive, send)

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        request_id = getattr(request.state, "request_id", None) or uuid.uuid4().hex
        request.state.request_id = request_id
        context = Context(
            request=request, response=response, settings=self.settings, request_id=request_id
        )
        header = request.headers.get("authorization")
        if header is not None:
            await self._authenticate(context, header)
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

    async def get_sub_response(self, request: Request | WebSocket) -> Response:
        sub_response = await super().get_sub_response(request)
        request.state.sub_response = sub_response
        sub_response.media_type = _negotiate(request.headers.get("accept", ""))
        return sub_response

    async def render_graphql_ide(self, request: Request) -> HTMLResponse:
        return HTMLResponse(graphiql_html(self.settings))

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        sub_response: Response = request.state.sub_response
        if result.errors:
            # A syntax error raised by ParserCache's parse hook escapes the operation hook that
            # maps errors (ErrorCodes): map whatever it missed here, so every error has a code.
            request_id = getattr(request.state, "request_id", "-")
            result.errors = [
                error if (error.extensions or {}).get("code") else convert(error, request_id)
                for error in result.errors
            ]
        body: GraphQLHTTPResponse = {"data": result.data}
        if result.errors:
            body["errors"] = [error.formatted for error in result.errors]
        if result.extensions:
            body["extensions"] = result.extensions

        codes = {(e.extensions or {}).get("code") for e in result.errors or ()}
        failed_before_execution = result.data is None and all(
            not e.path for e in result.errors or ()
        )
        if "UNAUTHENTICATED" in codes:
            sub_response.status_code = 401
            sub_response.headers["www-authenticate"] = 'Bearer error="invalid_token"'
        elif failed_before_execution and sub_response.media_type == GRAPHQL_RESPONSE:
            sub_response.status_code = 400
        if failed_before_execution:
            # No operation ran, so per the specification there is no data entry at all.
            del body["data"]
        return body

    def create_response(
        self, response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse], sub_response: Response
    ) -> Response:
        response = super().create_response(response_data, sub_response)
        media_type = sub_response.media_type or JSON
        response.headers["content-type"] = f"{media_type}; charset=utf-8"
        return response


def _negotiate(accept: str) -> str:
    """The response media type: graphql-response+json only when the client asks for it first."""
    for part in accept.split(","):
        media_type = part.split(";")[0].strip().lower()
        if media_type == GRAPHQL_RESPONSE:
            return GRAPHQL_RESPONSE
        if media_type in {JSON, "*/*", "application/*"}:
            return JSON
    return JSON


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
