"""Per-caller rate limits: a token bucket for each caller.

A caller may make ``burst`` requests at once, and ``per_second`` on average after that; one
over is ``RateLimited`` with the seconds until its next request would be let through. Every
request counts, an HTTP request or an operation started over a WebSocket, against the one
bucket of its caller (``caller_key``).

Where the buckets live is ``RATE_LIMIT_STORE``:

    RateLimiter            memory: this process's own (the default); ``take`` is plain code
    SharedRateLimiter      a store every server process reaches; ``take`` is awaited
     ├── PostgresBuckets   an UNLOGGED table of the service's database, one upsert a request
     └── RedisBuckets      a Redis hash per caller, one Lua script a request

With the memory store and several server processes each keeps its own buckets, so the limit a
caller meets is per process: ``--workers 4`` lets it make up to four times as many requests.
A shared store gives them one bucket. While the store cannot be reached (or does not answer
within ``RATE_LIMIT_STORE_TIMEOUT_SECONDS``), each process falls back on buckets of its own
for a few seconds at a time, and says so once in its log: a request is neither refused nor
held up because the limiter's store is down, and a caller still meets a limit (the per
process one) meanwhile.

The memory buckets cannot grow without bound: a bucket idle long enough to have filled up
again is the same as no bucket and is dropped, and past ``max_callers`` buckets the least
recently used one goes (its caller starts again with a full bucket). A shared store expires
buckets alike: Redis keys expire, and PostgreSQL rows are deleted now and then.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.errors import RateLimited

if TYPE_CHECKING:
    from app.auth import Principal
    from app.settings import Settings

logger = logging.getLogger(__name__)


def caller_key(principal: Principal | None, address: str | None) -> str:
    """The bucket a request counts against, whichever way it came: the token's account and
    subject, or, without a valid token, the client's address (an account id never starts
    with ``@``)."""
    if principal is not None:
        return f"{principal.account_id} {principal.subject}"
    return f"@{address or ''}"


_T = TypeVar("_T")


class Limiter(Protocol):
    def take(self, caller: str) -> Awaitable[None] | None:
        """Lets one request of ``caller`` through, or raises ``RateLimited``: at once, when
        this returns None, or when the awaitable it returns is awaited (a shared store). The
        callers know which at start-up; memory buckets cost no await."""

    def give_back(self, caller: str) -> Awaitable[None] | None:
        """Returns the request ``take`` let through, up to the burst: for a budget of failures
        that must be taken before the outcome is known (Get Token's client authentications)
        and given back when it was no failure. Awaited like ``take``."""

    async def close(self) -> None:
        """Lets go of the store's connections."""


def _refusal(per_second: float, burst: int, wait: float) -> RateLimited:
    return RateLimited(
        f"too many requests: at most {per_second:g} a second, with bursts of "
        f"{burst}; retry after {wait:.3f} seconds",
        retry_after=math.ceil(wait * 1000) / 1000,
    )


class RateLimiter:
    def __init__(
        self,
        per_second: float,
        burst: int,
        *,
        max_callers: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_second <= 0 or burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")
        self.per_second = per_second
        self.burst = burst
        self.max_callers = max_callers
        self.clock = clock
        # Seconds an unused bucket takes to fill up again, after which it can go.
        self._refill_seconds = burst / per_second
        # caller -> (tokens left, when they were counted); least recently used first.
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    async def close(self) -> None:
        pass

    def take(self, caller: Hashable) -> None:
        """Lets one request of ``caller`` through, or raises ``RateLimited``."""
        now = self.clock()
        self._drop_idle(now)
        bucket = self._buckets.get(caller)
        if bucket is None:
            tokens = float(self.burst)
        else:
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.per_second)
            self._buckets.move_to_end(caller)
        if tokens < 1:
            self._buckets[caller] = (tokens, now)
            raise _refusal(self.per_second, self.burst, (1 - tokens) / self.per_second)
        self._buckets[caller] = (tokens - 1, now)
        if len(self._buckets) > self.max_callers:
            self._buckets.popitem(last=False)

    def give_back(self, caller: Hashable) -> None:
        bucket = self._buckets.get(caller)
        if bucket is not None:  # else it is full, or was dropped as full
            self._buckets[caller] = (min(self.burst, bucket[0] + 1), bucket[1])

    def _drop_idle(self, now: float) -> None:
        # Least recently used first: stop at the first bucket still refilling. Each bucket
        # is dropped once, so this is constant work per request on average.
        while self._buckets:
            caller, (_, counted_at) = next(iter(self._buckets.items()))
            if now - counted_at < self._refill_seconds:
                return
            del self._buckets[caller]


# Shared stores ------------------------------------------------------------------------------


class BucketStore(Protocol):
    # What the log calls it (never its URL, which may hold a password).
    name: str

    async def take(self, caller: str, per_second: float, burst: int) -> float:
        """Takes one request from ``caller``'s bucket, atomically whichever process asks:
        0 when it is let through, else the seconds until the next one would be."""

    async def give_back(self, caller: str, burst: int) -> None:
        """Puts one request back in ``caller``'s bucket, up to ``burst``, atomically."""

    async def close(self) -> None: ...


class SharedRateLimiter:
    """Buckets in a ``BucketStore`` that every server process reaches, so that N processes
    give a caller the rate of one.

    A store that fails or does not answer within ``timeout`` seconds is left alone for
    ``retry_seconds``; meanwhile, and for the request that found it so, this process's own
    buckets (``local``) decide. One warning when the store goes away, one line when it is
    back: an outage is not a log line per request."""

    def __init__(
        self,
        store: BucketStore,
        per_second: float,
        burst: int,
        *,
        timeout: float,
        retry_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.per_second = per_second
        self.burst = burst
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self.clock = clock
        self.local = RateLimiter(per_second, burst, clock=clock)
        # While the store is unusable: when to try it again.
        self._retry_at: float | None = None

    def take(self, caller: str) -> Awaitable[None]:
        return self._take(caller)

    async def _take(self, caller: str) -> None:
        wait = await self._ask_store(
            lambda: self.store.take(caller, self.per_second, self.burst),
            lambda: self.local.take(caller),
        )
        if wait is not None and wait > 0:
            raise _refusal(self.per_second, self.burst, wait)

    def give_back(self, caller: str) -> Awaitable[None]:
        return self._give_back(caller)

    async def _give_back(self, caller: str) -> None:
        await self._ask_store(
            lambda: self.store.give_back(caller, self.burst),
            lambda: self.local.give_back(caller),
        )

    async def _ask_store(
        self, ask: Callable[[], Awaitable[_T]], locally: Callable[[], None]
    ) -> _T | None:
        """What the store answers ``ask``, or None when this process's own buckets stood in
        (``locally``): while the store is left alone, or when it fails or is late now."""
        retry_at = self._retry_at
        if retry_at is not None and self.clock() < retry_at:
            locally()
            return None
        try:
            async with asyncio.timeout(self.timeout):
                answer = await ask()
        except Exception as error:  # whatever the store's driver raises: refused, reset, late
            self._unusable(error)
            locally()
            return None
        if retry_at is not None:
            self._retry_at = None
            logger.warning("rate-limit store %s answers again", self.store.name)
        return answer

    def _unusable(self, error: Exception) -> None:
        if self._retry_at is None:
            logger.warning(
                "rate-limit store %s unusable (%s: %s); this process counts requests on its "
                "own until it answers (tried again every %g s)",
                self.store.name,
                type(error).__name__,
                error or f"no answer within {self.timeout:g} s",
                self.retry_seconds,
            )
        self._retry_at = self.clock() + self.retry_seconds

    async def close(self) -> None:
        await self.store.close()


# One caller's bucket, as the memory store has it: refilled for the time since it was last
# counted, up to the burst; one token taken if there is one. The time is Redis's own, so that
# processes on several hosts agree; a Lua number passed to redis.call is written with 14
# digits, so the numbers kept are formatted here.
_REDIS_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local kept = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = burst
if kept[1] then
  tokens = math.min(burst, tonumber(kept[1]) + math.max(0, now - tonumber(kept[2])) * rate)
end
local wait = 0
if tokens < 1 then wait = (1 - tokens) / rate else tokens = tokens - 1 end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
  'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000))
return string.format('%.17g', wait)
"""
# A request put back: only into a bucket that is there (one that expired is full).
_REDIS_GIVE_BACK = """
local tokens = redis.call('HGET', KEYS[1], 'tokens')
if tokens then
  redis.call('HSET', KEYS[1], 'tokens',
    string.format('%.17g', math.min(tonumber(ARGV[1]), tonumber(tokens) + 1)))
end
return 0
"""


class RedisBuckets:
    """Each caller's bucket a Redis hash under ``prefix``, taken from by one Lua script (a
    script runs alone: no other client's command comes between its reads and writes). A
    bucket expires once idle long enough to be full again."""

    name = "Redis"

    def __init__(self, url: str, prefix: str, timeout: float) -> None:
        self.prefix = prefix
        # No retries of a failed command: the limiter falls back on its own buckets instead.
        self._client = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._script = self._client.register_script(_REDIS_TAKE)
        self._give_back = self._client.register_script(_REDIS_GIVE_BACK)

    async def take(self, caller: str, per_second: float, burst: int) -> float:
        wait = await self._script(keys=[self.prefix + caller], args=[repr(per_second), burst])
        return float(wait)

    async def give_back(self, caller: str, burst: int) -> None:
        await self._give_back(keys=[self.prefix + caller], args=[burst])

    async def close(self) -> None:
        await self._client.aclose()


# The same bucket as one upsert (an atomic statement: two processes taking from one caller's
# bucket at once wait for each other's row lock). A refused request keeps the refilled tokens,
# as in memory; ``granted`` says which it was, since the tokens left cannot.
_POSTGRES_TAKE = """
INSERT INTO rate_limit_buckets AS bucket (caller, tokens, granted, counted_at, full_at)
VALUES (
    $1, $3::float8 - 1, true, clock_timestamp(),
    clock_timestamp() + make_interval(secs => 1 / $2::float8)
)
ON CONFLICT (caller) DO UPDATE SET (tokens, granted, counted_at, full_at) = (
    SELECT taken.tokens, taken.granted, taken.now,
           taken.now + make_interval(secs => ($3::float8 - taken.tokens) / $2::float8)
    FROM (
        SELECT CASE WHEN refill.tokens >= 1 THEN refill.tokens - 1 ELSE refill.tokens END
                   AS tokens,
               refill.tokens >= 1 AS granted,
               refill.now
        FROM (
            SELECT LEAST(
                $3::float8,
                bucket.tokens
                + GREATEST(0, extract(epoch FROM now.at - bucket.counted_at)::float8)
                  * $2::float8
            ) AS tokens, now.at AS now
            FROM (SELECT clock_timestamp() AS at) AS now
        ) AS refill
    ) AS taken
)
RETURNING tokens, granted
"""
_POSTGRES_GIVE_BACK = """
UPDATE rate_limit_buckets SET tokens = LEAST($2::float8, tokens + 1) WHERE caller = $1
"""
# A bucket full again is the same as none. Each row says when it will be, by its own
# limiter's rate: one store's purge must not empty the buckets of a slower limiter (Get
# Token's attempts) that share the table.
_POSTGRES_PURGE = """
DELETE FROM rate_limit_buckets WHERE full_at < clock_timestamp()
"""


class PostgresBuckets:
    """Each caller's bucket a row of ``rate_limit_buckets`` (app/migrations/0003), an UNLOGGED
    table: no write-ahead log per request, and a crash only empties it (every caller starts
    with a full bucket). Its own small pool, opened on first use: the requests' pool is not
    spent on rate limits, and the limiter's timeout bounds the wait for a connection. Idle
    buckets are deleted at most once a ``purge_interval``, beside a request."""

    name = "PostgreSQL"

    def __init__(self, database_url: str, *, pool_size: int = 2, purge_interval: float = 60.0):
        # asyncpg's spelling of the URL, as the broker's listener has it.
        self._dsn = urlunsplit(urlsplit(database_url)._replace(scheme="postgresql"))
        self._pool_size = pool_size
        self._pool: Any = None
        self._opening = asyncio.Lock()
        self._purge_interval = purge_interval
        self._purge_at = 0.0
        # The latest purge, started beside a request.
        self.purging: asyncio.Task[None] | None = None

    async def take(self, caller: str, per_second: float, burst: int) -> float:
        pool = self._pool if self._pool is not None else await self._open()
        row = await pool.fetchrow(_POSTGRES_TAKE, caller, per_second, burst)
        if time.monotonic() >= self._purge_at:
            self._purge_at = time.monotonic() + self._purge_interval
            self.purging = asyncio.create_task(self._purge())
        return 0.0 if row["granted"] else (1 - float(row["tokens"])) / per_second

    async def give_back(self, caller: str, burst: int) -> None:
        pool = self._pool if self._pool is not None else await self._open()
        await pool.execute(_POSTGRES_GIVE_BACK, caller, burst)

    async def _open(self) -> Any:
        async with self._opening:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._dsn, min_size=0, max_size=self._pool_size, reset=_keep_session
                )
        return self._pool

    async def _purge(self) -> None:
        try:
            await self._pool.execute(_POSTGRES_PURGE)
        except Exception as error:  # the next purge deletes them; a request will say why
            logger.debug("rate-limit buckets not purged: %s", error)

    async def close(self) -> None:
        if self.purging is not None:
            self.purging.cancel()
        if self._pool is not None:
            await self._pool.close()


async def _keep_session(_connection: Any) -> None:
    """No reset query between two takes on a connection (asyncpg's default is one more
    round trip each time): the limiter leaves no session state behind."""


def create_limiter(settings: Settings) -> Limiter | None:
    """The limiter ``settings`` ask for; None when rate limits are off."""
    if settings.rate_limit_per_second <= 0:
        return None
    per_second, burst = settings.rate_limit_per_second, settings.rate_limit_burst
    timeout = settings.rate_limit_store_timeout_seconds
    store: BucketStore
    if settings.rate_limit_store == "memory":
        return RateLimiter(per_second, burst)
    if settings.rate_limit_store == "postgres":
        store = PostgresBuckets(settings.database_url)
    else:
        store = RedisBuckets(settings.rate_limit_store, settings.rate_limit_key_prefix, timeout)
    return SharedRateLimiter(store, per_second, burst, timeout=timeout)
