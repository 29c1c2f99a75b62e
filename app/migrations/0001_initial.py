from tortoise import fields, migrations
from tortoise.indexes import Index
from tortoise.migrations import operations as ops

from app.records import EventState


class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name="AccountStream",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("account_id", fields.CharField(unique=True, max_length=9)),
                ("position", fields.BigIntField(default=0)),
            ],
            options={"table": "account_streams", "app": "models", "pk_attr": "id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="IdempotencyKey",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("account_id", fields.CharField(max_length=9)),
                ("subject", fields.CharField(max_length=40)),
                ("key", fields.CharField(max_length=255)),
                ("request_hash", fields.CharField(max_length=64)),
                ("event_seq", fields.BigIntField(null=True)),
                ("expires_at", fields.BigIntField()),
            ],
            options={
                "table": "idempotency_keys",
                "app": "models",
                "unique_together": (("account_id", "subject", "key"),),
                "indexes": [Index(fields=["expires_at"], name="idempotency_keys_expires_at")],
                "pk_attr": "id",
                "table_description": "A client's idempotency key and the event its first request created.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="OrderEvent",
            fields=[
                (
                    "seq",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("event_id", fields.CharField(unique=True, max_length=40)),
                ("account_id", fields.CharField(max_length=9)),
                ("order_id", fields.CharField(max_length=128)),
                ("version", fields.IntField()),
                ("position", fields.BigIntField()),
                ("event_type", fields.CharField(default="service-event", max_length=32)),
                (
                    "state",
                    fields.CharEnumField(
                        description="ERROR: error\nFAILURE: failure\nSUCCESS: success\nPENDING: pending",
                        enum_type=EventState,
                        max_length=16,
                    ),
                ),
                ("service", fields.CharField(max_length=255)),
                ("service_status", fields.CharField(max_length=255)),
                ("description", fields.TextField(null=True, unique=False)),
                ("metadata", fields.TextField(null=True, unique=False)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("created_by", fields.CharField(max_length=40)),
            ],
            options={
                "table": "order_events",
                "app": "models",
                "unique_together": (
                    ("account_id", "order_id", "version"),
                    ("account_id", "position"),
                ),
                "indexes": [
                    Index(
                        fields=["account_id", "order_id", "service", "version"],
                        name="order_events_service_latest",
                    )
                ],
                "pk_attr": "seq",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="OrderStream",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("account_id", fields.CharField(max_length=9)),
                ("order_id", fields.CharField(max_length=128)),
                ("version", fields.IntField(default=0)),
            ],
            options={
                "table": "order_streams",
                "app": "models",
                "unique_together": (("account_id", "order_id"),),
                "pk_attr": "id",
            },
            bases=["Model"],
        ),
    ]
