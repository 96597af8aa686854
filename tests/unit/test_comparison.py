"""Comparison as money: semantic equality, named noise, divergence kinds and money at risk."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sidecar.domain.comparison import (
    Comparison,
    DivergenceKind,
    Outcome,
    Side,
    SideStatus,
    compare,
    legacy_decimal,
)
from sidecar.domain.mapping import AmountFormat, CompareKind, CompareRule
from sidecar.errors import InvalidAmount

EXPONENTS = {"EUR": 2, "JPY": 0, "BHD": 3}
MONEY = {"amount": CompareRule(CompareKind.MONEY)}


def render(minor: int, exponent: int, extra_zeros: int = 0) -> str:
    """A decimal string for ``minor`` units, with optional trailing zeros."""
    text = str(Decimal(minor).scaleb(-exponent))
    if "E" in text or "e" in text:
        text = format(Decimal(minor).scaleb(-exponent), "f")
    if extra_zeros:
        text += ("" if "." in text else ".") + "0" * extra_zeros
    return text


def accepted(currency: str, **fields: object) -> Side:
    return Side(SideStatus.ACCEPTED, currency, fields)


def run(
    legacy: Side,
    ledger: Side,
    fmt: AmountFormat = AmountFormat.DECIMAL,
    rules: Mapping[str, CompareRule] = MONEY,
) -> Comparison:
    return compare(rules, legacy, ledger, amount_format=fmt, exponents=EXPONENTS)


def test_the_same_money_written_three_ways_is_equal() -> None:
    ledger = accepted("EUR", amount=1050)
    for written in ("10.5", "10.50", " 10.500 "):
        assert run(accepted("EUR", amount=written), ledger).outcome is Outcome.MATCH, written
    assert run(accepted("EUR", amount=1050), ledger, AmountFormat.MINOR).outcome is Outcome.MATCH


@given(
    st.integers(-(10**15), 10**15),
    st.sampled_from(sorted(EXPONENTS.items())),
    st.integers(0, 3),
)
def test_any_amount_in_any_exponent_matches_itself_and_not_one_unit_off(
    minor: int, currency_exponent: tuple[str, int], zeros: int
) -> None:
    currency, exponent = currency_exponent
    ledger = accepted(currency, amount=minor)
    same = run(accepted(currency, amount=render(minor, exponent, zeros)), ledger)
    assert same.outcome is Outcome.MATCH
    off = run(accepted(currency, amount=render(minor + 1, exponent)), ledger)
    assert off.outcome is Outcome.MISMATCH
    assert off.kinds == {DivergenceKind.AMOUNT}
    assert off.at_risk_minor == {currency: 1}


@pytest.mark.parametrize(
    ("currency", "right", "slipped"), [("JPY", "1050", "10.50"), ("BHD", "1.050", "10.50")]
)
def test_an_exponent_slip_is_a_monetary_divergence(currency: str, right: str, slipped: str) -> None:
    """1050 minor units are 1050 JPY and 1.050 BHD: EUR's two places on them is a slip."""
    ledger = accepted(currency, amount=1050)
    assert run(accepted(currency, amount=right), ledger).outcome is Outcome.MATCH
    result = run(accepted(currency, amount=slipped), ledger)
    assert result.kinds == {DivergenceKind.AMOUNT}
    assert result.at_risk_minor[currency] > 0


def test_a_wrong_currency_is_a_divergence_with_the_amount_at_risk() -> None:
    result = run(accepted("EUR", amount="10.50"), accepted("USD", amount=1050))
    assert DivergenceKind.CURRENCY in result.kinds
    assert result.at_risk_minor["EUR"] == 1050


def test_a_status_difference_puts_the_whole_amount_at_risk() -> None:
    legacy = accepted("EUR", amount="25.00")
    ledger = Side(SideStatus.REJECTED, "EUR", {"amount": 2500})
    result = run(legacy, ledger)
    assert result.kinds == {DivergenceKind.STATUS}
    assert result.at_risk_minor == {"EUR": 2500}


def test_a_missing_side_is_named_and_never_a_match() -> None:
    absent = Side(SideStatus.ABSENT)
    in_ledger_only = run(absent, accepted("EUR", amount=700))
    assert in_ledger_only.kinds == {DivergenceKind.MISSING_IN_LEGACY}
    assert in_ledger_only.at_risk_minor == {"EUR": 700}
    in_legacy_only = run(accepted("EUR", amount="7.00"), absent)
    assert in_legacy_only.kinds == {DivergenceKind.MISSING_IN_LEDGER}
    assert run(absent, absent).outcome is Outcome.SKIPPED


def test_errors_are_outcomes_not_divergences() -> None:
    boom = Side(SideStatus.ERROR, error="502 from legacy")
    assert run(boom, accepted("EUR", amount=1)).outcome is Outcome.LEGACY_ERROR
    assert run(accepted("EUR", amount="0.01"), boom).outcome is Outcome.LEDGER_ERROR


def test_ignored_fields_never_diverge_and_other_fields_are_metadata() -> None:
    rules = {
        **MONEY,
        "created_at": CompareRule(CompareKind.IGNORE),
        "memo": CompareRule(CompareKind.EXACT),
    }
    legacy = accepted("EUR", amount="1.00", created_at="yesterday", memo="rent")
    ledger = accepted("EUR", amount=100, created_at="today", memo="rent")
    assert run(legacy, ledger, rules=rules).outcome is Outcome.MATCH
    other = accepted("EUR", amount=100, created_at="today", memo="food")
    result = run(legacy, other, rules=rules)
    assert result.kinds == {DivergenceKind.METADATA}
    assert result.at_risk_minor == {}


def test_a_money_field_without_a_rule_is_compared_as_money() -> None:
    result = run(accepted("EUR", balance="5.00"), accepted("EUR", balance=501), rules={})
    assert result.kinds == {DivergenceKind.BALANCE}


def test_a_tolerance_allows_that_many_minor_units_and_no_more() -> None:
    rules = {"amount": CompareRule(CompareKind.TOLERANCE, 2)}
    ledger = accepted("EUR", amount=1000)
    assert run(accepted("EUR", amount="10.02"), ledger, rules=rules).outcome is Outcome.MATCH
    assert run(accepted("EUR", amount="10.03"), ledger, rules=rules).outcome is Outcome.MISMATCH


def test_a_sub_unit_amount_is_a_divergence_rounded_up_at_risk() -> None:
    result = run(accepted("EUR", amount="10.005"), accepted("EUR", amount=1000))
    assert result.kinds == {DivergenceKind.AMOUNT}
    assert result.at_risk_minor == {"EUR": 1}


@pytest.mark.parametrize("value", [10.5, True, "ten", "NaN", "Infinity", None, "--5", "\u00b2"])
def test_values_that_are_not_exact_money_are_refused(value: object) -> None:
    for fmt in AmountFormat:
        with pytest.raises(InvalidAmount):
            legacy_decimal(value, fmt, 2)


def test_money_at_risk_is_counted_once_and_never_lost() -> None:
    rejected = Side(SideStatus.REJECTED, "EUR", {"amount": "10.50"})
    both = run(rejected, accepted("EUR", amount=1050))
    assert both.kinds == {DivergenceKind.STATUS}
    assert both.at_risk_minor == {"EUR": 1050}
    no_ledger_amount = run(accepted("EUR", amount="10.50"), accepted("EUR"))
    assert no_ledger_amount.at_risk_minor == {"EUR": 1050}


def test_an_unreadable_legacy_amount_is_a_divergence_not_a_crash() -> None:
    result = run(accepted("EUR", amount="ten euros"), accepted("EUR", amount=1000))
    assert result.kinds == {DivergenceKind.AMOUNT}
    assert result.at_risk_minor == {"EUR": 1000}
