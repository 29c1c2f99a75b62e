"""Webhooks (``app.hooks``): hooks, their deliveries (the outbox written with each event) and
the attempts log. The partial index holds only the deliveries still to make, in the order
they fall due: a dispatcher's claim reads it from the start and stops at its first few."""

from tortoise import fields, migrations
from tortoise.indexes import Index
from tortoise.migrations import operations as ops


def _id():
    return ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True))


class Migration(migrations.Migration):
    dependencies = [("models", "0004_oauth_clients")]

    operations = [
        ops.CreateModel(
            name="Hook",
            fields=[
                _id(),
                ("hook_id", fields.CharField(unique=True, max_length=36)),
                ("account_id", fields.CharField(max_length=9)),
                ("url", fields.TextField(unique=False)),
                ("content_type", fields.CharField(max_length=64)),
                ("secret_type", fields.CharField(max_length=16)),
                ("secret", fields.TextField(unique=False)),
                ("events", fields.TextField(unique=False)),
                ("active", fields.BooleanField(default=True)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("created_by", fields.CharField(max_length=40)),
                ("updated_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("failing_since", fields.BigIntField(null=True)),
                (
                    "deactivated_at",
                    fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
                ),
                ("deactivated_reason", fields.TextField(null=True, unique=False)),
            ],
            options={
                "table": "hooks",
                "app": "models",
                "indexes": [Index(fields=["account_id", "active"], name="hooks_account")],
                "pk_attr": "id",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="HookDelivery",
            fields=[
                _id(),
                ("event_delivery", fields.CharField(unique=True, max_length=36)),
                ("hook_id", fields.BigIntField()),
                ("account_id", fields.CharField(max_length=9)),
                ("event", fields.CharField(max_length=64)),
                ("order_id", fields.CharField(null=True, max_length=128)),
                ("version", fields.IntField(null=True)),
                ("event_id", fields.CharField(null=True, max_length=40)),
                ("status", fields.CharField(max_length=16)),
                ("attempts", fields.IntField(default=0)),
                ("next_attempt_at", fields.BigIntField(default=0)),
                ("first_attempt_at", fields.BigIntField(null=True)),
                ("lease_until", fields.BigIntField(null=True)),
                ("lease_owner", fields.CharField(null=True, max_length=36)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "hook_deliveries",
                "app": "models",
                "indexes": [
                    Index(fields=["hook_id", "order_id", "version"], name="hook_deliveries_order")
                ],
                "pk_attr": "id",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="HookAttempt",
            fields=[
                _id(),
                ("attempt_id", fields.CharField(unique=True, max_length=36)),
                ("delivery_id", fields.BigIntField()),
                ("hook_id", fields.BigIntField()),
                ("attempt", fields.IntField()),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("status", fields.CharField(max_length=16)),
                ("response_status", fields.IntField(null=True)),
                ("duration_ms", fields.IntField()),
                ("request_headers", fields.TextField(unique=False)),
                ("request_body", fields.TextField(unique=False)),
                ("response_headers", fields.TextField(null=True, unique=False)),
                ("response_body", fields.TextField(null=True, unique=False)),
                ("error", fields.TextField(null=True, unique=False)),
            ],
            options={
                "table": "hook_attempts",
                "app": "models",
                "indexes": [Index(fields=["hook_id", "id"], name="hook_attempts_hook")],
                "pk_attr": "id",
            },
            bases=["Model"],
        ),
        ops.RunSQL(
            [
                "CREATE INDEX hook_deliveries_pending ON hook_deliveries (next_attempt_at, id)"
                " WHERE status = 'pending'",
            ],
            reverse_sql=["DROP INDEX hook_deliveries_pending"],
        ),
    ]
