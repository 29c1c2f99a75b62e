"""The contract's input rules, each checked in one place, every violation collected.

Checkers append a ``FieldError`` per broken rule instead of raising at the first, so a client
learns about all of its mistakes in one response.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from app.errors import FieldError

# [0-9], not \d: \d also matches non-ASCII digits (Arabic-Indic ones, for example).
ACCOUNT_ID = re.compile(r"[PT][0-9]{8}")
ORDER_ID_MAX = 128
NAME_MAX = 255
DESCRIPTION_MAX = 1000
IDEMPOTENCY_KEY_MAX = 255
# An event id (app.encoding.new_event_id), as the table's column holds it.
EVENT_ID_MAX = 40
METADATA_MAX_BYTES = 64 * 1024
METADATA_MAX_DEPTH = 32

_DOUBLE_MAX = sys.float_info.max

# Line breaks and tabs are ordinary in a description; every other control character is refused.
_TEXT_CONTROLS_ALLOWED = {"\n", "\r", "\t"}


def check_account_id(value: str, field: str, errors: list[FieldError]) -> None:
    if not ACCOUNT_ID.fullmatch(value):
        errors.append(
            FieldError(field, "must be P or T followed by 8 digits, for example T12345678")
        )


def check_order_id(value: str, field: str, errors: list[FieldError]) -> None:
    if not 1 <= len(value) <= ORDER_ID_MAX:
        errors.append(FieldError(field, f"must be 1 to {ORDER_ID_MAX} characters long"))
    elif "/" in value:
        errors.append(FieldError(field, "must not contain '/'"))
    elif not _encodable(value) or not value.isprintable():
        errors.append(FieldError(field, "must contain printable characters only"))


def check_idempotency_key(value: str, field: str, errors: list[FieldError]) -> None:
    if not 1 <= len(value) <= IDEMPOTENCY_KEY_MAX:
        errors.append(FieldError(field, f"must be 1 to {IDEMPOTENCY_KEY_MAX} characters long"))
    elif not _encodable(value) or not value.isprintable():
        errors.append(FieldError(field, "must contain printable characters only"))


def check_name(value: str, field: str, errors: list[FieldError]) -> None:
    """A service name or status: 1-255 characters, no control characters."""
    if not 1 <= len(value) <= NAME_MAX:
        errors.append(FieldError(field, f"must be 1 to {NAME_MAX} characters long"))
    elif not value.strip():
        errors.append(FieldError(field, "must not be blank"))
    elif problem := _text_problem(value, allowed_controls=set()):
        errors.append(FieldError(field, problem))


def check_description(value: str, field: str, errors: list[FieldError]) -> None:
    if len(value) > DESCRIPTION_MAX:
        errors.append(FieldError(field, f"must be at most {DESCRIPTION_MAX} characters long"))
    elif problem := _text_problem(value, allowed_controls=_TEXT_CONTROLS_ALLOWED):
        errors.append(FieldError(field, problem))


def check_metadata(value: Any, field: str, errors: list[FieldError]) -> str | None:
    """Validates a metadata object and returns its JSON text, or None when it is refused."""
    if not isinstance(value, dict):
        errors.append(FieldError(field, "must be a JSON object"))
        return None
    problem = _json_problem(value, depth=1)
    if problem:
        errors.append(FieldError(field, problem))
        return None
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    if len(text.encode()) > METADATA_MAX_BYTES:
        errors.append(
            FieldError(field, f"must be at most {METADATA_MAX_BYTES} bytes as compact JSON")
        )
        return None
    return text


# The rule of each field of an event as a client posts it (``app.records.NewEvent``), by the
# field's name; ``state`` has none beyond its enum type. A new field gets its rule here and
# nowhere else: the service checks every field listed (tests/test_input_rules.py holds this
# to NewEvent's fields). A rule may return what it made of the value (metadata's JSON text).
EVENT_RULES: dict[str, Callable[[Any, str, list[FieldError]], Any]] = {
    "service": check_name,
    "service_status": check_name,
    "description": check_description,
    "metadata": check_metadata,
}
# Fields whose type is their whole rule.
EVENT_FIELDS_TYPED_ONLY = frozenset({"state"})


def check_event(event: object, prefix: str, errors: list[FieldError]) -> dict[str, Any]:
    """Checks each field of ``event`` that is set (not None) by its rule, naming it as the
    API does (``event.serviceStatus``); returns what the rules made of the values."""
    made = {}
    for name, rule in EVENT_RULES.items():
        value = getattr(event, name)
        if value is not None:
            made[name] = rule(value, f"{prefix}.{_API_NAMES[name]}", errors)
    return made


_API_NAMES = {name: re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name) for name in EVENT_RULES}


def _json_problem(value: Any, depth: int) -> str | None:
    # Objects and lists make the levels; a scalar inside the 32nd level does not add one.
    if not isinstance(value, dict | list):
        return _scalar_problem(value)
    if depth > METADATA_MAX_DEPTH:
        return f"must be at most {METADATA_MAX_DEPTH} levels deep"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not _encodable(key):
                return "keys must be valid Unicode strings"
            if problem := _json_problem(item, depth + 1):
                return problem
        return None
    for item in value:
        if problem := _json_problem(item, depth + 1):
            return problem
    return None


_NOT_FINITE = "numbers must be finite (no NaN or Infinity, nothing beyond a double)"
_NOT_ZERO_YET_ZERO = "numbers other than 0 must not be so small that a double reads them as 0"


def _scalar_problem(value: Any) -> str | None:
    if isinstance(value, str):
        return None if _encodable(value) else "strings must be valid Unicode (no lone surrogates)"
    if isinstance(value, float):
        return None if math.isfinite(value) else _NOT_FINITE
    if isinstance(value, Decimal):  # only read_float makes one
        return _NOT_ZERO_YET_ZERO
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _DOUBLE_MAX:
        # Python keeps such an integer exactly, but most JSON readers would turn it into
        # Infinity: refused like 1e400, rather than stored for clients that cannot read it.
        return _NOT_FINITE
    if value is not None and not isinstance(value, bool | int):
        return "must contain JSON values only"
    return None


# A number whose digits before any exponent are not all zeros.
_NOT_ZERO_AS_WRITTEN = re.compile(r"-?[0.]*[1-9]")


def read_float(text: str) -> float | Decimal:
    """A number with a fraction or an exponent, from a JSON text or a GraphQL document, as
    the service reads it: a double. Only a number that is not 0 as written but that a double
    reads as 0 (``1e-400``) stays as written, a ``Decimal``: the metadata rule refuses it,
    naming its field, as it refuses one beyond a double (which reads as infinity), and no
    GraphQL scalar takes it, where infinity is refused too."""
    value = float(text)
    if value == 0.0 and _NOT_ZERO_AS_WRITTEN.match(text):
        return Decimal(text)
    return value


def _text_problem(value: str, allowed_controls: set[str]) -> str | None:
    if not _encodable(value):
        return "must be valid Unicode (no lone surrogates)"
    # The first offending character decides the message, as a scan from the start would.
    # Searched with regular expressions: a loop over every character in Python cost a
    # write more than any other rule.
    control = next(
        (m.start() for m in _CONTROLS.finditer(value) if m.group() not in allowed_controls), None
    )
    bidi = _BIDI.search(value)
    if control is not None and (bidi is None or control < bidi.start()):
        return "must not contain control characters"
    if bidi is not None:
        return "must not contain bidirectional control characters"
    return None


# Unicode's control characters (category Cc) are exactly these two ranges.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")
# Characters that reorder the text around them when displayed (the "Trojan Source" family).
_BIDI = re.compile("[\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c]")


def _encodable(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True
