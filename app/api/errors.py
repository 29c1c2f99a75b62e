"""Maps every error of an operation to the contract's shape, in one place.

- a ``ServiceError`` keeps its message and gets its ``code`` (and extra members);
- an error graphql-core raised before running anything (syntax, validation, variables) is the
  client's bad input: ``BAD_USER_INPUT`` with the field it names, where it names one;
- the database being down or too slow (``app.db.is_unavailable``) is an outage:
  ``INTERNAL_SERVER_ERROR`` saying so, with the request id and ``retryable: true``;
- anything else is a bug: logged with the request id and replaced by
  ``INTERNAL_SERVER_ERROR`` carrying only that id.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

from graphql import GraphQLError
from strawberry.exceptions import MissingQueryError
from strawberry.extensions import SchemaExtension
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError

from app.db import is_unavailable
from app.errors import ServiceError

logger = logging.getLogger("app.errors")

# graphql-core 3.2: "Variable '$e' got invalid value 'X'; ... at 'e.state'"
_VARIABLE_FIELD = re.compile(r"Variable '\$(\w+)' got invalid value .*? at '([\w.\[\]]+)'")
# graphql-core 3.3: "Variable '$e' has invalid value at .state: ..."
_VARIABLE_PATH = re.compile(r"Variable '\$(\w+)' has invalid value at ([\w.\[\]]+):")
_VARIABLE = re.compile(r"Variable '\$(\w+)'")
_ARGUMENT_FIELD = re.compile(r"(?:Argument|Field) '([\w.]+)'")
_INPUT_FIELD = re.compile(r"(?:required|unknown) field '(\w+)'")


_DOCUMENT_REFUSALS = (MissingQueryError, CannotGetOperationTypeError, InvalidOperationTypeError)


def convert(error: GraphQLError, request_id: str) -> GraphQLError:
    original = error.original_error
    if isinstance(original, ServiceError):
        extensions: dict[str, Any] = {"code": original.code, **original.extensions}
        return _rebuild(error, original.message, extensions)
    # graphql-core 3.3 wraps a variable's coercion error: a GraphQLError as the original of an
    # error without a path (nothing ran yet) is still the client's input, not a server fault.
    # So are Strawberry's refusals of a document (no query, no such operation, an operation
    # type the route does not run): its HTTP view answers them, but over WebSocket they
    # arrive here.
    if (
        original is None
        or (isinstance(original, GraphQLError) and not error.path)
        or isinstance(original, _DOCUMENT_REFUSALS)
    ):
        if error.extensions and "code" in error.extensions:
            return error
        field = _field_named_by(error.message)
        extensions = {
            "code": "BAD_USER_INPUT",
            "errors": [{"field": field, "message": error.message}],
        }
        return _rebuild(error, error.message, extensions)
    if is_unavailable(original):
        # Not a bug, and many requests fail alike during an outage: one line each, no trace.
        logger.warning(
            "database unavailable request_id=%s path=%s error=%s: %s",
            request_id,
            ".".join(str(p) for p in error.path or ()),
            type(original).__name__,
            original,
        )
        return _rebuild(
            error,
            f"The database is unavailable; try again shortly (request id {request_id})",
            {"code": "INTERNAL_SERVER_ERROR", "requestId": request_id, "retryable": True},
        )
    logger.error(
        "unexpected error request_id=%s path=%s",
        request_id,
        ".".join(str(p) for p in error.path or ()),
        exc_info=(type(original), original, original.__traceback__),
    )
    return _rebuild(
        error,
        f"Internal server error (request id {request_id})",
        {"code": "INTERNAL_SERVER_ERROR", "requestId": request_id},
    )


def _rebuild(error: GraphQLError, message: str, extensions: dict[str, Any]) -> GraphQLError:
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions=extensions,
    )


def _field_named_by(message: str) -> str | None:
    if match := _VARIABLE_FIELD.search(message):
        return match.group(2)
    if match := _VARIABLE_PATH.search(message):
        return match.group(1) + match.group(2)
    input_field = _INPUT_FIELD.search(message)
    if match := _VARIABLE.search(message):
        return match.group(1) + (f".{input_field.group(1)}" if input_field else "")
    if match := _ARGUMENT_FIELD.search(message):
        return match.group(1)
    if input_field:
        return input_field.group(1)
    return None


class ErrorCodes(SchemaExtension):
    def on_operation(self) -> Iterator[None]:
        yield
        self._convert(self.execution_context.result)

    def on_stream_result(self, result: Any) -> Iterator[None]:
        # Each result of a subscription, before it is sent on the socket.
        self._convert(result)
        yield

    def _convert(self, result: Any) -> None:
        errors = getattr(result, "errors", None)
        if errors:
            request_id = getattr(self.execution_context.context, "request_id", "-")
            result.errors = [
                error if (error.extensions or {}).get("code") else convert(error, request_id)
                for error in errors
            ]
