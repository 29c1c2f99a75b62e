"""The committed schema.graphql is the schema the server runs (scripts/export-schema
rewrites it)."""

from __future__ import annotations

from app.api.export import SCHEMA_FILE, printed_schema


def test_schema_file_is_in_sync_with_the_code() -> None:
    assert SCHEMA_FILE.read_text() == printed_schema(), (
        "schema.graphql is out of date: run scripts/export-schema"
    )
