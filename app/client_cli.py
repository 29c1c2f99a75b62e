"""scripts/client: add, list, revoke a service's client credentials, or give one a new secret.

Each command prints JSON: ``add`` and ``rotate`` one object with the secret (shown this once,
stored only as a hash), ``list`` one object a line, without secrets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping, Sequence

from tortoise import Tortoise

from app import clients
from app.db import tortoise_config
from app.settings import Settings, SettingsError


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/client",
        description="Client credentials for Get Token (POST /v1/accounts/<aid>/auth/token).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add a client; prints its id and secret")
    add.add_argument("--account", required=True, help="account id: T12345678 or P12345678")
    add.add_argument(
        "--scope", required=True, help='space-separated scopes: "write:shopping read:shopping"'
    )
    add.add_argument("--name", default="", help="what the client is, for people")
    listing = commands.add_parser("list", help="list clients (no secrets)")
    listing.add_argument("--account", help="only this account's")
    for name, text in (
        ("revoke", "revoke a client for good: no new tokens, its tokens refused within seconds"),
        ("rotate", "give a client a new secret (the old one stops working)"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("client_id")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(env)
    except SettingsError as error:
        parser.exit(1, f"scripts/client: {error}\n")
    try:
        for line in asyncio.run(_run(settings, args)):
            print(json.dumps(line))
    except clients.ClientError as error:
        parser.exit(1, f"scripts/client: {error}\n")
    return 0


async def _run(settings: Settings, args: argparse.Namespace) -> list[dict[str, object]]:
    await Tortoise.init(config=tortoise_config(settings.database_url, settings))
    try:
        if args.command == "add":
            client, secret = await clients.add_client(args.account, args.scope, args.name)
            return [client.described(secret)]
        if args.command == "rotate":
            client, secret = await clients.rotate_secret(args.client_id)
            return [client.described(secret)]
        if args.command == "revoke":
            return [(await clients.revoke_client(args.client_id)).described()]
        return [client.described() for client in await clients.list_clients(args.account)]
    finally:
        await Tortoise.close_connections()


if __name__ == "__main__":
    sys.exit(main())
