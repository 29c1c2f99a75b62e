"""Deleting what has expired, in the background: idempotency keys (``app.idempotency``) and
webhook deliveries past their retention (``app.hooks.outbox``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


async def forever(interval_seconds: float, purge: Callable[[], Awaitable[int]], what: str) -> None:
    """Runs ``purge`` every ``interval_seconds`` until cancelled; ``what`` names the rows it
    deletes, in the log."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            purged = await purge()
        except Exception:
            # A database outage must not end the purging for good; the next round retries.
            logger.exception("purging %s failed", what)
        else:
            if purged:
                logger.info("purged %d %s", purged, what)
