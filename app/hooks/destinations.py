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
client (``client``) is httpcore's connection pool with a network backend of our own
(httpcore's documented ``AsyncNetworkBackend`` and ``AsyncNetworkStream``), whose
``connect_tcp`` resolves the host, checks every address and then connects to a checked
address itself, over asyncio's streams. TLS is then started on that socket with the URL's
host name, so SNI and certificate verification are the host's, as is the ``Host`` header:
nothing is resolved twice, so nothing can change between the check and the connection.
Redirects are not followed, and no proxy from the environment is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import urlsplit

import httpcore

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
    not reach. Raised inside httpcore's connect, so it is a ``ConnectError`` like any other."""


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


class _Stream(httpcore.AsyncNetworkStream):
    """A connection as httpcore reads and writes it, over asyncio's streams. httpcore's own
    AnyIO stream cost about as much CPU as the rest of an attempt (it builds a dictionary of
    attribute getters each time the pool asks whether an idle connection was closed); see
    docs/benchmarks.md."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(
        self,
        max_bytes: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
    ) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as error:
            raise httpcore.ReadTimeout(str(error)) from error
        except OSError as error:
            raise httpcore.ReadError(str(error)) from error

    async def write(
        self,
        buffer: bytes,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
    ) -> None:
        if not buffer:
            return
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(buffer)
                await self._writer.drain()
        except TimeoutError as error:
            raise httpcore.WriteTimeout(str(error)) from error
        except OSError as error:
            raise httpcore.WriteError(str(error)) from error

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError as error:
            await self.aclose()
            raise httpcore.ConnectTimeout(str(error)) from error
        except (OSError, ssl.SSLError) as error:
            await self.aclose()
            raise httpcore.ConnectError(str(error)) from error
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # Asked of an idle connection: readable then means closed by the other end.
            return self._reader.at_eof() or self._writer.is_closing()
        names = {"client_addr": "sockname", "server_addr": "peername"}
        return self._writer.get_extra_info(names.get(info, info))


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses ``checked_addresses`` let
    through, and to the very address it checked."""

    def __init__(self, allow_private: bool) -> None:
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
                async with asyncio.timeout(timeout):
                    reader, writer = await asyncio.open_connection(
                        address, port, local_addr=(local_address, 0) if local_address else None
                    )
            except TimeoutError as failed:
                error = httpcore.ConnectTimeout(f"connecting to {address}: {failed}")
                continue
            except OSError as failed:
                error = httpcore.ConnectError(str(failed))
                continue
            raw = writer.get_extra_info("socket")
            for option in socket_options or ():
                raw.setsockopt(*option)
            return _Stream(reader, writer)
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
        await asyncio.sleep(seconds)


# What a failed request raises: the connection refused (``DestinationRefused`` is a
# ``ConnectError``), not made, broken, or not spoken HTTP.
ERRORS: Final = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
)


def client(
    *, allow_private: bool, max_connections: int, ssl_context: ssl.SSLContext | None = None
) -> httpcore.AsyncConnectionPool:
    """The connection pool deliveries are sent with: checked destinations, nothing from the
    environment (no proxy, no netrc), no redirects followed (httpcore follows none). TLS
    trusts the system's certificate authorities unless ``ssl_context`` says otherwise."""
    return httpcore.AsyncConnectionPool(
        ssl_context=ssl_context or ssl.create_default_context(),
        max_connections=max_connections,
        network_backend=_CheckedBackend(allow_private),
    )
