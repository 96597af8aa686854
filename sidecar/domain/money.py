"""Money as exact integers: a currency with its minor-unit exponent, and an amount in minor units.

Parsing and formatting of decimal strings happen here and nowhere else, so no float is ever
on the path between a legacy answer and a posting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from sidecar.errors import InvalidAmount, InvalidCurrency

#: PostgreSQL's bigint range: every amount and every balance must fit in it.
MINOR_MAX = 2**63 - 1
MINOR_MIN = -(2**63)

_CODE = re.compile(r"^[A-Z]{3}$")
_DECIMAL = re.compile(r"^-?\d+(\.\d+)?$")


def check_currency_code(code: object) -> str:
    if not isinstance(code, str) or not _CODE.match(code):
        raise InvalidCurrency(f"currency code must be three capital letters, got {code!r}")
    return code


@dataclass(frozen=True, slots=True)
class Currency:
    """An ISO-4217-like code and the number of decimal places of its minor unit."""

    code: str
    exponent: int

    def __post_init__(self) -> None:
        check_currency_code(self.code)
        if (
            not isinstance(self.exponent, int)
            or isinstance(self.exponent, bool)
            or not 0 <= self.exponent <= 18
        ):
            raise InvalidCurrency(
                f"currency {self.code}: exponent must be an integer 0..18, got {self.exponent!r}"
            )

    def __str__(self) -> str:
        return self.code


def check_minor(value: object, what: str = "amount_minor") -> int:
    """Return ``value`` if it is an int within bigint range; raise InvalidAmount otherwise."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidAmount(f"{what} must be an integer number of minor units, got {value!r}")
    if not MINOR_MIN <= value <= MINOR_MAX:
        raise InvalidAmount(f"{what} {value} does not fit in a signed 64-bit integer")
    return value


@dataclass(frozen=True, slots=True)
class Amount:
    """An exact amount of money: integer minor units and their currency."""

    minor: int
    currency: Currency

    def __post_init__(self) -> None:
        check_minor(self.minor)

    @classmethod
    def parse(cls, text: str, currency: Currency) -> Amount:
        """Parse a decimal string such as ``"12.34"`` with at most ``currency.exponent`` places."""
        if not isinstance(text, str) or not _DECIMAL.match(text.strip()):
            raise InvalidAmount(f"not a decimal amount: {text!r}")
        try:
            value = Decimal(text.strip())
        except InvalidOperation as exc:  # pragma: no cover - the regex already rules this out
            raise InvalidAmount(f"not a decimal amount: {text!r}") from exc
        scaled = value.scaleb(currency.exponent)
        if scaled != scaled.to_integral_value():
            raise InvalidAmount(
                f"{text!r} has more than {currency.exponent} decimal places for {currency.code}"
            )
        return cls(int(scaled), currency)

    def format(self) -> str:
        """Render as a decimal string with exactly ``currency.exponent`` places."""
        exp = self.currency.exponent
        if exp == 0:
            return str(self.minor)
        sign = "-" if self.minor < 0 else ""
        whole, frac = divmod(abs(self.minor), 10**exp)
        return f"{sign}{whole}.{frac:0{exp}d}"

    def __str__(self) -> str:
        return f"{self.format()} {self.currency.code}"
