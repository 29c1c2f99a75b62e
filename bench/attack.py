"""Attacks beside a normal client: the normal client's p50/p99 with and without the attack.

    .venv/bin/python -m bench.attack [--mode validation|ws-flood] [--seconds 5] [--streams 4]
                                     [--rate 40] [--no-rate-limit]

Starts the service on loopback (SQLite, the rate limit as deployed unless --no-rate-limit),
stores a few events, then runs two phases of ``--seconds`` each: the normal client alone,
then beside ``--streams`` attack streams. The attack runs in a process of its own and stops
by itself. The normal client, with a token, reads a page of 20 events ``--rate`` times a
second (under the per-caller limit). Server CPU is from /proc.

``validation`` (issue 13, item 1): token-less streams, each sending the next attack document
as soon as the last is answered: 995 ``__typename`` at one place, or the same in a fragment,
with a new operation name each time so that no cache answers it.

``ws-flood`` (issue 13, item 3): one token of its own (not the normal client's) and a
graphql-transport-ws connection per stream, each keeping ``WS_IN_FLIGHT`` createOrderEvent
mutations in flight for the whole phase; the operations the server ran ("next") and refused
(RATE_LIMITED) are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from app.auth import LocalIssuer
from app.settings import Settings
from bench import harness
from bench.fanout import cpu_time, percentile

ORDER = "attack-bench"
FLOOD_ORDER = "attack-flood"
MODES = ("validation", "ws-flood")
# Mutations each WebSocket flood stream keeps sent but unanswered.
WS_IN_FLIGHT = 32
READ = json.dumps(
    {
        "query": "query Timeline($o: ID!) { orderEvents(accountId: "
        f'"{harness.ACCOUNT}", orderId: $o, first: 20) {{ state events {{ id version '
        "service serviceStatus createdAt } } }",
        "variables": {"o": ORDER},
    }
).encode()
CREATE = (
    "mutation($o: ID!) { createOrderEvent(accountId: "
    f'"{harness.ACCOUNT}", orderId: $o, event: {{service: "kitchen", serviceStatus: "ready"}}) '
    "{ version } }"
)
# The documents: 11 KB, within the 1000-token limit. {n} makes each one new.
ATTACKS = (
    "query X{n} {" + " __typename" * 995 + " }",
    "query X{n} { ...F } fragment F on Query {" + " __typename" * 985 + " }",
)


class Connection:
    """One keep-alive HTTP/1.1 connection to the service: a request, then its whole response
    (the service always sends Content-Length)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def post(self, body: bytes, token: str | None = None) -> int:
        head = (
            "POST /graphql HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
        )
        if token:
            head += f"authorization: Bearer {token}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


async def normal_client(port: int, token: str, seconds: float, rate: float) -> dict[str, Any]:
    """Reads the page ``rate`` times a second for ``seconds``: each request's latency."""
    connection = await Connection.open(port)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    started = time.perf_counter()
    sent = 0
    while time.perf_counter() - started < seconds:
        due = started + sent / rate
        if due > time.perf_counter():
            await asyncio.sleep(due - time.perf_counter())
        before = time.perf_counter()
        statuses[await connection.post(READ, token)] += 1
        latencies.append((time.perf_counter() - before) * 1000)
        sent += 1
    connection.close()
    return {
        "requests": sent,
        "p50_ms": round(percentile(latencies, 0.5), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 2),
        "statuses": dict(statuses),
    }


async def validation_attack(port: int, streams: int, seconds: float) -> dict[str, Any]:
    """``streams`` token-less streams for ``seconds``, each sending its next document as soon
    as the last is answered; says "ready" on stdout once every stream has had an answer."""
    statuses: Counter[int] = Counter()
    answered = 0
    numbers = iter(range(10**9))
    deadline = time.monotonic() + seconds

    async def stream() -> None:
        nonlocal answered
        connection = await Connection.open(port)
        first = True
        while time.monotonic() < deadline:
            n = next(numbers)
            query = ATTACKS[n % len(ATTACKS)].replace("{n}", str(n))
            statuses[await connection.post(json.dumps({"query": query}).encode())] += 1
            if first:
                first = False
                answered += 1
                if answered == streams:
                    print("ready", flush=True)
        connection.close()

    started = time.monotonic()
    await asyncio.gather(*(stream() for _ in range(streams)))
    elapsed = time.monotonic() - started
    total = sum(statuses.values())
    return {"requests": total, "rps": round(total / elapsed, 1), "statuses": dict(statuses)}


async def ws_flood(port: int, streams: int, seconds: float, token: str) -> dict[str, Any]:
    """``streams`` WebSocket connections of ``token`` for ``seconds``, each keeping
    ``WS_IN_FLIGHT`` mutations in flight; says "ready" on stdout once every stream has had
    an answer. Counts the answers by kind: "next" (ran), or the error's code."""
    answers: Counter[str] = Counter()
    answered = 0
    deadline = time.monotonic() + seconds
    subscribe = {
        "type": "subscribe",
        "payload": {"query": CREATE, "variables": {"o": FLOOD_ORDER}},
    }

    async def stream() -> None:
        nonlocal answered
        async with connect(
            f"ws://127.0.0.1:{port}/graphql",
            subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
            compression=None,
            ping_interval=None,
            max_queue=None,
        ) as ws:
            await ws.send(
                json.dumps(
                    {"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}
                )
            )
            if json.loads(await ws.recv())["type"] != "connection_ack":
                raise RuntimeError("the flood's connection was not acknowledged")
            ids = iter(range(10**9))
            in_flight = 0
            first = True
            while time.monotonic() < deadline or in_flight:
                while in_flight < WS_IN_FLIGHT and time.monotonic() < deadline:
                    await ws.send(json.dumps({**subscribe, "id": str(next(ids))}))
                    in_flight += 1
                message = json.loads(await ws.recv())
                kind = message["type"]
                if kind == "next":
                    answers["next"] += 1
                elif kind == "error":
                    answers[message["payload"][0]["extensions"]["code"]] += 1
                    in_flight -= 1
                elif kind == "complete":
                    in_flight -= 1
                elif kind == "ping":
                    await ws.send(json.dumps({"type": "pong"}))
                if first and kind in ("complete", "error"):
                    first = False
                    answered += 1
                    if answered == streams:
                        print("ready", flush=True)

    started = time.monotonic()
    await asyncio.gather(*(stream() for _ in range(streams)))
    elapsed = time.monotonic() - started
    total = sum(answers.values())
    return {"requests": total, "rps": round(total / elapsed, 1), "statuses": dict(answers)}


def measure(
    mode: str, seconds: float, streams: int, rate: float, rate_limit: bool
) -> dict[str, Any]:
    # The benchmarks' servers run without the rate limit unless told otherwise.
    defaults = Settings()
    limits = {"RATE_LIMIT_PER_SECOND": str(defaults.rate_limit_per_second if rate_limit else 0)}
    with tempfile.TemporaryDirectory(prefix="order-events-attack-") as tmp:
        workdir = Path(tmp)
        issuer = LocalIssuer.load_or_create(Settings(data_dir=workdir / "data"))
        token, attacker_token = (
            issuer.mint(
                account_id=harness.ACCOUNT, scope="read:shopping write:shopping", subject=subject
            )
            for subject in ("bench", "attacker")
        )
        with (
            harness.database("sqlite", workdir) as url,
            harness.service(url, workdir, **limits) as server,
        ):
            asyncio.run(_store_events(server.port, token, 20))
            report: dict[str, Any] = {}
            cpu = cpu_time(server.process.pid)
            report["quiet"] = asyncio.run(normal_client(server.port, token, seconds, rate))
            report["quiet"]["server_cpu"] = round((cpu_time(server.process.pid) - cpu) / seconds, 2)
            command = ["-m", "bench.attack", "--attacker", str(server.port), "--mode", mode]
            attacker = subprocess.Popen(
                [sys.executable, *command, "--streams", str(streams), "--seconds", str(seconds)],
                cwd=harness.ROOT,
                stdout=subprocess.PIPE,
                text=True,
                # Not in the arguments, where ps would show it.
                env={**os.environ, "BENCH_ATTACK_TOKEN": attacker_token},
            )
            try:
                assert attacker.stdout is not None
                if attacker.stdout.readline().strip() != "ready":
                    raise RuntimeError("the attack streams got no answer")
                cpu = cpu_time(server.process.pid)
                report["attack"] = asyncio.run(normal_client(server.port, token, seconds, rate))
                report["attack"]["server_cpu"] = round(
                    (cpu_time(server.process.pid) - cpu) / seconds, 2
                )
                output, _ = attacker.communicate(timeout=seconds + 30)
                report["attackers"] = json.loads(output)
            finally:
                if attacker.poll() is None:
                    attacker.kill()
                    attacker.wait()
    return report


async def _store_events(port: int, token: str, count: int) -> None:
    connection = await Connection.open(port)
    body = json.dumps({"query": CREATE, "variables": {"o": ORDER}}).encode()
    for _ in range(count):
        if await connection.post(body, token) != 200:
            raise RuntimeError("could not store the normal client's events")
    connection.close()


def render(report: dict[str, Any], args: argparse.Namespace) -> str:
    attackers = report["attackers"]
    limit = "as deployed" if not args.no_rate_limit else "off"
    streams = (
        "token-less attack streams"
        if args.mode == "validation"
        else f"WebSocket connections of one token, {WS_IN_FLIGHT} mutations in flight each,"
    )
    lines = [
        f"{args.streams} {streams} beside one client reading {args.rate:g}/s; "
        f"{args.seconds:g} s per phase; rate limit {limit}",
        f"{'phase':8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'requests':>9} "
        f"{'server CPU (cores)':>19}",
    ]
    for phase in ("quiet", "attack"):
        figures = report[phase]
        lines.append(
            f"{phase:8} {figures['p50_ms']:8.2f} {figures['p99_ms']:8.2f} "
            f"{figures['max_ms']:8.2f} {figures['requests']:9d} {figures['server_cpu']:19.2f}"
        )
    statuses = ", ".join(
        f"{code}: {n}" for code, n in sorted(attackers["statuses"].items(), key=str)
    )
    lines.append(
        f"attack: {attackers['requests']} requests, {attackers['rps']}/s ({statuses}); "
        f"p50 ratio {report['attack']['p50_ms'] / report['quiet']['p50_ms']:.2f}, "
        f"p99 ratio {report['attack']['p99_ms'] / report['quiet']['p99_ms']:.2f}"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attack", description=__doc__)
    parser.add_argument("--mode", choices=MODES, default="validation", help="the attack")
    parser.add_argument("--seconds", type=float, default=5, help="length of each phase")
    parser.add_argument("--streams", type=int, default=4, help="attack streams")
    parser.add_argument("--rate", type=float, default=40, help="normal requests a second")
    parser.add_argument(
        "--no-rate-limit", action="store_true", help="serve without the per-caller rate limit"
    )
    parser.add_argument("--attacker", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 60 or not 0 < args.streams <= 16 or not 0 < args.rate <= 200:
        parser.error("bounded: --seconds up to 60, --streams up to 16, --rate up to 200")
    if args.attacker is not None:
        # A second more than the phase it runs beside, which starts once it is answered.
        seconds = args.seconds + 1
        if args.mode == "validation":
            result = asyncio.run(validation_attack(args.attacker, args.streams, seconds))
        else:
            token = os.environ["BENCH_ATTACK_TOKEN"]
            result = asyncio.run(ws_flood(args.attacker, args.streams, seconds, token))
        print(json.dumps(result))
        return 0
    report = measure(args.mode, args.seconds, args.streams, args.rate, not args.no_rate_limit)
    print(render(report, args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
