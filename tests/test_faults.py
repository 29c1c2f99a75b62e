"""The server process dying or being stopped, on SQLite and on PostgreSQL.

- SIGKILL under write load: nothing the server acknowledged is lost. A request cut off by the
  kill may or may not have been stored (its client never heard); every one that got a success
  is stored exactly as answered, and every order's versions stay 1, 2, 3, ... after a restart.
- SIGTERM: requests already in flight finish and get their answers; no new connection is
  taken; then the process ends (by SIGTERM's default action, after uvicorn's graceful
  shutdown and the application's own: see the README).

The database going away is in ``test_faults_postgres.py``.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import GraphQLClient, Mint
from tests.helpers import ACCOUNT, CREATE, create_variables, event_input
from tests.servers import READ_ALL, Server, start_server, stop_server, stored_events

WRITERS = 8
ORDERS = ("order-a", "order-b", "order-c")
# The kill comes once this many writes were acknowledged: mid-load, whatever the machine's pace.
ACKNOWLEDGED_BEFORE_KILL = 200
WAIT = 30.0

# SIGKILL ---------------------------------------------------------------------------------------


async def write_until_the_server_is_gone(
    http: httpx.AsyncClient, token: str, writer: int, acknowledged: list[dict[str, Any]]
) -> str:
    """Appends events (round the orders) until a request gets no answer; returns that
    request's ``serviceStatus``, which names each write."""
    index = 0
    while True:
        order_id = ORDERS[(writer + index) % len(ORDERS)]
        status = f"w{writer}-{index}"
        variables = create_variables(order_id, event=event_input(serviceStatus=status))
        try:
            response = await http.post(
                "/graphql",
                json={"query": CREATE, "variables": variables},
                headers={"authorization": f"Bearer {token}"},
            )
        except httpx.TransportError:
            return status  # killed before it answered: stored or not
        body = response.json()
        assert "errors" not in body, body
        acknowledged.append(body["data"]["createOrderEvent"])
        index += 1


async def write_and_kill(server: Server, token: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Runs the writers, kills the server with SIGKILL mid-load; returns every event whose
    write was acknowledged, and the statuses of the writes that were never answered."""
    acknowledged: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as http:
        writers = [
            asyncio.create_task(write_until_the_server_is_gone(http, token, n, acknowledged))
            for n in range(WRITERS)
        ]
        try:
            async with asyncio.timeout(WAIT):
                while len(acknowledged) < ACKNOWLEDGED_BEFORE_KILL:
                    for writer in writers:
                        if writer.done():
                            writer.result()  # its failure, as the test's
                            raise AssertionError("a writer stopped before the kill")
                    await asyncio.sleep(0.005)
        finally:
            server.process.kill()
            server.process.wait()
        unanswered = await asyncio.gather(*writers)
    return acknowledged, unanswered


async def test_sigkill_under_write_load_loses_no_acknowledged_event(
    server_env: dict[str, str], client: GraphQLClient, mint: Mint, tmp_path: Path
) -> None:
    token = mint()
    killed = start_server(server_env, tmp_path / "killed.log")
    try:
        acknowledged, unanswered = await write_and_kill(killed, token)
    finally:
        stop_server(killed)
    restarted = start_server(server_env, tmp_path / "restarted.log")
    try:
        async with httpx.AsyncClient(base_url=restarted.url, timeout=WAIT) as http:
            stored = {order_id: await stored_events(http, token, order_id) for order_id in ORDERS}
    finally:
        stop_server(restarted)

    assert killed.process.returncode == -signal.SIGKILL
    stored_by_id = {event["id"]: event for events in stored.values() for event in events}
    for event in acknowledged:
        assert stored_by_id.get(event["id"]) == event
    for events in stored.values():
        assert [event["version"] for event in events] == list(range(1, len(events) + 1))
    # Nothing else is stored but some of the writes that were in flight at the kill.
    extra = {event["serviceStatus"] for event in stored_by_id.values()} - {
        event["serviceStatus"] for event in acknowledged
    }
    assert extra <= set(unanswered)
    assert len(stored_by_id) == len(acknowledged) + len(extra)


async def test_after_a_sigkill_the_restarted_server_appends_after_the_stored_events(
    server_env: dict[str, str], client: GraphQLClient, mint: Mint, tmp_path: Path
) -> None:
    token = mint()
    killed = start_server(server_env, tmp_path / "killed.log")
    try:
        await write_and_kill(killed, token)
    finally:
        stop_server(killed)
    restarted = start_server(server_env, tmp_path / "restarted.log")
    try:
        async with httpx.AsyncClient(base_url=restarted.url, timeout=WAIT) as http:
            before = await stored_events(http, token, ORDERS[0])
            response = await http.post(
                "/graphql",
                json={"query": CREATE, "variables": create_variables(ORDERS[0])},
                headers={"authorization": f"Bearer {token}"},
            )
    finally:
        stop_server(restarted)

    assert response.json()["data"]["createOrderEvent"]["version"] == len(before) + 1


# SIGTERM ---------------------------------------------------------------------------------------


@dataclass
class HeldRequest:
    """A createOrderEvent POST whose headers the server has read and whose body the
    application is waiting for (it asked for it with ``100 Continue``): a request in flight,
    for as long as the test holds back the body."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    body: bytes

    @classmethod
    async def send_headers(cls, server: Server, token: str, order_id: str) -> HeldRequest:
        body = json.dumps({"query": CREATE, "variables": create_variables(order_id)}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            (
                "POST /graphql HTTP/1.1\r\n"
                f"host: 127.0.0.1:{server.port}\r\n"
                "content-type: application/json\r\n"
                f"authorization: Bearer {token}\r\n"
                f"content-length: {len(body)}\r\n"
                "expect: 100-continue\r\n"
                "\r\n"
            ).encode()
        )
        await writer.drain()
        async with asyncio.timeout(WAIT):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        return cls(reader, writer, body)

    async def finish(self) -> tuple[int, dict[str, Any]]:
        """Sends the body; returns the response's status and JSON body."""
        self.writer.write(self.body)
        await self.writer.drain()
        async with asyncio.timeout(WAIT):
            head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            status = int(head.split(" ", 2)[1])
            headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
            content = await self.reader.readexactly(int(headers["content-length"]))
        self.writer.close()
        body: dict[str, Any] = json.loads(content)
        return status, body


async def refuses_connections(server: Server) -> bool:
    """Waits until the server no longer accepts connections: its shutdown has begun. A
    connection that reaches the listening socket's queue just as the server closes it is
    reset by the kernel rather than refused; either means the same here."""
    async with asyncio.timeout(WAIT):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            except (ConnectionRefusedError, ConnectionResetError):
                return True
            writer.close()
            await asyncio.sleep(0.02)


@pytest.fixture
def stopping_server(server_env: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    server = start_server(server_env, tmp_path / "stopping.log")
    yield server
    stop_server(server)


async def test_sigterm_lets_requests_in_flight_finish_before_the_process_exits(
    stopping_server: Server, client: GraphQLClient, mint: Mint
) -> None:
    token = mint()
    held = [await HeldRequest.send_headers(stopping_server, token, order_id) for order_id in ORDERS]

    stopping_server.process.send_signal(signal.SIGTERM)
    assert await refuses_connections(stopping_server)
    answers = [await request.finish() for request in held]
    returncode = await asyncio.to_thread(stopping_server.process.wait, WAIT)

    assert [status for status, _ in answers] == [200] * len(ORDERS)
    answered = {body["data"]["createOrderEvent"]["orderId"]: body for _, body in answers}
    for order_id in ORDERS:
        body = await client.execute(READ_ALL, {"accountId": ACCOUNT, "orderId": order_id})
        [stored] = body["data"]["orderEvents"]["events"]
        assert stored == answered[order_id]["data"]["createOrderEvent"]
    # Ended by SIGTERM itself, which uvicorn raises again once its graceful shutdown and the
    # application's are done: neither killed nor failed.
    assert returncode == -signal.SIGTERM
    assert "Application shutdown complete." in stopping_server.output()
