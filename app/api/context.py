"""What every resolver gets: the settings, the caller and the request's id."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from app import metrics
from app.auth import KeySourceError, Principal, TokenError, TokenValidator
from app.broker import Broker
from app.errors import Unauthenticated
from app.settings import Settings
from app.writer import EventWriter


@dataclass
class Context:
    request: Request | WebSocket
    response: Response | WebSocket | None
    settings: Settings
    broker: Broker
    writer: EventWriter
    request_id: str
    principal: Principal | None = None
    # Why the presented token was refused; None when there was no token or it was fine.
    auth_error: str | None = None
    # Set when the issuer's keys could not be loaded: the server's fault, not the caller's.
    key_error: Exception | None = None
    # The graphql-transport-ws connection_init payload (WebSocket only).
    connection_params: Any = None

    def require_principal(self) -> Principal:
        if self.principal is not None:
            return self.principal
        if self.key_error is not None:
            raise RuntimeError("the token issuer's keys are unavailable") from self.key_error
        raise Unauthenticated(
            self.auth_error or "an access token is required (Authorization: Bearer <token>)"
        )


async def authenticate(context: Context, header: str, validator: TokenValidator) -> None:
    """Takes the caller from an ``Authorization`` header (HTTP's, or the WebSocket
    ``connection_init`` payload's): the principal, or why the token was refused."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        context.auth_error = "the Authorization header must be 'Bearer <access token>'"
        metrics.TOKEN_FAILURES.labels("not_bearer").inc()
        return
    try:
        context.principal = await validator.validate(token.strip())
    except TokenError as error:
        context.auth_error = f"invalid access token: {error}"
        metrics.TOKEN_FAILURES.labels(error.reason).inc()
    except KeySourceError as error:
        context.key_error = error
        metrics.TOKEN_FAILURES.labels("keys_unavailable").inc()
