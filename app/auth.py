"""Access tokens: who is calling, for which account, and what their scopes let them do.

A request's bearer token is a JWT signed by the issuer (RFC 9068 shape). `TokenValidator`
checks it against the issuer's public keys, which come from a `KeySource`:

    KeySource
     ├── LocalIssuer    this server signs its own tokens (Get Token, scripts/token): the key
     │                  under data/, and the keys it replaced until their tokens expire
     └── RemoteKeys     an external issuer's JWKS, from JWKS_URL or JWKS_FILE

A token of a revoked client (``app.clients``) is refused however valid it is otherwise.

Errors:

    TokenError          the token cannot be trusted: the client is UNAUTHENTICATED
    KeySourceError      the issuer's keys could not be loaded: a server fault, not the client's
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import fcntl
import json
import logging
import math
import os
import re
import tempfile
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import httpx
from joserfc import jws, jwt
from joserfc.errors import (
    ExpiredTokenError,
    InvalidClaimError,
    InvalidKeyCurveError,
    InvalidKeyIdError,
    InvalidKeyTypeError,
    JoseError,
    MissingClaimError,
    UnsupportedAlgorithmError,
    UnsupportedKeyAlgorithmError,
    UnsupportedKeyUseError,
)
from joserfc.jwk import ECKey, KeySet, KeySetSerialization
from joserfc.jws import JWSRegistry
from joserfc.jwt import JWTClaimsRegistry

from app.api.body import InvalidJSON, decode_json
from app.settings import Settings, SettingsError

# \Z rather than $: `$` also matches before a trailing newline. [0-9] rather than \d: \d also
# matches non-ASCII digits.
ACCOUNT_ID_PATTERN = re.compile(r"^[PT][0-9]{8}\Z")
MAX_SUBJECT_LENGTH = 40

# The API's resource name in scopes ("write:shopping:/orders/ANY/events"), and the path
# segment that stands for any one value.
SCOPE_RESOURCE = "shopping"
ANY_SEGMENT = "ANY"
# Webhooks' scopes (app.hooks): no paths, the account's hooks as a whole.
HOOKS_RESOURCE = "hooks"
HOOK_SCOPES = frozenset(f"{action}:{HOOKS_RESOURCE}" for action in ("admin", "write", "read"))

# ES256 for the development issuer: a P-256 key is generated far faster than an RSA one, its
# signatures are 64 bytes instead of 256, and ES256 is in the default algorithm list.
LOCAL_ALGORITHM = "ES256"

# The JOSE `typ` of an access token (RFC 9068). Many issuers type their access tokens with the
# generic `JWT` (RFC 7519) instead: accepted from an external issuer, never from this server.
ACCESS_JWT_TYPE = "at+jwt"
GENERIC_JWT_TYPE = "JWT"

# How many verified tokens to remember (a few hundred bytes each).
VERIFIED_TOKENS_KEPT = 10_000

# Keys load inside a request (the first one, or one naming an unknown key): keep its wait short.
JWKS_TIMEOUT_SECONDS = 5.0

logger = logging.getLogger(__name__)


TokenFailure = Literal[
    "malformed",
    "header",
    "algorithm",
    "unknown_key",
    "signature",
    "expired",
    "not_yet_valid",
    "issuer",
    "audience",
    "claims",
    "revoked",
]


class TokenError(Exception):
    """The token is missing, malformed, badly signed, expired, not yet valid, from another
    issuer, for another audience... str(exc) is a short client-safe reason; ``reason`` the
    kind of failure, one of a few words (``TokenFailure``: the metrics count by it)."""

    def __init__(self, message: str, reason: TokenFailure) -> None:
        super().__init__(message)
        self.reason: TokenFailure = reason


class KeySourceError(Exception):
    """The issuer's public keys could not be loaded (the JWKS is unreachable or unreadable)."""


class _UnknownKeyError(TokenError):
    def __init__(self) -> None:
        super().__init__("token key is not known", "unknown_key")


@dataclass(frozen=True)
class Principal:
    """The caller a valid token speaks for."""

    subject: str
    account_id: str
    scopes: frozenset[str]
    expires_at: float

    def can_write_order(self, order_id: str) -> bool:
        return bool(order_id) and self._allows("write", ("orders", order_id, "events"))

    def can_read_order(self, order_id: str) -> bool:
        return bool(order_id) and self._allows("read", ("orders", order_id, "events"))

    def can_read_account(self) -> bool:
        # None marks a segment that must hold for every order, so only ANY covers it.
        return self._allows("read", ("orders", None, "events"))

    def can_use_hooks(self, action: str) -> bool:
        """``action`` (read or write) on the account's hooks; admin allows both."""
        return not self.scopes.isdisjoint({f"{action}:{HOOKS_RESOURCE}", f"admin:{HOOKS_RESOURCE}"})

    def _allows(self, action: str, path: tuple[str | None, ...]) -> bool:
        for scope in self.scopes:
            parsed = parse_scope(scope)
            if parsed is None:
                continue
            granted, pattern = parsed
            if granted not in (action, "admin"):
                continue
            if pattern is None or _covers(pattern, path):
                return True
        return False


def parse_scope(scope: str) -> tuple[str, tuple[str, ...] | None] | None:
    """Split `write:shopping:/orders/ANY/events` into ("write", ("orders", "ANY", "events")).

    A scope without a path covers the whole API (pattern None); a scope of another API, or one
    this code cannot read, gives None and grants nothing.
    """
    action, _, rest = scope.partition(":")
    resource, has_path, path = rest.partition(":")
    if resource != SCOPE_RESOURCE or not action:
        return None
    if not has_path:
        return action, None
    if not path.startswith("/"):
        return None
    return action, tuple(path[1:].split("/"))


def is_api_scope(scope: str) -> bool:
    """Whether ``scope`` grants anything in this API: events' scopes, or hooks'."""
    return scope in HOOK_SCOPES or parse_scope(scope) is not None


def _covers(pattern: tuple[str, ...], path: tuple[str | None, ...]) -> bool:
    return len(pattern) == len(path) and all(
        granted in (ANY_SEGMENT, wanted) for granted, wanted in zip(pattern, path, strict=True)
    )


class KeySource(Protocol):
    """Gives the issuer's public keys as a JWKS dict."""

    async def get_jwks(self, *, refresh: bool = False) -> dict[str, Any]: ...


class TokenValidator:
    """Turns a bearer token into the `Principal` it speaks for, or raises `TokenError`.

    The JWT work is joserfc's, the library Authlib 1.9's own JWT code runs on. Authlib's
    RFC 9068 validator is not used as is: it is synchronous, wants one fixed audience, a
    client_id and jti in every token, and decodes without an explicit algorithm list.

    Beyond signature and claims, the JOSE header must type the token `at+jwt` (RFC 9068); an
    external issuer's token may be typed `JWT` instead. Types compare case-insensitively, with
    or without the `application/` prefix (RFC 7515 section 4.1.9). A `crit` header is refused:
    this server implements no header extension. Header and claims are read as strict JSON, as
    the request body is: a key given twice is refused, not read last-one-wins.
    """

    def __init__(
        self,
        settings: Settings,
        keys: KeySource,
        revoked: Callable[[str], bool] | None = None,
    ) -> None:
        """``revoked`` says whether a subject is a revoked client: checked on every request,
        after the token is found valid (and from memory: ``app.clients.Revocations``)."""
        self._settings = settings
        self._keys = keys
        self._revoked = revoked
        types = [ACCESS_JWT_TYPE] if settings.local_issuer else [ACCESS_JWT_TYPE, GENERIC_JWT_TYPE]
        self._types = frozenset(name.lower() for name in types)
        self._type_error = f"token type (typ header) must be {' or '.join(types)}"
        # An explicit list: the token's own `alg` header is never trusted on its own, which is
        # what stops `alg: none` and HS256-signed-with-the-public-key tokens.
        self._registry = JWSRegistry(algorithms=list(settings.token_algorithms))
        self._claims = JWTClaimsRegistry(
            leeway=settings.token_leeway_seconds,
            iss={"essential": True, "value": settings.issuer},
            sub={"essential": True},
            aud={"essential": True},
            exp={"essential": True},
        )
        self._jwks: dict[str, Any] | None = None
        self._key_set: KeySet | None = None
        # Devices send the same token with every request until it expires: verifying its
        # signature once is enough. Keyed by the exact token text, so a hit is a token whose
        # signature and claims were checked; only its expiry needs checking again.
        self._verified: OrderedDict[str, Principal] = OrderedDict()

    async def validate(self, token: str) -> Principal:
        principal = self._verified.get(token)
        if principal is not None:
            if time.time() > principal.expires_at + self._settings.token_leeway_seconds:
                del self._verified[token]
                raise TokenError("token expired", "expired")
            self._verified.move_to_end(token)
        else:
            principal = await self._verify(token)
            self._verified[token] = principal
            if len(self._verified) > VERIFIED_TOKENS_KEPT:
                self._verified.popitem(last=False)
        if self._revoked is not None and self._revoked(principal.subject):
            raise TokenError("token's client is revoked", "revoked")
        return principal

    async def _verify(self, token: str) -> Principal:
        signed = self._extract(token)
        self._check_header(token)
        try:
            self._check_signature(signed, await self._current_keys(refresh=False))
        except _UnknownKeyError:
            # The issuer may have rotated its keys since they were loaded; the key source
            # decides how often it really goes back to the issuer.
            self._check_signature(signed, await self._current_keys(refresh=True))
        claims = _json_object(signed.payload, "token claims are")
        self._check_claims(claims)
        subject = claims["sub"]
        if len(subject) > MAX_SUBJECT_LENGTH:
            raise TokenError(
                f"token subject is longer than {MAX_SUBJECT_LENGTH} characters", "claims"
            )
        try:
            # JSON integers have no bound; a time beyond a double's is no time at all.
            expires_at = float(claims["exp"])
        except OverflowError:
            raise TokenError("token exp claim is invalid", "claims") from None
        return Principal(
            subject=subject,
            account_id=self._account_id(claims["aud"]),
            scopes=_scopes(claims.get("scope")),
            expires_at=expires_at,
        )

    async def _current_keys(self, *, refresh: bool) -> KeySet:
        jwks = await self._keys.get_jwks(refresh=refresh)
        # Importing keys costs more than comparing a small dict; sources hand back the same
        # JWKS until it changes.
        if self._key_set is None or (jwks is not self._jwks and jwks != self._jwks):
            self._key_set = _import_key_set(jwks)
            self._jwks = jwks
        return self._key_set

    def _extract(self, token: str) -> jws.CompactSignature:
        """The token's parts, its signature not yet checked."""
        try:
            return jws.extract_compact(token.encode(), registry=self._registry)
        except (JoseError, ValueError):
            raise TokenError("token is malformed", "malformed") from None

    def _check_header(self, token: str) -> None:
        # joserfc keeps the header it parsed (last key wins), not its text: read the text
        # again, strictly. Extraction has checked that it is three base64url segments.
        segment = token.partition(".")[0]
        text = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        header = _json_object(text, "token header is")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower().removeprefix("application/") not in self._types:
            raise TokenError(self._type_error, "header")
        if "crit" in header:
            crit = header["crit"]
            # RFC 7515 section 4.1.11: a non-empty list of names.
            if not isinstance(crit, list) or not crit:
                raise TokenError("token crit header is invalid", "header")
            raise TokenError(
                "token header names critical extensions (crit) this server does not implement",
                "header",
            )

    def _check_signature(self, signed: jws.CompactSignature, keys: KeySet) -> None:
        try:
            valid = jws.validate_compact(signed, keys, registry=self._registry)
        except InvalidKeyIdError:
            raise _UnknownKeyError() from None
        except UnsupportedAlgorithmError:
            raise TokenError("token algorithm is not accepted", "algorithm") from None
        except (
            InvalidKeyTypeError,
            InvalidKeyCurveError,
            UnsupportedKeyUseError,
            UnsupportedKeyAlgorithmError,
        ):
            raise TokenError("token signature is invalid", "signature") from None
        except (JoseError, ValueError):
            raise TokenError("token is malformed", "malformed") from None
        if not valid:
            raise TokenError("token signature is invalid", "signature")

    def _check_claims(self, claims: dict[str, Any]) -> None:
        try:
            self._claims.validate(claims)
        except ExpiredTokenError:
            raise TokenError("token expired", "expired") from None
        except MissingClaimError as exc:
            raise TokenError(f"token lacks the {exc.claim} claim", "claims") from None
        except InvalidClaimError as exc:
            message, reason = _CLAIM_FAILURES.get(
                exc.claim, (f"token {exc.claim} claim is invalid", "claims")
            )
            raise TokenError(message, reason) from None

    def _account_id(self, audience: str | list[str]) -> str:
        prefix = audience_of(self._settings, "")
        values = {audience} if isinstance(audience, str) else set(audience)
        # Other audiences (another API of the issuer) are fine; two accounts of this one are not.
        ours = [value.removeprefix(prefix) for value in values if value.startswith(prefix)]
        if len(ours) != 1 or not ACCOUNT_ID_PATTERN.match(ours[0]):
            raise TokenError("token audience does not name an account of this API", "audience")
        return ours[0]


# What an invalid claim means, where it is not "the claim is invalid".
_CLAIM_FAILURES: dict[str, tuple[str, TokenFailure]] = {
    "iss": ("token issuer is not accepted", "issuer"),
    "nbf": ("token is not yet valid", "not_yet_valid"),
    "iat": ("token was issued in the future", "not_yet_valid"),
}


def audience_of(settings: Settings, account_id: str) -> str:
    """The ``aud`` of a token for ``account_id``, as Dintero's Get Token has it."""
    return f"{settings.audience_base}/{account_id}"


def _json_object(data: bytes, subject: str) -> dict[str, Any]:
    """A token's header or claims as a JSON object, read by the request body's strict reader
    (`subject` begins the reason: "token claims are")."""
    try:
        value = decode_json(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise TokenError(f"{subject} not UTF-8", "malformed") from None
    except InvalidJSON as error:
        raise TokenError(f"{subject} not strict JSON: {error.reason}", "malformed") from None
    if not isinstance(value, dict):
        raise TokenError(f"{subject} not a JSON object", "malformed")
    return value


def _scopes(claim: object) -> frozenset[str]:
    if claim is None:
        return frozenset()
    if isinstance(claim, str):
        return frozenset(claim.split())
    if isinstance(claim, list) and all(isinstance(scope, str) for scope in claim):
        return frozenset(claim)
    raise TokenError("token scope claim is invalid", "claims")


def _import_key_set(jwks: dict[str, Any]) -> KeySet:
    try:
        return KeySet.import_key_set(cast(KeySetSerialization, jwks))
    except (JoseError, KeyError, TypeError, ValueError) as exc:
        raise KeySourceError(f"the issuer's JWKS is not usable: {exc}") from exc


class LocalIssuer:
    """This server as its own issuer: signs tokens with the private key kept at
    settings.signing_key_path, and publishes that key and the ones it replaced.

    Every server process (and scripts/token) reads the same files, so a mounted
    SIGNING_KEY_FILE shares them between hosts. ``rotate_signing_key`` (scripts/keys rotate)
    puts a new key in place and keeps the one it replaces in a second file beside it, public
    part only, until the tokens it signed have expired: no token stops being accepted. Each
    process picks the new key up at its next ``reload`` (every CLIENT_REFRESH_SECONDS), or at
    once when a token names a key it does not know yet (``get_jwks(refresh=True)``).
    """

    def __init__(
        self,
        settings: Settings,
        key: ECKey,
        retired: list[RetiredKey],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._key = key
        self._retired = retired
        self._jwks = _published(key, retired, settings)
        self._seen = _file_states(settings)
        self._reloaded_at = clock()

    @classmethod
    def load_or_create(
        cls, settings: Settings, clock: Callable[[], float] = time.monotonic
    ) -> LocalIssuer:
        if LOCAL_ALGORITHM not in settings.token_algorithms:
            raise SettingsError(
                f"TOKEN_ALGORITHMS must include {LOCAL_ALGORITHM} while the server issues "
                "its own tokens"
            )
        path = settings.signing_key_path
        if not path.exists():
            _create_signing_key(path)
        return cls(settings, _read_signing_key(path), _read_retired_keys(settings), clock)

    @property
    def signing_key(self) -> ECKey:
        """The key new tokens are signed with."""
        return self._key

    def jwks(self) -> dict[str, Any]:
        return copy.deepcopy(self._jwks)

    async def get_jwks(self, *, refresh: bool = False) -> dict[str, Any]:
        # A token naming a key not known here may be signed by a key another process has
        # rotated in: look at the files again, at most once a second.
        if refresh and self._clock() - self._reloaded_at >= 1:
            self.reload()
        return self._jwks

    def reload(self) -> bool:
        """Reads the key files again if they changed since they were read; True if so. A key
        file that cannot be read now keeps the keys already loaded (and is logged)."""
        self._reloaded_at = self._clock()
        seen = _file_states(self._settings)
        if seen == self._seen:
            return False
        try:
            key = _read_signing_key(self._settings.signing_key_path)
            retired = _read_retired_keys(self._settings)
        except SettingsError as error:
            logger.warning("signing keys not reloaded: %s", error)
            return False
        self._seen = seen
        self._key, self._retired = key, retired
        self._jwks = _published(key, retired, self._settings)
        return True

    def mint(
        self,
        *,
        account_id: str,
        scope: str,
        subject: str = "dev-client",
        ttl_seconds: int = 3600,
    ) -> str:
        if not ACCOUNT_ID_PATTERN.match(account_id):
            raise ValueError(
                f"account id must look like T12345678 or P12345678, not {account_id!r}"
            )
        if not 1 <= len(subject) <= MAX_SUBJECT_LENGTH:
            raise ValueError(f"subject must be 1 to {MAX_SUBJECT_LENGTH} characters")
        if ttl_seconds <= 0:
            raise ValueError("ttl must be a positive number of seconds")
        now = int(time.time())
        claims = {
            "iss": self._settings.issuer,
            "sub": subject,
            "aud": audience_of(self._settings, account_id),
            "scope": scope,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_seconds,
            "jti": str(uuid.uuid4()),
            "client_id": subject,
        }
        header = {"alg": LOCAL_ALGORITHM, "kid": self._key.kid, "typ": ACCESS_JWT_TYPE}
        return jwt.encode(header, claims, self._key, algorithms=[LOCAL_ALGORITHM])


@dataclass(frozen=True)
class RetiredKey:
    """A signing key that was replaced: its public part, published until ``retired_at``
    plus the longest a token lives (and the leeway) has passed."""

    key: ECKey
    retired_at: float


def _published(key: ECKey, retired: list[RetiredKey], settings: Settings) -> dict[str, Any]:
    now = time.time()
    kept = [old.key for old in retired if not _retired_long_enough(old, settings, now)]
    return {"keys": [each.as_dict(private=False) for each in [key, *kept]]}


def _retired_long_enough(old: RetiredKey, settings: Settings, now: float) -> bool:
    # Every token the key signed has expired (scripts/token --ttl longer than
    # ACCESS_TOKEN_TTL_SECONDS aside).
    lifetime = settings.access_token_ttl_seconds + settings.token_leeway_seconds
    return now > old.retired_at + lifetime


def retired_keys_path(settings: Settings) -> Path:
    path = settings.signing_key_path
    return path.with_name(f"{path.stem}-retired.json")


def _file_states(settings: Settings) -> tuple[tuple[int, int, int] | None, ...]:
    states: list[tuple[int, int, int] | None] = []
    for path in (settings.signing_key_path, retired_keys_path(settings)):
        try:
            stat = path.stat()
        except OSError:
            states.append(None)
        else:
            states.append((stat.st_ino, stat.st_mtime_ns, stat.st_size))
    return tuple(states)


def rotate_signing_key(settings: Settings) -> tuple[str, str | None]:
    """Puts a new signing key in place; the one it replaces goes on being published until its
    tokens have expired, and keys retired longer ago than that are dropped. Returns the new
    key's kid and the old one's (None when there was none). Rotations are serialised by a
    lock on a file beside the key, so two at once do not lose a key."""
    path = settings.signing_key_path
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        old = _read_signing_key(path) if path.exists() else None
        now = time.time()
        retired = [
            each
            for each in _read_retired_keys(settings)
            if not _retired_long_enough(each, settings, now)
        ]
        if old is not None:
            retired.insert(0, RetiredKey(old, now))
            # Published first: a process that reads the new key has the old one too.
            entries = [
                {"retired_at": each.retired_at, "key": each.key.as_dict(private=False)}
                for each in retired
            ]
            _write_replacing(retired_keys_path(settings), {"keys": entries})
        key = _new_signing_key()
        _write_replacing(path, key.as_dict(private=True))
    return str(key.kid), None if old is None else str(old.kid)


def _new_signing_key() -> ECKey:
    return ECKey.generate_key(
        "P-256", parameters={"alg": LOCAL_ALGORITHM, "use": "sig"}, auto_kid=True
    )


def _write_replacing(path: Path, content: dict[str, Any]) -> None:
    """Writes ``content`` as the whole of ``path`` at once: a reader sees the old file or
    the new one, never half of it. The file is private (mode 0600)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(content, file)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _create_signing_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    key = _new_signing_key()
    # mkstemp creates the file with mode 0600, and link() refuses to replace a key another
    # process created meanwhile: every server process and scripts/token end up with one key,
    # and nobody reads a half-written file.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".signing-key-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(key.as_dict(private=True), file)
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        os.unlink(temporary)


def _read_signing_key(path: Path) -> ECKey:
    try:
        key = ECKey.import_key(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, JoseError) as exc:
        raise SettingsError(f"{path} is not a usable signing key ({exc})") from exc
    if not key.is_private or key.curve_name != "P-256":
        raise SettingsError(f"{path} must hold a private P-256 key")
    return key


def _read_retired_keys(settings: Settings) -> list[RetiredKey]:
    path = retired_keys_path(settings)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        return [
            RetiredKey(ECKey.import_key(entry["key"]), float(entry["retired_at"]))
            for entry in content["keys"]
        ]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError, KeyError, JoseError) as exc:
        raise SettingsError(f"{path} is not a usable list of retired keys ({exc})") from exc


class RemoteKeys:
    """An external issuer's JWKS, from settings.jwks_url or settings.jwks_file.

    Loaded once, then again when the cache ages out or a token names an unknown key, but never
    more often than jwks_min_refresh_seconds: a stream of tokens with made-up key ids must not
    turn into a stream of requests to the issuer. A failed load keeps the keys already known.
    Callers that need keys while a load is in flight wait for that load, and all get its
    outcome: the keys, or the key error when there are none.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if settings.local_issuer:
            raise SettingsError("RemoteKeys needs JWKS_URL or JWKS_FILE")
        self._settings = settings
        self._transport = transport
        self._clock = clock
        self._jwks: dict[str, Any] | None = None
        self._loaded_at = -math.inf
        self._attempted_at = -math.inf
        self._loading: asyncio.Task[None] | None = None

    async def get_jwks(self, *, refresh: bool = False) -> dict[str, Any]:
        if self._wanted(refresh):
            if self._loading is None and self._may_load():
                self._loading = asyncio.create_task(self._load())
            if self._loading is not None:
                # The load is everyone's: a caller that goes away (a closed connection
                # cancels its request) must not cancel it for the others.
                await asyncio.shield(self._loading)
        if self._jwks is None:
            raise KeySourceError("the issuer's keys are not available")
        return self._jwks

    def _wanted(self, refresh: bool) -> bool:
        aged_out = self._clock() - self._loaded_at >= self._settings.jwks_cache_seconds
        return refresh or self._jwks is None or aged_out

    def _may_load(self) -> bool:
        return self._clock() - self._attempted_at >= self._settings.jwks_min_refresh_seconds

    async def _load(self) -> None:
        self._attempted_at = self._clock()
        source = self._settings.jwks_url or str(self._settings.jwks_file)
        try:
            jwks = await self._fetch() if self._settings.jwks_url else await self._read()
            if not isinstance(jwks, dict):
                raise ValueError("not a JSON object")
            _import_key_set(jwks)
        except (httpx.HTTPError, OSError, ValueError, KeySourceError) as exc:
            logger.warning("could not load the issuer's keys from %s: %s", source, exc)
        else:
            self._jwks = jwks
            self._loaded_at = self._attempted_at
        finally:
            self._loading = None

    async def _fetch(self) -> object:
        assert self._settings.jwks_url is not None
        async with httpx.AsyncClient(
            timeout=JWKS_TIMEOUT_SECONDS, transport=self._transport
        ) as client:
            response = await client.get(
                self._settings.jwks_url, headers={"Accept": "application/json"}
            )
            response.raise_for_status()
            return response.json()

    async def _read(self) -> object:
        assert self._settings.jwks_file is not None
        return json.loads(await asyncio.to_thread(self._settings.jwks_file.read_text, "utf-8"))


def key_source(settings: Settings) -> KeySource:
    if settings.local_issuer:
        return LocalIssuer.load_or_create(settings)
    return RemoteKeys(settings)
