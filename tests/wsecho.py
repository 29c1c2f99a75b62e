"""A small ASGI application for testing uvicorn's WebSocket protocols (``serving.websocket``
and stock uvicorn's) on their own: in memory (``tests/test_serving.py``), and in a uvicorn
process started as ``scripts/serve`` starts the service (``create_app``).

On ``/echo`` it sends back each message as it came (text as text, bytes as bytes), and obeys
two text commands: ``close <code> <reason>`` closes the connection so, and
``burst <count> <size>`` sends ``count`` numbered text messages of ``size`` characters, then
``done``. It answers ``/refuse`` by closing before accepting (uvicorn then answers the
handshake with 403). Every disconnect it sees is printed (``disconnected <code>``) and kept
in ``disconnects``.
"""

from __future__ import annotations

from typing import Any

from starlette.types import Receive, Scope, Send

disconnects: list[int] = []


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await receive()  # websocket.connect
    if scope["path"] == "/refuse":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            disconnects.append(message["code"])
            print(f"disconnected {message['code']}", flush=True)
            return
        await _answer(message, send)


async def _answer(message: dict[str, Any], send: Send) -> None:
    text = message.get("text")
    if text is not None and text.startswith("close "):
        _, code, reason = text.split(" ", 2)
        await send({"type": "websocket.close", "code": int(code), "reason": reason})
    elif text is not None and text.startswith("burst "):
        _, count, size = text.split()
        for number in range(int(count)):
            await send({"type": "websocket.send", "text": f"{number}:".ljust(int(size), "x")})
        await send({"type": "websocket.send", "text": "done"})
    elif text is not None:
        await send({"type": "websocket.send", "text": text})
    else:
        await send({"type": "websocket.send", "bytes": message["bytes"]})


def create_app() -> Any:
    """For ``uvicorn --factory``."""
    return app
