"""Fan-out: one event to many subscribers on one server process.

Opens N WebSocket connections (one subscription each, all to one order) from several client
processes, then posts events one at a time and records, in each client, the delay from the
event's ``createdAt`` (stamped just before its commit) to its receipt. Also reports the
server's resident memory per idle subscription (RSS delta / N, after a warm-up of a few
subscriptions opened and closed, so that one-time allocations are not counted).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import statistics
import time
from collections.abc import Sequence
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

ACCOUNT = "T12345678"
ORDER = "fanout-1"
SUBSCRIBE = (
    "subscription($a: ID!, $o: ID) { orderEvents(accountId: $a, orderId: $o) "
    "{ version createdAt } }"
)
CREATE = (
    "mutation($a: ID!, $o: ID!) { createOrderEvent(accountId: $a, orderId: $o, "
    'event: {service: "bench", serviceStatus: "tick"}) { version createdAt } }'
)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


async def _subscribers(url: str, token: str, count: int, pipe: Connection) -> None:
    """One client process: opens ``count`` subscriptions, then records delays until told."""
    ws_url = url.replace("http", "ws", 1) + "/graphql"
    delays: list[float] = []
    errors: list[str] = []
    ready = 0
    all_ready = asyncio.Event()

    # A few handshakes at a time: a flood of them overflows the server's listen backlog.
    opening = asyncio.Semaphore(50)

    async def one() -> None:
        nonlocal ready
        async with opening:
            ws = await connect(
                ws_url, subprotocols=["graphql-transport-ws"], max_size=None, open_timeout=None
            )
            await ws.send(
                json.dumps(
                    {"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}
                )
            )
            ack = json.loads(await ws.recv())
            assert ack["type"] == "connection_ack", ack
        async with ws:
            await ws.send(
                json.dumps(
                    {
                        "id": "1",
                        "type": "subscribe",
                        "payload": {"query": SUBSCRIBE, "variables": {"a": ACCOUNT, "o": ORDER}},
                    }
                )
            )
            ready += 1
            if ready == count:
                all_ready.set()
            async for raw in ws:
                received = time.time()
                message = json.loads(raw)
                if message["type"] == "next" and message["payload"].get("data"):
                    created = message["payload"]["data"]["orderEvents"]["createdAt"]
                    delays.append(received - datetime.fromisoformat(created).timestamp())
                elif message["type"] in {"next", "error"}:
                    errors.append(json.dumps(message["payload"])[:300])
                elif message["type"] == "ping":
                    await ws.send(json.dumps({"type": "pong"}))

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    ready_or_failed = asyncio.create_task(all_ready.wait())
    await asyncio.wait([ready_or_failed, *tasks], return_when=asyncio.FIRST_COMPLETED)
    failed = [task for task in tasks if task.done() and task.exception() is not None]
    if failed:
        pipe.send(f"{len(failed)} subscribers failed, e.g. {failed[0].exception()!r}")
        return
    await ready_or_failed
    pipe.send("ready")
    await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # "report"
    pipe.send((delays, errors))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _client_process(url: str, token: str, count: int, pipe: Connection) -> None:
    asyncio.run(_subscribers(url, token, count, pipe))


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _warm_up(context: Any, url: str, token: str, count: int = 20) -> None:
    """Opens and closes a few subscriptions first, so that what the server allocates once
    (the compiled document, caches, modules imported on first use) is not counted per
    subscription."""
    parent, child = context.Pipe()
    process = context.Process(target=_client_process, args=(url, token, count, child))
    process.start()
    if not parent.poll(60) or parent.recv() != "ready":
        raise RuntimeError("the warm-up subscribers did not connect")
    parent.send("report")
    parent.recv()
    process.join(timeout=30)
    time.sleep(0.5)


def measure(
    url: str, server_pid: int, token: str, subscribers: int, events: int, clients: int
) -> dict[str, Any]:
    """Runs one fan-out measurement against a running server; returns its figures."""
    context = multiprocessing.get_context("spawn")
    _warm_up(context, url, token)
    before = rss_kib(server_pid)
    pipes, processes = [], []
    share = [
        subscribers // clients + (1 if i < subscribers % clients else 0) for i in range(clients)
    ]
    for count in share:
        parent, child = context.Pipe()
        process = context.Process(target=_client_process, args=(url, token, count, child))
        process.start()
        pipes.append(parent)
        processes.append(process)
    for pipe in pipes:
        if not pipe.poll(300):
            raise RuntimeError("subscribers did not connect within 300 s")
        answer = pipe.recv()
        if answer != "ready":
            raise RuntimeError(f"a client process failed: {answer}")
    time.sleep(1.0)  # let the last subscriptions reach the hub, and memory settle
    after = rss_kib(server_pid)

    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        for _ in range(events):
            body = http.post(
                "/graphql", json={"query": CREATE, "variables": {"a": ACCOUNT, "o": ORDER}}
            ).json()
            assert "errors" not in body, body
            time.sleep(0.25 if subscribers >= 5000 else 0.1)
    time.sleep(2.0)

    delays: list[float] = []
    errors: list[str] = []
    for pipe in pipes:
        pipe.send("report")
        their_delays, their_errors = pipe.recv()
        delays.extend(their_delays)
        errors.extend(their_errors)
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
    expected = subscribers * events
    return {
        "subscribers": subscribers,
        "events": events,
        "deliveries": len(delays),
        "missing": expected - len(delays),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "p50_ms": round(statistics.median(delays) * 1000, 1) if delays else None,
        "p99_ms": round(percentile(delays, 0.99) * 1000, 1) if delays else None,
        "max_ms": round(max(delays) * 1000, 1) if delays else None,
        "rss_delta_kib": after - before,
        "kib_per_subscription": round((after - before) / subscribers, 2),
        "client_processes": clients,
        "cpu_count": os.cpu_count(),
    }
