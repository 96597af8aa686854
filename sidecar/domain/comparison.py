"""Comparing the legacy answer with the ledger's result, as money.

``compare(rules, legacy, ledger)`` takes the two sides of one mirrored request, each already
reduced to a status and named field values, and returns a ``Comparison``: an outcome, the
differences found, and the money at risk per currency. No I/O: the applier gathers the sides.

Guarantees (tests/unit/test_comparison.py):
- Money is compared as exact decimals after normalising formats: ``"10.5"``, ``"10.50"`` and
  1050 minor units of EUR are equal; one minor unit off, an exponent slip (JPY 0, BHD 3), a
  wrong currency or a missing leg is a monetary divergence. Floats are refused, never rounded.
- A field ruled ``ignore`` never diverges; a money field cannot be ignored (the mapping refuses
  it at load), and a money field without a rule is compared as money.
- An error on either side is an outcome (``legacy_error``, ``ledger_error``), not a divergence;
  a side that has no result at all makes ``missing_in_ledger`` / ``missing_in_legacy``.
- The money at risk of a divergence is the absolute difference, or the whole amount when one
  side moved money and the other did not; it is summed per currency.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Context, Decimal, InvalidOperation, localcontext
from enum import StrEnum
from typing import Any

from sidecar.domain.mapping import MISSING, MONEY_FIELDS, AmountFormat, CompareKind, CompareRule
from sidecar.errors import InvalidAmount


class Outcome(StrEnum):
    MATCH = "match"
    MISMATCH = "mismatch"
    LEGACY_ERROR = "legacy_error"
    LEDGER_ERROR = "ledger_error"
    SKIPPED = "skipped"


class DivergenceKind(StrEnum):
    AMOUNT = "amount"
    BALANCE = "balance"
    STATUS = "status"
    CURRENCY = "currency"
    MISSING_IN_LEDGER = "missing_in_ledger"
    MISSING_IN_LEGACY = "missing_in_legacy"
    METADATA = "metadata"
    #: a difference another order of concurrent requests explains: named noise, not money
    ORDER_DEPENDENT = "order_dependent"


#: the kinds that mean money may be wrong: these page
MONETARY: frozenset[DivergenceKind] = frozenset(
    {
        DivergenceKind.AMOUNT,
        DivergenceKind.BALANCE,
        DivergenceKind.CURRENCY,
        DivergenceKind.MISSING_IN_LEDGER,
        DivergenceKind.MISSING_IN_LEGACY,
        DivergenceKind.STATUS,
    }
)


class SideStatus(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    ERROR = "error"
    ABSENT = "absent"  # this side has no result for the request at all


@dataclass(frozen=True, slots=True)
class Side:
    """One system's result: its status, its currency, and its values by field name.

    Legacy money values are as the legacy API wrote them (``amount_format`` says how); ledger
    money values are integer minor units.
    """

    status: SideStatus
    currency: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Difference:
    field: str
    kind: DivergenceKind
    legacy: Any
    ledger: Any
    currency: str | None = None
    at_risk_minor: int = 0
    #: the legacy value in minor units, when it is readable money
    legacy_minor: int | None = None


@dataclass(frozen=True, slots=True)
class Comparison:
    outcome: Outcome
    differences: tuple[Difference, ...] = ()
    at_risk_minor: Mapping[str, int] = field(default_factory=dict)
    detail: str | None = None

    @property
    def kinds(self) -> frozenset[DivergenceKind]:
        return frozenset(d.kind for d in self.differences)


_INTEGER = re.compile(r"-?[0-9]+")
#: wide enough that no amount a bigint can hold, at any exponent, is ever rounded
EXACT = Context(prec=100)


def legacy_decimal(value: Any, fmt: AmountFormat, exponent: int) -> Decimal:
    """The exact amount a legacy value means, in major units. Raises ``InvalidAmount``."""
    with localcontext(EXACT):
        return _legacy_decimal(value, fmt, exponent)


def _legacy_decimal(value: Any, fmt: AmountFormat, exponent: int) -> Decimal:
    if isinstance(value, bool | float):
        raise InvalidAmount(
            f"{value!r}: money must not pass through a float (parse JSON numbers as Decimal)"
        )
    if fmt is AmountFormat.MINOR:
        if isinstance(value, int):
            return Decimal(value).scaleb(-exponent)
        if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
            return Decimal(value.strip()).scaleb(-exponent)
        raise InvalidAmount(f"{value!r} is not an integer number of minor units")
    if isinstance(value, int | Decimal):
        return Decimal(value)
    if isinstance(value, str):
        try:
            parsed = Decimal(value.strip())
        except InvalidOperation:
            raise InvalidAmount(f"{value!r} is not a decimal amount") from None
        if parsed.is_finite():
            return parsed
    raise InvalidAmount(f"{value!r} is not a decimal amount")


def ledger_decimal(minor: int, exponent: int) -> Decimal:
    return Decimal(minor).scaleb(-exponent)


def compare(
    rules: Mapping[str, CompareRule],
    legacy: Side,
    ledger: Side,
    *,
    amount_format: AmountFormat,
    exponents: Mapping[str, int],
    moved_field: str = "amount",
) -> Comparison:
    """Compare one request's two results field by field, under the route's rules."""
    if legacy.status is SideStatus.ERROR:
        return Comparison(Outcome.LEGACY_ERROR, detail=legacy.error)
    if ledger.status is SideStatus.ERROR:
        return Comparison(Outcome.LEDGER_ERROR, detail=ledger.error)
    if legacy.status is SideStatus.ABSENT and ledger.status is SideStatus.ABSENT:
        return Comparison(Outcome.SKIPPED, detail="neither side has a result")

    differences: list[Difference] = []
    currency = legacy.currency or ledger.currency
    exponent = exponents.get(currency or "", 0)

    def moved(side: Side, is_legacy: bool) -> int:
        """Minor units the side moved (0 unless accepted with an amount)."""
        value = side.fields.get(moved_field, MISSING)
        if side.status is not SideStatus.ACCEPTED or value is MISSING:
            return 0
        if not is_legacy:
            return abs(int(value))
        try:
            return abs(int(legacy_decimal(value, amount_format, exponent).scaleb(exponent)))
        except (InvalidAmount, ValueError):
            return 0

    if legacy.status is SideStatus.ABSENT or ledger.status is SideStatus.ABSENT:
        kind = (
            DivergenceKind.MISSING_IN_LEGACY
            if legacy.status is SideStatus.ABSENT
            else DivergenceKind.MISSING_IN_LEDGER
        )
        at_risk = max(moved(legacy, True), moved(ledger, False))
        differences.append(
            Difference(kind.value, kind, legacy.status, ledger.status, currency, at_risk)
        )
        return _finish(differences)

    if legacy.status is not ledger.status:
        # one side moved money and the other did not: that is the whole divergence (its
        # money fields would only restate it, and count the amount twice)
        at_risk = max(moved(legacy, True), moved(ledger, False))
        differences.append(
            Difference(
                "status",
                DivergenceKind.STATUS,
                legacy.status.value,
                ledger.status.value,
                currency,
                at_risk,
            )
        )
        return _finish(differences)
    if legacy.currency and ledger.currency and legacy.currency != ledger.currency:
        differences.append(
            Difference(
                "currency",
                DivergenceKind.CURRENCY,
                legacy.currency,
                ledger.currency,
                legacy.currency,
                moved(legacy, True),
            )
        )

    names = sorted((set(legacy.fields) | set(ledger.fields)) & (set(rules) | MONEY_FIELDS))
    for name in names:
        rule = rules.get(name)
        if rule is None:
            rule = CompareRule(CompareKind.MONEY)
        if rule.kind is CompareKind.IGNORE:
            continue
        mine, theirs = legacy.fields.get(name, MISSING), ledger.fields.get(name, MISSING)
        if rule.kind in (CompareKind.MONEY, CompareKind.TOLERANCE) or name in MONEY_FIELDS:
            difference = _money(name, mine, theirs, rule, amount_format, currency, exponent)
        else:
            difference = (
                None
                if mine == theirs
                else Difference(name, DivergenceKind.METADATA, mine, theirs, currency)
            )
        if difference is not None:
            differences.append(difference)
    return _finish(differences)


def _money(
    name: str,
    legacy: Any,
    ledger: Any,
    rule: CompareRule,
    fmt: AmountFormat,
    currency: str | None,
    exponent: int,
) -> Difference | None:
    kind = DivergenceKind.BALANCE if name == "balance" else DivergenceKind.AMOUNT
    if legacy is MISSING and ledger is MISSING:
        return None
    theirs_minor = ledger if isinstance(ledger, int) and not isinstance(ledger, bool) else None
    try:
        mine = None if legacy is MISSING else legacy_decimal(legacy, fmt, exponent)
    except InvalidAmount:
        mine = None
    if mine is None or theirs_minor is None:
        # one side has no readable amount: what the other side says is at risk
        if mine is not None:
            at_risk = _minor_ceiling(abs(mine), exponent)
        else:
            at_risk = abs(theirs_minor) if theirs_minor is not None else 0
        return Difference(name, kind, legacy, ledger, currency, at_risk)
    with localcontext(EXACT):
        gap = abs(mine - ledger_decimal(theirs_minor, exponent)).scaleb(exponent)
        scaled = mine.scaleb(exponent)
        legacy_minor = int(scaled) if scaled == scaled.to_integral_value() else None
    if gap <= rule.tolerance_minor:
        return None
    return Difference(name, kind, legacy, ledger, currency, _minor_ceiling(gap, 0), legacy_minor)


def _minor_ceiling(amount: Decimal, exponent: int) -> int:
    """Whole minor units covering ``amount`` (rounded up: a fraction of a unit is at risk)."""
    with localcontext(EXACT):
        return int(amount.scaleb(exponent).to_integral_value(rounding="ROUND_CEILING"))


def _finish(differences: list[Difference]) -> Comparison:
    if not differences:
        return Comparison(Outcome.MATCH)
    at_risk: dict[str, int] = {}
    for d in differences:
        if d.currency and d.at_risk_minor:
            at_risk[d.currency] = at_risk.get(d.currency, 0) + d.at_risk_minor
    return Comparison(Outcome.MISMATCH, tuple(differences), at_risk)


REDACTED = "[redacted]"


def redacted(comparison: Comparison, sensitive: frozenset[str]) -> Comparison:
    """The comparison with the values of ``sensitive`` fields replaced (their kinds, and so
    the verdict, stay): what is stored and logged never holds them."""
    if not any(d.field in sensitive for d in comparison.differences):
        return comparison
    return replace(
        comparison,
        differences=tuple(
            replace(d, legacy=REDACTED, ledger=REDACTED, legacy_minor=None)
            if d.field in sensitive
            else d
            for d in comparison.differences
        ),
    )
