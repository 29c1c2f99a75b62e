"""How ``scripts/serve`` runs the application under uvicorn; the application never imports it.

``--ws serving:WebSocketProtocol`` serves WebSockets with ``serving.websocket``'s lighter
protocol. It is built on uvicorn's internals: should they have moved, this logs one warning
and serves with stock uvicorn's ``websockets-sansio``, which the application runs under alike.
"""

from __future__ import annotations

import logging

from uvicorn.config import WS_PROTOCOLS
from uvicorn.importer import import_from_string

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
