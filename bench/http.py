"""Write and read throughput of the service beside the baseline, and how they change as the
table grows, and with more worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
from pathlib import Path
from typing import Any, TypeVar

import httpx
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from bench import harness, load
from tests.servers import Server

Key = TypeVar("Key", str, int)

SERVICE_WRITE = json.dumps(
    {
        "query": 'mutation($o: ID!) { createOrderEvent(accountId: "T12345678", orderId: $o, '
        'event: {service: "kitchen", serviceStatus: "ready_for_pickup", '
        'description: "food prepared"}) { id version createdAt } }',
        "variables": {"o": "{order}"},
    }
)
BASELINE_WRITE = json.dumps(
    {
        "accountId": "T12345678",
        "orderId": "{order}",
        "service": "kitchen",
        "serviceStatus": "ready_for_pickup",
        "description": "food prepared",
    }
)
SERVICE_READ = (
    "/graphql?query=query(%24o%3AID!)%7BorderEvents(accountId%3A%22T12345678%22%2C"
    "orderId%3A%24o%2Cfirst%3A20)%7Bstate%20events%7Bid%20version%20service%20"
    "serviceStatus%20createdAt%7D%7D%7D&variables=%7B%22o%22%3A%22{order}%22%7D"
)
BASELINE_READ = "/accounts/T12345678/orders/{order}/events?first=20"
ORDERS = 200


def write(target: Server, token: str | None, seconds: int, connections: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return load.run(
        target.url,
        method="POST",
        path="/graphql" if token else "/events",
        body=SERVICE_WRITE if token else BASELINE_WRITE,
        headers=headers,
        orders=ORDERS,
        connections=connections,
        seconds=seconds,
    )


def read(target: Server, token: str | None, seconds: int, connections: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return load.run(
        target.url,
        method="GET",
        path=SERVICE_READ if token else BASELINE_READ,
        body=None,
        headers=headers,
        orders=ORDERS,
        connections=connections,
        seconds=seconds,
    )


def side_by_side(
    kind: str, workdir: Path, token: str, seconds: int, connections: int, rounds: int = 3
) -> dict[str, Any]:
    """The baseline and the service, each on a fresh database, both running; loaded in
    turns (baseline, service, baseline, ...) for ``rounds`` slices of ``seconds / rounds``
    each, writes first and then reads. Interleaving keeps the ratio honest on a machine
    whose speed drifts (a shared VM): a slow minute falls on both sides alike."""
    slice_seconds = max(1, round(seconds / rounds))
    with (
        harness.database(kind, workdir) as baseline_url,
        harness.database(kind, workdir) as service_url,
        harness.baseline(baseline_url, workdir) as baseline_server,
        harness.service(service_url, workdir) as service_server,
    ):
        sides = {"baseline": (baseline_server, None), "service": (service_server, token)}
        slices = _in_turns(sides, rounds, slice_seconds, connections)
    baseline = {phase: combine(slices["baseline"][phase]) for phase in ("write", "read")}
    service = {phase: combine(slices["service"][phase]) for phase in ("write", "read")}
    return {
        "database": kind,
        "connections": connections,
        "seconds": slice_seconds * rounds,
        "rounds": rounds,
        "baseline": baseline,
        "service": service,
        "write_ratio": round(service["write"]["rps"] / baseline["write"]["rps"], 2),
        "read_ratio": round(service["read"]["rps"] / baseline["read"]["rps"], 2),
        # Each round's ratio: how much of the ratio is the machine's noise.
        "write_ratios": _ratios(slices, "write"),
        "read_ratios": _ratios(slices, "read"),
    }


def _in_turns(
    targets: dict[Key, tuple[Server, str | None]],
    rounds: int,
    slice_seconds: int,
    connections: int,
) -> dict[Key, dict[str, list[dict[str, Any]]]]:
    """Writes, then reads: ``rounds`` slices of each for every target (a server and its
    token), the targets in turn within each round. Each target's slices, by phase."""
    slices: dict[Key, dict[str, list[dict[str, Any]]]] = {
        key: {"write": [], "read": []} for key in targets
    }
    for phase, run in (("write", write), ("read", read)):
        for _ in range(rounds):
            for key, (server, token) in targets.items():
                slices[key][phase].append(run(server, token, slice_seconds, connections))
    return slices


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Slices of one load as one: requests and time summed; latency percentiles as the
    median of the slices' (wrk reports percentiles per run, not mergeable histograms)."""
    requests = sum(run["requests"] for run in runs)
    duration_us = sum(run["duration_us"] for run in runs)
    combined: dict[str, Any] = {
        "requests": requests,
        "duration_us": duration_us,
        "rps": round(requests / (duration_us / 1e6), 1),
        "errors_socket": sum(run["errors_socket"] for run in runs),
        "failed": sum(run["failed"] for run in runs),
        "max_ms": max(run["max_ms"] for run in runs),
    }
    for stat in ("p50_ms", "p90_ms", "p99_ms"):
        combined[stat] = round(statistics.median(run[stat] for run in runs), 3)
    return combined


def _ratios(slices: dict[str, dict[str, list[dict[str, Any]]]], phase: str) -> list[float]:
    pairs = zip(slices["service"][phase], slices["baseline"][phase], strict=True)
    return [round(s["rps"] / b["rps"], 2) for s, b in pairs]


def growth(
    kind: str, workdir: Path, token: str, sizes: list[int], seconds: int, rounds: int = 3
) -> dict[str, Any]:
    """Append and read latency with ``sizes`` events already in the table: a database and a
    service per size, all running, loaded in turns (writes, then reads) for ``rounds``
    slices each, as ``side_by_side`` does, so that the host's drift falls on every size."""
    figures: dict[str, Any] = {"database": kind, "sizes": {}}
    rounds = max(1, min(rounds, seconds))  # slices of a second at least (--quick: one round)
    slice_seconds = max(1, round(seconds / rounds))
    with contextlib.ExitStack() as stack:
        servers = {}
        for size in sizes:
            url = stack.enter_context(harness.database(kind, workdir))
            harness.seed(url, size)
            servers[size] = stack.enter_context(harness.service(url, workdir))
        slices = _in_turns(
            {size: (server, token) for size, server in servers.items()}, rounds, slice_seconds, 8
        )
    for size in sizes:
        figures["sizes"][str(size)] = {
            phase: combine(slices[size][phase]) for phase in ("write", "read")
        }
    small, large = (figures["sizes"][str(size)] for size in (min(sizes), max(sizes)))
    for phase in ("write", "read"):
        for stat in ("p50_ms", "p99_ms"):
            figures[f"{phase}_{stat}_ratio"] = round(large[phase][stat] / small[phase][stat], 2)
    return figures


def workers(workdir: Path, token: str, seconds: int, connections: int) -> dict[str, Any]:
    """PostgreSQL write throughput with one and two worker processes, and delivery of events
    written through any worker to a subscriber on one of them."""
    figures: dict[str, Any] = {"database": "postgres"}
    for count in (1, 2):
        with (
            harness.database("postgres", workdir) as url,
            harness.service(url, workdir, "--workers", str(count)) as running,
        ):
            figures[f"workers_{count}"] = write(running, token, seconds, connections)
            if count == 2:
                figures["cross_worker_delivery"] = _cross_worker_delivery(running, token)
    figures["ratio_2_to_1"] = round(figures["workers_2"]["rps"] / figures["workers_1"]["rps"], 2)
    return figures


def _cross_worker_delivery(running: Server, token: str, events: int = 40) -> dict[str, Any]:
    """Subscribers on several connections (so, very likely, on both workers); events posted
    over fresh connections (so through both): every subscriber must get every event."""
    return asyncio.run(_deliver(running.url, token, events))


async def _deliver(url: str, token: str, events: int) -> dict[str, Any]:
    subscribe = {
        "id": "1",
        "type": "subscribe",
        "payload": {
            "query": 'subscription { orderEvents(accountId: "T12345678", orderId: "cross") '
            "{ version } }"
        },
    }
    sockets = []
    for _ in range(4):
        ws = await connect(
            url.replace("http", "ws", 1) + "/graphql",
            subprotocols=[Subprotocol("graphql-transport-ws")],
        )
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}})
        )
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps(subscribe))
        sockets.append(ws)
    await asyncio.sleep(0.5)
    for _ in range(events):
        async with httpx.AsyncClient(base_url=url) as http:
            response = await http.post(
                "/graphql",
                content=SERVICE_WRITE.replace("{order}", "cross"),
                headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
            )
            assert "errors" not in response.json(), response.text
    received = []
    for ws in sockets:
        versions: list[int] = []
        while len(versions) < events:
            message = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
            if message["type"] == "next":
                versions.append(message["payload"]["data"]["orderEvents"]["version"])
        received.append(versions)
        await ws.close()
    return {
        "subscribers": len(sockets),
        "events": events,
        "all_received_in_order": all(r == list(range(1, events + 1)) for r in received),
    }
