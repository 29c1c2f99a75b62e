"""The benchmark harness runs end to end and reports every figure (tiny loads: no timing is
judged here, only that each figure is measured and next to its baseline); the fan-out's
hand-written WebSocket client reads frames and answers the server as RFC 6455 says."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bench.protocol import measure
from bench.wsclient import (
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    FrameReader,
    ProtocolError,
    Sink,
    Subscriber,
)
from serving.http import HttpProtocol

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def wrk() -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("wrk is missing: .ci/run installs it (apt-get install wrk)")
        pytest.skip("wrk is not installed (Debian: apt-get install wrk)")


def test_quick_run_reports_every_figure(wrk: None, tmp_path: Path) -> None:
    report_file = tmp_path / "bench.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--tiny",
            "--seconds",
            "1",
            "--connections",
            "4",
            "--json",
            str(report_file),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(report_file.read_text())

    assert [r["database"] for r in report["http"]] == ["sqlite", "postgres"]
    for figures in report["http"]:
        for side in ("service", "baseline"):
            for phase in ("write", "read"):
                assert figures[side][phase]["requests"] > 0
                assert figures[side][phase]["failed"] == 0
                assert {"rps", "p50_ms", "p99_ms"} <= set(figures[side][phase])
        assert figures["write_ratio"] > 0 and figures["read_ratio"] > 0
    for growth in report["growth"]:
        assert {
            "write_p50_ms_ratio",
            "write_p99_ms_ratio",
            "read_p50_ms_ratio",
            "read_p99_ms_ratio",
        } <= set(growth)
    for fanout in report["fanout"]:
        assert fanout["missing"] == 0
        assert fanout["p50_ms"] is not None and fanout["p99_ms"] is not None
        assert "kib_per_subscription" in fanout
        assert fanout["server_cpu_us_per_subscription"] > 0
    assert report["workers"]["cross_worker_delivery"]["all_received_in_order"] is True
    assert report["workers"]["ratio_2_to_1"] > 0
    for hooked in report["hooks"]["write"]:
        assert hooked["delivered"] == hooked["written_with_hook"] > 0
        assert hooked["write_ratio"] > 0
    for backlog in report["hooks"]["backlog"]:
        assert backlog["delivered"] == backlog["events"]
    for latency in report["hooks"]["latency"]:
        assert latency["delivered"] == latency["events"]
    assert "requests/s" in run.stdout  # the table


def server_frame(opcode: int, payload: bytes, final: bool = True) -> bytes:
    """A frame as a server sends it: unmasked, with the shortest length form."""
    first = (0x80 if final else 0) | opcode
    if len(payload) < 126:
        return bytes((first, len(payload))) + payload
    if len(payload) < 1 << 16:
        return bytes((first, 126)) + len(payload).to_bytes(2, "big") + payload
    return bytes((first, 127)) + len(payload).to_bytes(8, "big") + payload


def read_client_frame(frame: bytes) -> tuple[int, bytes]:
    """The opcode and unmasked payload of one client frame (short form), which must be masked."""
    assert frame[0] & 0x80, "not final"
    assert frame[1] & 0x80, "a client frame must be masked"
    length = frame[1] & 0x7F
    assert length < 126 and len(frame) == 6 + length
    mask = frame[2:6]
    return frame[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(frame[6:]))


def test_frames_that_arrive_in_one_read_come_out_one_by_one() -> None:
    stream = server_frame(TEXT, b"first") + server_frame(PING, b"") + server_frame(TEXT, b"last")

    assert FrameReader().feed(stream) == [(TEXT, b"first"), (PING, b""), (TEXT, b"last")]


# 7-bit, 16-bit (126) and 64-bit (127) length forms (headers of 2, 4 and 10 bytes), cut
# inside the header, inside the extended length, right after it, and before the last byte.
@pytest.mark.parametrize(
    ("size", "cut"),
    [(5, 1), (5, 2), (5, -1)]
    + [(300, cut) for cut in (1, 2, 3, 4, -1)]
    + [(70_000, cut) for cut in (1, 2, 5, 9, 10, 11, -1)],
)
def test_a_frame_split_across_reads_comes_out_whole_once(size: int, cut: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    frame = server_frame(TEXT, payload)
    reader = FrameReader()

    assert reader.feed(frame[:cut]) == []
    assert reader.feed(frame[cut:] + server_frame(TEXT, b"next")) == [
        (TEXT, payload),
        (TEXT, b"next"),
    ]


def test_a_stream_fed_byte_by_byte_gives_every_frame() -> None:
    frames = [(TEXT, b"a" * 200), (PING, b"p"), (TEXT, b"b" * 3)]
    stream = b"".join(server_frame(opcode, payload) for opcode, payload in frames)
    reader = FrameReader()

    assert [m for i in range(len(stream)) for m in reader.feed(stream[i : i + 1])] == frames


def test_a_fragmented_message_is_joined_around_a_ping() -> None:
    stream = (
        server_frame(TEXT, b"one ", final=False)
        + server_frame(PING, b"?")
        + server_frame(CONTINUATION, b"two ", final=False)
        + server_frame(CONTINUATION, b"three")
    )

    assert FrameReader().feed(stream) == [(PING, b"?"), (TEXT, b"one two three")]


def test_a_masked_frame_from_the_server_is_refused() -> None:
    frame = bytes((0x81, 0x80 | 2)) + b"\0\0\0\0hi"

    with pytest.raises(ProtocolError, match="masked"):
        FrameReader().feed(frame)


class Transport:
    """Stands in for the socket: keeps what the client writes."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


def handshake_response(request: bytes, accept: bytes | None = None) -> bytes:
    key = next(
        line.split(b": ", 1)[1]
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    if accept is None:
        digest = hashlib.sha1(
            key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11", usedforsecurity=False
        ).digest()
        accept = base64.b64encode(digest)
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n"
        b"Sec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n"
    )


async def opened(sink: Sink) -> tuple[Subscriber, Transport]:
    """A subscriber past its handshake, with connection_init sent."""
    subscriber, transport = Subscriber("127.0.0.1:1", "/graphql", "token", sink), Transport()
    subscriber.connection_made(transport)  # type: ignore[arg-type]
    subscriber.data_received(handshake_response(transport.written[0]))
    return subscriber, transport


async def test_the_client_sends_connection_init_with_the_token_after_the_handshake() -> None:
    _, transport = await opened(Sink())

    assert [read_client_frame(frame) for frame in transport.written[1:]] == [
        (TEXT, b'{"type": "connection_init", "payload": {"Authorization": "Bearer token"}}')
    ]


async def test_a_wrong_accept_header_fails_the_connection() -> None:
    subscriber, transport = Subscriber("127.0.0.1:1", "/graphql", "t", Sink()), Transport()
    subscriber.connection_made(transport)  # type: ignore[arg-type]

    subscriber.data_received(handshake_response(transport.written[0], accept=b"d3Jvbmc="))

    assert subscriber.acknowledged.done()
    with pytest.raises(ConnectionError, match="Sec-WebSocket-Accept"):
        subscriber.acknowledged.result()
    assert transport.closed


async def test_a_ping_is_answered_with_a_masked_pong_of_the_same_payload() -> None:
    subscriber, transport = await opened(Sink())

    subscriber.data_received(server_frame(PING, b"are you there"))

    assert read_client_frame(transport.written[-1]) == (PONG, b"are you there")


async def test_deliveries_keep_the_raw_created_at_and_errors_are_counted() -> None:
    sink = Sink()
    subscriber, _ = await opened(sink)
    created = "2026-01-02T03:04:05.123456+00:00"
    delivery = (
        b'{"id": "1", "type": "next","payload":{"data":{"orderEvents":{"version":1,'
        b'"createdAt":"' + created.encode() + b'"}}}}'
    )

    subscriber.data_received(
        server_frame(TEXT, b'{"type":"connection_ack"}')
        + server_frame(TEXT, delivery)
        + server_frame(TEXT, b'{"id":"1","type":"next","payload":{"data":null,"errors":[]}}')
        + server_frame(TEXT, b'{"id":"1","type":"error","payload":[{"message":"no"}]}')
    )

    assert subscriber.acknowledged.done() and subscriber.acknowledged.exception() is None
    assert [created for _, created in sink.deliveries] == [created.encode()]
    assert len(sink.errors) == 2


async def test_a_close_from_the_server_is_an_error_of_the_run() -> None:
    sink = Sink()
    subscriber, transport = await opened(sink)
    subscriber.data_received(server_frame(TEXT, b'{"type":"connection_ack"}'))

    subscriber.data_received(server_frame(CLOSE, (1011).to_bytes(2, "big") + b"bye"))

    assert sink.errors == ["closed by the server: 1011 b'bye'"]
    assert transport.closed


@pytest.mark.parametrize("kind", ["read", "write"])
def test_the_in_process_measure_runs_the_bench_documents(kind: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.inprocess", kind, "--count", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert run.returncode == 0, run.stderr
    assert f"{kind}: " in run.stdout and "µs of CPU per request (5 requests)" in run.stdout


@pytest.mark.parametrize("protocol", ["ours", "stock"])
async def test_the_protocol_bench_answers_every_request(protocol: str) -> None:
    chosen = HttpProtocol if protocol == "ours" else HttpToolsProtocol
    # measure() stops with SystemExit when the protocol refuses the request.
    assert await measure(chosen, 50) > 0
