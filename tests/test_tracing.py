"""Tracing: the spans of a request, its GraphQL operation, the writer's batch and (PostgreSQL)
its statements, read from OpenTelemetry's in-memory exporter; the caller's ``traceparent``;
the trace id in the access line; and, with tracing off, nothing of OpenTelemetry at all."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from tortoise.connection import get_connection

from app import tracing
from app.settings import Settings, SettingsError
from app.tracer import InRequests, Tracer
from tests.conftest import GraphQLClient
from tests.helpers import (
    CREATE,
    ORDER_EVENTS,
    create,
    create_variables,
    created,
    timeline,
)
from tests.servers import ROOT

# A document no plan takes (two definitions): Strawberry's route runs it.
CREATE_THROUGH_THE_VIEW = """
mutation ThroughTheView($accountId: ID!, $orderId: ID!, $event: OrderEventInput!) {
  createOrderEvent(accountId: $accountId, orderId: $orderId, event: $event) { ...Stored }
}
fragment Stored on OrderStatusEvent { id version }
"""
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on while the test runs, every finished span kept in memory (the app's own
    filter of statements outside requests included)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(InRequests(SimpleSpanProcessor(exporter)))
    tracer = Tracer(provider)
    try:
        with tracing.installed(tracer):
            yield exporter
    finally:
        tracer.close()
        provider.shutdown()


def named(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    (span,) = [span for span in spans.get_finished_spans() if span.name == name]
    return span


def is_child(child: ReadableSpan, parent: ReadableSpan) -> bool:
    return child.parent is not None and child.parent.span_id == parent.context.span_id


def trace_id(span: ReadableSpan) -> str:
    return format(span.context.trace_id, "032x")


async def test_a_write_is_request_operation_and_writer_batch(
    client: GraphQLClient, spans: InMemorySpanExporter
) -> None:
    await created(client)

    request = named(spans, "POST /graphql")
    operation = named(spans, "mutation Create")
    batch = named(spans, "writer batch")
    assert request.kind is SpanKind.SERVER and request.parent is None
    assert is_child(operation, request) and is_child(batch, operation)
    assert {span.context.trace_id for span in (request, operation, batch)} == {
        request.context.trace_id
    }
    assert operation.attributes == {
        "graphql.operation.type": "mutation",
        "graphql.operation.name": "Create",
    }
    assert batch.attributes == {"writer.batch.size": 1}


async def test_the_request_span_says_how_it_was_answered_and_nothing_of_the_data(
    client: GraphQLClient, spans: InMemorySpanExporter
) -> None:
    await create(client, event={"service": "kitchen", "serviceStatus": "\u202e"})

    request = named(spans, "POST /graphql")
    assert request.attributes == {
        "http.request.method": "POST",
        "http.route": "/graphql",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "client.address": "127.0.0.1",
        "http.response.status_code": 200,
        "graphql.error.codes": ("BAD_USER_INPUT",),
    }


async def test_strawberrys_route_makes_the_same_spans(
    client: GraphQLClient, spans: InMemorySpanExporter
) -> None:
    body = await client.execute(CREATE_THROUGH_THE_VIEW, create_variables())
    assert "errors" not in body, body

    request = named(spans, "POST /graphql")
    operation = named(spans, "mutation ThroughTheView")
    assert is_child(operation, request)
    assert is_child(named(spans, "writer batch"), operation)
    assert operation.attributes == {
        "graphql.operation.type": "mutation",
        "graphql.operation.name": "ThroughTheView",
    }


async def test_a_query_is_an_operation_of_its_request(
    client: GraphQLClient, spans: InMemorySpanExporter
) -> None:
    await timeline(client)

    assert is_child(named(spans, "query Timeline"), named(spans, "POST /graphql"))


async def test_a_write_with_an_idempotency_key_is_a_writer_append(
    client: GraphQLClient, spans: InMemorySpanExporter
) -> None:
    query = CREATE.replace("$event: OrderEventInput!", "$event: OrderEventInput!, $key: String")
    query = query.replace("event: $event)", "event: $event, idempotencyKey: $key)")
    body = await client.execute(query, {**create_variables(), "key": "door-opened"})
    assert "errors" not in body, body

    assert is_child(named(spans, "writer append"), named(spans, "mutation Create"))


async def test_a_batch_is_a_child_of_one_request_and_linked_to_the_others(
    client: GraphQLClient, spans: InMemorySpanExporter
) -> None:
    writes = 8
    await asyncio.gather(*(created(client, f"order-{n}") for n in range(writes)))

    finished = spans.get_finished_spans()
    operations = {s.context.span_id for s in finished if s.name == "mutation Create"}
    batches = [span for span in finished if span.name == "writer batch"]
    members: list[int] = []
    for batch in batches:
        assert batch.parent is not None
        linked = [link.context.span_id for link in batch.links]
        assert batch.attributes is not None
        assert batch.attributes["writer.batch.size"] == 1 + len(linked)
        members += [batch.parent.span_id, *linked]
    assert sorted(members) == sorted(operations) and len(operations) == writes


async def test_the_callers_traceparent_makes_the_request_its_child(
    client: GraphQLClient, spans: InMemorySpanExporter
) -> None:
    traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    await timeline(client, headers={"traceparent": traceparent})

    request = named(spans, "POST /graphql")
    assert trace_id(request) == CALLER_TRACE
    assert request.parent is not None and format(request.parent.span_id, "016x") == CALLER_SPAN
    assert request.parent.is_remote


async def test_a_caller_that_does_not_sample_its_trace_gets_no_spans_here(
    client: GraphQLClient, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        await create(client, headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"})

    assert spans.get_finished_spans() == ()
    # The caller's trace all the same: its own spans may be found by it.
    assert [line["traceId"] for line in access_lines(caplog)] == [CALLER_TRACE]


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "app.access"]


async def test_the_access_line_has_the_trace_id(
    client: GraphQLClient, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        await created(client)

    (line,) = access_lines(caplog)
    assert line["traceId"] == trace_id(named(spans, "POST /graphql"))


async def test_without_tracing_the_access_line_has_no_trace_id(
    client: GraphQLClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        await created(client)

    (line,) = access_lines(caplog)
    assert "traceId" not in line


async def test_a_rest_request_is_named_by_its_route_without_ids(
    client: GraphQLClient, spans: InMemorySpanExporter
) -> None:
    path = "/v1/accounts/T12345678/shopping/orders/order-1/events"
    response = await client.http.get(
        path, headers={"authorization": f"Bearer {client.default_token}"}
    )
    assert response.status_code == 200, response.text

    request = named(spans, "GET /v1/accounts/{aid}/shopping/orders/{order_id}/events")
    assert "order-1" not in json.dumps(dict(request.attributes or {}))


async def test_an_unexpected_error_is_the_request_spans_error(
    client: GraphQLClient, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret detail")

    monkeypatch.setattr("app.api.frontdoor.authenticate", broken)
    path = "/v1/accounts/T12345678/shopping/orders/order-1/events"
    response = await client.http.get(path, headers={"authorization": "Bearer x"})
    assert response.status_code == 500

    request = named(spans, "GET /v1/accounts/{aid}/shopping/orders/{order_id}/events")
    assert request.status.is_ok is False
    assert request.attributes is not None and request.attributes["error.type"] == "500"
    assert "secret detail" not in repr(request.to_json())


async def test_statements_are_spans_of_their_batch_on_postgresql(
    postgres_only: None, client: GraphQLClient, spans: InMemorySpanExporter
) -> None:
    await created(client)

    batch = named(spans, "writer batch")
    statements = [span for span in spans.get_finished_spans() if is_child(span, batch)]
    assert statements and all(span.kind is SpanKind.CLIENT for span in statements)
    # The statement's text, never its parameters.
    attributes = json.dumps([dict(span.attributes or {}) for span in statements])
    assert "order_events" in attributes and "kitchen" not in attributes


async def test_a_statement_outside_any_request_is_no_trace_of_its_own(
    postgres_only: None, client: GraphQLClient, spans: InMemorySpanExporter
) -> None:
    await get_connection("default").execute_query("SELECT 1")  # as the background's are

    assert spans.get_finished_spans() == ()


async def test_a_read_on_postgresql_has_its_statements_under_its_operation(
    postgres_only: None, client: GraphQLClient, spans: InMemorySpanExporter
) -> None:
    await created(client)
    spans.clear()
    await client.execute(ORDER_EVENTS, {"accountId": "T12345678", "orderId": "order-2"})

    operation = named(spans, "query Timeline")
    assert any(is_child(span, operation) for span in spans.get_finished_spans())


def test_only_otlp_console_or_none_are_exporters() -> None:
    with pytest.raises(SettingsError, match="OTEL_TRACES_EXPORTER must be one of none, otlp"):
        Settings.from_env({"OTEL_TRACES_EXPORTER": "zipkin"})
    assert Settings.from_env({}).otel_traces_exporter == "none"


# What a served process does with tracing off: start as the server does, write, read. (redis-py
# imports OpenTelemetry's metrics SDK, where it is installed, at its own import: so what is
# compared is what serving adds to the modules the import of the app loaded.)
_OFF = """
import asyncio, json, sys
import httpx
from app.auth import LocalIssuer
from app.db import apply_migrations
from app.main import create_app_from_env
from app.settings import Settings

async def main():
    settings = Settings.from_env()
    await apply_migrations(settings.database_url)
    app = create_app_from_env()
    token = LocalIssuer.load_or_create(settings).mint(
        account_id="T12345678", scope="write:shopping read:shopping", subject="k"
    )
    headers = {"authorization": f"Bearer {token}"}
    write = {"query": sys.argv[1], "variables": {
        "accountId": "T12345678", "orderId": "o", "event": {"service": "s", "serviceStatus": "x"}
    }}
    read = {"query": sys.argv[2], "variables": {"accountId": "T12345678", "orderId": "o"}}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            for body in (write, read):
                answer = (await http.post("/graphql", json=body, headers=headers)).json()
                assert "errors" not in answer, answer

imported = set(sys.modules)
asyncio.run(main())
tracing = ("opentelemetry", "app.tracer")
added = [name for name in set(sys.modules) - imported if name.startswith(tracing)]
spans = ("opentelemetry.sdk.trace", "opentelemetry.propagate", "app.tracer")
loaded = [name for name in sys.modules if name.startswith(spans)]
print(json.dumps(sorted(added + loaded)))
"""


def test_with_tracing_off_nothing_of_opentelemetry_is_imported(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")} | {
        "DATABASE_URL": f"sqlite://{tmp_path}/events.sqlite3",
        "DATA_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-c", _OFF, CREATE, ORDER_EVENTS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []
