"""Per-caller rate limits: a token bucket for each caller, in this process's memory.

A caller may make ``burst`` requests at once, and ``per_second`` on average after that; one
over is ``RateLimited`` with the seconds until its next request would be let through. With
several server processes each keeps its own buckets, so the limit a caller meets is per
process: ``--workers 4`` lets it make up to four times as many requests.

The buckets cannot grow without bound: a bucket idle long enough to have filled up again is
the same as no bucket and is dropped, and past ``max_callers`` buckets the least recently
used one goes (its caller starts again with a full bucket).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from app.errors import RateLimited


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
            wait = (1 - tokens) / self.per_second
            raise RateLimited(
                f"too many requests: at most {self.per_second:g} a second, with bursts of "
                f"{self.burst}; retry after {wait:.3f} seconds",
                retry_after=math.ceil(wait * 1000) / 1000,
            )
        self._buckets[caller] = (tokens - 1, now)
        if len(self._buckets) > self.max_callers:
            self._buckets.popitem(last=False)

    def _drop_idle(self, now: float) -> None:
        # Least recently used first: stop at the first bucket still refilling. Each bucket
        # is dropped once, so this is constant work per request on average.
        while self._buckets:
            caller, (_, counted_at) = next(iter(self._buckets.items()))
            if now - counted_at < self._refill_seconds:
                return
            del self._buckets[caller]
