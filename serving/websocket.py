"""uvicorn's sans-I/O WebSocket protocol, lighter per connection; timers shared by connections.

``scripts/serve`` runs uvicorn with ``--ws app.api.wsserver:WebSocketProtocol``. Stock
uvicorn (0.54, websockets 17) keeps about 21 KiB per idle connection before the application
does anything (docs/benchmarks.md, "Memory per idle subscription"), and most of it is not
needed once the handshake is answered. This subclass changes what a connection keeps (and
where its log lines go), not what it does:

- the scope's request headers that repeat across clients (``Host``, ``Upgrade``,
  ``User-Agent``, ...) are tuples shared by every connection that sent them (~0.8 KiB);
- the handshake's request and response, websockets objects with their headers (~5 KiB), are
  let go once the handshake is answered (websockets' parser keeps the request object for the
  connection's life, so its headers are emptied too);
- the receive queue is an ``Inbox`` instead of an ``asyncio.Queue``: three deques and an
  ``asyncio.Event`` with a fourth, each deque a 64-slot block allocated up front (~3 KiB);
- the write gate is a ``Gate`` instead of an ``asyncio.Event`` (its deque, ~0.7 KiB);
- ``receive`` returns a future rather than being a coroutine: two fewer coroutine frames
  (``receive`` and ``Queue.get``) suspended under every idle reader;
- uvicorn's protocol sets 37 attributes, more than CPython 3.11 keeps in a key-sharing
  instance dictionary (30), so each connection had a 64-entry dictionary of its own
  (1.5 KiB): they live in slots here;
- the keepalive ping waits in ``Deadlines``, a heap shared by the connections of the loop,
  instead of a loop timer of its own (a uvloop timer, its handle, context and bound method:
  ~0.5 KiB);
- an accepted connection's three INFO lines on ``uvicorn.error`` (uvicorn's "[accepted]",
  with the query string, and websockets' "connection open" and "connection closed"), which
  ``--no-access-log`` leaves on, go to a child logger that passes warnings and errors only:
  the application writes one JSON access line per connection instead
  (``app.api.access.log_connection``). The logging machinery was an eighth of the server's
  CPU in a storm of reconnecting subscribers. With ``--log-level debug`` (or trace), they
  are logged as uvicorn logs them;
- a data frame goes to the transport without the write gate's coroutine while the transport
  is writable (the common case), its header made here rather than by websockets when
  websockets would make it plainly (no extensions, no fragment under way, no debug log):
  ~1 µs less per frame, for a live event sent to thousands of subscribers.

Everything else is uvicorn's own code: the handshake and its refusals' log lines, ping and pong,
close codes and the closing handshake, the maximum message size, flow control (reading
paused while a message waits for the application, sends waiting while the transport's buffer
is full), and shutdown.

The subclass relies on uvicorn's internals as of 0.54: the attributes it replaces and how the
rest of the class uses them. Each connection checks that those attributes are what they were
(``_stock_parts_as_expected``); if not, it logs a warning once and runs exactly as stock
uvicorn. ``tests/test_wsserver.py`` pins the uvicorn version and reads uvicorn's source to
check the assumptions, so that an upgrade fails there loudly before it degrades quietly.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import logging
import struct
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.frames import Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

if TYPE_CHECKING:
    from uvicorn._types import ASGIReceiveEvent, ASGISendEvent

logger = logging.getLogger(__name__)

# Where an accepted connection's lines go: a child of uvicorn's logger that passes warnings
# and errors on to its handlers (see the module's docstring).
ACCEPTED_CONNECTIONS = logging.getLogger("uvicorn.error.accepted")
ACCEPTED_CONNECTIONS.setLevel(logging.WARNING)


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


class Deadline:
    """A callback due at a time on the loop's clock; ``cancel`` drops it (and what it
    references) at once."""

    __slots__ = ("callback", "owner", "when")

    def __init__(self, owner: Deadlines, when: float, callback: Callable[[], object]) -> None:
        self.owner = owner
        self.when = when
        self.callback: Callable[[], object] | None = callback

    def __lt__(self, other: Deadline) -> bool:
        return self.when < other.when

    def cancel(self) -> None:
        if self.callback is not None:
            self.callback = None
            self.owner.cancelled()


class Deadlines:
    """Timers for many connections on one loop timer: a heap of ``Deadline`` entries, the
    loop's timer set for the earliest. A cancelled entry stays in the heap until it comes
    due, or until cancelled ones are half the heap (then it is rebuilt), as asyncio does with
    its own timers.

    Unlike ``loop.call_later``, a callback does not run in a copy of the context it was
    scheduled from (that copy is part of what a loop timer costs), but in an empty one: the
    callbacks here (pings, closes) use no context variables."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[Deadline] = []
        self._cancelled = 0
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        self._context = contextvars.Context()

    def call_later(self, delay: float, callback: Callable[[], object]) -> Deadline:
        deadline = Deadline(self, self._loop.time() + max(0.0, delay), callback)
        heapq.heappush(self._heap, deadline)
        if self._timer is None or deadline.when < self._armed_at:
            self._arm()
        return deadline

    def cancelled(self) -> None:
        self._cancelled += 1
        if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
            self._heap = [deadline for deadline in self._heap if deadline.callback is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def __len__(self) -> int:
        """Deadlines waiting, cancelled ones left out."""
        return len(self._heap) - self._cancelled

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        heap = self._heap
        while heap and heap[0].callback is None:
            heapq.heappop(heap)
            self._cancelled -= 1
        if heap:
            self._armed_at = heap[0].when
            self._timer = self._loop.call_at(self._armed_at, self._fire, context=self._context)

    def _fire(self) -> None:
        self._timer = None
        # As the loop itself does: due within its clock's resolution counts as due.
        now = self._loop.time() + _clock_resolution(self._loop)
        heap = self._heap
        due: list[Callable[[], object]] = []
        while heap and heap[0].when <= now:
            deadline = heapq.heappop(heap)
            callback = deadline.callback
            if callback is None:
                self._cancelled -= 1
                continue
            deadline.callback = None
            due.append(callback)
        # Run after the heap is settled: a callback may set a deadline of its own.
        for callback in due:
            try:
                callback()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as error:
                self._loop.call_exception_handler(
                    {"message": f"Exception in deadline callback {callback!r}", "exception": error}
                )
        if self._timer is None:
            self._arm()


def _clock_resolution(loop: asyncio.AbstractEventLoop) -> float:
    resolution: float = getattr(loop, "_clock_resolution", 0.001)
    return resolution


# Request headers whose values repeat across clients and carry nothing secret: one tuple per
# (name, value) is shared by the scopes of every connection that sent it, instead of a tuple
# and two bytes objects per header per connection (~0.1 KiB each, as long as the connection
# lasts). Bounded: once full, further values are simply not shared.
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


_deadlines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines] = (
    weakref.WeakKeyDictionary()
)


def deadlines(loop: asyncio.AbstractEventLoop | None = None) -> Deadlines:
    """The shared timers of ``loop`` (by default the running one)."""
    loop = loop or asyncio.get_running_loop()
    shared = _deadlines.get(loop)
    if shared is None:
        shared = _deadlines[loop] = Deadlines(loop)
    return shared


# Every attribute uvicorn 0.54's protocol sets, all kept in slots (tests/test_wsserver.py
# reads them from uvicorn's source). One uvicorn adds later still works, in a dictionary.
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


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol, keeping less per connection (see the
    module's docstring)."""

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
        for name in ("handshake_complete", "close_sent", "disconnected", "initial_response"):
            if not hasattr(self, name):
                problems.append(f"no attribute {name}")
        for name in ("state", "expect_continuation_frame", "extensions", "debug"):
            if not hasattr(self.conn, name):
                problems.append(f"no attribute conn.{name}")
        if problems:
            if not WebSocketProtocol._warned:
                WebSocketProtocol._warned = True
                logger.warning(
                    "uvicorn's WebSocket protocol is not as app.api.wsserver expects (%s): "
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
        if (
            message["type"] == "websocket.accept"
            and self._light
            and not self.logger.isEnabledFor(logging.DEBUG)
        ):
            self.logger = self.conn.logger = ACCEPTED_CONNECTIONS
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
            # encode without extensions; built here it costs ~0.2 µs instead of ~1.1 µs
            # (a Frame object, its checks, a BytesIO, and a join of the writes).
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
