"""The fan-out benchmark's subscribers (``bench.fanout``). They share the machine with the
server, so they are kept lean, or the figure would measure them: each connection is a bare
``asyncio.Protocol`` (under uvloop when it is installed) that speaks just enough WebSocket
(RFC 6455) and graphql-transport-ws for this. A message costs it one clock reading per read,
one frame-header parse and a few substring searches (about 1.5 µs of Python; 10-19 µs of CPU
per message in all, with the kernel's and uvloop's part); ``createdAt`` is kept as raw text
beside the receipt time and converted only when the figures are reported, and the clients'
garbage collector is off while they listen. (The ``websockets`` client with ``json.loads``
and ``datetime.fromisoformat`` per message cost 47-63 µs per message, twice what the server
spends.) The CPU time of the clients and of the server while the events are delivered is
reported per delivery.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any, cast
from urllib.parse import urlsplit

ACCOUNT = "T12345678"
ORDER = "fanout-1"
SUBSCRIBE = (
    "subscription($a: ID!, $o: ID) { orderEvents(accountId: $a, orderId: $o) "
    "{ version createdAt } }"
)
# A few handshakes at a time: a flood of them overflows the server's listen backlog.
CONCURRENT_HANDSHAKES = 50
# How long one event may take to reach every subscriber before the next is posted anyway.
PACING_TIMEOUT_SECONDS = 10.0

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_CREATED_AT = b'"createdAt":'
_MAX_RESPONSE_HEAD = 65536


class ProtocolError(Exception):
    """The server broke RFC 6455 or graphql-transport-ws as this client speaks it."""


def client_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One unfragmented frame from a client, which RFC 6455 §5.3 requires to be masked."""
    mask = os.urandom(4) if mask is None else mask
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")
    return header + mask + masked


class FrameReader:
    """Cuts the server's byte stream into messages: ``(opcode, payload)`` for each complete
    text, binary or control frame, whatever the reads' boundaries (a frame split over several
    reads, several frames in one). Server frames are never masked; fragmented messages are
    joined; control frames may arrive between fragments."""

    __slots__ = ("_fragment_opcode", "_fragments", "_needed", "_pending")

    def __init__(self) -> None:
        self._pending = bytearray()
        # Bytes the pending frame needs before parsing it again is worth it.
        self._needed = 0
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self._pending:
            self._pending += data
            if len(self._pending) < self._needed:
                return []
            data = bytes(self._pending)
            self._pending = bytearray()
        messages: list[tuple[int, bytes]] = []
        offset, size = 0, len(data)
        while offset < size:
            needed = 2
            if size - offset >= 2:
                first, second = data[offset], data[offset + 1]
                if second & 0x80:
                    raise ProtocolError("the server masked a frame")
                if first & 0x70:
                    raise ProtocolError("reserved bits set, but no extension was negotiated")
                length = second
                start = offset + 2
                if length == 126:
                    start += 2
                    if start <= size:
                        length = int.from_bytes(data[offset + 2 : start], "big")
                elif length == 127:
                    start += 8
                    if start <= size:
                        length = int.from_bytes(data[offset + 2 : start], "big")
                end = start + length
                if end <= size:
                    self._complete(first, data[start:end], messages)
                    offset = end
                    continue
                needed = (end if start <= size else start) - offset
            self._pending = bytearray(data[offset:])
            self._needed = needed
            break
        return messages

    def _complete(self, first: int, payload: bytes, messages: list[tuple[int, bytes]]) -> None:
        opcode, final = first & 0x0F, first & 0x80
        if opcode >= CLOSE:
            if not final or len(payload) > 125:
                raise ProtocolError(f"control frame {opcode:#x} fragmented or too long")
            messages.append((opcode, payload))
        elif opcode == CONTINUATION:
            if not self._fragment_opcode:
                raise ProtocolError("continuation frame without a message to continue")
            self._fragments.append(payload)
            if final:
                messages.append((self._fragment_opcode, b"".join(self._fragments)))
                self._fragments, self._fragment_opcode = [], 0
        elif self._fragment_opcode:
            raise ProtocolError("a new message began before the fragmented one ended")
        elif final:
            messages.append((opcode, payload))
        else:
            self._fragment_opcode = opcode
            self._fragments = [payload]


class Sink:
    """What one client process collects: ``(receipt time, raw createdAt)`` per delivery, error
    texts, and a count of deliveries that someone is waiting for."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[float, bytes]] = []
        self.errors: list[str] = []
        self.target = sys.maxsize
        self._reached: asyncio.Event | None = None

    def check(self) -> None:
        if len(self.deliveries) >= self.target and self._reached is not None:
            self.target = sys.maxsize
            self._reached.set()

    async def wait_for(self, count: int) -> None:
        """Returns once ``count`` deliveries are in."""
        self._reached = asyncio.Event()
        self.target = count
        self.check()
        try:
            await self._reached.wait()
        finally:
            self.target = sys.maxsize


class Subscriber(asyncio.Protocol):
    """One connection with one subscription: handshake, ``connection_init`` (then
    ``acknowledged`` resolves, or fails), ``subscribe()``, then deliveries into the sink."""

    def __init__(self, host: str, path: str, token: str, sink: Sink) -> None:
        self.acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._host, self._path, self._token = host, path, token
        self._sink = sink
        self._deliveries = sink.deliveries
        self._reader = FrameReader()
        self._key = base64.b64encode(os.urandom(16))
        self._response: bytearray | None = bytearray()  # None once the handshake is done
        self._transport: asyncio.Transport | None = None
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio's classes, but have their methods.
        self._transport = cast(asyncio.Transport, transport)
        # The headers the ``websockets`` client sends (deflate offered, and refused by the
        # bench's server), so that the server keeps the same handshake per connection and
        # the memory figure stays comparable with earlier runs.
        self._transport.write(
            b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            b"Sec-WebSocket-Protocol: graphql-transport-ws\r\n"
            b"User-Agent: Python/%d.%d bench.fanout\r\n\r\n"
            % (self._path.encode(), self._host.encode(), self._key, *sys.version_info[:2])
        )

    def data_received(self, data: bytes) -> None:
        received = time.time()
        if self._response is not None:
            rest = self._handshake(data)
            if not rest:
                return
            data = rest
        try:
            messages = self._reader.feed(data)
        except ProtocolError as error:
            self._fail(str(error))
            return
        for opcode, payload in messages:
            if opcode == TEXT:
                # The hot path: find createdAt's text without decoding the message. Anything
                # else (other messages, errors, another layout) takes the slow path.
                at = payload.find(_CREATED_AT)
                if at >= 0 and payload.find(b'"errors"') < 0:
                    start = at + len(_CREATED_AT)
                    if payload[start : start + 1] == b" ":  # json.dumps' default separator
                        start += 1
                    if payload[start : start + 1] == b'"':  # a string, not null
                        end = payload.find(b'"', start + 1)
                        if end > 0:
                            self._deliveries.append((received, payload[start + 1 : end]))
                            continue
                self._message(payload, received)
            else:
                self._control(opcode, payload)
        self._sink.check()

    def subscribe(self) -> None:
        self._send(
            {
                "id": "1",
                "type": "subscribe",
                "payload": {"query": SUBSCRIBE, "variables": {"a": ACCOUNT, "o": ORDER}},
            }
        )

    def close(self) -> None:
        if self._transport is not None and not self._closing:
            self._closing = True
            self._transport.write(client_frame(CLOSE, (1000).to_bytes(2, "big")))
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closing:
            self._fail(f"connection lost: {exc!r}")

    def _handshake(self, data: bytes) -> bytes | None:
        """Takes the server's handshake response; returns what followed it, if anything."""
        assert self._response is not None
        self._response += data
        end = self._response.find(b"\r\n\r\n")
        if end < 0:
            if len(self._response) > _MAX_RESPONSE_HEAD:
                self._fail("handshake response too long")
            return None
        lines = bytes(self._response[:end]).split(b"\r\n")
        rest = bytes(self._response[end + 4 :])
        self._response = None
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        problem = self._refusal(lines[0], headers)
        if problem:
            self._fail(f"handshake refused: {problem}")
            return None
        self._send(
            {"type": "connection_init", "payload": {"Authorization": f"Bearer {self._token}"}}
        )
        return rest

    def _refusal(self, status: bytes, headers: dict[bytes, bytes]) -> str | None:
        """What is wrong with the handshake response, if anything (RFC 6455 §4.1)."""
        accept = base64.b64encode(
            hashlib.sha1(self._key + _ACCEPT_GUID, usedforsecurity=False).digest()
        )
        connection = headers.get(b"connection", b"").lower().split(b",")
        if status.split(b" ")[1:2] != [b"101"]:
            return f"status {status!r}"
        if headers.get(b"upgrade", b"").lower() != b"websocket":
            return "no Upgrade: websocket"
        if b"upgrade" not in [token.strip() for token in connection]:
            return "no Connection: Upgrade"
        if headers.get(b"sec-websocket-accept") != accept:
            return "wrong Sec-WebSocket-Accept"
        if headers.get(b"sec-websocket-protocol") != b"graphql-transport-ws":
            return "subprotocol not graphql-transport-ws"
        if b"sec-websocket-extensions" in headers:
            return "an extension was negotiated"
        return None

    def _message(self, payload: bytes, received: float) -> None:
        """Any text message but an ordinary delivery."""
        try:
            message = json.loads(payload)
            kind = message.get("type")
        except (ValueError, AttributeError):
            self._fail(f"not a JSON object: {payload[:200]!r}")
            return
        if kind == "connection_ack":
            if not self.acknowledged.done():
                self.acknowledged.set_result(None)
        elif kind == "ping":
            self._send({"type": "pong"})
        elif kind == "pong":
            pass
        elif kind == "next" and not (message.get("payload") or {}).get("errors"):
            data = (message.get("payload") or {}).get("data") or {}
            created = (data.get("orderEvents") or {}).get("createdAt")
            if isinstance(created, str):
                self._deliveries.append((received, created.encode()))
            else:
                self._sink.errors.append(f"next without createdAt: {payload[:300]!r}")
        elif kind in {"next", "error"}:
            self._sink.errors.append(json.dumps(message.get("payload"))[:300])
        else:
            self._sink.errors.append(f"unexpected message: {payload[:300]!r}")

    def _control(self, opcode: int, payload: bytes) -> None:
        assert self._transport is not None
        if opcode == PING:
            self._transport.write(client_frame(PONG, payload))
        elif opcode == CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not self._closing:
                self._fail(f"closed by the server: {code} {payload[2:]!r}")
        elif opcode != PONG:
            self._fail(f"unexpected frame, opcode {opcode:#x}")

    def _send(self, message: dict[str, Any]) -> None:
        assert self._transport is not None
        self._transport.write(client_frame(TEXT, json.dumps(message).encode()))

    def _fail(self, problem: str) -> None:
        """Before the acknowledgement the connection fails to open; after it, the problem
        is an error of the run. Either way the connection is closed."""
        if self.acknowledged.done():
            self._sink.errors.append(problem[:300])
        else:
            self.acknowledged.set_exception(ConnectionError(problem))
        if self._transport is not None and not self._closing:
            self._closing = True
            self._transport.close()


async def _subscribers(url: str, token: str, count: int, pipe: Connection) -> None:
    """One client process: opens ``count`` subscriptions, says "ready", then answers the
    parent: ``("wait", n)`` with whether n deliveries arrived in time, ``"report"`` with
    ``(delays, errors, client CPU seconds)``."""
    loop = asyncio.get_running_loop()
    address = urlsplit(url)
    host, port = address.hostname or "127.0.0.1", address.port or 80
    sink = Sink()
    opening = asyncio.Semaphore(CONCURRENT_HANDSHAKES)
    subscribers: list[Subscriber] = []

    def subscriber() -> Subscriber:
        return Subscriber(f"{host}:{port}", "/graphql", token, sink)

    async def open_one() -> None:
        async with opening:
            _, protocol = await loop.create_connection(subscriber, host, port)
            subscribers.append(protocol)
            await protocol.acknowledged
        protocol.subscribe()

    opened = await asyncio.gather(*(open_one() for _ in range(count)), return_exceptions=True)
    failed = [outcome for outcome in opened if isinstance(outcome, BaseException)]
    if failed:
        pipe.send(f"{len(failed)} subscribers failed, e.g. {failed[0]!r}")
        for protocol in subscribers:
            protocol.close()
        return

    # Nothing here makes reference cycles; a collection in the middle of a fan-out would only
    # delay the deliveries behind it and count as the server's latency.
    gc.collect()
    gc.disable()

    def command() -> Any:
        try:
            return pipe.recv()
        except EOFError:  # the parent is gone
            return "report"

    pipe.send("ready")
    cpu_start = time.process_time()
    # A thread waits on the pipe: the event loop would make the pipe non-blocking, and a
    # large report could then not be sent in one go.
    while (order := await loop.run_in_executor(None, command)) != "report":
        _, deliveries = order
        try:
            async with asyncio.timeout(PACING_TIMEOUT_SECONDS):
                await sink.wait_for(deliveries)
        except TimeoutError:
            pipe.send(False)
        else:
            pipe.send(True)
    cpu = time.process_time() - cpu_start
    for protocol in subscribers:
        protocol.close()
    delays = delays_from(sink.deliveries, sink.errors)
    pipe.send((delays, sink.errors, cpu))


def delays_from(deliveries: Sequence[tuple[float, bytes]], errors: list[str]) -> list[float]:
    """Receipt time minus ``createdAt``, each distinct ``createdAt`` parsed once."""
    stamps: dict[bytes, float] = {}
    delays = []
    for received, created in deliveries:
        stamp = stamps.get(created)
        if stamp is None:
            try:
                stamp = stamps[created] = datetime.fromisoformat(created.decode()).timestamp()
            except ValueError:
                errors.append(f"createdAt is not ISO 8601: {created[:100]!r}")
                continue
        delays.append(received - stamp)
    return delays


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def client_process(url: str, token: str, count: int, pipe: Connection) -> None:
    with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
        runner.run(_subscribers(url, token, count, pipe))
