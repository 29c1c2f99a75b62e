"""The OpenAPI document at /v1/openapi.json is true of the real server: schemathesis sends
requests generated from it (a bounded, deterministic number per operation) and checks each
answer's status, media type, headers and body against it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app import oauth, rest
from app.auth import LocalIssuer
from app.hooks import rest as hooks_rest
from app.openapi import PATH, document
from app.settings import Settings
from tests.helpers import ACCOUNT
from tests.servers import Server, start_server, stop_server

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
OPERATIONS = [
    (rest.PATH, "POST"),
    (rest.PATH, "GET"),
    (oauth.PATH, "POST"),
    (hooks_rest.BASE, "POST"),
    (hooks_rest.BASE, "GET"),
    (hooks_rest.HOOK, "GET"),
    (hooks_rest.HOOK, "PUT"),
    (hooks_rest.HOOK, "DELETE"),
    (hooks_rest.PING, "POST"),
    (hooks_rest.DELIVERIES, "GET"),
    (hooks_rest.DELIVERY, "GET"),
    (hooks_rest.REDELIVER, "POST"),
]
EXAMPLES = 12


@pytest.fixture(scope="module")
def server(
    server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    log: Path = tmp_path_factory.mktemp("openapi") / "server.log"
    # Hooks the fuzzing creates are never delivered to: their addresses are made up.
    running = start_server({**server_env, "WEBHOOK_DELIVERY": "false"}, log)
    try:
        yield running
    finally:
        stop_server(running)


def test_the_document_is_served_and_names_the_server(server: Server, settings: Settings) -> None:
    served = httpx.get(f"{server.url}{PATH}")

    assert served.status_code == 200
    assert served.json() == document(settings)
    assert set(served.json()["paths"]) == {
        rest.PATH,
        oauth.PATH,
        hooks_rest.BASE,
        hooks_rest.HOOK,
        hooks_rest.PING,
        hooks_rest.DELIVERIES,
        hooks_rest.DELIVERY,
        hooks_rest.REDELIVER,
    }


def test_without_the_local_issuer_get_token_is_left_out(settings: Settings) -> None:
    external = Settings(database_url=settings.database_url, jwks_url="https://issuer.example/jwks")

    assert oauth.PATH not in document(external)["paths"]


@pytest.mark.parametrize("account", [ACCOUNT, None], ids=["own-account", "any-account"])
@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=lambda value: str(value))
def test_real_answers_match_the_document(
    server: Server, issuer: LocalIssuer, path: str, method: str, account: str | None
) -> None:
    token = issuer.mint(
        account_id=ACCOUNT,
        scope="write:shopping read:shopping write:hooks read:hooks",
        subject="fuzz",
        ttl_seconds=600,
    )
    schema = schemathesis.openapi.from_url(f"{server.url}{PATH}")
    # The token's own account, so that requests get past authorization; or any account.
    parameters = {"aid": account} if account else None
    strategy = schema[path][method].as_strategy(path_parameters=parameters)

    @hypothesis.settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def answers_as_documented(case: Any) -> None:
        headers = {} if path == oauth.PATH else {"authorization": f"Bearer {token}"}
        case.call_and_validate(base_url=server.url, headers=headers, checks=CHECKS)

    answers_as_documented()
