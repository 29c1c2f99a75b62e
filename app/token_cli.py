"""scripts/token: print an access token signed by this server's own development key."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence

from app.auth import ACCOUNT_ID_PATTERN, MAX_SUBJECT_LENGTH, LocalIssuer
from app.settings import Settings, SettingsError


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/token",
        description="Print an access token from the development issuer, signed with the key "
        "the server uses (DATA_DIR/signing-key.json, created if missing).",
    )
    parser.add_argument("--account", required=True, help="account id: T12345678 or P12345678")
    parser.add_argument(
        "--scope", required=True, help='space-separated scopes: "write:shopping read:shopping"'
    )
    parser.add_argument(
        "--sub",
        default="dev-client",
        help=f"token subject, 1 to {MAX_SUBJECT_LENGTH} characters (default: dev-client)",
    )
    parser.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default: 3600)")
    args = parser.parse_args(argv)

    if not ACCOUNT_ID_PATTERN.match(args.account):
        parser.error(f"--account must be T or P and 8 digits (T12345678), not {args.account!r}")
    try:
        settings = Settings.from_env(env)
        if not settings.local_issuer:
            parser.exit(
                1,
                "scripts/token: the settings name an external token issuer (JWKS_URL or "
                "JWKS_FILE); get a token from that issuer instead\n",
            )
        issuer = LocalIssuer.load_or_create(settings)
    except SettingsError as exc:
        parser.exit(1, f"scripts/token: {exc}\n")
    try:
        token = issuer.mint(
            account_id=args.account, scope=args.scope, subject=args.sub, ttl_seconds=args.ttl
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
