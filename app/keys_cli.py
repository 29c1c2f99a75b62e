"""scripts/keys: the signing keys of this server's tokens (while it is its own issuer).

``rotate`` puts a new key in place: new tokens are signed with it within
CLIENT_REFRESH_SECONDS on every process, and the old key stays published (and accepted) until
the tokens it signed have expired. ``show`` prints the key ids published now.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence

from app.auth import LocalIssuer, rotate_signing_key
from app.settings import Settings, SettingsError


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/keys", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "rotate", help="sign with a new key; keep the old one until its tokens expire"
    )
    commands.add_parser("show", help="the key that signs, and the ids of the keys published")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(env)
        if not settings.local_issuer:
            parser.exit(
                1,
                "scripts/keys: the settings name an external token issuer (JWKS_URL or "
                "JWKS_FILE); its keys are its own\n",
            )
        if args.command == "rotate":
            new, old = rotate_signing_key(settings)
            print(json.dumps({"signing": new, "retired": old}))
            return 0
        issuer = LocalIssuer.load_or_create(settings)
    except SettingsError as error:
        parser.exit(1, f"scripts/keys: {error}\n")
    published = [key["kid"] for key in issuer.jwks()["keys"]]
    print(json.dumps({"signing": issuer.signing_key.kid, "published": published}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
