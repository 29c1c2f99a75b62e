"""A small GraphQL-over-WebSocket client for end-to-end tests.

It speaks both subprotocols the server offers, with one vocabulary for the tests:

    graphql-transport-ws        graphql-ws (legacy)
    connection_init/ack         connection_init/ack, connection_error
    subscribe                   start
    next                        data
    error                       error
    complete (both ways)        stop (client), complete (server)
    ping -> pong (answered)     ka (counted)

Reading is pulled by the test, never done in the background: while a test awaits nothing, the
client reads nothing, so a test can play a consumer that has stopped reading. Messages of
other operations that arrive meanwhile are kept for later. Every wait is bounded by a timeout,
so a server that never answers fails the test instead of hanging it.
"""

# Every wait takes its own ``timeout``, rather than leaving it to the caller's
# ``asyncio.timeout``, so that a missing message fails with what was awaited and when.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
PROTOCOLS = (TRANSPORT_WS, LEGACY_WS)
TIMEOUT = 5.0

# The server's names for "here is a result" and "this operation is over", per subprotocol.
_RESULT = {"next", "data"}
_ENDS = {"error", "complete"}


class ServerClosed(AssertionError):
    """The server closed the connection while the test waited for something else."""

    def __init__(self, code: int, reason: str, waiting_for: str) -> None:
        super().__init__(f"connection closed ({code} {reason!r}) while waiting for {waiting_for}")
        self.code = code
        self.reason = reason


class WSClient:
    def __init__(self, websocket: ClientConnection) -> None:
        self.websocket = websocket
        self.protocol = websocket.subprotocol
        # Messages without an operation id (acks, keep-alives, connection errors), in order.
        self.connection_messages: deque[dict[str, Any]] = deque()
        self.pings = 0
        self.keep_alives = 0
        self._by_operation: defaultdict[str, deque[dict[str, Any]]] = defaultdict(deque)
        self._ids = (str(n) for n in itertools.count(1))
        self._close: tuple[int, str] | None = None

    # Sending ---------------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        await self.websocket.send(json.dumps(message))

    async def init(self, payload: dict[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"type": "connection_init"}
        if payload is not None:
            message["payload"] = payload
        await self.send(message)

    async def init_with_token(self, token: str, *, timeout: float = TIMEOUT) -> None:
        """Sends connection_init with the token and waits for the acknowledgement."""
        await self.init({"Authorization": f"Bearer {token}"})
        reply = await self.connection_message(timeout=timeout)
        assert reply["type"] == "connection_ack", reply

    async def subscribe(
        self, query: str, variables: dict[str, Any] | None = None, *, op_id: str | None = None
    ) -> str:
        op_id = op_id or next(self._ids)
        payload: dict[str, Any] = {"query": query}
        if variables is not None:
            payload["variables"] = variables
        kind = "subscribe" if self.protocol == TRANSPORT_WS else "start"
        await self.send({"id": op_id, "type": kind, "payload": payload})
        return op_id

    async def stop(self, op_id: str) -> None:
        kind = "complete" if self.protocol == TRANSPORT_WS else "stop"
        await self.send({"id": op_id, "type": kind})

    async def close(self) -> None:
        await self.websocket.close()

    # Receiving -------------------------------------------------------------------------------

    async def _read(self, deadline: float, waiting_for: str) -> None:
        """Reads one message from the socket and files it; answers pings."""
        if self._close is not None:
            raise ServerClosed(*self._close, waiting_for)
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(max(remaining, 0)):
                text = await self.websocket.recv()
        except TimeoutError:
            raise AssertionError(f"nothing arrived while waiting for {waiting_for}") from None
        except ConnectionClosed as closed:
            frame = closed.rcvd
            self._close = (1006, "") if frame is None else (frame.code, frame.reason)
            raise ServerClosed(*self._close, waiting_for) from None
        # Browser clients (graphql-ws, Apollo) parse text frames only: a binary frame reaches
        # them as a Blob and fails as an invalid message.
        assert isinstance(text, str), f"a binary frame arrived while waiting for {waiting_for}"
        message: dict[str, Any] = json.loads(text)
        kind = message.get("type")
        if kind == "ping":
            self.pings += 1
            # A close that crossed the pong is seen by the next read.
            with contextlib.suppress(ConnectionClosed):
                await self.send({"type": "pong"})
        elif kind == "ka":
            self.keep_alives += 1
        elif "id" in message:
            self._by_operation[message["id"]].append(message)
        else:
            self.connection_messages.append(message)

    def _deadline(self, timeout: float) -> float:
        return asyncio.get_running_loop().time() + timeout

    async def connection_message(self, *, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next message that belongs to no operation (connection_ack, connection_error)."""
        deadline = self._deadline(timeout)
        while not self.connection_messages:
            await self._read(deadline, "a connection message")
        return self.connection_messages.popleft()

    async def message(self, op_id: str, *, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next message of the operation."""
        deadline = self._deadline(timeout)
        queue = self._by_operation[op_id]
        while not queue:
            await self._read(deadline, f"a message of operation {op_id}")
        return queue.popleft()

    async def events(self, op_id: str, n: int, *, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """The next ``n`` results of the operation (their ``data``); fails if the operation
        sends anything else first, or fewer arrive within ``timeout`` in all."""
        deadline = self._deadline(timeout)
        results: list[dict[str, Any]] = []
        while len(results) < n:
            remaining = deadline - asyncio.get_running_loop().time()
            message = await self.message(op_id, timeout=max(remaining, 0))
            payload = message.get("payload") or {}
            if message["type"] not in _RESULT or payload.get("errors"):
                raise AssertionError(
                    f"operation {op_id} sent {message} after {len(results)} of {n} results"
                )
            results.append(payload["data"])
        return results

    async def errors(self, op_id: str, *, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """The GraphQL errors that end the operation, from an ``error`` message or a result
        carrying ``errors``; fails if a plain result or ``complete`` comes first."""
        message = await self.message(op_id, timeout=timeout)
        payload = message.get("payload")
        if message["type"] == "error":
            return payload if isinstance(payload, list) else [payload]
        if message["type"] in _RESULT and payload and payload.get("errors"):
            errors: list[dict[str, Any]] = payload["errors"]
            return errors
        raise AssertionError(f"operation {op_id} sent {message} instead of an error")

    async def error(self, op_id: str, *, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The single error that ends the operation."""
        errors = await self.errors(op_id, timeout=timeout)
        assert len(errors) == 1, errors
        return errors[0]

    async def results_until_error(
        self, op_id: str, *, timeout: float = TIMEOUT
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Every result of the operation up to the error that ends it, and that error."""
        deadline = self._deadline(timeout)
        results: list[dict[str, Any]] = []
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            message = await self.message(op_id, timeout=max(remaining, 0))
            payload = message.get("payload") or {}
            if message["type"] in _RESULT and not payload.get("errors"):
                results.append(payload["data"])
                continue
            if message["type"] == "complete":
                raise AssertionError(f"operation {op_id} completed without an error")
            errors = payload if isinstance(payload, list) else payload.get("errors", [payload])
            assert len(errors) == 1, message
            return results, errors[0]

    async def wait_for_ping(self, *, timeout: float = TIMEOUT) -> str:
        """Reads until the server sends a ping (graphql-transport-ws; answered) or a
        keep-alive (graphql-ws); returns which: "ping" or "ka"."""
        pings, keep_alives = self.pings, self.keep_alives
        deadline = self._deadline(timeout)
        while (self.pings, self.keep_alives) == (pings, keep_alives):
            await self._read(deadline, "a ping from the server")
        return "ping" if self.pings > pings else "ka"

    async def closed(self, *, timeout: float = TIMEOUT) -> tuple[int, str]:
        """Reads until the server closes the connection; returns its close code and reason.
        Messages read meanwhile are kept."""
        deadline = self._deadline(timeout)
        try:
            while True:
                await self._read(deadline, "the server to close the connection")
        except ServerClosed as closed:
            return closed.code, closed.reason


def small_receive_buffer_socket(size: int) -> socket.socket:
    """A TCP socket whose kernel receive buffer stays ``size`` bytes: a client that stops
    reading then holds up the server after little data, instead of megabytes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return sock


@asynccontextmanager
async def ws_connect(
    http_url: str,
    protocol: str = TRANSPORT_WS,
    *,
    headers: dict[str, str] | None = None,
    origin: str | None = None,
    max_queue: int = 16,
    receive_buffer: int | None = None,
) -> AsyncIterator[WSClient]:
    """A connection to the server's /graphql endpoint with one subprotocol.

    ``max_queue`` is how many messages the client library buffers before it stops reading
    from the socket; ``receive_buffer`` caps the kernel's receive buffer (both for tests of
    slow consumers).
    """
    url = http_url.replace("http://", "ws://", 1).rstrip("/") + "/graphql"
    options: dict[str, Any] = {}
    if receive_buffer is not None:
        sock = small_receive_buffer_socket(receive_buffer)
        host, _, port = url.removeprefix("ws://").split("/", 1)[0].partition(":")
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        options["sock"] = sock
    async with connect(
        url,
        subprotocols=[protocol],  # type: ignore[list-item]
        additional_headers=headers,
        origin=origin,  # type: ignore[arg-type]
        max_queue=max_queue,
        open_timeout=TIMEOUT,
        close_timeout=2,
        # The client's own keep-alive pings are no part of what is tested, and compression
        # would let a slow consumer's buffers hold many more messages.
        ping_interval=None,
        compression=None,
        **options,
    ) as websocket:
        yield WSClient(websocket)
