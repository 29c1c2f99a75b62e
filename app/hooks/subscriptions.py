"""Managing hooks: the service functions REST (``app.hooks.rest``) and GraphQL call alike.

Rules live here: a hook's fields and their limits, its destination (``destinations``), the
scopes (``admin:hooks``, ``write:hooks`` to change, ``admin:hooks``, ``read:hooks`` to read;
writing does not imply reading, as with events), the account binding, the ping sent on
creation and on request, redelivery, and putting failed deliveries back in line when a hook
is made active again. Field names in errors are the input's (``config.url``,
``config.secret.value``, ``events``); REST spells them in snake case.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from app import validation
from app.auth import Principal
from app.errors import BadUserInput, Conflict, FieldError, Forbidden, NotFound
from app.hooks import destinations, outbox
from app.hooks.outbox import now_ms
from app.models import Hook, HookAttempt, HookDelivery
from app.settings import Settings

CONTENT_TYPES: Final = ("application/json",)
SECRET_TYPES: Final = ("HMAC-SHA1",)
SECRET_MAX: Final = 255
# Hooks an account may have: each is a delivery row per event.
MAX_HOOKS_PER_ACCOUNT: Final = 20
# A hook's or an attempt's id as given in a path: a UUID.
ID_MAX: Final = 36
MAX_PAGE: Final = 100


@dataclass(frozen=True)
class HookInput:
    """A hook as a client posts it. ``secret`` None on an update keeps the current one."""

    url: str
    events: tuple[str, ...]
    secret: str | None = None
    active: bool = True
    content_type: str = CONTENT_TYPES[0]
    secret_type: str = SECRET_TYPES[0]


@dataclass(frozen=True)
class HookView:
    """A hook as the API gives it: never its secret."""

    id: str
    account_id: str
    url: str
    content_type: str
    secret_type: str
    events: list[str]
    active: bool
    created_at: datetime
    created_by: str
    updated_at: datetime
    deactivated_at: datetime | None
    deactivated_reason: str | None

    @classmethod
    def of(cls, row: Hook) -> HookView:
        return cls(
            id=row.hook_id,
            account_id=row.account_id,
            url=row.url,
            content_type=row.content_type,
            secret_type=row.secret_type,
            events=json.loads(row.events),
            active=row.active,
            created_at=row.created_at,
            created_by=row.created_by,
            updated_at=row.updated_at,
            deactivated_at=row.deactivated_at,
            deactivated_reason=row.deactivated_reason,
        )


@dataclass(frozen=True)
class AttemptView:
    """One POST of a delivery, as the deliveries log gives it."""

    id: str
    event_delivery: str
    event: str
    order_id: str | None
    created_at: datetime
    status: str
    attempt: int
    response_status: int | None
    duration_ms: int
    error: str | None
    request_headers: dict[str, str]
    request_body: str
    response_headers: dict[str, str] | None
    response_body: str | None


# Authorization -----------------------------------------------------------------------------


def _authorize(principal: Principal, account_id: str, action: str) -> None:
    errors: list[FieldError] = []
    validation.check_account_id(account_id, "accountId", errors)
    if errors:
        raise BadUserInput(errors)
    if principal.account_id != account_id:
        raise Forbidden(f"this token is for account {principal.account_id}, not {account_id}")
    if not principal.can_use_hooks(action):
        raise Forbidden(
            f"this token's scopes do not allow {action} hooks (admin:hooks, {action}:hooks)"
        )


# Input -------------------------------------------------------------------------------------


async def _checked(given: HookInput, settings: Settings, *, creating: bool) -> list[FieldError]:
    errors: list[FieldError] = []
    problem = await destinations.url_problem(
        given.url,
        allow_http=settings.webhook_allow_http,
        allow_private=settings.webhook_allow_private_networks,
    )
    if problem is not None:
        errors.append(FieldError("config.url", problem))
    if given.content_type not in CONTENT_TYPES:
        errors.append(FieldError("config.contentType", f"must be {', '.join(CONTENT_TYPES)}"))
    if given.secret_type not in SECRET_TYPES:
        errors.append(FieldError("config.secret.type", f"must be {', '.join(SECRET_TYPES)}"))
    if given.secret is None:
        if creating:
            errors.append(FieldError("config.secret.value", "is required: it signs deliveries"))
    elif not 1 <= len(given.secret) <= SECRET_MAX or not given.secret.isprintable():
        errors.append(
            FieldError("config.secret.value", f"must be 1 to {SECRET_MAX} printable characters")
        )
    unknown = [name for name in given.events if name not in outbox.EVENTS]
    if not given.events or unknown:
        errors.append(FieldError("events", f"must list some of: {', '.join(outbox.EVENTS)}"))
    return errors


# Hooks -------------------------------------------------------------------------------------


async def create_hook(
    principal: Principal, account_id: str, given: HookInput, settings: Settings
) -> HookView:
    """Stores a hook; an active one is sent a ``ping`` at once."""
    _authorize(principal, account_id, "write")
    errors = await _checked(given, settings, creating=True)
    if errors:
        raise BadUserInput(errors)
    assert given.secret is not None
    now = datetime.now(UTC)
    async with in_transaction() as connection:
        if await Hook.filter(account_id=account_id).using_db(connection).count() >= (
            MAX_HOOKS_PER_ACCOUNT
        ):
            raise Conflict(f"an account has at most {MAX_HOOKS_PER_ACCOUNT} hooks")
        row = await Hook.create(
            using_db=connection,
            hook_id=str(uuid.uuid4()),
            account_id=account_id,
            url=given.url,
            content_type=given.content_type,
            secret_type=given.secret_type,
            secret=given.secret,
            events=json.dumps(list(dict.fromkeys(given.events))),
            active=given.active,
            created_at=now,
            created_by=principal.subject,
            updated_at=now,
        )
        if row.active:
            await _ping(connection, row)
    return HookView.of(row)


async def list_hooks(principal: Principal, account_id: str) -> list[HookView]:
    _authorize(principal, account_id, "read")
    rows = await Hook.filter(account_id=account_id).order_by("id")
    return [HookView.of(row) for row in rows]


async def get_hook(principal: Principal, account_id: str, hook_id: str) -> HookView:
    _authorize(principal, account_id, "read")
    return HookView.of(await _find(account_id, hook_id))


async def update_hook(
    principal: Principal, account_id: str, hook_id: str, given: HookInput, settings: Settings
) -> HookView:
    """Replaces a hook's fields (its secret only when one is given). Made active again, its
    failed deliveries are put back in line, first to last."""
    _authorize(principal, account_id, "write")
    errors = await _checked(given, settings, creating=False)
    if errors:
        raise BadUserInput(errors)
    async with in_transaction() as connection:
        row = await _find(account_id, hook_id, connection)
        reactivated = given.active and not row.active
        row.url = given.url
        row.content_type = given.content_type
        row.secret_type = given.secret_type
        if given.secret is not None:
            row.secret = given.secret
        row.events = json.dumps(list(dict.fromkeys(given.events)))
        row.active = given.active
        row.updated_at = datetime.now(UTC)
        if reactivated:
            row.deactivated_at = None
            row.deactivated_reason = None  # type: ignore[assignment]  # a nullable column
            row.failing_since = None
            # Failed ones, and those still being tried: each starts its attempts afresh.
            await _requeue(
                connection, HookDelivery.filter(hook_id=row.id, status__not=outbox.DELIVERED)
            )
        await row.save(using_db=connection)
    return HookView.of(row)


async def delete_hook(principal: Principal, account_id: str, hook_id: str) -> None:
    """Deletes a hook with its deliveries and their log."""
    _authorize(principal, account_id, "write")
    async with in_transaction() as connection:
        row = await _find(account_id, hook_id, connection)
        await HookAttempt.filter(hook_id=row.id).using_db(connection).delete()
        await HookDelivery.filter(hook_id=row.id).using_db(connection).delete()
        await row.delete(using_db=connection)


async def ping_hook(principal: Principal, account_id: str, hook_id: str) -> None:
    """Sends the hook a ``ping`` event (even an inactive one's is kept until it is active)."""
    _authorize(principal, account_id, "write")
    async with in_transaction() as connection:
        row = await _find(account_id, hook_id, connection)
        await _ping(connection, row)


async def _ping(connection: BaseDBAsyncClient, row: Hook) -> None:
    await HookDelivery.create(
        using_db=connection,
        event_delivery=str(uuid.uuid4()),
        hook_id=row.id,
        account_id=row.account_id,
        event=outbox.PING,
        status=outbox.PENDING,
        next_attempt_at=now_ms(),
        created_at=datetime.now(UTC),
    )


async def _find(account_id: str, hook_id: str, connection: BaseDBAsyncClient | None = None) -> Hook:
    row = None
    if len(hook_id) <= ID_MAX:
        query = Hook.filter(account_id=account_id, hook_id=hook_id)
        if connection is not None:
            query = query.using_db(connection).select_for_update()
        row = await query.first()
    if row is None:
        raise NotFound(f"account {account_id} has no hook {hook_id!r}")
    return row


async def _requeue(connection: BaseDBAsyncClient, deliveries: Any) -> None:
    """Due at once, with all their attempts before them. A lease is left as it is: a
    delivery in flight is not sent twice at once, and its outcome counts from 0."""
    await deliveries.using_db(connection).update(
        status=outbox.PENDING, attempts=0, next_attempt_at=now_ms(), first_attempt_at=None
    )


# The deliveries log ------------------------------------------------------------------------


async def list_attempts(
    principal: Principal,
    account_id: str,
    hook_id: str,
    *,
    limit: int,
    starting_after: str | None,
) -> tuple[list[AttemptView], bool]:
    """The hook's attempts, newest first; and whether more follow."""
    if not 1 <= limit <= MAX_PAGE:
        raise BadUserInput([FieldError("limit", f"must be between 1 and {MAX_PAGE}")])
    _authorize(principal, account_id, "read")
    hook = await _find(account_id, hook_id)
    query = HookAttempt.filter(hook_id=hook.id)
    if starting_after is not None:
        after = await HookAttempt.filter(
            hook_id=hook.id, attempt_id=starting_after[:ID_MAX]
        ).first()
        if after is None:
            raise BadUserInput([FieldError("starting_after", "is not a delivery of this hook")])
        query = query.filter(id__lt=after.id)
    rows = await query.order_by("-id").limit(limit + 1)
    return await _views(rows[:limit]), len(rows) > limit


async def get_attempt(
    principal: Principal, account_id: str, hook_id: str, attempt_id: str
) -> AttemptView:
    _authorize(principal, account_id, "read")
    hook = await _find(account_id, hook_id)
    row = await _attempt(hook, attempt_id)
    (view,) = await _views([row])
    return view


async def redeliver(principal: Principal, account_id: str, hook_id: str, attempt_id: str) -> None:
    """Sends an attempt's delivery again (same ``event_delivery``), unless it is still to be
    made anyway. Its order's later versions wait until it is received."""
    _authorize(principal, account_id, "write")
    async with in_transaction() as connection:
        hook = await _find(account_id, hook_id, connection)
        row = await _attempt(hook, attempt_id)
        await _requeue(
            connection,
            HookDelivery.filter(id=row.delivery_id, status__not=outbox.PENDING),
        )


async def _attempt(hook: Hook, attempt_id: str) -> HookAttempt:
    row = None
    if len(attempt_id) <= ID_MAX:
        row = await HookAttempt.filter(hook_id=hook.id, attempt_id=attempt_id).first()
    if row is None:
        raise NotFound(f"hook {hook.hook_id} has no delivery {attempt_id!r}")
    return row


async def _views(rows: list[HookAttempt]) -> list[AttemptView]:
    deliveries = {
        delivery.id: delivery
        for delivery in await HookDelivery.filter(id__in=[row.delivery_id for row in rows])
    }
    views = []
    for row in rows:
        delivery = deliveries[row.delivery_id]  # deleted only with its attempts
        views.append(
            AttemptView(
                id=row.attempt_id,
                event_delivery=delivery.event_delivery,
                event=delivery.event,
                order_id=delivery.order_id,
                created_at=row.created_at,
                status=row.status,
                attempt=row.attempt,
                response_status=row.response_status,
                duration_ms=row.duration_ms,
                error=row.error,
                request_headers=json.loads(row.request_headers),
                request_body=row.request_body,
                response_headers=None
                if row.response_headers is None
                else json.loads(row.response_headers),
                response_body=row.response_body,
            )
        )
    return views
