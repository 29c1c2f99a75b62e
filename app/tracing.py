"""Tracing (README, "Tracing"): off unless ``OTEL_TRACES_EXPORTER`` names an exporter, and free
while off: ``active`` is None, nothing of OpenTelemetry is imported, and each seam below costs
a test of ``active``. On, ``app.tracer`` (the only module that imports OpenTelemetry) makes
the spans of a trace:

    POST /graphql                      SERVER    frontdoor.serve, every route it serves
    └─ mutation CreateEvent            INTERNAL  the operation, on the compiled route and
       │                                         Strawberry's alike (``operation``)
       └─ writer batch                 INTERNAL  one group commit, linked to every request
          └─ INSERT, WITH, ...         CLIENT    PostgreSQL statements (asyncpg's instrumentation)

A WebSocket connection is one SERVER span for its whole life, its operations inside it. The
caller's W3C ``traceparent`` makes the request a child of the caller's span; the access log
line carries the trace id.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.settings import Settings
    from app.tracer import OperationSpan, RequestSpan, Tracer

# The running tracer; None while tracing is off.
active: Tracer | None = None

# What a block's seam gives while tracing is off (reusable: it holds nothing). On the path of
# every request (app.api.frontdoor, app.api.documents, the writer, the access line) the call
# sites test ``active`` themselves and call its methods: a call at each, or a with-block,
# cost a read about 1 % more (measured with callgrind), where the test costs next to nothing.
_OFF: contextlib.nullcontext[None] = contextlib.nullcontext()

# OTEL_TRACES_EXPORTER's values this service knows; "none" (the default here) is off.
EXPORTERS = ("none", "otlp", "console")


def configure(settings: Settings) -> None:
    """Turns tracing on for this process when ``settings`` names an exporter (the server's
    entry point calls this, once; tests install a tracer of their own)."""
    if settings.otel_traces_exporter == "none":
        return
    from app import tracer  # OpenTelemetry's SDK: imported only now

    install(tracer.from_environment(settings.otel_traces_exporter))


def install(tracer: Tracer | None) -> None:
    """Makes ``tracer`` the process's tracer (None: tracing off)."""
    global active
    active = tracer


def request(scope: Mapping[str, Any]) -> RequestSpan | None:
    """The span of an HTTP request or a WebSocket connection, started and current until its
    ``end`` (None while tracing is off)."""
    return None if active is None else active.request(scope)


def operation(kind: str | None, name: str | None, *, current: bool = True) -> OperationSpan | None:
    """The span of a GraphQL operation of type ``kind`` named ``name`` (``named`` may tell
    them later), a child of the current span, until its ``end``; the current span meanwhile
    unless ``current`` is false (one that outlives the call that starts it: a subscription's,
    or one Strawberry runs, made current only ``within`` what it executes). None while off,
    and in a request that is not sampled: a span in it would record nothing, at a cost."""
    return None if active is None else active.operation(kind, name, current=current)


def within(operation: OperationSpan | None) -> contextlib.AbstractContextManager[None]:
    """``operation``'s span as the current one while the block runs (nothing for None)."""
    return _OFF if active is None or operation is None else active.within(operation)


async def flush() -> None:
    """Sends the spans still queued (the process is stopping)."""
    if active is not None:
        await active.flush()


@contextlib.contextmanager
def installed(tracer: Tracer) -> Iterator[Tracer]:
    """``tracer`` as the process's tracer while the block runs (tests)."""
    previous = active
    install(tracer)
    try:
        yield tracer
    finally:
        install(previous)
