"""The OpenAPI 3.1 document of the REST endpoints (``app.rest``, ``app.hooks.rest``) and Get
Token (``app.oauth``), served at ``/v1/openapi.json``.

Made from what the endpoints are made of, so that it cannot drift from them: the members and
their types from ``NewEvent`` and ``StoredEvent``, each posted member's limits from the input
rule it has (``app.validation.EVENT_RULES`` and the rule's constants), the states from
``EventState``, the page cap from the settings. ``tests/test_openapi.py`` holds real answers
to it with schemathesis.
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, fields
from datetime import datetime
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse

from app import oauth, rest, validation
from app.auth import MAX_SUBJECT_LENGTH
from app.hooks import destinations, outbox, subscriptions
from app.hooks import rest as hooks_rest
from app.records import NewEvent, StoredEvent
from app.settings import Settings

PATH: Final = "/v1/openapi.json"

# The schema each input rule stands for: its limits, from the rule's own constants.
_RULE_SCHEMAS: Final[dict[object, dict[str, Any]]] = {
    validation.check_name: {"type": "string", "minLength": 1, "maxLength": validation.NAME_MAX},
    validation.check_description: {"type": "string", "maxLength": validation.DESCRIPTION_MAX},
    validation.check_metadata: {
        "type": "object",
        "description": (
            f"Free-form service data: at most {validation.METADATA_MAX_BYTES} bytes as compact "
            f"JSON and {validation.METADATA_MAX_DEPTH} levels deep; returned exactly as given."
        ),
    },
}
_STATE: Final = {"type": "string", "enum": list(rest.STATES)}


def _schema_of(name: str, hint: Any) -> dict[str, Any]:
    """A member's schema: its input rule's, or else its type's."""
    rule = validation.EVENT_RULES.get(name)
    if rule is not None:
        return dict(_RULE_SCHEMAS[rule])
    if name == "state":
        return dict(_STATE)
    if hint is int:
        return {"type": "integer", "minimum": 1}
    if hint is datetime:
        return {"type": "string", "format": "date-time"}
    limit = {"id": validation.EVENT_ID_MAX, "created_by": MAX_SUBJECT_LENGTH}.get(name)
    return {"type": "string"} | ({"maxLength": limit} if limit else {})


_NEW_HINTS: Final = typing.get_type_hints(NewEvent)
_STORED_HINTS: Final = typing.get_type_hints(StoredEvent)
# Members that may be absent from an event: those a client may leave without a value.
_OPTIONAL: Final = frozenset(f.name for f in fields(NewEvent) if f.default is None)


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {rest.JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        response["headers"] = headers
    return response


def _header(description: str, required: bool = True) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": {"type": "string"}}


_RETRY_AFTER: Final = {"Retry-After": _header("Seconds to wait before trying again.")}
# The refusals every operation of the events may answer.
_REFUSALS: Final = {
    "400": _error("Bad input: `errors` names every bad field in the REST spelling."),
    "401": _error(
        "No token, or one that is not valid.",
        {"WWW-Authenticate": _header('`Bearer error="invalid_token"`.')},
    ),
    "403": _error("The token is for another account, or lacks the scope."),
    "405": _error("Another method.", {"Allow": _header("The methods this path takes.")}),
    "429": _error("Over the caller's rate limit.", _RETRY_AFTER),
    "500": _error("An internal error; the message names the request id."),
    "503": _error("The database is unavailable; try again shortly.", _RETRY_AFTER),
}


def document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI document of this server, as its settings configure it."""
    input_properties = {name: _schema_of(name, hint) for name, hint in _NEW_HINTS.items()}
    for field in fields(NewEvent):
        if field.default not in (None, MISSING):
            input_properties[field.name]["default"] = field.default
    event_properties = {name: _schema_of(name, _STORED_HINTS[name]) for name in rest.EVENT_MEMBERS}
    event_properties["_links"] = {"type": "array", "items": {"$ref": "#/components/schemas/Link"}}
    account = {
        "name": "aid",
        "in": "path",
        "required": True,
        "description": "The account id.",
        "schema": {"type": "string", "pattern": f"^{validation.ACCOUNT_ID.pattern}$"},
    }
    paths: dict[str, Any] = {
        rest.PATH: {
            "parameters": [
                account,
                {
                    "name": "order_id",
                    "in": "path",
                    "required": True,
                    "description": "The merchant's order id: printable, without `/`.",
                    "schema": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": validation.ORDER_ID_MAX,
                        "pattern": "^[^/]+$",
                    },
                },
            ],
            "post": _create_operation(),
            "get": _list_operation(settings.max_page_size),
        }
    }
    paths.update(_hook_paths(account))
    if settings.local_issuer:
        paths[oauth.PATH] = {"parameters": [account], "post": _token_operation()}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Order events",
            "version": "1",
            "description": (
                "Order status events in Dintero's REST shape; the same operations as the "
                "GraphQL API at /graphql, with the same rules."
            ),
        },
        "servers": [{"url": settings.public_url.rstrip("/")}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "client": {"type": "http", "scheme": "basic"},
            },
            "schemas": {
                "OrderEventInput": {
                    "type": "object",
                    "properties": input_properties,
                    "required": list(rest.REQUIRED_MEMBERS),
                    "additionalProperties": False,
                },
                "OrderStatusEvent": {
                    "type": "object",
                    "properties": event_properties,
                    "required": [name for name in event_properties if name not in _OPTIONAL],
                    "additionalProperties": False,
                },
                "Link": {
                    "type": "object",
                    "properties": {"href": {"type": "string"}, "rel": {"type": "string"}},
                    "required": ["href", "rel"],
                },
                **_HOOK_SCHEMAS,
                "Error": _ERROR_SCHEMA,
                "Token": _TOKEN_SCHEMA,
                "TokenError": _TOKEN_ERROR_SCHEMA,
            },
        },
    }


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {rest.JSON: {"schema": schema}}}


def _hook_paths(account: dict[str, Any]) -> dict[str, Any]:
    """The Hooks API (``app.hooks.rest``)."""

    def path_id(name: str, description: str) -> dict[str, Any]:
        return {
            "name": name,
            "in": "path",
            "required": True,
            "description": description,
            "schema": {"type": "string"},
        }

    hook = path_id("hid", "The hook subscription's id.")
    delivery = path_id("delivery_id", "The delivery attempt's id (`id` in the deliveries log).")
    missing = {"404": _error("No such hook subscription (or delivery) in the account.")}
    body = {"415": _error("The body is not application/json."), "413": _error("Too large.")}

    def operation(
        summary: str, operation_id: str, answers: dict[str, Any], request: str | None = None
    ) -> dict[str, Any]:
        made: dict[str, Any] = {
            "summary": summary,
            "operationId": operation_id,
            "responses": {**answers, **_REFUSALS},
        }
        if request is not None:
            made["requestBody"] = {
                "required": True,
                "content": {rest.JSON: {"schema": _ref(request)}},
            }
        return made

    subscription = _answer("The hook subscription (never its secret).", _ref("HookSubscription"))
    done = _answer("Done.")
    page = {
        "name": "limit",
        "in": "query",
        "description": f"Attempts per page, newest first (default {hooks_rest.DEFAULT_PAGE}).",
        "schema": {"type": "integer", "minimum": 1, "maximum": subscriptions.MAX_PAGE},
    }
    after = {
        "name": "starting_after",
        "in": "query",
        "description": "The `id` of the last attempt seen: the page starts after it.",
        "schema": {"type": "string"},
    }
    attempts = _answer(
        "A page of the hook's delivery attempts.",
        {"type": "array", "items": _ref("HookDeliverySummary")},
    )
    attempts["headers"] = {"Link": _header("The next page, when there is one.", required=False)}
    return {
        hooks_rest.BASE: {
            "parameters": [account],
            "post": operation(
                "Create a hook subscription (a ping is sent to it)",
                "createHookSubscription",
                {"201": subscription, **body, "409": _error("The account has all its hooks.")},
                "HookSubscriptionCreate",
            ),
            "get": operation(
                "List the account's hook subscriptions",
                "hookSubscriptions",
                {
                    "200": _answer(
                        "The subscriptions.", {"type": "array", "items": _ref("HookSubscription")}
                    )
                },
            ),
        },
        hooks_rest.HOOK: {
            "parameters": [account, hook],
            "get": operation(
                "Get a hook subscription", "hookSubscription", {"200": subscription, **missing}
            ),
            "put": operation(
                "Replace a hook subscription (its secret only when one is given)",
                "updateHookSubscription",
                {"200": subscription, **missing, **body},
                "HookSubscriptionUpdate",
            ),
            "delete": operation(
                "Delete a hook subscription, its deliveries and their log",
                "deleteHookSubscription",
                {"204": done, **missing},
            ),
        },
        hooks_rest.PING: {
            "parameters": [account, hook],
            "post": operation(
                "Send a ping event", "pingHookSubscription", {"204": done, **missing}
            ),
        },
        hooks_rest.DELIVERIES: {
            "parameters": [account, hook, page, after],
            "get": operation(
                "The hook's delivery attempts", "hookDeliveries", {"200": attempts, **missing}
            ),
        },
        hooks_rest.DELIVERY: {
            "parameters": [account, hook, delivery],
            "get": operation(
                "One delivery attempt, with its request and response (bodies cut short)",
                "hookDelivery",
                {"200": _answer("The attempt.", _ref("HookDelivery")), **missing},
            ),
        },
        hooks_rest.REDELIVER: {
            "parameters": [account, hook, delivery],
            "post": operation(
                "Send an attempt's delivery again (same event_delivery)",
                "redeliverHookDelivery",
                {"204": done, **missing},
            ),
        },
    }


def _hook_input_schema(creating: bool) -> dict[str, Any]:
    secret: dict[str, Any] = {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": list(subscriptions.SECRET_TYPES)},
            "value": {
                "type": "string",
                "minLength": 1,
                "maxLength": subscriptions.SECRET_MAX,
                "description": "The key of each delivery's `event-signature` (hex HMAC-SHA1).",
            },
        },
        "required": ["value"],
        "additionalProperties": False,
    }
    config: dict[str, Any] = {
        "type": "object",
        "properties": {
            "url": {
                "type": "string",
                "maxLength": destinations.MAX_URL_LENGTH,
                "description": (
                    "An https URL whose host resolves to public addresses only (unless the "
                    "server allows http or private networks)."
                ),
            },
            "content_type": {"type": "string", "enum": list(subscriptions.CONTENT_TYPES)},
            "secret": secret,
        },
        "required": ["url", "secret"] if creating else ["url"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "config": config,
            "events": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "enum": list(outbox.EVENTS)},
            },
            "active": {"type": "boolean", "default": True},
        },
        "required": ["config", "events"],
        "additionalProperties": False,
    }


_TIME: Final = {"type": "string", "format": "date-time"}
_DELIVERY_SUMMARY: Final = {
    "id": {"type": "string"},
    "event_delivery": {"type": "string", "format": "uuid"},
    "event": {"type": "string", "enum": [outbox.PING, *outbox.EVENTS]},
    "order_id": {"type": ["string", "null"]},
    "created_at": _TIME,
    "status": {"type": "string", "enum": [outbox.DELIVERED, outbox.FAILED]},
    "attempt": {"type": "integer", "minimum": 1},
    "response_status": {"type": ["integer", "null"]},
    "duration_ms": {"type": "integer", "minimum": 0},
}
_HEADERS: Final = {"type": "object", "additionalProperties": {"type": "string"}}
_HOOK_SCHEMAS: Final = {
    "HookSubscriptionCreate": _hook_input_schema(creating=True),
    "HookSubscriptionUpdate": _hook_input_schema(creating=False),
    "HookSubscription": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "account_id": {"type": "string"},
            "config": {
                "type": "object",
                "properties": {
                    "url": {"type": "string"},
                    "content_type": {"type": "string"},
                    "secret": {
                        "type": "object",
                        "properties": {"type": {"type": "string"}},
                        "additionalProperties": False,
                    },
                },
            },
            "events": {"type": "array", "items": {"type": "string"}},
            "active": {"type": "boolean"},
            "created_at": _TIME,
            "created_by": {"type": "string"},
            "updated_at": _TIME,
            "deactivated_at": _TIME,
            "deactivated_reason": {"type": "string"},
        },
        "required": ["id", "config", "events", "active", "created_at", "updated_at"],
    },
    "HookDeliverySummary": {
        "type": "object",
        "properties": _DELIVERY_SUMMARY,
        "required": list(_DELIVERY_SUMMARY),
    },
    "HookDelivery": {
        "type": "object",
        "properties": {
            **_DELIVERY_SUMMARY,
            "error": {"type": ["string", "null"]},
            "request": {
                "type": "object",
                "properties": {"headers": _HEADERS, "body": {"type": "string"}},
            },
            "response": {
                "type": ["object", "null"],
                "properties": {
                    "status": {"type": "integer"},
                    "headers": _HEADERS,
                    "body": {"type": ["string", "null"]},
                },
            },
        },
        "required": [*_DELIVERY_SUMMARY, "request", "response"],
    },
}


def _create_operation() -> dict[str, Any]:
    return {
        "summary": "Create an order event",
        "operationId": "createOrderEvent",
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "description": (
                    "A repeat of a request with the same key answers the event it stored; "
                    "another request with the key is a 409."
                ),
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": validation.IDEMPOTENCY_KEY_MAX,
                },
            },
            {
                "name": "If-Match",
                "in": "header",
                "description": "The order's version (the collection's ETag) the event is for.",
                "schema": {"type": "string", "pattern": r'^(\*|"[0-9]{1,10}")$'},
            },
        ],
        "requestBody": {
            "required": True,
            "content": {rest.JSON: {"schema": {"$ref": "#/components/schemas/OrderEventInput"}}},
        },
        "responses": {
            "200": {
                "description": "The event as stored.",
                "content": {
                    rest.JSON: {"schema": {"$ref": "#/components/schemas/OrderStatusEvent"}}
                },
            },
            **_REFUSALS,
            "409": _error("The idempotency key was used for another request."),
            "412": _error(
                "If-Match names another version than the order's.",
                {"ETag": _header("The order's version now.")},
            ),
            "413": _error("The body is larger than the server takes."),
            "415": _error("The body is not application/json."),
        },
    }


def _list_operation(max_page_size: int) -> dict[str, Any]:
    return {
        "summary": "List an order's events",
        "operationId": "orderEvents",
        "parameters": [
            {
                "name": "limit",
                "in": "query",
                "description": f"Events per page; by default the most, {max_page_size}.",
                "schema": {"type": "integer", "minimum": 0, "maximum": max_page_size},
            },
            {
                "name": "starting_after",
                "in": "query",
                "description": "The id of the last event seen: the page starts after it.",
                "schema": {"type": "string"},
            },
        ],
        "responses": {
            "200": {
                "description": "A page of the order's events, and its combined state.",
                "headers": {
                    "ETag": _header("The order's version: If-Match of the next POST."),
                    "Link": _header("The next page, when there is one.", required=False),
                },
                "content": {
                    rest.JSON: {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "events": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/OrderStatusEvent"},
                                },
                                "state": _STATE,
                            },
                            "required": ["events", "state"],
                        }
                    }
                },
            },
            **_REFUSALS,
        },
    }


def _token_operation() -> dict[str, Any]:
    request = {
        "type": "object",
        "properties": {name: {"type": "string"} for name in oauth.PARAMETERS},
    }

    def answer(description: str, schema: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {oauth.JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }

    refusal = answer("Refused (RFC 6749 section 5.2).", "TokenError")
    return {
        "summary": "Get Token (OAuth 2 client credentials)",
        "operationId": "getToken",
        "security": [{"client": []}, {}],
        "requestBody": {
            "content": {oauth.JSON: {"schema": request}, oauth.FORM: {"schema": request}},
        },
        "responses": {
            "200": answer("An access token.", "Token"),
            "400": refusal,
            "401": refusal | {"headers": {"WWW-Authenticate": _header("`Basic`.")}},
            "405": refusal,
            "413": refusal,
            "415": refusal,
            "429": refusal | {"headers": _RETRY_AFTER},
            "500": refusal,
        },
    }


_ERROR_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                        "required": ["message"],
                    },
                },
            },
            "required": ["code", "message", "errors"],
        }
    },
    "required": ["error"],
}
_TOKEN_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "access_token": {"type": "string"},
        "token_type": {"const": "Bearer"},
        "expires_in": {"type": "integer"},
        "scope": {"type": "string"},
    },
    "required": ["access_token", "token_type", "expires_in", "scope"],
}
_TOKEN_ERROR_SCHEMA: Final = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
    "required": ["error"],
}


def route(settings: Settings) -> Any:
    """The endpoint serving the document, made once."""
    body = document(settings)

    async def openapi(_: Request) -> JSONResponse:
        return JSONResponse(body)

    return openapi
