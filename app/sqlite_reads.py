"""Reads of an SQLite database on the event loop, through a read-only connection of their own.

Tortoise hands every SQLite statement to aiosqlite's thread and waits for the answer, which
costs more than a bounded read itself (an index lookup and a page of rows); ``fetch`` runs
such a read directly, and returns None when it cannot run at once (the caller then goes
through Tortoise). Safe in WAL mode: a reader never waits for the writer and sees the last
commit.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import weakref
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from tortoise.backends.base.client import BaseDBAsyncClient

logger = logging.getLogger(__name__)

# One reader per Tortoise client (so per database), living as long as the client does.
_readers: weakref.WeakKeyDictionary[BaseDBAsyncClient, InlineReader] = weakref.WeakKeyDictionary()


class InlineReader:
    """Follows its database file: opened on first use, and opened anew when the file at the
    path is another one (the database was deleted and made again) or gone."""

    def __init__(self, client: BaseDBAsyncClient) -> None:
        self._path = str(getattr(client, "filename", ":memory:"))
        self._connection: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None  # (device, inode) of the file opened
        self.enabled = self._path != ":memory:"

    def fetch(self, sql: str, params: Sequence[Any]) -> list[Any] | None:
        """The rows of ``sql``, or None when it cannot be read here and now."""
        if not self.enabled:
            return None
        try:
            status = os.stat(self._path)
        except OSError:
            self.close()  # no database there (yet, or any more): Tortoise will say
            return None
        try:
            if self._connection is None or self._file != (status.st_dev, status.st_ino):
                self.close()
                if self._open() is None:
                    return None
                self._file = (status.st_dev, status.st_ino)
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
    reader = _readers.get(client)
    if reader is None:
        reader = _readers[client] = InlineReader(client)
    return reader
