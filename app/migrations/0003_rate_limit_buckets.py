"""The callers' rate-limit buckets shared by every server process (RATE_LIMIT_STORE=postgres;
see ``app.ratelimit.PostgresBuckets``), on PostgreSQL only: a SQLite database serves one
process, whose buckets are in its memory.

UNLOGGED: a bucket is rewritten on every request, and none is worth a write to the log; a
crash empties the table, which gives every caller a full bucket. No index but the key's: the
idle rows are purged once a minute, and an index on the time would make each update a new
index entry too.
"""

from tortoise import migrations
from tortoise.migrations import operations as ops

CREATE = """
CREATE UNLOGGED TABLE rate_limit_buckets (
    caller TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    granted BOOLEAN NOT NULL,
    counted_at TIMESTAMPTZ NOT NULL
)
"""


async def create(apps, schema_editor):
    if schema_editor.client.capabilities.dialect == "postgres":
        await schema_editor.client.execute_script(CREATE)


async def drop(apps, schema_editor):
    if schema_editor.client.capabilities.dialect == "postgres":
        await schema_editor.client.execute_script("DROP TABLE rate_limit_buckets")


class Migration(migrations.Migration):
    dependencies = [("models", "0002_unsettled_events")]

    operations = [ops.RunPython(create, drop)]
