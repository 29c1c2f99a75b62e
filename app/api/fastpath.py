"""A shorter route through GraphQL for the documents clients send over and over.

graphql-core executes every field of every result object through its general machinery
(argument coercion, resolver calls, value completion), which costs more than the database
round trip of a small write. Most traffic, though, is a handful of fixed documents: one
``createOrderEvent`` or one ``orderEvents`` with plain fields. Such a document is compiled
once into a ``Plan`` that coerces its variables, calls the same service functions as the
resolvers, and builds the response dictionary directly.

The plan covers only what it can do exactly as graphql-core would: a valid document with one
operation (query or mutation) selecting one of those two fields, plain fields, aliases and
``__typename``, no fragments or directives, and variables whose values coerce without any
doubt. Anything else — and any variable value that would not coerce — takes the ordinary
route, which also produces the ordinary errors. ``tests/test_fastpath.py`` holds both routes
to the same answers.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import strawberry
from graphql import (
    BooleanValueNode,
    DocumentNode,
    EnumValueNode,
    FieldNode,
    FloatValueNode,
    GraphQLError,
    GraphQLSchema,
    IntValueNode,
    ListTypeNode,
    NamedTypeNode,
    NonNullTypeNode,
    NullValueNode,
    ObjectValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    StringValueNode,
    TypeNode,
    ValueNode,
    VariableNode,
    parse,
    parse_type,
    specified_rules,
    validate,
    value_from_ast_untyped,
)
from strawberry.schema import BaseSchema
from strawberry.types import ExecutionResult

from app.api import limits, operations
from app.api.context import Context
from app.api.errors import convert
from app.records import EventPage, EventState, NewEvent, StoredEvent, links
from app.settings import Settings

# Longer documents take the ordinary route, where every request limit applies in full.
MAX_DOCUMENT = 4096
MAX_PLANS = 256

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_STATES: Final = {state.name: state for state in EventState}
_MISSING: Final = object()


class Fallback(Exception):
    """The plan cannot answer this request exactly: take the ordinary route."""


Serializer = Callable[[Any, str], dict[str, Any]]


@dataclass(frozen=True)
class Plan:
    operation: OperationType
    name: str | None  # the operation's name, for the access log
    field: str  # createOrderEvent or orderEvents
    response_key: str
    field_node: FieldNode
    arguments: Mapping[str, ValueNode]
    variables: Mapping[str, TypeNode]
    serialize: Serializer

    def coerce_variables(self, values: Mapping[str, Any] | None) -> dict[str, Any]:
        """The variables as graphql-core would coerce them, or ``Fallback``."""
        values = values or {}
        coerced = {}
        for name, type_node in self.variables.items():
            if name in values:
                coerced[name] = _coerce(type_node, values[name])
            elif isinstance(type_node, NonNullTypeNode):
                raise Fallback
        return coerced

    def argument(self, name: str, variables: Mapping[str, Any], default: Any = None) -> Any:
        """An argument's value: ``default`` when absent (as graphql-core applies defaults)."""
        node = self.arguments.get(name)
        if node is None:
            return default
        value = _literal(node, variables)
        return default if value is _MISSING else value

    def data(self, value: StoredEvent | EventPage, public_url: str) -> dict[str, Any]:
        """The response's ``data`` for the root field's value."""
        return {self.response_key: self.serialize(value, public_url)}

    def error(self, exception: Exception) -> GraphQLError:
        return GraphQLError(
            str(exception),
            nodes=[self.field_node],
            path=[self.response_key],
            original_error=exception,
        )


class Compiler:
    """Compiles documents into plans, remembering the answer (a plan or None) per document.

    A document gets a plan only if it passes the same validation as on the ordinary route,
    the request limits of ``app.api.limits`` included.
    """

    def __init__(self, schema: BaseSchema, settings: Settings | None = None) -> None:
        if not isinstance(schema, strawberry.Schema):
            raise TypeError("the fast path compiles against a Strawberry schema")
        self._schema: GraphQLSchema = schema._schema  # the graphql-core schema underneath
        self._limits, limit_rule = limits.compiled(settings)
        self._rules = (*specified_rules, limit_rule)
        self._plans: OrderedDict[tuple[str, str | None], Plan | None] = OrderedDict()

    def plan(self, query: object, operation_name: object, method: str) -> Plan | None:
        """The plan for an HTTP request's query or mutation, if there is one."""
        plan = self._plan_for(query, operation_name)
        if plan is None or plan.operation == OperationType.SUBSCRIPTION:
            return None  # subscriptions are served over WebSocket (``subscription_plan``)
        if method == "GET" and plan.operation != OperationType.QUERY:
            return None  # the ordinary route refuses mutations over GET
        return plan

    def _plan_for(self, query: object, operation_name: object) -> Plan | None:
        if not isinstance(query, str) or len(query) > MAX_DOCUMENT:
            return None
        if operation_name is not None and not isinstance(operation_name, str):
            return None  # the ordinary route says what is wrong with it
        key = (query, operation_name)
        if key in self._plans:
            self._plans.move_to_end(key)
            plan = self._plans[key]
        else:
            plan = self._compile(query, operation_name)
            self._plans[key] = plan
            if len(self._plans) > MAX_PLANS:
                self._plans.popitem(last=False)
        return plan

    def subscription_plan(self, query: object, operation_name: object) -> Plan | None:
        """The plan for an ``orderEvents`` subscription, if there is one."""
        plan = self._plan_for(query, operation_name)
        return plan if plan is not None and plan.operation == OperationType.SUBSCRIPTION else None

    def _compile(self, query: str, operation_name: str | None) -> Plan | None:
        try:
            document = parse(
                query,
                max_lexical_tokens=self._limits.max_tokens,
                max_comments=self._limits.max_tokens,
            )
        except GraphQLError:
            return None
        if validate(self._schema, document, self._rules):
            return None
        return _plan(document, operation_name)


def _plan(document: DocumentNode, operation_name: str | None) -> Plan | None:
    if len(document.definitions) != 1:
        return None
    operation = document.definitions[0]
    if not isinstance(operation, OperationDefinitionNode) or operation.directives:
        return None
    if operation_name is not None and (
        operation.name is None or operation.name.value != operation_name
    ):
        return None
    variables = {}
    for definition in operation.variable_definitions or ():
        if definition.default_value is not None or definition.directives:
            return None
        variables[definition.variable.name.value] = definition.type
    selections = operation.selection_set.selections
    if len(selections) != 1 or not isinstance(selections[0], FieldNode):
        return None
    field = selections[0]
    if field.directives or field.selection_set is None:
        return None
    name = field.name.value
    if (operation.operation, name) == (OperationType.MUTATION, "createOrderEvent"):
        serialize = _object_serializer(field.selection_set, _EVENT_FIELDS)
    elif (operation.operation, name) == (OperationType.QUERY, "orderEvents"):
        serialize = _object_serializer(field.selection_set, _COLLECTION_FIELDS)
    elif (operation.operation, name) == (OperationType.SUBSCRIPTION, "orderEvents"):
        serialize = _object_serializer(field.selection_set, _EVENT_FIELDS)
    else:
        return None
    if serialize is None:
        return None
    return Plan(
        operation=operation.operation,
        name=operation.name.value if operation.name else None,
        field=name,
        response_key=field.alias.value if field.alias else name,
        field_node=field,
        arguments={argument.name.value: argument.value for argument in field.arguments or ()},
        variables=variables,
        serialize=serialize,
    )


# Serializers: a field name -> how to read it, with its own sub-selection where it has one.
# A leaf is read either as an attribute path of the value (``"version"``, ``"state.name"``)
# or by a function of the value and the public URL. Each selection compiles into one Python
# function that builds its dictionary in a single expression: the cheapest way CPython has
# of building it, which matters for a page of events.

FieldReader = Callable[[Any, str], Any]
FieldTable = Mapping[str, tuple[str, Any]]  # name -> ("leaf", reader) or ("object"/"list", table)
_NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]*")
_ATTRIBUTE_PATH = re.compile(r"[a-z_]+(\.[a-z_]+)*")


def _object_serializer(selection_set: SelectionSetNode, table: FieldTable) -> Serializer | None:
    readers: list[tuple[str, str | FieldReader]] = []
    seen = set()
    for selection in selection_set.selections:
        if not isinstance(selection, FieldNode) or selection.directives or selection.arguments:
            return None
        key = selection.alias.value if selection.alias else selection.name.value
        if key in seen:
            return None  # merging repeated keys is graphql-core's business
        seen.add(key)
        entry = table.get(selection.name.value)
        if entry is None:
            return None
        kind, spec = entry
        if kind == "leaf":
            if selection.selection_set is not None:
                return None
            readers.append((key, spec))
            continue
        getter, sub_table = spec
        if selection.selection_set is None:
            return None
        inner = _object_serializer(selection.selection_set, sub_table)
        if inner is None:
            return None
        readers.append((key, _nested(kind, getter, inner)))
    return _compile_object(readers)


def _compile_object(readers: list[tuple[str, str | FieldReader]]) -> Serializer:
    """``def serialize(value, url): return {key: value.path, key: reader(value, url), ...}``.

    Keys are GraphQL names (the parser admits nothing else) and attribute paths come from
    this module's tables; both are checked again here before they become source text."""
    namespace: dict[str, Any] = {}
    items = []
    for index, (key, reader) in enumerate(readers):
        if not _NAME.fullmatch(key):
            raise ValueError(f"not a GraphQL name: {key!r}")
        if isinstance(reader, str):
            if not _ATTRIBUTE_PATH.fullmatch(reader):
                raise ValueError(f"not an attribute path: {reader!r}")
            items.append(f"{key!r}: value.{reader}")
        else:
            namespace[f"read_{index}"] = reader
            items.append(f"{key!r}: read_{index}(value, url)")
    source = f"def serialize(value, url):\n    return {{{', '.join(items)}}}\n"
    exec(source, namespace)  # noqa: S102 (source built above from checked names only)
    serialize: Serializer = namespace["serialize"]
    return serialize


def _nested(kind: str, getter: FieldReader, inner: Serializer) -> FieldReader:
    if kind == "list":
        return lambda value, url: [inner(item, url) for item in getter(value, url)]
    return lambda value, url: inner(getter(value, url), url)


def _attribute(path: str) -> tuple[str, str]:
    return "leaf", path


def _typename(name: str) -> tuple[str, FieldReader]:
    return "leaf", lambda _value, _url: name


_LINK_FIELDS: FieldTable = {
    "href": _attribute("href"),
    "rel": _attribute("rel"),
    "__typename": _typename("Link"),
}
_EVENT_FIELDS: FieldTable = {
    "id": _attribute("id"),
    "eventType": _attribute("event_type"),
    "accountId": _attribute("account_id"),
    "orderId": _attribute("order_id"),
    "state": _attribute("state.name"),
    "service": _attribute("service"),
    "serviceStatus": _attribute("service_status"),
    "description": _attribute("description"),
    "metadata": _attribute("metadata"),
    "createdAt": _attribute("created_at_text"),
    "createdBy": _attribute("created_by"),
    "version": _attribute("version"),
    "cursor": _attribute("cursor"),
    "links": ("list", (lambda e, url: links(e, url), _LINK_FIELDS)),
    "__typename": _typename("OrderStatusEvent"),
}
_PAGE_INFO_FIELDS: FieldTable = {
    "hasNextPage": _attribute("has_next_page"),
    "endCursor": _attribute("end_cursor"),
    "__typename": _typename("PageInfo"),
}
_COLLECTION_FIELDS: FieldTable = {
    "events": ("list", (lambda page, _url: page.events, _EVENT_FIELDS)),
    "state": _attribute("state.name"),
    "pageInfo": ("object", (lambda page, _url: page, _PAGE_INFO_FIELDS)),
    "__typename": _typename("OrderEventCollection"),
}


# Values -------------------------------------------------------------------------------------


def _coerce(type_node: TypeNode, value: Any) -> Any:
    """A variable's value coerced to its declared type, exactly as graphql-core would, or
    ``Fallback`` where there is any doubt."""
    if isinstance(type_node, NonNullTypeNode):
        if value is None:
            raise Fallback
        return _coerce(type_node.type, value)
    if value is None:
        return None
    if isinstance(type_node, ListTypeNode) or not isinstance(type_node, NamedTypeNode):
        raise Fallback
    name = type_node.name.value
    if name == "ID":
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise Fallback
    if name == "String":
        if isinstance(value, str):
            return value
        raise Fallback
    if name == "Int":
        if isinstance(value, int) and not isinstance(value, bool) and _INT_MIN <= value <= _INT_MAX:
            return value
        raise Fallback
    if name == "OrderEventState":
        if isinstance(value, str) and value in _STATES:
            return _STATES[value]
        raise Fallback
    if name == "JSON":
        return value
    if name == "OrderEventInput":
        return _event_input(value)
    raise Fallback


_EVENT_INPUT_TYPES: Final = {
    name: parse_type(text)
    for name, text in {
        "service": "String!",
        "serviceStatus": "String!",
        "state": "OrderEventState",
        "description": "String",
        "metadata": "JSON",
    }.items()
}


def _event_input(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not set(value) <= set(_EVENT_INPUT_TYPES):
        raise Fallback
    coerced: dict[str, Any] = {"state": EventState.SUCCESS}
    for name, type_node in _EVENT_INPUT_TYPES.items():
        if name in value:
            coerced[name] = _coerce(type_node, value[name])
        elif isinstance(type_node, NonNullTypeNode):
            raise Fallback
    return coerced


def _literal(node: ValueNode, variables: Mapping[str, Any]) -> Any:
    """A literal argument (already validated against its type) as graphql-core passes it."""
    if isinstance(node, VariableNode):
        return variables.get(node.name.value, _MISSING)
    if isinstance(node, NullValueNode):
        return None
    if isinstance(node, StringValueNode):
        return node.value
    if isinstance(node, IntValueNode):
        return int(node.value)
    if isinstance(node, EnumValueNode):
        return _STATES[node.value]
    if isinstance(node, BooleanValueNode | FloatValueNode):
        raise Fallback
    if isinstance(node, ObjectValueNode):
        return _event_literal(node, variables)
    raise Fallback


def _event_literal(node: ObjectValueNode, variables: Mapping[str, Any]) -> dict[str, Any]:
    """An ``OrderEventInput`` written inline; its ``metadata`` is JSON, taken as written."""
    result: dict[str, Any] = {"state": EventState.SUCCESS}
    for field in node.fields:
        name = field.name.value
        if name == "metadata":
            result[name] = value_from_ast_untyped(field.value, dict(variables))
            continue
        value = _literal(field.value, variables)
        if value is _MISSING:
            continue  # an absent variable leaves the field to its default
        result[name] = value
    return result


async def execute(plan: Plan, context: Context, variables: Mapping[str, Any] | None) -> Any:
    """Runs ``plan``: an ``ExecutionResult``, or ``Fallback`` before anything ran."""
    values = plan.coerce_variables(variables)
    public_url = context.settings.public_url
    if plan.field == "createOrderEvent":
        account_id = _id(plan.argument("accountId", values))
        order_id = _id(plan.argument("orderId", values))
        event = plan.argument("event", values)
        if not isinstance(event, dict):
            raise Fallback
        new_event = NewEvent(
            service=event["service"],
            service_status=event["serviceStatus"],
            state=event.get("state") or EventState.SUCCESS,
            description=event.get("description"),
            metadata=event.get("metadata"),
        )
        idempotency_key = plan.argument("idempotencyKey", values)
        expected_version = plan.argument("expectedVersion", values)
        # Nothing may fall back from here on: the operation runs once.
        try:
            stored = await operations.create_order_event(
                context, account_id, order_id, new_event, idempotency_key, expected_version
            )
        except Exception as error:
            return _failed(plan, error, context)
        return ExecutionResult(data=plan.data(stored, public_url), errors=None)
    account_id = _id(plan.argument("accountId", values))
    order_id = _id(plan.argument("orderId", values))
    first = plan.argument("first", values, default=50)
    after = plan.argument("after", values)
    try:
        page = await operations.order_events(context, account_id, order_id, first, after)
    except Exception as error:
        return _failed(plan, error, context)
    return ExecutionResult(data=plan.data(page, public_url), errors=None)


def _id(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # an ID written as an integer literal
    raise Fallback


def _failed(plan: Plan, error: Exception, context: Context) -> Any:
    # The root fields are non-null: their error nulls the whole data, as in graphql-core.
    return ExecutionResult(data=None, errors=[convert(plan.error(error), context.request_id)])


# Subscriptions -------------------------------------------------------------------------------
# One event goes to many subscribers, most of them with the same document: its payload is
# built once per (plan, event) and shared; only the operation id differs between frames.


def watch_arguments(plan: Plan, variables: Any) -> tuple[str, str | None, str | None]:
    """(accountId, orderId, after) of a subscription plan, or ``Fallback`` where the ordinary
    route must decide (variables that do not coerce, values of the wrong kind)."""
    if variables is not None and not isinstance(variables, dict):
        raise Fallback
    values = plan.coerce_variables(variables)
    account_id = _id(plan.argument("accountId", values))
    order_id = plan.argument("orderId", values)
    order_id = None if order_id is None else _id(order_id)
    after = plan.argument("after", values)
    if after is not None and not isinstance(after, str):
        raise Fallback
    return account_id, order_id, after


class Payloads:
    """Recently built subscription payloads (JSON text), shared by subscribers."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        # The entry holds its plan, so that the plan's id cannot be reused while it is here.
        self._texts: OrderedDict[tuple[int, str], tuple[Plan, str]] = OrderedDict()

    def text(self, plan: Plan, event: StoredEvent, public_url: str) -> str:
        key = (id(plan), event.id)
        entry = self._texts.get(key)
        if entry is None:
            entry = (plan, json.dumps({"data": plan.data(event, public_url)}))
            self._texts[key] = entry
            if len(self._texts) > self._size:
                self._texts.popitem(last=False)
        return entry[1]


def error_payload(plan: Plan, error: Exception, context: Context) -> dict[str, Any]:
    return {"data": None, "errors": [convert(plan.error(error), context.request_id).formatted]}
