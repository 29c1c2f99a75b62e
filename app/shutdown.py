"""Graceful shutdown of live connections on SIGTERM and SIGINT.

uvicorn answers these signals by closing every WebSocket at once with 1012. Before it does,
this completes each open subscription and closes its socket with 1001 (going away), so
clients reconnect to another process and resume with their last cursor; then uvicorn's own
handler runs as before and lets in-flight HTTP requests finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from app.api.websocket import Connections

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def drain_on_signals(connections: Connections, grace_seconds: float) -> Callable[[], None]:
    """Chains a drain in front of the current handlers; returns a function undoing it."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def pass_on(sig: int, frame: FrameType | None) -> None:
        handler = previous[sig]
        if callable(handler):
            handler(sig, frame)
        elif handler != signal.SIG_IGN:
            # Nobody else handles it: let the signal do what it does by default.
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    def handle(sig: int, frame: FrameType | None) -> None:
        async def drain_then_pass_on() -> None:
            try:
                await connections.drain_all(grace_seconds)
            finally:
                pass_on(sig, frame)

        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(drain_then_pass_on()))

    for sig in SIGNALS:
        signal.signal(sig, handle)

    def restore() -> None:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is handle:
                signal.signal(sig, handler)

    return restore
