"""The timers WebSocket connections share (``app.timers``): token expiry, pings, init timeouts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.timers import Deadlines, deadlines

WAIT = 5.0


async def test_deadlines_run_in_the_order_they_fall_due(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    ran: list[float] = []
    last = loop.create_future()
    # Set at one instant: a pause between two calls (the process descheduled on a busy
    # machine) would otherwise shift a deadline past the next one.
    with monkeypatch.context() as frozen:
        now = loop.time()
        frozen.setattr(loop, "time", lambda: now)
        for delay in (0.03, 0.01, 0.02):
            deadlines.call_later(delay, lambda delay=delay: ran.append(delay))
        deadlines.call_later(0.04, lambda: last.set_result(None))

    await asyncio.wait_for(last, WAIT)

    assert ran == [0.01, 0.02, 0.03]
    assert len(deadlines) == 0


async def test_a_cancelled_deadline_does_not_run_and_lets_go_of_its_callback() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    ran: list[str] = []
    last = asyncio.get_running_loop().create_future()
    cancelled = deadlines.call_later(0.01, lambda: ran.append("cancelled"))
    deadlines.call_later(0.02, lambda: last.set_result(None))

    cancelled.cancel()
    await asyncio.wait_for(last, WAIT)

    assert ran == []
    assert cancelled.callback is None


async def test_many_cancelled_deadlines_leave_the_heap() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    entries = [deadlines.call_later(3600, lambda: None) for _ in range(1000)]

    for entry in entries[:900]:
        entry.cancel()

    assert len(deadlines) == 100
    assert len(deadlines._heap) < 300
    for entry in entries[900:]:
        entry.cancel()


async def test_a_deadline_callback_that_fails_is_reported_and_the_others_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    monkeypatch.setattr(loop, "call_exception_handler", reported.append)
    deadlines = Deadlines(loop)
    last = loop.create_future()

    def failing() -> None:
        raise RuntimeError("boom")

    deadlines.call_later(0.0, failing)
    deadlines.call_later(0.0, lambda: last.set_result(None))
    await asyncio.wait_for(last, WAIT)

    assert [type(context["exception"]) for context in reported] == [RuntimeError]


async def test_the_connections_of_a_loop_share_its_deadlines() -> None:
    assert deadlines() is deadlines(asyncio.get_running_loop())
