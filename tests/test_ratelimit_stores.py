"""Rate-limit buckets shared by several server processes (RATE_LIMIT_STORE): in Redis and in
PostgreSQL, two limiters (two app instances) see one bucket per caller; a store that is down
or silent neither refuses nor holds up a request, the process's own buckets decide meanwhile.

Redis tests need the Redis at TEST_REDIS_URL (default redis://127.0.0.1:6379/0) and skip with
the reason when it is unreachable; each uses keys under a prefix of its own. PostgreSQL tests
run in the PostgreSQL pass, on the suite's database.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis as SyncRedis
from starlette.applications import Starlette

from app.errors import RateLimited
from app.main import create_app
from app.ratelimit import (
    BucketStore,
    PostgresBuckets,
    RedisBuckets,
    SharedRateLimiter,
    create_limiter,
)
from app.settings import Settings, SettingsError
from tests.conftest import GraphQLClient, Mint
from tests.helpers import WAIT
from tests.live import http_api, subscriber
from tests.servers import free_port, running_servers

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
READ = "{ __typename }"
_callers = (f"caller-{uuid.uuid4().hex[:8]}-{n}" for n in itertools.count())

StoreFactory = Callable[[], BucketStore]


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own in the test Redis, its keys deleted afterwards."""
    client = SyncRedis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except Exception as error:
        client.close()
        pytest.skip(f"Redis at {REDIS_URL} is not reachable ({type(error).__name__}: {error})")
    prefix = f"order-events-test:{uuid.uuid4().hex}:"
    yield prefix
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def postgres_only_store(database_url: str) -> None:
    if not database_url.startswith("postgres"):
        pytest.skip("the PostgreSQL store needs PostgreSQL; this run is on SQLite")


@pytest.fixture(params=["redis", "postgres"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def stores(
    request: pytest.FixtureRequest, store_kind: str, database_url: str, app: Starlette
) -> AsyncIterator[StoreFactory]:
    """Makes stores of ``store_kind`` that share their buckets, as two processes' would
    (``database_url``: Redis's run in both passes, PostgreSQL's in its own; ``app``: the
    database is migrated)."""
    made: list[BucketStore] = []
    if store_kind == "redis":
        prefix = request.getfixturevalue("redis_prefix")
    else:
        postgres_only_store(database_url)

    def make() -> BucketStore:
        store: BucketStore
        if store_kind == "redis":
            store = RedisBuckets(REDIS_URL, prefix, 2.0)
        else:
            store = PostgresBuckets(database_url)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


def shared(store: BucketStore, per_second: float = 0.001, burst: int = 3) -> SharedRateLimiter:
    return SharedRateLimiter(store, per_second, burst, timeout=2.0)


async def take(limiter: SharedRateLimiter, caller: str) -> RateLimited | None:
    """None when ``caller`` was let through, else the refusal."""
    try:
        await limiter.take(caller)
    except RateLimited as error:
        return error
    return None


# One bucket for every process.


async def test_two_processes_share_a_callers_burst(stores: StoreFactory) -> None:
    first, second = shared(stores()), shared(stores())
    caller = next(_callers)

    outcomes = [await take(limiter, caller) for limiter in (first, second, first, second)]

    assert [outcome is None for outcome in outcomes] == [True, True, True, False]


async def test_concurrent_requests_get_exactly_the_burst(stores: StoreFactory) -> None:
    limiters = [shared(stores(), burst=10) for _ in range(2)]
    caller = next(_callers)

    outcomes = await asyncio.gather(*(take(limiters[n % 2], caller) for n in range(40)))

    assert sum(outcome is None for outcome in outcomes) == 10


async def test_a_shared_refusal_says_when_to_retry(stores: StoreFactory) -> None:
    limiter = shared(stores(), per_second=0.5, burst=1)
    caller = next(_callers)
    await take(limiter, caller)

    refusal = await take(limiter, caller)

    # The next token comes 2 s after the first request was counted.
    assert refusal is not None
    assert 1.5 < refusal.retry_after <= 2


async def test_the_shared_bucket_refills_at_the_rate(stores: StoreFactory) -> None:
    limiter = shared(stores(), per_second=50, burst=1)
    caller = next(_callers)
    await take(limiter, caller)
    refusal = await take(limiter, caller)
    assert refusal is not None
    await asyncio.sleep(refusal.retry_after + 0.05)

    assert await take(limiter, caller) is None


async def test_refused_requests_do_not_spend_the_shared_bucket(stores: StoreFactory) -> None:
    limiter = shared(stores(), per_second=20, burst=1)
    caller = next(_callers)
    await take(limiter, caller)
    for _ in range(5):
        refusal = await take(limiter, caller)
    assert refusal is not None
    await asyncio.sleep(refusal.retry_after + 0.05)

    assert await take(limiter, caller) is None


async def test_a_request_given_back_is_shared_and_bounded_by_the_burst(
    stores: StoreFactory,
) -> None:
    first, second = shared(stores(), burst=2), shared(stores(), burst=2)
    caller = next(_callers)
    await take(first, caller)
    await take(second, caller)

    for _ in range(3):  # one more than was taken: still at most the burst
        await first.give_back(caller)
    outcomes = [await take(limiter, caller) for limiter in (second, first, second)]

    assert [outcome is None for outcome in outcomes] == [True, True, False]


async def test_callers_have_shared_buckets_of_their_own(stores: StoreFactory) -> None:
    first, second = shared(stores(), burst=1), shared(stores(), burst=1)
    await take(first, next(_callers))

    assert await take(second, next(_callers)) is None


# Two app instances: HTTP requests and WebSocket operations take from one bucket.


@pytest.fixture
def store_setting(
    request: pytest.FixtureRequest, store_kind: str, database_url: str
) -> dict[str, Any]:
    if store_kind == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        return {"rate_limit_store": REDIS_URL, "rate_limit_key_prefix": prefix}
    postgres_only_store(database_url)
    return {"rate_limit_store": "postgres"}


async def test_two_app_instances_share_a_callers_bucket(
    client: GraphQLClient,
    other_settings: Callable[..., Settings],
    store_setting: dict[str, Any],
    mint: Mint,
) -> None:
    limits = {"rate_limit_per_second": 0.001, "rate_limit_burst": 2, **store_setting}
    token = mint(sub=next(_callers))
    statuses = []
    async with (
        app_instance(other_settings(**limits)) as first,
        app_instance(other_settings(**limits)) as second,
    ):
        for instance in (first, second, first, second):
            statuses.append((await instance.post(READ, token=token)).status_code)

    assert statuses == [200, 200, 429, 429]


@contextlib.asynccontextmanager
async def app_instance(settings: Settings) -> AsyncIterator[GraphQLClient]:
    """A client of an app of its own (its lifespan not run: no broker, fine for reads), its
    limiter closed afterwards."""
    application = create_app(settings)
    transport = httpx.ASGITransport(app=application)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield GraphQLClient(http=http, default_token=None)
    finally:
        await application.state.rate_limiter.close()


# When the store is down or silent.


class FailingStore:
    name = "test store"

    def __init__(self) -> None:
        self.failing = True
        self.calls = 0

    async def take(self, caller: str, per_second: float, burst: int) -> float:
        self.calls += 1
        if self.failing:
            raise ConnectionRefusedError("connection refused")
        return 0.0

    async def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter_over(
    store: BucketStore, burst: int = 2, timeout: float = 2.0
) -> tuple[SharedRateLimiter, Clock]:
    clock = Clock()
    limiter = SharedRateLimiter(store, 0.001, burst, timeout=timeout, retry_seconds=5, clock=clock)
    return limiter, clock


async def test_while_the_store_is_down_the_process_counts_on_its_own() -> None:
    limiter, _ = limiter_over(FailingStore(), burst=2)

    outcomes = [await take(limiter, "kitchen") for _ in range(3)]

    assert [outcome is None for outcome in outcomes] == [True, True, False]


async def test_a_store_found_down_is_left_alone_for_a_while() -> None:
    store = FailingStore()
    limiter, clock = limiter_over(store)
    await take(limiter, "kitchen")
    clock.now += 4
    await take(limiter, "kitchen")
    calls_while_left_alone = store.calls
    clock.now += 1

    await take(limiter, "kitchen")

    assert (calls_while_left_alone, store.calls) == (1, 2)


async def test_an_outage_is_one_warning_and_its_end_one_more(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FailingStore()
    limiter, clock = limiter_over(store, burst=100)
    with caplog.at_level(logging.WARNING, logger="app.ratelimit"):
        for _ in range(3):
            await take(limiter, "kitchen")
            clock.now += 5
        store.failing = False
        for _ in range(3):
            await take(limiter, "kitchen")

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2, messages
    assert "unusable" in messages[0] and "connection refused" in messages[0]
    assert "answers again" in messages[1]


async def test_an_unreachable_redis_lets_requests_through() -> None:
    store = RedisBuckets(f"redis://127.0.0.1:{free_port()}/0", "t:", 2.0)
    limiter, _ = limiter_over(store)

    async with asyncio.timeout(WAIT):
        outcome = await take(limiter, "kitchen")
    await store.close()

    assert outcome is None


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A port that accepts connections and never answers, as a stalled server."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def _through_a_silent(make: Callable[[int], BucketStore]) -> RateLimited | None:
    async with silent_server() as port:
        store = make(port)
        limiter, _ = limiter_over(store, timeout=0.2)
        try:
            async with asyncio.timeout(WAIT):
                return await take(limiter, "kitchen")
        finally:
            await store.close()


async def test_a_silent_redis_lets_requests_through() -> None:
    outcome = await _through_a_silent(
        lambda port: RedisBuckets(f"redis://127.0.0.1:{port}/0", "t:", 0.2)
    )

    assert outcome is None


async def test_a_silent_postgres_lets_requests_through() -> None:
    outcome = await _through_a_silent(
        lambda port: PostgresBuckets(f"postgres://postgres@127.0.0.1:{port}/test")
    )

    assert outcome is None


# Settings.


def test_the_store_is_memory_by_default() -> None:
    assert Settings.from_env({}).rate_limit_store == "memory"


@pytest.mark.parametrize(
    "env",
    [
        {"RATE_LIMIT_STORE": "redis://127.0.0.1:6379/2"},
        {"RATE_LIMIT_STORE": "rediss://cache.example:6380/0"},
        {"RATE_LIMIT_STORE": "postgres", "DATABASE_URL": "postgres://u@db/orders"},
    ],
)
def test_a_shared_store_is_accepted(env: dict[str, str]) -> None:
    assert Settings.from_env(env).rate_limit_store == env["RATE_LIMIT_STORE"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RATE_LIMIT_STORE": "postgress"}, "not 'postgress'"),
        ({"RATE_LIMIT_STORE": "postgres"}, "needs DATABASE_URL to name a PostgreSQL"),
        ({"RATE_LIMIT_STORE": "redis://cache:port/0"}, "no usable Redis URL"),
        ({"RATE_LIMIT_STORE": "memcached://u:secret@cache"}, "a redis:// URL"),
        ({"RATE_LIMIT_STORE_TIMEOUT_SECONDS": "0"}, "more than 0"),
    ],
)
def test_an_unusable_store_setting_is_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message) as raised:
        Settings.from_env(env)

    assert "secret" not in str(raised.value)


def test_rate_limits_off_need_no_store() -> None:
    settings = Settings.from_env({"RATE_LIMIT_PER_SECOND": "0", "RATE_LIMIT_STORE": REDIS_URL})

    assert create_limiter(settings) is None


# Two server processes: an HTTP request on one and a WebSocket operation on the other take
# from one bucket.


async def test_two_server_processes_share_a_callers_bucket(
    postgres_only: None,
    server_env: dict[str, str],
    store_setting: dict[str, Any],
    mint: Mint,
    tmp_path: Path,
) -> None:
    env = {
        **server_env,
        "RATE_LIMIT_PER_SECOND": "0.001",
        "RATE_LIMIT_BURST": "2",
        **{name.upper(): value for name, value in store_setting.items()},
    }
    token = mint(sub=next(_callers))
    with running_servers(2, env, tmp_path) as (first, second):
        async with http_api(first, token) as http:
            statuses = [(await http.post(READ)).status_code for _ in range(2)]
        async with subscriber(second, token) as ws:
            error = await ws.error(await ws.subscribe(READ))

    assert statuses == [200, 200]
    assert error["extensions"]["code"] == "RATE_LIMITED"


async def test_a_fast_limiters_purge_leaves_a_slow_limiters_buckets(
    stores: StoreFactory, store_kind: str
) -> None:
    if store_kind != "postgres":
        pytest.skip("Redis keys expire each by their own bucket's time: no purge")
    slow_store, fast_store = stores(), stores()
    assert isinstance(fast_store, PostgresBuckets)
    # Get Token's attempts beside the requests' limit: a bucket that takes hours to refill,
    # and one that is full again in a millisecond.
    slow, fast = shared(slow_store, per_second=0.001, burst=2), shared(fast_store, 1000, 1)
    caller = next(_callers)
    assert [await take(slow, caller), await take(slow, caller)] == [None, None]

    assert await take(fast, next(_callers)) is None  # its first take starts a purge
    assert fast_store.purging is not None
    await fast_store.purging

    assert isinstance(await take(slow, caller), RateLimited)
