"""A webhook receiver on loopback for tests: a real HTTP server (uvicorn, in the test's event
loop) that records every request and answers as the test tells it to."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import uvicorn

from app.models import Hook
from tests.helpers import ACCOUNT, WAIT
from tests.servers import free_port


async def read_body(receive: Any) -> bytes:
    """An ASGI request's whole body."""
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


# What to answer to a request: a status, given what was received (all of it, this included).
Answer = Callable[[Received, list["Received"]], int]


@dataclass
class Receiver:
    port: int
    answer: Answer = lambda received, log: 200
    # Seconds to wait before answering.
    delay: float = 0.0
    # When given, requests are answered only once it is set.
    hold: asyncio.Event | None = None
    log: list[Received] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        headers = {name.decode(): value.decode() for name, value in scope["headers"]}
        received = Received(headers, body)
        async with self.changed:
            self.log.append(received)
            status = self.answer(received, self.log)
            self.changed.notify_all()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.hold is not None:
            await self.hold.wait()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"thanks"})

    async def wait_for(self, condition: Callable[[list[Received]], bool]) -> list[Received]:
        """Waits until ``condition`` holds of the log (failing after ``WAIT``)."""
        async with asyncio.timeout(WAIT), self.changed:
            await self.changed.wait_for(lambda: condition(self.log))
        return list(self.log)

    def events(self) -> list[dict[str, Any]]:
        """The bodies received, pings left out."""
        return [r.json for r in self.log if r.json["event"] != "ping"]


@asynccontextmanager
async def receiving(**options: Any) -> AsyncIterator[Receiver]:
    receiver = Receiver(port=free_port(), **options)
    config = uvicorn.Config(
        receiver,
        host="127.0.0.1",
        port=receiver.port,
        lifespan="off",
        ws="none",
        log_level="warning",
        # A dispatcher's request still in flight must not hold the test up at its end.
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(WAIT):
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it, if anything did
                raise RuntimeError(f"the receiver did not start on port {receiver.port}")
            await asyncio.sleep(0.01)
    try:
        yield receiver
    finally:
        server.should_exit = True
        async with asyncio.timeout(WAIT):
            await task


async def add_hook(
    account_id: str = ACCOUNT,
    *,
    url: str = "https://hooks.example/orders",
    secret: str = "s3cret",  # noqa: S107
    active: bool = True,
) -> Hook:
    """A hook stored as the API would store it, without the API's checks."""
    now = datetime.now(UTC)
    return await Hook.create(
        hook_id=str(uuid.uuid4()),
        account_id=account_id,
        url=url,
        content_type="application/json",
        secret_type="HMAC-SHA1",
        secret=secret,
        events='["shopping_order_event_add"]',
        active=active,
        created_at=now,
        created_by="merchant",
        updated_at=now,
    )
