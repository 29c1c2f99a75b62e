"""Compiled documents: the few operations clients send over and over, run without
graphql-core's per-field machinery.

Everything a plan does is derived from the schema, with graphql-core's and Strawberry's own
coercion and types, so that it answers as the ordinary route does; any document or variable
value a plan cannot take is left to that route, which gives the ordinary answer
(``tests/test_documents.py`` holds both to the same).
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, cast

import strawberry
from graphql import (
    ArgumentNode,
    DocumentNode,
    FieldNode,
    GraphQLArgument,
    GraphQLEnumType,
    GraphQLError,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLLeafType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLSchema,
    ListValueNode,
    ObjectValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionNode,
    SelectionSetNode,
    ValueNode,
    VariableDefinitionNode,
    VariableNode,
    parse,
    specified_rules,
    validate,
)
from graphql.execution.values import coerce_argument, get_variable_values
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types import ExecutionResult

from app import tracing
from app.api import limits, operations
from app.api.context import Context
from app.api.errors import convert
from app.api.persisted import PersistedQueries
from app.memo import ByIdentity
from app.settings import Settings

# Longer documents take the ordinary route, where every request limit applies in full.
MAX_DOCUMENT = 4096
MAX_PLANS = 256

# Where Strawberry keeps, on each graphql-core type, field and argument, what it was made from.
_DEFINITION = GraphQLCoreConverter.DEFINITION_BACKREF

Serializer = Callable[[Any], Any]
Runner = Callable[..., Any]


@dataclass(frozen=True)
class Arguments:
    """How a root field's arguments are made, each by graphql-core's ``coerce_argument``:
    those written without variables (and those left out) once, when the document is compiled;
    those with variables per request. Keyed by their Python names, as resolvers get them,
    each made the resolver's (``_converter``) once as well."""

    schema: GraphQLSchema
    node: FieldNode
    variable_definitions: tuple[VariableDefinitionNode, ...]
    constants: dict[str, Any]  # by Python name
    # (GraphQL name, Python name, definition, node, what makes its value a resolver's)
    per_request: tuple[
        tuple[str, str, GraphQLArgument, ArgumentNode, Callable[[Any], Any] | None], ...
    ]

    @classmethod
    def of(
        cls,
        schema: GraphQLSchema,
        field: GraphQLField,
        node: FieldNode,
        operation: OperationDefinitionNode,
    ) -> Arguments:
        given = {argument.name.value: argument for argument in node.arguments or ()}
        constants: dict[str, Any] = {}
        per_request = []
        for name, definition in field.args.items():
            python = definition.extensions[_DEFINITION].python_name
            made_resolvers = _converter(definition.type)
            argument = given.get(name)
            if argument is not None and _has_variables(argument.value):
                per_request.append((name, python, definition, argument, made_resolvers))
                continue
            coerced: dict[str, Any] = {}
            coerce_argument(coerced, node, name, definition, argument, None, None)
            if name in coerced:
                value = coerced[name]
                constants[python] = value if made_resolvers is None else made_resolvers(value)
        return cls(
            schema=schema,
            node=node,
            variable_definitions=tuple(operation.variable_definitions or ()),
            constants=constants,
            per_request=tuple(per_request),
        )

    def values(self, variables: Any) -> dict[str, Any] | None:
        """The arguments for ``variables``; None when they do not coerce (the ordinary route
        reports why)."""
        if variables is not None and not isinstance(variables, dict):
            return None
        values = dict(self.constants)
        if not self.per_request:
            return values  # a document without variables: nothing is left to coerce
        coerced = get_variable_values(self.schema, self.variable_definitions, variables or {})
        if isinstance(coerced, list):
            return None
        made: dict[str, Any] = {}
        try:
            for name, _, definition, argument, _ in self.per_request:
                coerce_argument(made, self.node, name, definition, argument, coerced, None)
        except GraphQLError:
            return None
        for name, python, _, _, made_resolvers in self.per_request:
            if name in made:
                value = made[name]
                values[python] = value if made_resolvers is None else made_resolvers(value)
        return values


@dataclass(frozen=True)
class Plan:
    """A document compiled once: valid by the ordinary route's rules (request limits
    included), one operation selecting one root field that ``app.api.operations`` runs, with
    plain fields, aliases and ``__typename`` below it. Its arguments are made as ``Arguments``
    says; its response is read from the Strawberry objects the resolvers return, field by
    field as the types declare them (``_reader``)."""

    operation: OperationType
    name: str | None  # the operation's name, for the access log
    response_key: str
    field_node: FieldNode
    given: Arguments
    run: Runner | None  # what the root field does; None for a subscription
    serialize: Serializer

    def arguments(self, variables: Any) -> dict[str, Any] | None:
        """The root field's arguments by their Python names, as its resolver gets them; None
        when the variables do not coerce (the ordinary route reports why)."""
        return self.given.values(variables)

    def data(self, value: Any) -> dict[str, Any]:
        """The response's ``data`` for the root field's value."""
        return {self.response_key: self.serialize(value)}

    def error(self, exception: Exception, request_id: str) -> GraphQLError:
        located = GraphQLError(
            str(exception),
            nodes=[self.field_node],
            path=[self.response_key],
            original_error=exception,
        )
        return convert(located, request_id)


class Compiler:
    """Compiles documents into plans, remembering the answer (a plan or None) per document."""

    def __init__(self, schema: strawberry.Schema, settings: Settings | None = None) -> None:
        # graphql-core's view of the Strawberry schema: the very types it executes with.
        types = schema.schema_converter.type_map
        roots = {
            operation: types[name].implementation if name in types else None
            for operation, name in (
                (OperationType.QUERY, "Query"),
                (OperationType.MUTATION, "Mutation"),
                (OperationType.SUBSCRIPTION, "Subscription"),
            )
        }
        self.schema = GraphQLSchema(
            query=roots[OperationType.QUERY],  # type: ignore[arg-type]
            mutation=roots[OperationType.MUTATION],  # type: ignore[arg-type]
            subscription=roots[OperationType.SUBSCRIPTION],  # type: ignore[arg-type]
        )
        self._limits, limit_rule = limits.compiled(settings)
        self._rules = (*specified_rules, limit_rule)
        self._plans: OrderedDict[tuple[str, str | None], Plan | None] = OrderedDict()
        # The documents requests name by hash: a hash found there is the very text its plan
        # is remembered by, so that a request by hash finds its plan as its text would.
        self.persisted = PersistedQueries.from_settings(settings)

    def plan(self, query: object, operation_name: object, method: str) -> Plan | None:
        """The plan for an HTTP request's query or mutation, if there is one."""
        plan = self._plan_for(query, operation_name)
        if plan is None or plan.operation == OperationType.SUBSCRIPTION:
            return None  # subscriptions are served over WebSocket (``subscription_plan``)
        if method == "GET" and plan.operation != OperationType.QUERY:
            return None  # the ordinary route refuses mutations over GET
        return plan

    def subscription_plan(self, query: object, operation_name: object) -> Plan | None:
        """The plan for a subscription, if there is one."""
        plan = self._plan_for(query, operation_name)
        return plan if plan is not None and plan.operation == OperationType.SUBSCRIPTION else None

    def _plan_for(self, query: object, operation_name: object) -> Plan | None:
        if not isinstance(query, str) or len(query) > MAX_DOCUMENT:
            return None
        if operation_name is not None and not isinstance(operation_name, str):
            return None  # the ordinary route says what is wrong with it
        key = (query, operation_name)
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        plan = self._compile(query, operation_name)
        self._plans[key] = plan
        if len(self._plans) > MAX_PLANS:
            self._plans.popitem(last=False)
        return plan

    def _compile(self, query: str, operation_name: str | None) -> Plan | None:
        try:
            document = parse(
                query,
                max_lexical_tokens=self._limits.max_tokens,
                max_comments=self._limits.max_tokens,
            )
        except GraphQLError:
            return None
        if limits.check(document, self._limits).refusals or validate(
            self.schema, document, self._rules
        ):
            return None
        return self._plan(document, operation_name)

    def _plan(self, document: DocumentNode, operation_name: str | None) -> Plan | None:
        if len(document.definitions) != 1:
            return None
        operation = document.definitions[0]
        if not isinstance(operation, OperationDefinitionNode) or operation.directives:
            return None
        if operation_name is not None and (
            operation.name is None or operation.name.value != operation_name
        ):
            return None
        if any(
            definition.default_value is not None or definition.directives
            for definition in operation.variable_definitions or ()
        ):
            return None
        selections = operation.selection_set.selections
        if len(selections) != 1 or not isinstance(selections[0], FieldNode):
            return None
        node = selections[0]
        root = self.schema.get_root_type(operation.operation)
        field = root.fields.get(node.name.value) if root is not None else None
        if field is None or node.directives or node.selection_set is None:
            return None
        run = None
        if operation.operation != OperationType.SUBSCRIPTION:
            run = getattr(operations, field.extensions[_DEFINITION].python_name, None)
            if run is None:
                return None
        serialize = _reader(field.type, node.selection_set)
        if serialize is None:
            return None
        try:
            given = Arguments.of(self.schema, field, node, operation)
        except GraphQLError:
            return None
        return Plan(
            operation=operation.operation,
            name=operation.name.value if operation.name else None,
            response_key=node.alias.value if node.alias else node.name.value,
            field_node=node,
            given=given,
            run=run,
            serialize=serialize,
        )


def _has_variables(value: ValueNode) -> bool:
    if isinstance(value, VariableNode):
        return True
    if isinstance(value, ObjectValueNode):
        return any(_has_variables(field.value) for field in value.fields)
    if isinstance(value, ListValueNode):
        return any(_has_variables(item) for item in value.values)
    return False


def _converter(type_: GraphQLInputType) -> Callable[[Any], Any] | None:
    """What makes a coerced value of ``type_`` the one Strawberry hands a resolver: input
    objects become instances of their Strawberry classes, keyed by Python names. None when
    the value is that already."""
    if isinstance(type_, GraphQLNonNull):
        return _converter(type_.of_type)
    if isinstance(type_, GraphQLList):
        item = _converter(type_.of_type)
        if item is None:
            return None
        return lambda value: None if value is None else [item(entry) for entry in value]
    if not isinstance(type_, GraphQLInputObjectType):
        return None
    origin = type_.extensions[_DEFINITION].origin
    fields = {
        name: (field.extensions[_DEFINITION].python_name, _converter(field.type))
        for name, field in type_.fields.items()
    }

    def convert(value: Any) -> Any:
        if value is None:
            return None
        made = {}
        for name, item in value.items():
            python, inner = fields[name]
            made[python] = item if inner is None else inner(item)
        return origin(**made)

    return convert


# Serializers: graphql-core's default resolver (the attribute of the field's Python name) and
# its value completion (lists, objects, leaves serialized by their type), worked out once per
# selection. Built-in scalars go out as they are (the typed objects hold them in the form their
# serializers return); enums and custom scalars are serialized by their types.
_AS_IS = frozenset({"String", "ID", "Int", "Float", "Boolean"})
# Completed lists of objects, shared by every plan (each entry names its selection), so that
# what is remembered stays bounded however many documents are compiled.
_lists: ByIdentity[Any] = ByIdentity(1_000)


class _Uncompiled(Exception):
    """A selection a plan does not take: the ordinary route answers it."""


def _reader(type_: GraphQLOutputType, selection_set: SelectionSetNode) -> Serializer | None:
    """How to complete the root field's value for ``selection_set``; None where a plan may
    not."""
    try:
        return _completion(type_, selection_set) or _as_is
    except _Uncompiled:
        return None


def _completion(
    type_: GraphQLOutputType, selection_set: SelectionSetNode | None
) -> Serializer | None:
    """What completing a value of ``type_`` takes; None when the value goes out as it is."""
    if isinstance(type_, GraphQLNonNull):
        return _completion(type_.of_type, selection_set)
    if isinstance(type_, GraphQLList):
        item = _completion(type_.of_type, selection_set)
        if item is None:
            return None
        if selection_set is None:
            return lambda value: None if value is None else [item(entry) for entry in value]
        # A page read again from the page cache is the same list of the same events'
        # never-changing views: it is completed once per selection.

        def complete_list(value: Any) -> Any:
            return [item(entry) for entry in value]

        return lambda value: (
            None if value is None else _lists.get(value, complete_list, complete_list)
        )
    if isinstance(type_, GraphQLObjectType) and selection_set is not None:
        return _object_completion(type_, selection_set)
    if selection_set is not None or not isinstance(type_, GraphQLLeafType):
        raise _Uncompiled
    if type_.name in _AS_IS:
        return None
    serialize = type_.serialize
    if isinstance(type_, GraphQLEnumType):
        # An enum has a few values, each always serialized alike: remembered, not searched
        # for in the type's values at each request.
        serialize = functools.lru_cache(maxsize=256)(serialize)
    return lambda value: None if value is None else serialize(value)


def _as_is(value: Any) -> Any:
    return value


def _attributes(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """Reads the ``names`` attributes of a value as a tuple."""
    if len(names) > 1:
        return attrgetter(*names)
    if names:
        read = attrgetter(names[0])
        return lambda value: (read(value),)
    return lambda _value: ()


def _selected(
    type_: GraphQLObjectType, selection: SelectionNode
) -> tuple[str, GraphQLField | None]:
    """The response key of a selection and its field (None for ``__typename``)."""
    if not isinstance(selection, FieldNode) or selection.directives or selection.arguments:
        raise _Uncompiled  # fragments, directives and arguments are graphql-core's business
    key = selection.alias.value if selection.alias else selection.name.value
    if selection.name.value == "__typename":
        return key, None
    field = type_.fields.get(selection.name.value)
    if field is None:
        raise _Uncompiled
    resolver = field.extensions[_DEFINITION].base_resolver
    if resolver is not None and (
        resolver.arguments
        or resolver.info_parameter is not None
        or resolver.root_parameter is not None
        or resolver.is_async
    ):
        raise _Uncompiled  # a resolver that wants more than its object: the ordinary route's
    return key, field


def _object_completion(type_: GraphQLObjectType, selection_set: SelectionSetNode) -> Serializer:
    keys: list[str] = []
    names: list[str] = []  # the attributes read, for the keys in ``read``
    read: list[str] = []
    completions: list[tuple[str, Serializer]] = []
    # Fields worked out by a method of the object (a resolver that takes only the object),
    # and ``__typename``: put in the selection's order by a template.
    computed: list[tuple[str, Serializer]] = []
    constants: dict[str, str] = {}
    for selection in selection_set.selections:
        key, field = _selected(type_, selection)
        if key in keys:
            raise _Uncompiled  # merging repeated keys is graphql-core's business
        keys.append(key)
        if field is None:
            constants[key] = type_.name
            continue
        complete = _completion(field.type, cast(FieldNode, selection).selection_set)
        definition = field.extensions[_DEFINITION]
        if definition.base_resolver is not None:
            computed.append((key, _computed(definition.base_resolver, complete)))
            continue
        names.append(definition.python_name)
        read.append(key)
        if complete is not None:
            completions.append((key, complete))
    read_all = _attributes(names)
    template = dict.fromkeys(keys)
    template.update(constants)
    ordered = bool(constants or computed)

    def complete_object(value: Any) -> Any:
        if value is None:
            return None
        # One C call reads every attribute, one makes the dictionary in selection order.
        if ordered:
            result = template.copy()
            result.update(zip(read, read_all(value), strict=False))
        else:
            result = dict(zip(read, read_all(value), strict=False))
        for key, complete in completions:
            result[key] = complete(result[key])
        for key, compute in computed:
            result[key] = compute(value)
        return result

    return complete_object


def _computed(resolver: Callable[[Any], Any], complete: Serializer | None) -> Serializer:
    if complete is None:
        return resolver
    return lambda value: complete(resolver(value))


async def execute(plan: Plan, context: Context, variables: Any) -> Any:
    """Runs a query or mutation plan: an ``ExecutionResult``, or None before anything ran
    when the variables do not coerce (the ordinary route then answers)."""
    arguments = plan.arguments(variables)
    if arguments is None:
        return None
    assert plan.run is not None
    tracer = tracing.active  # tested here: while tracing is off, not even a call
    operation = None if tracer is None else tracer.operation(plan.operation.value, plan.name)
    try:
        value = await plan.run(context, **arguments)
    except Exception as error:
        # The root fields are non-null: their error nulls the whole data, as in graphql-core.
        return ExecutionResult(data=None, errors=[plan.error(error, context.request_id)])
    finally:
        if operation is not None:
            operation.end()
    return ExecutionResult(data=plan.data(value), errors=None)


class Payloads:
    """Recently built subscription payloads (JSON text), shared by the subscribers of an
    event with the same plan: only the operation id differs between their frames."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        # The entry holds its plan, so that the plan's id cannot be reused while it is here.
        self._texts: OrderedDict[tuple[int, str], tuple[Plan, str]] = OrderedDict()

    def text(self, plan: Plan, key: str, value: Callable[[], Any]) -> str:
        """The payload for ``plan`` of the value ``key`` names, made by ``value()``."""
        entry = self._texts.get((id(plan), key))
        if entry is None:
            entry = (plan, json.dumps({"data": plan.data(value())}))
            self._texts[(id(plan), key)] = entry
            if len(self._texts) > self._size:
                self._texts.popitem(last=False)
        return entry[1]
