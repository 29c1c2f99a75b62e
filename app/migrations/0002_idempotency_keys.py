from tortoise import fields, migrations
from tortoise.indexes import Index
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0001_initial")]

    initial = False

    operations = [
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
    ]
