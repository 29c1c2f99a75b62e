"""Response JSON, request ids and event ids.

JSON is written with orjson: compact, UTF-8 and several times faster than the standard
library on the responses this service sends. orjson refuses integers beyond 64 bits, which
event metadata may hold; such a document is written by the standard library instead, with
the same compact separators.
"""

from __future__ import annotations

import json
import os
import random

import orjson


def encode_json(data: object) -> bytes:
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def new_request_id() -> str:
    """32 random hex digits, as ``uuid4().hex`` has. A request id correlates log lines and
    answers and guards nothing, so it comes from ``random`` (seeded from the system at
    start) rather than a system call per request, which costs microseconds in a VM."""
    return f"{random.getrandbits(128):032x}"


class _RandomBytes:
    """Bytes from ``os.urandom``, fetched 4 KiB at a time: one system call per 256 event ids
    instead of one per id, which in a VM is a measurable part of a write. The same kernel
    randomness, just read in larger pieces. Reseeded in a forked child, which must not hand
    out its parent's remaining bytes."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._pool = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._pool, self._at = b"", 0

    def take(self, count: int) -> bytes:
        if self._at + count > len(self._pool):
            self._pool, self._at = os.urandom(self._size), 0
        chunk = self._pool[self._at : self._at + count]
        self._at += count
        return chunk


_random_bytes = _RandomBytes()


def new_event_id() -> str:
    """A random (version 4) UUID in its usual text form, as ``str(uuid.uuid4())`` gives it,
    without building a UUID object (which cost more than the randomness)."""
    raw = bytearray(_random_bytes.take(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
