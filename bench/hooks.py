"""Webhooks: what one active hook costs writes, how fast a backlog is delivered, and the time
from an event's creation to its receipt.

    python -m bench.hooks [--quick] [--rounds N] [--databases sqlite postgres]

- **write ratio**: services each on a fresh database: one without hooks, one with an active
  hook it delivers to a local receiver itself, one with an active hook but
  ``WEBHOOK_DELIVERY=false`` (it writes the outbox rows; another process would deliver).
  Writes (wrk, as ``scripts/bench``'s) are run on them in turns; each ratio is requests a
  second over the plain service's. The self-delivering one pays for its outbox rows and for
  delivering them, on the same cores, while it writes; the other for the rows only. After
  each of its slices the self-delivering one is left to deliver its backlog before the next
  slice starts (so that it does not slow the others'); its slice's events over the slice
  and that catch-up together are the writes a second it sustains with delivery keeping up.
  Deliveries a second during its slices: few, as its requests queue up and come first
  (``app.hooks.budget``).
- **deliveries/s**: events written by a service that does not deliver
  (``WEBHOOK_DELIVERY=false``) over many orders; then a delivering service is started, and
  the backlog's delivery is timed from its first receipt to its last.
- **created->receipt p50/p99**: events posted one at a time at a steady pace to a
  delivering service; each receipt's time less the event's ``created_at`` (taken just
  before its transaction commits), on one machine's clock.

The receiver (``receiver_app``) is a separate uvicorn process answering 204 at once.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from app.auth import LocalIssuer
from app.settings import Settings
from bench import harness, http
from tests.receiver import read_body
from tests.servers import Server, start_server, stop_server

HOOK_ENV = {"WEBHOOK_ALLOW_HTTP": "true", "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true"}


def receiver_app() -> Any:
    """The receiver: answers 204 to every POST and keeps the latency of each (receipt less
    the event's created_at); ``GET /stats`` gives them, ``DELETE /stats`` forgets them."""
    # (event_delivery, receipt time, created->receipt seconds)
    received: list[tuple[str, float, float]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        now = time.time()
        answer = b""
        if scope["method"] == "POST":
            payload = json.loads(body)
            if "order_event" in payload:
                created = datetime.fromisoformat(payload["order_event"]["created_at"])
                received.append((payload["event_delivery"], now, now - created.timestamp()))
        elif scope["path"] == "/stats" and scope["method"] == "DELETE":
            received.clear()
        elif scope["path"] == "/stats":
            answer = json.dumps(received).encode()
        status = 200 if answer or scope["path"] == "/healthz" else 204
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": answer})

    return app


@contextmanager
def receiver(workdir: Path) -> Iterator[Server]:
    running = start_server({}, workdir / "receiver.log", factory="bench.hooks:receiver_app")
    try:
        yield running
    finally:
        stop_server(running)


def received(target: Server) -> list[tuple[str, float, float]]:
    data: list[tuple[str, float, float]] = httpx.get(f"{target.url}/stats", timeout=30).json()
    return data


def event_count(url: str) -> int:
    """How many events the database at ``url`` holds."""
    if url.startswith("sqlite://"):
        with sqlite3.connect(url.removeprefix("sqlite://")) as connection:
            (count,) = connection.execute("SELECT count(*) FROM order_events").fetchone()
            return int(count)
    dsn = url.replace("postgres://", "postgresql://", 1)
    output = subprocess.run(
        ["psql", dsn, "-tA", "-c", "SELECT count(*) FROM order_events"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(output.strip())


def add_hook(service: Server, token: str, url: str) -> None:
    response = httpx.post(
        f"{service.url}/v1/accounts/{harness.ACCOUNT}/hooks/subscriptions",
        json={
            "config": {"url": url, "secret": {"value": "bench secret"}},
            "events": ["shopping_order_event_add"],
        },
        headers={"authorization": f"Bearer {token}"},
        timeout=30,
    )
    response.raise_for_status()


def wait_for(target: Server, count: int, timeout: float = 120) -> list[tuple[str, float, float]]:
    deadline = time.monotonic() + timeout
    while True:
        got = received(target)
        if len(got) >= count or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def delivered_all(url: str, sink: Server) -> list[tuple[str, float, float]]:
    """Waits until every event in the database at ``url`` was received (the receiver
    counts no pings); counted again after the wait: requests wrk left in flight may commit
    late."""
    written = 0
    got: list[tuple[str, float, float]] = []
    while (count := event_count(url)) > written:
        written = count
        got = wait_for(sink, written)
    return got


def write_ratio(
    kind: str, workdir: Path, tokens: dict[str, str], seconds: int, connections: int, rounds: int
) -> dict[str, Any]:
    """Writes to three services in turns: without hooks; with an active hook it delivers
    itself; with an active hook and ``WEBHOOK_DELIVERY=false`` (the outbox rows only, as an
    API process whose deliveries another process makes)."""
    slice_seconds = max(1, round(seconds / rounds))
    with (
        receiver(workdir) as sink,
        harness.database(kind, workdir) as plain_url,
        harness.database(kind, workdir) as hooked_url,
        harness.database(kind, workdir) as outbox_url,
        harness.service(plain_url, workdir, **HOOK_ENV) as plain,
        harness.service(hooked_url, workdir, **HOOK_ENV) as hooked,
        harness.service(outbox_url, workdir, WEBHOOK_DELIVERY="false", **HOOK_ENV) as outbox,
    ):
        add_hook(hooked, tokens["hooks"], f"{sink.url}/hook")
        add_hook(outbox, tokens["hooks"], f"{sink.url}/outbox")
        sides = {"plain": plain, "hooked": hooked, "outbox_only": outbox}
        slices: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
        # Seconds from the end of each hooked slice until all its events were received; and
        # how many were received during each hooked slice.
        catch_up: list[float] = []
        during: list[int] = []
        for _ in range(rounds):
            for name, server in sides.items():
                before = len(received(sink)) if name == "hooked" else 0
                slices[name].append(
                    http.write(server, tokens["events"], slice_seconds, connections)
                )
                if name == "hooked":
                    during.append(len(received(sink)) - before)
                    # Its backlog is delivered before the next slice, which it would slow.
                    ended = time.monotonic()
                    got = delivered_all(hooked_url, sink)
                    catch_up.append(round(time.monotonic() - ended, 1))
        written = event_count(hooked_url)
        unique = len({key for key, _, _ in got})
    figures = {name: http.combine(runs) for name, runs in slices.items()}
    # Writes a second the hooked service would sustain with delivery keeping up: each
    # slice's events over the slice and its catch-up together.
    kept_up = [
        round(run["requests"] / (run["duration_us"] / 1e6 + extra), 1)
        for run, extra in zip(slices["hooked"], catch_up, strict=True)
    ]

    def ratios(name: str) -> list[float]:
        return [
            round(h["rps"] / p["rps"], 2)
            for h, p in zip(slices[name], slices["plain"], strict=True)
        ]

    return {
        "database": kind,
        "connections": connections,
        **figures,
        "write_ratio": round(figures["hooked"]["rps"] / figures["plain"]["rps"], 2),
        "write_ratios": ratios("hooked"),
        "outbox_only_ratio": round(figures["outbox_only"]["rps"] / figures["plain"]["rps"], 2),
        "outbox_only_ratios": ratios("outbox_only"),
        "catch_up_seconds": catch_up,
        "delivered_during_rps": round(
            sum(during) / sum(run["duration_us"] / 1e6 for run in slices["hooked"]), 1
        ),
        "kept_up_rps": round(sum(kept_up) / len(kept_up), 1),
        "kept_up_ratio": round(sum(kept_up) / len(kept_up) / figures["plain"]["rps"], 2),
        "written_with_hook": written,
        "delivered": unique,
        "duplicates": len(got) - unique,
    }


def backlog(kind: str, workdir: Path, tokens: dict[str, str], events: int) -> dict[str, Any]:
    """``events`` written first, over 200 orders, then delivered by a fresh process."""
    with receiver(workdir) as sink, harness.database(kind, workdir) as url:
        with harness.service(url, workdir, WEBHOOK_DELIVERY="false", **HOOK_ENV) as writer:
            add_hook(writer, tokens["hooks"], f"{sink.url}/hook")
            _post_events(writer, tokens["events"], events, pace=None)
        with harness.service(url, workdir, **HOOK_ENV):
            got = wait_for(sink, events)
    times = sorted(at for _, at, _ in got)
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    return {
        "database": kind,
        "events": events,
        "delivered": len(got),
        "deliveries_per_second": round((len(times) - 1) / span, 1) if span else None,
    }


def latency(
    kind: str, workdir: Path, tokens: dict[str, str], events: int, rate: float
) -> dict[str, Any]:
    with (
        receiver(workdir) as sink,
        harness.database(kind, workdir) as url,
        harness.service(url, workdir, **HOOK_ENV) as service,
    ):
        add_hook(service, tokens["hooks"], f"{sink.url}/hook")
        _post_events(service, tokens["events"], events, pace=1 / rate)
        got = wait_for(sink, events)
    delays = sorted(delay * 1000 for _, _, delay in got)
    return {
        "database": kind,
        "events": events,
        "rate_per_second": rate,
        "delivered": len(got),
        "p50_ms": round(statistics.median(delays), 2),
        "p99_ms": round(delays[min(len(delays) - 1, int(len(delays) * 0.99))], 2),
    }


def _post_events(service: Server, token: str, count: int, pace: float | None) -> None:
    with httpx.Client(base_url=service.url, timeout=30) as client:
        started = time.monotonic()
        for n in range(count):
            if pace is not None:
                time.sleep(max(0.0, started + n * pace - time.monotonic()))
            response = client.post(
                f"/v1/accounts/{harness.ACCOUNT}/shopping/orders/order-{n % 200}/events",
                json={"service": "kitchen", "service_status": "ready"},
                headers={"authorization": f"Bearer {token}"},
            )
            response.raise_for_status()


def measure(
    kinds: list[str],
    workdir: Path,
    *,
    quick: bool = False,
    tiny: bool = False,
    rounds: int | None = None,
    connections: int = 32,
) -> dict[str, Any]:
    issuer = LocalIssuer.load_or_create(Settings(data_dir=workdir / "data"))

    def token(scope: str) -> str:
        return issuer.mint(
            account_id=harness.ACCOUNT, scope=scope, subject="bench", ttl_seconds=3600
        )

    tokens = {"events": token("read:shopping write:shopping"), "hooks": token("write:hooks")}
    # (seconds of writes, rounds, backlog events, paced events)
    sizes = (1, 1, 20, 5) if tiny else (2, 2, 300, 40) if quick else (9, 3, 3000, 200)
    seconds, slices, backlog_events, paced = sizes
    if rounds is not None:
        # More rounds of the same slices: write ratios that tell smaller differences apart.
        seconds, slices = seconds * rounds // slices, rounds
    return {
        "write": [write_ratio(k, workdir, tokens, seconds, connections, slices) for k in kinds],
        "backlog": [backlog(k, workdir, tokens, backlog_events) for k in kinds],
        "latency": [latency(k, workdir, tokens, paced, 20.0) for k in kinds],
    }


def render(report: dict[str, Any]) -> str:
    lines = []
    for run in report["write"]:
        db = run["database"]
        lines.append(
            f"{db} writes/s with one active hook vs none: {run['hooked']['rps']} vs "
            f"{run['plain']['rps']} (ratio {run['write_ratio']}; per round "
            f"{' '.join(map(str, run['write_ratios']))}); {run['delivered']} of "
            f"{run['written_with_hook']} delivered, {run['duplicates']} twice; "
            f"{run['delivered_during_rps']} deliveries/s during its slices"
        )
        lines.append(
            f"{db} writes/s sustained with delivery keeping up: {run['kept_up_rps']} (ratio "
            f"{run['kept_up_ratio']}; catch-up after each slice "
            f"{' '.join(map(str, run['catch_up_seconds']))} s)"
        )
        lines.append(
            f"{db} writes/s with the outbox only (delivery elsewhere) vs none: "
            f"{run['outbox_only']['rps']} vs {run['plain']['rps']} (ratio "
            f"{run['outbox_only_ratio']}; per round "
            f"{' '.join(map(str, run['outbox_only_ratios']))})"
        )
    for run in report["backlog"]:
        lines.append(
            f"{run['database']} backlog of {run['events']}: {run['deliveries_per_second']} "
            f"deliveries/s ({run['delivered']} delivered)"
        )
    for run in report["latency"]:
        lines.append(
            f"{run['database']} created->receipt at {run['rate_per_second']:g}/s: "
            f"p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms ({run['delivered']} of "
            f"{run['events']})"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hooks", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--rounds", type=int, help="rounds of writes, of the same length each (default 3)"
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--databases", nargs="*", default=["sqlite", "postgres"], choices=["sqlite", "postgres"]
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="order-events-bench-hooks-") as tmp:
        report = measure(
            args.databases,
            Path(tmp),
            quick=args.quick,
            rounds=args.rounds,
            connections=args.connections,
        )
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
