"""Order events in Dintero's REST shape, beside GraphQL:

    POST /v1/accounts/{aid}/shopping/orders/{order_id}/events    create one event
    GET  /v1/accounts/{aid}/shopping/orders/{order_id}/events    {"events": [...], "state"}

A transport and nothing more. The front door is ``/graphql``'s (``app.api.frontdoor``: request
id, bearer token, rate limit, body limit, strict JSON, access log line), and the work is the
root fields' (``app.api.operations``): the same validation, authorization, idempotency,
versions and combined state. What is REST's own is read and written here: Dintero's field
names, the ``Idempotency-Key`` and ``If-Match`` headers, the collection's ``ETag``, paging by
``limit`` and ``starting_after``, and errors in Dintero's shape (``refusal``, the one place a
domain error becomes a status).
"""

from __future__ import annotations

import logging
import re
import typing
from dataclasses import MISSING, fields
from http import HTTPStatus
from types import SimpleNamespace
from typing import Any, Final

from cross_web import HTTPException
from starlette.requests import Request
from starlette.types import Receive, Scope, Send
from strawberry.utils.str_converters import to_camel_case

from app import events, validation
from app.api import access, frontdoor, operations
from app.api.body import InvalidJSON, decode_json
from app.api.frontdoor import Reply
from app.api.types import OrderEventInput
from app.api.view import INVALID_TOKEN, GraphQLView
from app.db import is_unavailable
from app.encoding import encode_json
from app.errors import (
    BadUserInput,
    Conflict,
    FieldError,
    Forbidden,
    NotFound,
    RateLimited,
    ServiceError,
    Unauthenticated,
)
from app.ratelimit import Limiter
from app.records import EVENTS_PATH, FIELD_NAMES, EventState, NewEvent, StoredEvent, links
from app.records import decode_cursor as _decode_cursor
from app.validation import EVENT_RULES

logger = logging.getLogger("app.errors")

PATH: Final = EVENTS_PATH
JSON: Final = "application/json"
# An event id's length at most (the event_id column's; ids made here are UUIDs, 36).
METHODS: Final = ("GET", "POST")

# The event's fields a REST answer leaves out: where it belongs (the path says it) and its
# place in the account's log (a GraphQL cursor's business).
_NOT_IN_REST: Final = frozenset({"account_id", "order_id", "position"})
# An Order Status Event's members, Dintero's names: the stored fields, then ``_links``.
EVENT_MEMBERS: Final = tuple(name for name in FIELD_NAMES if name not in _NOT_IN_REST)
# The members a client posts (``NewEvent``'s fields): the REST names are the Python ones.
_NEW_EVENT_TYPES: Final = typing.get_type_hints(NewEvent)
REQUIRED_MEMBERS: Final = tuple(
    field.name for field in fields(NewEvent) if field.default is MISSING
)
STATES: Final = tuple(state.value for state in EventState)
# Refusals name members in this order; members an event has not come last.
_MEMBER_ORDER: Final = {name: index for index, name in enumerate(_NEW_EVENT_TYPES)}

# The GraphQL arguments that REST names otherwise, by their GraphQL names (the names a
# ``FieldError`` gives); the event's fields are its members in snake case (``_rest_field``).
REST_NAMES: Final = {
    "accountId": "aid",
    "first": "limit",
    "after": "starting_after",
    "idempotencyKey": "Idempotency-Key",
    "expectedVersion": "If-Match",
}

# The status of each refusal of the service; ``refusal`` adds what the HTTP layer refuses.
_STATUS: Final[dict[type[ServiceError], int]] = {
    BadUserInput: 400,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    RateLimited: 429,
}


class EventsEndpoint:
    """The ASGI application of ``PATH``."""

    def __init__(self, view: GraphQLView, rate_limiter: Limiter | None) -> None:
        self.view = view
        self.settings = view.settings
        self.rate_limiter = rate_limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await frontdoor.serve(
            scope, receive, send, self._answer, internal_error, self.settings.max_body_bytes
        )

    async def _answer(self, request: Request, exchange: access.Exchange) -> Reply:
        try:
            return await self._run(request, exchange)
        except Exception as error:
            reply = refusal(error, exchange.request_id)
            if reply is None:
                raise  # frontdoor.serve logs it and answers internal_error
            exchange.error_codes = [reply.code]
            return reply

    async def _run(self, request: Request, exchange: access.Exchange) -> Reply:
        if request.method not in METHODS:
            raise HTTPException(405, f"this path takes {' or '.join(METHODS)}")
        context = await frontdoor.caller(request, exchange, self.view, self.rate_limiter)
        # Before the body is read: a caller without a token learns only that.
        context.require_principal()
        account_id = request.path_params["aid"]
        order_id = request.path_params["order_id"]
        public_url = self.settings.public_url
        if request.method == "POST":
            exchange.operation = operations.create_order_event.__name__
            exchange.field = to_camel_case(exchange.operation)
            event = await _event_input(request)
            created = await operations.create_order_event(
                context,
                account_id,
                order_id,
                event,
                request.headers.get("idempotency-key"),
                _expected_version(request.headers.get("if-match")),
            )
            return _json(200, event_body(created.stored, public_url))
        exchange.operation = operations.order_events.__name__
        exchange.field = to_camel_case(exchange.operation)
        limit, starting_after = _page_parameters(request, self.settings.max_page_size)
        after = None
        if starting_after is not None:
            after = await events.cursor_of(
                context.require_principal(), account_id, order_id, starting_after
            )
        collection = await operations.order_events(context, account_id, order_id, limit, after)
        page = collection.page_info
        stored = [event.stored for event in collection.events]
        version = await _order_version(account_id, order_id, stored, page.has_next_page, after)
        headers = [("etag", etag(version))]
        if page.has_next_page and stored:
            (link,) = links(account_id, order_id, public_url)
            next_page = f"{link.href}?limit={limit}&starting_after={stored[-1].id}"
            headers.append(("link", f'<{next_page}>; rel="next"'))
        body = {
            "events": [event_body(event, public_url) for event in stored],
            "state": EventState(collection.state).value,
        }
        return _json(200, body, headers)


def event_body(event: StoredEvent, public_url: str) -> dict[str, Any]:
    """An Order Status Event as Dintero's API gives it; a member without a value (no
    description, no metadata) is left out."""
    body: dict[str, Any] = {}
    for name in EVENT_MEMBERS:
        value = getattr(event, name)
        if value is not None:
            body[name] = value
    body["state"] = event.state.value
    body["created_at"] = event.created_at_text
    body["_links"] = [
        {"href": link.href, "rel": link.rel}
        for link in links(event.account_id, event.order_id, public_url)
    ]
    return body


def etag(version: int) -> str:
    """The collection's entity tag: the order's version (0 before its first event)."""
    return f'"{version}"'


# Reading the request -----------------------------------------------------------------------


async def _event_input(request: Request) -> OrderEventInput:
    """The posted event: a JSON object of ``NewEvent``'s members, each of its type. Every
    member of a wrong type is named at once; the service's rules then check the values."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != JSON:
        raise HTTPException(415, f"an event is posted as Content-Type: {JSON}")
    try:
        data = decode_json(await request.body())
    except InvalidJSON as error:
        raise BadUserInput([FieldError("body", f"is not valid JSON: {error.reason}")]) from None
    if not isinstance(data, dict):
        raise BadUserInput([FieldError("body", "must be a JSON object (an order event)")])
    errors = [
        FieldError(name, "is not a member of an order event")
        for name in data
        if name not in _NEW_EVENT_TYPES
    ]
    given: dict[str, Any] = {}
    for name, hint in _NEW_EVENT_TYPES.items():
        value = data.get(name)
        if value is None:
            if name in REQUIRED_MEMBERS:
                errors.append(FieldError(name, "is required"))
            continue
        problem = _type_problem(hint, value)
        if problem:
            errors.append(FieldError(name, problem))
        else:
            given[name] = EventState(value) if hint is EventState else value
    if errors:
        # The members of the right type are judged by their rules too, so that one answer
        # names every bad member (the service would judge them only once all are typed).
        validation.check_event(
            SimpleNamespace(**(dict.fromkeys(EVENT_RULES) | given)), "event", errors
        )
        errors.sort(
            key=lambda error: _MEMBER_ORDER.get(rest_field(error.field), len(_MEMBER_ORDER))
        )
        raise BadUserInput(errors)
    return OrderEventInput(**given)


def _type_problem(hint: Any, value: Any) -> str | None:
    if hint is EventState:
        return None if value in STATES else f"must be one of {', '.join(STATES)}"
    if str in (hint, *typing.get_args(hint)):
        return None if isinstance(value, str) else "must be a string"
    return None  # any JSON value: the service's rule for the member judges it


# A strong entity tag of a version, as ``etag`` writes it.
_ETAG: Final = re.compile(r'"([0-9]{1,10})"')


def _expected_version(if_match: str | None) -> int | None:
    """``If-Match``: the order's version the event is for (``expectedVersion``); ``*`` asks
    only that the collection exist, which it always does (an order without events is at
    version 0)."""
    if if_match is None or if_match.strip() == "*":
        return None
    match = _ETAG.fullmatch(if_match.strip())
    if match is None:
        raise BadUserInput(
            [FieldError("If-Match", 'must be one ETag of the collection, such as "3"')]
        )
    return int(match[1])


def _page_parameters(request: Request, max_page_size: int) -> tuple[int, str | None]:
    """``limit`` (by default the page cap, ``MAX_PAGE_SIZE``: the whole timeline when it is
    that short) and ``starting_after``; the service checks the limit's range."""
    params = request.query_params
    raw = params.get("limit")
    limit = max_page_size
    if raw is not None:
        if not raw.isascii() or not raw.isdigit() or len(raw) > 10:
            raise BadUserInput([FieldError("limit", "must be a whole number")])
        limit = int(raw)
    return limit, params.get("starting_after")


async def _order_version(
    account_id: str, order_id: str, page: list[StoredEvent], more: bool, after: str | None
) -> int:
    """The order's version: the last event's. A page that ends the timeline has it, or (when
    empty) the event it started after; otherwise it is read."""
    if not more:
        if page:
            return page[-1].version
        return 0 if after is None else _decode_cursor(after)[1]
    latest = await events.latest(account_id, order_id)
    return 0 if latest is None else latest.version


# Answers -----------------------------------------------------------------------------------


def _json(status: int, body: object, headers: list[tuple[str, str]] | None = None) -> Reply:
    return Reply(status, encode_json(body), JSON, headers or [])


class ErrorReply(Reply):
    """A refusal; its ``code`` is the access log's ``errors``."""

    __slots__ = ("code",)

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        errors: list[dict[str, str]] | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        body = {"error": {"code": code, "message": message, "errors": errors or []}}
        super().__init__(status, encode_json(body), JSON, headers or [])
        self.code = code


def rest_field(name: str) -> str:
    """A ``FieldError``'s field as REST names it: ``event.serviceStatus`` is the member
    ``service_status``, ``accountId`` the path's ``aid``, ``first`` the query's ``limit``."""
    name = name.removeprefix("event.")
    if name in REST_NAMES:
        return REST_NAMES[name]
    return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def refusal(error: Exception, request_id: str) -> ErrorReply | None:
    """The answer to a refused request, in Dintero's shape ``{"error": {"code", "message",
    "errors": [{"field", "message"}]}}``: the one place where a refusal gets its status.
    None for an error that is no refusal (a bug): the caller lets it become a 500."""
    if isinstance(error, HTTPException):  # the body limit's 413, and 405 and 415 from here
        allow = [("allow", ", ".join(METHODS))] if error.status_code == 405 else []
        code = HTTPStatus(error.status_code).name
        return ErrorReply(error.status_code, code, error.reason, headers=allow)
    if isinstance(error, ServiceError):
        status = next(s for kind, s in _STATUS.items() if isinstance(error, kind))
        headers: list[tuple[str, str]] = []
        errors: list[dict[str, str]] = []
        if isinstance(error, BadUserInput):
            errors = [{"field": rest_field(e.field), "message": e.message} for e in error.errors]
            message = "Invalid input: " + ", ".join(e["field"] for e in errors)
            return ErrorReply(status, error.code, message, errors)
        if isinstance(error, Unauthenticated):
            headers = list(INVALID_TOKEN)
        elif isinstance(error, RateLimited):
            headers = [("retry-after", frontdoor.retry_after(error))]
        elif isinstance(error, Conflict) and "currentVersion" in error.extensions:
            # Only If-Match asks for a version: its precondition failed.
            status = 412
            headers = [("etag", etag(error.extensions["currentVersion"]))]
        return ErrorReply(status, error.code, error.message, headers=headers)
    if is_unavailable(error):
        # Not a bug, and many requests fail alike during an outage: one line each, no trace.
        logger.warning(
            "database unavailable request_id=%s error=%s: %s",
            request_id,
            type(error).__name__,
            error,
        )
        message = f"The database is unavailable; try again shortly (request id {request_id})"
        return ErrorReply(503, "SERVICE_UNAVAILABLE", message, headers=[("retry-after", "1")])
    return None


def internal_error(request_id: str) -> ErrorReply:
    return ErrorReply(
        500, "INTERNAL_SERVER_ERROR", f"Internal server error (request id {request_id})"
    )
