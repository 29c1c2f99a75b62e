"""Limits on a GraphQL document (tokens, selections, repeats, depth, aliases, cost), each at
and over its edge: refused before anything runs, as BAD_USER_INPUT saying which limit and by
how much. Selections and repeats, and a missing token, are refused before the document is
validated: the tests count graphql-core's quadratic rule rather than time it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from graphql import DocumentNode, ValidationContext, get_introspection_query
from graphql.validation.rules.overlapping_fields_can_be_merged import (
    OverlappingFieldsCanBeMergedRule,
)

from app.auth import LocalIssuer
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
from tests.live import serving, subscriber

ORDER_ARGS = f'accountId: "{ACCOUNT}", orderId: "{ORDER}"'
# orderEvents > events > links > href: four fields deep.
FOUR_DEEP = f"{{ orderEvents({ORDER_ARGS}) {{ events {{ links {{ href }} }} }} }}"


def typenames(count: int) -> str:
    """A query of ``count`` + 2 lexical tokens: ``{``, the fields, ``}``."""
    return "{" + " __typename" * count + " }"


def aliased(count: int) -> str:
    return "{ " + " ".join(f"a{i}: __typename" for i in range(count)) + " }"


@pytest.fixture
def merge_checks(monkeypatch: pytest.MonkeyPatch) -> list[DocumentNode]:
    """The documents graphql-core's OverlappingFieldsCanBeMergedRule, the rule whose work
    grows with the square of the fields selected at one place, is run on from now on."""
    checked: list[DocumentNode] = []
    original = OverlappingFieldsCanBeMergedRule.__init__

    def counting(self: OverlappingFieldsCanBeMergedRule, context: ValidationContext) -> None:
        checked.append(context.document)
        original(self, context)

    monkeypatch.setattr(OverlappingFieldsCanBeMergedRule, "__init__", counting)
    return checked


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


# Selections and repeats: bounds on the work of validation, checked before it.

# The issue's attack: 995 fields at one place, within the token limit, and variants of it.
TYPENAMES = "query X1 {" + " __typename" * 995 + " }"
ONE_FRAGMENT = "query X1 { ...F } fragment F on Query {" + " __typename" * 985 + " }"
MANY_FRAGMENTS = (
    "query X1 { "
    + " ".join(f"...F{i}" for i in range(40))
    + " } "
    + " ".join(f"fragment F{i} on Query {{" + " __typename" * 15 + " }" for i in range(40))
)


def of_types(depth: int) -> str:
    """A binary tree of ``ofType`` selections: 2 ** depth of them at the deepest place."""
    if depth == 0:
        return "name"
    return " ".join([f"ofType {{ {of_types(depth - 1)} }}"] * 2)


NESTED = f'query X1 {{ __type(name: "Query") {{ {of_types(7)} }} }}'


ATTACKS = pytest.mark.parametrize(
    "query",
    [TYPENAMES, ONE_FRAGMENT, MANY_FRAGMENTS, NESTED],
    ids=["typenames", "one-fragment", "many-fragments", "nested"],
)


@ATTACKS
@pytest.mark.parametrize("token", ["none", "valid"])
async def test_a_document_that_repeats_fields_is_refused_before_validation(
    client_with: ClientWith, merge_checks: list[DocumentNode], query: str, token: str
) -> None:
    # Without a token the parser would stop first (below): here it lets them through.
    client = client_with(max_anonymous_query_tokens=1000)

    body = await client.execute(query, **({"token": None} if token == "none" else {}))

    assert error_code(body) == "BAD_USER_INPUT"
    assert "where the same name is already selected" in message(body)
    assert "this server allows at most 30 such repeats" in message(body)
    assert merge_checks == []


@ATTACKS
async def test_without_a_token_the_same_documents_stop_at_the_parser(
    client: Any, merge_checks: list[DocumentNode], query: str
) -> None:
    body = await client.execute(query, token=None)

    assert error_code(body) == "BAD_USER_INPUT"
    assert "more than 300 tokens" in message(body)
    assert merge_checks == []


async def test_a_short_document_that_repeats_fields_is_refused_on_both_routes(
    client: Any, merge_checks: list[DocumentNode]
) -> None:
    # Short enough for the compiled route to try it first (app.api.documents).
    query = "{" + " __typename" * 350 + " }"

    body = await client.execute(query)

    assert "selects fields 349 times where the same name is already selected" in message(body)
    assert merge_checks == []


async def test_a_document_that_repeats_fields_is_refused_over_a_websocket(
    server_env: dict[str, str], issuer: LocalIssuer, tmp_path: Path
) -> None:
    token = issuer.mint(account_id=ACCOUNT, scope="read:shopping")
    with serving(server_env, tmp_path, token) as server:
        async with subscriber(server, token) as ws:
            # NESTED is short enough for the compiled route to try it first.
            refusals = [await ws.error(await ws.subscribe(query)) for query in (TYPENAMES, NESTED)]

    for refusal in refusals:
        assert refusal["extensions"]["code"] == "BAD_USER_INPUT"
        assert "where the same name is already selected" in refusal["message"]


async def test_repeats_at_the_limit_run(client_with: ClientWith) -> None:
    client = client_with(max_query_repeats=2)

    assert succeeded(await client.execute("{ __typename __typename __typename }"))


async def test_repeats_over_the_limit_are_refused(client_with: ClientWith) -> None:
    client = client_with(max_query_repeats=1)

    body = await client.execute("{ __typename __typename __typename }")

    assert error_code(body) == "BAD_USER_INPUT"
    assert "selects fields 2 times where the same name is already selected" in message(body)
    assert "at most 1 such repeats" in message(body)


async def test_a_field_in_a_fragment_repeats_the_same_field_beside_it(
    client_with: ClientWith,
) -> None:
    client = client_with(max_query_repeats=0)
    query = "{ __typename ...F } fragment F on Query { __typename }"

    assert "selects fields 1 times" in message(await client.execute(query))


async def test_a_fragment_spread_twice_at_one_place_repeats_nothing(
    client_with: ClientWith,
) -> None:
    # graphql-core merges a fragment spread twice at one place, and compares it once.
    client = client_with(max_query_repeats=0)

    assert succeeded(await client.execute("{ ...F ...F } fragment F on Query { __typename }"))


async def test_an_unused_fragment_is_counted_too(
    client_with: ClientWith, merge_checks: list[DocumentNode]
) -> None:
    # graphql-core's rule compares the fields of every fragment, used or not.
    client = client_with(max_query_repeats=5)
    query = "{ __typename } fragment F on Query {" + " __typename" * 10 + " }"

    assert "selects fields 9 times" in message(await client.execute(query))
    assert merge_checks == []


# orderEvents, its fragment spread, and the fragment's state, pageInfo and hasNextPage:
# five selections for each alias, ten in all.
TWO_PAGES = (
    f"{{ a: orderEvents({ORDER_ARGS}) {{ ...Page }} b: orderEvents({ORDER_ARGS}) {{ ...Page }} }} "
    "fragment Page on OrderEventCollection { state pageInfo { hasNextPage } }"
)


async def test_selections_at_the_limit_run(client_with: ClientWith) -> None:
    client = client_with(max_query_selections=10)

    assert succeeded(await client.execute(TWO_PAGES))


async def test_selections_over_the_limit_are_refused_before_validation(
    client_with: ClientWith, merge_checks: list[DocumentNode]
) -> None:
    client = client_with(max_query_selections=9)

    body = await client.execute(TWO_PAGES)

    assert error_code(body) == "BAD_USER_INPUT"
    assert "makes more than 9 selections" in message(body)
    assert merge_checks == []


async def test_a_fragment_spread_at_many_places_is_counted_at_each(client: Any) -> None:
    # Each fragment spreads the next one under two fields: 2^20 places, if followed.
    fragments = " ".join(
        f"fragment F{i} on __Type {{ ofType {{ ...F{i + 1} }} a: ofType {{ ...F{i + 1} }} }}"
        for i in range(20)
    )
    query = f'{{ __type(name: "Query") {{ ...F0 }} }} {fragments} fragment F20 on __Type {{ name }}'
    started = time.process_time()  # CPU time, as above

    body = await client.execute(query)

    assert "makes more than 1000 selections" in message(body)
    assert time.process_time() - started < 1


async def test_a_document_sent_again_is_not_validated_again(
    client: Any, merge_checks: list[DocumentNode]
) -> None:
    query = "{ ...Q } fragment Q on Query { __typename }"
    assert succeeded(await client.execute(query))
    validated = len(merge_checks)

    assert succeeded(await client.execute(query))

    assert validated > 0
    assert len(merge_checks) == validated


# Without a token: introspection only, and nothing else validated.


async def test_an_operation_without_a_token_is_refused_before_validation(
    client: Any, merge_checks: list[DocumentNode]
) -> None:
    response = await client.post(f"{{ orderEvents({ORDER_ARGS}) {{ state }} }}", token=None)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert error_code(response.json()) == "UNAUTHENTICATED"
    assert merge_checks == []


async def test_an_invalid_document_without_a_token_is_401(client: Any) -> None:
    # The token comes first (README, "Order of checks"): nothing is validated for nobody.
    response = await client.post("{ nothingHere }", token=None)

    assert response.status_code == 401
    assert error_code(response.json()) == "UNAUTHENTICATED"


@pytest.mark.parametrize(
    "query",
    [
        "{ __typename }",
        '{ __type(name: "Query") { name } }',
        "query Q { ...Meta } fragment Meta on Query { __schema { queryType { name } } }",
        "{ ... on Query { __typename } }",
    ],
)
async def test_introspection_alone_runs_without_a_token(client: Any, query: str) -> None:
    assert succeeded(await client.execute(query, token=None))


async def test_a_document_without_a_token_has_a_smaller_token_limit(
    client_with: ClientWith,
) -> None:
    # Introspection is all it may run, and GraphiQL's introspection query is under 200 tokens:
    # the parser stops sooner on anything longer.
    client = client_with(max_anonymous_query_tokens=12)

    assert succeeded(await client.execute(typenames(10), token=None))
    body = await client.execute(typenames(11), token=None)
    assert error_code(body) == "BAD_USER_INPUT"
    assert "more than 12 tokens" in message(body)
    assert succeeded(await client.execute(typenames(11)))


async def test_an_invalid_token_is_refused_before_its_document_is_read(
    client_with: ClientWith,
) -> None:
    client = client_with(max_anonymous_query_tokens=12)

    body = await client.execute(typenames(11), token="not-a-token")

    # Not even the anonymous allowance: a refused token is a 401 whatever it sends.
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert "tokens" not in message(body)


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
    assert (settings.max_query_selections, settings.max_query_repeats) == (1000, 30)
    assert settings.max_anonymous_query_tokens == 300


def test_the_limits_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "MAX_QUERY_TOKENS": "500",
            "MAX_QUERY_DEPTH": "5",
            "MAX_QUERY_ALIASES": "2",
            "MAX_QUERY_COST": "300",
            "MAX_QUERY_SELECTIONS": "400",
            "MAX_QUERY_REPEATS": "0",
            "MAX_ANONYMOUS_QUERY_TOKENS": "100",
        }
    )

    assert (
        settings.max_query_tokens,
        settings.max_query_depth,
        settings.max_query_aliases,
        settings.max_query_cost,
    ) == (500, 5, 2, 300)
    assert (settings.max_query_selections, settings.max_query_repeats) == (400, 0)
    assert settings.max_anonymous_query_tokens == 100


@pytest.mark.parametrize(
    "name",
    [
        "MAX_QUERY_TOKENS",
        "MAX_QUERY_DEPTH",
        "MAX_QUERY_ALIASES",
        "MAX_QUERY_COST",
        "MAX_QUERY_SELECTIONS",
        "MAX_ANONYMOUS_QUERY_TOKENS",
    ],
)
def test_a_limit_below_one_is_refused(name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: "0"})


def test_repeats_below_zero_are_refused() -> None:
    with pytest.raises(SettingsError, match="MAX_QUERY_REPEATS"):
        Settings.from_env({"MAX_QUERY_REPEATS": "-1"})
