"""Real server processes for end-to-end tests: uvicorn on a free port, stopped afterwards."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.settings import Settings
from serving import uvicorn_options
from tests.helpers import ACCOUNT, EVENT_FIELDS

ROOT = Path(__file__).resolve().parents[1]

# uvicorn's WebSocket protocols the application is served with: the lighter one scripts/serve
# passes (tests/test_serving.py holds the two to the same; see serving/), and stock
# uvicorn's sans-I/O one, which the application runs under alike. The WebSocket tests run
# under both (the ``websocket_protocol`` fixture); other servers, and the benchmarks'
# (bench/harness.py), run as scripts/serve runs them. Per-message deflate is off in both.
WEBSOCKET_PROTOCOLS = {"light": "serving:WebSocketProtocol", "stock": "websockets-sansio"}
SERVED_PROTOCOL = "light"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(
    env: Mapping[str, str],
    log: Path,
    *extra_args: str,
    factory: str = "app.main:create_app_from_env",
    websocket: str = SERVED_PROTOCOL,
) -> Server:
    """A server on a free port, once its health check answers; ``websocket`` names one of
    ``WEBSOCKET_PROTOCOLS``."""
    port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                factory,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *uvicorn_options(Settings.from_env({**os.environ, **env})),
                "--ws",
                WEBSOCKET_PROTOCOLS[websocket],
                *extra_args,
            ],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Server(process=process, port=port, log=log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    stop_server(server)
    raise RuntimeError(f"server did not start within 20 s:\n{server.output()}")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@contextmanager
def running_servers(
    count: int, env: Mapping[str, str], log_dir: Path, websocket: str = SERVED_PROTOCOL
) -> Iterator[list[Server]]:
    servers: list[Server] = []
    try:
        for index in range(count):
            servers.append(start_server(env, log_dir / f"server-{index}.log", websocket=websocket))
        yield servers
    finally:
        for server in servers:
            stop_server(server)


def migrate(database_url: str) -> None:
    """Applies the migrations to ``database_url`` as ``scripts/serve`` does, in a process of
    its own (this process's Tortoise belongs to the suite's database)."""
    subprocess.run(
        [sys.executable, "-m", "app.migrate"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        check=True,
        capture_output=True,
        timeout=60,
    )


READ_ALL = f"""
query All($accountId: ID!, $orderId: ID!, $after: String) {{
  orderEvents(accountId: $accountId, orderId: $orderId, first: 200, after: $after) {{
    events {{ {EVENT_FIELDS} }}
    pageInfo {{ hasNextPage endCursor }}
  }}
}}
"""


async def stored_events(
    http: httpx.AsyncClient, token: str, order_id: str, account_id: str = ACCOUNT
) -> list[dict[str, Any]]:
    """Every event of the order, every field, read page by page through the API of the
    server ``http`` talks to."""
    events: list[dict[str, Any]] = []
    after = None
    while True:
        variables = {"accountId": account_id, "orderId": order_id, "after": after}
        response = await http.post(
            "/graphql",
            json={"query": READ_ALL, "variables": variables},
            headers={"authorization": f"Bearer {token}"},
        )
        body = response.json()
        assert "errors" not in body, body
        page = body["data"]["orderEvents"]
        events.extend(page["events"])
        if not page["pageInfo"]["hasNextPage"]:
            return events
        after = page["pageInfo"]["endCursor"]
