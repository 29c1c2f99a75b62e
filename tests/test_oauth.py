"""Get Token (app.oauth): client credentials in, an RFC 9068 token out, RFC 6749's errors."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from starlette.applications import Starlette

from app import clients
from app.clients import Client
from app.main import create_app
from app.settings import Settings
from tests.conftest import ACCOUNT, GraphQLClient
from tests.helpers import CREATE, ORDER_EVENTS, OTHER_ACCOUNT, create_variables

PATH = f"/v1/accounts/{ACCOUNT}/auth/token"


async def new_client(
    scope: str = "write:shopping read:shopping", account: str = ACCOUNT
) -> tuple[Client, str]:
    return await clients.add_client(account, scope, "kitchen")


def basic(client_id: str, secret: str) -> dict[str, str]:
    pair = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"authorization": f"Basic {pair}"}


def claims_of(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")

    def read(segment: str) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "==="))
        return value

    return read(header), read(payload)


@pytest.fixture
async def http(client: GraphQLClient) -> httpx.AsyncClient:
    """The suite's app, tables emptied (``client``)."""
    return client.http


@pytest.fixture
async def app_with(
    client: GraphQLClient, other_settings: Callable[..., Settings]
) -> AsyncIterator[Callable[..., Callable[[str], httpx.AsyncClient]]]:
    """``app_with(**settings)(address)``: a client from ``address`` of an app with other
    settings on the same database (its lifespan does not run)."""
    opened: list[httpx.AsyncClient] = []

    def make(**changes: Any) -> Callable[[str], httpx.AsyncClient]:
        application = create_app(other_settings(**changes))

        def at(address: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=application, client=(address, 4000))
            opened.append(httpx.AsyncClient(transport=transport, base_url="http://test"))
            return opened[-1]

        return at

    yield make
    for each in opened:
        await each.aclose()


# Getting a token.


async def test_basic_credentials_with_dintero_python_sdk_body(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    client, secret = await new_client()
    body = {"grant_type": "client_credentials", "audience": f"{settings.audience_base}/{ACCOUNT}"}

    response = await http.post(PATH, json=body, headers=basic(client.client_id, secret))

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert "x-request-id" in response.headers
    answer = response.json()
    assert answer.keys() == {"access_token", "token_type", "expires_in", "scope"}
    assert (answer["token_type"], answer["expires_in"], answer["scope"]) == (
        "Bearer",
        settings.access_token_ttl_seconds,
        "write:shopping read:shopping",
    )


async def test_token_is_rfc_9068_for_the_client_and_account(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    client, secret = await new_client()

    response = await http.post(PATH, headers=basic(client.client_id, secret))

    header, claims = claims_of(response.json()["access_token"])
    assert (header["typ"], header["alg"]) == ("at+jwt", "ES256")
    assert header["kid"]
    assert claims.keys() >= {"iss", "sub", "client_id", "aud", "scope", "iat", "exp", "jti"}
    assert claims["iss"] == settings.issuer
    assert claims["sub"] == claims["client_id"] == client.client_id
    assert claims["aud"] == f"{settings.audience_base}/{ACCOUNT}"
    assert claims["exp"] - claims["iat"] == settings.access_token_ttl_seconds


async def test_token_works_on_graphql_and_names_the_client(client: GraphQLClient) -> None:
    registered, secret = await new_client()
    response = await client.http.post(PATH, headers=basic(registered.client_id, secret))
    token = response.json()["access_token"]

    body = await client.execute(CREATE, create_variables(), token=token)

    assert "errors" not in body, body
    assert body["data"]["createOrderEvent"]["createdBy"] == registered.client_id


async def test_body_credentials_as_json_without_grant_type(http: httpx.AsyncClient) -> None:
    # What Dintero's Node SDK sends.
    client, secret = await new_client()

    response = await http.post(PATH, json={"client_id": client.client_id, "client_secret": secret})

    assert response.status_code == 200, response.text


async def test_body_credentials_as_a_form(http: httpx.AsyncClient) -> None:
    client, secret = await new_client()
    form = {
        "grant_type": "client_credentials",
        "client_id": client.client_id,
        "client_secret": secret,
    }

    response = await http.post(PATH, data=form)

    assert response.status_code == 200, response.text


async def test_scope_narrows_the_token(client: GraphQLClient) -> None:
    registered, secret = await new_client()
    response = await client.http.post(
        PATH, json={"scope": "read:shopping"}, headers=basic(registered.client_id, secret)
    )
    token = response.json()["access_token"]

    read = await client.execute(ORDER_EVENTS, {"accountId": ACCOUNT, "orderId": "o"}, token=token)
    write = await client.execute(CREATE, create_variables(), token=token)

    assert response.json()["scope"] == claims_of(token)[1]["scope"] == "read:shopping"
    assert "errors" not in read
    assert write["errors"][0]["extensions"]["code"] == "FORBIDDEN"


# Refusals (RFC 6749 section 5.2).


async def refusal(response: httpx.Response) -> tuple[int, str]:
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    # error_description is optional (RFC 6749 section 5.2).
    assert {"error"} <= body.keys() <= {"error", "error_description"}
    return response.status_code, body["error"]


async def test_scope_beyond_the_clients_is_invalid_scope(http: httpx.AsyncClient) -> None:
    client, secret = await new_client("read:shopping")

    for scope in ("write:shopping", "read:shopping admin:shopping", " "):
        response = await http.post(
            PATH, json={"scope": scope}, headers=basic(client.client_id, secret)
        )
        assert await refusal(response) == (400, "invalid_scope"), scope


async def test_wrong_secret_is_invalid_client_with_a_basic_challenge(
    http: httpx.AsyncClient,
) -> None:
    client, _ = await new_client()

    response = await http.post(PATH, headers=basic(client.client_id, "not-the-secret"))

    assert await refusal(response) == (401, "invalid_client")
    assert response.headers["www-authenticate"].startswith("Basic ")


@pytest.mark.parametrize(
    "credentials",
    [
        {"headers": basic("no-such-client", "secret")},
        {"json": {"client_id": "no-such-client", "client_secret": "secret"}},
        {"json": {"grant_type": "client_credentials"}},
    ],
    ids=["unknown-basic", "unknown-body", "none"],
)
async def test_unknown_or_missing_client_is_invalid_client(
    http: httpx.AsyncClient, credentials: dict[str, Any]
) -> None:
    response = await http.post(PATH, **credentials)

    assert await refusal(response) == (401, "invalid_client")
    assert response.headers["www-authenticate"].startswith("Basic ")


async def test_client_of_another_account_gets_no_token(http: httpx.AsyncClient) -> None:
    client, secret = await new_client(account=OTHER_ACCOUNT)

    response = await http.post(PATH, headers=basic(client.client_id, secret))

    assert await refusal(response) == (401, "invalid_client")


async def test_audience_of_another_account_is_invalid_request(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    client, secret = await new_client()
    audience = f"{settings.audience_base}/{OTHER_ACCOUNT}"

    response = await http.post(
        PATH, json={"audience": audience}, headers=basic(client.client_id, secret)
    )

    assert await refusal(response) == (400, "invalid_request")


async def test_other_grant_type_is_unsupported(http: httpx.AsyncClient) -> None:
    client, secret = await new_client()

    response = await http.post(
        PATH, json={"grant_type": "password"}, headers=basic(client.client_id, secret)
    )

    assert await refusal(response) == (400, "unsupported_grant_type")


@pytest.mark.parametrize(
    "request_options",
    [
        {"content": b'{"grant_type": "client_credentials",', "json_type": True},
        {"content": b'{"scope": "a", "scope": "b"}', "json_type": True},
        {"content": b'{"scope": ["read:shopping"]}', "json_type": True},
        {"content": b"[]", "json_type": True},
        {"content": b"scope=read%3Ashopping&scope=write%3Ashopping", "json_type": False},
        {"content": b"<token/>", "content_type": "application/xml"},
    ],
    ids=["bad-json", "key-twice", "not-a-string", "not-an-object", "form-twice", "xml"],
)
async def test_unreadable_request_is_invalid_request(
    http: httpx.AsyncClient, request_options: dict[str, Any]
) -> None:
    client, secret = await new_client()
    content_type = request_options.get("content_type") or (
        "application/json" if request_options["json_type"] else "application/x-www-form-urlencoded"
    )
    headers = {**basic(client.client_id, secret), "content-type": content_type}

    response = await http.post(PATH, content=request_options["content"], headers=headers)

    status, error = await refusal(response)
    assert error == "invalid_request"
    assert status in (400, 415)


async def test_credentials_in_header_and_body_is_invalid_request(
    http: httpx.AsyncClient,
) -> None:
    client, secret = await new_client()

    response = await http.post(
        PATH,
        json={"client_id": client.client_id, "client_secret": secret},
        headers=basic(client.client_id, secret),
    )

    assert await refusal(response) == (400, "invalid_request")


async def test_bad_account_id_in_the_path_is_invalid_request(http: httpx.AsyncClient) -> None:
    client, secret = await new_client()

    response = await http.post(
        "/v1/accounts/X1/auth/token", headers=basic(client.client_id, secret)
    )

    assert await refusal(response) == (400, "invalid_request")


async def test_get_is_refused_naming_post(http: httpx.AsyncClient) -> None:
    response = await http.get(PATH)

    assert await refusal(response) == (405, "invalid_request")
    assert response.headers["allow"] == "POST"


async def test_body_over_the_limit_is_refused(
    app_with: Callable[..., Callable[[str], httpx.AsyncClient]],
) -> None:
    http = app_with(max_body_bytes=100)("192.0.2.1")

    response = await http.post(PATH, json={"scope": "x" * 200})

    assert await refusal(response) == (413, "invalid_request")


async def test_token_request_is_logged_with_the_client(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    client, secret = await new_client()
    with caplog.at_level(logging.INFO, logger="app.access"):
        response = await http.post(PATH, headers=basic(client.client_id, secret))
        refused = await http.post(PATH, headers=basic(client.client_id, "wrong"))

    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "app.access"]
    assert [(line["requestId"], line["status"]) for line in lines] == [
        (response.headers["x-request-id"], 200),
        (refused.headers["x-request-id"], 401),
    ]
    assert (lines[0]["account"], lines[0]["caller"]) == (ACCOUNT, client.client_id)
    assert lines[1]["errors"] == ["invalid_client"]


async def test_with_an_external_issuer_there_is_no_token_endpoint(
    app_with: Callable[..., Callable[[str], httpx.AsyncClient]], tmp_path: Path
) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    http = app_with(jwks_file=jwks)("192.0.2.1")

    response = await http.post(PATH, json={"client_id": "a", "client_secret": "b"})

    assert response.status_code == 404


# Revoked and rotated clients.


async def test_revoked_client_gets_no_token(http: httpx.AsyncClient) -> None:
    client, secret = await new_client()
    await clients.revoke_client(client.client_id)

    response = await http.post(PATH, headers=basic(client.client_id, secret))

    assert await refusal(response) == (401, "invalid_client")


async def test_revoked_clients_tokens_are_refused_once_revocations_are_read(
    client: GraphQLClient, app: Starlette
) -> None:
    registered, secret = await new_client()
    response = await client.http.post(PATH, headers=basic(registered.client_id, secret))
    token = response.json()["access_token"]
    variables = {"accountId": ACCOUNT, "orderId": "o"}
    before = await client.execute(ORDER_EVENTS, variables, token=token)

    await clients.revoke_client(registered.client_id)
    await app.state.revocations.refresh()
    after = await client.execute(ORDER_EVENTS, variables, token=token)

    assert "errors" not in before
    assert after["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_rotated_secret_replaces_the_old_one(client: GraphQLClient) -> None:
    registered, old_secret = await new_client()
    earlier = await client.http.post(PATH, headers=basic(registered.client_id, old_secret))

    _, new_secret = await clients.rotate_secret(registered.client_id)
    with_old = await client.http.post(PATH, headers=basic(registered.client_id, old_secret))
    with_new = await client.http.post(PATH, headers=basic(registered.client_id, new_secret))
    still = await client.execute(
        ORDER_EVENTS,
        {"accountId": ACCOUNT, "orderId": "o"},
        token=earlier.json()["access_token"],
    )

    assert await refusal(with_old) == (401, "invalid_client")
    assert with_new.status_code == 200
    assert "errors" not in still


# No timing oracle: the same hash work whoever the client is.


class CountingHasher(PasswordHasher):
    def __init__(self) -> None:
        super().__init__()
        self.checked: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        stored = hash if isinstance(hash, str) else hash.decode()
        # Everything but salt and digest: the work a check costs.
        self.checked.append(stored.rsplit("$", 2)[0])
        return super().verify(hash, password)


async def test_every_failed_client_costs_one_hash_check_of_the_same_cost(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    known, _ = await new_client()
    foreign, foreign_secret = await new_client(account=OTHER_ACCOUNT)
    revoked, revoked_secret = await new_client()
    await clients.revoke_client(revoked.client_id)
    counting = CountingHasher()
    monkeypatch.setattr(clients, "hasher", counting)
    attempts = {
        "wrong secret": (known.client_id, "wrong"),
        "unknown": ("0" * 32, "wrong"),
        "other account": (foreign.client_id, foreign_secret),
        "revoked": (revoked.client_id, revoked_secret),
    }

    costs = {}
    for name, (client_id, secret) in attempts.items():
        counting.checked.clear()
        response = await http.post(PATH, headers=basic(client_id, secret))
        assert response.status_code == 401, name
        costs[name] = list(counting.checked)

    parameters = known.secret_hash.rsplit("$", 2)[0]
    assert costs == {name: [parameters] for name in attempts}


# Failed attempts are limited per client and per address.


async def test_attempts_over_the_budget_of_a_client_are_429(
    app_with: Callable[..., Callable[[str], httpx.AsyncClient]],
) -> None:
    at = app_with(token_attempts_per_second=0.01, token_attempt_burst=2)
    client, secret = await new_client()

    answers = [
        await at(f"192.0.2.{n}").post(PATH, headers=basic(client.client_id, "wrong"))
        for n in range(3)
    ]
    right_secret = await at("192.0.2.9").post(PATH, headers=basic(client.client_id, secret))

    assert [answer.status_code for answer in answers] == [401, 401, 429]
    assert await refusal(right_secret) == (429, "slow_down")
    assert int(right_secret.headers["retry-after"]) >= 1


async def test_successful_authentications_spend_nothing_of_either_budget(
    app_with: Callable[..., Callable[[str], httpx.AsyncClient]],
) -> None:
    # A fleet behind one address, each device asking as often as it likes.
    http = app_with(token_attempts_per_second=0.01, token_attempt_burst=2)("192.0.2.30")
    client, secret = await new_client()

    answers = [await http.post(PATH, headers=basic(client.client_id, secret)) for _ in range(5)]
    wrong = [await http.post(PATH, headers=basic(client.client_id, "wrong")) for _ in range(3)]

    assert [answer.status_code for answer in answers] == [200] * 5
    assert [answer.status_code for answer in wrong] == [401, 401, 429]


async def test_attempts_over_the_budget_of_an_address_are_429(
    app_with: Callable[..., Callable[[str], httpx.AsyncClient]],
) -> None:
    http = app_with(token_attempts_per_second=0.01, token_attempt_burst=2)("192.0.2.20")

    answers = [await http.post(PATH, headers=basic(f"guess-{n}", "wrong")) for n in range(3)]

    assert [answer.status_code for answer in answers] == [401, 401, 429]
    assert "retry-after" in answers[-1].headers
