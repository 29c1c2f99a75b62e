"""Properties over generated input (Hypothesis), through HTTP: every answer to
createOrderEvent is either the event, stored and read back exactly as sent, or
BAD_USER_INPUT naming exactly the fields that break a rule, with nothing stored.

The examples are derived from the test's name (``derandomize``), so every run, here and in
CI, tries the same ones; the tables are not emptied between examples, so each example works
on an order of its own or compares counts before and after.
"""

from __future__ import annotations

import json
import math
import sys
import unicodedata
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import ACCOUNT, stored_rows

CREATE = """
mutation Create($accountId: ID!, $orderId: ID!, $event: OrderEventInput!) {
  createOrderEvent(accountId: $accountId, orderId: $orderId, event: $event) {
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

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    # ``client`` empties the tables once per test, not per example: accounted for above.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Text from every plane and category, lone surrogates and controls included.
any_text = st.text(st.characters(codec=None, categories=None), max_size=40)
# Mostly ordinary text, now and then the character that breaks a rule.
rule_breakers = st.sampled_from(["\x00", "\x1b", "\x85", "\u202e", "\u2066", "\ud800", "/"])
plain = st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "Zs"]), max_size=30)
mixed_text = st.one_of(
    plain,
    st.builds(lambda a, b, c: a + b + c, plain, rule_breakers, plain),
    any_text,
    st.text(max_size=300),
)

numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=10**307, max_value=10**309),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([-0.0, 0.1, 1e308, 5e-324]),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=20,
)
metadata_objects = st.dictionaries(any_text, json_values, max_size=6)

BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


# The contract's rules, written out again as the test's own oracle.


def encodable(text: str) -> bool:
    return not any(0xD800 <= ord(char) <= 0xDFFF for char in text)


def clean(text: str, allowed: str = "") -> bool:
    return encodable(text) and not any(
        char not in allowed and (unicodedata.category(char) == "Cc" or char in BIDI)
        for char in text
    )


def order_id_ok(value: str) -> bool:
    return 1 <= len(value) <= 128 and "/" not in value and encodable(value) and value.isprintable()


def name_ok(value: str) -> bool:
    return 1 <= len(value) <= 255 and bool(value.strip()) and clean(value)


def description_ok(value: str | None) -> bool:
    return value is None or (len(value) <= 1000 and clean(value, "\n\r\t"))


def json_ok(value: Any, depth: int = 1) -> bool:
    if isinstance(value, dict | list) and depth > 32:
        return False
    if isinstance(value, dict):
        return all(encodable(k) and json_ok(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(json_ok(item, depth + 1) for item in value)
    if isinstance(value, str):
        return encodable(value)
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) <= sys.float_info.max
    return True


def metadata_ok(value: dict[str, Any] | None) -> bool:
    if value is None:
        return True
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return json_ok(value) and len(text.encode("utf-8", "surrogatepass")) <= 64 * 1024


def broken_fields(variables: dict[str, Any]) -> list[str]:
    event = variables["event"]
    checks = [
        ("orderId", order_id_ok(variables["orderId"])),
        ("event.service", name_ok(event["service"])),
        ("event.serviceStatus", name_ok(event["serviceStatus"])),
        ("event.description", description_ok(event.get("description"))),
        ("event.metadata", metadata_ok(event.get("metadata"))),
    ]
    return [field for field, ok in checks if not ok]


def canonical(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True)


async def post(client: Any, query: str, variables: dict[str, Any]) -> Any:
    # ASCII-only JSON, so that lone surrogates travel as \\ud800 escapes.
    return await client.http.post(
        "/graphql",
        content=json.dumps({"query": query, "variables": variables}).encode(),
        headers={
            "content-type": "application/json",
            "authorization": f"Bearer {client.default_token}",
        },
    )


async def read_back(client: Any, order_id: str, event_id: str) -> dict[str, Any]:
    response = await post(client, READ_BACK, {"accountId": ACCOUNT, "orderId": order_id})
    (event,) = [e for e in response.json()["data"]["orderEvents"]["events"] if e["id"] == event_id]
    return dict(event)


async def check_answer(client: Any, variables: dict[str, Any]) -> None:
    """The property: the event exactly as sent and read back so, or a refusal naming exactly
    the broken fields, with nothing stored."""
    before = await stored_rows()
    response = await post(client, CREATE, variables)
    body = response.json()
    broken = broken_fields(variables)

    if broken:
        (error,) = body["errors"]
        assert error["extensions"]["code"] == "BAD_USER_INPUT", body
        assert [item["field"] for item in error["extensions"]["errors"]] == broken, body
        assert await stored_rows() == before
        return
    assert "errors" not in body, body
    created = body["data"]["createOrderEvent"]
    event = variables["event"]
    sent = {
        "orderId": variables["orderId"],
        "service": event["service"],
        "serviceStatus": event["serviceStatus"],
        "description": event.get("description"),
        "metadata": event.get("metadata"),
    }
    assert canonical({k: created[k] for k in sent}) == canonical(sent)
    assert canonical(await read_back(client, variables["orderId"], created["id"])) == canonical(
        created
    )


@PROPERTY
@given(
    order_id=mixed_text,
    service=mixed_text,
    service_status=mixed_text,
    description=st.none() | mixed_text,
    metadata=st.none() | metadata_objects,
)
async def test_every_input_is_stored_exactly_or_refused_naming_its_fields(
    client: Any,
    order_id: str,
    service: str,
    service_status: str,
    description: str | None,
    metadata: dict[str, Any] | None,
) -> None:
    event: dict[str, Any] = {"service": service, "serviceStatus": service_status}
    if description is not None:
        event["description"] = description
    if metadata is not None:
        event["metadata"] = metadata
    await check_answer(client, {"accountId": ACCOUNT, "orderId": order_id, "event": event})


@PROPERTY
@given(metadata=metadata_objects.filter(metadata_ok), order=st.uuids())
async def test_valid_metadata_round_trips_exactly(
    client: Any, metadata: dict[str, Any], order: Any
) -> None:
    event = {"service": "kitchen", "serviceStatus": "ready", "metadata": metadata}

    await check_answer(client, {"accountId": ACCOUNT, "orderId": str(order), "event": event})


VARIABLE_NAMES = ("accountId", "orderId", "event")


@PROPERTY
@given(
    variables=st.fixed_dictionaries(
        {},
        optional={
            "accountId": json_values | st.just(ACCOUNT),
            "orderId": json_values,
            "event": json_values
            | st.fixed_dictionaries(
                {"service": json_values, "serviceStatus": json_values},
                optional={"state": json_values, "metadata": json_values, "extra": json_values},
            ),
        },
    )
)
async def test_any_json_in_any_variable_is_an_event_or_bad_user_input(
    client: Any, variables: dict[str, Any]
) -> None:
    before = await stored_rows()

    response = await post(client, CREATE, variables)

    body = response.json()
    if "errors" not in body:
        assert body["data"]["createOrderEvent"]["id"]
        return
    for error in body["errors"]:
        assert error["extensions"]["code"] == "BAD_USER_INPUT", body
        for item in error["extensions"]["errors"]:
            assert item["field"].split(".")[0] in VARIABLE_NAMES, body
    assert await stored_rows() == before


@PROPERTY
@given(
    body=json_values
    | st.fixed_dictionaries(
        {},
        optional={
            "query": json_values | st.sampled_from([CREATE, READ_BACK, "{ __typename }"]),
            "variables": json_values,
            "operationName": json_values | st.sampled_from(["Create", "ReadBack"]),
            "extensions": json_values,
        },
    )
)
async def test_any_json_as_the_body_is_answered_never_with_a_server_error(
    client: Any, body: Any
) -> None:
    response = await client.http.post(
        "/graphql",
        content=json.dumps(body).encode(),
        headers={
            "content-type": "application/json",
            "authorization": f"Bearer {client.default_token}",
        },
    )

    assert response.status_code in {200, 400}, response.text
    for error in response.json().get("errors", []):
        assert error["extensions"]["code"] == "BAD_USER_INPUT", response.text
