"""The access log: one JSON line per HTTP request, and one per WebSocket connection when it
ends, on the ``app.access`` logger (fields: ``write_line``).

Nothing a client sends as data is written: no token, no variables, no metadata, no query
text; the operation's name only when it is a GraphQL name. A line is JSON, so no value can
forge another line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
from graphql import FieldNode, get_operation_ast
from starlette.requests import Request
from strawberry.extensions import SchemaExtension
from strawberry.types import ExecutionContext

from app import metrics, tracing
from app.auth import Principal

logger = logging.getLogger("app.access")
_MESSAGE_ONLY = logging.Formatter("%(message)s")

_NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]{0,99}")


def graphql_name(value: object) -> str | None:
    """``value`` if it is a GraphQL name (an operation's name is the client's text), as the
    access line takes it (``write_line``, which tests it inline: it runs for every request)."""
    return value if isinstance(value, str) and _NAME.fullmatch(value) else None


class OperationName(SchemaExtension):
    """Notes an HTTP request's operation name for its access log line, and the root field
    it ran for its metrics."""

    def on_operation(self) -> Iterator[None]:
        yield
        request = getattr(self.execution_context.context, "request", None)
        if isinstance(request, Request):
            request.state.operation = self.execution_context.operation_name
            request.state.field = root_field(self.execution_context)


INTROSPECTION = "introspection"
SEVERAL = "several"


def root_field(execution: ExecutionContext) -> str | None:
    """The root field a validated operation selects (its schema name, whatever alias it has):
    ``introspection`` when it selects introspection only, ``several`` for more than one field
    (or fragments at the root), None when no valid operation ran. A name of the schema, so
    that a client cannot make up new ones."""
    document = execution.graphql_document
    if document is None or execution.pre_execution_errors:
        return None
    operation = get_operation_ast(document, execution.operation_name)
    if operation is None:
        return None
    names = set()
    for selection in operation.selection_set.selections:
        if not isinstance(selection, FieldNode):
            return SEVERAL
        if not selection.name.value.startswith("__"):
            names.add(selection.name.value)
    if not names:
        return INTROSPECTION
    return names.pop() if len(names) == 1 else SEVERAL


class Exchange:
    """An HTTP request as its access line tells it, noted while the request is answered."""

    __slots__ = (
        "client",
        "error_codes",
        "field",
        "method",
        "operation",
        "principal",
        "request_id",
        "route",
    )

    def __init__(self, scope: Mapping[str, Any], request_id: str) -> None:
        client = scope.get("client")
        self.request_id = request_id
        self.method: str = scope["method"]
        self.client: str | None = client[0] if client else None
        self.principal: Principal | None = None
        self.operation: object = None
        self.error_codes: list[str] = []
        # For the metrics: the path's template (the router's route; /graphql is routed ahead
        # of the router) and the root field that ran, both names of the application's own.
        route = scope.get("route")
        self.route: str = route.path if route is not None else scope["path"]
        self.field: str | None = None

    def log(self, status: int, started: float) -> None:
        """Writes the access log line of the request, answered with ``status``, and counts
        it in the metrics."""
        metrics.requests.answered(self.route, self.field, self.error_codes, started)
        write_line(
            request_id=self.request_id,
            method=self.method,
            operation=self.operation,
            principal=self.principal,
            client=self.client,
            status=status,
            started=started,
            errors=self.error_codes,
        )


def log_connection(
    scope: Mapping[str, Any], request_id: str, principal: Principal | None, started: float
) -> None:
    """Writes the access log line of a WebSocket connection that has ended: method
    ``WEBSOCKET``, status 101 (the upgrade), ``durationMs`` the connection's whole life, and
    the token's account and subject as its ``connection_init`` (or upgrade request)
    presented them."""
    client = scope.get("client")
    write_line(
        request_id=request_id,
        method="WEBSOCKET",
        operation=None,
        principal=principal,
        client=client[0] if client else None,
        status=101,
        started=started,
        errors=[],
    )


def write_line(
    *,
    request_id: str | None,
    method: str,
    operation: object,
    principal: Principal | None,
    client: str | None,
    status: int,
    started: float,
    errors: list[str],
) -> None:
    """Writes one access log line (an ``Exchange``'s or ``log_connection``'s):

        {"requestId": "…", "method": "POST", "operation": "Timeline", "account": "T12345678",
         "caller": "kitchen-1", "client": "203.0.113.7", "status": 200, "durationMs": 3.1,
         "errors": ["BAD_USER_INPUT"]}

    ``account`` and ``caller`` are the token's account and subject (null without a valid
    token); ``errors`` are the response's ``extensions.code``s. With tracing on, ``traceId``
    is the trace's id (``app.tracing``), as W3C ``traceparent`` writes it."""
    if not logger.isEnabledFor(logging.INFO):
        return
    if not (isinstance(operation, str) and _NAME.fullmatch(operation)):
        operation = None
    line = {
        "requestId": request_id,
        "method": method,
        "operation": operation,
        "account": principal.account_id if principal else None,
        "caller": principal.subject if principal else None,
        "client": client,
        "status": status,
        "durationMs": round((time.perf_counter() - started) * 1000, 3),
        "errors": errors,
    }
    if tracing.active is not None:
        line["traceId"] = tracing.active.trace_id()
    text = orjson.dumps(line).decode()
    if not text.isascii():
        # ASCII only: no character in a value can end the line, for any reader of the log
        # (orjson leaves U+2028 and the like as they are).
        text = json.dumps(line, separators=(",", ":"))
    handler = _as_configured()
    if handler is not None:
        # The line goes to the stream as the handler would write it, without a LogRecord
        # and the logging machinery around it (docs/benchmarks.md has what that saved).
        handler.write_line(text)
    else:
        logger.info(text)


def _as_configured() -> FlushPerTick | None:
    """The handler ``configure`` installed, if the logger is still exactly as it left it
    (one handler, its formatter, no filters, not propagating)."""
    handlers = logger.handlers
    if len(handlers) != 1 or logger.filters or logger.propagate:
        return None
    handler = handlers[0]
    if (
        type(handler) is not FlushPerTick
        or handler.formatter is not _MESSAGE_ONLY
        or handler.filters
        or handler.level > logging.INFO
    ):
        return None
    return handler


_UVICORN = logging.getLogger("uvicorn.error")


class ConnectionLines(logging.Filter):
    """Drops the INFO lines uvicorn's ``websockets-sansio`` protocol writes on ``uvicorn.error``
    for each WebSocket connection: its own "[accepted]" (with the query string, which the
    access log leaves out) and websockets' "connection open" and "connection closed" (no
    address at all). The connection's access line replaces them; ``--no-access-log`` leaves
    them on. With ``--log-level debug`` (or trace) they are written as ever."""

    _DROPPED = frozenset({'%s - "WebSocket %s" [accepted]', "connection open", "connection closed"})

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not isinstance(record.msg, str):
            return True
        return record.msg not in self._DROPPED or _UVICORN.isEnabledFor(logging.DEBUG)


_CONNECTION_LINES = ConnectionLines()


def configure() -> None:
    """Sends access lines to standard output, as they are, and drops uvicorn's own lines for
    WebSocket connections (the server's entry point calls this; tests read the lines from the
    logger)."""
    _UVICORN.addFilter(_CONNECTION_LINES)  # once: addFilter skips a filter already there
    if logger.handlers:
        return
    handler = FlushPerTick(sys.stdout)
    handler.setFormatter(_MESSAGE_ONLY)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


class FlushPerTick(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes each line at once but flushes the stream once per
    event-loop iteration: the lines of all requests answered in one iteration leave in one
    system call instead of one each. Outside a running loop it flushes every line."""

    _pending = False

    def write_line(self, text: str) -> None:
        """What ``emit`` does for a record whose formatted message is ``text``."""
        with self.lock:  # type: ignore[union-attr]  # created with the handler
            self.stream.write(text + self.terminator)
            if not self._pending:
                self.flush()

    def flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            super().flush()
            return
        if not self._pending:
            self._pending = True
            loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._pending = False
        super().flush()
