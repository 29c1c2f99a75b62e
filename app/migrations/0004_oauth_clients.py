"""Services' client credentials for Get Token (``app.models.OAuthClient``)."""

from tortoise import fields, migrations
from tortoise.indexes import Index
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0003_rate_limit_buckets")]

    operations = [
        ops.CreateModel(
            name="OAuthClient",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("client_id", fields.CharField(unique=True, max_length=40)),
                ("account_id", fields.CharField(max_length=9)),
                ("name", fields.CharField(default="", max_length=255)),
                ("scope", fields.TextField(unique=False)),
                ("secret_hash", fields.CharField(max_length=255)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("revoked_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "oauth_clients",
                "app": "models",
                "indexes": [Index(fields=["account_id"], name="oauth_clients_account")],
                "pk_attr": "id",
            },
            bases=["Model"],
        ),
    ]
