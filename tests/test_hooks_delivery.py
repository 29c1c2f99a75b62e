"""Delivering webhooks (app.hooks.dispatcher) to a real receiver on loopback: the body and its
signature, version order under failures, retries, deactivation, the attempts log and
destinations refused at delivery time."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from prometheus_client import REGISTRY
from tortoise import connections

from app.hooks.budget import Budget
from app.hooks.dispatcher import Statistics, retry_delay
from app.hooks.outbox import purge_delivered
from app.load import Requests
from app.models import Hook, HookAttempt, HookDelivery
from tests.conftest import GraphQLClient, Start
from tests.helpers import ACCOUNT, ORDER, created, eventually
from tests.receiver import Received, add_hook, receiving


def version_of(received: Received) -> int:
    version: int = received.json["order_event"]["version"]
    return version


async def test_a_delivery_is_the_rest_event_signed_with_the_hooks_secret(
    client: GraphQLClient, dispatching: Start
) -> None:
    async with receiving() as receiver:
        await add_hook(url=receiver.url, secret="a secret of the merchant")
        await dispatching()

        event = await created(client, description="food prepared")
        (received,) = await receiver.wait_for(lambda log: len(log) == 1)

    rest = await client.http.get(
        f"/v1/accounts/{ACCOUNT}/shopping/orders/{ORDER}/events",
        headers={"authorization": f"Bearer {client.default_token}"},
    )
    body = received.json
    assert list(body) == ["account_id", "event", "event_delivery", "order_id", "order_event"]
    assert (body["account_id"], body["event"], body["order_id"]) == (
        ACCOUNT,
        "shopping_order_event_add",
        ORDER,
    )
    assert body["order_event"] == rest.json()["events"][0]
    assert body["order_event"]["id"] == event["id"]
    headers = received.headers
    assert headers["event"] == "shopping_order_event_add"
    assert (
        headers["event-delivery"]
        == body["event_delivery"]
        == str(uuid.UUID(body["event_delivery"]))
    )
    expected = hmac.new(b"a secret of the merchant", received.body, hashlib.sha1).hexdigest()
    assert headers["event-signature"] == expected
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("order-events-hooks/")


async def test_version_n_plus_1_waits_until_version_n_was_received(
    client: GraphQLClient, dispatching: Start
) -> None:
    def fail_version_2_three_times(received: Received, log: list[Received]) -> int:
        tries = [r for r in log if version_of(r) == 2]
        return 500 if version_of(received) == 2 and len(tries) <= 3 else 200

    async with receiving(answer=fail_version_2_three_times) as receiver:
        await add_hook(url=receiver.url)
        for _ in range(3):
            await created(client)
        await dispatching()

        log = await receiver.wait_for(lambda log: any(version_of(r) == 3 for r in log))

    assert [version_of(r) for r in log] == [1, 2, 2, 2, 2, 3]


async def test_a_failing_order_holds_up_neither_other_orders_nor_other_hooks(
    client: GraphQLClient, dispatching: Start
) -> None:
    def fail_order_a(received: Received, log: list[Received]) -> int:
        return 500 if received.json["order_id"] == "order-a" else 200

    async with receiving(answer=fail_order_a) as failing, receiving() as healthy:
        await add_hook(url=failing.url)
        await add_hook(url=healthy.url)
        await dispatching(webhook_retry_base_seconds=60)
        await created(client, "order-a")
        await created(client, "order-b")
        await created(client, "order-b")

        await failing.wait_for(lambda log: [r.json["order_id"] for r in log].count("order-b") == 2)
        await healthy.wait_for(lambda log: len(log) == 3)

    assert [r.json["order_id"] for r in failing.log].count("order-a") == 1  # then retried later


async def test_retries_back_off_from_the_base_delay(
    client: GraphQLClient, dispatching: Start
) -> None:
    def fail_twice(received: Received, log: list[Received]) -> int:
        return 503 if len(log) <= 2 else 204

    async with receiving(answer=fail_twice) as receiver:
        await add_hook(url=receiver.url)
        await dispatching(webhook_retry_base_seconds=0.2)
        await created(client)
        log = await receiver.wait_for(lambda log: len(log) == 3)

    assert len({r.headers["event-delivery"] for r in log}) == 1
    (delivery,) = await HookDelivery.all()
    await eventually(lambda: _status_of(delivery.id, "delivered"), "the delivery recorded")
    attempts = await HookAttempt.all().order_by("id")
    assert [(a.attempt, a.status, a.response_status) for a in attempts] == [
        (1, "failed", 503),
        (2, "failed", 503),
        (3, "delivered", 204),
    ]
    # Each wait at least the smallest the schedule allows: half of base * 2^(n-1).
    gaps = [(b.created_at - a.created_at).total_seconds() for a, b in pairwise(attempts)]
    assert gaps[0] >= 0.1 - 0.01
    assert gaps[1] >= 0.2 - 0.01


async def _status_of(delivery_id: int, status: str) -> bool:
    row = await HookDelivery.get(id=delivery_id)
    return row.status == status


def test_retry_delays_double_with_up_to_half_taken_off_at_random() -> None:
    rng = random.Random(7)
    for attempt in range(1, 10):
        full = 10 * 2 ** (attempt - 1)
        delays = [retry_delay(attempt, 10, rng) for _ in range(200)]
        assert all(full / 2 <= delay <= full for delay in delays)
        assert max(delays) - min(delays) > full / 4  # jittered, not fixed


async def test_a_hook_failing_every_attempt_is_deactivated_saying_why(
    client: GraphQLClient, dispatching: Start
) -> None:
    async with receiving(answer=lambda received, log: 500) as receiver:
        hook = await add_hook(url=receiver.url)
        await dispatching(webhook_max_attempts=3)
        await created(client)
        await receiver.wait_for(lambda log: len(log) == 3)
        await eventually(lambda: _inactive(hook.id), "the hook deactivated")

        await created(client)

    hook = await Hook.get(id=hook.id)
    assert hook.deactivated_reason is not None
    assert "failed all 3 attempts" in hook.deactivated_reason
    assert "answered 500" in hook.deactivated_reason
    assert len(receiver.log) == 3
    # Deliveries are written for active hooks only.
    assert await HookDelivery.all().count() == 1


async def _three_attempts_logged() -> bool:
    return await HookAttempt.all().count() == 3


async def _inactive(hook_id: int) -> bool:
    return not (await Hook.get(id=hook_id)).active


async def test_a_hook_that_also_delivers_is_not_deactivated(
    client: GraphQLClient, dispatching: Start
) -> None:
    def fail_order_a(received: Received, log: list[Received]) -> int:
        return 500 if received.json["order_id"] == "order-a" else 200

    async with receiving(answer=fail_order_a) as receiver:
        hook = await add_hook(url=receiver.url)
        await dispatching(webhook_max_attempts=3, webhook_retry_base_seconds=0.1)
        await created(client, "order-a")
        await receiver.wait_for(lambda log: len(log) == 1)
        await created(client, "order-b")
        await eventually(
            lambda: HookDelivery.filter(order_id="order-a", status="failed").exists(),
            "order-a's delivery given up",
        )

    assert (await Hook.get(id=hook.id)).active


async def test_answers_arriving_together_are_each_recorded_under_their_own_lease(
    client: GraphQLClient, dispatching: Start
) -> None:
    """Outcomes are committed in batches: each still counts alone. One event, four hooks,
    all answered at once: delivered; refused on the last attempt (the hook deactivated);
    delivered but its lease taken by another process meanwhile (logged, the row left to
    that process); delivered after its hook was deleted (nothing logged)."""
    release = asyncio.Event()
    async with (
        receiving(hold=release) as fine,
        receiving(hold=release, answer=lambda received, log: 500) as refusing,
        receiving(hold=release) as overtaken,
        receiving(hold=release) as orphaned,
    ):
        hooks = {
            name: await add_hook(url=receiver.url)
            for name, receiver in (
                ("fine", fine),
                ("refusing", refusing),
                ("overtaken", overtaken),
                ("orphaned", orphaned),
            )
        }
        await dispatching(webhook_max_attempts=1)
        await created(client)
        for receiver in (fine, refusing, overtaken, orphaned):
            await receiver.wait_for(lambda log: len(log) == 1)
        await HookDelivery.filter(hook_id=hooks["overtaken"].id).update(
            lease_owner="another process"
        )
        await hooks["orphaned"].delete()
        await HookDelivery.filter(hook_id=hooks["orphaned"].id).delete()
        release.set()
        await eventually(_three_attempts_logged, "three attempts logged")

    async def delivery(name: str) -> HookDelivery:
        return await HookDelivery.get(hook_id=hooks[name].id)

    assert ((await delivery("fine")).status, (await delivery("fine")).attempts) == ("delivered", 1)
    assert (await delivery("refusing")).status == "failed"
    overtaken_row = await delivery("overtaken")
    assert (overtaken_row.status, overtaken_row.attempts) == ("pending", 0)
    assert overtaken_row.lease_owner == "another process"
    logged = {attempt.hook_id: attempt for attempt in await HookAttempt.all()}
    assert set(logged) == {hooks[name].id for name in ("fine", "refusing", "overtaken")}
    assert (logged[hooks["fine"].id].status, logged[hooks["refusing"].id].status) == (
        "delivered",
        "failed",
    )
    assert logged[hooks["overtaken"].id].status == "delivered"
    states = {hook.id: hook for hook in await Hook.all()}
    assert states[hooks["fine"].id].active and states[hooks["overtaken"].id].active
    refused = states[hooks["refusing"].id]
    assert not refused.active
    assert refused.deactivated_reason is not None
    assert "answered 500" in refused.deactivated_reason


async def test_deliveries_give_way_to_requests_that_need_the_whole_loop(
    client: GraphQLClient, dispatching: Start
) -> None:
    """While requests queue up, deliveries start at the budget's rate only (here one, and
    no more while the budget's clock stands still); once the requests are over, the rest
    go at once."""
    clock = Clock()
    requests = Requests(clock=clock)
    for _ in range(round(Budget.QUEUED)):
        requests.begin()
    # A loop on the CPU all the time; a delivery costs 10 ms: the least rate, one a second.
    budget = Budget(0.001, requests, clock=clock, cpu=clock, cost=0.01)
    budget.allowance()
    clock.now += Budget.SAMPLE_SECONDS
    assert budget.allowance() == 1
    assert budget.rate == Budget.MIN_RATE
    waited = REGISTRY.get_sample_value("order_events_webhook_giving_way_seconds_total") or 0
    async with receiving() as receiver:
        await add_hook(url=receiver.url)
        for n in range(5):
            await created(client, order_id=f"order-{n}")
        await dispatching(budget)
        await receiver.wait_for(lambda log: len(log) == 1)
        await asyncio.sleep(0.3)
        assert len(receiver.log) == 1
        # A second's wait for the next one's allowance, counted as it begins.
        counted = REGISTRY.get_sample_value("order_events_webhook_giving_way_seconds_total")
        assert counted is not None and counted - waited >= 1
        while requests.in_flight:
            requests.end()
        clock.now += 1.0
        await receiver.wait_for(lambda log: len(log) == 5)
    assert len({body["order_id"] for body in receiver.events()}) == 5


class Clock:
    """A clock that moves when the test moves it."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


async def test_each_attempt_is_logged_with_request_and_response(
    client: GraphQLClient, dispatching: Start
) -> None:
    async with receiving() as receiver:
        hook = await add_hook(url=receiver.url)
        await dispatching()
        await created(client)
        (received,) = await receiver.wait_for(lambda log: len(log) == 1)
        await eventually(lambda: HookAttempt.exists(), "the attempt logged")

    (attempt,) = await HookAttempt.all()
    assert (attempt.hook_id, attempt.attempt, attempt.status) == (hook.id, 1, "delivered")
    assert (attempt.response_status, attempt.response_body) == (200, "thanks")
    assert attempt.request_body == received.body.decode()
    assert attempt.duration_ms >= 0
    assert attempt.error is None


async def test_a_host_resolving_to_loopback_is_refused_at_delivery(
    client: GraphQLClient, dispatching: Start
) -> None:
    async with receiving() as receiver:
        # Stored as if it had resolved elsewhere when it was created: DNS can change.
        await add_hook(url=f"http://localhost:{receiver.port}/hook")
        await dispatching(webhook_allow_private_networks=False)
        await created(client)
        await eventually(lambda: HookAttempt.exists(), "the attempt logged")

    attempt = await HookAttempt.all().order_by("id").first()
    assert attempt is not None
    assert attempt.status == "failed"
    assert attempt.response_status is None
    assert attempt.error is not None
    assert "localhost resolves to" in attempt.error
    assert "loopback" in attempt.error
    assert receiver.log == []


def _counted(outcome: str) -> float:
    return (
        REGISTRY.get_sample_value("order_events_webhook_attempts_total", {"outcome": outcome})
        or 0.0
    )


async def test_attempts_are_counted_by_outcome_and_deliveries_lag_observed(
    client: GraphQLClient, dispatching: Start
) -> None:
    def fail_once(received: Received, log: list[Received]) -> int:
        return 503 if len(log) <= 1 else 204

    before = {outcome: _counted(outcome) for outcome in ("delivered", "refused")}
    lags = REGISTRY.get_sample_value("order_events_webhook_lag_seconds_count") or 0.0
    async with receiving(answer=fail_once) as receiver:
        await add_hook(url=receiver.url)
        await dispatching(webhook_retry_base_seconds=0.05)
        await created(client)
        await receiver.wait_for(lambda log: len(log) == 2)
        (delivery,) = await HookDelivery.all()
        await eventually(lambda: _status_of(delivery.id, "delivered"), "the delivery recorded")

    assert _counted("refused") == before["refused"] + 1
    assert _counted("delivered") == before["delivered"] + 1
    assert REGISTRY.get_sample_value("order_events_webhook_lag_seconds_count") == lags + 1


async def test_an_unreachable_destination_is_counted_as_such(
    client: GraphQLClient, dispatching: Start
) -> None:
    before = {outcome: _counted(outcome) for outcome in ("unreachable", "delivered")}
    async with receiving() as receiver:
        await add_hook(url=f"http://localhost:{receiver.port}/hook")
        await dispatching(webhook_allow_private_networks=False)
        await created(client)
        await eventually(lambda: HookAttempt.exists(), "the attempt logged")

    # Retried meanwhile, perhaps: each attempt counts.
    assert _counted("unreachable") >= before["unreachable"] + 1
    assert _counted("delivered") == before["delivered"]


async def test_deliveries_received_are_purged_after_the_retention_and_others_kept(
    client: GraphQLClient, dispatching: Start
) -> None:
    def fail_order_b(received: Received, log: list[Received]) -> int:
        return 503 if received.json["order_id"] == "order-b" else 204

    async with receiving(answer=fail_order_b) as receiver:
        await add_hook(url=receiver.url)
        await dispatching(webhook_retry_base_seconds=60)
        await created(client, order_id="order-a")
        await created(client, order_id="order-b")
        await receiver.wait_for(lambda log: len(log) == 2)
        await eventually(_two_attempts_logged, "both attempts logged")
    old = datetime.now(UTC) - timedelta(days=31)
    await HookDelivery.all().update(created_at=old)
    await HookAttempt.all().update(created_at=old)
    received = await HookDelivery.get(order_id="order-a")
    assert received.status == "delivered"

    assert await purge_delivered(30 * 86400) == 3  # the delivery received, both attempts

    (kept,) = await HookDelivery.all()
    assert (kept.order_id, kept.status) == ("order-b", "pending")
    assert await HookAttempt.all().count() == 0
    assert await purge_delivered(30 * 86400) == 0


async def test_the_purge_deletes_up_to_the_first_row_kept_and_what_follows_it_later(
    client: GraphQLClient,
) -> None:
    """Rows go by a range of ids, up to the first one not old enough: an old row written
    after a newer one (an attempt logged late) goes once that one is old too."""
    now = datetime.now(UTC)
    for n, days in enumerate([40, 35, 1, 31]):
        await HookAttempt.create(
            attempt_id=str(uuid.uuid4()),
            delivery_id=n,
            hook_id=1,
            attempt=1,
            created_at=now - timedelta(days=days),
            status="delivered",
            duration_ms=1,
            request_headers="{}",
            request_body="{}",
        )

    assert await purge_delivered(30 * 86400) == 2
    assert sorted(await HookAttempt.all().values_list("delivery_id", flat=True)) == [2, 3]
    await HookAttempt.filter(delivery_id=2).update(created_at=now - timedelta(days=32))
    assert await purge_delivered(30 * 86400) == 2
    assert await HookAttempt.all().count() == 0


async def _two_attempts_logged() -> bool:
    return await HookAttempt.all().count() == 2


async def test_a_slow_claim_has_the_outbox_analyzed_on_postgresql(
    client: GraphQLClient, dispatching: Start, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL plans the claim by the outbox's statistics; stale ones (a backlog on a
    table they say is nearly all delivered) make it check every pending row. A claim slower
    than the bound has the table analyzed (here every claim is "slow")."""
    if not database_url.startswith("postgres"):
        pytest.skip("statistics are PostgreSQL's")
    monkeypatch.setattr(Statistics, "SLOW_CLAIM_SECONDS", 0.0)
    before = await _times_analyzed()
    async with receiving() as receiver:
        await add_hook(url=receiver.url)
        await dispatching()
        await created(client)
        await receiver.wait_for(lambda log: len(log) == 1)

        async def analyzed_again() -> bool:
            return await _times_analyzed() > before

        await eventually(analyzed_again, "hook_deliveries analyzed")


async def _times_analyzed() -> int:
    """How often hook_deliveries was analyzed, by ANALYZE (not autovacuum)."""
    connection = connections.get("default")
    await connection.execute_script("SELECT pg_stat_clear_snapshot()")
    _, rows = await connection.execute_query(
        "SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'hook_deliveries'"
    )
    return int(rows[0]["analyze_count"]) if rows else 0
