"""Partial indexes for an order's combined state.

Every read of an order asks whether any of its events failed and whether any service's
latest event is pending. Without these, both questions read every event of the order; with
them, each is one probe of an index that holds only the (few) unsettled events. Each index's
condition is written exactly as the query in ``app.events.read_page`` writes it, which is
what lets SQLite's planner use a partial index.
"""

from tortoise import migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0001_initial")]

    operations = [
        ops.RunSQL(
            [
                "CREATE INDEX order_events_failed ON order_events (account_id, order_id)"
                " WHERE state IN ('error', 'failure')",
                "CREATE INDEX order_events_pending ON order_events (account_id, order_id, service)"
                " WHERE state = 'pending'",
            ],
            reverse_sql=[
                "DROP INDEX order_events_failed",
                "DROP INDEX order_events_pending",
            ],
        ),
    ]
