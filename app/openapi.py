"""The OpenAPI 3.1 document of the REST endpoints (``app.rest``) and Get Token
(``app.oauth``), served at ``/v1/openapi.json``.

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
                "Error": _ERROR_SCHEMA,
                "Token": _TOKEN_SCHEMA,
                "TokenError": _TOKEN_ERROR_SCHEMA,
            },
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
