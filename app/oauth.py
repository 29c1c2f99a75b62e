"""Get Token: ``POST /v1/accounts/{aid}/auth/token``, OAuth 2 client credentials (RFC 6749
section 4.4), as Dintero's API has it.

The client authenticates with HTTP Basic (``client_secret_basic``, what Dintero's Python SDK
sends, with a JSON body ``{"grant_type": "client_credentials", "audience": …}``) or with its
id and secret in the body (``client_secret_post``: Dintero's Node SDK sends JSON
``{"client_id", "client_secret"}`` without a grant type, which then means client
credentials; RFC 6749's form encoding is read too). The answer is RFC 6749's: 200
``{"access_token", "token_type": "Bearer", "expires_in", "scope"}`` or an error of section 5.2,
both ``Cache-Control: no-store``. The token is an RFC 9068 JWT for the path's account, signed
by this server's key (``app.auth.LocalIssuer``) and checked by ``app.auth.TokenValidator`` like
any other.

The OAuth work is Authlib's: ``AuthorizationServer`` with its ``ClientCredentialsGrant``
(grant type, client authentication by both methods, the section 5.2 errors and their
``WWW-Authenticate: Basic``) and ``JWTBearerTokenGenerator`` (RFC 9068 claims, ``typ:
at+jwt``). Authlib's server is synchronous and its client lookup too, so this module reads
the client from the database first (asynchronously), then runs Authlib in a worker thread,
where the slow secret check (``app.clients.verify_secret``) does not hold up the event loop.

Before Authlib runs: the caller's request budget (the limiter ``/graphql`` uses), then
client authentication attempts per client id and per address (``TOKEN_ATTEMPTS_PER_SECOND``,
``TOKEN_ATTEMPT_BURST``): over either, 429 with ``Retry-After``. An attempt whose client
authenticated gives its turns back, so that only failures spend those two budgets.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, OAuth2Request
from authlib.oauth2.rfc6749.errors import InvalidScopeError
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from cross_web import HTTPException
from joserfc.jwk import KeySet
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from app import clients
from app.api import access, frontdoor
from app.api.body import InvalidJSON, decode_json
from app.api.frontdoor import Reply
from app.auth import ACCOUNT_ID_PATTERN, LOCAL_ALGORITHM, LocalIssuer, Principal, audience_of
from app.clients import Client, Revocations
from app.encoding import encode_json
from app.errors import RateLimited
from app.ratelimit import Limiter, caller_key, create_limiter
from app.settings import Settings

logger = logging.getLogger(__name__)

PATH = "/v1/accounts/{aid}/auth/token"
GRANT_TYPE: str = ClientCredentialsGrant.GRANT_TYPE
AUTH_METHODS = ("client_secret_basic", "client_secret_post")
# The members of a request this endpoint reads; RFC 6749 section 3.2 has the others ignored.
PARAMETERS = ("grant_type", "scope", "audience", "client_id", "client_secret")
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
# What every answer carries (RFC 6749 sections 5.1 and 5.2).
NO_STORE = (("cache-control", "no-store"), ("pragma", "no-cache"))


class OAuthError(Exception):
    """A refusal decided here rather than by Authlib, in RFC 6749's shape."""

    def __init__(
        self,
        error: str,
        description: str,
        status: int = 400,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.headers = list(headers)


# The client read from the database for the request Authlib is working on (None: no such
# client of this account). A context variable: each request's worker thread sees its own.
_found: contextvars.ContextVar[Client | None] = contextvars.ContextVar("found_client")


@dataclasses.dataclass(frozen=True)
class _AuthlibClient(ClientMixin):  # type: ignore[misc]  # Authlib ships no types
    """A client as Authlib's grant asks about it. ``client`` None stands for an id that is
    no client of this account (unknown, revoked or another account's): its secret check
    costs what a real one does, and fails."""

    client_id: str
    client: Client | None

    def get_client_id(self) -> str:
        return self.client_id

    def check_client_secret(self, client_secret: str) -> bool:
        return clients.verify_secret(self.client, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method in AUTH_METHODS

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == GRANT_TYPE

    def get_allowed_scope(self, scope: str | None) -> str:
        # _Grant.validate_requested_scope has checked a requested scope against the client's.
        assert self.client is not None
        return self.client.scope if scope is None else " ".join(dict.fromkeys(scope.split()))


class _Grant(ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = list(AUTH_METHODS)

    def validate_requested_scope(self) -> None:
        """A requested scope narrows the client's: each of its scopes must be one of the
        client's (Authlib's server checks against one list for every client)."""
        requested = self.request.payload.scope
        if requested is None:
            return
        scopes = requested.split()
        if not scopes:
            raise InvalidScopeError("scope is empty; leave it out for all the client's scopes")
        granted = set(self.request.client.client.scope.split())
        beyond = [scope for scope in scopes if scope not in granted]
        if beyond:
            raise InvalidScopeError(f"the client has no scope {' '.join(beyond)}")


class _TokenGenerator(JWTBearerTokenGenerator):  # type: ignore[misc]
    """RFC 9068 tokens for the client's account, signed with the issuer's current key (the
    key set of one key makes joserfc name it in the header's ``kid``)."""

    def __init__(self, settings: Settings, issuer: LocalIssuer) -> None:
        super().__init__(
            issuer=settings.issuer,
            alg=LOCAL_ALGORITHM,
            expires_generator=settings.access_token_ttl_seconds,
        )
        self._settings = settings
        self._issuer = issuer

    def get_jwks(self) -> KeySet:
        return KeySet([self._issuer.signing_key])

    def get_audiences(self, client: _AuthlibClient, user: object, scope: str) -> str:
        assert client.client is not None
        return audience_of(self._settings, client.client.account_id)


class _Request(OAuth2Request):  # type: ignore[misc]
    """Authlib's request, its parameters read here already (JSON or form alike)."""

    def __init__(self, uri: str, headers: Mapping[str, str], data: dict[str, str]) -> None:
        super().__init__("POST", uri, headers=headers)
        self.payload = BasicOAuth2Payload(data)

    @property
    def form(self) -> dict[str, str]:
        # What client_secret_post reads the credentials from.
        data: dict[str, str] = self.payload.data
        return data


class _Server(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, settings: Settings, issuer: LocalIssuer) -> None:
        super().__init__()
        self.register_grant(_Grant)
        self.register_token_generator("default", _TokenGenerator(settings, issuer))

    def query_client(self, client_id: str) -> _AuthlibClient:
        found = _found.get(None)
        if found is not None and found.client_id != client_id:
            found = None
        return _AuthlibClient(client_id, found)

    def create_oauth2_request(self, request: _Request) -> _Request:
        return request

    def handle_response(
        self, status: int, body: dict[str, Any], headers: list[tuple[str, str]]
    ) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        return status, body, headers

    def save_token(self, token: dict[str, Any], request: _Request) -> None:
        """Nothing to save: a JWT carries what it grants."""

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """No signals here."""


class TokenEndpoint:
    """The ASGI application of ``PATH``."""

    def __init__(
        self, settings: Settings, issuer: LocalIssuer, rate_limiter: Limiter | None
    ) -> None:
        self.settings = settings
        self.rate_limiter = rate_limiter
        # The limiter's buckets and store, with this endpoint's rate and its own key prefix
        # (the keys below cannot be a caller's: those are an account id or start with @).
        self.attempts = (
            create_limiter(
                dataclasses.replace(
                    settings,
                    rate_limit_per_second=settings.token_attempts_per_second,
                    rate_limit_burst=settings.token_attempt_burst,
                    rate_limit_key_prefix=f"{settings.rate_limit_key_prefix}token-attempts:",
                )
            )
            if settings.token_attempts_per_second > 0
            else None
        )
        self._server = _Server(settings, issuer)

    async def close(self) -> None:
        if self.attempts is not None:
            await self.attempts.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await frontdoor.serve(
            scope, receive, send, self._answer, _internal_error, self.settings.max_body_bytes
        )

    async def _answer(self, request: Request, exchange: access.Exchange) -> Reply:
        try:
            return await self._token(request, exchange)
        except OAuthError as error:
            exchange.error_codes = [error.error]
            body = {"error": error.error, "error_description": error.description}
            return _reply(error.status, body, error.headers)

    async def _token(self, request: Request, exchange: access.Exchange) -> Reply:
        if request.method != "POST":
            raise OAuthError(
                "invalid_request", "the token endpoint takes POST", 405, [("allow", "POST")]
            )
        address = request.client.host if request.client else None
        await _take(self.rate_limiter, caller_key(None, address))
        account_id = request.path_params["aid"]
        if not ACCOUNT_ID_PATTERN.match(account_id):
            raise OAuthError("invalid_request", "the account id must look like T12345678")
        data = await _parameters(request)
        headers = {"Authorization": request.headers.get("authorization", "")}
        client_id = _claimed_client_id(headers, data)
        if client_id is not None:
            # Before the secret is checked: each attempt counts, against the client id and
            # against the address, so that neither many guesses at one client nor guesses
            # at many clients from one place get far.
            await _take(self.attempts, f"!client {client_id}")
            await _take(self.attempts, f"!address {address or ''}")
        self._check_audience(data, account_id)
        data.setdefault("grant_type", GRANT_TYPE)
        found = await clients.find_client(client_id, account_id) if client_id else None
        status, body, answer_headers = await asyncio.to_thread(
            _in_context(found, self._server.create_token_response),
            _Request(self._uri(request), headers, data),
        )
        if client_id is not None and body.get("error") != "invalid_client":
            # The client authenticated: only failed authentications spend the budget.
            await _give_back(self.attempts, f"!client {client_id}")
            await _give_back(self.attempts, f"!address {address or ''}")
        if status == 200 and found is not None:
            exchange.principal = Principal(
                subject=found.client_id,
                account_id=account_id,
                scopes=frozenset(body["scope"].split()),
                expires_at=time.time() + body["expires_in"],
            )
        elif "error" in body:
            exchange.error_codes = [body["error"]]
        kept = [
            (name, value) for name, value in answer_headers if name.lower() == "www-authenticate"
        ]
        return _reply(status, body, kept)

    def _check_audience(self, data: dict[str, str], account_id: str) -> None:
        audience = data.get("audience")
        expected = audience_of(self.settings, account_id)
        if audience is not None and audience != expected:
            raise OAuthError("invalid_request", f"audience must be {expected}")

    def _uri(self, request: Request) -> str:
        # The address clients use: Authlib refuses a plain-HTTP one that is not loopback
        # (insecure_transport), which is what a PUBLIC_URL of https:// behind a proxy avoids.
        return self.settings.public_url.rstrip("/") + request.url.path


def _in_context(found: Client | None, call: Any) -> Any:
    """``call`` with ``_found`` set for it: the worker thread runs in a copy of this context."""

    def run(*args: Any) -> Any:
        _found.set(found)
        return call(*args)

    return run


async def _take(limiter: Limiter | None, key: str) -> None:
    try:
        await frontdoor.take_turn(limiter, key)
    except RateLimited as error:
        # RFC 6749 has no code for this; RFC 8628's slow_down says it.
        retry = frontdoor.retry_after(error)
        raise OAuthError("slow_down", error.message, 429, [("retry-after", retry)]) from None


async def _give_back(limiter: Limiter | None, key: str) -> None:
    if limiter is not None:
        waiting = limiter.give_back(key)
        if waiting is not None:
            await waiting


async def _parameters(request: Request) -> dict[str, str]:
    """The request's parameters, from a JSON object or a form; each a string, given once."""
    try:
        body = await request.body()
    except HTTPException as error:  # over MAX_BODY_BYTES
        raise OAuthError("invalid_request", error.reason, error.status_code) from None
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == JSON:
        try:
            data = decode_json(body)
        except InvalidJSON as error:
            reason = f"the body is not valid JSON: {error.reason}"
            raise OAuthError("invalid_request", reason) from None
        if not isinstance(data, dict):
            raise OAuthError("invalid_request", "the body must be a JSON object")
        pairs = list(data.items())
    elif media_type == FORM:
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise OAuthError("invalid_request", "the form is not UTF-8") from None
    elif not body:
        pairs = []  # everything in the Authorization header
    else:
        raise OAuthError("invalid_request", f"the body must be {JSON} or {FORM}", 415)
    parameters: dict[str, str] = {}
    for name, value in pairs:
        if name not in PARAMETERS:
            continue
        if name in parameters:
            raise OAuthError("invalid_request", f"{name} is given more than once")
        if not isinstance(value, str):
            raise OAuthError("invalid_request", f"{name} must be a string")
        parameters[name] = value
    return parameters


def _claimed_client_id(headers: Mapping[str, str], data: dict[str, str]) -> str | None:
    basic_id, _ = extract_basic_authorization(headers)
    body_id = data.get("client_id")
    if basic_id and ("client_secret" in data or body_id not in (None, basic_id)):
        # RFC 6749 section 2.3: one authentication method per request.
        raise OAuthError(
            "invalid_request", "client credentials are given both in the header and the body"
        )
    return basic_id or body_id or None


def _reply(status: int, body: dict[str, Any], headers: Iterable[tuple[str, str]] = ()) -> Reply:
    return Reply(status, encode_json(body), JSON, [*NO_STORE, *headers])


def _internal_error(request_id: str) -> Reply:
    description = f"Internal server error (request id {request_id})"
    return _reply(500, {"error": "server_error", "error_description": description})


async def keep_fresh(revocations: Revocations, issuer: LocalIssuer, interval: float) -> None:
    """Every ``interval`` seconds, reads revoked clients again and looks at the signing key
    files: a revocation or a key rotation reaches this process within about that time. A
    failure (the database down) keeps what was known, and is tried again next time."""
    while True:
        await asyncio.sleep(interval)
        await refresh_revocations(revocations)
        issuer.reload()


async def refresh_revocations(revocations: Revocations) -> None:
    """Reads revoked clients again; a failure keeps those known (and is logged)."""
    try:
        await revocations.refresh()
    except Exception as error:  # whatever the database raises: next time
        logger.warning("revoked clients not reloaded: %s", error)
