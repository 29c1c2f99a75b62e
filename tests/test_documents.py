"""Compiled documents (app/api/documents.py) answer exactly as graphql-core would.

Each case runs twice against the same data, once by each route, and the answers must be the
same, errors included; writes are compared with the values that differ between two writes
(ids, times, cursors, versions) masked.
"""

from __future__ import annotations

from typing import Any

import pytest

from app.api.documents import Compiler
from app.api.schema import schema
from tests.conftest import GraphQLClient, Mint
from tests.helpers import bad_fields

EVENT_FIELDS = (
    "id eventType accountId orderId state service serviceStatus description metadata "
    "createdAt createdBy version cursor links { href rel __typename } __typename"
)
CREATE = (
    "mutation Create($a: ID!, $o: ID!, $e: OrderEventInput!, $k: String, $v: Int) {"
    " createOrderEvent(accountId: $a, orderId: $o, event: $e, idempotencyKey: $k,"
    f" expectedVersion: $v) {{ {EVENT_FIELDS} }} }}"
)
READ = (
    "query Read($a: ID!, $o: ID!, $first: Int, $after: String) {"
    " orderEvents(accountId: $a, orderId: $o, first: $first, after: $after) {"
    f" state events {{ {EVENT_FIELDS} }} pageInfo {{ hasNextPage endCursor __typename }}"
    " __typename } }"
)
EVENT = {"service": "kitchen", "serviceStatus": "ready", "metadata": {"b": [1, 2.5], "a": None}}
ACCOUNT, ORDER = "T12345678", "o-1"

WRITES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("all fields", CREATE, {"a": ACCOUNT, "o": ORDER, "e": EVENT}),
    ("explicit null state", CREATE, {"a": ACCOUNT, "o": ORDER, "e": {**EVENT, "state": None}}),
    ("enum state", CREATE, {"a": ACCOUNT, "o": ORDER, "e": {**EVENT, "state": "PENDING"}}),
    ("integer order id", CREATE, {"a": ACCOUNT, "o": 42, "e": EVENT}),
    ("bad input", CREATE, {"a": ACCOUNT, "o": ORDER, "e": {**EVENT, "service": ""}}),
    ("bad account", CREATE, {"a": "x", "o": "a/b", "e": EVENT}),
    ("other account", CREATE, {"a": "T87654321", "o": ORDER, "e": EVENT}),
    ("version conflict", CREATE, {"a": ACCOUNT, "o": ORDER, "e": EVENT, "v": 7}),
    ("unknown input field", CREATE, {"a": ACCOUNT, "o": ORDER, "e": {**EVENT, "colour": "red"}}),
    ("missing variable", CREATE, {"a": ACCOUNT, "e": EVENT}),
    ("wrong variable type", CREATE, {"a": ACCOUNT, "o": True, "e": EVENT}),
    ("bad enum", CREATE, {"a": ACCOUNT, "o": ORDER, "e": {**EVENT, "state": "DONE"}}),
    (
        "inline literals and alias",
        'mutation { made: createOrderEvent(accountId: "T12345678", orderId: 7, '
        'event: {service: "k", serviceStatus: "s", state: FAILURE, metadata: {x: [1, "y"]}}) '
        "{ id version state metadata __typename } }",
        None,
    ),
    (
        "literal with variables inside",
        'mutation($s: String!, $st: OrderEventState) { createOrderEvent(accountId: "T12345678",'
        ' orderId: "o-1", event: {service: $s, serviceStatus: "x", state: $st}) { state } }',
        {"s": "kitchen"},
    ),
]
READS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("a page", READ, {"a": ACCOUNT, "o": ORDER, "first": 2}),
    ("default page", READ, {"a": ACCOUNT, "o": ORDER}),
    ("explicit null first", READ, {"a": ACCOUNT, "o": ORDER, "first": None}),
    ("after a cursor", READ, {"a": ACCOUNT, "o": ORDER, "first": 1, "after": "MToxOjE"}),
    ("garbage cursor", READ, {"a": ACCOUNT, "o": ORDER, "after": "nope"}),
    ("page too large", READ, {"a": ACCOUNT, "o": ORDER, "first": 500}),
    ("float first", READ, {"a": ACCOUNT, "o": ORDER, "first": 2.0}),
    ("empty order", READ, {"a": ACCOUNT, "o": "nothing-here"}),
    (
        "aliases and typename",
        'query { t: orderEvents(accountId: "T12345678", orderId: "o-1", first: 1) '
        "{ s: state e: events { v: version } __typename } }",
        None,
    ),
]


def mask(body: dict[str, Any]) -> dict[str, Any]:
    """Blanks what two writes cannot share."""

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                key: "<masked>"
                if key in {"id", "createdAt", "cursor", "version", "requestId", "href"}
                else walk(item)
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    masked: dict[str, Any] = walk(body)
    return masked


async def both_routes(
    client: GraphQLClient, monkeypatch: pytest.MonkeyPatch, document: str, variables: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    fast = await client.execute(document, variables)
    with monkeypatch.context() as patch:
        patch.setattr(Compiler, "plan", lambda *_args, **_kwargs: None)
        ordinary = await client.execute(document, variables)
    return fast, ordinary


@pytest.mark.parametrize(("case", "document", "variables"), WRITES, ids=[w[0] for w in WRITES])
async def test_writes_agree(
    client: GraphQLClient,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    document: str,
    variables: dict[str, Any] | None,
) -> None:
    fast, ordinary = await both_routes(client, monkeypatch, document, variables)

    assert mask(fast) == mask(ordinary)


@pytest.mark.parametrize(("case", "document", "variables"), READS, ids=[r[0] for r in READS])
async def test_reads_agree(
    client: GraphQLClient,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    document: str,
    variables: dict[str, Any] | None,
) -> None:
    for state in ("SUCCESS", "PENDING", "SUCCESS"):
        await client.execute(CREATE, {"a": ACCOUNT, "o": ORDER, "e": {**EVENT, "state": state}})

    fast, ordinary = await both_routes(client, monkeypatch, document, variables)

    assert fast == ordinary


@pytest.mark.parametrize(
    "after",
    # base64url of "1:1:2147483648" and "1:9223372036854775808:1": beyond int4 and int8.
    ["MToxOjIxNDc0ODM2NDg", "MTo5MjIzMzcyMDM2ODU0Nzc1ODA4OjE"],
    ids=["version-beyond-int4", "position-beyond-int8"],
)
async def test_a_cursor_beyond_the_columns_is_bad_input_on_both_routes(
    client: GraphQLClient, monkeypatch: pytest.MonkeyPatch, after: str
) -> None:
    fast, ordinary = await both_routes(
        client, monkeypatch, READ, {"a": ACCOUNT, "o": ORDER, "after": after}
    )

    assert (bad_fields(fast), bad_fields(ordinary)) == (["after"], ["after"])


async def test_forbidden_write_agrees(
    client: GraphQLClient, monkeypatch: pytest.MonkeyPatch, mint: Mint
) -> None:
    client.default_token = mint("read:shopping")

    fast, ordinary = await both_routes(
        client, monkeypatch, CREATE, {"a": ACCOUNT, "o": ORDER, "e": EVENT}
    )

    assert fast == ordinary
    assert fast["errors"][0]["extensions"]["code"] == "FORBIDDEN"


def test_the_documents_clients_send_are_compiled() -> None:
    compiler = Compiler(schema)

    assert compiler.plan(CREATE, None, "POST") is not None
    assert compiler.plan(READ, "Read", "GET") is not None


@pytest.mark.parametrize(
    "document",
    [
        "{ __typename }",
        'query { orderEvents(accountId: "T12345678", orderId: "o") { ...F } } '
        "fragment F on OrderEventCollection { state }",
        'query { orderEvents(accountId: "T12345678", orderId: "o") { state @skip(if: true) } }',
        'query { a: orderEvents(accountId: "T12345678", orderId: "o") { state } '
        'b: orderEvents(accountId: "T12345678", orderId: "p") { state } }',
        'query { orderEvents(accountId: "T12345678", orderId: "o") { state state } }',
        'query($o: ID! = "x") { orderEvents(accountId: "T12345678", orderId: $o) { state } }',
        "{ nonsense }",
        'subscription { orderEvents(accountId: "T12345678") { id } }',
    ],
)
def test_other_documents_take_the_ordinary_route(document: str) -> None:
    assert Compiler(schema).plan(document, None, "POST") is None


def test_mutations_over_get_take_the_ordinary_route() -> None:
    assert Compiler(schema).plan(CREATE, None, "GET") is None


def test_an_operation_name_that_is_not_text_takes_the_ordinary_route() -> None:
    assert Compiler(schema).plan(CREATE, ["Create"], "POST") is None


SUBSCRIPTION = (
    "subscription($a: ID!, $o: ID) { orderEvents(accountId: $a, orderId: $o) { id version } }"
)


def test_a_plain_subscription_is_compiled_for_websockets_only() -> None:
    compiler = Compiler(schema)

    assert compiler.subscription_plan(SUBSCRIPTION, None) is not None
    assert compiler.plan(SUBSCRIPTION, None, "POST") is None


def test_queries_and_mutations_are_no_subscription_plans() -> None:
    assert Compiler(schema).subscription_plan(CREATE, None) is None


@pytest.mark.parametrize("first", [1, 5])
async def test_a_page_read_again_shows_what_was_written_since(
    client: GraphQLClient, first: int
) -> None:
    # The compiled route remembers what it made of a page (app.memo) for as long as the page
    # cache hands out the same events; a write must show at the next read all the same.
    read = {"a": ACCOUNT, "o": ORDER, "first": first}
    for state in ("SUCCESS", "PENDING"):
        await client.execute(CREATE, {"a": ACCOUNT, "o": ORDER, "e": {**EVENT, "state": state}})
    before = await client.execute(READ, read)
    assert await client.execute(READ, read) == before

    await client.execute(CREATE, {"a": ACCOUNT, "o": ORDER, "e": {**EVENT, "state": "FAILURE"}})
    after = (await client.execute(READ, read))["data"]["orderEvents"]

    assert after["state"] == "FAILURE"
    assert len(after["events"]) == min(first, 3)
    assert after["pageInfo"]["hasNextPage"] == (first < 3)
    assert [e["version"] for e in after["events"]] == list(range(1, min(first, 3) + 1))
