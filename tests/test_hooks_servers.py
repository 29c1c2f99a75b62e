"""Webhooks from real server processes: deliveries pending when a server is killed with
SIGKILL all arrive once it is back, and two processes on one PostgreSQL database deliver
each event once, in version order per order."""

from __future__ import annotations

import asyncio
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import GraphQLClient
from tests.helpers import ACCOUNT
from tests.receiver import Received, add_hook, receiving
from tests.servers import Server, start_server, stop_server

HOOK_ENV = {
    "WEBHOOK_ALLOW_HTTP": "true",
    "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
    "WEBHOOK_RETRY_BASE_SECONDS": "0.05",
    "WEBHOOK_POLL_INTERVAL_SECONDS": "0.05",
    "WEBHOOK_TIMEOUT_SECONDS": "3",
    "WEBHOOK_MAX_ATTEMPTS": "1000",
}


async def post_events(server: Server, token: str, orders: list[str]) -> list[dict[str, Any]]:
    """Posts one event per entry of ``orders`` (to that order), one after another; returns
    the events as acknowledged."""
    acknowledged = []
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for order_id in orders:
            response = await http.post(
                f"/v1/accounts/{ACCOUNT}/shopping/orders/{order_id}/events",
                json={"service": "kitchen", "service_status": "ready"},
                headers={"authorization": f"Bearer {token}"},
            )
            assert response.status_code == 200, response.text
            acknowledged.append({**response.json(), "order_id": order_id})
    return acknowledged


def accepted(log: list[Received], statuses: dict[int, int]) -> list[dict[str, Any]]:
    """The events the receiver answered with a 2xx, in the order received."""
    return [
        r.json
        for index, r in enumerate(log)
        if statuses.get(index, 200) < 300 and r.json["event"] != "ping"
    ]


def in_version_order(bodies: list[dict[str, Any]]) -> bool:
    versions: dict[str, list[int]] = defaultdict(list)
    for body in bodies:
        versions[body["order_id"]].append(body["order_event"]["version"])
    return all(seen == sorted(seen) for seen in versions.values())


async def test_deliveries_pending_at_a_sigkill_all_arrive_after_a_restart(
    client: GraphQLClient, server_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**server_env, **HOOK_ENV}
    statuses: dict[int, int] = {}
    open_gate = False

    def answer(received: Received, log: list[Received]) -> int:
        status = 200 if open_gate else 503
        statuses[len(log) - 1] = status
        return status

    async with receiving(answer=answer) as receiver:
        await add_hook(url=receiver.url)
        first = await asyncio.to_thread(start_server, env, tmp_path / "first.log")
        try:
            acknowledged = await post_events(
                first, client.default_token or "", [f"order-{i % 4}" for i in range(20)]
            )
            # Being tried, and refused: pending when the process dies.
            await receiver.wait_for(lambda log: len(log) >= 3)
        finally:
            first.process.send_signal(signal.SIGKILL)
            first.process.wait()
        open_gate = True
        second = await asyncio.to_thread(start_server, env, tmp_path / "second.log")
        try:
            wanted = {event["id"] for event in acknowledged}
            log = await receiver.wait_for(
                lambda log: wanted <= {b["order_event"]["id"] for b in accepted(log, statuses)}
            )
        finally:
            await asyncio.to_thread(stop_server, second)

    delivered = accepted(log, statuses)
    assert in_version_order(delivered)


async def test_two_processes_deliver_each_event_once_in_order(
    client: GraphQLClient, postgres_only: None, server_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**server_env, **HOOK_ENV}
    async with receiving() as receiver:
        await add_hook(url=receiver.url)
        servers = [
            await asyncio.to_thread(start_server, env, tmp_path / f"server-{i}.log")
            for i in range(2)
        ]
        try:
            token = client.default_token or ""
            batches = await asyncio.gather(
                *(
                    post_events(server, token, [f"order-{(i + n) % 5}" for i in range(40)])
                    for n, server in enumerate(servers)
                )
            )
            wanted = {event["id"] for batch in batches for event in batch}
            log = await receiver.wait_for(
                lambda log: wanted <= {r.json["order_event"]["id"] for r in log}
            )
        finally:
            for server in servers:
                await asyncio.to_thread(stop_server, server)

    deliveries = [r.headers["event-delivery"] for r in log]
    assert len(deliveries) == len(set(deliveries)) == 80
    assert in_version_order([r.json for r in log])
