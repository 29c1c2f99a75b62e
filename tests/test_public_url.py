"""PUBLIC_URL made of HOST and PORT when unset, so that the links a server gives lead to it;
checked through a server started as scripts/serve starts it, with a token from scripts/token
run in the same environment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.settings import Settings, SettingsError
from tests.helpers import ACCOUNT, CREATE, create_variables
from tests.servers import ROOT, Server, free_port, stop_server


def test_public_url_is_made_of_host_and_port_when_unset() -> None:
    settings = Settings.from_env({"PORT": "9000"})

    assert settings.public_url == "http://127.0.0.1:9000"
    assert settings.issuer == "http://127.0.0.1:9000"
    assert settings.audience_base == "http://127.0.0.1:9000/v1/accounts"


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8000"),  # noqa: S104
        ("::", "http://[::1]:8000"),
        ("::1", "http://[::1]:8000"),
    ],
)
def test_a_wildcard_or_ipv6_host_is_written_as_a_client_reaches_it(host: str, url: str) -> None:
    assert Settings.from_env({"HOST": host}).public_url == url


def test_a_set_public_url_wins_over_host_and_port() -> None:
    settings = Settings.from_env({"PORT": "9000", "PUBLIC_URL": "https://api.example"})

    assert settings.public_url == "https://api.example"


def test_a_port_out_of_range_is_refused() -> None:
    with pytest.raises(SettingsError, match="PORT"):
        Settings.from_env({"PORT": "70000"})


@pytest.fixture
def served_on_port(
    server_env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[Server, dict[str, str]]]:
    """``python -m serving`` (what scripts/serve runs) on a free PORT, without PUBLIC_URL;
    and the environment it was given."""
    port = free_port()
    env = {**os.environ, **server_env, "HOST": "127.0.0.1", "PORT": str(port)}
    env.pop("PUBLIC_URL")
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving"], cwd=ROOT, env=env, stdout=sink, stderr=sink
        )
    server = Server(process=process, port=port, log=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, server.output()
            try:
                if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, server.output()
                time.sleep(0.05)
        yield server, env
    finally:
        stop_server(server)


def test_links_lead_to_the_events_on_the_port_served(
    served_on_port: tuple[Server, dict[str, str]],
) -> None:
    server, env = served_on_port
    token = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.token_cli",
            "--account",
            ACCOUNT,
            "--scope",
            "write:shopping read:shopping",
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    headers = {"authorization": f"Bearer {token}"}
    variables = create_variables("port-order")

    answer = httpx.post(
        f"{server.url}/graphql",
        json={"query": CREATE, "variables": variables},
        headers=headers,
    ).json()
    event = answer["data"]["createOrderEvent"]
    (link,) = event["links"]
    followed = httpx.get(link["href"], headers=headers)

    assert link["href"].startswith(server.url)
    assert followed.status_code == 200, followed.text
    assert [each["id"] for each in followed.json()["events"]] == [event["id"]]
    assert followed.json()["events"][0]["_links"] == event["links"]
