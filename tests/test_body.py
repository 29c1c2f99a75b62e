"""The request body: its size (at and over ``MAX_BODY_BYTES``) and its media type."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from app.main import create_app
from app.settings import Settings
from tests.conftest import ClientWith, Mint
from tests.helpers import CREATE, WAIT, create_variables, error_code, event_input, only_error
from tests.servers import Server, running_servers

TYPENAME = b'{"query":"{ __typename }"'


def body_of_size(size: int) -> bytes:
    """A valid request body of exactly ``size`` bytes (JSON whitespace fills it up)."""
    return TYPENAME + b" " * (size - len(TYPENAME) - 1) + b"}"


async def post(client: Any, content: Any, content_type: str = "application/json") -> Any:
    headers = {"authorization": f"Bearer {client.default_token}"}
    if content_type:
        headers["content-type"] = content_type
    return await client.http.post("/graphql", content=content, headers=headers)


# Size.


async def test_a_body_at_the_limit_is_read(client_with: ClientWith) -> None:
    client = client_with(max_body_bytes=200)

    response = await post(client, body_of_size(200))

    assert response.json() == {"data": {"__typename": "Query"}}


async def test_a_body_over_the_limit_is_413(client_with: ClientWith) -> None:
    client = client_with(max_body_bytes=200)

    response = await post(client, body_of_size(201))

    assert response.status_code == 413


async def test_a_body_over_the_limit_is_bad_user_input_saying_the_limit(
    client_with: ClientWith,
) -> None:
    client = client_with(max_body_bytes=200)

    response = await post(client, body_of_size(201))

    assert only_error(response.json())["extensions"] == {
        "code": "BAD_USER_INPUT",
        "errors": [{"field": "request", "message": "the request body is larger than 200 bytes"}],
    }


async def test_a_body_without_a_length_is_counted_as_it_arrives(client_with: ClientWith) -> None:
    client = client_with(max_body_bytes=200)

    async def chunks() -> AsyncIterator[bytes]:
        body = body_of_size(400)
        for start in range(0, len(body), 50):
            yield body[start : start + 50]

    response = await post(client, chunks())

    assert response.status_code == 413


async def test_a_declared_length_over_the_limit_is_refused_unread(settings: Settings) -> None:
    application = create_app(settings)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/graphql",
        "raw_path": b"/graphql",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"test"),
            (b"content-type", b"application/json"),
            (b"content-length", str(10**9).encode()),
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("test", 80),
        "state": {},
    }
    read: list[dict[str, Any]] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        message = {"type": "http.request", "body": b"x" * 65536, "more_body": True}
        read.append(message)
        return message

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await application(scope, receive, send)

    assert (sent[0]["status"], read) == (413, [])


@pytest.fixture(scope="module")
def server(
    server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    env = {**server_env, "MAX_BODY_BYTES": "1000"}
    with running_servers(1, env, tmp_path_factory.mktemp("server")) as (started,):
        yield started


@pytest.mark.parametrize("token", ["valid", "forged", None])
async def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_sent(
    server: Server, mint: Mint, token: str | None
) -> None:
    # Only the request's head goes out: the 413 must come back while the server still waits
    # for every byte of the body. With a token, which is checked first, as without one.
    head = [
        "POST /graphql HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        "Content-Length: 1001",
    ]
    if token is not None:
        head.append(f"Authorization: Bearer {mint() if token == 'valid' else 'not-a-jwt'}")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), WAIT)
    finally:
        writer.close()

    # A refused token is answered 401 before anything else is looked at: also unread.
    expected = b"HTTP/1.1 401 " if token == "forged" else b"HTTP/1.1 413 "
    assert status_line.startswith(expected), status_line


async def test_ten_megabytes_are_refused_by_default(client: Any) -> None:
    response = await client.post(
        CREATE, create_variables(event=event_input(description="x" * 10**7))
    )

    assert response.status_code == 413


async def test_the_largest_metadata_fits_the_default_limit_however_escaped(client: Any) -> None:
    # 65536 bytes as compact UTF-8 JSON; six bytes a character as \\u00e9 escapes in the body.
    metadata = {"x": "é" * ((64 * 1024 - len('{"x":""}')) // 2)}
    body = {"query": CREATE, "variables": create_variables(event=event_input(metadata=metadata))}
    content = json.dumps(body, ensure_ascii=True).encode()
    assert len(content) > 3 * 64 * 1024

    response = await post(client, content)

    assert response.json()["data"]["createOrderEvent"]["metadata"] == metadata


# Media types.


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8"])
async def test_a_json_body_is_read(client: Any, content_type: str) -> None:
    response = await post(client, body_of_size(100), content_type)

    assert response.json() == {"data": {"__typename": "Query"}}


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/graphql",
        "application/json-seq",
        "",
    ],
)
async def test_any_other_media_type_is_415(client: Any, content_type: str) -> None:
    response = await post(client, body_of_size(100), content_type)

    assert response.status_code == 415
    assert error_code(response.json()) == "BAD_USER_INPUT"
    assert "application/json" in only_error(response.json())["message"]


async def test_a_body_that_is_not_utf8_is_refused(client: Any) -> None:
    content = '{"query": "{ __typename }"}'.encode("utf-16")

    response = await post(client, content)

    assert (response.status_code, error_code(response.json())) == (400, "BAD_USER_INPUT")


def test_the_default_body_limit_is_256_kib() -> None:
    assert Settings.from_env({}).max_body_bytes == 256 * 1024


def test_the_body_limit_is_read_from_the_environment() -> None:
    assert Settings.from_env({"MAX_BODY_BYTES": "1000"}).max_body_bytes == 1000


@pytest.mark.parametrize("content", [b'"{ __typename }"', b"42", b"null", b"true", b""])
async def test_a_body_that_is_no_json_object_is_400(client: Any, content: bytes) -> None:
    response = await post(client, content)

    assert (response.status_code, error_code(response.json())) == (400, "BAD_USER_INPUT")
