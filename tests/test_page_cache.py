"""Pages of an unchanged order come from the cache (app.events.PageCache) after one index
lookup; any new event, or another database behind the same versions, reads them anew."""

from __future__ import annotations

from typing import Any

import pytest

from app import events, sql
from app.events import LATEST_SQL, PAGE_SQL, PageCache, read_page
from app.records import EventState
from tests.conftest import _empty_tables
from tests.helpers import ORDER, created
from tests.test_broker import event

ACCOUNT = "T12345678"


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    events.pages.clear()
    sent: list[str] = []
    fetch = sql.fetch

    async def recorded(connection: Any, sql: str, params: list[Any]) -> Any:
        sent.append({PAGE_SQL: "page", LATEST_SQL: "latest"}[sql])
        return await fetch(connection, sql, params)

    monkeypatch.setattr(events, "fetch", recorded)
    return sent


async def test_an_unchanged_order_is_checked_not_read_again(
    client: Any, statements: list[str]
) -> None:
    await created(client, ORDER)

    first = await read_page(ACCOUNT, ORDER, 0, 10)
    second = await read_page(ACCOUNT, ORDER, 0, 10)

    assert statements == ["page", "latest"]
    assert second == first


async def test_a_new_event_is_seen_at_once(client: Any, statements: list[str]) -> None:
    await created(client, ORDER, state="SUCCESS")
    await read_page(ACCOUNT, ORDER, 0, 10)

    await created(client, ORDER, state="FAILURE")
    state, page = await read_page(ACCOUNT, ORDER, 0, 10)

    assert statements == ["page", "latest", "page"]
    assert state is EventState.FAILURE
    assert [e.version for e in page] == [1, 2]


async def test_other_pages_of_the_order_are_cached_apart(
    client: Any, statements: list[str]
) -> None:
    for _ in range(3):
        await created(client, ORDER)

    _, head = await read_page(ACCOUNT, ORDER, 0, 1)
    _, tail = await read_page(ACCOUNT, ORDER, 1, 5)

    assert statements == ["page", "page"]
    assert [e.version for e in head] == [1]
    assert [e.version for e in tail] == [2, 3]


async def test_the_same_versions_with_other_events_are_read_anew(
    client: Any, statements: list[str]
) -> None:
    # As after a restore from backup, or tables emptied and filled again: version 1 is back,
    # but it is another event.
    await created(client, ORDER, description="before")
    await read_page(ACCOUNT, ORDER, 0, 10)
    await _empty_tables()
    await created(client, ORDER, description="after")

    _, page = await read_page(ACCOUNT, ORDER, 0, 10)

    assert statements == ["page", "latest", "page"]
    assert [e.description for e in page] == ["after"]


async def test_an_order_without_events_is_not_cached(client: Any, statements: list[str]) -> None:
    await read_page(ACCOUNT, "nothing", 0, 10)
    await read_page(ACCOUNT, "nothing", 0, 10)

    assert statements == ["page", "page"]


def test_the_cache_holds_at_most_its_events_least_recently_used_out_first() -> None:
    cache = PageCache(max_events=5)
    page = events._Page(
        latest="x", state=EventState.SUCCESS, events=[event(version=1), event(version=2)]
    )

    cache.put(("a",), page)
    cache.put(("b",), page)
    assert cache.get(("a",)) is page  # now the most recently used
    cache.put(("c",), page)

    assert cache.get(("b",)) is None
    assert cache.get(("a",)) is page and cache.get(("c",)) is page
    cache.put(
        ("huge",), events._Page("y", EventState.SUCCESS, [event(version=n) for n in range(6)])
    )
    assert cache.get(("huge",)) is None
