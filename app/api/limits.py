"""Limits on a GraphQL document, checked before anything runs: its tokens; before it is
validated, its selections and repeated fields, and whether a caller without a token asks for
more than introspection; then, as a validation rule, each operation's depth, aliases and
cost (``Limits`` says what each counts).

``OperationLimits`` owns the validation step: the checks before it, and each document's
verdict, remembered per parsed document and set of rules.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNamedType,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
)
from strawberry.extensions import SchemaExtension

from app.api.context import Context
from app.memo import ByIdentity
from app.settings import Settings

# The argument that sets how many items the lists below a field hold.
PAGE_ARGUMENT = "first"


@dataclass(frozen=True)
class Limits:
    """- tokens (``MAX_QUERY_TOKENS``): the parser stops counting at the limit, so an enormous
      document costs no more to refuse than a small one; comments are limited apart, to the
      same number. Large metadata belongs in variables, which are not tokens. Without a
      valid token a caller may run introspection alone, which is small: its documents are
      parsed with ``MAX_ANONYMOUS_QUERY_TOKENS``, as parsing is what they cost;
    - selections (``MAX_QUERY_SELECTIONS``): fields, fragment spreads and inline fragments in
      the whole document, a fragment's own counted again at each place it is spread (a place
      is a path of response names from an operation or fragment); the count stops at the
      limit, so a fragment spread at ever more places costs no more to refuse;
    - repeats (``MAX_QUERY_REPEATS``): fields selected where a field of the same response
      name is already selected, as in ``{ id id }`` or two fragments sharing a field at one
      place. graphql-core's ``OverlappingFieldsCanBeMergedRule`` compares such fields pair
      by pair, so its work grows with their square; a fragment spread twice at one place is
      merged, and compared, once, so it repeats nothing. Both are counted, and refused,
      before the document is validated;
    - depth (``MAX_QUERY_DEPTH``): fields nested in fields; ``{ a { b } }`` is 2 deep;
    - aliases (``MAX_QUERY_ALIASES``): they let one request repeat a root field with other
      arguments, so they are what multiplies the work one request can ask for;
    - cost (``MAX_QUERY_COST``): how many field values an operation may resolve at most. A
      field counts once for each value of the list it is in: a field of ``events`` counts
      ``first`` times, ``MAX_PAGE_SIZE`` times when ``first`` is a variable (its value is not
      known when a document is validated, and the verdict is cached per document).

    Introspection (``__schema``, ``__type``) counts as a single field for depth and cost:
    graphql-core's ``MaxIntrospectionDepthRule`` already refuses the nested introspection
    that makes it expensive, and GraphiQL's own introspection query is 15 fields deep.
    Fragments are walked once per context, not once per spread, so a "fragment bomb" costs
    as little as it is long.
    """

    max_tokens: int
    max_anonymous_tokens: int
    max_selections: int
    max_repeats: int
    max_depth: int
    max_aliases: int
    max_cost: int
    max_page_size: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_tokens=settings.max_query_tokens,
            max_anonymous_tokens=settings.max_anonymous_query_tokens,
            max_selections=settings.max_query_selections,
            max_repeats=settings.max_query_repeats,
            max_depth=settings.max_query_depth,
            max_aliases=settings.max_query_aliases,
            max_cost=settings.max_query_cost,
            max_page_size=settings.max_page_size,
        )


class OperationLimits(SchemaExtension):
    """Applies the limits of the request's settings to every operation, and validates it:
    a document over the limits, or anything but introspection from a caller without a token,
    is refused unvalidated, and a document validated before gets its verdict again.

    Strawberry validates only when no extension has (``pre_execution_errors`` is still
    None); its own ``ValidationCache`` validates whatever it is given, so it is not used."""

    limits: Limits

    def on_operation(self) -> Iterator[None]:
        execution_context = self.execution_context
        context = execution_context.context
        self.limits, rule = compiled(getattr(context, "settings", None))
        tokens = self.limits.max_tokens
        if _tokenless(context):
            tokens = min(tokens, self.limits.max_anonymous_tokens)
        # Strawberry's ParseOptions declares only the deprecated max_tokens.
        options = cast(dict[str, Any], execution_context.parse_options)
        options["max_lexical_tokens"] = tokens
        options["max_comments"] = tokens
        execution_context.validation_rules = (*execution_context.validation_rules, rule)
        yield

    def on_validate(self) -> Iterator[None]:
        execution_context = self.execution_context
        document = execution_context.graphql_document
        assert document is not None  # Strawberry validates only what it parsed
        limits = self.limits
        checked = _checked.get(
            document, lambda parsed: check(parsed, limits), execution_context.validation_rules
        )
        errors = checked.refusals or _token_refusal(execution_context.context, checked)
        if errors or checked.errors is not None:
            execution_context.pre_execution_errors = list(errors or checked.errors or [])
            yield
            return
        yield  # Strawberry validates
        checked.errors = list(execution_context.pre_execution_errors or [])


@dataclass
class Checked:
    """What ``check`` found in a document, and validation's errors once it is validated."""

    refusals: list[GraphQLError]  # the limits it is over: empty when it is within them
    introspection: bool  # every operation selects nothing but meta-fields at its root
    errors: list[GraphQLError] | None = None


# Parsed documents (the parse cache hands out one per text) with what is known of them, for
# the rules they are validated with; few, as each holds its document.
_checked: ByIdentity[Checked] = ByIdentity(128)


def _tokenless(context: object) -> bool:
    """Whether the request is known to come without a valid token (HTTP's only: a WebSocket
    has one from its start). Not while the issuer's keys are unavailable: that is the
    server's fault, and the operation reports it when it runs."""
    return isinstance(context, Context) and context.principal is None and not context.key_error


def _token_refusal(context: object, checked: Checked) -> list[GraphQLError]:
    """A caller without a token may introspect the schema and nothing else: anything else is
    refused now, as running it would refuse it, and is not validated."""
    if checked.introspection or not _tokenless(context):
        return []
    try:
        cast(Context, context).require_principal()
    except Exception as error:
        return [GraphQLError(str(error), original_error=error)]
    return []  # pragma: no cover - require_principal raises without a principal


def check(document: DocumentNode, limits: Limits) -> Checked:
    """Counts ``document``'s selections and repeats (``Limits``), in time bounded by the
    selection limit: what every route runs before validating a document."""
    count = _Count(document, limits.max_selections)
    if not count.walk():
        message = (
            f"the document makes more than {limits.max_selections} selections (fields and "
            "fragments, a fragment's counted again at each place it is spread); this server "
            f"allows at most {limits.max_selections}"
        )
        return Checked([GraphQLError(message)], count.introspection)
    refusals = []
    if count.repeats > limits.max_repeats:
        message = (
            f"the document selects fields {count.repeats} times where the same name is "
            "already selected (as `{ id id }` does, or fragments sharing a field); this "
            f"server allows at most {limits.max_repeats} such repeats"
        )
        refusals.append(GraphQLError(message))
    return Checked(refusals, count.introspection)


class _Count:
    """Walks a document's selections through its fragments, place by place (a place is a
    field's response path: the same for every field graphql-core compares with it)."""

    def __init__(self, document: DocumentNode, budget: int) -> None:
        self.document = document
        self.budget = budget
        self.fragments = {
            definition.name.value: definition
            for definition in document.definitions
            if isinstance(definition, FragmentDefinitionNode)
        }
        self.selections = 0
        self.repeats = 0
        self.introspection = True
        self.ids = itertools.count()
        self.places: dict[tuple[int, str], int] = {}  # (place, response name) -> its place
        self.entered: set[tuple[int, str]] = set()  # (place, fragment) walked
        self.spread: set[str] = set()  # fragments walked anywhere
        self.roots: set[int] = set()  # the places of operations

    def walk(self) -> bool:
        """Counts every definition's selections: False when there are too many."""
        for definition in self.document.definitions:
            if isinstance(definition, OperationDefinitionNode):
                root = next(self.ids)
                self.roots.add(root)
                if not self.selection_set(definition.selection_set, root):
                    return False
        # graphql-core's rule compares the fields of fragments that no operation spreads too.
        for name, fragment in self.fragments.items():
            if name not in self.spread and not self.selection_set(
                fragment.selection_set, next(self.ids)
            ):
                return False
        return True

    def selection_set(self, selection_set: SelectionSetNode, place: int) -> bool:
        pending = [(selection_set, place)]
        while pending:
            selection_set, place = pending.pop()
            for selection in selection_set.selections:
                self.selections += 1
                if self.selections > self.budget:
                    return False
                if isinstance(selection, FieldNode):
                    if place in self.roots and not selection.name.value.startswith("__"):
                        self.introspection = False
                    key = (place, (selection.alias or selection.name).value)
                    inner = self.places.get(key)
                    if inner is None:
                        inner = self.places[key] = next(self.ids)
                    else:
                        self.repeats += 1
                    if selection.selection_set is not None:
                        pending.append((selection.selection_set, inner))
                elif isinstance(selection, InlineFragmentNode):
                    pending.append((selection.selection_set, place))
                elif isinstance(selection, FragmentSpreadNode):
                    name = selection.name.value
                    fragment = self.fragments.get(name)
                    if fragment is None and place in self.roots:
                        self.introspection = False  # whatever it is, it is not introspection
                    elif fragment is not None and (place, name) not in self.entered:
                        self.entered.add((place, name))
                        self.spread.add(name)
                        pending.append((fragment.selection_set, place))
        return True


_DEFAULT_SETTINGS = Settings()
# id(settings) -> (settings, limits, rule): one settings object per app, looked up per request
# without hashing the whole object.
_compiled_by_settings: dict[int, tuple[Settings, Limits, type[ValidationRule]]] = {}


def compiled(settings: Settings | None) -> tuple[Limits, type[ValidationRule]]:
    """The limits of ``settings`` (the defaults for None) and the validation rule enforcing
    them: for any other route to execution, which must parse with ``max_lexical_tokens`` and
    ``max_comments`` set to ``limits.max_tokens``, refuse what ``check`` refuses, and only
    then validate, with this rule added."""
    settings = settings or _DEFAULT_SETTINGS
    entry = _compiled_by_settings.get(id(settings))
    if entry is None or entry[0] is not settings:
        limits = Limits.from_settings(settings)
        if len(_compiled_by_settings) > 64:
            _compiled_by_settings.clear()
        entry = (settings, limits, _rule_for(limits))
        _compiled_by_settings[id(settings)] = entry
    return entry[1], entry[2]


_rules: dict[Limits, type[ValidationRule]] = {}


def _rule_for(limits: Limits) -> type[ValidationRule]:
    """The validation rule for ``limits``: the same class for equal limits, so that the
    validation cache keeps working across apps with equal settings."""
    if limits not in _rules:
        _rules[limits] = _make_rule(limits)
    return _rules[limits]


def _make_rule(limits: Limits) -> type[ValidationRule]:
    class OperationLimitsRule(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            walk = _Walk(context, limits.max_page_size)
            for definition in context.document.definitions:
                if isinstance(definition, OperationDefinitionNode):
                    for message in _excesses(walk, definition, limits):
                        context.report_error(GraphQLError(message, definition))

    return OperationLimitsRule


def _excesses(walk: _Walk, operation: OperationDefinitionNode, limits: Limits) -> Iterator[str]:
    label = f"operation '{operation.name.value}'" if operation.name else "the operation"
    root = walk.context.schema.get_root_type(operation.operation)
    try:
        measure = walk.selections(operation.selection_set, root, None, False)
    except RecursionError:
        yield f"{label} is nested too deeply to be checked"
        return
    if measure.depth > limits.max_depth:
        yield (
            f"{label} nests fields {measure.depth} deep; "
            f"this server allows at most {limits.max_depth}"
        )
    if measure.aliases > limits.max_aliases:
        yield (
            f"{label} uses {measure.aliases} aliases; "
            f"this server allows at most {limits.max_aliases}"
        )
    if measure.cost > limits.max_cost:
        yield (
            f"{label} may resolve up to {measure.cost} fields (each field of a page counts "
            f"once per item, {limits.max_page_size} items when `first` is a variable); "
            f"this server allows at most {limits.max_cost} per request: ask for smaller "
            "pages or fewer fields"
        )


@dataclass(frozen=True)
class _Measure:
    depth: int = 0
    aliases: int = 0
    cost: int = 0


class _Walk:
    """Measures selection sets, following fragments, with the schema's types at hand."""

    def __init__(self, context: ValidationContext, max_page_size: int) -> None:
        self.context = context
        self.max_page_size = max_page_size
        self.fragments = {
            definition.name.value: definition
            for definition in context.document.definitions
            if isinstance(definition, FragmentDefinitionNode)
        }
        # A fragment measured once per (page, introspection) context, however often it is
        # spread; cost scales with how often its parent resolves, so it is kept per unit.
        self.measured: dict[tuple[str, int | None, bool], _Measure] = {}
        self.entered: set[str] = set()

    def selections(
        self,
        selection_set: SelectionSetNode,
        parent: GraphQLNamedType | None,
        page: int | None,
        introspection: bool,
    ) -> _Measure:
        depth = aliases = cost = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                measure = self.field(selection, parent, page, introspection)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                inner = self.context.schema.get_type(condition.name.value) if condition else parent
                measure = self.selections(selection.selection_set, inner, page, introspection)
            elif isinstance(selection, FragmentSpreadNode):
                measure = self.spread(selection.name.value, page, introspection)
            else:  # pragma: no cover - graphql-core has no other kind of selection
                continue
            depth = max(depth, measure.depth)
            aliases += measure.aliases
            cost += measure.cost
        return _Measure(depth, aliases, cost)

    def field(
        self,
        node: FieldNode,
        parent: GraphQLNamedType | None,
        page: int | None,
        introspection: bool,
    ) -> _Measure:
        introspection = introspection or node.name.value.startswith("__")
        aliases = 1 if node.alias else 0
        if node.selection_set is None:
            return _Measure(depth=1, aliases=aliases, cost=1)
        field_type: GraphQLNamedType | None = None
        repeats = 1
        definition = None
        if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
            definition = parent.fields.get(node.name.value)
        if definition is not None:
            if PAGE_ARGUMENT in definition.args:
                page = self.page_size(node, definition.args[PAGE_ARGUMENT].default_value)
            field_type, is_list = _unwrap(definition.type)
            if is_list:
                # The page is what this list holds (other lists hold a few items, like
                # `links`); lists inside its items are not pages.
                repeats = page if page is not None else 1
                page = None
        inner = self.selections(node.selection_set, field_type, page, introspection)
        if introspection:
            return _Measure(depth=1, aliases=aliases + inner.aliases, cost=1)
        return _Measure(
            depth=1 + inner.depth,
            aliases=aliases + inner.aliases,
            cost=1 + repeats * inner.cost,
        )

    def spread(self, name: str, page: int | None, introspection: bool) -> _Measure:
        fragment = self.fragments.get(name)
        if fragment is None or name in self.entered:
            # Unknown fragments and cycles are other rules' errors.
            return _Measure()
        key = (name, page, introspection)
        if key not in self.measured:
            self.entered.add(name)
            try:
                condition = self.context.schema.get_type(fragment.type_condition.name.value)
                self.measured[key] = self.selections(
                    fragment.selection_set, condition, page, introspection
                )
            finally:
                self.entered.discard(name)
        return self.measured[key]

    def page_size(self, node: FieldNode, default: Any) -> int:
        for argument in node.arguments or ():
            if argument.name.value == PAGE_ARGUMENT:
                if isinstance(argument.value, IntValueNode):
                    # Beyond the maximum the resolver refuses the request anyway.
                    return max(0, min(int(argument.value.value), self.max_page_size))
                if argument.value.kind == "variable":
                    return self.max_page_size
        if isinstance(default, int):
            return min(default, self.max_page_size)
        return self.max_page_size


def _unwrap(field_type: GraphQLOutputType) -> tuple[GraphQLNamedType, bool]:
    """The named type inside ``field_type``, and whether a list is on the way."""
    is_list = False
    while isinstance(field_type, GraphQLNonNull | GraphQLList):
        is_list = is_list or isinstance(field_type, GraphQLList)
        field_type = field_type.of_type
    return cast(GraphQLNamedType, field_type), is_list
