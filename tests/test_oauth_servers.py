"""Get Token through real server processes: the wire, revocation seen by every process, key
rotation; and scripts/client and scripts/keys as a person runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ACCOUNT
from tests.helpers import ORDER_EVENTS, eventually
from tests.servers import ROOT, Server, running_servers, start_server, stop_server
from tests.test_oauth import basic, claims_of

PATH = f"/v1/accounts/{ACCOUNT}/auth/token"
READ = {"query": ORDER_EVENTS, "variables": {"accountId": ACCOUNT, "orderId": "o"}}


def cli(module: str, env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    """Runs ``python -m module args`` as the scripts do; its JSON lines."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


async def accepted(http: httpx.AsyncClient, token: str) -> bool:
    response = await http.post("/graphql", json=READ, headers={"authorization": f"Bearer {token}"})
    return response.status_code == 200 and "errors" not in response.json()


async def token_from(server: Server, client_id: str, secret: str) -> str:
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.post(PATH, headers=basic(client_id, secret))
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def test_client_add_prints_one_object_and_list_shows_no_secret(
    server_env: dict[str, str],
) -> None:
    (added,) = cli(
        "app.client_cli", server_env, "add", "--account", ACCOUNT, "--scope", "read:shopping"
    )
    listed = cli("app.client_cli", server_env, "list", "--account", ACCOUNT)

    assert list(added) == ["client_id", "client_secret", "account_id", "scope", "name"]
    assert (added["account_id"], added["scope"], added["name"]) == (ACCOUNT, "read:shopping", "")
    assert len(added["client_id"]) <= 40
    mine = [each for each in listed if each["client_id"] == added["client_id"]]
    assert mine == [
        {
            "client_id": added["client_id"],
            "account_id": ACCOUNT,
            "scope": "read:shopping",
            "name": "",
            "revoked": False,
        }
    ]
    assert all("client_secret" not in each for each in listed)


def test_client_add_refuses_a_scope_of_no_meaning(server_env: dict[str, str]) -> None:
    with pytest.raises(subprocess.CalledProcessError) as refused:
        cli("app.client_cli", server_env, "add", "--account", ACCOUNT, "--scope", "everything")

    assert "not scopes of this API: everything" in refused.value.stderr


async def test_token_over_the_wire_basic_json_and_form(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    (added,) = cli(
        "app.client_cli", server_env, "add", "--account", ACCOUNT, "--scope", "read:shopping"
    )
    client_id, secret = added["client_id"], added["client_secret"]
    server = start_server(server_env, tmp_path / "server.log")
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            by_basic = await http.post(
                PATH, json={"grant_type": "client_credentials"}, headers=basic(client_id, secret)
            )
            by_form = await http.post(PATH, data={"client_id": client_id, "client_secret": secret})
            wrong = await http.post(PATH, headers=basic(client_id, "wrong"))
            usable = await accepted(http, by_form.json()["access_token"])
    finally:
        stop_server(server)

    assert (by_basic.status_code, by_form.status_code, wrong.status_code) == (200, 200, 401)
    assert by_basic.headers["cache-control"] == "no-store"
    assert wrong.headers["www-authenticate"].startswith("Basic ")
    assert usable


async def test_revoked_clients_tokens_are_refused_by_every_process(
    postgres_only: None, server_env: dict[str, str], tmp_path: Path
) -> None:
    (added,) = cli(
        "app.client_cli", server_env, "add", "--account", ACCOUNT, "--scope", "read:shopping"
    )
    with running_servers(2, server_env, tmp_path) as servers:
        token = await token_from(servers[0], added["client_id"], added["client_secret"])
        before = []
        for server in servers:
            async with httpx.AsyncClient(base_url=server.url) as http:
                before.append(await accepted(http, token))

        cli("app.client_cli", server_env, "revoke", added["client_id"])
        for server in servers:
            async with httpx.AsyncClient(base_url=server.url) as http:

                async def refused(http: httpx.AsyncClient = http) -> bool:
                    return not await accepted(http, token)

                await eventually(refused, f"{server.url} refusing the revoked client's token")
        async with httpx.AsyncClient(base_url=servers[1].url) as http:
            again = await http.post(PATH, headers=basic(added["client_id"], added["client_secret"]))

    assert before == [True, True]
    assert again.status_code == 401


async def test_key_rotation_keeps_old_tokens_and_signs_with_the_new_key(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**server_env, "DATA_DIR": str(tmp_path / "keys")}
    (added,) = cli("app.client_cli", env, "add", "--account", ACCOUNT, "--scope", "read:shopping")
    credentials = (added["client_id"], added["client_secret"])
    server = start_server(env, tmp_path / "server.log")
    try:
        old_token = await token_from(server, *credentials)
        (rotated,) = cli("app.keys_cli", env, "rotate")
        signed: list[str] = []

        async def signs_with_the_new_key() -> bool:
            signed.append(await token_from(server, *credentials))
            return bool(claims_of(signed[-1])[0]["kid"] == rotated["signing"])

        await eventually(signs_with_the_new_key, "a token signed with the new key")
        new_token = signed[-1]
        async with httpx.AsyncClient(base_url=server.url) as http:
            jwks = (await http.get("/.well-known/jwks.json")).json()
            both = [await accepted(http, old_token), await accepted(http, new_token)]
    finally:
        stop_server(server)

    assert claims_of(old_token)[0]["kid"] == rotated["retired"]
    assert [key["kid"] for key in jwks["keys"]] == [rotated["signing"], rotated["retired"]]
    assert both == [True, True]
