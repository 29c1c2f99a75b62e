"""Storage: an append-only table of order events and one head row per order.

The head row (``OrderStream``) holds the order's current version. Appending bumps it with an
upsert inside the event's transaction, which locks that one row until commit: concurrent
writers to one order queue there and take versions 1, 2, 3, ... with no gap or repeat, while
writers to other orders never wait for each other.
"""

from __future__ import annotations

from enum import StrEnum

from tortoise import fields
from tortoise.indexes import Index
from tortoise.models import Model


class EventState(StrEnum):
    ERROR = "error"
    FAILURE = "failure"
    SUCCESS = "success"
    PENDING = "pending"


class OrderStream(Model):
    id = fields.BigIntField(primary_key=True)
    account_id = fields.CharField(max_length=9)
    order_id = fields.CharField(max_length=128)
    version = fields.IntField(default=0)

    class Meta:
        table = "order_streams"
        unique_together = (("account_id", "order_id"),)


class OrderEvent(Model):
    # Global position: the account-wide stream and cursors order by it.
    seq = fields.BigIntField(primary_key=True)
    event_id = fields.CharField(max_length=40, unique=True)
    account_id = fields.CharField(max_length=9)
    order_id = fields.CharField(max_length=128)
    version = fields.IntField()
    event_type = fields.CharField(max_length=32, default="service-event")
    state = fields.CharEnumField(EventState, max_length=16)
    service = fields.CharField(max_length=255)
    service_status = fields.CharField(max_length=255)
    description = fields.TextField(null=True)
    # The metadata object as JSON text, so that key order and number spelling survive
    # (PostgreSQL's jsonb would reorder keys).
    metadata = fields.TextField(null=True)
    created_at = fields.DatetimeField()
    created_by = fields.CharField(max_length=40)

    class Meta:
        table = "order_events"
        # The unique index doubles as the read path: one order's events in version order.
        unique_together = (("account_id", "order_id", "version"),)
        indexes = (
            Index(fields=("account_id", "seq"), name="order_events_account_seq"),
            Index(
                fields=("account_id", "order_id", "service", "version"),
                name="order_events_service_latest",
            ),
        )


class IdempotencyKey(Model):
    """A client's idempotency key and the event its first request created."""

    id = fields.BigIntField(primary_key=True)
    account_id = fields.CharField(max_length=9)
    subject = fields.CharField(max_length=40)
    key = fields.CharField(max_length=255)
    # SHA-256 of the request, so a retry can be told apart from another request with the key.
    request_hash = fields.CharField(max_length=64)
    event_seq = fields.BigIntField(null=True)
    # Unix seconds; an integer compares the same way on every database.
    expires_at = fields.BigIntField()

    class Meta:
        table = "idempotency_keys"
        unique_together = (("account_id", "subject", "key"),)
        indexes = (Index(fields=("expires_at",), name="idempotency_keys_expires_at"),)
