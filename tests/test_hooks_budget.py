"""The delivery budget (app.hooks.budget) on clocks of the test's own: no limit without
requests; while requests queue up, the share of the loop; while they do not, a rate that
doubles up to the loop's worth; the cost per delivery measured only while no request is
answered."""

from __future__ import annotations

import pytest

from app.hooks.budget import Budget
from app.load import REQUESTS, Requests
from tests.conftest import GraphQLClient
from tests.helpers import ACCOUNT, ORDER, created


class Loop:
    """A loop's clocks: time, and its thread's CPU time, which requests use at ``busy`` of
    the time and each delivery started at ``cost``; and its requests."""

    def __init__(self, busy: float, cost: float) -> None:
        self.now = 1000.0
        self.used = 0.0
        self.busy = busy
        self.cost = cost
        self.requests = Requests(clock=self.clock)

    def answering(self, count: int) -> None:
        """Makes ``count`` requests in flight from now on."""
        while self.requests.in_flight < count:
            self.requests.begin()
        while self.requests.in_flight > count:
            self.requests.end()

    def clock(self) -> float:
        return self.now

    def cpu(self) -> float:
        return self.used

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.used += seconds * self.busy


def started_over(budget: Budget, loop: Loop, seconds: float, step: float = 0.001) -> int:
    """Deliveries started over ``seconds``, taking each allowance as it comes."""
    started = 0
    for _ in range(round(seconds / step)):
        allowed = budget.allowance()
        assert allowed is not None
        if allowed:
            budget.started(allowed)
            started += allowed
            loop.used += allowed * loop.cost
        loop.advance(step)
    return started


def budget_of(loop: Loop, share: float = 0.05) -> Budget:
    return Budget(share, loop.requests, clock=loop.clock, cpu=loop.cpu, cost=loop.cost)


def settled(busy: float, cost: float, answering: int) -> tuple[Loop, Budget]:
    """A loop with ``answering`` requests in flight, and its budget after a second of it."""
    loop = Loop(busy=busy, cost=cost)
    loop.answering(answering)
    budget = budget_of(loop)
    started_over(budget, loop, 1.0)
    return loop, budget


def test_with_no_request_answered_deliveries_have_no_limit() -> None:
    loop = Loop(busy=1.0, cost=0.002)
    budget = budget_of(loop)
    for _ in range(100):
        assert budget.allowance() is None
        budget.started(50)
        loop.advance(0.01)


@pytest.mark.parametrize("busy", [1.0, 0.6])
def test_requests_that_queue_up_leave_deliveries_their_share_of_the_loop(busy: float) -> None:
    loop, budget = settled(busy, 0.002, 32)
    # 0.05 of what the loop gets (its CPU time, with the deliveries'), at 2 ms a delivery.
    expected = 10.0 * 0.05 * (busy + 0.05) / 0.002
    assert started_over(budget, loop, 10.0) == pytest.approx(expected, rel=0.1)


def test_queued_requests_that_leave_the_loop_idle_leave_deliveries_up_to_the_idle_target() -> None:
    """Requests queued on a slow database, not on the CPU: deliveries take the loop's idle
    time up to half of it, the share being less."""
    loop, budget = settled(0.2, 0.002, 32)
    # (0.5 - 0.2) of the loop at 2 ms a delivery: 150 a second.
    assert started_over(budget, loop, 10.0) == pytest.approx(1500, rel=0.1)


def test_requests_that_do_not_queue_up_leave_deliveries_a_rate_doubling_to_the_loop() -> None:
    loop, budget = settled(0.7, 0.002, 32)
    # The share of what the loop is on the CPU, the deliveries' own time included:
    # r = 0.05 (0.7 + 0.002 r) / 0.002.
    share_rate = 0.05 * 0.7 / 0.002 / (1 - 0.05)
    assert budget.rate == pytest.approx(share_rate, rel=0.1)
    loop.answering(2)
    # About 18 a second doubled each 0.1 s reaches the loop's worth (500) within 0.5 s.
    started_over(budget, loop, 0.65)
    assert budget.rate == 500
    assert started_over(budget, loop, 10.0) == pytest.approx(5000, rel=0.1)
    # Queued again: back to the share within a few samples (the first ones still count
    # the loop time that the deliveries before took).
    loop.answering(32)
    started_over(budget, loop, 1.0)
    assert budget.rate == pytest.approx(share_rate, rel=0.1)


def test_while_requests_queue_up_deliveries_are_claimed_a_batch_at_a_time() -> None:
    loop, budget = settled(1.0, 0.001, 32)
    loop.advance(1.0)
    # 50 a second, claimed 0.25 s' worth at a time, however long the wait was.
    assert budget.allowance() == 12
    budget.started(12)
    assert budget.allowance() == 0
    wait = budget.wait_seconds()
    assert wait == pytest.approx(0.24)
    loop.advance(wait / 2)
    assert budget.allowance() == 0
    loop.advance(wait / 2 + 1e-6)
    assert budget.allowance() == 12


def test_while_requests_do_not_queue_up_one_delivery_need_not_wait_for_others() -> None:
    loop, budget = settled(0.2, 0.001, 1)
    assert budget.rate == 1000
    budget.started(budget.allowance() or 0)
    assert budget.allowance() == 0
    assert budget.wait_seconds() <= 0.001
    loop.advance(0.001)
    assert budget.allowance() == 1


def test_a_request_ended_moments_ago_still_counts_as_busy() -> None:
    loop, budget = settled(1.0, 0.002, 1)
    loop.answering(0)
    loop.advance(Budget.RECENT_SECONDS / 2)
    assert budget.allowance() is not None
    loop.advance(Budget.RECENT_SECONDS)
    assert budget.allowance() is None


def test_the_cost_is_measured_while_no_request_is_answered() -> None:
    loop = Loop(busy=0.0, cost=0.0015)
    budget = Budget(0.05, loop.requests, clock=loop.clock, cpu=loop.cpu)
    assert budget.cost == Budget.DEFAULT_COST_SECONDS
    for _ in range(Budget.CALIBRATION_DELIVERIES):
        loop.used += loop.cost
        budget.finished()
        loop.advance(0.002)
        budget.allowance()
    assert budget.cost == pytest.approx(0.0015)


def test_a_request_begun_meanwhile_spoils_the_measurement() -> None:
    loop = Loop(busy=0.0, cost=0.0015)
    budget = Budget(0.05, loop.requests, clock=loop.clock, cpu=loop.cpu)
    for n in range(Budget.CALIBRATION_DELIVERIES):
        if n == Budget.CALIBRATION_DELIVERIES - 1:
            # A request came and went: its CPU time is in the stretch.
            loop.answering(1)
            loop.answering(0)
            loop.used += 0.05
        loop.used += loop.cost
        budget.finished()
        loop.advance(0.002)
        budget.allowance()
    assert budget.cost == Budget.DEFAULT_COST_SECONDS


async def test_the_front_door_counts_every_routes_requests(client: GraphQLClient) -> None:
    """The count the budget reads: each request once, whichever route answers it (the
    compiled and the general GraphQL path, the REST events, Get Token), none left in
    flight once answered, refused ones too."""
    before = REQUESTS.started
    await created(client)
    general = await client.http.post("/graphql", json={"query": "{ __typename }"})
    rest = await client.http.get(
        f"/v1/accounts/{ACCOUNT}/shopping/orders/{ORDER}/events",
        headers={"authorization": f"Bearer {client.default_token}"},
    )
    token = await client.http.post(f"/v1/accounts/{ACCOUNT}/auth/token", json={})
    assert (general.status_code, rest.status_code, token.status_code) == (200, 200, 401)
    assert REQUESTS.started - before == 4
    assert REQUESTS.in_flight == 0
