"""Prometheus metrics: what ``GET /metrics`` shows (README, "Operating").

Every metric is made here, once per process; the modules that count import them and touch
nothing else of prometheus-client. Label values are bounded by the code, never taken from
what a client sends: routes are the application's path templates, operations the schema's
root fields, outcomes the errors' codes, reasons short words of their own modules. No
account, order, subject or client address is ever a label.

Several processes (``--workers N``) use prometheus-client's multiprocess mode: while
``PROMETHEUS_MULTIPROC_DIR`` names a directory when this module is first imported, each
process keeps its values in files there, and ``/metrics``, whichever process answers it,
adds up those of every process. ``python -m serving`` makes such a directory when it starts
several workers and removes it when they stop (``serving.metrics_directory``). A gauge of
open things (connections, subscriptions, pooled connections in use) counts live processes
only: a process that stops says so (``process_stopped``), and one that died without a word
is noticed at the next scrape (``_forget_dead_processes``).
"""

from __future__ import annotations

import asyncio
import glob
import hmac
import os
import re
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from time import perf_counter

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.records import StoredEvent
from app.settings import Settings

PATH = "/metrics"
MULTIPROCESS_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"

# prometheus-client opens its files there as each metric is made: the directory must exist.
if os.environ.get(MULTIPROCESS_DIRECTORY):
    Path(os.environ[MULTIPROCESS_DIRECTORY]).mkdir(parents=True, exist_ok=True)

# Seconds: from well under a millisecond (a page answered from memory) to a stalled database.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)

# Requests --------------------------------------------------------------------------------

REQUESTS = Histogram(
    "order_events_request_duration_seconds",
    "HTTP requests answered through the front door (GraphQL, REST events, Get Token), by "
    "route template, operation (the schema's root field that ran: createOrderEvent, "
    "orderEvents, introspection, several, or none when nothing ran) and outcome (ok, or the "
    "errors' codes), from the first byte read to the last sent; _count counts them",
    ["route", "operation", "outcome"],
    buckets=_LATENCY_BUCKETS,
)
TOKEN_FAILURES = Counter(
    "order_events_token_failures_total",
    "Bearer tokens presented and refused (HTTP and WebSocket), by reason",
    ["reason"],
)

# Storing ---------------------------------------------------------------------------------

EVENTS_APPENDED = Counter("order_events_events_appended_total", "Events stored")
BATCH_SIZE = Histogram(
    "order_events_writer_batch_size",
    "Events stored by one group commit of the writer (appends without an idempotency key or "
    "expected version, which take a transaction each)",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200),
)
DB_POOL_IN_USE = Gauge(
    "order_events_db_pool_connections_in_use",
    "PostgreSQL connections of the pool handed out to requests (live processes added up)",
    multiprocess_mode="livesum",
)
DB_POOL_WAIT = Histogram(
    "order_events_db_pool_wait_seconds",
    "Waits for a free PostgreSQL connection, taken when all DB_POOL_MAX_SIZE were in use; "
    "_count counts them",
    buckets=_LATENCY_BUCKETS,
)

# Live delivery ---------------------------------------------------------------------------

WEBSOCKET_CONNECTIONS = Gauge(
    "order_events_websocket_connections",
    "Open WebSocket connections (live processes added up)",
    multiprocess_mode="livesum",
)
SUBSCRIPTIONS = Gauge(
    "order_events_subscriptions",
    "Open subscriptions, over WebSocket or otherwise (live processes added up)",
    multiprocess_mode="livesum",
)
DELIVERY_LAG = Histogram(
    "order_events_delivery_lag_seconds",
    "From an event's commit (its createdAt, taken just before) to its sending to live "
    "subscribers: once per event and process for those keeping up (sent together), and for "
    "every send of an event that waited in a subscriber's buffer; events read back from the "
    "table are not counted",
    buckets=_LATENCY_BUCKETS,
)
OVERFLOWS = Counter(
    "order_events_subscription_overflows_total",
    "Subscriptions ended with RATE_LIMITED: their consumer fell SUBSCRIPTION_BUFFER events behind",
)
_GAP_FILLS = Counter(
    "order_events_gap_fills_total",
    "Catch-ups of a subscription from the table, by reason: resume (started with after), "
    "gap (an event missed on the way), resync (the listener reconnected)",
    ["reason"],
)
GAP_FILL_RESUME = _GAP_FILLS.labels("resume")
GAP_FILL_GAP = _GAP_FILLS.labels("gap")
GAP_FILL_RESYNC = _GAP_FILLS.labels("resync")
LISTENER_RECONNECTS = Counter(
    "order_events_listener_reconnects_total",
    "Times the PostgreSQL LISTEN connection was lost and opened again",
)


# Webhooks ----------------------------------------------------------------------------------

_WEBHOOK_ATTEMPTS = Counter(
    "order_events_webhook_attempts_total",
    "Webhook POSTs, by outcome: delivered (a 2xx in time), refused (another status), timeout "
    "(no answer within WEBHOOK_TIMEOUT_SECONDS), unreachable (no connection: refused, reset, "
    "or a destination not allowed)",
    ["outcome"],
)
WEBHOOK_LAG = Histogram(
    "order_events_webhook_lag_seconds",
    "From an event's commit (its createdAt, taken just before) to its webhook's 2xx, retries "
    "included; pings are not counted",
    buckets=(*_LATENCY_BUCKETS, 30, 60, 300, 1800, 3600, 21600),
)

WEBHOOK_GIVING_WAY = Counter(
    "order_events_webhook_giving_way_seconds",
    "Time the webhook dispatcher waited before claiming more deliveries, giving way to HTTP "
    "requests (WEBHOOK_DELIVERY_SHARE)",
)


def webhook_attempt(outcome: str) -> None:
    """A webhook POST that was not delivered, and why (one of the outcomes above)."""
    _WEBHOOK_ATTEMPTS.labels(outcome).inc()


def webhook_delivered(created_at: datetime | None) -> None:
    """A webhook POST answered with a 2xx; ``created_at`` is its event's (None: a ping)."""
    _WEBHOOK_ATTEMPTS.labels("delivered").inc()
    if created_at is not None:
        WEBHOOK_LAG.observe(time.time() - created_at.timestamp())


# Requests, as the access log line tells them ---------------------------------------------------

# More distinct label sets than any server answers; beyond it, "other" (should a code ever
# carry a value of unbounded variety, the series stay bounded all the same).
_MAX_REQUEST_SERIES = 1000
_OTHER = ("other", "other", "other")


class _Requests:
    """Counts answered requests, each with one look-up of its (already made) histogram."""

    def __init__(self) -> None:
        self._children: dict[tuple[str | None, ...], Histogram] = {}

    def answered(
        self, route: str, operation: str | None, codes: Sequence[str], started: float
    ) -> None:
        seconds = perf_counter() - started
        child = self._children.get((route, operation, *codes))
        if child is None:
            child = self._child(route, operation, codes)
        child.observe(seconds)

    def _child(self, route: str, operation: str | None, codes: Sequence[str]) -> Histogram:
        labels = (route, operation or "none", ",".join(codes) or "ok")
        if len(self._children) >= _MAX_REQUEST_SERIES:
            labels = _OTHER
        child: Histogram = REQUESTS.labels(*labels)
        self._children[(route, operation, *codes)] = child
        return child


requests = _Requests()


# Delivery lag ------------------------------------------------------------------------------

# The event last sent at once: the hub sends an event to all its subscribers that are keeping
# up in one loop, a few microseconds apart, and one observation speaks for them all (an
# observation costs about as much as the send itself).
_sent_at_once: StoredEvent | None = None


def sent_at_once(event: StoredEvent) -> None:
    """``event`` is being sent to a subscriber as it arrives: its lag is observed for the
    first such subscriber in this process."""
    global _sent_at_once
    if event is not _sent_at_once:
        _sent_at_once = event
        DELIVERY_LAG.observe(time.time() - event.created_at.timestamp())


def sent_from_buffer(event: StoredEvent) -> None:
    """``event`` waited in a subscriber's buffer and is being sent now: each such send is
    observed (a slow consumer's lag is its own)."""
    DELIVERY_LAG.observe(time.time() - event.created_at.timestamp())


# /metrics ----------------------------------------------------------------------------------


def multiprocess_mode() -> bool:
    """True when the metrics are several processes' (``PROMETHEUS_MULTIPROC_DIR``)."""
    return MULTIPROCESS_DIRECTORY in os.environ


def routes(settings: Settings) -> list[Route]:
    """``GET /metrics`` in Prometheus's text format, when ``METRICS`` is on; with
    ``METRICS_TOKEN`` set, only for a request bearing it."""
    if not settings.metrics:
        return []
    expected = f"Bearer {settings.metrics_token}".encode() if settings.metrics_token else None

    async def metrics(request: Request) -> Response:
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return Response(
                    "Unauthorized: /metrics needs METRICS_TOKEN as a bearer token\n",
                    401,
                    headers={"www-authenticate": 'Bearer realm="metrics"'},
                    media_type="text/plain",
                )
        # The format the scraper asks for (Prometheus's text format unless it asks for
        # OpenMetrics), as prometheus-client's own exporters choose it.
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        # Off the event loop: with several processes, collecting reads all their files.
        body = await asyncio.to_thread(exposition, encoder)
        return Response(body, headers={"content-type": content_type})

    return [Route(PATH, metrics)]


def exposition(encoder: Callable[[CollectorRegistry], bytes] = generate_latest) -> bytes:
    """What ``/metrics`` answers: this process's metrics, or with several processes the sum
    of all of theirs, in Prometheus's text format unless ``encoder`` says otherwise."""
    if not multiprocess_mode():
        return encoder(REGISTRY)
    _forget_dead_processes()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return encoder(registry)


def process_stopped() -> None:
    """This process is stopping: its open-things gauges stop counting (its counters stay)."""
    if multiprocess_mode():
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


# The files of gauges that count live processes only: gauge_live<mode>_<pid>.db.
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def _forget_dead_processes() -> None:
    """Marks dead the processes whose live gauges are still there but which are gone (killed,
    or crashed, without stopping as ``process_stopped`` has it)."""
    directory = os.environ[MULTIPROCESS_DIRECTORY]
    pids = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*.db")):
        match = _LIVE_GAUGE_FILE.fullmatch(Path(path).name)
        if match:
            pids.add(int(match[1]))
    for pid in pids:
        if not _alive(pid):
            multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not one of ours that died
    return True
