"""Storage: an append-only table of order events, and head rows that number them.

Events are numbered by head rows bumped in the event's transaction, not by a table-wide
sequence: sequence values are taken at insert, so a lower one can commit after a higher one
was already delivered, while head rows number an account's events in commit order, which is
what live subscribers need (see the comment on ``AccountStream``).
"""

from __future__ import annotations

from tortoise import fields
from tortoise.indexes import Index
from tortoise.models import Model

from app.records import EventState


# Appending an event bumps two head rows with upserts inside the event's transaction: the
# account's (``AccountStream.position``) and the order's (``OrderStream.version``). An upsert
# locks its row until commit, so concurrent writers to one account queue there and take
# positions and versions 1, 2, 3, ... with no gap or repeat, in commit order: an account's
# events reach live subscribers, and are replayed to them, in position order, and a missing
# position is a gap to fill from the table, never an event still to commit. The price is that
# writers to one account take turns at their commit; accounts never wait for each other.
# (Comments, not docstrings: Tortoise records a model's docstring as its table's description.)
class AccountStream(Model):
    id = fields.BigIntField(primary_key=True)
    account_id = fields.CharField(max_length=9, unique=True)
    position = fields.BigIntField(default=0)

    class Meta:
        table = "account_streams"


class OrderStream(Model):
    id = fields.BigIntField(primary_key=True)
    account_id = fields.CharField(max_length=9)
    order_id = fields.CharField(max_length=128)
    version = fields.IntField(default=0)

    class Meta:
        table = "order_streams"
        unique_together = (("account_id", "order_id"),)


class OrderEvent(Model):
    # Its columns but ``seq`` are StoredEvent's fields (``app.records``); a test holds them equal.
    seq = fields.BigIntField(primary_key=True)
    event_id = fields.CharField(max_length=40, unique=True)
    account_id = fields.CharField(max_length=9)
    order_id = fields.CharField(max_length=128)
    version = fields.IntField()
    # The event's place in its account's stream: account-wide subscriptions and cursors.
    position = fields.BigIntField()
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
        unique_together = (("account_id", "order_id", "version"), ("account_id", "position"))
        indexes = (
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


# A service's client credentials for Get Token (``app.clients``, ``app.oauth``): only the
# secret's Argon2id hash is kept. A revoked client is kept, revoked, so that every process
# can go on refusing the tokens it was issued until they expire.
class OAuthClient(Model):
    id = fields.BigIntField(primary_key=True)
    client_id = fields.CharField(max_length=40, unique=True)
    account_id = fields.CharField(max_length=9)
    name = fields.CharField(max_length=255, default="")
    scope = fields.TextField()
    secret_hash = fields.CharField(max_length=255)
    created_at = fields.DatetimeField()
    revoked_at = fields.DatetimeField(null=True)

    class Meta:
        table = "oauth_clients"
        indexes = (Index(fields=("account_id",), name="oauth_clients_account"),)


# A merchant's webhook (``app.hooks``): where an account's events are POSTed, signed with the
# secret. The secret is kept as given, not hashed: it is the key every delivery is signed
# with. A hook that failed for long enough is made inactive, saying why.
class Hook(Model):
    id = fields.BigIntField(primary_key=True)
    hook_id = fields.CharField(max_length=36, unique=True)
    account_id = fields.CharField(max_length=9)
    url = fields.TextField()
    content_type = fields.CharField(max_length=64)
    secret_type = fields.CharField(max_length=16)
    secret = fields.TextField()
    # The event names, as a JSON list.
    events = fields.TextField()
    active = fields.BooleanField(default=True)
    created_at = fields.DatetimeField()
    created_by = fields.CharField(max_length=40)
    updated_at = fields.DatetimeField()
    # Unix milliseconds of the first failed attempt since the last delivered one.
    failing_since = fields.BigIntField(null=True)
    deactivated_at = fields.DatetimeField(null=True)
    deactivated_reason = fields.TextField(null=True)

    class Meta:
        table = "hooks"
        indexes = (Index(fields=("account_id", "active"), name="hooks_account"),)


# One event to one hook: the outbox. Written in the event's own transaction (``app.writer``
# with ``app.hooks.outbox``), so an acknowledged event is never without its deliveries.
# Times that are compared in queries are Unix milliseconds: an integer compares the same way
# on every database.
class HookDelivery(Model):
    id = fields.BigIntField(primary_key=True)
    event_delivery = fields.CharField(max_length=36, unique=True)
    hook_id = fields.BigIntField()
    account_id = fields.CharField(max_length=9)
    event = fields.CharField(max_length=64)
    order_id = fields.CharField(max_length=128, null=True)
    version = fields.IntField(null=True)
    event_id = fields.CharField(max_length=40, null=True)
    status = fields.CharField(max_length=16)
    attempts = fields.IntField(default=0)
    next_attempt_at = fields.BigIntField(default=0)
    first_attempt_at = fields.BigIntField(null=True)
    lease_until = fields.BigIntField(null=True)
    lease_owner = fields.CharField(max_length=36, null=True)
    created_at = fields.DatetimeField()

    class Meta:
        table = "hook_deliveries"
        # Version order per hook and order: the one in flight is the earliest not delivered.
        indexes = (Index(fields=("hook_id", "order_id", "version"), name="hook_deliveries_order"),)


# One POST of a delivery: the deliveries log of a hook, with what was sent and answered
# (bodies cut short).
class HookAttempt(Model):
    id = fields.BigIntField(primary_key=True)
    attempt_id = fields.CharField(max_length=36, unique=True)
    delivery_id = fields.BigIntField()
    hook_id = fields.BigIntField()
    attempt = fields.IntField()
    created_at = fields.DatetimeField()
    status = fields.CharField(max_length=16)
    response_status = fields.IntField(null=True)
    duration_ms = fields.IntField()
    request_headers = fields.TextField()
    request_body = fields.TextField()
    response_headers = fields.TextField(null=True)
    response_body = fields.TextField(null=True)
    error = fields.TextField(null=True)

    class Meta:
        table = "hook_attempts"
        indexes = (Index(fields=("hook_id", "id"), name="hook_attempts_hook"),)
