"""Answers remembered by identity (app/memo.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from app.memo import ByIdentity


def test_an_answer_is_made_once_per_object() -> None:
    made: list[object] = []
    memo: ByIdentity[str] = ByIdentity()
    source = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    def make(value: datetime) -> str:
        made.append(value)
        return value.isoformat()

    assert memo.get(source, make) == memo.get(source, make) == "2026-01-02T03:04:05+00:00"
    assert made == [source]


def test_equal_objects_are_answered_apart() -> None:
    memo: ByIdentity[str] = ByIdentity()
    utc = datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    oslo = utc.astimezone(timezone(timedelta(hours=1)))
    assert utc == oslo

    assert memo.get(utc, datetime.isoformat) == "2026-01-02T03:00:00+00:00"
    assert memo.get(oslo, datetime.isoformat) == "2026-01-02T04:00:00+01:00"


def test_another_variant_is_made_anew() -> None:
    memo: ByIdentity[str] = ByIdentity()
    source = object()

    assert memo.get(source, lambda _: "a", variant="http://a") == "a"
    assert memo.get(source, lambda _: "b", variant="http://b") == "b"


def test_it_holds_at_most_its_size() -> None:
    memo: ByIdentity[int] = ByIdentity(size=3)
    sources = [object() for _ in range(10)]
    for number, source in enumerate(sources):
        memo.get(source, lambda _, n=number: n)  # type: ignore[misc]

    assert len(memo._answers) <= 3
    assert memo.get(sources[-1], lambda _: -1) == 9
