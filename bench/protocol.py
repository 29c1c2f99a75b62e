"""``python -m bench.protocol ours|stock [--count N]``: what the HTTP protocol costs per
request, without the application or the network.

One kept-alive connection of ``serving.HttpProtocol`` (``ours``) or uvicorn's stock
``HttpToolsProtocol`` is fed a whole POST per read, as nearly every request arrives, on a
transport that drops what it is given, and answered by an application that answers at once.
Prints process CPU time per request. On a loaded machine compare instruction counts instead:
run it under ``valgrind --tool=callgrind`` with two counts and divide the difference of the
totals by the difference of the counts (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from serving.http import HttpProtocol

BODY = b'{"query":"{ __typename }"}'
REQUEST = (
    b"POST /graphql HTTP/1.1\r\nhost: 127.0.0.1:8000\r\nauthorization: Bearer a.b.c\r\n"
    b"content-type: application/json\r\naccept: */*\r\ncontent-length: %d\r\n\r\n%s"
) % (len(BODY), BODY)


class Transport(asyncio.Transport):
    """A connected socket that drops what is written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def measure(protocol: type[HttpToolsProtocol], count: int) -> float:
    answered = asyncio.Event()

    async def answer(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
        answered.set()

    config = Config(app=answer, lifespan="off", access_log=False)
    config.load()
    connection = protocol(config=config, server_state=ServerState(), app_state={})
    transport = Transport()
    connection.connection_made(transport)

    async def one() -> None:
        answered.clear()
        connection.data_received(REQUEST)
        if transport.closing:
            raise SystemExit("the connection was closed: the request was refused")
        await answered.wait()

    for _ in range(500):
        await one()
    started = time.process_time()
    for _ in range(count):
        await one()
    return (time.process_time() - started) / count


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.protocol", description=__doc__)
    parser.add_argument("protocol", choices=["ours", "stock"])
    parser.add_argument("--count", type=int, default=20_000)
    args = parser.parse_args()
    protocol = HttpProtocol if args.protocol == "ours" else HttpToolsProtocol
    spent = asyncio.run(measure(protocol, args.count))
    print(f"{args.protocol}: {spent * 1e6:.2f} µs of CPU per request ({args.count} requests)")


if __name__ == "__main__":
    main()
