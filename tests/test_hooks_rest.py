"""Managing hooks over REST (app.hooks.rest) in Dintero's Hooks API shape: the subscription,
its scopes, the destinations refused at creation, the deliveries log and redelivery."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.models import Hook, HookDelivery
from tests.conftest import ClientWith, GraphQLClient, Mint, Start
from tests.helpers import ACCOUNT, OTHER_ACCOUNT, created, eventually
from tests.receiver import Received, Receiver, receiving

BASE = f"/v1/accounts/{ACCOUNT}/hooks/subscriptions"
HOOK_SCOPES = "write:hooks read:hooks"


def subscription(url: str = "https://hooks.example/orders", **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "config": {
            "url": url,
            "content_type": "application/json",
            "secret": {"type": "HMAC-SHA1", "value": "merchant secret"},
        },
        "events": ["shopping_order_event_add"],
        "active": True,
    }
    body.update(changes)
    return body


class Hooks:
    """The hooks API as a merchant's back end calls it."""

    def __init__(self, http: httpx.AsyncClient, token: str) -> None:
        self.http = http
        self.token = token

    def headers(self, token: str | None) -> dict[str, str]:
        return {"authorization": f"Bearer {token or self.token}"}

    async def call(
        self, method: str, path: str = "", body: Any = None, token: str | None = None, **params: Any
    ) -> httpx.Response:
        return await self.http.request(
            method, BASE + path, json=body, params=params, headers=self.headers(token)
        )

    async def create(self, body: Any = None, token: str | None = None) -> httpx.Response:
        return await self.call("POST", "", subscription() if body is None else body, token)


@pytest.fixture
def hooks(client_with: ClientWith, mint: Mint) -> Hooks:
    """Against an app that lets hooks reach loopback over plain http, as tests' receivers are."""
    app = client_with(webhook_allow_http=True, webhook_allow_private_networks=True)
    return Hooks(app.http, mint(HOOK_SCOPES))


@pytest.fixture
def strict_hooks(client: GraphQLClient, mint: Mint) -> Hooks:
    """Against an app with the default rules: https only, public addresses only."""
    return Hooks(client.http, mint(HOOK_SCOPES))


def fields_of(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    return {item["field"]: item["message"] for item in error["errors"]}


async def test_creating_answers_the_subscription_without_its_secret(hooks: Hooks) -> None:
    response = await hooks.create()

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["config"] == {
        "url": "https://hooks.example/orders",
        "content_type": "application/json",
        "secret": {"type": "HMAC-SHA1"},
    }
    assert (body["events"], body["active"], body["account_id"]) == (
        ["shopping_order_event_add"],
        True,
        ACCOUNT,
    )
    assert "merchant secret" not in response.text
    assert (await Hook.get(hook_id=body["id"])).secret == "merchant secret"
    listed = await hooks.call("GET")
    assert listed.json() == [body]
    assert (await hooks.call("GET", f"/{body['id']}")).json() == body


async def test_creating_queues_a_ping(hooks: Hooks) -> None:
    response = await hooks.create()

    (delivery,) = await HookDelivery.all()
    hook = await Hook.get(hook_id=response.json()["id"])
    assert (delivery.hook_id, delivery.event, delivery.status) == (hook.id, "ping", "pending")


async def test_bad_members_are_named_at_once(hooks: Hooks) -> None:
    response = await hooks.create(
        {
            "config": {"url": 5, "secret": {"value": 3, "kind": "x"}},
            "events": "shopping_order_event_add",
            "colour": "red",
        }
    )

    assert set(fields_of(response)) == {
        "colour",
        "config.url",
        "config.secret.kind",
        "config.secret.value",
        "events",
    }


async def test_values_are_judged_by_the_rules(hooks: Hooks) -> None:
    body = subscription(events=["order_shipped"])
    body["config"]["content_type"] = "text/xml"
    body["config"]["secret"] = {"type": "HMAC-MD5", "value": ""}

    response = await hooks.create(body)

    assert set(fields_of(response)) == {
        "config.content_type",
        "config.secret.type",
        "config.secret.value",
        "events",
    }


async def test_a_secret_is_required_to_create(hooks: Hooks) -> None:
    body = subscription()
    del body["config"]["secret"]

    assert "config.secret" in fields_of(await hooks.create(body))


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://hooks.example/orders", "must be an https URL"),
        ("https://127.0.0.1/hook", "127.0.0.1 is a loopback address"),
        ("https://[::1]:8443/hook", "::1 is a loopback address"),
        ("https://10.1.2.3/hook", "10.1.2.3 is a private address"),
        ("https://169.254.169.254/latest/meta-data", "is a link-local address"),
        ("https://224.0.0.1/hook", "224.0.0.1 is a multicast address"),
        ("https://100.64.0.1/hook", "100.64.0.1 is not a public address"),
        ("https://0.0.0.0/hook", "0.0.0.0 is an unspecified address"),
        ("https://[::ffff:127.0.0.1]/hook", "is a loopback address"),
        ("https://localhost/hook", ", a loopback address"),
        ("https://user:pw@hooks.example/", "must not carry credentials"),
        ("ftp://hooks.example/", "must be an https URL"),
        ("https:///no-host", "must name a host"),
    ],
)
async def test_destinations_a_hook_may_not_reach_are_refused(
    strict_hooks: Hooks, url: str, said: str
) -> None:
    response = await strict_hooks.create(subscription(url))

    message = fields_of(response)["config.url"]
    assert said in message
    assert await Hook.all().count() == 0


async def test_a_public_address_is_allowed(strict_hooks: Hooks) -> None:
    response = await strict_hooks.create(subscription("https://93.184.215.14/hook"))

    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("scope", "method", "path"),
    [
        ("read:hooks", "POST", ""),
        ("write:hooks", "GET", ""),
        ("write:shopping read:shopping", "GET", ""),
        ("admin:shopping", "POST", ""),
    ],
)
async def test_hooks_need_their_scopes(
    hooks: Hooks, mint: Mint, scope: str, method: str, path: str
) -> None:
    response = await hooks.call(method, path, subscription(), token=mint(scope))

    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "FORBIDDEN"


async def test_admin_hooks_may_do_everything(hooks: Hooks, mint: Mint) -> None:
    admin = mint("admin:hooks")
    created_hook = await hooks.create(token=admin)
    listed = await hooks.call("GET", token=admin)

    assert (created_hook.status_code, listed.status_code) == (201, 200)


async def test_another_accounts_hooks_are_forbidden(hooks: Hooks, mint: Mint) -> None:
    response = await hooks.call("GET", token=mint(HOOK_SCOPES, account=OTHER_ACCOUNT))

    assert response.status_code == 403


async def test_without_a_token_the_answer_is_401(hooks: Hooks) -> None:
    response = await hooks.http.get(BASE)

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_an_unknown_hook_is_404(hooks: Hooks) -> None:
    for method in ("GET", "PUT", "DELETE"):
        response = await hooks.call(method, "/no-such-hook", subscription())
        assert response.status_code == 404, (method, response.text)
    assert (await hooks.call("POST", "/no-such-hook/ping")).status_code == 404


async def test_another_method_is_405_with_allow(hooks: Hooks) -> None:
    response = await hooks.call("PATCH", "", subscription())

    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"


async def test_put_replaces_the_subscription_keeping_an_unsent_secret(hooks: Hooks) -> None:
    hook_id = (await hooks.create()).json()["id"]
    body = subscription("https://other.example/hook", active=False)
    del body["config"]["secret"]

    response = await hooks.call("PUT", f"/{hook_id}", body)

    assert response.status_code == 200, response.text
    assert (response.json()["config"]["url"], response.json()["active"]) == (
        "https://other.example/hook",
        False,
    )
    assert (await Hook.get(hook_id=hook_id)).secret == "merchant secret"


async def test_delete_removes_the_hook_and_its_deliveries(hooks: Hooks) -> None:
    hook_id = (await hooks.create()).json()["id"]

    response = await hooks.call("DELETE", f"/{hook_id}")

    assert response.status_code == 204
    assert (await hooks.call("GET", f"/{hook_id}")).status_code == 404
    assert await HookDelivery.all().count() == 0


async def test_reactivating_a_deactivated_hook_sends_what_it_failed(
    hooks: Hooks, client: GraphQLClient, dispatching: Start
) -> None:
    healthy = False

    def answer(received: Received, log: list[Received]) -> int:
        return 200 if healthy else 500

    async with receiving(answer=answer) as receiver:
        hook_id = (await hooks.create(subscription(receiver.url))).json()["id"]
        await created(client)
        await dispatching(webhook_max_attempts=2)
        await eventually(lambda: _inactive(hook_id), "the hook deactivated")
        deactivated = (await hooks.call("GET", f"/{hook_id}")).json()
        healthy = True
        since = len(receiver.log)

        body = subscription(receiver.url)
        del body["config"]["secret"]
        response = await hooks.call("PUT", f"/{hook_id}", body)
        # Whatever was failed or still pending when it was deactivated.
        wanted = {"ping", "shopping_order_event_add"}
        await receiver.wait_for(lambda log: {r.json["event"] for r in log[since:]} == wanted)

    assert "failed all 2 attempts" in deactivated["deactivated_reason"]
    assert response.json()["active"] is True
    assert "deactivated_reason" not in response.json()


async def _inactive(hook_id: str) -> bool:
    return not (await Hook.get(hook_id=hook_id)).active


async def test_the_deliveries_log_pages_newest_first_and_shows_request_and_response(
    hooks: Hooks, client: GraphQLClient, dispatching: Start
) -> None:
    async with receiving() as receiver:
        hook_id = await _pinged_and_delivered_once(hooks, client, dispatching, receiver)

        first = await hooks.call("GET", f"/{hook_id}/deliveries", limit=1)
        (newest,) = first.json()
        after = first.headers["link"].split("starting_after=")[1].split(">")[0]
        second = await hooks.call("GET", f"/{hook_id}/deliveries", limit=1, starting_after=after)
        (oldest,) = second.json()
        detail = await hooks.call("GET", f"/{hook_id}/deliveries/{newest['id']}")

    assert set(newest) == {
        "id",
        "event_delivery",
        "event",
        "order_id",
        "created_at",
        "status",
        "attempt",
        "response_status",
        "duration_ms",
    }
    assert (newest["event"], newest["status"], newest["attempt"], newest["response_status"]) == (
        "shopping_order_event_add",
        "delivered",
        1,
        200,
    )
    assert oldest["event"] == "ping"
    assert "link" not in second.headers
    body = detail.json()
    sent = receiver.log[1]
    assert body["request"]["body"] == sent.body.decode()
    assert body["request"]["headers"]["event-delivery"] == newest["event_delivery"]
    assert body["response"] == {
        "status": 200,
        "headers": body["response"]["headers"],
        "body": "thanks",
    }


async def _pinged_and_delivered_once(
    hooks: Hooks, client: GraphQLClient, dispatching: Start, receiver: Receiver
) -> str:
    """A hook to ``receiver``, its ping and one event's delivery received and logged; its id."""
    hook_id: str = (await hooks.create(subscription(receiver.url))).json()["id"]
    await dispatching()
    await created(client)
    await receiver.wait_for(lambda log: len(log) == 2)
    await eventually(lambda: _logged(hooks, hook_id, 2), "both attempts logged")
    return hook_id


async def _logged(hooks: Hooks, hook_id: str, count: int) -> bool:
    response = await hooks.call("GET", f"/{hook_id}/deliveries")
    return len(response.json()) == count


async def test_redeliver_sends_the_same_delivery_again(
    hooks: Hooks, client: GraphQLClient, dispatching: Start
) -> None:
    async with receiving() as receiver:
        hook_id = await _pinged_and_delivered_once(hooks, client, dispatching, receiver)
        (newest, _) = (await hooks.call("GET", f"/{hook_id}/deliveries")).json()

        response = await hooks.call("POST", f"/{hook_id}/deliveries/{newest['id']}/redeliver")
        log = await receiver.wait_for(lambda log: len(log) == 3)

    assert response.status_code == 204
    assert log[2].headers["event-delivery"] == newest["event_delivery"]
    assert log[2].body == log[1].body


async def test_ping_sends_a_ping(hooks: Hooks, dispatching: Start) -> None:
    async with receiving() as receiver:
        hook_id = (await hooks.create(subscription(receiver.url))).json()["id"]
        await dispatching()

        response = await hooks.call("POST", f"/{hook_id}/ping")
        log = await receiver.wait_for(lambda log: len(log) == 2)

    assert response.status_code == 204
    assert [r.json["event"] for r in log] == ["ping", "ping"]
    assert log[0].json["hook_id"] == hook_id
