"""The HTTP requests this process is answering: counted by the front door (``app.api.frontdoor``)
and read by background work that gives way to them (webhook delivery, ``app.hooks.budget``).
One count per process, as requests share one event loop whatever route they take.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Requests:
    """Requests being answered; requests begun so far; when the last one ended; and the
    requests in flight summed over time (their mean over a span is how many queue up)."""

    __slots__ = ("_area", "_changed", "_clock", "in_flight", "last_ended", "started")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.in_flight = 0
        self.started = 0
        self.last_ended = float("-inf")
        self._area = 0.0
        self._changed = clock()

    def begin(self) -> None:
        self._count(self._clock())
        self.in_flight += 1
        self.started += 1

    def end(self) -> None:
        now = self._clock()
        self._count(now)
        self.in_flight -= 1
        self.last_ended = now

    def recent(self, now: float, seconds: float) -> bool:
        """Whether a request is being answered, or one ended less than ``seconds`` before
        ``now`` (on this count's clock): a process under a steady load is between
        two requests now and then."""
        return self.in_flight > 0 or now - self.last_ended < seconds

    def area(self, now: float) -> float:
        """Requests in flight times seconds, summed up to ``now``."""
        return self._area + self.in_flight * (now - self._changed)

    def _count(self, now: float) -> None:
        self._area += self.in_flight * (now - self._changed)
        self._changed = now


REQUESTS = Requests()
