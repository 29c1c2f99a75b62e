"""OpenTelemetry's side of ``app.tracing``: the spans, their names and attributes, and the
provider the ``OTEL_*`` variables describe. Imported only when tracing is on.

What a span says is what the access log line says, and no more: methods, routes, operation
names and types, status codes, error codes; never a path's ids, a query string, a token,
variables, metadata or a document's text. A failed span gets its ``error.type``, not the
exception's message (a database's message may quote the values it refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextvars import Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Link, SpanKind, StatusCode

from app.api.access import graphql_name

Span = trace.Span

SERVICE_NAME = "order-events"
# How long a stopping process waits for its last spans to leave.
FLUSH_MILLISECONDS = 5000


class Started:
    """A span as its seam hands it out: ``end`` ends it, and if it was made the current span,
    puts back the context it replaced (in the task that made it current)."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span, token: Token[otel_context.Context] | None = None) -> None:
        self.span = span
        self.token = token

    def end(self) -> None:
        """Ends the span, once however often it is called."""
        if self.token is not None:
            otel_context.detach(self.token)
            self.token = None
        if self.span.is_recording():
            self.span.end()


class RequestSpan(Started):
    """An HTTP request's span (or a WebSocket connection's), told how it was answered."""

    __slots__ = ()

    def answered(self, status: int, error_codes: Iterable[str]) -> None:
        """The status the request was answered with, and its errors' codes (the access
        line's ``errors``). A 5xx is the span's error; a client's mistake is not."""
        span = self.span
        span.set_attribute("http.response.status_code", status)
        codes = list(error_codes)
        if codes:
            span.set_attribute("graphql.error.codes", codes)
        if status >= 500:
            span.set_attribute("error.type", str(status))
            span.set_status(StatusCode.ERROR)


class OperationSpan(Started):
    """A GraphQL operation's span."""

    __slots__ = ()

    def named(self, kind: str | None, name: str | None) -> None:
        """Names the span by the operation's type and name: ``mutation CreateEvent``, or
        ``mutation`` for an anonymous one (OpenTelemetry's GraphQL conventions). A name that
        is no GraphQL name is left out, as the access line leaves it out."""
        name = graphql_name(name)
        self.span.update_name(" ".join(part for part in (kind, name) if part) or "GraphQL")
        if kind:
            self.span.set_attribute("graphql.operation.type", kind)
        if name:
            self.span.set_attribute("graphql.operation.name", name)


class Tracer:
    """Spans of ``provider``'s; with ``statements``, PostgreSQL's statements too (asyncpg's
    instrumentation, for the whole process, until ``close``)."""

    def __init__(self, provider: TracerProvider, *, statements: bool = True) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer(SERVICE_NAME)
        self._statements = None
        if statements:
            from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

            self._statements = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
            self._statements.instrument(tracer_provider=provider)

    def close(self) -> None:
        if self._statements is not None:
            self._statements.uninstrument()
            self._statements = None

    def request(self, scope: Mapping[str, Any]) -> RequestSpan:
        parent = propagate.extract(_headers(scope))
        route = _route(scope)
        if scope["type"] == "websocket":
            # Named as the access log names a connection; an upgraded GET for HTTP.
            name, method = f"WEBSOCKET {route}", "GET"
        else:
            method = scope["method"]
            name = f"{method} {route}"
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "http.route": route,
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", "1.1"),
        }
        client = scope.get("client")
        if client:
            attributes["client.address"] = client[0]
        span = self._tracer.start_span(name, parent, SpanKind.SERVER, attributes)
        return RequestSpan(span, otel_context.attach(trace.set_span_in_context(span, parent)))

    def operation(
        self, kind: str | None, name: str | None, *, current: bool = True
    ) -> OperationSpan | None:
        if not trace.get_current_span().is_recording():
            return None  # a request not sampled: nothing in it would be
        span = self._tracer.start_span("GraphQL")
        token = otel_context.attach(trace.set_span_in_context(span)) if current else None
        operation = OperationSpan(span, token)
        operation.named(kind, name)
        return operation

    @contextlib.contextmanager
    def within(self, operation: OperationSpan) -> Iterator[None]:
        with _current(operation.span, end=False):
            yield

    def current(self) -> Span:
        return trace.get_current_span()

    @contextlib.contextmanager
    def batch(self, requests: Iterable[Span | None]) -> Iterator[None]:
        """The batch is a child of its first request's span (the one that found the writer
        idle, or the longest waiting; the first sampled one), linked to every other's."""
        entries = list(requests)
        spans = [span for span in entries if span is not None and span.get_span_context().is_valid]
        # A sampled request first: the batch is sampled as its parent is.
        spans.sort(key=lambda span: not span.get_span_context().trace_flags.sampled)
        if not spans or not spans[0].get_span_context().trace_flags.sampled:
            yield  # no request of the batch is sampled
            return
        # Not the writer task's own context: that is the request's that started the task.
        parent = trace.set_span_in_context(spans[0])
        links = [Link(span.get_span_context()) for span in spans[1:]]
        span = self._tracer.start_span(
            "writer batch", parent, links=links, attributes={"writer.batch.size": len(entries)}
        )
        with _current(span):
            yield

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[None]:
        if not trace.get_current_span().is_recording():
            yield  # a request not sampled
            return
        with _current(self._tracer.start_span(name)):
            yield

    def trace_id(self) -> str | None:
        context = trace.get_current_span().get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else None

    async def flush(self) -> None:
        # The exporter's work is blocking I/O: not on the event loop.
        await asyncio.to_thread(self.provider.force_flush, FLUSH_MILLISECONDS)


@contextlib.contextmanager
def _current(
    span: Span, parent: otel_context.Context | None = None, *, end: bool = True
) -> Iterator[None]:
    """``span`` as the current span (in ``parent``, else the current context) while the block
    runs; ended after it unless ``end`` is false. An exception makes it an error of that
    exception's type, without the exception's text."""
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    try:
        yield
    except BaseException as error:
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(StatusCode.ERROR)
        raise
    finally:
        otel_context.detach(token)
        if end:
            span.end()


def _headers(scope: Mapping[str, Any]) -> dict[str, str]:
    """The request's headers, for the propagators (``traceparent``, ``tracestate``)."""
    return {
        name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers", ())
    }


def _route(scope: Mapping[str, Any]) -> str:
    """The route's path template (``/v1/accounts/{aid}/…``: no ids); ``/graphql``, which
    passes the router by, is its path."""
    template = getattr(scope.get("route"), "path", None)
    return template if isinstance(template, str) else str(scope["path"])


class InRequests(SpanProcessor):
    """Passes on to ``processor`` every span but a statement outside any request: the
    background's (the listener's health checks, reading revoked clients, purging keys)
    would otherwise be a trace of its own every few seconds."""

    def __init__(self, processor: SpanProcessor) -> None:
        self.processor = processor

    def on_start(self, span: SdkSpan, parent_context: otel_context.Context | None = None) -> None:
        self.processor.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if span.parent is None and span.kind is SpanKind.CLIENT:
            return
        self.processor.on_end(span)

    def shutdown(self) -> None:
        self.processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.processor.force_flush(timeout_millis)


def from_environment(exporter: str) -> Tracer:
    """The process's tracer, exporting with ``exporter`` (``otlp``: OTLP over HTTP, to
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` or its default, ``http://localhost:4318``; ``console``:
    to standard error). The rest is OpenTelemetry's own reading of the environment:
    ``OTEL_SERVICE_NAME`` (default ``order-events``) and ``OTEL_RESOURCE_ATTRIBUTES``,
    ``OTEL_TRACES_SAMPLER`` and its argument, ``OTEL_PROPAGATORS``, ``OTEL_BSP_*``, and the
    exporter's ``OTEL_EXPORTER_OTLP_*`` (headers, timeout, compression, certificates)."""
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    span_exporter: SpanExporter
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    else:
        span_exporter = ConsoleSpanExporter(out=sys.stderr)
    provider.add_span_processor(InRequests(BatchSpanProcessor(span_exporter)))
    # For any other instrumentation in the process, too.
    trace.set_tracer_provider(provider)
    return Tracer(provider)
