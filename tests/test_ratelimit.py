"""Per-caller rate limits: the token buckets themselves, then what a caller over its limit
sees over HTTP (429, RATE_LIMITED, a retry-after hint)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from app.errors import RateLimited
from app.main import create_app
from app.ratelimit import RateLimiter
from app.settings import Settings, SettingsError
from tests.conftest import ClientWith, GraphQLClient, Mint
from tests.helpers import error_code, only_error

READ = '{ orderEvents(accountId: "T12345678", orderId: "order-1") { state } }'


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(per_second: float = 2, burst: int = 3, **options: Any) -> tuple[RateLimiter, Clock]:
    clock = Clock()
    return RateLimiter(per_second, burst, clock=clock, **options), clock


def refusal(limits: RateLimiter, caller: str) -> RateLimited:
    with pytest.raises(RateLimited) as raised:
        limits.take(caller)
    return raised.value


# The buckets.


def test_a_burst_goes_through() -> None:
    limits, _ = limiter(burst=3)

    for _ in range(3):
        limits.take("kitchen")


def test_one_more_than_the_burst_is_refused() -> None:
    limits, _ = limiter(burst=3)
    for _ in range(3):
        limits.take("kitchen")

    refusal(limits, "kitchen")


def test_the_refusal_says_when_to_retry() -> None:
    limits, _ = limiter(per_second=4, burst=1)
    limits.take("kitchen")

    assert refusal(limits, "kitchen").retry_after == 0.25


def test_the_bucket_refills_at_the_rate() -> None:
    limits, clock = limiter(per_second=4, burst=1)
    limits.take("kitchen")
    clock.now += 0.25

    limits.take("kitchen")


def test_refused_requests_do_not_use_up_the_bucket() -> None:
    limits, clock = limiter(per_second=4, burst=1)
    limits.take("kitchen")
    for _ in range(10):
        refusal(limits, "kitchen")
    clock.now += 0.25

    limits.take("kitchen")


def test_a_request_given_back_can_be_taken_again_up_to_the_burst() -> None:
    limits, _ = limiter(per_second=0.001, burst=2)
    limits.take("kitchen")
    limits.take("kitchen")

    limits.give_back("kitchen")
    limits.give_back("kitchen")
    limits.give_back("kitchen")  # past the burst: no more than it
    limits.take("kitchen")
    limits.take("kitchen")

    refusal(limits, "kitchen")


def test_callers_have_buckets_of_their_own() -> None:
    limits, _ = limiter(burst=1)
    limits.take("kitchen")

    limits.take("courier")


def test_an_idle_bucket_is_dropped_once_full_again() -> None:
    limits, clock = limiter(per_second=2, burst=3)
    limits.take("kitchen")
    clock.now += 1.5
    limits.take("courier")

    assert len(limits) == 1


def test_the_number_of_buckets_is_bounded() -> None:
    limits, _ = limiter(max_callers=100)

    for caller in range(1000):
        limits.take(str(caller))

    assert len(limits) == 100


# Over HTTP.


async def refused_once(client: GraphQLClient, burst: int) -> httpx.Response:
    """Spends ``burst`` requests, then returns the response to one more."""
    for _ in range(burst):
        assert (await client.post(READ)).status_code == 200
    return await client.post(READ)


async def test_over_the_limit_is_429(client_with: ClientWith) -> None:
    client = client_with(rate_limit_per_second=0.001, rate_limit_burst=2)

    response = await refused_once(client, 2)

    assert response.status_code == 429


async def test_over_the_limit_is_rate_limited_with_a_retry_after_hint(
    client_with: ClientWith,
) -> None:
    client = client_with(rate_limit_per_second=0.5, rate_limit_burst=1)

    started = time.monotonic()
    response = await refused_once(client, 1)
    elapsed = time.monotonic() - started

    # The next token comes 2 s after the first request was counted: the hint is what is left
    # of those 2 s (within the hint's millisecond rounding), however slow the machine was.
    assert error_code(response.json()) == "RATE_LIMITED"
    retry_after = only_error(response.json())["extensions"]["retryAfter"]
    assert 2 - elapsed - 0.001 <= retry_after <= 2


async def test_over_the_limit_carries_a_retry_after_header(client_with: ClientWith) -> None:
    client = client_with(rate_limit_per_second=0.4, rate_limit_burst=1)

    response = await refused_once(client, 1)

    assert response.headers["retry-after"] == "3"


async def test_another_caller_is_not_limited(client_with: ClientWith, mint: Mint) -> None:
    client = client_with(rate_limit_per_second=0.001, rate_limit_burst=1)
    await refused_once(client, 1)

    response = await client.post(READ, token=mint(sub="courier-7"))

    assert response.status_code == 200


@pytest.fixture
async def anonymous_clients(
    client: GraphQLClient, other_settings: Callable[..., Settings]
) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """Clients from two addresses, to one app that allows one request each."""
    application = create_app(other_settings(rate_limit_per_second=0.001, rate_limit_burst=1))
    clients = {
        address: httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application, client=(address, 4000)),
            base_url="http://test",
        )
        for address in ("192.0.2.1", "192.0.2.2")
    }
    yield clients
    for http in clients.values():
        await http.aclose()


async def test_callers_without_a_token_are_limited_by_address(
    anonymous_clients: dict[str, httpx.AsyncClient],
) -> None:
    first = anonymous_clients["192.0.2.1"]
    await first.post("/graphql", json={"query": "{ __typename }"})

    response = await first.post("/graphql", json={"query": "{ __typename }"})

    assert response.status_code == 429


async def test_another_address_is_not_limited(
    anonymous_clients: dict[str, httpx.AsyncClient],
) -> None:
    await anonymous_clients["192.0.2.1"].post("/graphql", json={"query": "{ __typename }"})

    response = await anonymous_clients["192.0.2.2"].post(
        "/graphql", json={"query": "{ __typename }"}
    )

    assert response.status_code == 200


async def test_a_forged_token_does_not_spend_its_subjects_requests(
    client_with: ClientWith, mint: Mint
) -> None:
    client = client_with(rate_limit_per_second=0.001, rate_limit_burst=1)
    genuine = mint(sub="kitchen-1")
    header, payload, _ = genuine.split(".")
    await client.post(READ, token=f"{header}.{payload}.forged")

    response = await client.post(READ, token=genuine)

    assert response.status_code == 200


async def test_a_rate_of_zero_limits_nothing(client_with: ClientWith) -> None:
    client = client_with(rate_limit_per_second=0, rate_limit_burst=1)

    statuses = {(await client.post(READ)).status_code for _ in range(5)}

    assert statuses == {200}


# Settings.


def test_the_rate_limit_is_on_by_default() -> None:
    settings = Settings.from_env({})

    assert (settings.rate_limit_per_second, settings.rate_limit_burst) == (50, 100)


def test_a_rate_of_zero_in_the_environment_turns_it_off() -> None:
    assert Settings.from_env({"RATE_LIMIT_PER_SECOND": "0"}).rate_limit_per_second == 0


@pytest.mark.parametrize(
    "env",
    [
        {"RATE_LIMIT_PER_SECOND": "-1"},
        {"RATE_LIMIT_PER_SECOND": "nan"},
        {"RATE_LIMIT_BURST": "0"},
    ],
)
def test_a_rate_limit_setting_out_of_range_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env(env)
