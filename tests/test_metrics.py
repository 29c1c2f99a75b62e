"""``GET /metrics`` (app.metrics): real requests move the counters a Prometheus server reads,
parsed here with prometheus-client's own parser.

The metrics are the process's, and the suite's app shares its process with every other test:
each test reads what changed between two scrapes. Live delivery is watched in-process (a
feed on a broker of the test's own) and, for WebSockets, on a server process; several
workers on ``python -m serving --workers 2``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.parser import text_string_to_metric_families
from tortoise.connection import get_connection
from tortoise.transactions import in_transaction

from app import live, metrics
from app.auth import LocalIssuer, Principal
from app.broker import LISTENER_NAME, LocalBroker
from app.models import OrderEvent
from app.records import EVENTS_PATH, StoredEvent
from app.settings import Settings
from tests.conftest import POSTGRES_URL, ClientWith, GraphQLClient, Mint
from tests.helpers import ACCOUNT, ORDER, WAIT, created, eventually
from tests.live import SUBSCRIBE, expired_token, http_api, serving, subscriber, watching
from tests.servers import ROOT, Server, free_port

GRAPHQL = "/graphql"
REQUESTS = "order_events_request_duration_seconds_count"
TIMELINE = f"""
query Timeline {{ orderEvents(accountId: "{ACCOUNT}", orderId: "{ORDER}") {{ state }} }}
"""


@dataclass
class Scrape:
    """One answer of /metrics, as Prometheus reads it."""

    text: str
    values: dict[tuple[str, frozenset[tuple[str, str]]], float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        values = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return cls(text, values)

    def value(self, name: str, **labels: str) -> float:
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def requests(self, operation: str, outcome: str = "ok", route: str = GRAPHQL) -> float:
        return self.value(REQUESTS, route=route, operation=operation, outcome=outcome)


async def scrape(http: httpx.AsyncClient, **headers: str) -> Scrape:
    response = await http.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape.parse(response.text)


# Requests ----------------------------------------------------------------------------------


async def test_a_write_counts_the_request_the_event_and_the_writers_batch(
    client: GraphQLClient,
) -> None:
    before = await scrape(client.http)
    await created(client)
    after = await scrape(client.http)

    assert after.requests("createOrderEvent") - before.requests("createOrderEvent") == 1
    events = "order_events_events_appended_total"
    assert after.value(events) - before.value(events) == 1
    batches = "order_events_writer_batch_size_count"
    assert after.value(batches) - before.value(batches) == 1
    assert after.value("order_events_writer_batch_size_bucket", le="1.0") > before.value(
        "order_events_writer_batch_size_bucket", le="1.0"
    )


async def test_concurrent_writes_are_counted_in_batches(client: GraphQLClient) -> None:
    before = await scrape(client.http)
    await asyncio.gather(*(created(client, f"order-{n}") for n in range(20)))
    after = await scrape(client.http)

    events = "order_events_events_appended_total"
    batches = "order_events_writer_batch_size_count"
    total = "order_events_writer_batch_size_sum"
    assert after.value(events) - before.value(events) == 20
    assert after.value(total) - before.value(total) == 20
    assert 1 <= after.value(batches) - before.value(batches) < 20


async def test_a_read_is_counted_by_the_root_field_it_ran_not_the_name_the_client_gave(
    client: GraphQLClient,
) -> None:
    before = await scrape(client.http)
    body = await client.execute(TIMELINE)
    after = await scrape(client.http)

    assert "errors" not in body, body
    assert after.requests("orderEvents") - before.requests("orderEvents") == 1
    assert "Timeline" not in after.text


async def test_operation_names_a_client_makes_up_make_no_series(client: GraphQLClient) -> None:
    before = await scrape(client.http)
    # One through the ordinary route (a directive: no plan takes it), one that is invalid.
    ran = await client.execute(
        f'query MadeUpOne {{ orderEvents(accountId: "{ACCOUNT}", orderId: "{ORDER}")'
        " @include(if: true) { state } }"
    )
    refused = await client.execute("query MadeUpTwo { madeUpField }")
    after = await scrape(client.http)

    assert "errors" not in ran, ran
    assert refused["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert after.requests("orderEvents") - before.requests("orderEvents") == 1
    refusals = after.requests("none", "BAD_USER_INPUT") - before.requests("none", "BAD_USER_INPUT")
    assert refusals == 1
    for made_up in ("MadeUpOne", "MadeUpTwo", "madeUpField"):
        assert made_up not in after.text


async def test_introspection_is_counted_as_such(client: GraphQLClient) -> None:
    before = await scrape(client.http)
    await client.execute("query Schema { __schema { queryType { name } } }", token=None)
    after = await scrape(client.http)

    assert after.requests("introspection") - before.requests("introspection") == 1


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [("Bearer not-a-token", "malformed"), ("Basic a2l0Y2hlbjpzZWNyZXQ=", "not_bearer")],
)
async def test_a_refused_token_is_counted_by_its_reason_and_the_request_by_its_outcome(
    client: GraphQLClient, authorization: str, reason: str
) -> None:
    before = await scrape(client.http)
    response = await client.post(TIMELINE, token=None, headers={"authorization": authorization})
    after = await scrape(client.http)

    assert response.status_code == 401
    failures = "order_events_token_failures_total"
    assert after.value(failures, reason=reason) - before.value(failures, reason=reason) == 1
    refused = after.requests("none", "UNAUTHENTICATED") - before.requests("none", "UNAUTHENTICATED")
    assert refused == 1


async def test_an_expired_token_is_counted_as_expired(
    client: GraphQLClient, settings: Settings
) -> None:
    before = await scrape(client.http)
    response = await client.post(TIMELINE, token=expired_token(settings))
    after = await scrape(client.http)

    assert response.status_code == 401
    failures = "order_events_token_failures_total"
    assert after.value(failures, reason="expired") - before.value(failures, reason="expired") == 1


async def test_a_rate_limited_request_is_counted_as_such(client_with: ClientWith) -> None:
    limited = client_with(rate_limit_per_second=0.001, rate_limit_burst=1)
    before = await scrape(limited.http)
    first = await limited.post(TIMELINE)
    second = await limited.post(TIMELINE)
    after = await scrape(limited.http)

    assert (first.status_code, second.status_code) == (200, 429)
    refused = after.requests("none", "RATE_LIMITED") - before.requests("none", "RATE_LIMITED")
    assert refused == 1


async def test_rest_requests_are_counted_under_their_path_template(
    client: GraphQLClient,
) -> None:
    path = EVENTS_PATH.format(aid=ACCOUNT, order_id=ORDER)
    headers = {"authorization": f"Bearer {client.default_token}"}
    before = await scrape(client.http)
    response = await client.http.post(
        path, json={"service": "kitchen", "service_status": "ready"}, headers=headers
    )
    after = await scrape(client.http)

    assert response.status_code == 200, response.text
    counted = after.requests("createOrderEvent", route=EVENTS_PATH)
    assert counted - before.requests("createOrderEvent", route=EVENTS_PATH) == 1
    assert ORDER not in after.text and ACCOUNT not in after.text


# Protection --------------------------------------------------------------------------------


async def test_with_a_token_set_metrics_answer_only_requests_bearing_it(
    client_with: ClientWith,
) -> None:
    http = client_with(metrics_token="s3cret-for-the-scraper").http

    missing = await http.get("/metrics")
    wrong = await http.get("/metrics", headers={"authorization": "Bearer s3cret"})
    await scrape(http, authorization="Bearer s3cret-for-the-scraper")

    for refused in (missing, wrong):
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "order_events" not in refused.text


async def test_metrics_off_serves_no_metrics(client_with: ClientWith) -> None:
    response = await client_with(metrics=False).http.get("/metrics")

    assert response.status_code == 404


def test_the_token_is_not_in_the_settings_repr(other_settings: Any) -> None:
    assert "s3cret" not in repr(other_settings(metrics_token="s3cret"))


# Live delivery, in-process -----------------------------------------------------------------


def reader() -> Principal:
    return Principal(
        subject="screen-1",
        account_id=ACCOUNT,
        scopes=frozenset({"read:shopping"}),
        expires_at=time.time() + 3600,
    )


class Inbox:
    """A receiver that keeps what it is sent; with ``gate`` cleared, sends wait."""

    def __init__(self) -> None:
        self.received: list[StoredEvent | Exception] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def send_event(self, event: StoredEvent) -> None:
        await self.gate.wait()
        self.received.append(event)

    async def end(self, error: Exception) -> None:
        self.received.append(error)


@pytest.fixture
async def feeds() -> AsyncIterator[list[live.Feed]]:
    opened: list[live.Feed] = []
    yield opened
    for feed in opened:
        feed.close()


async def stored(client: GraphQLClient, count: int) -> list[StoredEvent]:
    events = []
    for _ in range(count):
        event_id = (await created(client))["id"]
        events.append(StoredEvent.from_row(await OrderEvent.get(event_id=event_id)))
    return events


def local() -> Scrape:
    return Scrape.parse(metrics.exposition().decode())


async def test_a_feed_counts_while_open_and_its_live_sends_lag(
    client: GraphQLClient, feeds: list[live.Feed]
) -> None:
    (seed,) = await stored(client, 1)
    broker, inbox = LocalBroker(), Inbox()
    before = local()
    feed = live.watch(reader(), broker, ACCOUNT, ORDER, seed.cursor, inbox, buffer_size=10)
    feeds.append(feed)
    feed.start()
    await eventually(lambda: feed._task is None, "the feed catching up")
    opened = local()
    (event,) = await stored(client, 1)
    broker.hub.publish(event)
    await eventually(lambda: len(inbox.received) == 1, "the event being sent")
    sent = local()
    feed.close()
    closed = local()

    subscriptions = "order_events_subscriptions"
    assert opened.value(subscriptions) - before.value(subscriptions) == 1
    assert closed.value(subscriptions) == before.value(subscriptions)
    lag = "order_events_delivery_lag_seconds_count"
    assert sent.value(lag) - opened.value(lag) == 1
    gap_fills = "order_events_gap_fills_total"
    assert opened.value(gap_fills, reason="resume") - before.value(gap_fills, reason="resume") == 1


async def test_the_lag_is_observed_once_for_subscribers_keeping_up_and_for_each_buffered_send(
    client: GraphQLClient, feeds: list[live.Feed]
) -> None:
    (seed,) = await stored(client, 1)
    broker, inboxes = LocalBroker(), [Inbox(), Inbox()]
    for inbox in inboxes:
        feed = live.watch(reader(), broker, ACCOUNT, ORDER, seed.cursor, inbox, buffer_size=10)
        feeds.append(feed)
        feed.start()
    await eventually(lambda: all(feed._task is None for feed in feeds), "the feeds catching up")
    e1, e2, e3 = await stored(client, 3)
    lag = "order_events_delivery_lag_seconds_count"

    before = local()
    broker.hub.publish(e1)
    await eventually(lambda: all(len(i.received) == 1 for i in inboxes), "e1 being sent")
    together = local()
    slow = inboxes[1]
    slow.gate.clear()
    broker.hub.publish(e2)  # the slow one's send of it waits, and e3 waits in its buffer
    broker.hub.publish(e3)
    slow.gate.set()
    await eventually(lambda: all(len(i.received) == 3 for i in inboxes), "e2 and e3 being sent")
    after = local()

    assert together.value(lag) - before.value(lag) == 1
    # e2 and e3 as they came, once each; e3 again from the slow one's buffer.
    assert after.value(lag) - together.value(lag) == 3


async def test_gaps_and_resyncs_are_counted_apart(
    client: GraphQLClient, feeds: list[live.Feed]
) -> None:
    (seed,) = await stored(client, 1)
    broker, inbox = LocalBroker(), Inbox()
    feed = live.watch(reader(), broker, ACCOUNT, ORDER, seed.cursor, inbox, buffer_size=10)
    feeds.append(feed)
    feed.start()
    await eventually(lambda: feed._task is None, "the feed catching up")
    before = local()
    _missed, next_one = await stored(client, 2)
    broker.hub.publish(next_one)  # the one before it never came
    await eventually(lambda: len(inbox.received) == 2, "the gap being filled")
    broker.hub.resync_all()
    await eventually(lambda: feed._task is None, "the resync")
    after = local()

    gap_fills = "order_events_gap_fills_total"
    assert after.value(gap_fills, reason="gap") - before.value(gap_fills, reason="gap") == 1
    assert after.value(gap_fills, reason="resync") - before.value(gap_fills, reason="resync") == 1


async def test_a_buffer_overflow_is_counted(client: GraphQLClient, feeds: list[live.Feed]) -> None:
    (seed,) = await stored(client, 1)
    broker, inbox = LocalBroker(), Inbox()
    feed = live.watch(reader(), broker, ACCOUNT, ORDER, seed.cursor, inbox, buffer_size=2)
    feeds.append(feed)
    feed.start()
    await eventually(lambda: feed._task is None, "the feed catching up")
    before = local()
    inbox.gate.clear()
    for event in await stored(client, 5):
        broker.hub.publish(event)
    inbox.gate.set()
    await eventually(
        lambda: bool(inbox.received) and isinstance(inbox.received[-1], Exception), "the overflow"
    )
    after = local()

    overflows = "order_events_subscription_overflows_total"
    assert after.value(overflows) - before.value(overflows) == 1
    assert (
        after.value("order_events_subscriptions") == before.value("order_events_subscriptions") - 1
    )


# PostgreSQL: the pool and the listener -----------------------------------------------------


@pytest.fixture
def on_postgres(database_url: str) -> None:
    if not database_url.startswith("postgres"):
        pytest.skip("the pool and the listener are PostgreSQL's")


async def test_pooled_connections_in_use_and_waits_for_one_are_counted(
    client: GraphQLClient, on_postgres: None, settings: Settings
) -> None:
    before = local()
    holding = asyncio.Event()
    release = asyncio.Event()
    held = 0

    async def hold() -> None:
        nonlocal held
        async with in_transaction():
            held += 1
            if held == settings.db_pool_max_size:
                holding.set()
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(settings.db_pool_max_size)]
    await asyncio.wait_for(holding.wait(), WAIT)
    full = local()
    waiting = asyncio.create_task(get_connection("default").execute_query("SELECT 1"))
    await asyncio.sleep(0.05)  # let it queue for a connection; what follows holds anyway
    release.set()
    await asyncio.gather(*holders, waiting)
    after = local()

    in_use = "order_events_db_pool_connections_in_use"
    assert full.value(in_use) - before.value(in_use) == settings.db_pool_max_size
    assert after.value(in_use) == before.value(in_use)
    waits = "order_events_db_pool_wait_seconds_count"
    assert after.value(waits) - before.value(waits) >= 1


async def test_a_listener_reconnection_is_counted(
    client: GraphQLClient, on_postgres: None, database_url: str
) -> None:
    before = local()
    admin = await asyncpg.connect(POSTGRES_URL.replace("postgres://", "postgresql://", 1))
    try:
        killed = await admin.fetchval(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = $1 AND datname = $2) AS terminated",
            LISTENER_NAME,
            database_url.rsplit("/", 1)[1],
        )
    finally:
        await admin.close()
    assert killed == 1

    reconnects = "order_events_listener_reconnects_total"
    await eventually(
        lambda: local().value(reconnects) > before.value(reconnects), "the listener reconnecting"
    )


# A server process: WebSockets, and several workers ---------------------------------------------


def screen_token(issuer: LocalIssuer) -> str:
    return issuer.mint(account_id=ACCOUNT, scope="read:shopping", subject="screen", ttl_seconds=600)


@pytest.fixture(scope="module")
def server(
    server_env: dict[str, str], issuer: LocalIssuer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    token = issuer.mint(
        account_id=ACCOUNT, scope="read:shopping", subject="screen", ttl_seconds=600
    )
    with serving(server_env, tmp_path_factory.mktemp("metrics"), token) as started:
        yield started


async def gauge_is(http: httpx.AsyncClient, name: str, value: float) -> bool:
    return (await scrape(http)).value(name) == value


async def test_websocket_connections_and_subscriptions_are_counted_while_open(
    server: Server, mint: Mint
) -> None:
    async with http_api(server, mint()) as api:
        http = api.http
        seed = await created(api)
        before = await scrape(http)
        async with subscriber(server, mint()) as client:
            op = await client.subscribe(SUBSCRIBE, watching(after=seed["cursor"]))
            await created(api)
            await client.events(op, 1)
            # Once a subscriber has received an event, the next one can only come live.
            opened = await scrape(http)
            await created(api)
            await client.events(op, 1)
            sent = await scrape(http)
        await eventually(
            lambda: gauge_is(http, "order_events_websocket_connections", 0),
            "the connection being counted out",
        )
        closed = await scrape(http)

    assert before.value("order_events_websocket_connections") == 0
    assert opened.value("order_events_websocket_connections") == 1
    assert opened.value("order_events_subscriptions") == 1
    assert closed.value("order_events_subscriptions") == 0
    lag = "order_events_delivery_lag_seconds_count"
    assert sent.value(lag) - opened.value(lag) == 1


def start_serving(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``python -m serving`` as scripts/serve runs it, once its health check answers."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving", *args],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"python -m serving exited:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{env['PORT']}/healthz", timeout=1).is_success:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    stop(process)
    raise RuntimeError(f"python -m serving did not start:\n{log.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def requests_per_process(directory: Path, scratch: Path) -> dict[int, float]:
    """The requests each process has counted, read from its own file in ``directory``."""
    counted = {}
    for path in directory.glob("histogram_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        alone = scratch / str(pid)
        shutil.rmtree(alone, ignore_errors=True)
        alone.mkdir(parents=True)
        shutil.copy(path, alone)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(alone))  # type: ignore[no-untyped-call]
        text = generate_latest(registry).decode()
        counted[pid] = Scrape.parse(text).requests("orderEvents")
    return counted


def test_with_two_workers_metrics_add_up_what_each_counted(
    server_env: dict[str, str], issuer: LocalIssuer, tmp_path: Path
) -> None:
    env = {**server_env, "PORT": str(free_port()), "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    url = f"http://127.0.0.1:{env['PORT']}"
    token = issuer.mint(
        account_id=ACCOUNT, scope="read:shopping", subject="screen", ttl_seconds=600
    )
    process = start_serving(env, tmp_path / "server.log", "--workers", "2")
    try:
        (directory,) = (tmp_path / "tmp").glob("order-events-metrics-*")
        made = 0
        deadline = time.monotonic() + WAIT
        while True:
            # A connection each: the kernel hands new connections to either worker.
            for _ in range(10):
                response = httpx.post(
                    f"{url}/graphql",
                    json={"query": TIMELINE},
                    headers={"authorization": f"Bearer {token}"},
                )
                assert "errors" not in response.json(), response.text
                made += 1
            counted = requests_per_process(directory, tmp_path / "scratch")
            if len([pid for pid, count in counted.items() if count > 0]) == 2:
                break
            assert time.monotonic() < deadline, f"one worker answered every request: {counted}"
        # A request is counted as its access line is written, just after its answer is sent.
        while sum(counted.values()) != made:
            assert time.monotonic() < deadline, f"{made} requests made, counted: {counted}"
            counted = requests_per_process(directory, tmp_path / "scratch")

        # Whichever worker answers /metrics, it tells the sum.
        for _ in range(6):
            text = httpx.get(f"{url}/metrics", headers={"connection": "close"}).text
            assert Scrape.parse(text).requests("orderEvents") == made
    finally:
        stop(process)
    assert not directory.exists()


def test_one_worker_keeps_its_metrics_in_memory(server_env: dict[str, str], tmp_path: Path) -> None:
    env = {**server_env, "PORT": str(free_port()), "TMPDIR": str(tmp_path)}
    process = start_serving(env, tmp_path / "server.log")
    try:
        text = httpx.get(f"http://127.0.0.1:{env['PORT']}/metrics").text
    finally:
        stop(process)

    assert list(tmp_path.glob("order-events-metrics-*")) == []
    # The process's own collectors, which a multiprocess registry has not.
    assert "process_resident_memory_bytes" in text


def test_a_worker_that_died_no_longer_counts_in_the_gauges_of_open_things(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process with a connection and a subscription open, killed without stopping.
    script = (
        "import os, signal\n"
        "from app import metrics\n"
        "metrics.WEBSOCKET_CONNECTIONS.inc()\n"
        "metrics.SUBSCRIPTIONS.inc()\n"
        "metrics.EVENTS_APPENDED.inc(3)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, metrics.MULTIPROCESS_DIRECTORY: str(tmp_path)}
    died = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=False)
    assert died.returncode == -signal.SIGKILL
    monkeypatch.setenv(metrics.MULTIPROCESS_DIRECTORY, str(tmp_path))

    scraped = Scrape.parse(metrics.exposition().decode())

    assert scraped.value("order_events_websocket_connections") == 0
    assert scraped.value("order_events_subscriptions") == 0
    assert scraped.value("order_events_events_appended_total") == 3  # counters stay
