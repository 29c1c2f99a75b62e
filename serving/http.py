"""uvicorn's httptools protocol with the limits a server facing the internet needs and uvicorn
does not set (issue 13, item 2).

uvicorn holds a connection while a client sends its request line and headers as slowly as it
likes, keeps a header of any size in memory while it arrives, waits for a body shorter than
its ``Content-Length`` without end, and accepts every connection the operating system hands
it. ``HttpProtocol`` (``--http serving:HttpProtocol``, which ``python -m serving`` passes)
bounds each of these with a setting (``app.settings.Settings``, "Connections"):

- ``HEADER_TIMEOUT_SECONDS``: a request's line and headers must have arrived within this
  long of the connection opening, or of the request's first byte on a kept-alive connection.
  A connection that sent part of a request then gets 408; one that sent nothing is closed.
- ``BODY_TIMEOUT_SECONDS``: the body must have arrived within this long of the headers.
  408 if the application has not answered yet, else the connection is closed.
- ``MAX_HEADER_BYTES`` and ``MAX_HEADER_COUNT``: the request line and headers together, and
  the header fields. 431, before the application sees the request.
- ``MAX_CONNECTIONS``: connections open in this process, WebSockets included. One more is
  answered 503 and closed unread.

Idle keep-alive is uvicorn's own ``--timeout-keep-alive`` (``KEEP_ALIVE_TIMEOUT_SECONDS``,
which ``python -m serving`` passes). The timers are the loop's shared ``app.timers``
deadlines, armed only while a request is incomplete between two reads: a request that
arrives in one read, as nearly all do, arms none and is checked once its head is parsed.
"""

from __future__ import annotations

import logging
from itertools import chain
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.settings import Settings
from app.timers import Deadline, deadlines

logger = logging.getLogger(__name__)

_REASONS = {
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}

# Where a connection is in its current request.
_IDLE = 0  # between requests, or before the first: nothing of the next one has been parsed
_HEAD = 1  # part of the request line and headers has arrived
_BODY = 2  # the headers are in, the body is not complete
_DONE = 3  # refused, or handed to the WebSocket protocol

_settings: Settings | None = None


def _limits() -> Settings:
    # Read once per process, when the first connection arrives: the server's settings are the
    # application's, from the same environment.
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request the protocol refuses."""


class _RefusalLines(logging.Filter):
    """Drops the "Invalid HTTP request received." uvicorn logs when a parser callback raises
    ``_Refused``: the request was not malformed, it was refused (and answered 431, not 400)."""

    refusing = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.refusing and record.msg == "Invalid HTTP request received.":
            self.refusing = False
            return False
        return True


_REFUSAL_LINES = _RefusalLines()


def refusal(status: int, message: str) -> bytes:
    """A complete plain-text response that closes the connection."""
    body = message.encode()
    return (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        "content-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode() + body


class HttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with the limits above. Its overrides add to uvicorn's methods and
    call them; ``send_400_response`` answers with the refusal a callback raised instead."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger.addFilter(_REFUSAL_LINES)  # once: addFilter skips a filter already there
        limits = _limits()
        self.header_timeout = limits.header_timeout_seconds
        self.body_timeout = limits.body_timeout_seconds
        self.max_header_bytes = limits.max_header_bytes
        self.max_header_count = limits.max_header_count
        self.max_connections = limits.max_connections
        self.phase = _IDLE
        # Bytes read since the current request's first byte, while its headers are incomplete
        # (a head that never ends, or one read whole with its body).
        self.head_bytes = 0
        self.deadline: Deadline | None = None
        self.refused: bytes | None = None

    def connection_made(self, transport: Any) -> None:
        crowded = 0 < self.max_connections <= len(self.connections)
        super().connection_made(transport)
        if crowded:
            logger.warning(
                "refused a connection: %d are open, MAX_CONNECTIONS is %d",
                len(self.connections) - 1,
                self.max_connections,
            )
            self.refuse(503, "the server has too many connections open; retry later")
            return
        self.arm(self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.phase <= _HEAD:
            self.head_bytes += len(data)
        super().data_received(data)
        # Nearly every request arrives whole in one read and leaves the phase at _IDLE: the
        # limits below are for one still incomplete after a read.
        phase = self.phase
        if phase == _HEAD:
            if self.transport.is_closing():
                return
            if self.head_bytes > self.max_header_bytes:
                self.refuse(431, self.head_too_large())
            elif len(self.headers) > self.max_header_count:
                self.refuse(431, self.too_many_fields())
            elif self.deadline is None:
                self.arm(self.header_timeout)
        elif phase == _BODY and self.deadline is None and not self.transport.is_closing():
            self.arm(self.body_timeout)

    # Parser callbacks.
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.phase = _HEAD

    def on_headers_complete(self) -> None:
        # Checked once the head is parsed (a read holds at most the loop's buffer of it; a
        # head still incomplete after a read is checked in ``data_received``).
        headers = self.headers
        if len(headers) > self.max_header_count:
            self.stop_parsing(431, self.too_many_fields())
        # The request target and the fields, each with ": " and CRLF.
        size = len(self.url) + sum(map(len, chain.from_iterable(headers))) + 4 * len(headers)
        if size > self.max_header_bytes:
            self.stop_parsing(431, self.head_too_large())
        if self.deadline is not None:
            self.disarm()
        self.phase = _BODY
        self.head_bytes = 0
        super().on_headers_complete()

    def stop_parsing(self, status: int, message: str) -> None:
        """Refuses the request from a parser callback: uvicorn's parser error handling then
        calls ``send_400_response``, which sends this refusal instead."""
        self.refused = refusal(status, message)
        _REFUSAL_LINES.refusing = True
        raise _Refused()

    def head_too_large(self) -> str:
        return f"the request line and headers are over {self.max_header_bytes} bytes"

    def too_many_fields(self) -> str:
        return f"a request may have at most {self.max_header_count} header fields"

    def on_message_complete(self) -> None:
        if self.deadline is not None:
            self.disarm()
        # Whatever arrives next is the next request's: uvicorn's keep-alive timer runs until
        # its first byte, the header timer from then.
        self.phase = _IDLE
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        # The connection is the WebSocket protocol's from here, with its own timers.
        self.disarm()
        self.phase = _DONE
        super().handle_websocket_upgrade()

    def send_400_response(self, msg: str) -> None:
        _REFUSAL_LINES.refusing = False
        if self.refused is None:
            super().send_400_response(msg)
            return
        self.transport.write(self.refused)
        self.transport.close()

    # The deadline.
    def arm(self, delay: float) -> None:
        self.disarm()
        self.deadline = deadlines(self.loop).call_later(delay, self.timed_out)

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def timed_out(self) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        if self.phase == _HEAD:
            self.refuse(
                408, f"the request's headers did not arrive within {self.header_timeout:g} seconds"
            )
        elif self.phase == _BODY:
            cycle = self.cycle
            answered = cycle is not None and cycle.response_started
            if cycle is not None:
                # What uvicorn does when the client goes: the application's next receive is
                # a disconnect, and what it sends after is dropped.
                cycle.disconnected = True
                cycle.message_event.set()
            if answered:
                self.transport.close()
            else:
                self.refuse(
                    408, f"the request's body did not arrive within {self.body_timeout:g} seconds"
                )
        elif self.phase == _IDLE:
            self.transport.close()

    def refuse(self, status: int, message: str) -> None:
        self.disarm()
        self.phase = _DONE
        self.transport.write(refusal(status, message))
        self.transport.close()
