"""The GraphQL schema: the order-event service's query, mutation and subscription, and the
webhooks' fields (``app.api.hooks``)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import strawberry
from graphql import (
    FloatValueNode,
    GraphQLError,
    ListValueNode,
    ObjectValueNode,
    ValueNode,
    VariableNode,
    value_from_ast_untyped,
)
from strawberry.extensions import ParserCache, SchemaExtension
from strawberry.scalars import JSON
from strawberry.schema.types.scalar import DEFAULT_SCALAR_REGISTRY
from strawberry.types import Info

from app import live, tracing
from app.api import operations
from app.api.access import OperationName
from app.api.context import Context
from app.api.errors import ErrorCodes
from app.api.hooks import HookMutations, HookQueries
from app.api.limits import OperationLimits
from app.api.types import OrderEventCollection, OrderEventInput, OrderStatusEvent
from app.validation import read_float

if TYPE_CHECKING:
    from app.tracer import OperationSpan

AccountId = Annotated[
    strawberry.ID,
    strawberry.argument(
        description="The account: `P` (production) or `T` (test) and 8 digits, e.g. `T12345678`."
    ),
]
OrderId = Annotated[
    strawberry.ID,
    strawberry.argument(
        description="The merchant's order id: 1 to 128 printable characters, no `/`."
    ),
]


@strawberry.type
class Query(HookQueries):
    @strawberry.field(
        description=(
            "One page of an order's events in version order, with the order's combined "
            "state. An order with no events yet has an empty timeline in state PENDING. "
            "Needs a read scope for the order."
        )
    )
    async def order_events(
        self,
        info: Info[Context, None],
        account_id: AccountId,
        order_id: OrderId,
        first: Annotated[
            int | None,
            strawberry.argument(
                description="How many events to return: 0 up to the server's maximum (200 "
                "unless configured otherwise)."
            ),
        ] = 50,
        after: Annotated[
            str | None, strawberry.argument(description="Return the events after this cursor.")
        ] = None,
    ) -> OrderEventCollection:
        return await operations.order_events(info.context, account_id, order_id, first, after)


@strawberry.type
class Mutation(HookMutations):
    @strawberry.mutation(
        description=(
            "Append a status event to an order's stream. The order's stream starts with its "
            "first event. Needs a write scope for the order."
        )
    )
    async def create_order_event(
        self,
        info: Info[Context, None],
        account_id: AccountId,
        order_id: OrderId,
        event: Annotated[OrderEventInput, strawberry.argument(description="The event to append.")],
        idempotency_key: Annotated[
            str | None,
            strawberry.argument(
                description=(
                    "Makes retries safe: a repeat of a request with the same key and the same "
                    "input returns the event the first one stored, and creates nothing new; "
                    "the key with other input is a CONFLICT. 1 to 255 printable characters, "
                    "scoped to the account and the token's subject, kept for at least 24 hours."
                )
            ),
        ] = None,
        expected_version: Annotated[
            int | None,
            strawberry.argument(
                description=(
                    "Store the event only if the order is at this version now (0 before its "
                    "first event); otherwise CONFLICT with `extensions.currentVersion`."
                )
            ),
        ] = None,
    ) -> OrderStatusEvent:
        return await operations.create_order_event(
            info.context, account_id, order_id, event, idempotency_key, expected_version
        )


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description=(
            "Every new event of an order, or without `orderId` of the whole account, once and "
            "in order, within milliseconds of its commit, whichever server process wrote it. "
            "With `after` (any event's cursor), first every later event already stored, then "
            "live ones, with no gap and no duplicate: pass the cursor of the last event "
            "received to resume after a disconnect. A subscriber that falls too far behind is "
            "ended with RATE_LIMITED and `extensions.resumeAfter`. Needs a read scope for the "
            "order; without `orderId`, `admin:shopping`, `read:shopping` or "
            "`read:shopping:/orders/ANY/events`."
        )
    )
    async def order_events(
        self,
        info: Info[Context, None],
        account_id: AccountId,
        order_id: Annotated[
            strawberry.ID | None,
            strawberry.argument(
                description="The order to watch; leave it out to watch every order of the account."
            ),
        ] = None,
        after: Annotated[
            str | None,
            strawberry.argument(description="Start after this event's cursor; default: now."),
        ] = None,
    ) -> AsyncIterator[OrderStatusEvent]:
        context = info.context
        # The feed's receiver is a handoff this generator takes from, one event at a time:
        # while the client is slow to read, the feed's buffer fills as on the compiled route.
        handoff = live.Handoff()
        feed = live.watch(
            context.require_principal(),
            context.broker,
            account_id,
            order_id,
            after,
            handoff,
            buffer_size=context.settings.subscription_buffer,
        )
        feed.start()
        try:
            while True:
                event = await handoff.take()
                yield OrderStatusEvent.from_event(event, context.settings.public_url)
        finally:
            feed.close()


class CachedParse(ParserCache):
    """Strawberry's parser cache, but a document that does not parse is left to Strawberry's
    own parse, which reports the error: raised from this hook, it escapes a subscription's
    error handling, and the operation's task dies with a traceback while its client waits for
    ever. (Such a document is parsed twice; a parse stops at its first error.)"""

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        with contextlib.suppress(GraphQLError):
            context.graphql_document = self.cached_parse_document(
                context.query, **context.parse_options
            )
        yield


class OperationTrace(SchemaExtension):
    """With tracing on, the operation's span (``app.tracing``) from before its parse to its
    end, named once the document says what it is; the compiled route (``app.api.documents``,
    ``LiveOperation``) opens the same span. It is the current span only while the operation
    executes: Strawberry may close a WebSocket operation's stream from another task, where a
    context made current in this one could not be undone."""

    span: OperationSpan | None = None

    def on_operation(self) -> Iterator[None]:
        self.span = tracing.operation(None, None, current=False)
        try:
            yield
        finally:
            if self.span is not None:
                context = self.execution_context
                try:
                    kind: str | None = context.operation_type.value
                except Exception:  # no document, or no operation of that name in it
                    kind = None
                self.span.named(kind, context.operation_name)
                self.span.end()

    def on_execute(self) -> Iterator[None]:
        with tracing.within(self.span):
            yield


def json_literal(node: ValueNode, variables: dict[str, Any] | None = None) -> Any:
    """A JSON value written in a document, as graphql-core reads one, but for two things: a
    float is read by ``read_float``, as a JSON text's is, and a variable left out is null, as
    when it is given as null (graphql-core leaves an undefined value, which no JSON holds)."""
    if isinstance(node, ObjectValueNode):
        return {field.name.value: json_literal(field.value, variables) for field in node.fields}
    if isinstance(node, ListValueNode):
        return [json_literal(item, variables) for item in node.values]
    if isinstance(node, FloatValueNode):
        return read_float(node.value)
    if isinstance(node, VariableNode):
        return (variables or {}).get(node.name.value)
    return value_from_ast_untyped(node, variables)


# Strawberry's JSON scalar, reading values written in documents with json_literal.
_JSON = dataclasses.replace(DEFAULT_SCALAR_REGISTRY[JSON], parse_literal=json_literal)


class Schema(strawberry.Schema):
    def process_errors(self, errors: Any, execution_context: Any = None) -> None:
        # ErrorCodes logs the unexpected errors, with the request id; a client's bad input or
        # missing scope is not worth a log line with a traceback.
        return


def build_schema() -> strawberry.Schema:
    return Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        # Parsing and validating a document costs more than running a small operation;
        # clients send the same few documents over and over. OperationLimits checks a
        # document before validating it, and remembers its verdict (in place of
        # Strawberry's ValidationCache, which would validate it first).
        extensions=[OperationTrace, CachedParse, OperationLimits, OperationName, ErrorCodes],
        scalar_overrides={JSON: _JSON},
    )


schema = build_schema()
