"""The request body: at most ``MAX_BODY_BYTES`` (``limit_body``), read as strict JSON
(``decode_json``).
"""

from __future__ import annotations

import json
from typing import Any

from cross_web import HTTPException
from starlette.types import Message, Receive, Scope

from app.validation import read_float


class InvalidJSON(json.JSONDecodeError):
    """A body or message that is not strict JSON. A ``JSONDecodeError``, so that Strawberry's
    WebSocket handlers treat it as the unreadable message it is."""

    def __init__(self, reason: str) -> None:
        # Not the document: an error must not carry (and so risk logging) the client's data.
        super().__init__(reason, "", 0)
        self.reason = reason


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _DuplicateKey()
    return result


def _not_a_number(constant: str) -> Any:
    raise InvalidJSON(f"{constant} is not a JSON number")


_decoder = json.JSONDecoder(
    object_pairs_hook=_unique_keys, parse_constant=_not_a_number, parse_float=read_float
)


def decode_json(data: str | bytes) -> object:
    """Reads strict JSON; raises ``InvalidJSON`` saying what is wrong with it.

    JSON as RFC 8259 defines it, which is stricter than Python's ``json`` module: ``NaN`` and
    the infinities are refused rather than handed on as floats nobody can store or return;
    an object may not repeat a key (the service stores what it was given, and of
    ``{"a": 1, "a": 2}`` it could keep only one value); nesting too deep for the parser is a
    refusal, not a ``RecursionError``; the text must be UTF-8 (``json.loads`` would guess
    UTF-16 and UTF-32 too). Numbers beyond a double (``1e400``) parse, to infinity, and
    numbers a double would read as 0 though they are not 0 (``1e-400``) to a ``Decimal``
    (``app.validation.read_float``), so that the input rules can refuse them naming the
    field that holds them."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidJSON("the body is not UTF-8") from None
    try:
        return _decoder.decode(data)
    except InvalidJSON:
        raise
    except json.JSONDecodeError as error:
        raise InvalidJSON(f"{error.msg} at line {error.lineno} column {error.colno}") from None
    except _DuplicateKey:
        raise InvalidJSON("an object has the same key twice") from None
    except RecursionError:
        raise InvalidJSON("arrays and objects are nested too deeply") from None
    except ValueError:
        # int() refuses numbers of more than 4300 digits (CVE-2020-10735).
        raise InvalidJSON("a number has too many digits") from None


def too_large(max_bytes: int) -> HTTPException:
    return HTTPException(413, f"the request body is larger than {max_bytes} bytes")


def limit_body(scope: Scope, receive: Receive, max_bytes: int) -> Receive:
    """``receive`` that raises a 413 ``HTTPException`` once the body passes ``max_bytes``:
    counted as it arrives, so an oversized body is refused before it is read whole, and a
    declared ``Content-Length`` over the limit before a byte is read."""
    declared = _content_length(scope)
    received = 0

    async def counted() -> Message:
        nonlocal received
        if declared is not None and declared > max_bytes:
            raise too_large(max_bytes)
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise too_large(max_bytes)
        return message

    return counted


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
