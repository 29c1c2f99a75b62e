"""Hostile values, sent as raw JSON so that every escape reaches the server as written: each
is either stored and returned exactly (read back through ``orderEvents`` too), or refused as
BAD_USER_INPUT naming the field, with nothing stored. Never a 500, never a partial write."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helpers import ACCOUNT, bad_fields, stored_rows

CREATE = """
mutation Create($accountId: ID!, $orderId: ID!, $event: OrderEventInput!,
                $idempotencyKey: String, $expectedVersion: Int) {
  createOrderEvent(accountId: $accountId, orderId: $orderId, event: $event,
                   idempotencyKey: $idempotencyKey, expectedVersion: $expectedVersion) {
    id orderId service serviceStatus description metadata
  }
}
"""

READ_BACK = """
query ReadBack($accountId: ID!, $orderId: ID!) {
  orderEvents(accountId: $accountId, orderId: $orderId, first: 200) {
    events { id orderId service serviceStatus description metadata }
  }
}
"""

# JSON texts of the fields, exactly as they go into the body.
DEFAULTS = {"orderId": '"order-1"', "service": '"kitchen"', "serviceStatus": '"ready"'}
EVENT_FIELDS = ("service", "serviceStatus", "description", "metadata")
OTHER_VARIABLES = ("idempotencyKey", "expectedVersion")


def raw_body(fields: dict[str, str]) -> str:
    """The createOrderEvent request, with ``fields`` (JSON texts) over the defaults."""
    texts = {**DEFAULTS, **fields}
    event = ", ".join(f'"{name}": {texts[name]}' for name in EVENT_FIELDS if name in texts)
    others = "".join(f', "{name}": {texts[name]}' for name in OTHER_VARIABLES if name in texts)
    return (
        f'{{"query": {json.dumps(CREATE)}, "variables": {{"accountId": "{ACCOUNT}", '
        f'"orderId": {texts["orderId"]}, "event": {{{event}}}{others}}}}}'
    )


def nested(levels: int) -> str:
    return '{"a": ' * levels + "1" + "}" * levels


def canonical(value: Any) -> str:
    """Equal texts for equal JSON, key order and number spelling (1 vs 1.0, -0.0) included."""
    return json.dumps(value, ensure_ascii=True)


C0 = "".join(f"\\u{code:04x}" for code in range(0x20))
C1 = "".join(f"\\u{code:04x}" for code in range(0x7F, 0xA0))

STORED_EXACTLY = {
    "metadata-string-with-nul": {"metadata": '{"note": "a\\u0000b"}'},
    "metadata-key-with-nul": {"metadata": '{"k\\u0000": 1}'},
    "metadata-c0-controls": {"metadata": f'{{"c0": "{C0}"}}'},
    "metadata-c1-controls": {"metadata": f'{{"c1": "{C1}"}}'},
    "metadata-bidi-override": {"metadata": '{"name": "\\u202egnp.exe"}'},
    "metadata-surrogate-pair": {"metadata": '{"emoji": "\\ud83d\\ude00"}'},
    "metadata-largest-double": {"metadata": '{"n": 1.7976931348623157e308}'},
    "metadata-1e308": {"metadata": '{"n": 1e308}'},
    "metadata-smallest-subnormal": {"metadata": '{"n": 5e-324}'},
    "metadata-2-to-the-64": {"metadata": f'{{"n": {2**64}}}'},
    "metadata-minus-2-to-the-63": {"metadata": f'{{"n": {-(2**63)}}}'},
    "metadata-negative-zero": {"metadata": '{"n": -0.0}'},
    "metadata-zero-with-a-tiny-exponent": {"metadata": '{"n": 0.000e-400}'},
    "metadata-one-tenth": {"metadata": '{"n": 0.1}'},
    "metadata-integral-float": {"metadata": '{"n": 1.0}'},
    "metadata-prototype-keys": {"metadata": '{"__proto__": {"admin": true}, "constructor": 1}'},
    "metadata-operator-keys": {"metadata": '{"$where": "1 == 1", "$gt": ""}'},
    "metadata-sql-fragment": {"metadata": '{"q": "\'; DROP TABLE order_events; --"}'},
    "metadata-empty-key": {"metadata": '{"": ""}'},
    "metadata-32-levels": {"metadata": nested(32)},
    "order-sql-fragment": {"orderId": '"\'; DROP TABLE order_events; --"'},
    "order-sql-comment": {"orderId": '"1 OR 1=1 --"'},
    "order-backslashes": {"orderId": '"..\\\\..\\\\windows\\\\win.ini"'},
    "order-percent-encoded-slash": {"orderId": '"..%2f..%2fetc%2fpasswd"'},
    "order-dots": {"orderId": '".."'},
    "order-quotes": {"orderId": '"\\"\'`"'},
    "service-sql-fragment": {"service": "\"' OR '1'='1\""},
    "service-zero-width-joiner": {"service": '"kit\\u200dchen"'},
    "description-line-breaks-and-tabs": {"description": '"one\\ntwo\\r\\n\\tthree"'},
    "description-line-separator": {"description": '"one\\u2028two"'},
    "description-html": {"description": '"<script>alert(1)</script>"'},
}

# (fields, the field named, HTTP status)
REFUSED = {
    "service-nul": ({"service": '"kitchen\\u0000"'}, "event.service", 200),
    "service-c0-escape": ({"service": '"kit\\u001bchen"'}, "event.service", 200),
    "service-c1-next-line": ({"service": '"kit\\u0085chen"'}, "event.service", 200),
    "service-delete": ({"service": '"kit\\u007fchen"'}, "event.service", 200),
    "service-bidi-override": ({"service": '"kitchen\\u202e"'}, "event.service", 200),
    "service-lone-high-surrogate": ({"service": '"\\ud800"'}, "event.service", 200),
    "service-lone-low-surrogate": ({"service": '"a\\udfffb"'}, "event.service", 200),
    "status-nul": ({"serviceStatus": '"\\u0000"'}, "event.serviceStatus", 200),
    "status-bidi-isolate": ({"serviceStatus": '"\\u2066ready"'}, "event.serviceStatus", 200),
    "status-lone-surrogate": ({"serviceStatus": '"ready\\udbff"'}, "event.serviceStatus", 200),
    "description-nul": ({"description": '"done\\u0000"'}, "event.description", 200),
    "description-bell": ({"description": '"done\\u0007"'}, "event.description", 200),
    "description-bidi-override": ({"description": '"\\u202eenod"'}, "event.description", 200),
    "description-lone-surrogate": ({"description": '"\\ud800"'}, "event.description", 200),
    "order-nul": ({"orderId": '"order\\u0000"'}, "orderId", 200),
    "order-path-traversal": ({"orderId": '"../../etc/passwd"'}, "orderId", 200),
    "order-bidi-override": ({"orderId": '"order\\u202e"'}, "orderId", 200),
    "order-lone-surrogate": ({"orderId": '"order\\ud800"'}, "orderId", 200),
    "idempotency-key-lone-surrogate": ({"idempotencyKey": '"k\\ud800"'}, "idempotencyKey", 200),
    "idempotency-key-nul": ({"idempotencyKey": '"k\\u0000"'}, "idempotencyKey", 200),
    "metadata-value-lone-surrogate": ({"metadata": '{"a": "\\ud800"}'}, "event.metadata", 200),
    "metadata-key-lone-surrogate": ({"metadata": '{"\\udc00": 1}'}, "event.metadata", 200),
    "metadata-1e400": ({"metadata": '{"n": 1e400}'}, "event.metadata", 200),
    "metadata-minus-1e400": ({"metadata": '{"n": -1e400}'}, "event.metadata", 200),
    # Not 0 as written, but a double would read them as 0: refused rather than changed.
    "metadata-1e-400": ({"metadata": '{"n": 1e-400}'}, "event.metadata", 200),
    "metadata-minus-1e-400": ({"metadata": '{"n": -1e-400}'}, "event.metadata", 200),
    "metadata-below-the-smallest-subnormal": (
        {"metadata": '{"n": 2e-324}'},
        "event.metadata",
        200,
    ),
    "metadata-underflow-deep-in-a-list": (
        {"metadata": '{"n": [0.5, {"m": 0.0000001e-330}]}'},
        "event.metadata",
        200,
    ),
    "metadata-integer-beyond-a-double": (
        {"metadata": f'{{"n": {10**309}}}'},
        "event.metadata",
        200,
    ),
    "metadata-33-levels": ({"metadata": nested(33)}, "event.metadata", 200),
    "metadata-500-levels": ({"metadata": nested(500)}, "event.metadata", 200),
    "metadata-over-64-kib": (
        {"metadata": json.dumps({"x": "a" * 64 * 1024})},
        "event.metadata",
        200,
    ),
    "metadata-a-list": ({"metadata": "[1, 2]"}, "event.metadata", 200),
    "expected-version-2-to-the-64": (
        {"expectedVersion": str(2**64)},
        "expectedVersion",
        200,
    ),
    "expected-version-1e400": ({"expectedVersion": "1e400"}, "expectedVersion", 200),
    "expected-version-1e-400": ({"expectedVersion": "1e-400"}, "expectedVersion", 200),
    # The body itself is not JSON (RFC 8259), or too big: the request is refused whole.
    "metadata-nan": ({"metadata": '{"n": NaN}'}, "request", 400),
    "metadata-infinity": ({"metadata": '{"n": Infinity}'}, "request", 400),
    "metadata-minus-infinity": ({"metadata": '{"n": -Infinity}'}, "request", 400),
    "metadata-duplicate-keys": ({"metadata": '{"a": 1, "a": 2}'}, "request", 400),
    "event-duplicate-keys": ({"service": '"kitchen", "service": "courier"'}, "request", 400),
    "metadata-10000-levels": ({"metadata": nested(10_000)}, "request", 400),
    "metadata-5000-digit-integer": ({"metadata": f'{{"n": {"9" * 5000}}}'}, "request", 400),
    "description-10-megabytes": ({"description": json.dumps("x" * 10**7)}, "request", 413),
}


async def post(client: Any, content: str) -> Any:
    return await client.http.post(
        "/graphql",
        content=content.encode(),
        headers={
            "content-type": "application/json",
            "authorization": f"Bearer {client.default_token}",
        },
    )


@pytest.mark.parametrize("fields", STORED_EXACTLY.values(), ids=STORED_EXACTLY.keys())
async def test_a_value_is_stored_and_returned_exactly(client: Any, fields: dict[str, str]) -> None:
    sent = {name: json.loads(text) for name, text in {**DEFAULTS, **fields}.items()}

    response = await post(client, raw_body(fields))

    created = response.json()["data"]["createOrderEvent"]
    assert {name: canonical(created[name]) for name in sent} == {
        name: canonical(value) for name, value in sent.items()
    }


@pytest.mark.parametrize("fields", STORED_EXACTLY.values(), ids=STORED_EXACTLY.keys())
async def test_a_stored_value_reads_back_exactly(client: Any, fields: dict[str, str]) -> None:
    sent = {name: json.loads(text) for name, text in {**DEFAULTS, **fields}.items()}
    created = (await post(client, raw_body(fields))).json()["data"]["createOrderEvent"]

    body = await client.execute(READ_BACK, {"accountId": ACCOUNT, "orderId": sent["orderId"]})

    assert [canonical(event) for event in body["data"]["orderEvents"]["events"]] == [
        canonical(created)
    ]


@pytest.mark.parametrize(("fields", "field", "status"), REFUSED.values(), ids=REFUSED.keys())
async def test_a_value_is_refused_naming_its_field(
    client: Any, fields: dict[str, str], field: str, status: int
) -> None:
    response = await post(client, raw_body(fields))

    assert response.status_code == status
    assert bad_fields(response.json()) == [field]


@pytest.mark.parametrize(("fields", "field", "status"), REFUSED.values(), ids=REFUSED.keys())
async def test_a_refused_value_stores_nothing(
    client: Any, fields: dict[str, str], field: str, status: int
) -> None:
    await post(client, raw_body(fields))

    assert await stored_rows() == (0, 0)
