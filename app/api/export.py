"""``python -m app.api.export [--check]``: write or compare schema.graphql."""

from __future__ import annotations

import sys
from pathlib import Path

from strawberry.printer import print_schema

from app.api.schema import schema

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schema.graphql"


def printed_schema() -> str:
    return print_schema(schema) + "\n"


def main(argv: list[str]) -> int:
    text = printed_schema()
    if "--check" in argv:
        if not SCHEMA_FILE.exists() or SCHEMA_FILE.read_text() != text:
            print("schema.graphql is out of date: run scripts/export-schema", file=sys.stderr)
            return 1
        return 0
    SCHEMA_FILE.write_text(text)
    print(f"wrote {SCHEMA_FILE.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
