"""What a served process sends to an OpenTelemetry collector (README, "Tracing"): a collector
of the test's own receives OTLP over HTTP, as a real one does on port 4318."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from app.auth import LocalIssuer
from tests.conftest import GraphQLClient, Mint
from tests.helpers import created, eventually
from tests.live import FIRST_QUERY, SUBSCRIBE, http_api, subscriber, watching
from tests.servers import Server, running_servers, start_server, stop_server
from tests.wsclient import PROTOCOLS


class Collector:
    """Receives OTLP/HTTP trace exports on a free port of its own; keeps every span with
    its resource's attributes."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, str], Span]] = []
        self._lock = threading.Lock()
        collector = self

        class Receiver(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                collector.received(self.path, body)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def received(self, path: str, body: bytes) -> None:
        assert path == "/v1/traces", path
        request = ExportTraceServiceRequest.FromString(body)
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = {
                    attribute.key: attribute.value.string_value
                    for attribute in resource_spans.resource.attributes
                }
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((resource, span) for span in scope_spans.spans)

    def named(self, name: str) -> list[Span]:
        with self._lock:
            return [span for _, span in self.spans if span.name == name]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    received = Collector()
    yield received
    received.close()


def traced(server_env: dict[str, str], collector: Collector, **more: str) -> dict[str, str]:
    """A server's environment that sends its traces to ``collector``, quickly."""
    return {
        **server_env,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        **more,
    }


@pytest.fixture(scope="module")
def server(
    server_env: dict[str, str],
    collector: Collector,
    issuer: LocalIssuer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    env = traced(server_env, collector)
    with running_servers(1, env, tmp_path_factory.mktemp("traced")) as (started,):
        yield started


def access_lines(server: Server) -> list[dict[str, Any]]:
    """The server's access lines (its other output is uvicorn's)."""
    return [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]


def children(collector: Collector, parent: Span) -> list[Span]:
    with collector._lock:
        return [span for _, span in collector.spans if span.parent_span_id == parent.span_id]


async def test_a_served_write_reaches_the_collector_as_one_trace(
    server: Server, collector: Collector, client: GraphQLClient, mint: Mint
) -> None:
    async with http_api(server, mint()) as api:
        await created(api)

    def exported() -> bool:
        return any(
            span.name == "writer batch"
            for request in collector.named("POST /graphql")
            for operation in children(collector, request)
            for span in children(collector, operation)
        )

    await eventually(exported, "the write's spans exported")
    assert {resource["service.name"] for resource, _ in collector.spans} == {"order-events"}
    # The access line names the trace the collector has.
    (line,) = [line for line in access_lines(server) if line["operation"] == "Create"]
    assert line["traceId"] in {span.trace_id.hex() for span in collector.named("POST /graphql")}


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_websocket_connection_is_a_span_with_its_operations_in_it(
    server: Server, collector: Collector, client: GraphQLClient, mint: Mint, protocol: str
) -> None:
    token = mint()
    async with subscriber(server, token, protocol) as ws:
        watch = await ws.subscribe(SUBSCRIBE, watching())
        query = await ws.subscribe(FIRST_QUERY)
        await ws.message(query)
        async with http_api(server, token) as api:
            await created(api)
        await ws.events(watch, 1)
        await ws.stop(watch)

    def connection_exported() -> list[Span]:
        return [
            span
            for span in collector.named("WEBSOCKET /graphql")
            if {child.name for child in children(collector, span)}
            >= {"subscription Watch", "query"}
        ]

    await eventually(lambda: bool(connection_exported()), "the connection's span exported")
    connections = {
        line["traceId"] for line in access_lines(server) if line["method"] == "WEBSOCKET"
    }
    assert {span.trace_id.hex() for span in connection_exported()} <= connections
    assert "Failed to detach context" not in server.output()


async def test_spans_still_queued_leave_when_the_server_stops(
    server_env: dict[str, str],
    collector: Collector,
    client: GraphQLClient,
    mint: Mint,
    tmp_path: Path,
) -> None:
    # Queued for ten minutes: only the stop can send them.
    env = traced(server_env, collector, OTEL_BSP_SCHEDULE_DELAY="600000")
    stopping = start_server(env, tmp_path / "server.log")
    try:
        async with httpx.AsyncClient(base_url=stopping.url) as http:
            response = await http.post(
                "/graphql",
                json={"query": FIRST_QUERY},
                headers={"authorization": f"Bearer {mint()}"},
            )
        request_id = response.headers["x-request-id"]
    finally:
        stop_server(stopping)

    lines = access_lines(stopping)
    (trace_id,) = [line["traceId"] for line in lines if line["requestId"] == request_id]
    await eventually(
        lambda: any(span.trace_id.hex() == trace_id for span in collector.named("POST /graphql")),
        "the stopped server's spans exported",
        within=5,
    )
