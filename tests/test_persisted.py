"""Persisted queries (app/api/persisted.py): Apollo's and urql's automatic persisted queries
over GET and POST, as those clients send them, and trusted documents from a manifest.

Apollo Client's link sends ``extensions.persistedQuery`` without the query; on
``PersistedQueryNotFound`` (message) or ``PERSISTED_QUERY_NOT_FOUND`` (code) it sends the
query with the hash, by POST; later requests by hash alone must run it, on the compiled route
when the document has a plan, and answer as the query itself does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from app.api.persisted import (
    BadPersistedQuery,
    DocumentNotInList,
    PersistedQueries,
    PersistedQueryNotFound,
    PersistedQueryNotSupported,
    read_manifest,
)
from app.auth import LocalIssuer
from app.settings import SettingsError
from tests.conftest import ClientWith, GraphQLClient, Mint
from tests.helpers import ACCOUNT, CREATE, INTROSPECTION, created
from tests.live import FIRST_QUERY, SUBSCRIBE, http_api, received, serving, subscriber, watching
from tests.servers import Server
from tests.test_documents import mask
from tests.test_endpoint import EVENT, ORDER, READ, WRITE, Routes
from tests.wsclient import PROTOCOLS, TRANSPORT_WS

# What Apollo Client 4 sends as Accept (Apollo Client 3 sends */*).
APOLLO_4_ACCEPT = "application/graphql-response+json,application/json;q=0.9"
NOT_FOUND = {
    "errors": [
        {"message": "PersistedQueryNotFound", "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"}}
    ]
}
# A document the compiled route does not take (a fragment): the view answers it.
READ_WITH_FRAGMENT = (
    'query Read($o: ID!) { orderEvents(accountId: "T12345678", orderId: $o) { ...Page } }'
    " fragment Page on OrderEventsPage { state events { version service } }"
)


@pytest.fixture
def fresh(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """A document's text made this test's own with a comment: the app, and so the documents
    it has registered, outlive a test."""
    return lambda document: f"{document}\n# {request.node.nodeid}"


def sha256(document: str) -> str:
    return hashlib.sha256(document.encode()).hexdigest()


def persisted(document: str) -> dict[str, Any]:
    return {"persistedQuery": {"version": 1, "sha256Hash": sha256(document)}}


def headers(client: GraphQLClient, accept: str = "*/*") -> dict[str, str]:
    return {"authorization": f"Bearer {client.default_token}", "accept": accept}


async def by_hash_post(
    client: GraphQLClient,
    document: str,
    variables: dict[str, Any] | None = None,
    *,
    accept: str = "*/*",
    operation_name: str | None = None,
) -> httpx.Response:
    """Apollo's first request: the hash, variables and operation name, no query."""
    body: dict[str, Any] = {"operationName": operation_name, "variables": variables or {}}
    body["extensions"] = persisted(document)
    return await client.http.post("/graphql", json=body, headers=headers(client, accept))


async def by_hash_get(
    client: GraphQLClient,
    document: str,
    variables: dict[str, Any] | None = None,
    *,
    accept: str = "*/*",
    operation_name: str | None = None,
) -> httpx.Response:
    """Apollo's first request with ``useGETForHashedQueries``: its parameters in the order
    Apollo's HttpLink writes them, JSON ones as compact JSON."""
    params: dict[str, str] = {}
    if operation_name is not None:
        params["operationName"] = operation_name
    params["variables"] = json.dumps(variables or {}, separators=(",", ":"))
    params["extensions"] = json.dumps(persisted(document), separators=(",", ":"))
    return await client.http.get(f"/graphql?{urlencode(params)}", headers=headers(client, accept))


async def with_query(
    client: GraphQLClient,
    document: str,
    variables: dict[str, Any] | None = None,
    *,
    sha: str | None = None,
    miss: bool = False,
) -> httpx.Response:
    """Apollo's retry after a miss: the query and the hash, by POST (urql adds ``miss``)."""
    extension: dict[str, Any] = {"version": 1, "sha256Hash": sha or sha256(document)}
    if miss:
        extension["miss"] = True
    body = {
        "query": document,
        "variables": variables or {},
        "extensions": {"persistedQuery": extension},
    }
    return await client.http.post("/graphql", json=body, headers=headers(client))


async def write_events(client: GraphQLClient, count: int = 3) -> None:
    for _ in range(count):
        body = await client.execute(WRITE, {"o": ORDER, "e": EVENT})
        assert "errors" not in body, body


# The cycle ------------------------------------------------------------------------------------


@pytest.mark.parametrize("accept", ["*/*", APOLLO_4_ACCEPT], ids=["apollo-3", "apollo-4"])
@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_an_unknown_hash_is_answered_as_apollo_expects(
    client: GraphQLClient, fresh: Callable[[str], str], method: str, accept: str
) -> None:
    send = by_hash_post if method == "POST" else by_hash_get

    response = await send(client, fresh(READ), {"o": ORDER}, accept=accept, operation_name="Read")

    assert response.status_code == 200
    assert response.json() == NOT_FOUND
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_the_query_sent_after_a_miss_is_run_and_then_known_by_its_hash(
    client: GraphQLClient, fresh: Callable[[str], str], method: str
) -> None:
    await write_events(client)
    send = by_hash_post if method == "POST" else by_hash_get
    variables = {"o": ORDER, "first": 2}
    read = fresh(READ)
    plain = (await client.post(read, variables)).json()

    missed = await send(client, read, variables)
    registered = await with_query(client, read, variables)
    hit = await send(client, read, variables)

    assert missed.json() == NOT_FOUND
    assert registered.status_code == 200 and registered.json() == plain
    assert hit.status_code == 200 and hit.json() == plain
    assert plain["data"]["orderEvents"]["events"][1]["version"] == 2


async def test_a_hash_hit_takes_the_compiled_route(
    client: GraphQLClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await with_query(client, READ, {"o": ORDER})
    routes = Routes(monkeypatch)

    for send in (by_hash_post, by_hash_get):
        response = await send(client, READ, {"o": ORDER})
        assert "data" in response.json(), response.text

    assert routes.ordinary == 0, "the compiled route should have answered both"


async def test_apollo_4_s_client_library_extension_keeps_a_hit_on_the_compiled_route(
    client: GraphQLClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Apollo Client 4 sends {"clientLibrary": {"name", "version"}} beside the persisted query.
    await with_query(client, READ, {"o": ORDER})
    routes = Routes(monkeypatch)
    extensions = {
        "clientLibrary": {"name": "@apollo/client", "version": "4.3.8"},
        **persisted(READ),
    }
    body = {"operationName": "Read", "variables": {"o": ORDER}, "extensions": extensions}

    response = await client.http.post(
        "/graphql", json=body, headers=headers(client, APOLLO_4_ACCEPT)
    )

    assert response.json()["data"]["orderEvents"]["state"] == "PENDING"
    assert routes.ordinary == 0, "the compiled route should have answered"


@pytest.mark.parametrize(
    ("document", "variables"),
    [
        pytest.param(READ, {"o": ORDER, "first": 2}, id="compiled"),
        pytest.param(READ, {"o": ORDER, "first": -1}, id="compiled-bad-input"),
        pytest.param(READ_WITH_FRAGMENT, {"o": ORDER}, id="ordinary"),
        pytest.param(WRITE, {"o": ORDER, "e": EVENT}, id="write"),
        pytest.param(WRITE, {"o": ORDER, "e": {**EVENT, "service": ""}}, id="write-bad-input"),
        pytest.param("{ nope }", None, id="invalid-document"),
    ],
)
async def test_by_hash_the_answer_is_the_query_s_own(
    client: GraphQLClient, document: str, variables: dict[str, Any] | None
) -> None:
    await write_events(client)
    plain = await client.post(document, variables)
    await with_query(client, document, variables)
    if document == WRITE:  # the registration wrote once more: compare like with like
        plain = await client.post(document, variables)

    by_hash = await by_hash_post(client, document, variables)

    assert by_hash.status_code == plain.status_code
    assert mask(by_hash.json()) == mask(plain.json())


async def test_urql_s_retry_after_a_miss_registers_the_query(
    client: GraphQLClient, fresh: Callable[[str], str]
) -> None:
    # urql marks the retry {"miss": true} in the extension, and may send it over GET.
    read = fresh(READ)
    params = {
        "query": read,
        "variables": json.dumps({"o": ORDER}),
        "extensions": json.dumps(
            {"persistedQuery": {"version": 1, "sha256Hash": sha256(read), "miss": True}}
        ),
    }
    missed = await by_hash_get(client, read, {"o": ORDER})
    retried = await client.http.get(f"/graphql?{urlencode(params)}", headers=headers(client))
    hit = await by_hash_get(client, read, {"o": ORDER})

    assert missed.json() == NOT_FOUND
    assert "data" in retried.json(), retried.text
    assert hit.json() == retried.json()


async def test_a_hash_that_is_not_the_query_s_is_refused(
    client: GraphQLClient, fresh: Callable[[str], str]
) -> None:
    read = fresh(READ)
    response = await with_query(client, read, {"o": ORDER}, sha=sha256(read + " "))

    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert error["extensions"]["errors"][0]["field"] == "extensions.persistedQuery.sha256Hash"
    assert "is not the SHA-256 of the query" in error["message"]
    assert (await by_hash_post(client, read, {"o": ORDER})).json() == NOT_FOUND


@pytest.mark.parametrize(
    ("extension", "field"),
    [
        ({"version": 2, "sha256Hash": "ab"}, "extensions.persistedQuery.version"),
        ({"version": 1}, "extensions.persistedQuery.sha256Hash"),
        ("abc", "extensions.persistedQuery"),
    ],
)
async def test_a_malformed_persisted_query_says_what_is_wrong(
    client: GraphQLClient, extension: object, field: str
) -> None:
    body = {"extensions": {"persistedQuery": extension}}

    response = await client.http.post("/graphql", json=body, headers=headers(client))

    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["errors"][0]["field"] == field


async def test_a_mutation_by_hash_over_get_is_refused_like_any_get_mutation(
    client: GraphQLClient,
) -> None:
    variables = {"o": ORDER, "e": EVENT}
    await with_query(client, WRITE, variables)
    plain = await client.http.get(
        "/graphql?" + urlencode({"query": WRITE, "variables": json.dumps(variables)}),
        headers=headers(client),
    )

    response = await by_hash_get(client, WRITE, variables)

    assert response.status_code == plain.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json() == plain.json()
    # Only the registering POST wrote.
    page = await client.execute(READ, {"o": ORDER})
    assert [event["version"] for event in page["data"]["orderEvents"]["events"]] == [1]


async def test_registered_documents_are_kept_within_their_bytes(
    client_with: ClientWith,
) -> None:
    first, second = "{ __typename }", "query Second { __typename }"
    small = client_with(persisted_query_cache_bytes=len(second) + 5)

    await with_query(small, first)
    await with_query(small, second)  # pushes the least recently used out

    assert (await by_hash_post(small, first)).json() == NOT_FOUND
    assert (await by_hash_post(small, second)).json() == {"data": {"__typename": "Query"}}


async def test_with_no_room_persisted_queries_are_not_supported(
    client_with: ClientWith,
) -> None:
    off = client_with(persisted_query_cache_bytes=0)

    response = await by_hash_post(off, READ, {"o": ORDER})
    plain = await off.post(READ, {"o": ORDER})

    assert response.status_code == 200
    assert response.json() == {
        "errors": [
            {
                "message": "PersistedQueryNotSupported",
                "extensions": {"code": "PERSISTED_QUERY_NOT_SUPPORTED"},
            }
        ]
    }
    assert "data" in plain.json()


# Trusted documents ----------------------------------------------------------------------------

LISTED_ID = "sha1-or-anything"  # an id is opaque: codegen hashes with SHA-1 by default


def codegen_manifest(tmp_path: Path) -> Path:
    path = tmp_path / "persisted-documents.json"
    path.write_text(json.dumps({LISTED_ID: READ, sha256(WRITE): WRITE}))
    return path


def apollo_manifest(tmp_path: Path) -> Path:
    path = tmp_path / "persisted-query-manifest.json"
    operations = [
        {"id": LISTED_ID, "body": READ, "name": "Read", "type": "query"},
        {"id": sha256(WRITE), "body": WRITE, "name": "Write", "type": "mutation"},
    ]
    manifest = {"format": "apollo-persisted-query-manifest", "version": 1, "operations": operations}
    path.write_text(json.dumps(manifest))
    return path


MANIFESTS = [codegen_manifest, apollo_manifest]


@pytest.fixture(params=MANIFESTS, ids=["codegen", "apollo"])
def trusted(
    request: pytest.FixtureRequest, tmp_path: Path, client_with: ClientWith
) -> GraphQLClient:
    return client_with(trusted_documents=request.param(tmp_path))


async def test_a_trusted_document_runs_by_its_id(trusted: GraphQLClient) -> None:
    body = {
        "variables": {"o": ORDER},
        "extensions": {"persistedQuery": {"version": 1, "sha256Hash": LISTED_ID}},
    }

    response = await trusted.http.post("/graphql", json=body, headers=headers(trusted))

    assert response.status_code == 200
    assert response.json()["data"]["orderEvents"]["state"] == "PENDING"


async def test_a_trusted_document_runs_as_its_text(trusted: GraphQLClient) -> None:
    response = await trusted.post(READ, {"o": ORDER})

    assert response.json()["data"]["orderEvents"]["state"] == "PENDING"


async def test_an_unknown_id_is_not_found_in_trusted_mode(trusted: GraphQLClient) -> None:
    response = await by_hash_post(trusted, INTROSPECTION)

    assert response.status_code == 200
    assert response.json() == NOT_FOUND


@pytest.mark.parametrize("document", [INTROSPECTION, READ + " "], ids=["introspection", "edited"])
async def test_text_not_in_the_manifest_is_refused(trusted: GraphQLClient, document: str) -> None:
    response = await trusted.post(document)

    assert response.status_code == 403
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "PERSISTED_QUERY_NOT_IN_LIST"
    assert "TRUSTED_DOCUMENTS" in error["message"]


async def test_trusted_mode_registers_nothing(trusted: GraphQLClient) -> None:
    document = "{ __typename }"

    registering = await with_query(trusted, document)
    again = await by_hash_post(trusted, document)

    assert registering.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_IN_LIST"
    assert again.json() == NOT_FOUND


@pytest.mark.parametrize("listed", [True, False])
async def test_requests_the_view_reads_are_held_to_the_list_too(
    trusted: GraphQLClient, listed: bool
) -> None:
    # Server-sent events are Strawberry's to negotiate: the compiled route steps aside.
    document = READ if listed else INTROSPECTION
    body = {"query": document, "variables": {"o": ORDER}}
    sse = {**headers(trusted), "accept": "text/event-stream"}

    response = await trusted.http.post("/graphql", json=body, headers=sse)

    if listed:
        assert response.status_code == 200 and "orderEvents" in response.text
    else:
        assert response.status_code == 403
        assert response.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_IN_LIST"


# Over WebSocket: a server process in trusted mode ---------------------------------------------

SUBSCRIPTION_ID = "watch-1"


@pytest.fixture(scope="module")
def trusted_server(
    server_env: dict[str, str], issuer: LocalIssuer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("trusted")
    manifest = directory / "persisted-documents.json"
    # FIRST_QUERY: the one serving() opens the server's database connection with.
    documents = {SUBSCRIPTION_ID: SUBSCRIBE, "first": FIRST_QUERY, "create": CREATE}
    manifest.write_text(json.dumps(documents))
    env = {**server_env, "TRUSTED_DOCUMENTS": str(manifest)}
    token = issuer.mint(account_id=ACCOUNT, scope="read:shopping")
    with serving(env, directory, token) as started:
        yield started


@pytest.fixture
async def trusted_api(
    trusted_server: Server, client: GraphQLClient, mint: Mint
) -> AsyncIterator[GraphQLClient]:
    """Writes through the trusted server (``client``: empty tables)."""
    async with http_api(trusted_server, mint()) as http:
        yield http


def start(ws: Any, op_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    kind = "subscribe" if ws.protocol == TRANSPORT_WS else "start"
    return {"id": op_id, "type": kind, "payload": payload}


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_subscription_runs_by_its_trusted_id(
    trusted_server: Server, trusted_api: GraphQLClient, mint: Mint, protocol: str
) -> None:
    seed = await created(trusted_api)
    extensions = {"persistedQuery": {"version": 1, "sha256Hash": SUBSCRIPTION_ID}}
    async with subscriber(trusted_server, mint(), protocol) as ws:
        payload = {"variables": watching(after=seed["cursor"]), "extensions": extensions}
        await ws.send(start(ws, "1", payload))
        written = await created(trusted_api, serviceStatus="accepted")
        results = await ws.events("1", 1)

    assert [event["id"] for event in received(results)] == [written["id"]]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_over_websocket_text_not_in_the_manifest_is_refused(
    trusted_server: Server, trusted_api: GraphQLClient, mint: Mint, protocol: str
) -> None:
    unlisted = SUBSCRIBE.replace("serviceStatus", "state")
    unknown = {"persistedQuery": {"version": 1, "sha256Hash": "nope"}}
    seed = await created(trusted_api)
    async with subscriber(trusted_server, mint(), protocol) as ws:
        await ws.send(start(ws, "1", {"query": unlisted, "variables": watching()}))
        refused = await ws.error("1")
        await ws.send(start(ws, "2", {"variables": watching(), "extensions": unknown}))
        missed = await ws.error("2")
        # The connection stays open, and a listed document still runs.
        listed = {"query": SUBSCRIBE, "variables": watching(after=seed["cursor"])}
        await ws.send(start(ws, "3", listed))
        await created(trusted_api)
        results = await ws.events("3", 1)

    assert refused["extensions"]["code"] == "PERSISTED_QUERY_NOT_IN_LIST"
    assert missed == NOT_FOUND["errors"][0]
    assert len(received(results)) == 1


# The store and the manifests, on their own ----------------------------------------------------


def test_the_least_recently_used_document_goes_first() -> None:
    a, b, c = "{ a }", "{ b }", "{ c }"
    store = PersistedQueries(capacity=len(a) + len(b))
    for document in (a, b):
        store.document(document, persisted(document))
    store.document(None, persisted(a))  # a is used again: b is now the oldest
    store.document(c, persisted(c))

    assert store.document(None, persisted(a)) == a
    assert store.document(None, persisted(c)) == c
    with pytest.raises(PersistedQueryNotFound):
        store.document(None, persisted(b))
    assert len(store) == 2


def test_a_document_larger_than_the_store_runs_but_is_not_kept() -> None:
    store = PersistedQueries(capacity=4)

    assert store.document("{ big }", persisted("{ big }")) == "{ big }"
    with pytest.raises(PersistedQueryNotFound):
        store.document(None, persisted("{ big }"))


def test_requests_without_a_persisted_query_pass_as_they_are() -> None:
    store = PersistedQueries(capacity=100)

    assert store.document("{ a }", None) == "{ a }"
    assert store.document("{ a }", {"other": 1}) == "{ a }"
    assert store.document(None, "not an object") is None


def test_no_room_means_not_supported() -> None:
    with pytest.raises(PersistedQueryNotSupported):
        PersistedQueries(capacity=0).document(None, persisted("{ a }"))


def test_the_hash_is_checked_before_anything_is_kept() -> None:
    store = PersistedQueries(capacity=100)

    with pytest.raises(BadPersistedQuery):
        store.document("{ a }", persisted("{ b }"))
    assert len(store) == 0


@pytest.mark.parametrize("manifest", MANIFESTS, ids=["codegen", "apollo"])
def test_both_manifest_formats_are_read(tmp_path: Path, manifest: Any) -> None:
    assert read_manifest(manifest(tmp_path)) == {LISTED_ID: READ, sha256(WRITE): WRITE}


def test_a_trusted_store_runs_only_its_documents(tmp_path: Path) -> None:
    store = PersistedQueries(capacity=100, trusted=read_manifest(codegen_manifest(tmp_path)))

    assert store.document(None, {"persistedQuery": {"version": 1, "sha256Hash": LISTED_ID}}) == READ
    assert store.document(READ, None) == READ
    with pytest.raises(DocumentNotInList):
        store.document("{ a }", None)
    with pytest.raises(PersistedQueryNotFound):
        store.document(None, persisted("{ a }"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read"),
        ('["a list"]', "neither"),
        ('{"id": 1}', "neither"),
        (
            '{"format": "apollo-persisted-query-manifest", "version": 2, "operations": []}',
            "version 1",
        ),
        (
            '{"format": "apollo-persisted-query-manifest", "version": 1,'
            ' "operations": [{"id": "x"}]}',
            "without a text id and body",
        ),
    ],
)
def test_a_manifest_that_cannot_be_read_stops_the_start(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(content)

    with pytest.raises(SettingsError, match=message) as raised:
        read_manifest(path)
    assert "TRUSTED_DOCUMENTS" in str(raised.value)


def test_a_missing_manifest_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="TRUSTED_DOCUMENTS: cannot read"):
        read_manifest(tmp_path / "nowhere.json")
