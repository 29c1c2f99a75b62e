"""What a client may hold of a server (issue 13, item 2): the header and body timeouts, the
header limits and the connection cap of ``serving.http``, on the wire against a server
started as ``scripts/serve`` starts it, with short limits so that the tests wait little."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from app.settings import Settings, SettingsError
from serving import uvicorn_options
from tests.conftest import Mint
from tests.live import subscriber
from tests.servers import Server, running_servers

HEADER_TIMEOUT = 0.6
BODY_TIMEOUT = 0.6
MAX_HEADER_BYTES = 4096
MAX_HEADER_COUNT = 20
MAX_CONNECTIONS = 40
# Long enough for any timeout above to have fired on a loaded machine.
WAIT = 10.0

LIMITS = {
    "HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
    "BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
    "MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
    "MAX_HEADER_COUNT": str(MAX_HEADER_COUNT),
    "MAX_CONNECTIONS": str(MAX_CONNECTIONS),
}
HEALTH = b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n"
QUERY = json.dumps({"query": "{ __typename }"}).encode()


@pytest.fixture(scope="module")
def server(
    server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    with running_servers(1, {**server_env, **LIMITS}, tmp_path_factory.mktemp("limits")) as (
        started,
    ):
        yield started


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until_closed(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        return await asyncio.wait_for(self.reader.read(), WAIT)

    async def response(self) -> tuple[int, bytes]:
        """One response: its status and body (the server always sends Content-Length)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT)
        lines = head.decode().split("\r\n")
        length = next(
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length")
        )
        body = await asyncio.wait_for(self.reader.readexactly(length), WAIT)
        return int(lines[0].split()[1]), body


@pytest.fixture
async def opened(server: Server) -> AsyncIterator[list[Client]]:
    clients: list[Client] = []
    yield clients
    for client in clients:
        client.writer.close()


async def open_client(server: Server, opened: list[Client]) -> Client:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    client = Client(reader, writer)
    opened.append(client)
    return client


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def post(body: bytes, declared: int | None = None) -> bytes:
    return (
        b"POST /graphql HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % (len(body) if declared is None else declared)
    ) + body


async def test_a_request_sent_whole_is_answered_and_the_connection_kept(
    server: Server, opened: list[Client]
) -> None:
    client = await open_client(server, opened)

    answers = []
    for _ in range(3):
        await client.send(post(QUERY))
        answers.append(await client.response())
        # Longer than the header timeout between requests, shorter than keep-alive's 5 s.
        await asyncio.sleep(HEADER_TIMEOUT * 1.5)

    assert answers == [(200, b'{"data":{"__typename":"Query"}}')] * 3


async def test_pipelined_requests_are_all_answered(server: Server, opened: list[Client]) -> None:
    client = await open_client(server, opened)

    await client.send(HEALTH * 3)

    assert [(await client.response())[0] for _ in range(3)] == [200, 200, 200]


async def test_a_body_larger_than_the_header_limit_in_the_same_read_is_answered(
    server: Server, opened: list[Client]
) -> None:
    client = await open_client(server, opened)
    body = json.dumps({"query": "{ __typename } # " + "a" * 4 * MAX_HEADER_BYTES}).encode()

    await client.send(post(body))

    assert await client.response() == (200, b'{"data":{"__typename":"Query"}}')


async def test_a_request_trickled_in_under_the_timeout_is_answered(
    server: Server, opened: list[Client]
) -> None:
    client = await open_client(server, opened)
    request = post(QUERY)

    for part in (request[:20], request[20:60], request[60:]):
        await client.send(part)
        await asyncio.sleep(HEADER_TIMEOUT / 5)

    assert await client.response() == (200, b'{"data":{"__typename":"Query"}}')


async def test_headers_that_do_not_arrive_in_time_get_408_and_the_connection_closes(
    server: Server, opened: list[Client]
) -> None:
    client = await open_client(server, opened)
    started = time.monotonic()

    # Slowloris: a header line now and then, never the blank line that ends them (and none
    # after the timeout, whose refusal a write could reset before it is read).
    await client.send(b"GET /healthz HTTP/1.1\r\nhost: test\r\n")
    for index in range(3):
        await asyncio.sleep(HEADER_TIMEOUT / 4)
        await client.send(b"x-slow-%d: 1\r\n" % index)
    answer = await client.until_closed()

    assert status(answer) == 408
    assert b"headers did not arrive within 0.6 seconds" in answer
    assert time.monotonic() - started < WAIT


async def test_a_connection_that_sends_nothing_is_closed(
    server: Server, opened: list[Client]
) -> None:
    client = await open_client(server, opened)

    assert await client.until_closed() == b""


async def test_a_body_shorter_than_its_content_length_gets_408(
    server: Server, opened: list[Client]
) -> None:
    client = await open_client(server, opened)

    await client.send(post(QUERY, declared=len(QUERY) + 10))
    answer = await client.until_closed()

    assert status(answer) == 408
    assert b"body did not arrive within 0.6 seconds" in answer


async def test_the_body_may_follow_the_headers_in_several_reads(
    server: Server, opened: list[Client]
) -> None:
    client = await open_client(server, opened)
    request = post(QUERY)
    split = request.index(b"\r\n\r\n") + 4

    await client.send(request[:split])
    await asyncio.sleep(BODY_TIMEOUT / 3)
    await client.send(request[split : split + 5])
    await asyncio.sleep(BODY_TIMEOUT / 3)
    await client.send(request[split + 5 :])

    assert (await client.response())[0] == 200


@pytest.mark.parametrize("split", [False, True], ids=["one-read", "many-reads"])
async def test_headers_over_the_size_limit_get_431_unread(
    server: Server, opened: list[Client], split: bool
) -> None:
    client = await open_client(server, opened)
    request = b"GET /healthz HTTP/1.1\r\nhost: test\r\nx-big: " + b"a" * MAX_HEADER_BYTES
    request += b"\r\n\r\n"

    try:
        if split:
            for start in range(0, len(request), 1000):
                await client.send(request[start : start + 1000])
                await asyncio.sleep(0.01)
        else:
            await client.send(request)
    except ConnectionError:
        pass
    answer = await client.until_closed()

    assert status(answer) == 431
    assert f"over {MAX_HEADER_BYTES} bytes".encode() in answer


async def test_a_pipelined_request_over_the_header_limit_gets_431(
    server: Server, opened: list[Client]
) -> None:
    client = await open_client(server, opened)
    big = b"GET /healthz HTTP/1.1\r\nhost: test\r\nx-big: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n"

    # One read: the second request begins where the first ends, its size counted from there.
    # (Parsed in the same pass as the first, it is refused before the first is answered, as
    # uvicorn refuses a malformed pipelined request.)
    await client.send(post(QUERY) + big)

    answer = await client.until_closed()
    assert status(answer) == 431
    assert f"over {MAX_HEADER_BYTES} bytes".encode() in answer


async def test_a_refused_head_is_not_logged_as_an_invalid_request(
    server: Server, opened: list[Client]
) -> None:
    def invalid_lines() -> int:
        return server.output().count("Invalid HTTP request received.")

    before = invalid_lines()
    fields = b"".join(b"x-%d: 1\r\n" % index for index in range(MAX_HEADER_COUNT + 1))
    refused = await open_client(server, opened)
    await refused.send(b"GET /healthz HTTP/1.1\r\n" + fields + b"\r\n")
    assert status(await refused.until_closed()) == 431
    malformed = await open_client(server, opened)
    await malformed.send(b"NOT HTTP AT ALL\r\n\r\n")
    assert status(await malformed.until_closed()) == 400

    # The malformed request's line only (uvicorn writes it before it answers).
    assert invalid_lines() == before + 1


async def test_a_request_line_over_the_size_limit_gets_431(
    server: Server, opened: list[Client]
) -> None:
    client = await open_client(server, opened)

    await client.send(b"GET /healthz?" + b"a" * MAX_HEADER_BYTES + b" HTTP/1.1\r\nhost: t\r\n\r\n")

    assert status(await client.until_closed()) == 431


async def test_a_header_that_never_ends_is_refused_once_over_the_limit(
    server: Server, opened: list[Client]
) -> None:
    client = await open_client(server, opened)

    await client.send(b"GET /healthz HTTP/1.1\r\nx-endless: ")
    sent = 0
    with pytest.raises(ConnectionError):
        while sent < 100 * MAX_HEADER_BYTES:
            await client.send(b"a" * 1024)
            sent += 1024
            await asyncio.sleep(0.001)
            if client.reader.at_eof():
                raise ConnectionResetError()
        pytest.fail("a header of 100 times the limit was read without a refusal")


async def test_more_header_fields_than_the_limit_get_431(
    server: Server, opened: list[Client]
) -> None:
    client = await open_client(server, opened)
    fields = b"".join(b"x-%d: 1\r\n" % index for index in range(MAX_HEADER_COUNT + 1))

    await client.send(b"GET /healthz HTTP/1.1\r\n" + fields + b"\r\n")
    answer = await client.until_closed()

    assert status(answer) == 431
    assert f"at most {MAX_HEADER_COUNT} header fields".encode() in answer


async def test_headers_within_the_limits_are_accepted(server: Server, opened: list[Client]) -> None:
    client = await open_client(server, opened)
    fields = b"".join(b"x-%d: 1\r\n" % index for index in range(MAX_HEADER_COUNT - 1))

    await client.send(b"GET /healthz HTTP/1.1\r\n" + fields + b"\r\n")

    assert (await client.response())[0] == 200


async def test_connections_over_the_cap_get_503_and_the_cap_frees_as_they_close(
    server: Server, opened: list[Client]
) -> None:
    await asyncio.sleep(0.5)  # for the server to see the other tests' connections close
    held = [await open_client(server, opened) for _ in range(MAX_CONNECTIONS)]
    # Each held connection is known to the server once it has answered a request on it.
    for client in held:
        await client.send(HEALTH)
        assert (await client.response())[0] == 200

    over = await open_client(server, opened)
    refused = await over.until_closed()
    for client in held[:5]:
        client.writer.close()
    await asyncio.sleep(0.3)
    after = await open_client(server, opened)
    await after.send(HEALTH)

    assert status(refused) == 503
    assert b"too many connections" in refused
    assert (await after.response())[0] == 200
    assert "MAX_CONNECTIONS is 40" in server.output()


async def test_a_websocket_outlives_the_header_and_body_timeouts(
    server: Server, mint: Mint
) -> None:
    async with subscriber(server, mint()) as client:
        await asyncio.sleep(HEADER_TIMEOUT + BODY_TIMEOUT + 0.5)
        op_id = await client.subscribe("{ __typename }")

        assert (await client.message(op_id))["payload"] == {"data": {"__typename": "Query"}}


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("HEADER_TIMEOUT_SECONDS", "0", "HEADER_TIMEOUT_SECONDS must be more than 0"),
        ("BODY_TIMEOUT_SECONDS", "-1", "BODY_TIMEOUT_SECONDS must be more than 0"),
        ("MAX_HEADER_BYTES", "100", "MAX_HEADER_BYTES must be at least 1024"),
        ("MAX_HEADER_COUNT", "5", "MAX_HEADER_COUNT must be at least 10"),
        ("MAX_CONNECTIONS", "-1", "MAX_CONNECTIONS must be at least 0 (0: no limit)"),
        ("KEEP_ALIVE_TIMEOUT_SECONDS", "0", "KEEP_ALIVE_TIMEOUT_SECONDS must be at least 1"),
    ],
)
def test_limits_out_of_range_are_refused_at_start_up(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_env({name: value})


def test_the_keep_alive_setting_is_passed_to_uvicorn() -> None:
    options = uvicorn_options(Settings.from_env({"KEEP_ALIVE_TIMEOUT_SECONDS": "7"}))

    assert options[options.index("--timeout-keep-alive") + 1] == "7"
    assert options[options.index("--http") + 1] == "serving:HttpProtocol"
