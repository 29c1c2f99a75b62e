"""``python -m bench.inprocess read|write``: the server's own CPU per request, in process.

The ASGI app is called directly (no sockets, no HTTP parsing, no load generator), with the
documents ``scripts/bench`` sends, so that what a change to the request path costs shows
without the noise of a loaded machine's network stack. The access log is written to a file,
as a served process writes it to its log. Prints process CPU time per request; ``--profile``
adds cProfile's top functions. SQLite by default; ``--database`` takes a URL (PostgreSQL: an
empty database, migrated here). ``--persisted`` sends the read as Apollo's persisted-query
link does over GET, by its hash alone (registered once first).
``--trace sampled`` (or ``unsampled``) turns tracing on, every
request sampled (or none): spans are encoded as the OTLP exporter encodes them, then dropped,
and the time counts the exporter's thread.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import hashlib
import json
import pstats
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from app import tracing
from app.api import access
from app.auth import LocalIssuer
from app.db import apply_migrations
from app.main import create_app
from app.settings import Settings
from bench.harness import ACCOUNT
from bench.http import SERVICE_READ, SERVICE_WRITE

if TYPE_CHECKING:
    from app.tracer import Tracer

Call = Callable[[], Awaitable[list[dict[str, Any]]]]


async def measure(
    kind: str,
    database_url: str,
    count: int,
    profile: bool,
    trace: str = "off",
    persisted: bool = False,
) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="order-events-inprocess-"))
    await apply_migrations(database_url)
    settings = Settings(
        database_url=database_url, data_dir=workdir / "data", rate_limit_per_second=0
    )
    # As app.main.create_app_from_env does, into a file instead of standard output.
    # The file stays open as long as the process, as a served process's log does.
    log = (workdir / "access.log").open("w")
    with contextlib.redirect_stdout(log):
        access.configure()
    app = create_app(settings)
    if trace != "off":
        tracing.install(_tracer(sampled=trace == "sampled"))
    token = LocalIssuer.load_or_create(settings).mint(
        account_id=ACCOUNT, scope="read:shopping write:shopping", subject="bench", ttl_seconds=3600
    )
    authorization = (b"authorization", f"Bearer {token}".encode())
    write_body = SERVICE_WRITE.replace("{order}", "order-1").encode()
    read_path, _, read_query = SERVICE_READ.replace("{order}", "order-1").partition("?")
    register = b""
    if persisted:
        params = dict(parse_qsl(read_query))
        sha256 = hashlib.sha256(params.pop("query").encode()).hexdigest()
        extension = {"persistedQuery": {"version": 1, "sha256Hash": sha256}}
        params["extensions"] = json.dumps(extension, separators=(",", ":"))
        register = f"{read_query}&{urlencode({'extensions': params['extensions']})}".encode()
        read_query = urlencode(params)

    async def call(method: str, body: bytes = b"", query: bytes = b"") -> list[dict[str, Any]]:
        headers = [(b"host", b"127.0.0.1"), authorization]
        if method == "POST":
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": read_path, "raw_path": read_path.encode(),
            "query_string": query, "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000), "state": {},
        }  # fmt: skip
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(dict(message))

        await app(scope, receive, send)
        return sent

    def read() -> Awaitable[list[dict[str, Any]]]:
        return call("GET", query=read_query.encode())

    def write() -> Awaitable[list[dict[str, Any]]]:
        return call("POST", write_body)

    request: Call = read if kind == "read" else write
    async with app.router.lifespan_context(app):
        for _ in range(20):  # an order of 20 events for the reads
            assert (await write())[0]["status"] == 200
        if register:
            assert (await call("GET", query=register))[0]["status"] == 200
        answer = await request()
        # A refused request would be measured as fast: the document must be answered.
        if answer[0]["status"] != 200 or b'"errors"' in answer[1]["body"]:
            raise SystemExit(f"the {kind} was not answered: {answer}")
        await _timed(kind, request, count, profile)


async def _timed(kind: str, request: Call, count: int, profile: bool) -> None:
    for _ in range(200):
        await request()
    started = time.process_time()
    for _ in range(count):
        await request()
    await tracing.flush()  # the spans' export is the request's cost too
    spent = time.process_time() - started
    print(f"{kind}: {spent / count * 1e6:.1f} µs of CPU per request ({count} requests)")
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(count):
            await request()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


def _tracer(*, sampled: bool) -> Tracer:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

    from app.tracer import InRequests, Tracer

    class Encoded(SpanExporter):
        """The OTLP exporter's work but the sending."""

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            encode_spans(spans).SerializePartialToString()
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ALWAYS_ON if sampled else ALWAYS_OFF)
    provider.add_span_processor(InRequests(BatchSpanProcessor(Encoded())))
    return Tracer(provider)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__)
    parser.add_argument("kind", choices=["read", "write"])
    parser.add_argument("--database", help="a database URL (default: a fresh SQLite file)")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--persisted", action="store_true", help="read by hash (APQ over GET)")
    parser.add_argument("--trace", choices=["off", "sampled", "unsampled"], default="off")
    args = parser.parse_args()
    if args.persisted and args.kind != "read":
        parser.error("--persisted goes with read: Apollo sends mutations by POST")
    database = args.database or f"sqlite://{tempfile.mkdtemp()}/events.sqlite3"
    asyncio.run(measure(args.kind, database, args.count, args.profile, args.trace, args.persisted))


if __name__ == "__main__":
    main()
