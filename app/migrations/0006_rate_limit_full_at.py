"""When each rate-limit bucket is full again (``app.ratelimit.PostgresBuckets``), by the rate
of the limiter that last took from it: the purge deletes the rows whose time has come, so
that a fast limiter's purge leaves a slow one's buckets alone. Rows of before have no such
time and are purged at the next purge (their callers start with a full bucket, as after a
crash of the UNLOGGED table).
"""

from tortoise import migrations
from tortoise.migrations import operations as ops

ADD = """
ALTER TABLE rate_limit_buckets
ADD COLUMN full_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
"""


async def add(apps, schema_editor):
    if schema_editor.client.capabilities.dialect == "postgres":
        await schema_editor.client.execute_script(ADD)


async def drop(apps, schema_editor):
    if schema_editor.client.capabilities.dialect == "postgres":
        await schema_editor.client.execute_script(
            "ALTER TABLE rate_limit_buckets DROP COLUMN full_at"
        )


class Migration(migrations.Migration):
    dependencies = [("models", "0005_hooks")]

    operations = [ops.RunPython(add, drop)]
