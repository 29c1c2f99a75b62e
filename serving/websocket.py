"""uvicorn's sans-I/O WebSocket protocol, keeping less per connection.

``scripts/serve`` serves with it (``--ws serving:WebSocketProtocol``); the application runs
the same under stock uvicorn (``--ws websockets-sansio``), and its WebSocket tests run under
both. Most of what uvicorn keeps per idle connection is needed only until the handshake is
answered: this subclass lets it go and keeps lighter queues and timers. The handshake, pings,
closes, size limits, flow control and shutdown stay uvicorn's own code.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.frames import Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

from app.timers import deadlines

if TYPE_CHECKING:
    from uvicorn._types import ASGIReceiveEvent, ASGISendEvent

logger = logging.getLogger(__name__)


class Inbox:
    """What uvicorn's ``receive`` needs of a queue: ``put_nowait`` and ``empty``, and a
    future for the next message. A list exists only while messages wait (uvicorn pauses
    reading after each one, so rarely more than one), a future only while a reader waits.
    ``taken`` is called soon after a message goes straight to a waiting reader, when an
    ``asyncio.Queue`` would have woken it."""

    __slots__ = ("_loop", "_messages", "_taken", "_waiter", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop, taken: Callable[[], None]) -> None:
        self._loop = loop
        self._taken = taken
        self._messages: list[ASGIReceiveEvent] | None = None
        # The reader waiting, and (seldom: ASGI applications read from one task) any
        # other readers waiting behind it, in order.
        self._waiter: asyncio.Future[ASGIReceiveEvent] | None = None
        self._waiters: list[asyncio.Future[ASGIReceiveEvent]] | None = None

    def put_nowait(self, message: ASGIReceiveEvent) -> None:
        while self._waiter is not None:
            waiter = self._waiter
            self._waiter = self._waiters.pop(0) if self._waiters else None
            if not waiter.done():  # else its reader was cancelled
                waiter.set_result(message)
                self._loop.call_soon(self._taken)
                return
        if self._messages is None:
            self._messages = [message]
        else:
            self._messages.append(message)

    def empty(self) -> bool:
        return not self._messages

    def next(self) -> asyncio.Future[ASGIReceiveEvent]:
        """The next message: a done future if one is waiting, else one that is resolved
        when a message is put."""
        future = self._loop.create_future()
        messages = self._messages
        if messages:
            future.set_result(messages.pop(0))
            if not messages:
                self._messages = None
        elif self._waiter is None:
            self._waiter = future
        elif self._waiters is None:
            self._waiters = [future]
        else:
            self._waiters.append(future)
        return future


class Gate:
    """``asyncio.Event``'s ``set``, ``clear``, ``is_set`` and ``wait``, with a list of
    waiters made only while the gate is shut (an ``Event`` makes a deque up front)."""

    __slots__ = ("_loop", "_open", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._open = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        if self._open:
            return
        self._open = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._open = False

    async def wait(self) -> bool:
        if self._open:
            return True
        waiter: asyncio.Future[None] = self._loop.create_future()
        if self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


# Request headers whose values repeat across clients and carry nothing secret: one tuple per
# (name, value) is shared by the scopes of every connection that sent it, instead of a tuple
# and two bytes objects per header per connection, for as long as the connection lasts.
# Bounded: once full, further values are simply not shared.
_SHARED_HEADER_NAMES = frozenset(
    {
        b"accept-encoding",
        b"accept-language",
        b"cache-control",
        b"connection",
        b"host",
        b"origin",
        b"pragma",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-version",
        b"upgrade",
        b"user-agent",
    }
)
_SHARED_HEADERS_MAX = 1024
_SHARED_VALUE_MAX = 256
_shared_headers: dict[tuple[bytes, bytes], tuple[bytes, bytes]] = {}


def shared_header(header: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    """``header``, or an equal tuple kept for other connections to share."""
    name, value = header
    if name not in _SHARED_HEADER_NAMES or len(value) > _SHARED_VALUE_MAX:
        return header
    shared = _shared_headers.get(header)
    if shared is not None:
        return shared
    if len(_shared_headers) < _SHARED_HEADERS_MAX:
        _shared_headers[header] = header
    return header


def frame_header(opcode: Opcode, length: int) -> bytes:
    """The header of a final, unmasked frame of ``length`` bytes (RFC 6455, 5.2)."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, 127, length)


# The attributes uvicorn's protocol sets, in slots: it sets more than CPython 3.11 shares the
# keys of in instance dictionaries, so each connection would have a dictionary of its own. One
# that a later uvicorn adds still works, in a dictionary (tests/test_serving.py notices).
_UVICORN_ATTRIBUTES = (
    "app",
    "app_state",
    "asgi_version",
    "client",
    "close_sent",
    "close_timeout",
    "close_timer",
    "config",
    "conn",
    "connections",
    "curr_msg_data_type",
    "default_headers",
    "disconnected",
    "frames",
    "handshake_complete",
    "handshake_initiated",
    "initial_response",
    "last_ping_rtt",
    "logger",
    "loop",
    "pending_ping_payload",
    "ping_interval",
    "ping_sent_at",
    "ping_timeout",
    "ping_timer",
    "pong_timer",
    "queue",
    "read_paused",
    "request",
    "response",
    "root_path",
    "scheme",
    "scope",
    "server",
    "tasks",
    "transport",
    "writable",
)


# uvicorn's methods that the subclass overrides and calls.
_EXTENDED_METHODS = ("handle_connect", "receive", "send", "schedule_ping", "send_keepalive_ping")


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol, its parts swapped for lighter ones where they
    are as expected (``_light``; what each part saves: docs/benchmarks.md, "Serving
    adapter"). It relies on uvicorn's internals (checked with 0.54 and 0.55): a connection
    that finds them otherwise logs one warning and runs as stock uvicorn's."""

    __slots__ = (*_UVICORN_ATTRIBUTES, "_light")

    _warned = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._light = self._stock_parts_as_expected()
        if self._light:
            self.queue = Inbox(self.loop, self._resume_reading_if_drained)  # type: ignore[assignment]
            self.writable = Gate(self.loop)  # type: ignore[assignment]

    def _stock_parts_as_expected(self) -> bool:
        problems = [
            f"{name} is {type(getattr(self, name, None)).__name__}, not {expected.__name__}"
            for name, expected in (("queue", asyncio.Queue), ("writable", asyncio.Event))
            if type(getattr(self, name, None)) is not expected
        ]
        problems.extend(
            f"no attribute {name}"
            for name in (
                "handshake_complete",
                "close_sent",
                "disconnected",
                "initial_response",
                "read_paused",
                "ping_interval",
                "last_ping_rtt",
            )
            if not hasattr(self, name)
        )
        problems.extend(
            f"no method {name}"
            for name in _EXTENDED_METHODS
            if not callable(getattr(WebSocketsSansIOProtocol, name, None))
        )
        problems.extend(
            f"no attribute conn.{name}"
            for name in ("state", "expect_continuation_frame", "extensions", "debug")
            if not hasattr(self.conn, name)
        )
        if problems:
            if not WebSocketProtocol._warned:
                WebSocketProtocol._warned = True
                logger.warning(
                    "uvicorn's WebSocket protocol is not as serving.websocket expects (%s): "
                    "connections run as stock uvicorn's, with more memory each",
                    "; ".join(problems),
                )
            return False
        return True

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if self._light and scope is not None:
            # Before the application's task first runs: it sees equal headers.
            scope["headers"] = [shared_header(header) for header in scope["headers"]]

    def receive(self) -> Awaitable[ASGIReceiveEvent]:  # type: ignore[override]
        if not self._light:
            return super().receive()
        inbox: Inbox = self.queue  # type: ignore[assignment]
        future = inbox.next()
        if future.done():
            self._resume_reading_if_drained()
        return future

    def _resume_reading_if_drained(self) -> None:
        # What uvicorn's receive does once its queue has handed it a message.
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            self.transport.resume_reading()

    async def send(self, message: ASGISendEvent) -> None:
        if (
            message["type"] == "websocket.send"
            and self._light
            and self.handshake_complete
            and not self.disconnected
            and not self.close_sent
            and self.initial_response is None
            and self.writable.is_set()
        ):
            # uvicorn's own branch for a data frame, without first awaiting the write gate
            # (a coroutine per frame) when it is open anyway.
            self._send_data(message)
            return
        await super().send(message)
        if message["type"] == "websocket.accept" and self._light and self.handshake_complete:
            self._forget_handshake()

    def _send_data(self, message: ASGISendEvent) -> None:
        data: bytes | None = message.get("bytes")  # type: ignore[assignment]
        opcode = Opcode.BINARY
        if data is None:
            text: str | None = message.get("text")  # type: ignore[assignment]
            if text is None:
                return  # uvicorn sends nothing either
            data, opcode = text.encode(), Opcode.TEXT
        conn = self.conn
        if (
            conn.state is State.OPEN
            and not conn.expect_continuation_frame
            and not conn.extensions
            and not conn.debug
        ):
            # The frame websockets would make: final, unmasked (a server's), nothing to
            # encode without extensions; without its Frame object, checks, BytesIO and join
            # of the writes, for one frame per subscriber per event.
            self.transport.write(frame_header(opcode, len(data)) + data)
            return
        try:
            if opcode is Opcode.BINARY:
                conn.send_binary(data)
            else:
                conn.send_text(data)
        except InvalidState:
            raise ClientDisconnected() from None
        self.transport.write(b"".join(conn.data_to_send()))

    def _forget_handshake(self) -> None:
        """Lets the handshake's request and response go: nothing reads them once it is
        answered."""
        request: Request | None = getattr(self, "request", None)
        if request is not None:
            # websockets' parser generator keeps the request until the connection ends.
            request.headers.clear()
            del self.request
        response: Response | None = getattr(self, "response", None)
        if response is not None:
            del self.response

    def schedule_ping(self) -> None:
        if not self._light:
            super().schedule_ping()
            return
        assert self.ping_interval is not None
        delay = max(0.0, self.ping_interval - self.last_ping_rtt)
        self.ping_timer = deadlines(self.loop).call_later(delay, self.send_keepalive_ping)  # type: ignore[assignment]
