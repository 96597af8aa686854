"""How a legacy API maps onto the ledger: routes, where each field comes from, how to compare.

The mapping is configuration (a TOML file, read by ``sidecar.mapping_file``); this module turns
its parsed content into a ``RouteTable`` and answers, with no I/O: which route a request is
(``RouteTable.match``), and what a field's value is in a request and its answer (``extract``).
Pointing the sidecar at a different legacy API takes a new mapping file, not new code.

Guarantees (tests/unit/test_mapping.py):
- A bad mapping fails as a whole with a ``MappingError`` naming the file, the key and what is
  wrong: unknown keys, a missing field an operation needs, a malformed source or path template,
  an unknown compare rule, two routes for one method and path, or an ``ignore`` rule on a money
  field (ignoring money would hide exactly what the sidecar exists to find).
- ``match`` is exact on the method and on every literal path segment; a ``{name}`` segment
  matches one non-empty segment and is returned as a path parameter. Literal routes win over
  templated ones of the same shape; otherwise the first route in the file wins.
- ``extract`` never guesses: a missing key, index or header is ``MISSING``, not ``None``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

from sidecar.errors import MappingError

if TYPE_CHECKING:
    from sidecar.domain.answer import Answers


class Operation(StrEnum):
    OPEN_ACCOUNT = "open_account"
    TRANSFER = "transfer"
    REVERSAL = "reversal"
    BALANCE = "balance"


class AmountFormat(StrEnum):
    MINOR = "minor"  # integer minor units: 1050
    DECIMAL = "decimal"  # decimal string or number with the currency's exponent: "10.50"


class Origin(StrEnum):
    REQUEST = "request"  # the request's JSON body
    ANSWER = "answer"  # the legacy answer's JSON body
    PATH = "path"  # a {name} segment of the route's path
    QUERY = "query"  # a query-string parameter
    HEADER = "header"  # a request header (case-insensitive)


#: the fields each operation needs, and those it may have
REQUIRED: Final[dict[Operation, frozenset[str]]] = {
    Operation.OPEN_ACCOUNT: frozenset({"account", "currency"}),
    Operation.TRANSFER: frozenset({"key", "debit", "credit", "amount", "currency"}),
    Operation.REVERSAL: frozenset({"key", "reverses"}),
    Operation.BALANCE: frozenset({"account", "balance", "currency"}),
}
OPTIONAL: Final[dict[Operation, frozenset[str]]] = {
    Operation.OPEN_ACCOUNT: frozenset({"key", "normal_side", "overdraft_limit", "status"}),
    Operation.TRANSFER: frozenset({"metadata", "reference"}),
    Operation.REVERSAL: frozenset({"metadata", "reference"}),
    Operation.BALANCE: frozenset(),
}
#: fields holding money: an ``ignore`` compare rule on them is refused
MONEY_FIELDS: Final = frozenset({"amount", "balance", "overdraft_limit"})
#: what the ledger reports of a command, so what a route's ``result`` may compare it with
RESULT_FIELDS: Final = frozenset({"amount", "balance", "currency"})
#: the widest tolerance a money field may have, in minor units
TOLERANCE_MINOR_MAX: Final = 100

_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%-]+")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_JSON_PATH = re.compile(r"[A-Za-z0-9_-]+(\[[0-9]+\])*(\.[A-Za-z0-9_-]+(\[[0-9]+\])*)*")
_HOOK = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
_METHODS: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


class _Missing:
    """The value of a field that is not there (distinct from JSON null)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()


@dataclass(frozen=True, slots=True)
class FieldSource:
    """Where a field's value is found: ``answer:data.amount``, ``path:id``, ``header:Idem-Key``."""

    origin: Origin
    locator: str

    def __str__(self) -> str:
        return f"{self.origin.value}:{self.locator}"


class CompareKind(StrEnum):
    EXACT = "exact"  # equal as JSON values
    MONEY = "money"  # equal as exact amounts after normalising formats
    IGNORE = "ignore"  # named noise: never a divergence
    TOLERANCE = "tolerance"  # money within ``tolerance_minor`` minor units


@dataclass(frozen=True, slots=True)
class CompareRule:
    kind: CompareKind
    tolerance_minor: int = 0


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the legacy answer says accepted or rejected."""

    accepted_statuses: frozenset[int]
    rejected_statuses: frozenset[int]
    #: where the legacy answer names its rejection, and which of its codes mean what
    rejection_code: FieldSource | None = None
    rejection_codes: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    method: str
    path: str
    segments: tuple[str, ...]  # literal segments, or "{name}" for a parameter
    operation: Operation
    fields: Mapping[str, FieldSource]
    amount_format: AmountFormat
    outcome: Outcome
    compare: Mapping[str, CompareRule]
    hook: str | None = None
    #: where the legacy answer says what it did (``amount = "answer:amount.value"``); a name
    #: not given here is read from ``fields`` (what the request asked for)
    result: Mapping[str, FieldSource] = field(default_factory=dict)
    #: a GET path on the legacy service answering, for a request in doubt, exactly what the
    #: request was answered (404 if it was never processed): ``/v1/idempotency/{key}``
    lookup: str | None = None
    #: how the legacy API answers, so the ledger can answer in its place (ledger-primary);
    #: None: this route is always answered by the legacy service
    answer: Answers | None = None

    @property
    def literal_segments(self) -> int:
        return sum(1 for s in self.segments if not _PARAM.fullmatch(s))


@dataclass(frozen=True, slots=True)
class MatchedRoute:
    route: Route
    path_params: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class RouteTable:
    source: str
    routes: tuple[Route, ...]
    #: minor-unit exponents of the currencies the legacy API speaks
    currencies: Mapping[str, int]

    def match(self, method: str, path: str) -> MatchedRoute | None:
        segments = _split(path)
        if segments is None:
            return None
        best: MatchedRoute | None = None
        best_literals = -1
        for route in self.routes:
            if route.method != method.upper() or len(route.segments) != len(segments):
                continue
            params: dict[str, str] = {}
            for pattern, actual in zip(route.segments, segments, strict=True):
                name = _PARAM.fullmatch(pattern)
                if name:
                    params[name.group(1)] = actual
                elif pattern != actual:
                    break
            else:
                if route.literal_segments > best_literals:
                    best, best_literals = MatchedRoute(route, params), route.literal_segments
        return best


def _split(path: str) -> tuple[str, ...] | None:
    path = path.split("?", 1)[0]
    if not path.startswith("/"):
        return None
    parts = tuple(p for p in path.split("/")[1:])
    if parts and parts[-1] == "":
        parts = parts[:-1]  # a trailing slash names the same resource
    if any(p == "" for p in parts):
        return None
    return parts


def extract(
    source: FieldSource,
    *,
    request: Any = MISSING,
    answer: Any = MISSING,
    path_params: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Any:
    """The value ``source`` points at, or ``MISSING``."""
    if source.origin is Origin.PATH:
        return (path_params or {}).get(source.locator, MISSING)
    if source.origin is Origin.QUERY:
        return (query or {}).get(source.locator, MISSING)
    if source.origin is Origin.HEADER:
        wanted = source.locator.lower()
        for name, value in (headers or {}).items():
            if name.lower() == wanted:
                return value
        return MISSING
    document = request if source.origin is Origin.REQUEST else answer
    return _walk(document, source.locator)


def _walk(document: Any, locator: str) -> Any:
    node = document
    for part in locator.split("."):
        name, *indexes = part.split("[")
        if not isinstance(node, dict) or name not in node:
            return MISSING
        node = node[name]
        for index in indexes:
            i = int(index.rstrip("]"))
            if not isinstance(node, list) or i >= len(node):
                return MISSING
            node = node[i]
    return node


# --- parsing --------------------------------------------------------------------------------


def parse_route_table(raw: Mapping[str, Any], source: str) -> RouteTable:
    """Build a ``RouteTable`` from a parsed mapping file; ``source`` names it in errors."""
    _only(raw, {"currencies", "route"}, "", source)
    currencies = _currencies(raw.get("currencies", {}), source)
    routes_raw = raw.get("route")
    if not isinstance(routes_raw, list) or not routes_raw:
        raise MappingError(source, "route", "at least one [[route]] table is needed")
    routes: list[Route] = []
    seen: dict[tuple[str, tuple[str, ...]], str] = {}
    names: set[str] = set()
    for i, route_raw in enumerate(routes_raw):
        route = _route(route_raw, f"route[{i}]", source)
        if route.name in names:
            raise MappingError(source, f"route[{i}].name", f"{route.name!r} names another route")
        names.add(route.name)
        shape = (route.method, tuple("{}" if _PARAM.fullmatch(s) else s for s in route.segments))
        if shape in seen:
            raise MappingError(
                source,
                f"route[{i}].path",
                f"{route.method} {route.path} is already mapped by route {seen[shape]!r}",
            )
        seen[shape] = route.name
        routes.append(route)
    return RouteTable(source, tuple(routes), currencies)


def _only(raw: Mapping[str, Any], allowed: set[str], where: str, source: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise MappingError(source, key, f"unknown key (known: {', '.join(sorted(allowed))})")


def _currencies(raw: Any, source: str) -> dict[str, int]:
    if not isinstance(raw, Mapping):
        raise MappingError(source, "currencies", "must be a table of CODE = exponent")
    out: dict[str, int] = {}
    for code, exponent in raw.items():
        if not re.fullmatch(r"[A-Z]{3}", str(code)):
            raise MappingError(source, f"currencies.{code}", "a code is three capital letters")
        if not isinstance(exponent, int) or isinstance(exponent, bool) or not 0 <= exponent <= 18:
            raise MappingError(source, f"currencies.{code}", "the exponent is an integer 0..18")
        out[str(code)] = exponent
    return out


_ROUTE_KEYS = {
    "name",
    "method",
    "path",
    "operation",
    "fields",
    "amount_format",
    "accepted_statuses",
    "rejected_statuses",
    "rejection_code",
    "rejection_codes",
    "compare",
    "hook",
    "result",
    "lookup",
    "answer",
}


def _route(raw: Any, where: str, source: str) -> Route:
    if not isinstance(raw, Mapping):
        raise MappingError(source, where, "must be a table")
    _only(raw, _ROUTE_KEYS, where, source)
    name = _text(raw, "name", where, source)
    method = _text(raw, "method", where, source).upper()
    if method not in _METHODS:
        raise MappingError(source, f"{where}.method", f"one of {', '.join(sorted(_METHODS))}")
    path = _text(raw, "path", where, source)
    segments = _template(path, f"{where}.path", source)
    try:
        operation = Operation(_text(raw, "operation", where, source))
    except ValueError:
        raise MappingError(
            source, f"{where}.operation", f"one of {', '.join(o.value for o in Operation)}"
        ) from None
    fields = _fields(raw.get("fields"), operation, segments, f"{where}.fields", source)
    try:
        amount_format = AmountFormat(raw.get("amount_format", "minor"))
    except ValueError:
        raise MappingError(source, f"{where}.amount_format", "minor or decimal") from None
    outcome = Outcome(
        accepted_statuses=_statuses(raw, "accepted_statuses", where, source, default=(200, 201)),
        rejected_statuses=_statuses(raw, "rejected_statuses", where, source, default=()),
        rejection_code=(
            _source(raw["rejection_code"], f"{where}.rejection_code", segments, source)
            if "rejection_code" in raw
            else None
        ),
        rejection_codes=_rejection_codes(raw.get("rejection_codes", {}), where, source),
    )
    if outcome.accepted_statuses & outcome.rejected_statuses:
        raise MappingError(
            source, f"{where}.rejected_statuses", "a status cannot mean accepted and rejected"
        )
    compare = _compare(raw.get("compare", {}), f"{where}.compare", source)
    hook = raw.get("hook")
    if hook is not None and (not isinstance(hook, str) or not _HOOK.fullmatch(hook)):
        raise MappingError(source, f"{where}.hook", "a dotted path: package.module:function")
    result = _result(raw.get("result", {}), segments, f"{where}.result", source)
    lookup = _lookup(raw.get("lookup"), fields, f"{where}.lookup", source)
    answer = None
    if "answer" in raw:
        from sidecar.domain.answer import parse_answers  # it reads this module's types

        answer = parse_answers(raw["answer"], operation, fields, f"{where}.answer", source)
    return Route(
        name,
        method,
        path,
        segments,
        operation,
        fields,
        amount_format,
        outcome,
        compare,
        hook,
        result,
        lookup,
        answer,
    )


def _lookup(raw: Any, fields: Mapping[str, FieldSource], key: str, source: str) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or _split(raw) is None or "?" in raw:
        raise MappingError(source, key, "a path like /v1/idempotency/{key}")
    for name in _PARAM.findall(raw):
        if name not in fields:
            raise MappingError(source, key, f"{{{name}}} is not one of the route's fields")
    return raw


def lookup_path(route: Route, values: Mapping[str, str]) -> str:
    """The route's lookup path with its ``{field}`` placeholders filled in."""
    assert route.lookup is not None
    return _PARAM.sub(lambda m: values[m.group(1)], route.lookup)


def _result(raw: Any, segments: Sequence[str], key: str, source: str) -> dict[str, FieldSource]:
    if not isinstance(raw, Mapping):
        raise MappingError(source, key, "a table of field = source in the legacy answer")
    out: dict[str, FieldSource] = {}
    for name, value in raw.items():
        if name not in RESULT_FIELDS:
            raise MappingError(
                source,
                f"{key}.{name}",
                f"the ledger reports only {', '.join(sorted(RESULT_FIELDS))}; name other "
                "answer fields under compare as ignore",
            )
        out[str(name)] = _source(value, f"{key}.{name}", segments, source)
    return out


def _text(raw: Mapping[str, Any], key: str, where: str, source: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise MappingError(source, f"{where}.{key}", "a non-empty string is needed")
    return value.strip()


def _template(path: str, key: str, source: str) -> tuple[str, ...]:
    segments = _split(path)
    if segments is None or "?" in path:
        raise MappingError(source, key, "a path starts with / and has no empty segment or query")
    names: set[str] = set()
    for segment in segments:
        param = _PARAM.fullmatch(segment)
        if param:
            if param.group(1) in names:
                raise MappingError(source, key, f"parameter {{{param.group(1)}}} appears twice")
            names.add(param.group(1))
        elif not _SEGMENT.fullmatch(segment):
            raise MappingError(source, key, f"segment {segment!r} is neither literal nor {{name}}")
    return segments


def _source(raw: Any, key: str, segments: Sequence[str], source: str) -> FieldSource:
    if not isinstance(raw, str) or ":" not in raw:
        raise MappingError(source, key, "a source is origin:locator, e.g. answer:data.amount")
    origin_text, locator = raw.split(":", 1)
    try:
        origin = Origin(origin_text)
    except ValueError:
        raise MappingError(
            source, key, f"origin {origin_text!r} is not one of {', '.join(o for o in Origin)}"
        ) from None
    if origin in (Origin.REQUEST, Origin.ANSWER) and not _JSON_PATH.fullmatch(locator):
        raise MappingError(source, key, f"{locator!r} is not a path like data.items[0].amount")
    if origin is Origin.PATH and f"{{{locator}}}" not in segments:
        raise MappingError(source, key, f"the route's path has no {{{locator}}}")
    if not locator:
        raise MappingError(source, key, "the locator is empty")
    return FieldSource(origin, locator)


def _fields(
    raw: Any, operation: Operation, segments: Sequence[str], key: str, source: str
) -> dict[str, FieldSource]:
    if not isinstance(raw, Mapping):
        raise MappingError(source, key, "a table of field = source is needed")
    allowed = REQUIRED[operation] | OPTIONAL[operation]
    _only(raw, set(allowed), key, source)
    missing = sorted(REQUIRED[operation] - set(raw))
    if missing:
        raise MappingError(source, f"{key}.{missing[0]}", f"{operation.value} needs this field")
    return {name: _source(value, f"{key}.{name}", segments, source) for name, value in raw.items()}


def _statuses(
    raw: Mapping[str, Any], key: str, where: str, source: str, *, default: Sequence[int]
) -> frozenset[int]:
    value = raw.get(key, list(default))
    if not isinstance(value, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in value
    ):
        raise MappingError(source, f"{where}.{key}", "a list of HTTP statuses (100..599)")
    return frozenset(value)


def _rejection_codes(raw: Any, where: str, source: str) -> dict[str, frozenset[str]]:
    key = f"{where}.rejection_codes"
    if not isinstance(raw, Mapping):
        raise MappingError(source, key, "a table of outcome = [legacy codes]")
    known = {
        "insufficient_funds",
        "account_not_open",
        "unknown_account",
        "currency_mismatch",
        "unknown_transfer",
        "already_reversed",
        "duplicate",
    }
    _only(raw, known, key, source)
    out: dict[str, frozenset[str]] = {}
    for name, codes in raw.items():
        if not isinstance(codes, list) or not all(isinstance(c, str) and c for c in codes):
            raise MappingError(source, f"{key}.{name}", "a list of the legacy API's codes")
        out[name] = frozenset(codes)
    return out


def _compare(raw: Any, key: str, source: str) -> dict[str, CompareRule]:
    if not isinstance(raw, Mapping):
        raise MappingError(source, key, "a table of field = rule")
    out: dict[str, CompareRule] = {}
    for name, rule_raw in raw.items():
        where = f"{key}.{name}"
        if isinstance(rule_raw, Mapping):
            _only(rule_raw, {"tolerance_minor"}, where, source)
            tolerance = rule_raw.get("tolerance_minor")
            if (
                not isinstance(tolerance, int)
                or isinstance(tolerance, bool)
                or not 0 <= tolerance <= TOLERANCE_MINOR_MAX
            ):
                raise MappingError(
                    source,
                    f"{where}.tolerance_minor",
                    f"a whole number from 0 to {TOLERANCE_MINOR_MAX} (more is ignoring money)",
                )
            if name not in MONEY_FIELDS:
                raise MappingError(
                    source,
                    where,
                    f"a tolerance applies to money ({', '.join(sorted(MONEY_FIELDS))})",
                )
            rule = CompareRule(CompareKind.TOLERANCE, tolerance)
        else:
            try:
                rule = CompareRule(CompareKind(rule_raw))
            except ValueError:
                raise MappingError(
                    source,
                    where,
                    "exact, money, ignore, or { tolerance_minor = N }",
                ) from None
        if rule.kind is CompareKind.IGNORE and name in MONEY_FIELDS:
            raise MappingError(
                source, where, f"{name} is money: ignoring it would hide a monetary divergence"
            )
        out[str(name)] = rule
    return out
