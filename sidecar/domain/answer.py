"""The ledger's answer in the legacy API's shape (``ledger-primary``): a route's ``[route.answer]``
says which status and body the legacy API gives for an accepted command and for each kind of
refusal; this module parses that and renders an answer from a ledger result. No I/O.

Guarantees (tests/unit/test_answer.py):
- A route's answers cover every refusal the ledger can give for its operation (a missing one
  is a start-up error naming the route and the refusal), so a ledger-primary request always
  has an answer in the API's own words.
- Placeholders are checked at start-up: ``{ledger:amount}`` and the like only where the
  operation has them, request sources (``{request:amount.value}``, ``{path:account}``...) as
  the route's fields are. A whole-string placeholder keeps its type (an amount in minor units
  stays a number); one inside a longer string is text.
- Amounts are rendered exactly, in the route's amount format: 1234 EUR minor is "12.34".
- Rendering never fails once the ledger has decided (the answer is owed): a value that is not
  there renders as null, a currency the mapping does not know as minor units.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sidecar.domain.mapping import (
    MISSING,
    AmountFormat,
    FieldSource,
    Operation,
    Origin,
    extract,
)
from sidecar.domain.money import Amount, Currency
from sidecar.errors import MappingError

#: every refusal the ledger can give, per operation: each needs an answer
REFUSALS: Mapping[Operation, frozenset[str]] = {
    Operation.OPEN_ACCOUNT: frozenset({"exists"}),
    Operation.TRANSFER: frozenset(
        {"insufficient_funds", "account_not_open", "unknown_account", "currency_mismatch"}
    ),
    Operation.REVERSAL: frozenset(
        {"insufficient_funds", "account_not_open", "unknown_transfer", "already_reversed"}
    ),
    Operation.BALANCE: frozenset({"unknown_account"}),
}
#: the ledger's values each operation's answers may name
LEDGER_VALUES: Mapping[Operation, frozenset[str]] = {
    Operation.OPEN_ACCOUNT: frozenset({"account", "currency"}),
    Operation.TRANSFER: frozenset({"amount", "currency", "key"}),
    Operation.REVERSAL: frozenset({"amount", "currency", "key"}),
    Operation.BALANCE: frozenset({"balance", "currency", "account"}),
}
SPECIAL = frozenset({"now", "new_id"})
_PLACEHOLDER = re.compile(r"\{([a-z_]+(?::[^{}]+)?)\}")


@dataclass(frozen=True, slots=True)
class Shape:
    status: int
    body: Any  # JSON, with placeholders in its strings


@dataclass(frozen=True, slots=True)
class Answers:
    accepted: Shape
    refused: Mapping[str, Shape]


@dataclass(frozen=True, slots=True)
class LedgerAnswer:
    """What the ledger decided, in the terms answers are written in."""

    refusal: str | None  # None: accepted
    values: Mapping[str, Any]  # amount (minor), balance (minor), currency, key, account


def parse_answers(
    raw: Any, operation: Operation, fields: Mapping[str, FieldSource], key: str, source: str
) -> Answers:
    if not isinstance(raw, Mapping):
        raise MappingError(source, key, "a table with status, body and [refused.<why>] tables")
    unknown = sorted(set(raw) - {"status", "body", "refused"})
    if unknown:
        raise MappingError(
            source, f"{key}.{unknown[0]}", "unknown key (known: body, refused, status)"
        )
    accepted = _shape(raw, operation, key, source)
    refused_raw = raw.get("refused", {})
    if not isinstance(refused_raw, Mapping):
        raise MappingError(source, f"{key}.refused", "a table of refusal = { status, body }")
    needed = REFUSALS[operation]
    extra = sorted(set(refused_raw) - needed)
    if extra:
        raise MappingError(
            source, f"{key}.refused.{extra[0]}", f"{operation.value} is never refused so"
        )
    missing = sorted(needed - set(refused_raw))
    if missing:
        raise MappingError(
            source,
            f"{key}.refused.{missing[0]}",
            f"the ledger can refuse {operation.value} so: its answer in this API is needed",
        )
    refused = {
        name: _shape(value, operation, f"{key}.refused.{name}", source)
        for name, value in refused_raw.items()
    }
    return Answers(accepted, refused)


def _shape(raw: Any, operation: Operation, key: str, source: str) -> Shape:
    if not isinstance(raw, Mapping):
        raise MappingError(source, key, "a table with status and body")
    status = raw.get("status")
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
        raise MappingError(source, f"{key}.status", "an HTTP status (200..599)")
    body = raw.get("body", {})
    _check_placeholders(body, operation, f"{key}.body", source)
    return Shape(status, body)


def _check_placeholders(body: Any, operation: Operation, key: str, source: str) -> None:
    if isinstance(body, str):
        for name in _PLACEHOLDER.findall(body):
            origin, _, locator = name.partition(":")
            if not locator:
                if name not in SPECIAL:
                    raise MappingError(source, key, f"{{{name}}}: known are now, new_id")
            elif origin == "ledger":
                if locator not in LEDGER_VALUES[operation]:
                    allowed = ", ".join(sorted(LEDGER_VALUES[operation]))
                    raise MappingError(
                        source, key, f"{{{name}}}: {operation.value} gives only {allowed}"
                    )
            elif origin not in {o.value for o in Origin} or origin == Origin.ANSWER.value:
                raise MappingError(
                    source, key, f"{{{name}}}: a ledger value, or request, path, query, header"
                )
    elif isinstance(body, Mapping):
        for name, value in body.items():
            _check_placeholders(value, operation, f"{key}.{name}", source)
    elif isinstance(body, list):
        for index, value in enumerate(body):
            _check_placeholders(value, operation, f"{key}[{index}]", source)


def render(
    answers: Answers,
    decided: LedgerAnswer,
    *,
    amount_format: AmountFormat,
    currencies: Mapping[str, int],
    request: Any,
    path_params: Mapping[str, str],
    query: Mapping[str, str],
    headers: Mapping[str, str],
    now: str,
    new_id: str,
) -> tuple[int, Any]:
    """The status and JSON body the legacy API would give for what the ledger decided."""
    shape = answers.accepted if decided.refusal is None else answers.refused[decided.refusal]

    def value(name: str) -> Any:
        origin, _, locator = name.partition(":")
        if not locator:
            return now if name == "now" else new_id
        if origin == "ledger":
            found = decided.values.get(locator, MISSING)
            if locator in ("amount", "balance") and isinstance(found, int):
                return _money(found, decided.values.get("currency"), amount_format, currencies)
            return found
        return extract(
            FieldSource(Origin(origin), locator),
            request=request,
            path_params=path_params,
            query=query,
            headers=headers,
        )

    def fill(node: Any) -> Any:
        if isinstance(node, str):
            whole = _PLACEHOLDER.fullmatch(node)
            if whole:
                found = value(whole.group(1))
                if isinstance(found, Decimal):  # a number from the request, kept exact
                    return int(found) if found == found.to_integral_value() else str(found)
                return None if found is MISSING else found
            return _PLACEHOLDER.sub(
                lambda m: "" if (v := value(m.group(1))) is MISSING else str(v), node
            )
        if isinstance(node, Mapping):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        return node

    return shape.status, fill(shape.body)


def _money(
    minor: int, currency: Any, amount_format: AmountFormat, currencies: Mapping[str, int]
) -> Any:
    if amount_format is AmountFormat.MINOR or currency not in currencies:
        return minor  # a currency the mapping does not know: its exponent is unknown
    return Amount(minor, Currency(currency, currencies[currency])).format()


__all__ = ["REFUSALS", "Answers", "LedgerAnswer", "Shape", "parse_answers", "render"]
