"""How ``scripts/serve`` runs the application under uvicorn; the application never imports it.

``python -m serving [uvicorn options]`` is uvicorn with the options below
(``uvicorn_options``), which the tests and benchmarks pass too; options given after them win.
``--http serving:HttpProtocol`` bounds what a client may hold of the server (``serving.http``).
``--ws serving:WebSocketProtocol`` serves WebSockets with ``serving.websocket``'s lighter
protocol. It is built on uvicorn's internals: should they have moved, this logs one warning
and serves with stock uvicorn's ``websockets-sansio``, which the application runs under alike.
"""

from __future__ import annotations

import logging

from uvicorn.config import WS_PROTOCOLS
from uvicorn.importer import import_from_string

from app.settings import Settings
from serving.http import HttpProtocol

__all__ = ["HttpProtocol", "WebSocketProtocol", "uvicorn_options"]

WebSocketProtocol: type
try:
    from serving.websocket import WebSocketProtocol
except ImportError as error:
    logging.getLogger(__name__).warning(
        "serving.websocket cannot be used (%s): WebSockets are served by stock uvicorn's "
        "websockets-sansio, with more memory per connection",
        error,
    )
    WebSocketProtocol = import_from_string(WS_PROTOCOLS["websockets-sansio"])


def uvicorn_options(settings: Settings) -> list[str]:
    """uvicorn's command-line options for the service as deployed, from its settings.

    No per-message deflate on WebSockets: its zlib state costs more per connection than the
    small JSON events sent to many mostly idle subscribers are worth. WebSockets are served by
    uvicorn's sans-I/O protocol in the lighter subclass (``--ws websockets`` runs five tasks
    per connection), which keeps less per idle connection and behaves the same
    (docs/benchmarks.md); the application runs as well under stock uvicorn: give
    ``--ws websockets-sansio`` after these. WebSocket messages are capped like request bodies.
    uvicorn's access log is off: the application writes its own line per request and per
    WebSocket connection (``app.api.access``), which leaves tokens and query strings out."""
    return [
        "--http",
        "serving:HttpProtocol",
        "--ws",
        "serving:WebSocketProtocol",
        "--ws-per-message-deflate",
        "false",
        "--ws-max-size",
        str(settings.max_body_bytes),
        "--timeout-keep-alive",
        str(settings.keep_alive_timeout_seconds),
        "--no-access-log",
    ]
