"""The contract's input rules over HTTP: each violation is BAD_USER_INPUT naming every bad
field, and a refused request stores nothing."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from app.api.documents import Compiler
from app.records import NewEvent
from app.validation import EVENT_FIELDS_TYPED_ONLY, EVENT_RULES
from tests.helpers import (
    ACCOUNT,
    CREATE,
    ORDER,
    bad_fields,
    create,
    create_variables,
    error_code,
    event_input,
    only_error,
    stored_rows,
)

KIB_64 = 64 * 1024


def nested(levels: int, leaf: Any = 1) -> dict[str, Any]:
    """An object ``levels`` objects deep, with ``leaf`` inside the innermost."""
    value: Any = leaf
    for _ in range(levels):
        value = {"a": value}
    result: dict[str, Any] = value
    return result


def of_compact_size(size: int, char: str = "a") -> dict[str, Any]:
    """An object whose compact JSON is ``size`` bytes: {"x":"aaa..."}."""
    overhead = len('{"x":""}')
    return {"x": char * ((size - overhead) // len(char.encode()))}


def variables(**changes: Any) -> dict[str, Any]:
    """createOrderEvent variables: accountId/orderId changes, anything else on the event."""
    account_id = changes.pop("accountId", ACCOUNT)
    order_id = changes.pop("orderId", ORDER)
    return create_variables(order_id, account_id, event_input(**changes))


# (variables, the field named, words its message uses)
REFUSED = {
    "account-lowercase-t": (variables(accountId="t12345678"), "accountId", "8 digits"),
    "account-7-digits": (variables(accountId="T1234567"), "accountId", "8 digits"),
    "account-9-digits": (variables(accountId="T123456789"), "accountId", "8 digits"),
    "account-x-prefix": (variables(accountId="X12345678"), "accountId", "8 digits"),
    "account-empty": (variables(accountId=""), "accountId", "8 digits"),
    "account-non-ascii-digits": (variables(accountId="T" + "\u0661" * 8), "accountId", "8 digits"),
    "order-empty": (variables(orderId=""), "orderId", "128"),
    "order-129-chars": (variables(orderId="o" * 129), "orderId", "128"),
    "order-slash": (variables(orderId="a/b"), "orderId", "/"),
    "order-control-char": (variables(orderId="a\x01b"), "orderId", "printable"),
    "order-nul": (variables(orderId="a\x00b"), "orderId", "printable"),
    "service-empty": (variables(service=""), "event.service", "255"),
    "service-256-chars": (variables(service="s" * 256), "event.service", "255"),
    "service-control-char": (variables(service="kit\x07chen"), "event.service", "control"),
    "service-nul": (variables(service="kitchen\x00"), "event.service", "control"),
    "status-empty": (variables(serviceStatus=""), "event.serviceStatus", "255"),
    "status-256-chars": (variables(serviceStatus="s" * 256), "event.serviceStatus", "255"),
    "status-control-char": (variables(serviceStatus="re\x1bady"), "event.serviceStatus", "control"),
    "status-nul": (variables(serviceStatus="\x00"), "event.serviceStatus", "control"),
    "description-1001-chars": (variables(description="d" * 1001), "event.description", "1000"),
    "description-nul": (variables(description="done\x00"), "event.description", "control"),
    "metadata-list": (variables(metadata=[1, 2]), "event.metadata", "object"),
    "metadata-string": (variables(metadata="pickup"), "event.metadata", "object"),
    "metadata-number": (variables(metadata=42), "event.metadata", "object"),
    "metadata-boolean": (variables(metadata=True), "event.metadata", "object"),
    "metadata-over-64-kib": (
        variables(metadata=of_compact_size(KIB_64 + 1)),
        "event.metadata",
        "65536",
    ),
    "metadata-over-64-kib-in-utf8-bytes": (
        variables(metadata={"x": "é" * (KIB_64 // 2)}),
        "event.metadata",
        "65536",
    ),
    "metadata-33-objects-deep": (variables(metadata=nested(33)), "event.metadata", "32"),
    "metadata-33-levels-with-a-list": (variables(metadata=nested(32, [1])), "event.metadata", "32"),
}

ACCEPTED = {
    "order-128-chars": variables(orderId="o" * 128),
    "order-unicode": variables(orderId="ordre-ø-寿司"),
    "service-255-chars": variables(service="s" * 255),
    "status-255-chars": variables(serviceStatus="s" * 255),
    "description-1000-chars": variables(description="d" * 1000),
    "description-with-newlines": variables(description="line one\nline two\r\n\tindented"),
    "description-empty": variables(description=""),
    "metadata-null": variables(metadata=None),
    "metadata-64-kib": variables(metadata=of_compact_size(KIB_64)),
    "metadata-32-objects-deep": variables(metadata=nested(32)),
    "metadata-32-levels-with-a-list": variables(metadata=nested(31, [1])),
    "production-account": variables(accountId="P12345678"),
}


@pytest.fixture
def token_for(mint: Any) -> Any:
    """A write token for the account the variables name, so only the input rules decide."""

    def make(values: dict[str, Any]) -> str:
        return str(mint(account=values["accountId"]))

    return make


@pytest.mark.parametrize(("values", "field", "words"), REFUSED.values(), ids=REFUSED.keys())
async def test_a_broken_rule_is_bad_user_input_naming_the_field(
    client: Any, values: dict[str, Any], field: str, words: str
) -> None:
    body = await client.execute(CREATE, values)

    (item,) = only_error(body)["extensions"]["errors"]
    assert (body["data"], item["field"]) == (None, field)
    assert words in item["message"]


@pytest.mark.parametrize(("values", "field", "words"), REFUSED.values(), ids=REFUSED.keys())
async def test_a_refused_event_stores_nothing(
    client: Any, values: dict[str, Any], field: str, words: str
) -> None:
    await client.execute(CREATE, values)

    assert await stored_rows() == (0, 0)


@pytest.mark.parametrize("values", ACCEPTED.values(), ids=ACCEPTED.keys())
async def test_a_value_at_the_limit_is_accepted(
    client: Any, token_for: Any, values: dict[str, Any]
) -> None:
    body = await client.execute(CREATE, values, token=token_for(values))

    assert "errors" not in body, body
    assert body["data"]["createOrderEvent"]["version"] == 1


async def test_every_bad_field_is_listed_at_once(client: Any) -> None:
    values = variables(
        accountId="t1",
        orderId="a/b",
        service="",
        serviceStatus="s" * 256,
        description="d" * 1001,
        metadata=[],
    )

    body = await client.execute(CREATE, values)

    assert bad_fields(body) == [
        "accountId",
        "orderId",
        "event.service",
        "event.serviceStatus",
        "event.description",
        "event.metadata",
    ]


async def test_the_error_message_names_the_bad_fields(client: Any) -> None:
    body = await client.execute(CREATE, variables(service="", description="d" * 1001))

    message = only_error(body)["message"]
    assert "event.service" in message and "event.description" in message


async def test_several_bad_fields_store_nothing(client: Any) -> None:
    await client.execute(CREATE, variables(orderId="", service="", metadata="x"))

    assert await stored_rows() == (0, 0)


async def test_a_float_beyond_a_double_is_refused(client: Any) -> None:
    # JSON variables cannot carry it as a number a parser keeps; GraphQL literal syntax can.
    query = (
        'mutation { createOrderEvent(accountId: "T12345678", orderId: "o", '
        'event: {service: "k", serviceStatus: "s", metadata: {x: 1e400}}) { id } }'
    )

    body = await client.execute(query)

    assert bad_fields(body) == ["event.metadata"]


def with_metadata(metadata: str) -> str:
    """createOrderEvent with ``metadata`` written in the document (and ``$m`` declared where
    it uses it)."""
    declared = "($m: JSON)" if "$m" in metadata else ""
    return (
        f'mutation{declared} {{ createOrderEvent(accountId: "T12345678", orderId: "o", '
        f'event: {{service: "k", serviceStatus: "s", metadata: {metadata}}}) {{ metadata }} }}'
    )


@pytest.mark.parametrize("route", ["compiled", "ordinary"])
@pytest.mark.parametrize(
    "metadata", ["{x: 1e-400}", "{x: [1, -2E-999]}"], ids=["in-an-object", "in-a-list"]
)
async def test_a_literal_float_a_double_reads_as_zero_is_refused(
    client: Any, monkeypatch: pytest.MonkeyPatch, route: str, metadata: str
) -> None:
    if route == "ordinary":
        monkeypatch.setattr(Compiler, "plan", lambda *_args, **_kwargs: None)

    body = await client.execute(with_metadata(metadata))

    assert bad_fields(body) == ["event.metadata"]


@pytest.mark.parametrize("route", ["compiled", "ordinary"])
async def test_a_variable_float_a_double_reads_as_zero_is_refused(
    client: Any, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    if route == "ordinary":
        monkeypatch.setattr(Compiler, "plan", lambda *_args, **_kwargs: None)
    content = json.dumps({"query": with_metadata("$m"), "variables": {"m": {"x": 1}}})

    response = await client.http.post(
        "/graphql",
        content=content.replace('"x": 1', '"x": 1e-400'),
        headers={
            "content-type": "application/json",
            "authorization": f"Bearer {client.default_token}",
        },
    )

    assert bad_fields(response.json()) == ["event.metadata"]


@pytest.mark.parametrize("route", ["compiled", "ordinary"])
async def test_an_omitted_variable_in_a_json_literal_is_null_as_an_explicit_null_is(
    client: Any, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    if route == "ordinary":
        monkeypatch.setattr(Compiler, "plan", lambda *_args, **_kwargs: None)
    query = with_metadata("{a: $m, b: [1, $m]}")

    omitted = await client.execute(query, {})
    null = await client.execute(query, {"m": None})

    assert (
        omitted == null == {"data": {"createOrderEvent": {"metadata": {"a": None, "b": [1, None]}}}}
    )


async def test_nan_in_a_json_body_is_refused(client: Any) -> None:
    # Python's json module (and so the server's) reads the non-standard NaN token.
    content = (
        '{"query": "mutation($e: OrderEventInput!) { createOrderEvent(accountId: \\"T12345678\\",'
        ' orderId: \\"o\\", event: $e) { id } }", "variables": {"e": {"service": "k",'
        ' "serviceStatus": "s", "metadata": {"x": NaN}}}}'
    )

    response = await client.http.post(
        "/graphql",
        content=content,
        headers={
            "content-type": "application/json",
            "authorization": f"Bearer {client.default_token}",
        },
    )

    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert await stored_rows() == (0, 0)


# Input the GraphQL layer refuses before the service sees it.


async def test_a_missing_required_input_field_is_bad_user_input(client: Any) -> None:
    body = await client.execute(
        CREATE, create_variables(event={"serviceStatus": "ready_for_pickup"})
    )

    assert bad_fields(body) == ["event.service"]


async def test_an_unknown_enum_value_is_bad_user_input(client: Any) -> None:
    body = await create(client, event=event_input(state="DONE"))

    assert bad_fields(body) == ["event.state"]


async def test_a_wrongly_typed_variable_is_bad_user_input(client: Any) -> None:
    body = await create(client, event=event_input(service=42))

    assert bad_fields(body) == ["event.service"]


async def test_an_unknown_input_field_is_bad_user_input(client: Any) -> None:
    body = await create(client, event=event_input(colour="red"))

    assert bad_fields(body) == ["event.colour"]


async def test_a_missing_field_in_a_literal_is_bad_user_input(client: Any) -> None:
    query = (
        'mutation { createOrderEvent(accountId: "T12345678", orderId: "o", '
        'event: {serviceStatus: "s"}) { id } }'
    )

    assert bad_fields(await client.execute(query)) == ["service"]


async def test_an_unknown_enum_literal_is_bad_user_input(client: Any) -> None:
    query = (
        'mutation { createOrderEvent(accountId: "T12345678", orderId: "o", '
        'event: {service: "k", serviceStatus: "s", state: DONE}) { id } }'
    )

    assert error_code(await client.execute(query)) == "BAD_USER_INPUT"


async def test_input_refused_by_graphql_stores_nothing(client: Any) -> None:
    await create(client, event=event_input(state="DONE"))

    assert await stored_rows() == (0, 0)


def test_every_field_of_a_posted_event_has_its_rule() -> None:
    posted = {field.name for field in dataclasses.fields(NewEvent)}

    assert set(EVENT_RULES) | EVENT_FIELDS_TYPED_ONLY == posted
    assert not set(EVENT_RULES) & EVENT_FIELDS_TYPED_ONLY
