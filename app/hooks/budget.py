"""How many webhook deliveries the dispatcher may start now: deliveries give way to the HTTP
requests the process answers, whose clients are waiting (a delivery is retried anyway).

- With no request being answered (``app.load``), as many as the dispatcher has room for.
- While requests do not queue up (fewer than ``QUEUED`` in flight on average), the rate
  doubles each ``SAMPLE_SECONDS``, up to a whole CPU's worth: spare time goes to deliveries.
- While requests queue up, the rate drops to ``WEBHOOK_DELIVERY_SHARE`` of the process's
  CPU time at a delivery's cost, claimed in batches: requests that need the whole process get
  all but that share, and deliveries still go on, to catch up when the requests ease. If
  the requests leave the CPU idle much of the time (they queue on a slow database, not on
  the CPU), deliveries may also use it up to ``IDLE_TARGET`` of one CPU's time.
- A delivery's cost is the process's CPU time per delivery (all its threads: SQLite's work
  is in one of its own), measured while no request was answered (``DEFAULT_COST_SECONDS``
  until then).

A process that must deliver more than that under a load that never eases runs delivery
processes beside it (``WEBHOOK_DELIVERY=false`` on the API's). Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Final

from app.load import REQUESTS, Requests


class Budget:
    """The dispatcher asks ``allowance`` before a claim, and reports what it ``started``
    and ``finished``, on the event loop's thread."""

    # A request ended this recently: still busy (a steady load is between requests at times).
    RECENT_SECONDS: Final = 0.05
    # The process's CPU time and its requests are sampled over this much time.
    SAMPLE_SECONDS: Final = 0.1
    # Requests in flight on average (arriving faster than they are answered, they queue).
    QUEUED: Final = 8.0
    # While requests queue up, deliveries may fill the process's CPU time up to this share
    # of one CPU.
    IDLE_TARGET: Final = 0.5
    DEFAULT_COST_SECONDS: Final = 0.002
    # A cost is measured over at least this many deliveries, within this much time.
    CALIBRATION_DELIVERIES: Final = 50
    CALIBRATION_SECONDS: Final = 10.0
    # While busy, at most this much time's worth of deliveries is claimed at once; and
    # while requests queue up, no fewer (each claim and each commit of outcomes takes the
    # database from the requests: on SQLite, its one connection).
    BATCH_SECONDS: Final = 0.25
    # Deliveries a second while busy, at least.
    MIN_RATE: Final = 1.0

    def __init__(
        self,
        share: float,
        requests: Requests = REQUESTS,
        clock: Callable[[], float] = time.monotonic,
        cpu: Callable[[], float] = time.process_time,
        cost: float = DEFAULT_COST_SECONDS,
    ) -> None:
        self.share = share
        self.cost = cost
        self._requests = requests
        self._clock = clock
        self._cpu = cpu
        now, used = clock(), cpu()
        # Deliveries a second while busy: a whole CPU's worth until requests queue up.
        self.rate = 1 / cost
        # Whether requests queued up in the last sample; deliveries started in this one.
        self._queued = False
        self._sampled_starts = 0
        self._tokens = self._batch()
        self._refilled = now
        # The sample since: time, CPU time, and requests in flight summed over time.
        self._sample = (now, used, requests.area(now))
        # A quiet stretch: since (time, CPU time), requests begun and deliveries finished then.
        self._quiet = (now, used, requests.started, 0)
        self._finished = 0

    def allowance(self) -> int | None:
        """How many deliveries may start now (None: as many as there is room for; 0: wait
        ``wait_seconds`` first)."""
        now = self._clock()
        busy = self.share < 1 and self._requests.recent(now, self.RECENT_SECONDS)
        self._sample_rate(now, busy)
        self._calibrate(now)
        if not busy:
            self._tokens, self._refilled = self._batch(), now
            return None
        self._tokens = min(self._batch(), self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        return int(self._tokens) if self._tokens >= self._least() else 0

    def wait_seconds(self) -> float:
        """Until ``allowance`` gives some again (while busy)."""
        return max(0.0, (self._least() - self._tokens) / self.rate)

    def started(self, count: int) -> None:
        self._tokens = max(0.0, self._tokens - count)
        self._sampled_starts += count

    def finished(self) -> None:
        self._finished += 1

    def _batch(self) -> float:
        return max(1.0, math.floor(self.rate * self.BATCH_SECONDS))

    def _least(self) -> float:
        """The fewest deliveries a claim is worth while busy."""
        return self._batch() if self._queued else 1.0

    def _queued_rate(self, cpu_use: float, seconds: float) -> float:
        """Deliveries a second while requests queue up, after a sample of ``seconds`` in
        which the process was on the CPU ``cpu_use`` of the time (the deliveries' part of it
        taken at their cost)."""
        others = max(0.0, cpu_use - self._sampled_starts * self.cost / seconds)
        share = max(self.share * cpu_use, self.IDLE_TARGET - others)
        return max(self.MIN_RATE, share / self.cost)

    def _sample_rate(self, now: float, busy: bool) -> None:
        """Ends a sample long enough, setting the rate from it."""
        since, used_then, area_then = self._sample
        if now - since >= self.SAMPLE_SECONDS:
            used, area = self._cpu(), self._requests.area(now)
            seconds = now - since
            self._queued = busy and (area - area_then) / seconds >= self.QUEUED
            if self._queued:
                self.rate = self._queued_rate((used - used_then) / seconds, seconds)
            else:
                self.rate = min(2 * self.rate, 1 / self.cost)
            self._sample, self._sampled_starts = (now, used, area), 0

    def _calibrate(self, now: float) -> None:
        """Ends a quiet stretch long enough, setting the cost from it; a request begun
        spoils it."""
        since, used_then, begun, finished_then = self._quiet
        requests = self._requests
        done = self._finished - finished_then
        if requests.in_flight or requests.started != begun:
            self._quiet = (now, self._cpu(), requests.started, self._finished)
        elif done >= self.CALIBRATION_DELIVERIES:
            used = self._cpu()
            # Bounded below: a clock coarser than a delivery must not make the rate endless.
            self.cost = max(1e-5, (used - used_then) / done)
            self._quiet = (now, used, begun, self._finished)
        elif now - since > self.CALIBRATION_SECONDS:
            self._quiet = (now, self._cpu(), begun, self._finished)
