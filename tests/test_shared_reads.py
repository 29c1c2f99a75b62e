"""``app.shared_reads.SharedReads``: callers share a read only while it has not begun."""

from __future__ import annotations

import asyncio

import pytest

from app.shared_reads import SharedReads


class Table:
    """A read that counts its calls, can be held open, and answers with its call number."""

    def __init__(self) -> None:
        self.calls = 0
        self.running = 0
        self.most_at_once = 0
        self.begun = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()
        self.fail_with: Exception | None = None

    async def fetch(self) -> int:
        self.calls += 1
        call = self.calls
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        self.begun.set()
        try:
            await self.release.wait()
            if self.fail_with is not None:
                raise self.fail_with
            return call
        finally:
            self.running -= 1


async def test_callers_asking_before_the_read_begins_share_it() -> None:
    reads, table = SharedReads(), Table()

    answers = await asyncio.gather(*(reads.read("head", table.fetch) for _ in range(20)))

    assert (table.calls, answers) == (1, [1] * 20)
    assert len(reads) == 0  # nothing kept once it has landed


async def test_callers_asking_once_the_read_has_begun_share_one_more_read_after_it() -> None:
    reads, table = SharedReads(), Table()
    table.release.clear()
    first = asyncio.ensure_future(reads.read("head", table.fetch))
    await table.begun.wait()

    later = [asyncio.ensure_future(reads.read("head", table.fetch)) for _ in range(5)]
    await asyncio.sleep(0.01)
    assert table.calls == 1  # the next read waits for the one running
    table.release.set()

    assert await first == 1
    assert await asyncio.gather(*later) == [2] * 5
    assert (table.calls, table.most_at_once) == (2, 1)


async def test_different_keys_are_read_apart_and_at_once() -> None:
    reads, table = SharedReads(), Table()
    table.release.clear()
    both = asyncio.gather(reads.read("a", table.fetch), reads.read("b", table.fetch))
    await asyncio.sleep(0.01)
    table.release.set()

    assert sorted(await both) == [1, 2]
    assert table.most_at_once == 2


async def test_a_failed_read_fails_its_callers_and_is_not_kept() -> None:
    reads, table = SharedReads(), Table()
    table.fail_with = ConnectionError("database unavailable")

    outcomes = await asyncio.gather(
        *(reads.read("head", table.fetch) for _ in range(3)), return_exceptions=True
    )
    assert [type(outcome) for outcome in outcomes] == [ConnectionError] * 3

    table.fail_with = None
    assert await reads.read("head", table.fetch) == 2


async def test_a_caller_going_away_does_not_cancel_the_others_read() -> None:
    reads, table = SharedReads(), Table()
    table.release.clear()
    leaving = asyncio.ensure_future(reads.read("head", table.fetch))
    staying = asyncio.ensure_future(reads.read("head", table.fetch))
    await table.begun.wait()

    leaving.cancel()
    table.release.set()

    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert await staying == 1
