"""The lighter WebSocket protocol ``scripts/serve`` runs (``serving``), beside stock uvicorn's.

Most tests run a protocol in memory: a fake transport on one side, websockets' own sans-I/O
client on the other, the echo application of ``tests/wsecho.py`` behind it. What a client or
the log sees is checked under both protocols, stock uvicorn's ``websockets-sansio`` and the
subclass; then what the subclass keeps less of, and its fallback to stock behaviour. The
last tests start uvicorn processes as ``scripts/serve`` does.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from app.api.access import ConnectionLines
from app.settings import Settings
from serving import uvicorn_options
from serving.websocket import Gate, Inbox, WebSocketProtocol, frame_header, shared_header
from tests import wsecho
from tests.servers import ROOT, SERVED_PROTOCOL, WEBSOCKET_PROTOCOLS, start_server, stop_server

WAIT = 5.0
PROTOCOL_CLASSES = {"light": WebSocketProtocol, "stock": WebSocketsSansIOProtocol}


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.reading = True
        self.closed = False

    def write(self, data: Any) -> None:
        self.written += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Loopback:
    """A server-side protocol and websockets' sans-I/O client, connected in memory."""

    def __init__(
        self, protocol_class: type[WebSocketsSansIOProtocol], path: str, **options: Any
    ) -> None:
        options = {"ws_ping_interval": None, **options}
        config = Config(
            app=wsecho.app,
            ws=protocol_class,
            ws_per_message_deflate=False,
            lifespan="off",
            log_config=None,
            **options,
        )
        config.load()
        self.transport = FakeTransport()
        self.server = protocol_class(config=config, server_state=ServerState(), app_state={})
        self.server.connection_made(self.transport)
        self.client = ClientProtocol(parse_uri(f"ws://testserver{path}"))
        self.client.send_request(self.client.connect())
        # Read, but not yet taken: a ping due in 10 ms can come with what the test awaits
        # when the loop runs late.
        self.unread: list[Any] = []
        self.flush()

    def flush(self) -> None:
        """Hands the server what the client has written."""
        data = b"".join(self.client.data_to_send())
        if data:
            self.server.data_received(data)

    def read(self) -> list[Any]:
        """What the server has written so far, as the client reads it."""
        data = bytes(self.transport.written)
        self.transport.written.clear()
        if data:
            self.client.receive_data(data)
        events, self.unread = [*self.unread, *self.client.events_received()], []
        return events

    async def receive(self) -> list[Any]:
        """Waits for the server to write something, and reads it."""
        async with asyncio.timeout(WAIT):
            while True:
                events = self.read()
                if events:
                    return events
                await asyncio.sleep(0.001)

    async def frame(self) -> Frame:
        """The next frame; any that came with it are left for the next read."""
        event, *self.unread = await self.receive()
        assert isinstance(event, Frame), event
        return event

    async def send_text(self, text: str) -> None:
        self.client.send_text(text.encode())
        self.flush()

    async def echo(self, text: str) -> str:
        await self.send_text(text)
        frame = await self.frame()
        # A server pinging every few milliseconds may ping before it echoes.
        while frame.opcode is Opcode.PING:
            frame = await self.frame()
        assert frame.opcode is Opcode.TEXT
        return frame.data.decode()

    def disconnect(self) -> None:
        if not self.server.disconnected:
            self.server.connection_lost(None)


@pytest.fixture(params=list(PROTOCOL_CLASSES), ids=lambda name: f"ws-{name}")
def protocol_class(request: pytest.FixtureRequest) -> type[WebSocketsSansIOProtocol]:
    return PROTOCOL_CLASSES[request.param]


@pytest.fixture
async def connect_in_memory(
    protocol_class: type[WebSocketsSansIOProtocol],
) -> AsyncIterator[Callable[..., Any]]:
    """Opens loopback connections (handshake answered) and drops them after the test; the
    protocol is each of ``PROTOCOL_CLASSES`` in turn, unless a test names one."""
    opened: list[Loopback] = []

    async def opening(
        path: str = "/echo",
        protocol_class: type[WebSocketsSansIOProtocol] = protocol_class,
        **options: Any,
    ) -> Loopback:
        loopback = Loopback(protocol_class, path, **options)
        opened.append(loopback)
        response, *loopback.unread = await loopback.receive()
        assert isinstance(response, Response)
        return loopback

    yield opening
    for loopback in opened:
        loopback.disconnect()
    await asyncio.sleep(0)


@pytest.fixture
def connect_light(connect_in_memory: Any) -> Callable[..., Any]:
    """``connect_in_memory`` with the subclass."""

    def opening(path: str = "/echo", **options: Any) -> Any:
        return connect_in_memory(path, WebSocketProtocol, **options)

    return opening


@pytest.fixture
def uvicorn_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """uvicorn's log at INFO, with the filter the application's entry point installs on it
    (``app.api.access.configure``)."""
    uvicorn_error = logging.getLogger("uvicorn.error")
    connection_lines = ConnectionLines()
    uvicorn_error.addFilter(connection_lines)
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    try:
        yield caplog
    finally:
        uvicorn_error.removeFilter(connection_lines)


def closing(frame: Frame) -> Close:
    assert frame.opcode is Opcode.CLOSE, frame
    return Close.parse(frame.data)


async def settled(condition: Callable[[], bool]) -> None:
    """Lets the loop run until ``condition`` holds (a fake transport and a sans-I/O client
    have nothing to wait on but the loop itself)."""
    async with asyncio.timeout(WAIT):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.001)


# Behaviour, the same under both protocols.


async def test_the_handshake_is_answered_with_101(
    protocol_class: type[WebSocketsSansIOProtocol],
) -> None:
    loopback = Loopback(protocol_class, "/echo")
    (response,) = await loopback.receive()
    loopback.disconnect()

    assert response.status_code == 101


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
async def test_a_text_message_comes_back_as_sent(connect_in_memory: Any, size: int) -> None:
    loopback = await connect_in_memory()
    text = "é" * (size // 2) + "x" * (size % 2)

    assert await loopback.echo(text) == text


@pytest.mark.parametrize("size", [0, 125, 126, 70_000])
async def test_a_binary_message_comes_back_as_sent(connect_in_memory: Any, size: int) -> None:
    loopback = await connect_in_memory()
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    loopback.client.send_binary(data)
    loopback.flush()

    frame = await loopback.frame()

    assert (frame.opcode, frame.data) == (Opcode.BINARY, data)


async def test_messages_come_back_in_the_order_sent(connect_in_memory: Any) -> None:
    loopback = await connect_in_memory()
    for number in range(50):
        loopback.client.send_text(str(number).encode())
    loopback.flush()
    received: list[str] = []

    async with asyncio.timeout(WAIT):
        while len(received) < 50:
            received.extend(frame.data.decode() for frame in await loopback.receive())

    assert received == [str(number) for number in range(50)]


async def test_reading_pauses_while_a_message_waits_for_the_application(
    connect_in_memory: Any,
) -> None:
    loopback = await connect_in_memory()
    loopback.client.send_text(b"one")
    loopback.client.send_text(b"two")
    loopback.flush()
    paused = not loopback.transport.reading

    frames: list[Frame] = []
    while len(frames) < 2:
        frames.extend(await loopback.receive())
    await settled(lambda: loopback.transport.reading)

    assert paused
    assert [frame.data for frame in frames] == [b"one", b"two"]


async def test_sends_wait_while_the_transport_is_paused(connect_in_memory: Any) -> None:
    loopback = await connect_in_memory()
    loopback.server.pause_writing()
    await loopback.send_text("held")
    for _ in range(20):
        await asyncio.sleep(0)
    held = loopback.read()

    loopback.server.resume_writing()
    frame = await loopback.frame()

    assert held == []
    assert frame.data == b"held"


async def test_the_applications_close_code_and_reason_reach_the_client(
    connect_in_memory: Any,
) -> None:
    loopback = await connect_in_memory()
    await loopback.send_text("close 4401 access token expired")

    close = closing(await loopback.frame())
    loopback.flush()  # the client's answer completes the closing handshake

    assert (close.code, close.reason) == (4401, "access token expired")
    assert loopback.transport.closed


async def test_the_clients_close_code_reaches_the_application(connect_in_memory: Any) -> None:
    loopback = await connect_in_memory()
    seen = len(wsecho.disconnects)
    loopback.client.send_close(4000, "leaving")
    loopback.flush()

    await settled(lambda: len(wsecho.disconnects) > seen)

    assert wsecho.disconnects[-1] == 4000


async def test_a_message_over_the_maximum_size_closes_with_1009(connect_in_memory: Any) -> None:
    loopback = await connect_in_memory(ws_max_size=1000)
    seen = len(wsecho.disconnects)
    await loopback.send_text("x" * 1001)

    close = closing(await loopback.frame())
    await settled(lambda: len(wsecho.disconnects) > seen)

    assert close.code == 1009
    assert wsecho.disconnects[-1] == 1009


async def test_an_idle_connection_is_pinged_and_stays_open_while_it_answers(
    connect_in_memory: Any,
) -> None:
    loopback = await connect_in_memory(ws_ping_interval=0.01, ws_ping_timeout=WAIT)

    first = await loopback.frame()
    loopback.flush()  # the client's pong
    second = await loopback.frame()
    loopback.flush()

    await loopback.send_text("still here")
    answer = await loopback.frame()
    while answer.opcode is Opcode.PING:  # the pings go on meanwhile, each one answered
        loopback.flush()
        answer = await loopback.frame()

    assert (first.opcode, second.opcode) == (Opcode.PING, Opcode.PING)
    assert (answer.opcode, answer.data) == (Opcode.TEXT, b"still here")


async def test_a_connection_that_does_not_answer_pings_is_closed_with_1011(
    connect_in_memory: Any,
) -> None:
    loopback = await connect_in_memory(ws_ping_interval=0.01, ws_ping_timeout=0.01)

    ping = await loopback.frame()  # not answered: the pong is never flushed
    close = closing(await loopback.frame())

    assert ping.opcode is Opcode.PING
    assert close.code == 1011
    assert loopback.transport.closed


async def test_shutdown_closes_open_connections_with_1012(connect_in_memory: Any) -> None:
    loopback = await connect_in_memory()
    seen = len(wsecho.disconnects)

    loopback.server.shutdown()
    close = closing(await loopback.frame())
    await settled(lambda: len(wsecho.disconnects) > seen)

    assert close.code == 1012
    assert wsecho.disconnects[-1] == 1012


async def test_a_handshake_the_application_refuses_is_answered_with_403(
    protocol_class: type[WebSocketsSansIOProtocol],
) -> None:
    loopback = Loopback(protocol_class, "/refuse")

    (response,) = await loopback.receive()

    assert response.status_code == 403


# The log, with the application's filter on uvicorn's logger.


async def test_a_refused_handshake_is_logged_as_uvicorn_logs_it(
    protocol_class: type[WebSocketsSansIOProtocol], uvicorn_log: pytest.LogCaptureFixture
) -> None:
    refused = Loopback(protocol_class, "/refuse")
    await refused.receive()

    lines = [record.getMessage() for record in uvicorn_log.records]
    assert any(line.endswith('"WebSocket /refuse" 403') for line in lines), lines


async def test_an_accepted_connection_logs_warnings_but_not_its_info_lines(
    connect_in_memory: Any, uvicorn_log: pytest.LogCaptureFixture
) -> None:
    # The application writes the connection's access line; uvicorn's "[accepted]" (with the
    # query string) and websockets' "connection open" and "connection closed" would be three
    # more per connection.
    loopback = await connect_in_memory("/echo?token=secret")
    loopback.server.logger.warning("something a connection should say")
    await loopback.send_text("close 1000 done")
    closing(await loopback.frame())
    loopback.flush()
    await settled(lambda: loopback.transport.closed)
    loopback.disconnect()

    lines = [record.getMessage() for record in uvicorn_log.records]
    assert lines == ["something a connection should say"]


async def test_with_debug_logging_an_accepted_connection_is_logged_as_uvicorn_logs_it(
    connect_in_memory: Any, uvicorn_log: pytest.LogCaptureFixture
) -> None:
    uvicorn_log.set_level(logging.DEBUG, logger="uvicorn.error")

    await connect_in_memory()

    lines = [record.getMessage() for record in uvicorn_log.records]
    assert any(line.endswith('"WebSocket /echo" [accepted]') for line in lines), lines
    assert "connection open" in lines


# What the subclass keeps less of.


async def test_the_handshake_is_let_go_once_answered(connect_light: Any) -> None:
    loopback = await connect_light()
    server = loopback.server
    # websockets' parser keeps the request it parsed for as long as the connection lasts.
    kept_by_parser = server.conn.parser.gi_frame.f_locals["request"]

    assert not hasattr(server, "request")
    assert not hasattr(server, "response")
    assert list(kept_by_parser.headers.raw_items()) == []
    assert await loopback.echo("still works") == "still works"


async def test_the_connections_attributes_are_slots_not_a_dictionary(
    connect_light: Any,
) -> None:
    # A connection that has been through everything that sets an attribute: the handshake,
    # messages both ways, a ping and its pong, the closing handshake.
    loopback = await connect_light(ws_ping_interval=0.01, ws_ping_timeout=WAIT)
    assert await loopback.echo("one") == "one"
    await settled(lambda: any(frame.opcode is Opcode.PING for frame in loopback.read()))
    loopback.flush()
    await loopback.send_text("close 1000 done")
    closing(await loopback.frame())
    loopback.flush()
    await settled(lambda: loopback.transport.closed)
    loopback.disconnect()

    assert vars(loopback.server) == {}


async def test_the_connections_of_a_loop_share_one_timer_for_their_pings(
    connect_light: Any,
) -> None:
    loopbacks = [await connect_light(ws_ping_interval=3600) for _ in range(3)]

    timers = {type(loopback.server.ping_timer).__name__ for loopback in loopbacks}

    assert timers == {"Deadline"}


async def test_a_connection_runs_as_stock_uvicorns_when_uvicorn_is_not_as_expected(
    connect_light: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class OtherQueue(asyncio.Queue[Any]):
        pass

    stock_init = WebSocketsSansIOProtocol.__init__

    def changed_init(self: WebSocketsSansIOProtocol, *args: Any, **kwargs: Any) -> None:
        stock_init(self, *args, **kwargs)
        self.queue = OtherQueue()

    monkeypatch.setattr(WebSocketsSansIOProtocol, "__init__", changed_init)
    monkeypatch.setattr(WebSocketProtocol, "_warned", False)
    caplog.set_level(logging.WARNING, logger="serving.websocket")

    loopback = await connect_light()
    await connect_light()

    assert isinstance(loopback.server.queue, OtherQueue)
    assert hasattr(loopback.server, "request")  # kept, as stock uvicorn keeps it
    assert await loopback.echo("as ever") == "as ever"
    assert caplog.text.count("connections run as stock uvicorn's") == 1


def test_uvicorn_serves_stock_websockets_when_the_subclass_cannot_be_imported() -> None:
    # As if uvicorn had moved the module the subclass is built on.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['serving.websocket'] = None; import serving;"
            " print(serving.WebSocketProtocol.__qualname__)",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert result.stdout.strip() == WebSocketsSansIOProtocol.__qualname__
    assert result.stderr.count("served by stock uvicorn's websockets-sansio") == 1


@pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536, 300_000])
def test_frame_headers_are_the_ones_websockets_makes(length: int) -> None:
    data = b"x" * length
    for opcode in (Opcode.TEXT, Opcode.BINARY):
        assert frame_header(opcode, length) + data == Frame(opcode, data).serialize(mask=False)


async def test_the_inbox_hands_messages_over_in_order() -> None:
    taken: list[None] = []
    inbox = Inbox(asyncio.get_running_loop(), lambda: taken.append(None))
    waiting = inbox.next()
    inbox.put_nowait({"type": "websocket.receive", "text": "1"})
    inbox.put_nowait({"type": "websocket.receive", "text": "2"})
    inbox.put_nowait({"type": "websocket.receive", "text": "3"})

    messages = [await waiting, await inbox.next(), await inbox.next()]
    await asyncio.sleep(0)

    assert [message.get("text") for message in messages] == ["1", "2", "3"]
    assert inbox.empty()
    assert taken == [None]  # once, for the message handed straight to the waiting reader


async def test_the_inbox_skips_a_reader_that_was_cancelled() -> None:
    inbox = Inbox(asyncio.get_running_loop(), lambda: None)
    gone = inbox.next()
    gone.cancel()
    waiting = inbox.next()

    inbox.put_nowait({"type": "websocket.receive", "text": "for the one still waiting"})

    assert (await waiting).get("text") == "for the one still waiting"


async def test_the_gate_holds_waiters_until_it_is_set() -> None:
    gate = Gate(asyncio.get_running_loop())
    gate.clear()
    waiters = [asyncio.ensure_future(gate.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    held = [waiter.done() for waiter in waiters]

    gate.set()

    assert held == [False, False, False]
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert gate.is_set()


def test_repeated_request_headers_are_shared_and_others_kept_apart() -> None:
    def header(name: str, value: str) -> tuple[bytes, bytes]:
        return (name.encode(), value.encode())  # a new tuple each time

    first_user_agent = shared_header(header("user-agent", "Mozilla/5.0 (test)"))
    first_authorization = shared_header(header("authorization", "Bearer secret"))

    assert shared_header(header("user-agent", "Mozilla/5.0 (test)")) is first_user_agent
    assert shared_header(header("authorization", "Bearer secret")) is not first_authorization


# As scripts/serve runs it.


def test_scripts_serve_runs_the_protocol_the_tests_run_as_served() -> None:
    serve = (ROOT / "scripts" / "serve").read_text()
    options = uvicorn_options(Settings())

    assert "exec .venv/bin/python -m serving " in serve
    assert options[options.index("--ws") + 1] == WEBSOCKET_PROTOCOLS[SERVED_PROTOCOL]


async def test_uvicorn_serves_with_the_protocol_from_the_command_line(tmp_path: Path) -> None:
    server = start_server({}, tmp_path / "echo.log", factory="tests.wsecho:create_app")
    try:
        async with connect(server.url.replace("http", "ws", 1) + "/echo") as client:
            await client.send("over a real socket")
            answer = await asyncio.wait_for(client.recv(), WAIT)
    finally:
        stop_server(server)

    assert answer == "over a real socket"
    assert "disconnected 1000" in server.output()
    assert "stock uvicorn" not in server.output()  # no warning: the subclass ran


def test_the_application_imports_neither_the_adapter_nor_uvicorn() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, app.main, app.api.websocket; print(sorted(name for name in sys.modules"
            " if name.split('.')[0] in {'serving', 'uvicorn', 'websockets'}))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert result.stdout.strip() == "[]"
