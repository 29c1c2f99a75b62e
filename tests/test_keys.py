"""Signing key rotation (app.auth.rotate_signing_key, LocalIssuer.reload): the new key signs,
the old one is published until its tokens have expired."""

from __future__ import annotations

import json
import time
from pathlib import Path

from app.auth import LocalIssuer, TokenValidator, retired_keys_path, rotate_signing_key
from app.settings import Settings
from tests.conftest import ACCOUNT


def kids(issuer: LocalIssuer) -> list[str]:
    return [key["kid"] for key in issuer.jwks()["keys"]]


def test_rotation_signs_with_the_new_key_and_publishes_the_old(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    issuer = LocalIssuer.load_or_create(settings)
    old = issuer.signing_key.kid

    new, retired = rotate_signing_key(settings)
    reloaded = issuer.reload()

    assert (retired, reloaded) == (old, True)
    assert issuer.signing_key.kid == new
    assert kids(issuer) == [new, old]
    assert not issuer.reload()  # nothing changed since


async def test_token_of_a_key_rotated_in_elsewhere_is_accepted_at_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    now = [0.0]
    stale = LocalIssuer.load_or_create(settings, clock=lambda: now[0])
    validator = TokenValidator(settings, stale)
    now[0] += 5  # its last look at the files was a while ago
    rotate_signing_key(settings)
    token = LocalIssuer.load_or_create(settings).mint(account_id=ACCOUNT, scope="read:shopping")

    principal = await validator.validate(token)

    assert principal.account_id == ACCOUNT


def test_keys_retired_longer_than_a_token_lives_are_dropped(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, access_token_ttl_seconds=60)
    first = LocalIssuer.load_or_create(settings).signing_key.kid
    rotate_signing_key(settings)
    path = retired_keys_path(settings)
    content = json.loads(path.read_text())
    lifetime = settings.access_token_ttl_seconds + settings.token_leeway_seconds
    content["keys"][0]["retired_at"] = time.time() - lifetime - 1
    path.write_text(json.dumps(content))

    published = kids(LocalIssuer.load_or_create(settings))
    newest, second = rotate_signing_key(settings)
    kept = [entry["key"]["kid"] for entry in json.loads(path.read_text())["keys"]]

    assert first not in published
    assert kept == [second]
    assert kids(LocalIssuer.load_or_create(settings)) == [newest, second]
