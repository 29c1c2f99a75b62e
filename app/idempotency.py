"""Idempotency keys: a retried request returns the event its first attempt created.

A key belongs to one caller (account and token subject). The first request claims it inside
the transaction that stores the event, so the claim and the event commit or vanish together:
a request that fails (bad input, version conflict, crash) leaves the key free for a retry.
A second request with the key waits for the first's transaction on the unique index
(PostgreSQL) or behind it on SQLite's single writer, then finds the claim and replays it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.connection import get_connection

from app.sql import placeholders

logger = logging.getLogger(__name__)

PURGE_BATCH = 1000


@dataclass(frozen=True)
class Key:
    """A request's idempotency key, and what identifies the request."""

    account_id: str
    subject: str
    key: str
    request_hash: str
    ttl_seconds: int


class KeyTaken(Exception):
    """Another request holds the key: replay what it stored."""


@dataclass(frozen=True)
class StoredClaim:
    """A key claimed earlier: the request it was used for, and the event it created."""

    request_hash: str
    event_seq: int | None


def fingerprint(**request: Any) -> str:
    """A stable hash of a request's meaningful parts; keys of ``request`` name them."""
    text = json.dumps(request, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


async def claim(connection: BaseDBAsyncClient, key: Key) -> bool:
    """Claims ``key`` in the caller's transaction; False when a live claim already holds it.

    An expired claim that was not purged yet is taken over, as if it were gone.
    """
    now = int(time.time())
    sql = placeholders(
        connection,
        "INSERT INTO idempotency_keys"
        " (account_id, subject, key, request_hash, event_seq, expires_at)"
        " VALUES (?, ?, ?, ?, NULL, ?)"
        " ON CONFLICT (account_id, subject, key) DO UPDATE SET"
        " request_hash = excluded.request_hash, event_seq = NULL,"
        " expires_at = excluded.expires_at"
        " WHERE idempotency_keys.expires_at <= ?"
        " RETURNING id",
    )
    rows = await connection.execute_query_dict(
        sql, [key.account_id, key.subject, key.key, key.request_hash, now + key.ttl_seconds, now]
    )
    return bool(rows)


async def record_event(connection: BaseDBAsyncClient, key: Key, event_seq: int) -> None:
    sql = placeholders(
        connection,
        "UPDATE idempotency_keys SET event_seq = ?"
        " WHERE account_id = ? AND subject = ? AND key = ?",
    )
    await connection.execute_query(sql, [event_seq, key.account_id, key.subject, key.key])


async def find(key: Key) -> StoredClaim | None:
    """The live claim on ``key``, if any."""
    connection = get_connection("default")
    sql = placeholders(
        connection,
        "SELECT request_hash, event_seq FROM idempotency_keys"
        " WHERE account_id = ? AND subject = ? AND key = ? AND expires_at > ?",
    )
    rows = await connection.execute_query_dict(
        sql, [key.account_id, key.subject, key.key, int(time.time())]
    )
    if not rows:
        return None
    seq = rows[0]["event_seq"]
    return StoredClaim(
        request_hash=rows[0]["request_hash"], event_seq=None if seq is None else int(seq)
    )


async def purge_expired(*, batch: int = PURGE_BATCH) -> int:
    """Deletes expired claims in small batches, so no statement holds locks for long."""
    connection = get_connection("default")
    sql = placeholders(
        connection,
        "DELETE FROM idempotency_keys WHERE id IN"
        " (SELECT id FROM idempotency_keys WHERE expires_at <= ? LIMIT ?)",
    )
    total = 0
    while True:
        deleted, _ = await connection.execute_query(sql, [int(time.time()), batch])
        total += deleted
        if deleted < batch:
            return total
