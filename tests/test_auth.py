import asyncio
import base64
import hashlib
import hmac
import json
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, Key, RSAKey
from joserfc.jws import JWSRegistry

from app.auth import (
    KeySourceError,
    LocalIssuer,
    Principal,
    RemoteKeys,
    TokenError,
    TokenValidator,
    key_source,
)
from app.settings import Settings, SettingsError
from app.token_cli import main as token_cli

ACCOUNT = "T12345678"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def issuer(settings: Settings) -> LocalIssuer:
    return LocalIssuer.load_or_create(settings)


@pytest.fixture
def validator(settings: Settings, issuer: LocalIssuer) -> TokenValidator:
    return TokenValidator(settings, issuer)


def rsa_key(kid: str = "rsa-1") -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig"})


def jwks_of(*keys: Key) -> dict[str, Any]:
    return {"keys": [key.as_dict(private=False) for key in keys]}


def claims_for(settings: Settings, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": settings.issuer,
        "sub": "kitchen",
        "aud": f"{settings.audience_base}/{ACCOUNT}",
        "scope": "read:shopping",
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def sign(claims: dict[str, Any], key: Key, alg: str = "RS256", typ: str = "at+jwt") -> str:
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": typ}, claims, key, algorithms=[alg])


def sign_text(header: str, claims: str | bytes, key: Key, alg: str = "RS256") -> str:
    """A token signed over the header and claims exactly as written, so that they may hold
    what a JSON encoder never writes (a key twice, NaN, bytes that are not UTF-8)."""
    payload = claims.encode() if isinstance(claims, str) else claims
    signing_input = f"{b64(header.encode())}.{b64(payload)}"
    signature = JWSRegistry(algorithms=[alg]).get_alg(alg).sign(signing_input.encode(), key)
    return f"{signing_input}.{b64(signature)}"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_segments(header: dict[str, Any], claims: dict[str, Any]) -> str:
    # Typed as an access token unless `header` says otherwise: what a test changes is then
    # the one thing wrong with the token.
    header = {"typ": "at+jwt", **header}
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"


class FakeKeys:
    """A key source whose refreshed answer the test chooses."""

    def __init__(self, jwks: dict[str, Any], after_refresh: dict[str, Any] | None = None):
        self.jwks = jwks
        self.after_refresh = after_refresh or jwks
        self.refreshes = 0

    async def get_jwks(self, *, refresh: bool = False) -> dict[str, Any]:
        if refresh:
            self.refreshes += 1
            self.jwks = self.after_refresh
        return self.jwks


async def rejection(validator: TokenValidator, token: str) -> str:
    with pytest.raises(TokenError) as caught:
        await validator.validate(token)
    return str(caught.value)


# Valid tokens.


async def test_valid_token_gives_its_principal(
    settings: Settings, issuer: LocalIssuer, validator: TokenValidator
) -> None:
    token = issuer.mint(account_id=ACCOUNT, scope="write:shopping read:shopping", subject="pos-1")

    principal = await validator.validate(token)

    assert principal.subject == "pos-1"
    assert principal.account_id == ACCOUNT
    assert principal.scopes == {"write:shopping", "read:shopping"}
    assert time.time() + 3500 < principal.expires_at <= time.time() + 3600


class CountingKeys(FakeKeys):
    def __init__(self, jwks: dict[str, Any]) -> None:
        super().__init__(jwks)
        self.asked = 0

    async def get_jwks(self, *, refresh: bool = False) -> dict[str, Any]:
        self.asked += 1
        return await super().get_jwks(refresh=refresh)


async def test_a_token_is_verified_once_then_remembered(
    settings: Settings, issuer: LocalIssuer
) -> None:
    keys = CountingKeys(issuer.jwks())
    validator = TokenValidator(settings, keys)
    token = issuer.mint(account_id=ACCOUNT, scope="read:shopping")

    first = await validator.validate(token)
    second = await validator.validate(token)

    assert second == first
    assert keys.asked == 1


async def test_a_remembered_token_still_expires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path / "data", token_leeway_seconds=0)
    issuer = LocalIssuer.load_or_create(settings)
    validator = TokenValidator(settings, issuer)
    token = issuer.mint(account_id=ACCOUNT, scope="read:shopping", ttl_seconds=60)
    await validator.validate(token)

    # The wall clock moves past the expiry, for whatever reads it.
    past_expiry = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: past_expiry)

    assert await rejection(validator, token) == "token expired"


async def test_scope_may_be_a_json_list(settings: Settings) -> None:
    key = rsa_key()
    validator = TokenValidator(settings, FakeKeys(jwks_of(key)))
    token = sign(claims_for(settings, scope=["read:shopping", "write:shopping"]), key)

    assert (await validator.validate(token)).scopes == {"read:shopping", "write:shopping"}


async def test_audience_list_may_name_other_apis(settings: Settings) -> None:
    key = rsa_key()
    validator = TokenValidator(settings, FakeKeys(jwks_of(key)))
    audience = ["https://other.example/api", f"{settings.audience_base}/P87654321"]

    principal = await validator.validate(sign(claims_for(settings, aud=audience), key))

    assert principal.account_id == "P87654321"


async def test_clock_skew_within_leeway_is_accepted(settings: Settings) -> None:
    key = rsa_key()
    validator = TokenValidator(settings, FakeKeys(jwks_of(key)))
    soon = int(time.time()) + settings.token_leeway_seconds - 5
    token = sign(claims_for(settings, nbf=soon, iat=soon), key)

    assert (await validator.validate(token)).subject == "kitchen"


# Rejected tokens.


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": int(time.time()) - 120}, "token expired"),
        ({"nbf": int(time.time()) + 600}, "token is not yet valid"),
        ({"iat": int(time.time()) + 600}, "token was issued in the future"),
        ({"iss": "https://evil.example"}, "token issuer is not accepted"),
        ({"iss": "http://127.0.0.1:8000/"}, "token issuer is not accepted"),
        ({"exp": None}, "token lacks the exp claim"),
        ({"sub": None}, "token lacks the sub claim"),
        ({"aud": None}, "token lacks the aud claim"),
        ({"iss": None}, "token lacks the iss claim"),
        ({"sub": "x" * 41}, "token subject is longer than 40 characters"),
        ({"scope": {"read": True}}, "token scope claim is invalid"),
        ({"exp": 10**400}, "token exp claim is invalid"),
        ({"exp": "tomorrow"}, "token exp claim is invalid"),
    ],
)
async def test_bad_claims_are_rejected(
    settings: Settings, overrides: dict[str, Any], reason: str
) -> None:
    key = rsa_key()
    validator = TokenValidator(settings, FakeKeys(jwks_of(key)))

    assert await rejection(validator, sign(claims_for(settings, **overrides), key)) == reason


@pytest.mark.parametrize(
    "audience",
    [
        "https://other.example/v1/accounts/T12345678",
        "http://127.0.0.1:8000/v1/accounts/T1234567",
        "http://127.0.0.1:8000/v1/accounts/X12345678",
        "http://127.0.0.1:8000/v1/accounts/T12345678/orders",
        "http://127.0.0.1:8000/v1/accounts/T12345678\n",
        "http://127.0.0.1:8000/v1/accounts/",
        [
            "http://127.0.0.1:8000/v1/accounts/T12345678",
            "http://127.0.0.1:8000/v1/accounts/T87654321",
        ],
    ],
)
async def test_audience_must_name_exactly_one_account_of_this_api(
    settings: Settings, audience: str | list[str]
) -> None:
    key = rsa_key()
    validator = TokenValidator(settings, FakeKeys(jwks_of(key)))

    reason = await rejection(validator, sign(claims_for(settings, aud=audience), key))

    assert reason == "token audience does not name an account of this API"


async def test_signature_by_another_key_with_the_same_kid_is_rejected(settings: Settings) -> None:
    validator = TokenValidator(settings, FakeKeys(jwks_of(rsa_key("k"))))
    forged = sign(claims_for(settings), rsa_key("k"))

    assert await rejection(validator, forged) == "token signature is invalid"


async def test_alg_none_is_rejected(settings: Settings) -> None:
    key = rsa_key()
    validator = TokenValidator(settings, FakeKeys(jwks_of(key)))
    token = unsigned_segments({"alg": "none", "kid": key.kid}, claims_for(settings)) + "."

    assert await rejection(validator, token) == "token algorithm is not accepted"


@pytest.mark.parametrize("secret_form", ["pem", "jwk"])
async def test_hs256_signed_with_the_public_key_is_rejected(
    settings: Settings, secret_form: str
) -> None:
    key = rsa_key()
    validator = TokenValidator(settings, FakeKeys(jwks_of(key)))
    public = key.as_dict(private=False)
    secret = key.as_pem(private=False) if secret_form == "pem" else json.dumps(public).encode()
    signing_input = unsigned_segments({"alg": "HS256", "kid": key.kid}, claims_for(settings))
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()

    assert await rejection(validator, f"{signing_input}.{b64(mac)}") == (
        "token algorithm is not accepted"
    )


async def test_algorithm_outside_the_allowed_list_is_rejected(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, token_algorithms=("ES256",))
    key = rsa_key()
    validator = TokenValidator(settings, FakeKeys(jwks_of(key)))

    assert await rejection(validator, sign(claims_for(settings), key)) == (
        "token algorithm is not accepted"
    )


async def test_key_of_another_type_than_the_algorithm_is_rejected(settings: Settings) -> None:
    ec = ECKey.generate_key("P-256", parameters={"kid": "k"})
    validator = TokenValidator(settings, FakeKeys(jwks_of(ec)))
    token = sign(claims_for(settings), rsa_key("k"))

    assert await rejection(validator, token) == "token signature is invalid"


@pytest.mark.parametrize("token", ["", "not-a-token", "a.b.c", "a.b.c.d.e"])
async def test_malformed_token_is_rejected(validator: TokenValidator, token: str) -> None:
    assert await rejection(validator, token) == "token is malformed"


async def test_tampered_claims_are_rejected(issuer: LocalIssuer, validator: TokenValidator) -> None:
    header, _, signature = issuer.mint(account_id=ACCOUNT, scope="read:shopping").split(".")
    payload = b64(json.dumps({"sub": "x", "scope": "admin:shopping"}).encode())

    assert await rejection(validator, f"{header}.{payload}.{signature}") == (
        "token signature is invalid"
    )


# The JOSE header and the JSON of header and claims.


def external_validator(tmp_path: Path, key: Key) -> TokenValidator:
    return TokenValidator(remote_settings(tmp_path), FakeKeys(jwks_of(key)))


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+Jwt"])
async def test_access_token_types_are_accepted(settings: Settings, typ: str) -> None:
    key = rsa_key()
    validator = TokenValidator(settings, FakeKeys(jwks_of(key)))

    principal = await validator.validate(sign(claims_for(settings), key, typ=typ))

    assert principal.account_id == ACCOUNT


@pytest.mark.parametrize("typ", ["JWT", "jwt", "application/JWT", "at+jwt"])
async def test_an_external_issuers_token_may_be_typed_jwt(tmp_path: Path, typ: str) -> None:
    key = rsa_key()
    validator = external_validator(tmp_path, key)
    token = sign(claims_for(remote_settings(tmp_path)), key, typ=typ)

    assert (await validator.validate(token)).account_id == ACCOUNT


@pytest.mark.parametrize(
    "typ", ["JWT", "JOSE", "id_token+jwt", "logout+jwt", "at+jwt ", "text/at+jwt", ""]
)
async def test_our_own_tokens_must_be_typed_at_jwt(settings: Settings, typ: str) -> None:
    key = rsa_key()
    validator = TokenValidator(settings, FakeKeys(jwks_of(key)))

    reason = await rejection(validator, sign(claims_for(settings), key, typ=typ))

    assert reason == "token type (typ header) must be at+jwt"


@pytest.mark.parametrize("typ", ["JOSE", "secevent+jwt", "dpop+jwt", "application/jose"])
async def test_an_external_issuers_token_of_another_type_is_rejected(
    tmp_path: Path, typ: str
) -> None:
    key = rsa_key()
    validator = external_validator(tmp_path, key)
    token = sign(claims_for(remote_settings(tmp_path)), key, typ=typ)

    assert await rejection(validator, token) == "token type (typ header) must be at+jwt or JWT"


async def text_rejection(
    settings: Settings, claims: str | bytes, header: str = '"typ": "at+jwt"'
) -> str:
    """Why a token signed over `claims` and the `header` fields (after alg and kid), both
    exactly as written, is refused."""
    key = rsa_key()
    validator = TokenValidator(settings, FakeKeys(jwks_of(key)))
    fields = f'"alg": "RS256", "kid": "{key.kid}"' + (f", {header}" if header else "")
    return await rejection(validator, sign_text(f"{{{fields}}}", claims, key))


@pytest.mark.parametrize("header", ['"typ": 5', '"typ": ["at+jwt"]', '"typ": null', ""])
async def test_a_token_without_a_type_is_rejected(settings: Settings, header: str) -> None:
    reason = await text_rejection(settings, json.dumps(claims_for(settings)), header)

    assert reason == "token type (typ header) must be at+jwt"


UNKNOWN_CRITICAL = "token header names critical extensions (crit) this server does not implement"


@pytest.mark.parametrize(
    ("crit", "reason"),
    [
        # RFC 7515 section 4.1.11: an empty list is not a valid crit.
        ('"crit": []', "token crit header is invalid"),
        ('"crit": "b64", "b64": true', "token crit header is invalid"),
        ('"crit": ["b64"], "b64": true', UNKNOWN_CRITICAL),
        ('"crit": ["kid"]', UNKNOWN_CRITICAL),
        ('"crit": ["exp"], "exp": 1', UNKNOWN_CRITICAL),
    ],
)
async def test_a_crit_header_is_rejected(settings: Settings, crit: str, reason: str) -> None:
    header = f'"typ": "at+jwt", {crit}'

    assert await text_rejection(settings, json.dumps(claims_for(settings)), header) == reason


def repeated(claims: dict[str, Any], name: str, value: Any) -> str:
    """The claims as JSON, with `name` given a second time, as `value`."""
    return json.dumps(claims)[:-1] + f", {json.dumps(name)}: {json.dumps(value)}}}"


async def test_claims_that_repeat_a_key_are_rejected(settings: Settings) -> None:
    # Read last-one-wins, this would be a token for this account's audience.
    claims = claims_for(settings, aud="https://other.example/api")
    text = repeated(claims, "aud", f"{settings.audience_base}/{ACCOUNT}")

    assert await text_rejection(settings, text) == (
        "token claims are not strict JSON: an object has the same key twice"
    )


async def test_a_header_that_repeats_a_key_is_rejected(settings: Settings) -> None:
    header = '"typ": "JOSE", "typ": "at+jwt"'

    assert await text_rejection(settings, json.dumps(claims_for(settings)), header) == (
        "token header is not strict JSON: an object has the same key twice"
    )


@pytest.mark.parametrize(
    ("claim", "reason"),
    [
        ('"tier": NaN', "NaN is not a JSON number"),
        ('"cnf": {"jkt": "a", "jkt": "b"}', "an object has the same key twice"),
        ('"ext": [1, {"a": 1, "a": 2}]', "an object has the same key twice"),
    ],
)
async def test_claims_must_be_strict_json_wherever_they_nest(
    settings: Settings, claim: str, reason: str
) -> None:
    claims = json.dumps(claims_for(settings))[:-1] + f", {claim}}}"

    assert await text_rejection(settings, claims) == f"token claims are not strict JSON: {reason}"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        (b'["not", "an", "object"]', "token claims are not a JSON object"),
        (b'"text"', "token claims are not a JSON object"),
        (
            b"{",
            "token claims are not strict JSON: Expecting property name enclosed in double "
            "quotes at line 1 column 2",
        ),
        (b'{"sub": "\xff"}', "token claims are not UTF-8"),
    ],
)
async def test_claims_that_are_not_a_json_object_are_rejected(
    settings: Settings, claims: bytes, reason: str
) -> None:
    assert await text_rejection(settings, claims) == reason


# Key rotation.


async def test_unknown_kid_asks_for_fresh_keys_once_then_fails(settings: Settings) -> None:
    keys = FakeKeys(jwks_of(rsa_key("old")))
    validator = TokenValidator(settings, keys)

    reason = await rejection(validator, sign(claims_for(settings), rsa_key("stranger")))

    assert (reason, keys.refreshes) == ("token key is not known", 1)


async def test_rotated_key_is_picked_up_on_refresh(settings: Settings) -> None:
    old, new = rsa_key("old"), rsa_key("new")
    keys = FakeKeys(jwks_of(old), after_refresh=jwks_of(old, new))
    validator = TokenValidator(settings, keys)
    await validator.validate(sign(claims_for(settings), old))

    principal = await validator.validate(sign(claims_for(settings), new))

    assert (principal.account_id, keys.refreshes) == (ACCOUNT, 1)


async def test_known_kid_does_not_refresh(settings: Settings) -> None:
    key = rsa_key()
    keys = FakeKeys(jwks_of(key))
    validator = TokenValidator(settings, keys)

    for _ in range(3):
        await validator.validate(sign(claims_for(settings), key))

    assert keys.refreshes == 0


# RemoteKeys.


async def test_remote_keys_from_a_jwks_file(tmp_path: Path) -> None:
    key = rsa_key()
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(jwks_of(key)))
    settings = Settings(data_dir=tmp_path, jwks_file=jwks_file)
    validator = TokenValidator(settings, key_source(settings))

    principal = await validator.validate(sign(claims_for(settings), key))

    assert principal.account_id == ACCOUNT


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class JwksServer:
    """An issuer's JWKS endpoint, counting requests."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.requests = 0
        self.failing = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.failing:
            return httpx.Response(503)
        return httpx.Response(200, json=self.jwks)


def remote_settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        jwks_url="https://issuer.example/.well-known/jwks.json",
        jwks_cache_seconds=3600,
        jwks_min_refresh_seconds=30,
    )


def remote(tmp_path: Path, server: JwksServer, clock: Clock) -> RemoteKeys:
    transport = httpx.MockTransport(server.handle)
    return RemoteKeys(remote_settings(tmp_path), transport=transport, clock=clock)


async def test_remote_keys_are_cached(tmp_path: Path) -> None:
    server, clock = JwksServer(jwks_of(rsa_key())), Clock()
    keys = remote(tmp_path, server, clock)

    first = await keys.get_jwks()
    clock.now += 3599
    second = await keys.get_jwks()

    assert (first, second, server.requests) == (server.jwks, server.jwks, 1)


async def test_remote_keys_are_fetched_again_when_the_cache_ages_out(tmp_path: Path) -> None:
    server, clock = JwksServer(jwks_of(rsa_key("old"))), Clock()
    keys = remote(tmp_path, server, clock)
    await keys.get_jwks()
    server.jwks = jwks_of(rsa_key("new"))

    clock.now += 3600

    assert (await keys.get_jwks(), server.requests) == (server.jwks, 2)


async def test_remote_refresh_is_throttled(tmp_path: Path) -> None:
    server, clock = JwksServer(jwks_of(rsa_key())), Clock()
    keys = remote(tmp_path, server, clock)
    await keys.get_jwks()

    clock.now += 29
    await keys.get_jwks(refresh=True)
    throttled = server.requests
    clock.now += 1
    await keys.get_jwks(refresh=True)

    assert (throttled, server.requests) == (1, 2)


async def test_tokens_with_made_up_kids_do_not_flood_the_issuer(tmp_path: Path) -> None:
    server, clock = JwksServer(jwks_of(rsa_key("real"))), Clock()
    settings = remote_settings(tmp_path)
    validator = TokenValidator(settings, remote(tmp_path, server, clock))

    for n in range(5):
        token = sign(claims_for(settings), rsa_key(f"made-up-{n}"))
        assert await rejection(validator, token) == "token key is not known"

    assert server.requests == 1


async def test_failed_remote_refresh_keeps_the_known_keys(tmp_path: Path) -> None:
    server, clock = JwksServer(jwks_of(rsa_key())), Clock()
    keys = remote(tmp_path, server, clock)
    known = await keys.get_jwks()
    server.failing = True

    clock.now += 3600

    assert (await keys.get_jwks(), server.requests) == (known, 2)


async def test_unreachable_issuer_without_known_keys_is_a_key_source_error(
    tmp_path: Path,
) -> None:
    server, clock = JwksServer({}), Clock()
    server.failing = True
    keys = remote(tmp_path, server, clock)

    with pytest.raises(KeySourceError):
        await keys.get_jwks()


class SlowJwksServer(JwksServer):
    """A JWKS endpoint that answers only once the test says so."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        super().__init__(jwks)
        self.answer = asyncio.Event()

    async def handle_slowly(self, request: httpx.Request) -> httpx.Response:
        await self.answer.wait()
        return self.handle(request)


def slow_remote(tmp_path: Path, server: SlowJwksServer, clock: Clock) -> RemoteKeys:
    transport = httpx.MockTransport(server.handle_slowly)
    return RemoteKeys(remote_settings(tmp_path), transport=transport, clock=clock)


class Arrivals:
    """A key source around another that notes when `expected` callers have asked it."""

    def __init__(self, keys: RemoteKeys, expected: int) -> None:
        self.keys = keys
        self.expected = expected
        self.asked = 0
        self.all_asked = asyncio.Event()

    async def get_jwks(self, *, refresh: bool = False) -> dict[str, Any]:
        self.asked += 1
        if self.asked == self.expected:
            self.all_asked.set()
        return await self.keys.get_jwks(refresh=refresh)


async def outcomes(tasks: list[asyncio.Task[Any]]) -> list[Any]:
    """Each task's result, or the name of what it raised; a task still waiting after ten
    seconds fails the test rather than hanging it."""
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    return [
        type(result).__name__ if isinstance(result, BaseException) else result for result in results
    ]


async def test_validations_during_the_first_key_load_wait_for_it(tmp_path: Path) -> None:
    key, settings = rsa_key(), remote_settings(tmp_path)
    server, clock = SlowJwksServer(jwks_of(key)), Clock()
    keys = Arrivals(slow_remote(tmp_path, server, clock), expected=50)
    validator = TokenValidator(settings, keys)
    tokens = [sign(claims_for(settings, sub=f"device-{n}"), key) for n in range(50)]

    # Right after a start: every request asks for keys while the first load is in flight.
    validations = [asyncio.create_task(validator.validate(token)) for token in tokens]
    await asyncio.wait_for(keys.all_asked.wait(), 10)
    server.answer.set()

    subjects = [getattr(outcome, "subject", outcome) for outcome in await outcomes(validations)]
    assert subjects == [f"device-{n}" for n in range(50)]
    assert server.requests == 1


async def test_a_failed_load_answers_every_waiter_then_retries_after_the_backoff(
    tmp_path: Path,
) -> None:
    server, clock = SlowJwksServer(jwks_of(rsa_key())), Clock()
    server.failing = True
    keys = Arrivals(slow_remote(tmp_path, server, clock), expected=20)
    callers = [asyncio.create_task(keys.get_jwks()) for _ in range(20)]
    await asyncio.wait_for(keys.all_asked.wait(), 10)
    server.answer.set()

    assert await outcomes(callers) == ["KeySourceError"] * 20
    clock.now += 29
    with pytest.raises(KeySourceError):
        await keys.get_jwks()
    assert server.requests == 1
    server.failing = False
    clock.now += 1
    assert (await keys.get_jwks(), server.requests) == (server.jwks, 2)


async def test_a_caller_that_goes_away_leaves_the_load_to_the_others(tmp_path: Path) -> None:
    server, clock = SlowJwksServer(jwks_of(rsa_key())), Clock()
    keys = Arrivals(slow_remote(tmp_path, server, clock), expected=2)
    first = asyncio.create_task(keys.get_jwks())
    second = asyncio.create_task(keys.get_jwks())
    await asyncio.wait_for(keys.all_asked.wait(), 10)

    first.cancel()
    server.answer.set()

    assert await outcomes([first, second]) == ["CancelledError", server.jwks]
    assert server.requests == 1


async def test_a_refresh_in_flight_answers_later_refreshes_too(tmp_path: Path) -> None:
    server, clock = SlowJwksServer(jwks_of(rsa_key("old"))), Clock()
    keys = slow_remote(tmp_path, server, clock)
    server.answer.set()
    old = await keys.get_jwks()
    server.answer.clear()
    server.jwks = jwks_of(rsa_key("old"), rsa_key("new"))
    clock.now += 30

    # Two tokens naming the new key: the second must not be refused with the old keys.
    refreshes = [asyncio.create_task(keys.get_jwks(refresh=True)) for _ in range(2)]
    # A caller that needs no load meanwhile is not held up by it.
    unhurried = await asyncio.wait_for(keys.get_jwks(), 10)
    server.answer.set()

    assert (unhurried, await outcomes(refreshes)) == (old, [server.jwks, server.jwks])
    assert server.requests == 2


# LocalIssuer.


def test_local_issuer_key_is_created_private_and_reused(settings: Settings) -> None:
    first = LocalIssuer.load_or_create(settings)
    second = LocalIssuer.load_or_create(settings)

    assert first.jwks() == second.jwks()
    assert stat.S_IMODE(settings.signing_key_path.stat().st_mode) == 0o600
    assert [p.name for p in settings.signing_key_path.parent.iterdir()] == ["signing-key.json"]


def test_local_issuer_jwks_holds_only_public_parts(issuer: LocalIssuer) -> None:
    (key,) = issuer.jwks()["keys"]

    assert key.keys() == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert (key["alg"], key["use"]) == ("ES256", "sig")


async def test_token_from_another_local_key_is_rejected(
    tmp_path: Path, settings: Settings, validator: TokenValidator
) -> None:
    other = LocalIssuer.load_or_create(Settings(data_dir=tmp_path / "other"))

    token = other.mint(account_id=ACCOUNT, scope="admin:shopping")

    assert await rejection(validator, token) == "token key is not known"


def test_local_issuer_refuses_a_bad_account_id(issuer: LocalIssuer) -> None:
    with pytest.raises(ValueError, match="account id"):
        issuer.mint(account_id="T123", scope="read:shopping")


def test_key_source_follows_the_settings(tmp_path: Path) -> None:
    local = Settings(data_dir=tmp_path)
    remote_settings = Settings(data_dir=tmp_path, jwks_url="https://issuer.example/jwks")

    assert isinstance(key_source(local), LocalIssuer)
    assert isinstance(key_source(remote_settings), RemoteKeys)


# Scopes.


def principal(*scopes: str) -> Principal:
    return Principal(subject="s", account_id=ACCOUNT, scopes=frozenset(scopes), expires_at=0.0)


@pytest.mark.parametrize(
    ("scope", "allowed"),
    [
        ("admin:shopping", True),
        ("write:shopping", True),
        ("write:shopping:/orders/ANY/events", True),
        ("write:shopping:/orders/o-1/events", True),
        ("write:shopping:/orders/o-2/events", False),
        ("write:shopping:/orders/ANY", False),
        ("write:shopping:/orders/ANY/events/ANY", False),
        ("write:shopping:/ANY/ANY/ANY", True),
        ("write:shopping:orders/o-1/events", False),
        ("write:billing", False),
        ("read:shopping", False),
        ("read:shopping:/orders/ANY/events", False),
    ],
)
def test_write_scopes(scope: str, allowed: bool) -> None:
    assert principal(scope).can_write_order("o-1") is allowed


@pytest.mark.parametrize(
    ("scope", "allowed"),
    [
        ("admin:shopping", True),
        ("read:shopping", True),
        ("read:shopping:/orders/ANY/events", True),
        ("read:shopping:/orders/o-1/events", True),
        ("read:shopping:/orders/o-2/events", False),
        ("write:shopping", False),
        ("write:shopping:/orders/o-1/events", False),
        ("read", False),
    ],
)
def test_read_order_scopes(scope: str, allowed: bool) -> None:
    assert principal(scope).can_read_order("o-1") is allowed


@pytest.mark.parametrize(
    ("scope", "allowed"),
    [
        ("admin:shopping", True),
        ("read:shopping", True),
        ("read:shopping:/orders/ANY/events", True),
        ("read:shopping:/orders/o-1/events", False),
        ("write:shopping", False),
        ("write:shopping:/orders/ANY/events", False),
    ],
)
def test_read_account_scopes(scope: str, allowed: bool) -> None:
    assert principal(scope).can_read_account() is allowed


def test_order_id_with_a_slash_is_not_split_into_segments() -> None:
    holder = principal("write:shopping:/orders/a/b/events")

    assert not holder.can_write_order("a/b")


def test_no_scopes_allow_nothing() -> None:
    nobody = principal()

    assert not (nobody.can_write_order("o-1") or nobody.can_read_order("o-1"))
    assert not nobody.can_read_account()


# scripts/token.


async def test_token_cli_prints_a_token_the_server_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"DATA_DIR": str(tmp_path / "data")}
    argv = ["--account", "P00000001", "--scope", "write:shopping read:shopping", "--sub", "k1"]

    assert token_cli(argv, env) == 0

    settings = Settings.from_env(env)
    token = capsys.readouterr().out.strip()
    principal = await TokenValidator(settings, key_source(settings)).validate(token)
    assert (principal.account_id, principal.subject) == ("P00000001", "k1")
    assert principal.can_write_order("o-1") and principal.can_read_account()


def test_token_cli_rejects_a_bad_account_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        token_cli(
            ["--account", "12345678", "--scope", "read:shopping"], {"DATA_DIR": str(tmp_path)}
        )

    assert exited.value.code == 2
    assert "--account must be T or P and 8 digits" in capsys.readouterr().err


def test_token_cli_refuses_when_an_external_issuer_is_configured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"DATA_DIR": str(tmp_path), "JWKS_URL": "https://issuer.example/jwks"}

    with pytest.raises(SystemExit) as exited:
        token_cli(["--account", ACCOUNT, "--scope", "read:shopping"], env)

    assert exited.value.code == 1
    assert "external token issuer" in capsys.readouterr().err
    assert not (tmp_path / "signing-key.json").exists()


def test_local_issuer_needs_its_algorithm_allowed(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="ES256"):
        LocalIssuer.load_or_create(Settings(data_dir=tmp_path, token_algorithms=("RS256",)))
