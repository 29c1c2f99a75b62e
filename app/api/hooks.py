"""Webhooks in GraphQL: the hook subscriptions of an account, their deliveries log, and the
mutations that manage them. The same service functions as the REST Hooks API
(``app.hooks.subscriptions``), with the same rules, scopes and errors."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from app.api.context import Context
from app.hooks import outbox, subscriptions
from app.hooks.subscriptions import AttemptView, HookInput, HookView

AccountId = Annotated[
    strawberry.ID, strawberry.argument(description="The account, e.g. `T12345678`.")
]
HookId = Annotated[strawberry.ID, strawberry.argument(description="The hook subscription's id.")]


@strawberry.input(
    description="A hook's secret: each delivery's `event-signature` is signed with it."
)
class HookSecretInput:
    type: str = strawberry.field(
        default=subscriptions.SECRET_TYPES[0], description="`HMAC-SHA1`, the only kind."
    )
    value: str = strawberry.field(
        description=f"1 to {subscriptions.SECRET_MAX} printable characters; never given back."
    )


@strawberry.input(description="Where and how a hook's deliveries are sent.")
class HookConfigInput:
    url: str = strawberry.field(
        description=(
            "An https URL whose host resolves to public addresses only (unless the server "
            "allows http or private networks)."
        )
    )
    content_type: str = strawberry.field(
        default=subscriptions.CONTENT_TYPES[0], description="`application/json`, the only kind."
    )
    secret: HookSecretInput | None = strawberry.field(
        default=None,
        description="Required to create a hook; left out on an update, the secret is kept.",
    )


@strawberry.input(description="A hook subscription as created or replaced.")
class HookSubscriptionInput:
    config: HookConfigInput
    events: list[str] = strawberry.field(
        description=f"The events to deliver: {', '.join(outbox.EVENTS)}."
    )
    active: bool = strawberry.field(
        default=True,
        description="Only an active hook is delivered to; making one active again sends what "
        "it failed to deliver.",
    )

    def to_hook_input(self) -> HookInput:
        secret = self.config.secret
        return HookInput(
            url=self.config.url,
            events=tuple(self.events),
            secret=None if secret is None else secret.value,
            active=self.active,
            content_type=self.config.content_type,
            secret_type=subscriptions.SECRET_TYPES[0] if secret is None else secret.type,
        )


@strawberry.type(description="A hook's configuration; its secret's value is never given.")
class HookConfig:
    url: str
    content_type: str
    secret_type: str


@strawberry.type(description="A merchant's webhook: the account's events are POSTed to it.")
class HookSubscription:
    id: strawberry.ID
    account_id: strawberry.ID
    config: HookConfig
    events: list[str]
    active: bool
    created_at: datetime
    created_by: str
    updated_at: datetime
    deactivated_at: datetime | None = strawberry.field(
        description="When it was made inactive for failing, if it was."
    )
    deactivated_reason: str | None = strawberry.field(description="Why it was made inactive.")

    @classmethod
    def of(cls, hook: HookView) -> HookSubscription:
        return cls(
            id=strawberry.ID(hook.id),
            account_id=strawberry.ID(hook.account_id),
            config=HookConfig(
                url=hook.url, content_type=hook.content_type, secret_type=hook.secret_type
            ),
            events=hook.events,
            active=hook.active,
            created_at=hook.created_at,
            created_by=hook.created_by,
            updated_at=hook.updated_at,
            deactivated_at=hook.deactivated_at,
            deactivated_reason=hook.deactivated_reason,
        )


@strawberry.type(description="What a delivery attempt sent (the body cut at 4 KiB).")
class HookRequest:
    headers: JSON
    body: str


@strawberry.type(description="What the receiver answered (the body cut at 4 KiB).")
class HookResponse:
    status: int
    headers: JSON | None
    body: str | None


@strawberry.type(description="One POST of a delivery to a hook.")
class HookDelivery:
    id: strawberry.ID = strawberry.field(description="The attempt's id.")
    event_delivery: str = strawberry.field(
        description="The delivery's UUID, the `event-delivery` header: the same on every attempt."
    )
    event: str
    order_id: str | None
    created_at: datetime
    status: str = strawberry.field(description="`delivered` (a 2xx in time) or `failed`.")
    attempt: int
    response_status: int | None
    duration_ms: int
    error: str | None
    request: HookRequest
    response: HookResponse | None

    @classmethod
    def of(cls, attempt: AttemptView) -> HookDelivery:
        response = None
        if attempt.response_status is not None:
            response = HookResponse(
                status=attempt.response_status,
                headers=JSON(attempt.response_headers),
                body=attempt.response_body,
            )
        return cls(
            id=strawberry.ID(attempt.id),
            event_delivery=attempt.event_delivery,
            event=attempt.event,
            order_id=attempt.order_id,
            created_at=attempt.created_at,
            status=attempt.status,
            attempt=attempt.attempt,
            response_status=attempt.response_status,
            duration_ms=attempt.duration_ms,
            error=attempt.error,
            request=HookRequest(headers=JSON(attempt.request_headers), body=attempt.request_body),
            response=response,
        )


@strawberry.type(description="A page of a hook's delivery attempts, newest first.")
class HookDeliveryPage:
    deliveries: list[HookDelivery]
    has_next_page: bool
    end_cursor: str | None = strawberry.field(
        description="Pass as `after` for the next page: the last attempt's id."
    )


@strawberry.type
class HookQueries:
    @strawberry.field(description="The account's hook subscriptions. Needs `read:hooks`.")
    async def hook_subscriptions(
        self, info: Info[Context, None], account_id: AccountId
    ) -> list[HookSubscription]:
        principal = info.context.require_principal()
        return [
            HookSubscription.of(h) for h in await subscriptions.list_hooks(principal, account_id)
        ]

    @strawberry.field(description="One hook subscription. Needs `read:hooks`.")
    async def hook_subscription(
        self, info: Info[Context, None], account_id: AccountId, id: HookId
    ) -> HookSubscription:
        principal = info.context.require_principal()
        return HookSubscription.of(await subscriptions.get_hook(principal, account_id, id))

    @strawberry.field(description="A hook's delivery attempts, newest first. Needs `read:hooks`.")
    async def hook_deliveries(
        self,
        info: Info[Context, None],
        account_id: AccountId,
        hook_id: HookId,
        first: Annotated[
            int, strawberry.argument(description=f"1 to {subscriptions.MAX_PAGE}.")
        ] = 25,
        after: Annotated[
            str | None, strawberry.argument(description="The `endCursor` of the page before.")
        ] = None,
    ) -> HookDeliveryPage:
        attempts, more = await subscriptions.list_attempts(
            info.context.require_principal(), account_id, hook_id, limit=first, starting_after=after
        )
        return HookDeliveryPage(
            deliveries=[HookDelivery.of(attempt) for attempt in attempts],
            has_next_page=more,
            end_cursor=attempts[-1].id if attempts else after,
        )


@strawberry.type
class HookMutations:
    @strawberry.mutation(
        description=(
            "Create a hook subscription; an active one is sent a `ping` at once. Needs "
            "`write:hooks`."
        )
    )
    async def create_hook_subscription(
        self, info: Info[Context, None], account_id: AccountId, subscription: HookSubscriptionInput
    ) -> HookSubscription:
        context = info.context
        created = await subscriptions.create_hook(
            context.require_principal(), account_id, subscription.to_hook_input(), context.settings
        )
        return HookSubscription.of(created)

    @strawberry.mutation(
        description=(
            "Replace a hook subscription (its secret only when one is given). Needs `write:hooks`."
        )
    )
    async def update_hook_subscription(
        self,
        info: Info[Context, None],
        account_id: AccountId,
        id: HookId,
        subscription: HookSubscriptionInput,
    ) -> HookSubscription:
        context = info.context
        updated = await subscriptions.update_hook(
            context.require_principal(),
            account_id,
            id,
            subscription.to_hook_input(),
            context.settings,
        )
        return HookSubscription.of(updated)

    @strawberry.mutation(
        description="Delete a hook subscription with its deliveries. Needs `write:hooks`."
    )
    async def delete_hook_subscription(
        self, info: Info[Context, None], account_id: AccountId, id: HookId
    ) -> bool:
        await subscriptions.delete_hook(info.context.require_principal(), account_id, id)
        return True

    @strawberry.mutation(description="Send a hook a `ping` event. Needs `write:hooks`.")
    async def ping_hook_subscription(
        self, info: Info[Context, None], account_id: AccountId, id: HookId
    ) -> bool:
        await subscriptions.ping_hook(info.context.require_principal(), account_id, id)
        return True

    @strawberry.mutation(
        description=(
            "Send a delivery attempt's event again, with the same `eventDelivery`. Needs "
            "`write:hooks`."
        )
    )
    async def redeliver_hook_delivery(
        self,
        info: Info[Context, None],
        account_id: AccountId,
        hook_id: HookId,
        delivery_id: Annotated[strawberry.ID, strawberry.argument(description="An attempt's id.")],
    ) -> bool:
        await subscriptions.redeliver(
            info.context.require_principal(), account_id, hook_id, delivery_id
        )
        return True
