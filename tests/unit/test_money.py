from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sidecar.domain.money import MINOR_MAX, Amount, Currency
from sidecar.errors import InvalidAmount, InvalidCurrency

EUR = Currency("EUR", 2)
JPY = Currency("JPY", 0)
BHD = Currency("BHD", 3)


@given(st.integers(min_value=-(10**15), max_value=10**15), st.sampled_from([EUR, JPY, BHD]))
def test_format_then_parse_is_exact(minor: int, currency: Currency) -> None:
    amount = Amount(minor, currency)
    assert Amount.parse(amount.format(), currency) == amount


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("12.34", EUR, 1234),
        ("0.1", EUR, 10),
        ("-5", EUR, -500),
        ("1000", JPY, 1000),
        ("0.001", BHD, 1),
        ("0.30", EUR, 30),
    ],
)
def test_decimal_strings_parse_to_minor_units(text: str, currency: Currency, minor: int) -> None:
    assert Amount.parse(text, currency).minor == minor


@pytest.mark.parametrize("text", ["12.345", "1e3", "12,34", "", "abc", "1.", ".5", "NaN"])
def test_malformed_or_too_precise_amounts_are_refused(text: str) -> None:
    with pytest.raises(InvalidAmount):
        Amount.parse(text, EUR)


def test_amounts_past_bigint_are_refused() -> None:
    Amount(MINOR_MAX, EUR)
    with pytest.raises(InvalidAmount):
        Amount(MINOR_MAX + 1, EUR)


def test_floats_are_not_money() -> None:
    with pytest.raises(InvalidAmount):
        Amount(12.5, EUR)  # type: ignore[arg-type]


@pytest.mark.parametrize(("code", "exponent"), [("eur", 2), ("EURO", 2), ("EUR", -1), ("EUR", 19)])
def test_bad_currencies_are_refused(code: str, exponent: int) -> None:
    with pytest.raises(InvalidCurrency):
        Currency(code, exponent)
