"""Persisted queries: which document a request runs, when it names one by its hash.

Two modes, as the settings choose:

- **Automatic persisted queries** (Apollo's ``extensions.persistedQuery``, also urql's): a
  request may carry ``{"version": 1, "sha256Hash": ...}`` instead of its document. A hash this
  process has not seen is answered ``PersistedQueryNotFound``; the client then sends the
  document with the hash, which must be the document's SHA-256, and the document is kept,
  least recently used first out, within ``PERSISTED_QUERY_CACHE_BYTES``. Each process keeps
  its own: a miss costs the client one more request, never an error.
- **Trusted documents** (``TRUSTED_DOCUMENTS``, a manifest file): only the manifest's
  documents run, named by their id or sent as their exact text; nothing is registered.

``PersistedQueries.document`` is the one place a request's parameters become its document:
the front door's compiled route, Strawberry's view and both WebSocket protocols ask it. Its
refusals, each answered before any GraphQL runs::

    PersistedQueryRefusal          ``status`` and ``headers`` of its HTTP answer
     ├── PersistedQueryNotFound    no document for the hash (200, as the clients expect)
     ├── PersistedQueryNotSupported  automatic persisted queries are off (200)
     ├── DocumentNotInList         trusted documents only, and this text is none (403)
     └── BadPersistedQuery         a malformed extension, or a hash not of its query (400)
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.errors import ServiceError
from app.settings import Settings, SettingsError, env_name

# Apollo's persisted query manifest (``generate-persisted-query-manifest``).
APOLLO_MANIFEST = "apollo-persisted-query-manifest"
# Where the hash is, as the refusals name it.
HASH_FIELD = "extensions.persistedQuery.sha256Hash"
# A miss must reach the client as it is: a cache between them that kept it would answer the
# next request by hash with it, after the document was registered.
_UNCACHED = (("cache-control", "no-store"),)


class PersistedQueryRefusal(ServiceError):
    """A request refused for its persisted query, with how its HTTP answer looks."""

    status = 400
    headers: tuple[tuple[str, str], ...] = ()


class PersistedQueryNotFound(PersistedQueryRefusal):
    # The message and code are what Apollo Client's link and urql's exchange look for (urql
    # reads the message only). 200, as Apollo Server answers it: older Apollo links turn
    # persisted queries off for good on a 400.
    code = "PERSISTED_QUERY_NOT_FOUND"
    status = 200
    headers = _UNCACHED

    def __init__(self) -> None:
        super().__init__("PersistedQueryNotFound")


class PersistedQueryNotSupported(PersistedQueryRefusal):
    # The clients stop sending hashes on this one, and send the document again.
    code = "PERSISTED_QUERY_NOT_SUPPORTED"
    status = 200
    headers = _UNCACHED

    def __init__(self) -> None:
        super().__init__("PersistedQueryNotSupported")


class DocumentNotInList(PersistedQueryRefusal):
    # Apollo Router's code for the same refusal. Not FORBIDDEN: that one says the token lacks
    # a scope, and a client may answer it by fetching another token, in vain.
    code = "PERSISTED_QUERY_NOT_IN_LIST"
    status = 403

    def __init__(self) -> None:
        super().__init__(
            "this server runs only its trusted documents (TRUSTED_DOCUMENTS), and this "
            "document is none of them: send one of the manifest's, or its id as "
            f"{HASH_FIELD}"
        )


class BadPersistedQuery(PersistedQueryRefusal):
    code = "BAD_USER_INPUT"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

    @property
    def extensions(self) -> dict[str, Any]:
        return {"errors": [{"field": self.field, "message": self.message}]}


class PersistedQueries:
    """The documents requests may name by hash: those registered here (automatic persisted
    queries, at most ``capacity`` bytes of documents as UTF-8, 0 for none), or a manifest's
    (``trusted``, id to document), when only those may run."""

    def __init__(self, capacity: int, trusted: Mapping[str, str] | None = None) -> None:
        self.capacity = capacity
        self.trusted = dict(trusted) if trusted is not None else None
        self._trusted_texts = frozenset(self.trusted.values()) if self.trusted else frozenset()
        self._kept: OrderedDict[str, str] = OrderedDict()
        self._sizes: dict[str, int] = {}  # each kept document's UTF-8 bytes
        self._size = 0

    @classmethod
    def from_settings(cls, settings: Settings | None) -> PersistedQueries:
        settings = settings or Settings()
        path = settings.trusted_documents
        trusted = read_manifest(path) if path is not None else None
        return cls(settings.persisted_query_cache_bytes, trusted)

    def document(self, query: object, extensions: object) -> object:
        """The document a request with ``query`` and ``extensions`` runs: ``query`` itself,
        or the document its persisted query names. Raises a ``PersistedQueryRefusal``.
        What is no request's (a query that is no text, extensions that are no object) is
        passed on for the view to refuse as it always does."""
        persisted = extensions.get("persistedQuery") if isinstance(extensions, dict) else None
        if persisted is None:
            if self.trusted is not None and query is not None and query not in self._trusted_texts:
                raise DocumentNotInList
            return query
        hash_ = _hash_of(persisted)
        if self.trusted is not None:
            if query is None:
                found = self.trusted.get(hash_)
                if found is None:
                    raise PersistedQueryNotFound
                return found
            if query not in self._trusted_texts:
                raise DocumentNotInList
            return query
        if self.capacity == 0:
            raise PersistedQueryNotSupported
        if query is None:
            kept = self._kept.get(hash_)
            if kept is None:
                raise PersistedQueryNotFound
            self._kept.move_to_end(hash_)
            return kept
        if isinstance(query, str):
            self._register(hash_, query)
        return query

    def _register(self, hash_: str, query: str) -> None:
        text = query.encode()
        if hashlib.sha256(text).hexdigest() != hash_.lower():
            raise BadPersistedQuery(
                HASH_FIELD,
                f"{HASH_FIELD} is not the SHA-256 of the query (hex digits of the UTF-8 "
                "text exactly as sent): the query was not run",
            )
        if hash_ in self._kept:
            self._kept.move_to_end(hash_)
            return
        if len(text) > self.capacity:
            return  # runs, but is never kept: it would push out every other document
        self._kept[hash_] = query
        self._sizes[hash_] = len(text)
        self._size += len(text)
        while self._size > self.capacity:
            dropped, _ = self._kept.popitem(last=False)
            self._size -= self._sizes.pop(dropped)

    def __len__(self) -> int:
        """How many documents are kept now (automatic persisted queries)."""
        return len(self._kept)


def _hash_of(persisted: object) -> str:
    if not isinstance(persisted, dict):
        raise BadPersistedQuery(
            "extensions.persistedQuery",
            'extensions.persistedQuery must be an object: {"version": 1, "sha256Hash": ...}',
        )
    if persisted.get("version") != 1:
        raise BadPersistedQuery(
            "extensions.persistedQuery.version",
            "extensions.persistedQuery.version must be 1, the only version there is",
        )
    hash_ = persisted.get("sha256Hash")
    if not isinstance(hash_, str) or not hash_:
        raise BadPersistedQuery(HASH_FIELD, f"{HASH_FIELD} must be the document's hash, as text")
    return hash_


def read_manifest(path: Path) -> dict[str, str]:
    """A manifest's documents by id: GraphQL Code Generator's ``persisted-documents.json``
    (``{id: document}``) or Apollo's persisted query manifest. Raises ``SettingsError``."""
    setting = env_name("trusted_documents")
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SettingsError(f"{setting}: cannot read {path} as JSON ({error})") from None
    if isinstance(data, dict) and data.get("format") == APOLLO_MANIFEST:
        operations = data.get("operations")
        if data.get("version") != 1 or not isinstance(operations, list):
            raise SettingsError(
                f"{setting}: {path} is no version 1 {APOLLO_MANIFEST} with a list of operations"
            )
        documents = {}
        for operation in operations:
            if not (
                isinstance(operation, dict)
                and isinstance(operation.get("id"), str)
                and isinstance(operation.get("body"), str)
            ):
                raise SettingsError(
                    f"{setting}: {path} has an operation without a text id and body: "
                    f"{json.dumps(operation)[:200]}"
                )
            documents[operation["id"]] = operation["body"]
        return documents
    if isinstance(data, dict) and all(
        isinstance(key, str) and isinstance(value, str) for key, value in data.items()
    ):
        return data
    raise SettingsError(
        f"{setting}: {path} is neither GraphQL Code Generator's persisted documents "
        f"({{id: document}}) nor an {APOLLO_MANIFEST}"
    )
