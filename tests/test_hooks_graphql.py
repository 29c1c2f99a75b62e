"""Hooks in GraphQL (app.api.hooks): the same service as the REST Hooks API, with GraphQL's
errors."""

from __future__ import annotations

from typing import Any

from app.models import Hook, HookDelivery
from tests.conftest import ClientWith, GraphQLClient, Mint, Start
from tests.helpers import ACCOUNT, bad_fields, created, error_code, eventually
from tests.receiver import receiving

HOOK_FIELDS = """id accountId active events createdBy deactivatedReason
    config { url contentType secretType }"""
CREATE = f"""
mutation Create($accountId: ID!, $subscription: HookSubscriptionInput!) {{
  createHookSubscription(accountId: $accountId, subscription: $subscription) {{ {HOOK_FIELDS} }}
}}"""
UPDATE = f"""
mutation Update($accountId: ID!, $id: ID!, $subscription: HookSubscriptionInput!) {{
  updateHookSubscription(accountId: $accountId, id: $id, subscription: $subscription) {{
    {HOOK_FIELDS}
  }}
}}"""
LIST = f"""query List($accountId: ID!) {{
  hookSubscriptions(accountId: $accountId) {{ {HOOK_FIELDS} }}
}}"""
DELETE = """mutation Delete($accountId: ID!, $id: ID!) {
  deleteHookSubscription(accountId: $accountId, id: $id) }"""
DELIVERIES = """query Deliveries($accountId: ID!, $hookId: ID!) {
  hookDeliveries(accountId: $accountId, hookId: $hookId, first: 10) {
    deliveries { id eventDelivery event status attempt responseStatus request { headers body }
                 response { status body } }
    hasNextPage endCursor
  }
}"""


def subscription(url: str = "https://hooks.example/orders", **config: Any) -> dict[str, Any]:
    return {
        "config": {"url": url, "secret": {"value": "merchant secret"}, **config},
        "events": ["shopping_order_event_add"],
    }


def hooks_client(
    client_with: ClientWith, mint: Mint, scope: str = "write:hooks read:hooks"
) -> GraphQLClient:
    app = client_with(webhook_allow_http=True, webhook_allow_private_networks=True)
    app.default_token = mint(scope)
    return app


async def test_a_hook_is_created_listed_replaced_and_deleted(
    client_with: ClientWith, mint: Mint
) -> None:
    gql = hooks_client(client_with, mint)

    made = await gql.execute(CREATE, {"accountId": ACCOUNT, "subscription": subscription()})
    hook = made["data"]["createHookSubscription"]
    listed = await gql.execute(LIST, {"accountId": ACCOUNT})
    replaced = await gql.execute(
        UPDATE,
        {
            "accountId": ACCOUNT,
            "id": hook["id"],
            "subscription": {
                "config": {"url": "https://other.example/"},
                "events": ["shopping_order_event_add"],
                "active": False,
            },
        },
    )
    deleted = await gql.execute(DELETE, {"accountId": ACCOUNT, "id": hook["id"]})

    assert hook["config"] == {
        "url": "https://hooks.example/orders",
        "contentType": "application/json",
        "secretType": "HMAC-SHA1",
    }
    assert (hook["active"], hook["accountId"], hook["createdBy"]) == (True, ACCOUNT, "kitchen-1")
    assert listed["data"]["hookSubscriptions"] == [hook]
    changed = replaced["data"]["updateHookSubscription"]
    assert (changed["config"]["url"], changed["active"]) == ("https://other.example/", False)
    assert deleted["data"]["deleteHookSubscription"] is True
    assert await Hook.all().count() == 0


async def test_the_rules_are_the_services(client: GraphQLClient, mint: Mint) -> None:
    client.default_token = mint("write:hooks")
    body = await client.execute(
        CREATE,
        {
            "accountId": ACCOUNT,
            "subscription": subscription("http://127.0.0.1/", contentType="text/xml"),
        },
    )

    assert error_code(body) == "BAD_USER_INPUT"
    assert set(bad_fields(body)) == {"config.url", "config.contentType"}


async def test_hooks_need_their_scopes(client_with: ClientWith, mint: Mint) -> None:
    gql = hooks_client(client_with, mint, "write:shopping read:shopping")

    body = await gql.execute(LIST, {"accountId": ACCOUNT})

    assert error_code(body) == "FORBIDDEN"


async def test_an_unknown_hook_is_not_found(client_with: ClientWith, mint: Mint) -> None:
    gql = hooks_client(client_with, mint)

    body = await gql.execute(DELETE, {"accountId": ACCOUNT, "id": "no-such-hook"})

    assert error_code(body) == "NOT_FOUND"


async def test_the_deliveries_log(
    client_with: ClientWith, client: GraphQLClient, mint: Mint, dispatching: Start
) -> None:
    gql = hooks_client(client_with, mint)
    async with receiving() as receiver:
        made = await gql.execute(
            CREATE, {"accountId": ACCOUNT, "subscription": subscription(receiver.url)}
        )
        hook_id = made["data"]["createHookSubscription"]["id"]
        await dispatching()
        await created(client)
        await receiver.wait_for(lambda log: len(log) == 2)

        async def logged() -> bool:
            body = await gql.execute(DELIVERIES, {"accountId": ACCOUNT, "hookId": hook_id})
            return len(body["data"]["hookDeliveries"]["deliveries"]) == 2

        await eventually(logged, "both attempts logged")
        body = await gql.execute(DELIVERIES, {"accountId": ACCOUNT, "hookId": hook_id})

    page = body["data"]["hookDeliveries"]
    newest = page["deliveries"][0]
    assert (newest["event"], newest["status"], newest["attempt"], newest["responseStatus"]) == (
        "shopping_order_event_add",
        "delivered",
        1,
        200,
    )
    assert newest["request"]["headers"]["event-delivery"] == newest["eventDelivery"]
    assert newest["request"]["body"] == receiver.log[1].body.decode()
    assert newest["response"] == {"status": 200, "body": "thanks"}
    assert page["hasNextPage"] is False
    assert await HookDelivery.all().count() == 2
