"""One frozen settings object, read from the environment once at start-up.

Every setting has a default that gives a working development server: SQLite under ./data/,
and the server acting as its own token issuer with a key pair it creates under ./data/.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.tracing import EXPORTERS

DEFAULT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")


class SettingsError(ValueError):
    """A setting in the environment has a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    # Storage.
    database_url: str = "sqlite://data/order-events.sqlite3"
    data_dir: Path = Path("data")
    # PostgreSQL: how long to wait for a new connection, and for one statement (or a free
    # pooled connection), before a request fails with "database unavailable" instead of
    # hanging; the pool's size (0 kept open: opening the pool then waits on nothing).
    db_connect_timeout_seconds: float = 5.0
    db_command_timeout_seconds: float = 10.0
    db_pool_min_size: int = 0
    db_pool_max_size: int = 5
    # How long /readyz waits for the database before it answers "not ready".
    readiness_timeout_seconds: float = 2.0

    # Where scripts/serve listens (python -m serving), and the address clients use: the base
    # of links' hrefs and of the development issuer and audience. Unset, PUBLIC_URL is
    # http://HOST:PORT (loopback for a wildcard HOST), so that the links of a server on
    # another port lead to it; behind a proxy or on another host, set it.
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = ""

    # Tokens. Without JWKS_URL or JWKS_FILE the server is its own development issuer.
    issuer: str = ""
    audience_base: str = ""
    jwks_url: str | None = None
    jwks_file: Path | None = None
    jwks_cache_seconds: int = 3600
    jwks_min_refresh_seconds: int = 30
    token_algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    token_leeway_seconds: int = 30
    # Get Token (app.oauth), while the server is its own issuer: the lifetime of the tokens
    # it issues; how often each process reloads revoked clients and the signing keys; and
    # client authentication attempts per client id and per address (0: no limit). A mounted
    # SIGNING_KEY_FILE shares the keys between hosts (default: DATA_DIR/signing-key.json).
    access_token_ttl_seconds: int = 3600
    client_refresh_seconds: float = 2.0
    token_attempts_per_second: float = 0.2
    token_attempt_burst: int = 10
    signing_key_file: Path | None = None

    # API.
    max_page_size: int = 200
    idempotency_key_ttl_seconds: int = 24 * 3600
    idempotency_purge_interval_seconds: int = 300
    # Request limits and abuse (README, "Limits and abuse"). A rate of 0 turns rate limits off.
    max_body_bytes: int = 256 * 1024
    max_query_tokens: int = 1000
    max_anonymous_query_tokens: int = 300
    max_query_depth: int = 10
    max_query_aliases: int = 15
    max_query_cost: int = 10_000
    max_query_selections: int = 1000
    max_query_repeats: int = 30
    rate_limit_per_second: float = 50.0
    rate_limit_burst: int = 100
    # Where the callers' buckets live (app.ratelimit): "memory", each process its own;
    # "postgres", the database's, shared by every process; or a redis:// URL, shared too. A
    # shared store not answering within the timeout is passed over for the process's own.
    rate_limit_store: str = "memory"
    rate_limit_store_timeout_seconds: float = 0.5
    rate_limit_key_prefix: str = "order-events:rate:"
    # Live subscriptions over WebSocket.
    allowed_origins: tuple[str, ...] = ()
    ws_init_timeout_seconds: float = 10.0
    ws_ping_interval_seconds: float = 20.0
    max_subscriptions_per_connection: int = 50
    subscription_buffer: int = 256
    shutdown_grace_seconds: float = 5.0

    # Connections (serving/http.py, python -m serving): limits uvicorn does not set itself,
    # and its idle keep-alive. 0 connections means no limit.
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 10.0
    keep_alive_timeout_seconds: int = 5
    max_header_bytes: int = 32 * 1024
    max_header_count: int = 100
    max_connections: int = 10_000

    # Persisted queries (app.api.persisted): the documents registered by hash, at most this
    # many bytes of them per process (0: automatic persisted queries off); or a manifest of
    # trusted documents, the only ones that then run.
    persisted_query_cache_bytes: int = 4 * 1024 * 1024
    trusted_documents: Path | None = None

    # GET /metrics (app.metrics): served, and requests counted, while on; with a token set,
    # only to requests bearing it (not in the settings' repr: it is a secret).
    metrics: bool = True
    metrics_token: str = dataclasses.field(default="", repr=False)

    # Webhooks (app.hooks): whether this process delivers (the outbox is written either
    # way); a receiver's time to answer; retries' first delay (doubling, with jitter) and how
    # many attempts a delivery gets; requests in flight per hook; how often due deliveries
    # are looked for besides the writer's signal; and the destinations allowed (SSRF).
    webhook_delivery: bool = True
    webhook_timeout_seconds: float = 10.0
    webhook_retry_base_seconds: float = 10.0
    webhook_max_attempts: int = 12
    webhook_concurrency_per_hook: int = 4
    webhook_poll_interval_seconds: float = 1.0
    # While the process's requests queue up, the share of its CPU time that its
    # deliveries still take (app.hooks.budget; 1: requests get no priority).
    webhook_delivery_share: float = 0.05
    webhook_allow_http: bool = False
    webhook_allow_private_networks: bool = False
    # Deliveries received, and the log's attempts, are deleted once this old.
    webhook_retention_days: float = 30.0

    graphiql: bool = True
    graphiql_assets_dir: Path = Path(".venv/graphiql/node_modules")

    # Tracing (app.tracing): OpenTelemetry's own variable, off ("none") unless it names an
    # exporter; everything else about traces is OpenTelemetry's OTEL_* variables.
    otel_traces_exporter: str = "none"

    def __post_init__(self) -> None:
        if not self.public_url:
            object.__setattr__(self, "public_url", served_url(self.host, self.port))
        base = self.public_url.rstrip("/")
        if not self.issuer:
            object.__setattr__(self, "issuer", base)
        if not self.audience_base:
            object.__setattr__(self, "audience_base", f"{base}/v1/accounts")
        object.__setattr__(self, "audience_base", self.audience_base.rstrip("/"))
        for problem in self._problems():
            raise SettingsError(problem)

    def _problems(self) -> Iterator[str]:
        if self.jwks_url and self.jwks_file:
            yield "set JWKS_URL or JWKS_FILE, not both"
        for name in _POSITIVE:
            if not getattr(self, name) > 0:
                yield f"{name.upper()} must be more than 0"
        for name, (minimum, note) in _MINIMUMS.items():
            if not getattr(self, name) >= minimum:  # (not NaN either)
                yield f"{name.upper()} must be at least {minimum}{note}"
        for name, maximum in _MAXIMUMS.items():
            if not getattr(self, name) <= maximum:
                yield f"{name.upper()} must be at most {maximum}"
        if not 0 <= self.db_pool_min_size <= self.db_pool_max_size or self.db_pool_max_size < 1:
            yield "DB_POOL_MAX_SIZE must be at least 1, and DB_POOL_MIN_SIZE between 0 and it"
        yield from self._rate_limit_store_problems()
        yield from self._tracing_problems()
        if not self.token_algorithms:
            yield "TOKEN_ALGORITHMS must name at least one algorithm"
        weak = [a for a in self.token_algorithms if a == "none" or a.startswith("HS")]
        if weak:
            yield f"TOKEN_ALGORITHMS may only name asymmetric algorithms, not {', '.join(weak)}"

    def _rate_limit_store_problems(self) -> Iterator[str]:
        # Imported here: app.db reads these settings, and redis is needed only to check a URL.
        from redis.asyncio import ConnectionPool

        from app.db import is_postgres

        store = self.rate_limit_store
        if store == "memory":
            return
        if store == "postgres":
            if not is_postgres(self.database_url):
                yield "RATE_LIMIT_STORE=postgres needs DATABASE_URL to name a PostgreSQL database"
            return
        if store.startswith(("redis://", "rediss://")):
            try:
                ConnectionPool.from_url(store)
            except ValueError as error:
                yield f"RATE_LIMIT_STORE is no usable Redis URL: {error}"
            return
        # A URL is not repeated: it may hold a password.
        named = "" if "://" in store else f", not {store!r}"
        yield f"RATE_LIMIT_STORE must be memory, postgres or a redis:// URL{named}"

    def _tracing_problems(self) -> Iterator[str]:
        if self.otel_traces_exporter not in EXPORTERS:
            choices = ", ".join(EXPORTERS)
            given = self.otel_traces_exporter
            yield f"OTEL_TRACES_EXPORTER must be one of {choices}, not {given!r}"

    @property
    def local_issuer(self) -> bool:
        """True when this server signs its own development tokens."""
        return self.jwks_url is None and self.jwks_file is None

    @property
    def signing_key_path(self) -> Path:
        return self.signing_key_file or self.data_dir / "signing-key.json"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings the environment gives: each field from the variable of its name in
        capitals (``env_name``), read as its type says; an unset or blank one keeps its
        default. Lists are separated by spaces or commas."""
        env = os.environ if env is None else env
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = env_name(field.name)
            raw = env.get(name, "").strip()
            if raw:
                values[field.name] = _read(hints[field.name], name, raw)
        return cls(**values)


# Hosts that mean "every interface": a client reaches such a server on loopback.
_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104


def served_url(host: str, port: int) -> str:
    """The URL of a server listening on ``host``:``port``, as a client on the same machine
    writes it."""
    host = _WILDCARD_HOSTS.get(host, host)
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"http://{host}:{port}"


# Fields whose variable is not their name in capitals: the token's issuer and audience.
_ENV_NAMES = {"issuer": "TOKEN_ISSUER", "audience_base": "TOKEN_AUDIENCE_BASE"}


def env_name(field: str) -> str:
    """The environment variable of a setting."""
    return _ENV_NAMES.get(field, field.upper())


def _read(hint: Any, name: str, raw: str) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if hint is bool:
        if raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.lower() in {"0", "false", "no", "off"}:
            return False
        raise SettingsError(f"{name} must be true or false, not {raw!r}")
    if hint is int:
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a whole number, not {raw!r}") from None
    if hint is float:
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, not {raw!r}") from None
    if hint == tuple[str, ...]:
        return tuple(raw.replace(",", " ").split())
    if hint is Path:
        return Path(raw)
    if hint is str:
        return raw
    raise TypeError(f"a setting of type {hint} cannot be read from the environment")


# Settings that must be more than 0.
_POSITIVE = (
    "db_connect_timeout_seconds",
    "db_command_timeout_seconds",
    "readiness_timeout_seconds",
    "header_timeout_seconds",
    "body_timeout_seconds",
    "rate_limit_store_timeout_seconds",
    "client_refresh_seconds",
    "webhook_timeout_seconds",
    "webhook_retry_base_seconds",
    "webhook_poll_interval_seconds",
    "webhook_retention_days",
    "webhook_delivery_share",
)
# Settings with a least value, and what the message adds to it.
_MINIMUMS = {
    "port": (1, ""),
    "idempotency_key_ttl_seconds": (3600, " (one hour)"),
    "idempotency_purge_interval_seconds": (1, ""),
    "subscription_buffer": (1, ""),
    "max_subscriptions_per_connection": (1, ""),
    "max_page_size": (1, ""),
    "max_body_bytes": (1, ""),
    "max_query_tokens": (1, ""),
    "max_anonymous_query_tokens": (1, ""),
    "max_query_depth": (1, ""),
    "max_query_aliases": (1, ""),
    "max_query_cost": (1, ""),
    "max_query_selections": (1, ""),
    "max_query_repeats": (0, ""),
    "rate_limit_burst": (1, ""),
    "access_token_ttl_seconds": (60, " (one minute)"),
    "token_attempt_burst": (1, ""),
    "keep_alive_timeout_seconds": (1, ""),
    "max_header_bytes": (1024, ""),
    "max_header_count": (10, ""),
    "max_connections": (0, " (0: no limit)"),
    "rate_limit_per_second": (0, " (0: no limit)"),
    "token_attempts_per_second": (0, " (0: no limit)"),
    "persisted_query_cache_bytes": (0, " (0: automatic persisted queries off)"),
    "webhook_max_attempts": (1, ""),
    "webhook_concurrency_per_hook": (1, ""),
}
# Settings with a greatest value.
_MAXIMUMS = {"port": 65535, "webhook_delivery_share": 1}
