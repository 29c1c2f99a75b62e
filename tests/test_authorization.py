"""Who may do what, over HTTP: scopes and accounts (FORBIDDEN), and tokens that cannot be
trusted (401 UNAUTHENTICATED with WWW-Authenticate).

tests/test_auth.py checks the token forgeries against the validator itself; here each one
goes through the endpoint.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey

from app.auth import LocalIssuer
from app.settings import Settings
from tests.helpers import (
    ACCOUNT,
    CREATE,
    INTROSPECTION,
    ORDER,
    ORDER_EVENTS,
    OTHER_ACCOUNT,
    create,
    create_variables,
    created,
    error_code,
    stored_rows,
    timeline,
)
from tests.test_auth import b64, claims_for, repeated, sign, sign_text, unsigned_segments

ORDER_SCOPE = f"/orders/{ORDER}/events"


# Scopes.


@pytest.mark.parametrize(
    "scope",
    [
        "admin:shopping",
        "write:shopping",
        "write:shopping:/orders/ANY/events",
        f"write:shopping:{ORDER_SCOPE}",
        f"read:shopping write:shopping:{ORDER_SCOPE}",
    ],
)
async def test_a_write_scope_may_create_an_event(client: Any, mint: Any, scope: str) -> None:
    body = await create(client, token=mint(scope))

    assert body["data"]["createOrderEvent"]["version"] == 1


@pytest.mark.parametrize(
    ("scope", "order_id"),
    [
        (f"write:shopping:{ORDER_SCOPE}", "order-2"),
        ("read:shopping", ORDER),
        ("read:shopping:/orders/ANY/events", ORDER),
        (f"read:shopping:{ORDER_SCOPE}", ORDER),
        ("write:billing", ORDER),
        ("write:shopping:/orders/ANY", ORDER),
        ("", ORDER),
    ],
)
async def test_a_scope_without_write_access_to_the_order_is_forbidden(
    client: Any, mint: Any, scope: str, order_id: str
) -> None:
    body = await create(client, order_id, token=mint(scope))

    assert error_code(body) == "FORBIDDEN"


async def test_a_forbidden_write_stores_nothing(client: Any, mint: Any) -> None:
    await create(client, token=mint("read:shopping"))

    assert await stored_rows() == (0, 0)


async def test_scopes_may_come_as_a_json_list(
    client: Any, settings: Settings, signing_key: ECKey
) -> None:
    claims = claims_for(settings, scope=["read:shopping", "write:shopping"])

    body = await create(client, token=sign(claims, signing_key, "ES256"))

    assert body["data"]["createOrderEvent"]["version"] == 1


@pytest.mark.parametrize(
    "scope",
    [
        "admin:shopping",
        "read:shopping",
        "read:shopping:/orders/ANY/events",
        f"read:shopping:{ORDER_SCOPE}",
    ],
)
async def test_a_read_scope_may_read_the_events(client: Any, mint: Any, scope: str) -> None:
    await created(client)

    body = await timeline(client, token=mint(scope))

    assert [e["version"] for e in body["data"]["orderEvents"]["events"]] == [1]


@pytest.mark.parametrize(
    ("scope", "order_id"),
    [
        ("write:shopping", ORDER),
        ("write:shopping:/orders/ANY/events", ORDER),
        (f"read:shopping:{ORDER_SCOPE}", "order-2"),
        ("read:billing", ORDER),
        ("", ORDER),
    ],
)
async def test_a_scope_without_read_access_to_the_order_is_forbidden(
    client: Any, mint: Any, scope: str, order_id: str
) -> None:
    body = await timeline(client, order_id, token=mint(scope))

    assert error_code(body) == "FORBIDDEN"


# Accounts.


async def test_writing_to_another_account_is_forbidden(client: Any, mint: Any) -> None:
    body = await create(client, ACCOUNT, token=mint("admin:shopping", account=OTHER_ACCOUNT))

    assert error_code(body) == "FORBIDDEN"


async def test_a_write_to_another_account_stores_nothing(client: Any, mint: Any) -> None:
    await create(client, ACCOUNT, token=mint("admin:shopping", account=OTHER_ACCOUNT))

    assert await stored_rows() == (0, 0)


async def test_reading_another_account_is_forbidden(client: Any, mint: Any) -> None:
    await created(client)

    body = await timeline(client, ACCOUNT, token=mint("admin:shopping", account=OTHER_ACCOUNT))

    assert error_code(body) == "FORBIDDEN"


async def test_a_forbidden_response_is_http_200_without_www_authenticate(
    client: Any, mint: Any
) -> None:
    response = await client.post(CREATE, create_variables(), token=mint("read:shopping"))

    assert response.status_code == 200
    assert "www-authenticate" not in response.headers


# Tokens that cannot be trusted.


@pytest.fixture
def signing_key(issuer: LocalIssuer, settings: Settings) -> ECKey:
    """The test server's own signing key, to sign tokens with chosen claims."""
    return ECKey.import_key(json.loads(settings.signing_key_path.read_text()))


def _hs256_with_the_public_key(settings: Settings, key: ECKey) -> str:
    signing_input = unsigned_segments({"alg": "HS256", "kid": key.kid}, _claims(settings))
    mac = hmac.new(key.as_pem(private=False), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def _claims(settings: Settings, **overrides: Any) -> dict[str, Any]:
    return claims_for(settings, scope="admin:shopping", **overrides)


def _signed(settings: Settings, key: ECKey, **overrides: Any) -> str:
    return sign(_claims(settings, **overrides), key, "ES256")


def _with_header(settings: Settings, key: ECKey, **fields: Any) -> str:
    header = json.dumps({"alg": "ES256", "kid": key.kid, "typ": "at+jwt", **fields})
    return sign_text(header, json.dumps(_claims(settings)), key, "ES256")


def _repeated_audience(settings: Settings, key: ECKey) -> str:
    """Read last-one-wins, a token for this account."""
    header = json.dumps({"alg": "ES256", "kid": key.kid, "typ": "at+jwt"})
    claims = _claims(settings, aud="https://other.example/api")
    text = repeated(claims, "aud", f"{settings.audience_base}/{ACCOUNT}")
    return sign_text(header, text, key, "ES256")


def _another_issuers_token(tmp_path: Path) -> str:
    other = LocalIssuer.load_or_create(Settings(data_dir=tmp_path / "other-issuer"))
    return other.mint(account_id=ACCOUNT, scope="admin:shopping")


def _same_kid_other_key(settings: Settings, key: ECKey) -> str:
    impostor = ECKey.generate_key("P-256", parameters={"kid": key.kid})
    return sign(_claims(settings), impostor, "ES256")


# Each gives the Authorization header to send (None: send none).
AuthorizationHeader = Callable[[Settings, ECKey, Path], str | None]
UNTRUSTED: dict[str, AuthorizationHeader] = {
    "no-token": lambda s, k, p: None,
    "expired": lambda s, k, p: (
        "Bearer " + _signed(s, k, iat=int(time.time()) - 600, exp=int(time.time()) - 120)
    ),
    "not-yet-valid": lambda s, k, p: "Bearer " + _signed(s, k, nbf=int(time.time()) + 600),
    "another-issuers-key": lambda s, k, p: "Bearer " + _another_issuers_token(p),
    "same-kid-another-key": lambda s, k, p: "Bearer " + _same_kid_other_key(s, k),
    "alg-none": lambda s, k, p: (
        "Bearer " + unsigned_segments({"alg": "none", "kid": k.kid}, _claims(s)) + "."
    ),
    "hs256-with-the-public-key": lambda s, k, p: "Bearer " + _hs256_with_the_public_key(s, k),
    "wrong-issuer": lambda s, k, p: "Bearer " + _signed(s, k, iss="https://evil.example"),
    "wrong-audience": lambda s, k, p: (
        "Bearer " + _signed(s, k, aud="https://other.example/v1/accounts/T12345678")
    ),
    "malformed": lambda s, k, p: "Bearer not-a-token",
    "typed-jwt": lambda s, k, p: "Bearer " + sign(_claims(s), k, "ES256", typ="JWT"),
    "empty-crit": lambda s, k, p: "Bearer " + _with_header(s, k, crit=[]),
    "repeated-audience": lambda s, k, p: "Bearer " + _repeated_audience(s, k),
    "empty-bearer": lambda s, k, p: "Bearer ",
    "basic-scheme": lambda s, k, p: "Basic xyz",
}


@pytest.fixture(params=UNTRUSTED.values(), ids=UNTRUSTED.keys())
def untrusted(
    request: pytest.FixtureRequest, settings: Settings, signing_key: ECKey, tmp_path: Path
) -> dict[str, str]:
    """Headers carrying an Authorization the server must not trust."""
    value = request.param(settings, signing_key, tmp_path)
    return {} if value is None else {"authorization": value}


@pytest.mark.parametrize(
    ("query", "variables"),
    [(CREATE, create_variables()), (ORDER_EVENTS, {"accountId": ACCOUNT, "orderId": ORDER})],
    ids=["write", "read"],
)
async def test_an_untrusted_token_is_refused_with_401(
    client: Any, untrusted: dict[str, str], query: str, variables: dict[str, Any]
) -> None:
    response = await client.post(query, variables, token=None, headers=untrusted)

    assert response.status_code == 401
    assert "Bearer" in response.headers["www-authenticate"]
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert error_code(response.json()) == "UNAUTHENTICATED"


async def test_an_untrusted_token_stores_nothing(client: Any, untrusted: dict[str, str]) -> None:
    await client.post(CREATE, create_variables(), token=None, headers=untrusted)

    assert await stored_rows() == (0, 0)


async def test_the_signing_key_signs_tokens_the_server_accepts(
    client: Any, settings: Settings, signing_key: ECKey
) -> None:
    # The forgeries above differ from this token in one claim or the signature only.
    body = await create(client, token=_signed(settings, signing_key))

    assert body["data"]["createOrderEvent"]["version"] == 1


# Introspection.


async def test_introspection_needs_no_token(client: Any) -> None:
    response = await client.post(INTROSPECTION, token=None)

    assert response.status_code == 200
    assert response.json() == {"data": {"__schema": {"queryType": {"name": "Query"}}}}


async def test_introspection_with_a_field_that_needs_a_token_is_refused(client: Any) -> None:
    query = (
        '{ __schema { queryType { name } } orderEvents(accountId: "T12345678", orderId: "o") '
        "{ state } }"
    )

    response = await client.post(query, token=None)

    assert response.status_code == 401
