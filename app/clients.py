"""Services' client credentials for Get Token (``app.oauth``), and which clients are revoked.

A client belongs to one account and holds a set of scopes; it gets tokens for that account
with at most those scopes. Its id is random and public (it becomes the tokens' ``sub``, so
events' ``createdBy``); its secret is random, shown once, and stored only as an Argon2id hash
(salted and slow: a stolen table does not give the secrets away). ``verify_secret`` does the
same hash work whether or not the client exists, so the time of an answer does not tell
which ids are real.

Revoking a client is for good: it gets no new token, and ``Revocations``, which every server
process refreshes in the background, makes its tokens already issued fail validation
(``app.auth.TokenValidator``) within seconds, without a database query per request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from app.auth import ACCOUNT_ID_PATTERN, is_api_scope
from app.models import OAuthClient

logger = logging.getLogger(__name__)

# 32 hex characters: below the 40 a token subject (and createdBy) may have.
CLIENT_ID_BYTES = 16
SECRET_BYTES = 32
MAX_NAME_LENGTH = 255

# Argon2id with the library's defaults, RFC 9106's second recommended profile (64 MiB,
# 3 passes): about a tenth of a second per check, which is what a device asking for a token
# once an hour can afford and a guesser cannot.
hasher = PasswordHasher()


class ClientError(ValueError):
    """A client cannot be added or changed as asked; str(error) says why."""


@dataclass(frozen=True)
class Client:
    client_id: str
    account_id: str
    name: str
    scope: str
    secret_hash: str
    revoked: bool

    def described(self, secret: str | None = None) -> dict[str, Any]:
        """What ``scripts/client`` prints: the secret only when it was just made."""
        shown: dict[str, Any] = {"client_id": self.client_id}
        if secret is not None:
            shown["client_secret"] = secret
        shown.update(account_id=self.account_id, scope=self.scope, name=self.name)
        if secret is None:
            shown["revoked"] = self.revoked
        return shown


def _client(row: OAuthClient) -> Client:
    return Client(
        client_id=row.client_id,
        account_id=row.account_id,
        name=row.name,
        scope=row.scope,
        secret_hash=row.secret_hash,
        revoked=row.revoked_at is not None,
    )


def normalized_scope(scope: str) -> str:
    """``scope`` as stored: each scope once, in the order given. Raises ``ClientError`` for
    an empty one or one that grants nothing in this API (``app.auth.is_api_scope``)."""
    scopes = list(dict.fromkeys(scope.split()))
    if not scopes:
        raise ClientError("a client needs at least one scope")
    unknown = [each for each in scopes if not is_api_scope(each)]
    if unknown:
        raise ClientError(f"not scopes of this API: {' '.join(unknown)}")
    return " ".join(scopes)


async def add_client(account_id: str, scope: str, name: str = "") -> tuple[Client, str]:
    """A new client of ``account_id`` and its secret (kept nowhere but in the answer)."""
    if not ACCOUNT_ID_PATTERN.match(account_id):
        raise ClientError(f"account id must look like T12345678 or P12345678, not {account_id!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise ClientError(f"a name has at most {MAX_NAME_LENGTH} characters")
    secret = secrets.token_urlsafe(SECRET_BYTES)
    row = await OAuthClient.create(
        client_id=secrets.token_hex(CLIENT_ID_BYTES),
        account_id=account_id,
        name=name,
        scope=normalized_scope(scope),
        secret_hash=await asyncio.to_thread(hasher.hash, secret),
        created_at=datetime.now(UTC),
    )
    return _client(row), secret


async def list_clients(account_id: str | None = None) -> list[Client]:
    query = OAuthClient.all() if account_id is None else OAuthClient.filter(account_id=account_id)
    return [_client(row) for row in await query.order_by("id")]


async def revoke_client(client_id: str) -> Client:
    row = await OAuthClient.get_or_none(client_id=client_id)
    if row is None:
        raise ClientError(f"no client {client_id!r}")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        await row.save(update_fields=["revoked_at"])
    return _client(row)


async def rotate_secret(client_id: str) -> tuple[Client, str]:
    """A new secret for the client; the old one stops working at once (tokens already
    issued stay valid until they expire: revoke the client to end those)."""
    row = await OAuthClient.get_or_none(client_id=client_id)
    if row is None:
        raise ClientError(f"no client {client_id!r}")
    if row.revoked_at is not None:
        raise ClientError(f"client {client_id!r} is revoked")
    secret = secrets.token_urlsafe(SECRET_BYTES)
    row.secret_hash = await asyncio.to_thread(hasher.hash, secret)
    await row.save(update_fields=["secret_hash"])
    return _client(row), secret


async def find_client(client_id: str, account_id: str) -> Client | None:
    """The client, if it exists, is not revoked, and belongs to ``account_id``."""
    if not client_id or len(client_id) > CLIENT_ID_BYTES * 2:
        return None
    row = await OAuthClient.get_or_none(
        client_id=client_id, account_id=account_id, revoked_at__isnull=True
    )
    return None if row is None else _client(row)


@functools.cache
def _stand_in_hash() -> str:
    # The hash of a secret nobody has, made once: checked in place of an unknown client's.
    return hasher.hash(secrets.token_urlsafe(SECRET_BYTES))


def verify_secret(client: Client | None, secret: str) -> bool:
    """True if ``secret`` is ``client``'s. Slow on purpose, the same for every caller: an
    unknown client (None) costs one Argon2 check against a stand-in hash, as a known one
    does. argon2's own comparison of the digests takes constant time."""
    stored = _stand_in_hash() if client is None else client.secret_hash
    try:
        hasher.verify(stored, secret)
    except (VerificationError, InvalidHashError):
        return False
    return client is not None


class Revocations:
    """The ids of revoked clients, as this process last read them: ``subject in
    revocations`` is a set lookup, what ``TokenValidator`` asks on every request.
    ``refresh`` reads them again (``keep_fresh`` does that every few seconds)."""

    def __init__(self) -> None:
        self._revoked: frozenset[str] = frozenset()

    def __contains__(self, subject: object) -> bool:
        return subject in self._revoked

    def is_revoked(self, subject: str) -> bool:
        return subject in self._revoked

    async def refresh(self) -> None:
        ids = await OAuthClient.filter(revoked_at__isnull=False).values_list("client_id", flat=True)
        self._revoked = frozenset(str(each) for each in ids)
