"""The connection pool webhooks are sent with (app.hooks.destinations.client), over its own
asyncio streams: TLS verified against the URL's host, and an idle connection the receiver
closed is not used again."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpcore
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.hooks import destinations


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@asynccontextmanager
async def answering(
    *, tls: ssl.SSLContext | None = None, close_after_answer: bool = False
) -> AsyncIterator[tuple[int, list[int]]]:
    """A tiny HTTP/1.1 server on loopback answering 204 to each request; yields its port and
    the number of requests each connection carried."""
    carried: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        carried.append(0)
        mine = len(carried) - 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                carried[mine] += 1
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                await writer.drain()
                if close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield port, carried


async def post(pool: httpcore.AsyncConnectionPool, url: str) -> int:
    async with pool.stream("POST", url, content=b"{}") as response:
        await response.aread()
        return response.status


async def test_tls_is_verified_against_the_urls_host(tmp_path: Path) -> None:
    cert_file, key_file = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_file, key_file)
    trusting = ssl.create_default_context(cafile=str(cert_file))
    async with answering(tls=tls) as (port, carried):
        pool = destinations.client(allow_private=True, max_connections=4, ssl_context=trusting)
        async with pool:
            assert await post(pool, f"https://localhost:{port}/hook") == 204
        # The system's trust store does not know the certificate: refused, nothing sent.
        pool = destinations.client(allow_private=True, max_connections=4)
        async with pool:
            with pytest.raises(httpcore.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await post(pool, f"https://localhost:{port}/hook")
    # The refused handshake never became a connection the server read from.
    assert carried == [1]


async def test_a_kept_alive_connection_carries_the_next_request(tmp_path: Path) -> None:
    async with (
        answering() as (port, carried),
        destinations.client(allow_private=True, max_connections=4) as pool,
    ):
        for _ in range(3):
            assert await post(pool, f"http://127.0.0.1:{port}/hook") == 204
    assert carried == [3]


async def test_an_idle_connection_the_receiver_closed_is_not_used_again() -> None:
    async with (
        answering(close_after_answer=True) as (port, carried),
        destinations.client(allow_private=True, max_connections=4) as pool,
    ):
        for _ in range(3):
            assert await post(pool, f"http://127.0.0.1:{port}/hook") == 204
            await asyncio.sleep(0.05)  # the receiver's close arrives meanwhile
    assert carried == [1, 1, 1]
