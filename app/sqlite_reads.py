"""Reads of an SQLite database on the event loop, through a read-only connection of their own.

Tortoise hands every SQLite statement to aiosqlite's thread and waits for the answer: a
queue, a thread switch and a wake-up of the loop per statement, which under load cost more
than the page read itself (tens of microseconds: a few index probes and at most a page of
rows). ``fetch`` runs such a read directly instead.

It is safe because the database is in WAL mode (Tortoise's default, checked when the
connection opens): a reader never waits for the writer and always sees the last commit, and
every event is committed before it is acknowledged. When a read cannot run at once (the file
is busy, say, during a checkpoint that truncates the log) ``fetch`` returns None and the
caller goes through Tortoise, which waits for it off the loop. Only bounded reads belong
here: an index lookup and a page of rows, never a scan.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from tortoise.backends.base.client import BaseDBAsyncClient

logger = logging.getLogger(__name__)

_ATTRIBUTE = "_order_events_inline_reader"


class InlineReader:
    """Follows its Tortoise client: open while the client's own connection is, and opened
    anew when the client reconnects (the file may have been replaced in between)."""

    def __init__(self, client: BaseDBAsyncClient) -> None:
        self._client = client
        self._path = str(getattr(client, "filename", ":memory:"))
        self._connection: sqlite3.Connection | None = None
        self._opened_with: object = None  # the client's connection when this one opened
        self.enabled = self._path != ":memory:"

    def fetch(self, sql: str, params: Sequence[Any]) -> list[Any] | None:
        """The rows of ``sql``, or None when it cannot be read here and now."""
        if not self.enabled:
            return None
        theirs = getattr(self._client, "_connection", None)
        if theirs is None:
            self.close()  # Tortoise closed (or has not opened) the database: so do we
            return None
        try:
            if self._connection is None or self._opened_with is not theirs:
                self.close()
                if self._open() is None:
                    return None
                self._opened_with = theirs
            assert self._connection is not None
            return self._connection.execute(sql, params).fetchall()
        except sqlite3.OperationalError as error:
            # Busy or locked; or the file went away. Tortoise's path will say which.
            logger.debug("inline SQLite read not possible: %s", error)
            self.close()
            return None

    def _open(self) -> sqlite3.Connection | None:
        # Read-only and in autocommit mode: every statement is a read transaction of its
        # own that sees every commit made before it. No busy wait: the loop must not block.
        # As a URI, for mode=ro: the path is percent-encoded, since "?", "#" and "%" are not
        # plain characters there.
        connection = sqlite3.connect(
            f"file:{quote(self._path)}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
        connection.execute("PRAGMA busy_timeout = 0")
        (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
        if str(mode).lower() != "wal":
            # Outside WAL a reader locks out the writer: leave every read to Tortoise.
            connection.close()
            self.enabled = False
            return None
        self._connection = connection
        return connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def reader_for(client: BaseDBAsyncClient) -> InlineReader | None:
    """The inline reader of Tortoise's SQLite ``client``; None for other databases. It lives
    as long as the client does (closing with it), one per client and so per database."""
    if client.capabilities.dialect != "sqlite":
        return None
    reader: InlineReader | None = getattr(client, _ATTRIBUTE, None)
    if reader is None:
        reader = InlineReader(client)
        setattr(client, _ATTRIBUTE, reader)
    return reader
