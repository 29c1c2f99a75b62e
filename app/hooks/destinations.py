"""Where a hook may deliver, and the HTTP client that delivers only there (SSRF).

A hook's URL is the merchant's to choose, and this server POSTs to it: without a rule, a
hook could make the server reach its own loopback, the cloud's metadata address or the
private network behind it. So a destination must be ``https`` (``http`` only with
``WEBHOOK_ALLOW_HTTP``), and every address its host resolves to must be public: not
loopback, private, link-local, multicast, reserved or otherwise not globally reachable
(``WEBHOOK_ALLOW_PRIVATE_NETWORKS`` lifts this, for development and tests).

The rule is checked when a hook is created or changed (``url_problems``: a 400 naming the
field), and again on every connection the client makes, after DNS resolution: a name that
resolved to a public address at creation may resolve to 127.0.0.1 later (DNS rebinding). The
client (``client``) is httpx over its documented seams: a transport (``httpx.AsyncBaseTransport``)
that runs httpcore's connection pool with a network backend of our own
(``httpcore.AsyncNetworkBackend``), whose ``connect_tcp`` resolves the host, checks every
address and then connects to a checked address itself. TLS is then started by httpcore on
that socket with the URL's host name, so SNI and certificate verification are the host's, as
is the ``Host`` header: nothing is resolved twice, so nothing can change between the check
and the connection. Redirects are not followed, and no proxy from the environment is used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any, Final
from urllib.parse import urlsplit

import httpcore
import httpx

MAX_URL_LENGTH: Final = 2048

# What makes an address unfit, in the order the refusal names the first that applies.
_NOT_PUBLIC: Final = (
    ("is_loopback", "a loopback"),
    ("is_link_local", "a link-local"),
    ("is_multicast", "a multicast"),
    ("is_unspecified", "an unspecified"),
    ("is_reserved", "a reserved"),
    ("is_private", "a private"),
)


class DestinationRefused(httpcore.ConnectError):
    """A connection refused before it was made: the host resolves to an address a hook may
    not reach. Raised inside httpcore's connect, so httpx reports it as a ``ConnectError``."""


def address_problem(address: str) -> str | None:
    """What kind of address ``address`` (an IP address as text) is, if a hook may not
    connect to it ("a loopback address"); None for a public one."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for attribute, kind in _NOT_PUBLIC:
        if getattr(ip, attribute):
            return f"{kind} address"
    if not ip.is_global:
        return "not a public address"
    return None


def _literal(host: str) -> str | None:
    """``host`` as an IP address written the usual way, if it is one."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


async def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (itself, if it is an address)."""
    literal = _literal(host)
    if literal is not None:
        return [literal]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def checked_addresses(host: str, port: int, allow_private: bool) -> list[str]:
    """The addresses of ``host``, every one of them checked; ``DestinationRefused`` when it
    does not resolve or any of its addresses may not be reached."""
    try:
        addresses = await resolve(host, port)
    except OSError as error:
        raise DestinationRefused(f"{host} does not resolve ({error})") from None
    if not addresses:
        raise DestinationRefused(f"{host} does not resolve")
    if not allow_private:
        for address in addresses:
            problem = address_problem(address)
            if problem is None:
                continue
            if address == _literal(host):
                shown = f"{address} is {problem}"
            else:
                shown = f"{host} resolves to {address}, {problem}"
            raise DestinationRefused(f"{shown}; hooks may only reach public addresses")
    return addresses


def url_syntax_problem(url: str, allow_http: bool) -> str | None:
    """What is wrong with ``url`` as a hook's destination, before any lookup."""
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    if not url.isascii() or not url.isprintable() or " " in url:
        return "must be an absolute URL of printable ASCII characters (IDNA-encode a host)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return f"is not a valid URL ({error})"
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        return (
            "must be an http or https URL"
            if allow_http
            else "must be an https URL (plain http is not allowed on this server)"
        )
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials: the secret signs each delivery"
    if parts.fragment:
        return "must not have a fragment"
    if port == 0:
        return "must not name port 0"
    return None


async def url_problem(url: str, *, allow_http: bool, allow_private: bool) -> str | None:
    """What is wrong with ``url`` as a hook's destination, its host's addresses included."""
    problem = url_syntax_problem(url, allow_http)
    if problem is not None:
        return problem
    if allow_private:
        return None  # nothing to check the host's addresses for
    parts = urlsplit(url)
    assert parts.hostname is not None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        await checked_addresses(parts.hostname, port, allow_private)
    except DestinationRefused as error:
        return f"is not allowed: {error}"
    return None


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses ``checked_addresses`` let
    through, and to the very address it checked."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._allow_private = allow_private

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await checked_addresses(host, port, self._allow_private)
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as failed:
                error = failed
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise DestinationRefused("hooks do not connect to Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _Stream(httpx.AsyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._stream:
            yield part

    async def aclose(self) -> None:
        await self._stream.aclose()


# httpcore's errors as httpx's: httpx's own transport maps them the same way.
_ERRORS: Final[tuple[tuple[type[Exception], type[httpx.TransportError]], ...]] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.NetworkError, httpx.NetworkError),
)


class CheckedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over httpcore's pool with ``_CheckedBackend``."""

    def __init__(self, *, allow_private: bool, max_connections: int) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl.create_default_context(),
            max_connections=max_connections,
            network_backend=_CheckedBackend(allow_private),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        sent = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            answer = await self._pool.handle_async_request(sent)
        except Exception as error:
            for theirs, ours in _ERRORS:
                if isinstance(error, theirs):
                    raise ours(str(error), request=request) from error
            raise
        return httpx.Response(
            status_code=answer.status,
            headers=answer.headers,
            stream=_Stream(answer.stream),
            extensions=answer.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


def client(*, allow_private: bool, timeout: float, max_connections: int) -> httpx.AsyncClient:
    """The client deliveries are sent with: checked destinations, no redirects followed, no
    proxy or netrc from the environment."""
    return httpx.AsyncClient(
        transport=CheckedTransport(allow_private=allow_private, max_connections=max_connections),
        follow_redirects=False,
        trust_env=False,
        timeout=timeout,
    )
