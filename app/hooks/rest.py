"""Hooks in Dintero's Hooks API shape:

    POST   /v1/accounts/{aid}/hooks/subscriptions                        create (201)
    GET    /v1/accounts/{aid}/hooks/subscriptions                        list
    GET    …/subscriptions/{hid}                                         one
    PUT    …/subscriptions/{hid}                                         replace
    DELETE …/subscriptions/{hid}                                         delete (204)
    POST   …/subscriptions/{hid}/ping                                    send a ping (204)
    GET    …/subscriptions/{hid}/deliveries                              the attempts log
    GET    …/{hid}/deliveries/{delivery_id}               one, with request and response
    POST   …/{hid}/deliveries/{delivery_id}/redeliver     send it again (204)

A transport, like ``app.rest``: the same front door (``app.api.frontdoor``), errors in
Dintero's shape (``app.rest.refusal``), the work done by ``app.hooks.subscriptions``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final

from cross_web import HTTPException
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from app.api import access, frontdoor
from app.api.body import InvalidJSON, decode_json
from app.api.context import Context
from app.api.frontdoor import Reply
from app.api.view import GraphQLView
from app.encoding import encode_json
from app.errors import BadUserInput, FieldError
from app.hooks import subscriptions
from app.hooks.subscriptions import AttemptView, HookInput, HookView
from app.ratelimit import Limiter
from app.rest import JSON, ErrorReply, internal_error, refusal

BASE: Final = "/v1/accounts/{aid}/hooks/subscriptions"
HOOK: Final = BASE + "/{hid}"
PING: Final = HOOK + "/ping"
DELIVERIES: Final = HOOK + "/deliveries"
DELIVERY: Final = DELIVERIES + "/{delivery_id}"
REDELIVER: Final = DELIVERY + "/redeliver"
DEFAULT_PAGE: Final = 25

Handler = Callable[[Request, Context], Awaitable[Reply]]


class HooksEndpoint:
    """The ASGI application of one of the paths, with a handler per method."""

    def __init__(
        self, view: GraphQLView, rate_limiter: Limiter | None, handlers: dict[str, Handler]
    ) -> None:
        self.view = view
        self.settings = view.settings
        self.rate_limiter = rate_limiter
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await frontdoor.serve(
            scope, receive, send, self._answer, internal_error, self.settings.max_body_bytes
        )

    async def _answer(self, request: Request, exchange: access.Exchange) -> Reply:
        try:
            handler = self.handlers.get(request.method)
            if handler is None:
                allowed = ", ".join(self.handlers)
                return ErrorReply(
                    405,
                    "METHOD_NOT_ALLOWED",
                    f"this path takes {allowed}",
                    headers=[("allow", allowed)],
                )
            context = await frontdoor.caller(request, exchange, self.view, self.rate_limiter)
            context.require_principal()
            exchange.operation = handler.__name__
            return await handler(request, context)
        except Exception as error:
            reply = refusal(error, exchange.request_id)
            if reply is None:
                raise
            exchange.error_codes = [reply.code]
            return reply


def routes(view: GraphQLView, rate_limiter: Limiter | None) -> list[Route]:
    table: dict[str, dict[str, Handler]] = {
        BASE: {"GET": list_hooks, "POST": create_hook},
        HOOK: {"GET": get_hook, "PUT": update_hook, "DELETE": delete_hook},
        PING: {"POST": ping_hook},
        DELIVERIES: {"GET": list_deliveries},
        DELIVERY: {"GET": get_delivery},
        REDELIVER: {"POST": redeliver},
    }
    return [
        Route(path, HooksEndpoint(view, rate_limiter, handlers), methods=None)
        for path, handlers in table.items()
    ]


# Handlers ----------------------------------------------------------------------------------


async def create_hook(request: Request, context: Context) -> Reply:
    given = await _hook_input(request, creating=True)
    created = await subscriptions.create_hook(
        context.require_principal(), request.path_params["aid"], given, context.settings
    )
    return _json(201, hook_body(created))


async def list_hooks(request: Request, context: Context) -> Reply:
    hooks = await subscriptions.list_hooks(context.require_principal(), request.path_params["aid"])
    return _json(200, [hook_body(hook) for hook in hooks])


async def get_hook(request: Request, context: Context) -> Reply:
    params = request.path_params
    hook = await subscriptions.get_hook(context.require_principal(), params["aid"], params["hid"])
    return _json(200, hook_body(hook))


async def update_hook(request: Request, context: Context) -> Reply:
    params = request.path_params
    given = await _hook_input(request, creating=False)
    hook = await subscriptions.update_hook(
        context.require_principal(), params["aid"], params["hid"], given, context.settings
    )
    return _json(200, hook_body(hook))


async def delete_hook(request: Request, context: Context) -> Reply:
    params = request.path_params
    await subscriptions.delete_hook(context.require_principal(), params["aid"], params["hid"])
    return _no_content()


async def ping_hook(request: Request, context: Context) -> Reply:
    params = request.path_params
    await subscriptions.ping_hook(context.require_principal(), params["aid"], params["hid"])
    return _no_content()


async def list_deliveries(request: Request, context: Context) -> Reply:
    params = request.path_params
    raw = request.query_params.get("limit")
    limit = DEFAULT_PAGE
    if raw is not None:
        if not raw.isascii() or not raw.isdigit() or len(raw) > 4:
            raise BadUserInput([FieldError("limit", "must be a whole number")])
        limit = int(raw)
    attempts, more = await subscriptions.list_attempts(
        context.require_principal(),
        params["aid"],
        params["hid"],
        limit=limit,
        starting_after=request.query_params.get("starting_after"),
    )
    headers = []
    if more and attempts:
        url = context.settings.public_url.rstrip("/") + request.url.path
        headers.append(
            ("link", f'<{url}?limit={limit}&starting_after={attempts[-1].id}>; rel="next"')
        )
    return _json(200, [attempt_summary(attempt) for attempt in attempts], headers)


async def get_delivery(request: Request, context: Context) -> Reply:
    params = request.path_params
    attempt = await subscriptions.get_attempt(
        context.require_principal(), params["aid"], params["hid"], params["delivery_id"]
    )
    return _json(200, attempt_body(attempt))


async def redeliver(request: Request, context: Context) -> Reply:
    params = request.path_params
    await subscriptions.redeliver(
        context.require_principal(), params["aid"], params["hid"], params["delivery_id"]
    )
    return _no_content()


# Bodies ------------------------------------------------------------------------------------


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def hook_body(hook: HookView) -> dict[str, Any]:
    """A hook subscription as Dintero's API gives one: the secret's type, never its value."""
    body: dict[str, Any] = {
        "id": hook.id,
        "account_id": hook.account_id,
        "config": {
            "url": hook.url,
            "content_type": hook.content_type,
            "secret": {"type": hook.secret_type},
        },
        "events": hook.events,
        "active": hook.active,
        "created_at": _time(hook.created_at),
        "created_by": hook.created_by,
        "updated_at": _time(hook.updated_at),
    }
    if hook.deactivated_at is not None:
        body["deactivated_at"] = _time(hook.deactivated_at)
        body["deactivated_reason"] = hook.deactivated_reason
    return body


def attempt_summary(attempt: AttemptView) -> dict[str, Any]:
    return {
        "id": attempt.id,
        "event_delivery": attempt.event_delivery,
        "event": attempt.event,
        "order_id": attempt.order_id,
        "created_at": _time(attempt.created_at),
        "status": attempt.status,
        "attempt": attempt.attempt,
        "response_status": attempt.response_status,
        "duration_ms": attempt.duration_ms,
    }


def attempt_body(attempt: AttemptView) -> dict[str, Any]:
    """An attempt with what was sent and answered (bodies cut at 4 KiB)."""
    response = None
    if attempt.response_status is not None:
        response = {
            "status": attempt.response_status,
            "headers": attempt.response_headers,
            "body": attempt.response_body,
        }
    return {
        **attempt_summary(attempt),
        "error": attempt.error,
        "request": {"headers": attempt.request_headers, "body": attempt.request_body},
        "response": response,
    }


def _no_content() -> Reply:
    reply = Reply(204, b"", JSON)
    reply.headers = [header for header in reply.headers if header[0] != b"content-type"]
    return reply


def _json(status: int, body: object, headers: list[tuple[str, str]] | None = None) -> Reply:
    return Reply(status, encode_json(body), JSON, headers or [])


# Reading a hook ----------------------------------------------------------------------------

_MEMBERS: Final = {"config", "events", "active"}
_CONFIG_MEMBERS: Final = {"url", "content_type", "secret"}
_SECRET_MEMBERS: Final = {"type", "value"}


async def _hook_input(request: Request, *, creating: bool) -> HookInput:
    """The posted hook: each member of its type, every wrong one named at once; the service
    then judges the values."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != JSON:
        raise HTTPException(415, f"a hook is posted as Content-Type: {JSON}")
    try:
        data = decode_json(await request.body())
    except InvalidJSON as error:
        raise BadUserInput([FieldError("body", f"is not valid JSON: {error.reason}")]) from None
    if not isinstance(data, dict):
        raise BadUserInput([FieldError("body", "must be a JSON object (a hook subscription)")])
    errors: list[FieldError] = []
    _members(data, _MEMBERS, "", errors)
    config = _object(data, "config", "", errors, required=True)
    _members(config, _CONFIG_MEMBERS, "config.", errors)
    secret = _object(config, "secret", "config.", errors, required=creating)
    _members(secret, _SECRET_MEMBERS, "config.secret.", errors)
    url = _typed(config, "url", str, "a string", errors, "config.", required=True)
    content_type = _typed(config, "content_type", str, "a string", errors, "config.")
    secret_type = _typed(secret, "type", str, "a string", errors, "config.secret.")
    value = _typed(secret, "value", str, "a string", errors, "config.secret.", required=creating)
    events = data.get("events")
    if not isinstance(events, list) or not all(isinstance(name, str) for name in events):
        errors.append(FieldError("events", "must be a list of event names"))
        events = []
    active = _typed(data, "active", bool, "true or false", errors, "")
    if errors:
        raise BadUserInput(errors)
    return HookInput(
        url=url,
        events=tuple(events),
        secret=value,
        active=True if active is None else active,
        content_type=content_type or subscriptions.CONTENT_TYPES[0],
        secret_type=secret_type or subscriptions.SECRET_TYPES[0],
    )


def _members(
    value: dict[str, Any], allowed: set[str], prefix: str, errors: list[FieldError]
) -> None:
    errors.extend(
        FieldError(prefix + member, "is not a member of a hook subscription")
        for member in value
        if member not in allowed
    )


def _object(
    parent: dict[str, Any], name: str, prefix: str, errors: list[FieldError], *, required: bool
) -> dict[str, Any]:
    value = parent.get(name)
    if value is None:
        if required:
            errors.append(FieldError(prefix + name, "is required"))
        return {}
    if not isinstance(value, dict):
        errors.append(FieldError(prefix + name, "must be an object"))
        return {}
    return value


def _typed(
    parent: dict[str, Any],
    name: str,
    kind: type,
    described: str,
    errors: list[FieldError],
    prefix: str,
    *,
    required: bool = False,
) -> Any:
    value = parent.get(name)
    if value is None:
        if required:
            errors.append(FieldError(prefix + name, "is required"))
        return None
    if not isinstance(value, kind):
        errors.append(FieldError(prefix + name, f"must be {described}"))
        return None
    return value
