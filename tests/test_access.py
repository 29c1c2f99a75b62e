"""The access log: one JSON line per HTTP request with who asked what and how it ended; never
a token, never the data a client sent."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import app.validation
from app.api import access
from app.auth import Principal
from tests.conftest import ClientWith, Mint
from tests.helpers import ACCOUNT, CREATE, create_variables, event_input, eventually
from tests.live import subscriber
from tests.servers import running_servers, stop_server
from tests.wsclient import PROTOCOLS

SECRET = "s3cr3t-pickup-code-4711"
READ = 'query Timeline { orderEvents(accountId: "T12345678", orderId: "order-1") { state } }'


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Everything logged at INFO and above, the level the server logs at."""
    with caplog.at_level(logging.INFO):
        yield caplog


def access_lines(logs: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in logs.records if r.name == "app.access"]


def everything_logged(logs: pytest.LogCaptureFixture) -> str:
    """Every record's message and traceback, as a log handler would write them."""
    formatter = logging.Formatter()
    return "\n".join(formatter.format(record) for record in logs.records)


async def test_a_request_is_one_line(client: Any, logs: pytest.LogCaptureFixture) -> None:
    await client.post(READ)

    assert len(access_lines(logs)) == 1


async def test_the_line_says_who_asked_what_and_how_it_ended(
    client: Any, logs: pytest.LogCaptureFixture
) -> None:
    response = await client.post(READ)

    (line,) = access_lines(logs)
    assert {key: value for key, value in line.items() if key != "durationMs"} == {
        "requestId": response.headers["x-request-id"],
        "method": "POST",
        "operation": "Timeline",
        "account": "T12345678",
        "caller": "kitchen-1",
        "client": "127.0.0.1",
        "status": 200,
        "errors": [],
    }


async def test_the_line_has_the_duration_in_milliseconds(
    client: Any, logs: pytest.LogCaptureFixture
) -> None:
    await client.post(READ)

    (line,) = access_lines(logs)
    assert 0 < line["durationMs"] < 10_000


async def test_the_line_has_the_error_codes(client: Any, logs: pytest.LogCaptureFixture) -> None:
    await client.post(READ, token=None)

    (line,) = access_lines(logs)
    assert (line["status"], line["errors"], line["caller"]) == (401, ["UNAUTHENTICATED"], None)


async def test_a_request_refused_unread_is_logged(
    client_with: ClientWith, logs: pytest.LogCaptureFixture
) -> None:
    client = client_with(max_body_bytes=50)

    await client.post(READ)

    (line,) = access_lines(logs)
    assert (line["status"], line["errors"]) == (413, ["BAD_USER_INPUT"])


async def test_a_rate_limited_request_is_logged(
    client_with: ClientWith, logs: pytest.LogCaptureFixture
) -> None:
    client = client_with(rate_limit_per_second=0.001, rate_limit_burst=1)
    await client.post(READ)

    await client.post(READ)

    assert access_lines(logs)[-1]["errors"] == ["RATE_LIMITED"]


async def test_an_operation_name_that_is_no_graphql_name_is_left_out(
    client: Any, logs: pytest.LogCaptureFixture
) -> None:
    forged = 'Timeline","caller":"admin'
    await client.http.post(
        "/graphql",
        json={"query": READ, "operationName": forged},
        headers={"authorization": f"Bearer {client.default_token}"},
    )

    (line,) = access_lines(logs)
    assert (line["operation"], line["caller"]) == (None, "kitchen-1")


# What never reaches the log.


async def test_no_token_is_logged(client: Any, logs: pytest.LogCaptureFixture) -> None:
    await client.post(READ)

    assert client.default_token not in everything_logged(logs)


async def test_no_refused_token_is_logged(
    client: Any, mint: Mint, logs: pytest.LogCaptureFixture
) -> None:
    header, payload, _ = mint().split(".")
    forged = f"{header}.{payload}.forged"

    await client.post(READ, token=forged)

    assert payload not in everything_logged(logs)


async def test_no_metadata_is_logged(client: Any, logs: pytest.LogCaptureFixture) -> None:
    await client.post(CREATE, create_variables(event=event_input(metadata={"code": SECRET})))

    assert SECRET not in everything_logged(logs)


async def test_no_variable_is_logged(client: Any, logs: pytest.LogCaptureFixture) -> None:
    await client.post(CREATE, create_variables(event=event_input(description=SECRET)))

    assert SECRET not in everything_logged(logs)


async def test_refused_input_is_not_logged(client: Any, logs: pytest.LogCaptureFixture) -> None:
    await client.post(CREATE, create_variables(event=event_input(service=f"{SECRET}\x00")))

    assert SECRET not in everything_logged(logs)


@pytest.fixture
def broken_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the metadata checker broke")

    monkeypatch.setitem(app.validation.EVENT_RULES, "metadata", fail)


@pytest.mark.usefixtures("broken_validation")
async def test_an_internal_errors_traceback_holds_no_token_or_metadata(
    client: Any, logs: pytest.LogCaptureFixture
) -> None:
    await client.post(CREATE, create_variables(event=event_input(metadata={"code": SECRET})))

    logged = everything_logged(logs)
    assert "the metadata checker broke" in logged
    assert SECRET not in logged
    assert client.default_token not in logged


def test_a_server_writes_the_lines_to_its_output(
    server_env: dict[str, str], tmp_path: Path, mint: Mint
) -> None:
    token = mint()
    with running_servers(1, server_env, tmp_path) as (server,):
        httpx.post(
            f"{server.url}/graphql",
            json={"query": READ},
            headers={"authorization": f"Bearer {token}"},
        )
        stop_server(server)

    lines = [line for line in server.output().splitlines() if line.startswith("{")]
    assert [json.loads(line)["operation"] for line in lines] == ["Timeline"]
    assert token not in server.output()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_websocket_connection_is_one_line_when_it_ends(
    server_env: dict[str, str], tmp_path: Path, mint: Mint, protocol: str, websocket_protocol: str
) -> None:
    token = mint(sub="screen-7")
    with running_servers(1, server_env, tmp_path, websocket_protocol) as (server,):
        started = time.perf_counter()
        async with subscriber(server, token, protocol):
            await asyncio.sleep(0.2)  # the connection's life, which the line must cover
        # The client is done once the closing handshake is, and the server writes the line
        # after that, when its handler has ended: the line's duration is bounded by the time
        # until it can be read, not by the client's side of the close.
        await eventually(lambda: '"method":"WEBSOCKET"' in server.output(), "the access line")
        lived_ms = (time.perf_counter() - started) * 1000
        stop_server(server)

    output = server.output()
    (line,) = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert {key: value for key, value in line.items() if key != "durationMs"} == {
        "requestId": line["requestId"],
        "method": "WEBSOCKET",
        "operation": None,
        "account": ACCOUNT,
        "caller": "screen-7",
        "client": "127.0.0.1",
        "status": 101,
        "errors": [],
    }
    assert line["requestId"] and 200 <= line["durationMs"] <= lived_ms
    # uvicorn's own lines for the connection (one with the query string) are not written.
    assert "[accepted]" not in output and "connection open" not in output, output
    assert token not in output


def _uvicorn_record(level: int, message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", level, __file__, 0, message, args, None)


@pytest.mark.parametrize("debug", [False, True], ids=["info", "debug"])
def test_uvicorns_lines_for_a_websocket_connection_are_dropped_unless_debugging(
    debug: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # uvicorn's --log-level sets this logger's level.
    caplog.set_level(logging.DEBUG if debug else logging.INFO, logger="uvicorn.error")
    records = [
        _uvicorn_record(logging.INFO, '%s - "WebSocket %s" [accepted]', "1.2.3.4:5", "/g?t=1"),
        _uvicorn_record(logging.INFO, "connection open"),
        _uvicorn_record(logging.INFO, "connection closed"),
        _uvicorn_record(logging.INFO, '%s - "WebSocket %s" 403', "1.2.3.4:5", "/g?t=1"),
        _uvicorn_record(logging.WARNING, "connection open"),
    ]

    kept = [record.getMessage() for record in records if access.ConnectionLines().filter(record)]

    assert kept == (
        [record.getMessage() for record in records]
        if debug
        else ['1.2.3.4:5 - "WebSocket /g?t=1" 403', "connection open"]
    )


class _Stream:
    def __init__(self) -> None:
        self.text = ""
        self.flushes = 0

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        self.flushes += 1


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("app.access", logging.INFO, __file__, 0, message, (), None)


async def test_lines_of_one_loop_iteration_are_flushed_together() -> None:
    stream = _Stream()
    handler = access.FlushPerTick(stream)

    for n in range(3):
        handler.handle(_record(f"line {n}"))
    assert stream.text == "line 0\nline 1\nline 2\n"
    assert stream.flushes == 0
    await asyncio.sleep(0)
    assert stream.flushes == 1
    handler.handle(_record("line 3"))
    await asyncio.sleep(0)
    assert stream.flushes == 2


def test_outside_a_loop_every_line_is_flushed() -> None:
    stream = _Stream()
    handler = access.FlushPerTick(stream)

    handler.handle(_record("one"))
    handler.handle(_record("two"))

    assert stream.flushes == 2


def _write(caller: str = "kitchen-1") -> None:
    principal = Principal(
        subject=caller, account_id="T12345678", scopes=frozenset(), expires_at=0.0
    )
    access.write_line(
        request_id="r",
        method="GET",
        operation="Op",
        principal=principal,
        client="127.0.0.1",
        status=200,
        started=time.perf_counter(),
        errors=[],
    )


def test_a_line_stays_ascii_whatever_the_caller_is_called(
    logs: pytest.LogCaptureFixture,
) -> None:
    caller = "kü\u2028che\u2029\n{x}"

    _write(caller)

    (record,) = [r for r in logs.records if r.name == "app.access"]
    text = record.getMessage()
    assert text.isascii() and len(text.splitlines()) == 1
    assert json.loads(text)["caller"] == caller


def _configure(monkeypatch: pytest.MonkeyPatch) -> tuple[_Stream, access.FlushPerTick]:
    """The access logger as ``access.configure`` leaves it, writing to a stream of the test's
    (set in the test's body: pytest adds capture handlers to loggers as each phase starts)."""
    stream = _Stream()
    handler = access.FlushPerTick(stream)
    handler.setFormatter(access._MESSAGE_ONLY)
    monkeypatch.setattr(access.logger, "handlers", [handler])
    monkeypatch.setattr(access.logger, "filters", [])
    monkeypatch.setattr(access.logger, "propagate", False)
    monkeypatch.setattr(access.logger, "isEnabledFor", lambda _level: True)
    return stream, handler


def test_a_configured_logger_writes_its_lines_straight_to_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream, _ = _configure(monkeypatch)
    records: list[Any] = []
    monkeypatch.setattr(access.logger, "handle", records.append)

    _write()

    assert records == []
    (line,) = stream.text.splitlines()
    assert json.loads(line)["caller"] == "kitchen-1" and stream.text.endswith("\n")
    assert stream.flushes == 1


def test_a_filter_added_to_the_logger_sees_every_line(monkeypatch: pytest.MonkeyPatch) -> None:
    stream, _ = _configure(monkeypatch)
    seen: list[str] = []

    def keep(record: logging.LogRecord) -> bool:
        seen.append(record.getMessage())
        return "hidden" not in record.getMessage()

    access.logger.filters.append(keep)

    _write("shown")
    _write("hidden")

    assert len(seen) == 2
    assert [json.loads(line)["caller"] for line in stream.text.splitlines()] == ["shown"]


def test_another_format_on_the_handler_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    stream, handler = _configure(monkeypatch)
    handler.setFormatter(logging.Formatter("access %(message)s"))

    _write()

    assert stream.text.startswith("access {")
