"""Limits on a GraphQL document (tokens, depth, aliases, cost), each at and over its edge:
refused before anything runs, as BAD_USER_INPUT saying which limit and by how much."""

from __future__ import annotations

import time
from typing import Any

import pytest
from graphql import get_introspection_query

from app.settings import Settings, SettingsError
from tests.conftest import ClientWith
from tests.helpers import (
    ACCOUNT,
    CREATE,
    EVENT_FIELDS,
    ORDER,
    create_variables,
    error_code,
    only_error,
    stored_rows,
)

ORDER_ARGS = f'accountId: "{ACCOUNT}", orderId: "{ORDER}"'
# orderEvents > events > links > href: four fields deep.
FOUR_DEEP = f"{{ orderEvents({ORDER_ARGS}) {{ events {{ links {{ href }} }} }} }}"


def typenames(count: int) -> str:
    """A query of ``count`` + 2 lexical tokens: ``{``, the fields, ``}``."""
    return "{" + " __typename" * count + " }"


def aliased(count: int) -> str:
    return "{ " + " ".join(f"a{i}: __typename" for i in range(count)) + " }"


def message(body: dict[str, Any]) -> str:
    text: str = only_error(body)["message"]
    return text


def succeeded(body: dict[str, Any]) -> bool:
    return "errors" not in body and body.get("data") is not None


# Tokens.


async def test_a_document_at_the_token_limit_runs(client_with: ClientWith) -> None:
    client = client_with(max_query_tokens=12)

    assert succeeded(await client.execute(typenames(10)))


async def test_a_document_over_the_token_limit_is_refused(client_with: ClientWith) -> None:
    client = client_with(max_query_tokens=12)

    body = await client.execute(typenames(11))

    assert error_code(body) == "BAD_USER_INPUT"
    assert "more than 12 tokens" in message(body)


async def test_an_enormous_document_is_refused_quickly(client: Any) -> None:
    # CPU time of this process, where the request runs: the work the refusal takes, without
    # the waits for a core that a busy machine adds to the wall clock.
    started = time.process_time()
    body = await client.execute(typenames(20_000))

    assert "tokens" in message(body)
    assert time.process_time() - started < 1


async def test_comments_are_limited_like_tokens(client_with: ClientWith) -> None:
    client = client_with(max_query_tokens=12)

    body = await client.execute("#\n" * 13 + "{ __typename }")

    assert "more than 12 comments" in message(body)


async def test_graphiqls_introspection_query_passes_the_default_limits(client: Any) -> None:
    query = get_introspection_query(
        descriptions=True,
        specified_by_url=True,
        directive_is_repeatable=True,
        schema_description=True,
        input_value_deprecation=True,
    )

    assert succeeded(await client.execute(query, token=None))


# Depth.


async def test_an_operation_at_the_depth_limit_runs(client_with: ClientWith) -> None:
    client = client_with(max_query_depth=4)

    assert succeeded(await client.execute(FOUR_DEEP))


async def test_an_operation_over_the_depth_limit_is_refused(client_with: ClientWith) -> None:
    client = client_with(max_query_depth=3)

    body = await client.execute(FOUR_DEEP)

    assert error_code(body) == "BAD_USER_INPUT"
    assert "nests fields 4 deep; this server allows at most 3" in message(body)


async def test_depth_counts_fields_inside_fragments(client_with: ClientWith) -> None:
    client = client_with(max_query_depth=3)
    query = (
        f"{{ orderEvents({ORDER_ARGS}) {{ ...Page }} }} "
        "fragment Page on OrderEventCollection { events { links { href } } }"
    )

    assert "4 deep" in message(await client.execute(query))


async def test_the_refusal_names_the_operation(client_with: ClientWith) -> None:
    client = client_with(max_query_depth=3)

    body = await client.execute(FOUR_DEEP.replace("{", "query Timeline {", 1))

    assert message(body).startswith("operation 'Timeline' nests fields 4 deep")


# Aliases.


async def test_an_operation_at_the_alias_limit_runs(client_with: ClientWith) -> None:
    client = client_with(max_query_aliases=5)

    assert succeeded(await client.execute(aliased(5)))


async def test_an_operation_over_the_alias_limit_is_refused(client_with: ClientWith) -> None:
    client = client_with(max_query_aliases=5)

    body = await client.execute(aliased(6))

    assert error_code(body) == "BAD_USER_INPUT"
    assert "uses 6 aliases; this server allows at most 5" in message(body)


async def test_aliases_count_each_time_their_fragment_is_spread(client_with: ClientWith) -> None:
    client = client_with(max_query_aliases=5)
    query = (
        f"{{ a: orderEvents({ORDER_ARGS}) {{ ...Two }} b: orderEvents({ORDER_ARGS}) {{ ...Two }} }}"
        " fragment Two on OrderEventCollection { x: state y: state }"
    )

    assert "uses 6 aliases" in message(await client.execute(query))


async def test_writes_over_the_default_alias_limit_store_nothing(client: Any) -> None:
    writes = " ".join(
        f'w{i}: createOrderEvent(accountId: "{ACCOUNT}", orderId: "o-{i}", '
        'event: {service: "kitchen", serviceStatus: "ready"}) { id }'
        for i in range(16)
    )

    body = await client.execute(f"mutation {{ {writes} }}")

    assert "uses 16 aliases; this server allows at most 15" in message(body)
    assert await stored_rows() == (0, 0)


# Cost.

# orderEvents 1 + events 1 + 10 events x version 1 = 12.
TEN_VERSIONS = f"{{ orderEvents({ORDER_ARGS}, first: 10) {{ events {{ version }} }} }}"


async def test_an_operation_at_the_cost_limit_runs(client_with: ClientWith) -> None:
    client = client_with(max_query_cost=12)

    assert succeeded(await client.execute(TEN_VERSIONS))


async def test_an_operation_over_the_cost_limit_is_refused(client_with: ClientWith) -> None:
    client = client_with(max_query_cost=11)

    body = await client.execute(TEN_VERSIONS)

    assert error_code(body) == "BAD_USER_INPUT"
    assert "may resolve up to 12 fields" in message(body)
    assert "at most 11" in message(body)


async def test_a_page_size_in_a_variable_costs_the_maximum_page(client_with: ClientWith) -> None:
    client = client_with(max_query_cost=12, max_page_size=30)
    query = (
        "query($first: Int) { "
        f"orderEvents({ORDER_ARGS}, first: $first) {{ events {{ version }} }} }}"
    )

    body = await client.execute(query, {"first": 10})

    assert "may resolve up to 32 fields" in message(body)


async def test_a_full_page_of_every_field_is_within_the_default_cost(client: Any) -> None:
    query = f"{{ orderEvents({ORDER_ARGS}, first: 200) {{ events {{ {EVENT_FIELDS} }} }} }}"

    assert succeeded(await client.execute(query))


async def test_four_full_pages_of_every_field_are_over_the_default_cost(client: Any) -> None:
    page = f"orderEvents({ORDER_ARGS}, first: 200) {{ events {{ {EVENT_FIELDS} }} }}"
    query = f"{{ a: {page} b: {page} c: {page} d: {page} }}"

    assert "may resolve up to" in message(await client.execute(query))


async def test_a_fragment_bomb_is_refused_quickly(client: Any) -> None:
    # Each fragment spreads the next one twice: 2^30 spreads if followed one by one.
    fragments = " ".join(f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(30))
    query = f"{{ ...F0 }} {fragments} fragment F30 on Query {{ __typename }}"
    started = time.process_time()  # CPU time, as above

    body = await client.execute(query)

    assert "may resolve up to 1073741824 fields" in message(body)
    assert time.process_time() - started < 2


# Batches and list sizes.


async def test_a_batch_of_operations_is_refused(client: Any) -> None:
    response = await client.http.post(
        "/graphql",
        json=[{"query": "{ __typename }"}, {"query": "{ __typename }"}],
        headers={"authorization": f"Bearer {client.default_token}"},
    )

    assert response.status_code == 400
    assert error_code(response.json()) == "BAD_USER_INPUT"
    assert "Batching is not enabled" in message(response.json())


async def test_a_page_over_the_maximum_is_refused(client: Any) -> None:
    query = f"{{ orderEvents({ORDER_ARGS}, first: 201) {{ state }} }}"

    body = await client.execute(query)

    assert only_error(body)["extensions"]["errors"] == [
        {"field": "first", "message": "must be between 0 and 200"}
    ]


async def test_a_mutation_within_the_limits_runs(client: Any) -> None:
    assert succeeded(await client.execute(CREATE, create_variables()))


# Settings.


def test_the_default_limits() -> None:
    settings = Settings.from_env({})

    assert (
        settings.max_query_tokens,
        settings.max_query_depth,
        settings.max_query_aliases,
        settings.max_query_cost,
    ) == (1000, 10, 15, 10_000)


def test_the_limits_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "MAX_QUERY_TOKENS": "500",
            "MAX_QUERY_DEPTH": "5",
            "MAX_QUERY_ALIASES": "2",
            "MAX_QUERY_COST": "300",
        }
    )

    assert (
        settings.max_query_tokens,
        settings.max_query_depth,
        settings.max_query_aliases,
        settings.max_query_cost,
    ) == (500, 5, 2, 300)


@pytest.mark.parametrize(
    "name", ["MAX_QUERY_TOKENS", "MAX_QUERY_DEPTH", "MAX_QUERY_ALIASES", "MAX_QUERY_COST"]
)
def test_a_limit_below_one_is_refused(name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: "0"})
