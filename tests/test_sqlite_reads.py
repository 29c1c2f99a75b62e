"""Page reads on SQLite run on the event loop (app/sqlite_reads.py), and fall back to
Tortoise whenever they cannot."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from tortoise.connection import get_connection

from app import events, sqlite_reads
from app.events import PAGE_SQL, read_page
from app.records import EventState
from tests.helpers import ORDER, created

ACCOUNT = "T12345678"


@pytest.fixture
def sqlite_only(database_url: str) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("inline reads are SQLite's")


class Counted:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inline = self.not_inline = 0
        fetch = sqlite_reads.InlineReader.fetch

        def counted(reader: sqlite_reads.InlineReader, *args: Any) -> Any:
            rows = fetch(reader, *args)
            self.inline += rows is not None
            self.not_inline += rows is None
            return rows

        monkeypatch.setattr(sqlite_reads.InlineReader, "fetch", counted)


async def test_a_page_is_read_inline_and_sees_the_last_commit(
    client: Any, sqlite_only: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = Counted(monkeypatch)
    for n in range(3):
        await created(client, ORDER, state="PENDING" if n == 2 else "SUCCESS")
        state, events = await read_page(ACCOUNT, ORDER, 0, 10)
        assert [e.version for e in events] == list(range(1, n + 2))

    assert state is EventState.PENDING
    assert counted.inline >= 3 and counted.not_inline == 0


async def test_inline_and_tortoise_read_the_same_page(
    client: Any, sqlite_only: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for state in ("SUCCESS", "FAILURE", "PENDING"):
        await created(client, ORDER, state=state, metadata={"n": [1, None, "ü"]})

    inline = await read_page(ACCOUNT, ORDER, 1, 10)
    events.pages.clear()
    monkeypatch.setattr(sqlite_reads.InlineReader, "fetch", lambda *_: None)
    through_tortoise = await read_page(ACCOUNT, ORDER, 1, 10)

    assert inline == through_tortoise
    assert inline[0] is EventState.FAILURE and len(inline[1]) == 2


async def test_a_busy_database_is_read_through_tortoise(
    client: Any, sqlite_only: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    await created(client, ORDER)
    reader = sqlite_reads.reader_for(get_connection("default"))
    assert reader is not None

    class Busy:
        def execute(self, *_args: Any) -> Any:
            raise sqlite3.OperationalError("database is locked")

        def close(self) -> None:
            pass

    reader.fetch(PAGE_SQL, [ACCOUNT, ORDER] * 4 + [0, 1])  # open it
    monkeypatch.setattr(reader, "_connection", Busy())

    assert reader.fetch(PAGE_SQL, [ACCOUNT, ORDER] * 4 + [0, 1]) is None
    _, events = await read_page(ACCOUNT, ORDER, 0, 10)
    assert [e.version for e in events] == [1]


def test_outside_wal_mode_every_read_is_left_to_tortoise(tmp_path: Path) -> None:
    path = tmp_path / "rollback-journal.sqlite3"
    with sqlite3.connect(path) as setup:
        setup.execute("PRAGMA journal_mode = DELETE")
        setup.execute("CREATE TABLE t (x)")

    class Client:
        capabilities = type("Capabilities", (), {"dialect": "sqlite"})()
        filename = str(path)

    reader = sqlite_reads.reader_for(Client())  # type: ignore[arg-type]
    assert reader is not None

    assert reader.fetch("SELECT 1", []) is None
    assert not reader.enabled


@pytest.mark.parametrize("name", ["wal.sqlite3", "a b#c?d%20e.sqlite3"])
def test_a_reader_follows_its_database_file_made_again(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with sqlite3.connect(path) as setup:
        setup.execute("PRAGMA journal_mode = WAL")
        setup.execute("CREATE TABLE t (x)")
        setup.execute("INSERT INTO t VALUES (1)")

    class Client:
        capabilities = type("Capabilities", (), {"dialect": "sqlite"})()
        filename = str(path)

    client = Client()
    reader = sqlite_reads.reader_for(client)  # type: ignore[arg-type]
    assert reader is not None
    assert reader.fetch("SELECT x FROM t", []) == [(1,)]

    path.unlink()  # the database deleted...
    assert reader.fetch("SELECT x FROM t", []) is None
    with sqlite3.connect(path) as setup:  # ...and made again, another file at the path
        setup.execute("PRAGMA journal_mode = WAL")
        setup.execute("CREATE TABLE t (x)")
        setup.execute("INSERT INTO t VALUES (2)")

    assert reader.fetch("SELECT x FROM t", []) == [(2,)]


async def test_postgres_has_no_inline_reader(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("the PostgreSQL run checks this")

    assert sqlite_reads.reader_for(get_connection("default")) is None
