"""Legacy requests through the example mapping into ledger commands, and the legacy outcome."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from sidecar.domain.comparison import SideStatus
from sidecar.domain.ledger import OpenAccount, Reversal, Transfer
from sidecar.domain.mapping import RouteTable
from sidecar.domain.translate import (
    BalanceRead,
    Exchange,
    ledger_key,
    legacy_side,
    rejection_outcome,
    to_ledger,
)
from sidecar.errors import InvalidCommand
from sidecar.mapping_file import load_route_table

EXAMPLE = Path(__file__).parents[2] / "config" / "mappings" / "example-legacy.toml"


@pytest.fixture(scope="module")
def table() -> RouteTable:
    return load_route_table(EXAMPLE)


def payment(amount: object = "10.50", currency: str = "EUR", **extra: object) -> Exchange:
    return Exchange(
        "POST",
        "/v1/accounts/acc-1/payments",
        request={
            "beneficiary": {"account_number": "acc-2"},
            "amount": {"value": amount, "currency": currency},
            **extra,
        },
        answer={"payment_id": "p-9"},
        status=201,
        headers={"idempotency-key": "k 1"},
    )


def translate(table: RouteTable, exchange: Exchange) -> object:
    matched = table.match(exchange.method, exchange.path)
    assert matched is not None
    return to_ledger(matched, exchange, table.currencies)


def test_a_payment_becomes_a_transfer_in_minor_units(table: RouteTable) -> None:
    command = translate(table, payment())
    assert isinstance(command, Transfer)
    assert command.key == ledger_key("transfer", "k 1")  # a space: hashed, not mangled
    assert command.key.startswith("transfer:sha256:")
    assert [(leg.account_id, leg.side.value, leg.amount_minor) for leg in command.legs] == [
        ("acc-1", "debit", 1050),
        ("acc-2", "credit", 1050),
    ]
    assert command.metadata == {"route": "payment", "reference": "p-9"}


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("10.5", "EUR", 1050),
        (Decimal("10.50"), "EUR", 1050),
        ("1050", "JPY", 1050),
        ("1.050", "BHD", 1050),
    ],
)
def test_amounts_are_exact_in_their_currency(
    table: RouteTable, amount: object, currency: str, minor: int
) -> None:
    command = translate(table, payment(amount, currency))
    assert isinstance(command, Transfer)
    assert command.legs[0].amount_minor == minor


@pytest.mark.parametrize(
    ("amount", "currency", "problem"),
    [
        ("10.505", "EUR", "more than 2 decimal places"),
        ("10.5", "JPY", "more than 0 decimal places"),
        (10.5, "EUR", "float"),
        ("0.00", "EUR", "must be positive"),
        ("10.00", "XYZ", "not in the mapping"),
    ],
)
def test_amounts_that_are_not_exact_money_are_refused(
    table: RouteTable, amount: object, currency: str, problem: str
) -> None:
    with pytest.raises(InvalidCommand, match=problem):
        translate(table, payment(amount, currency))


def test_a_missing_field_is_named_with_its_source(table: RouteTable) -> None:
    exchange = payment()
    no_key = Exchange(exchange.method, exchange.path, exchange.request, exchange.answer, 201)
    with pytest.raises(InvalidCommand, match="key is missing at header:Idempotency-Key"):
        translate(table, no_key)


def test_other_routes_become_their_commands(table: RouteTable) -> None:
    opened = translate(
        table,
        Exchange(
            "POST",
            "/v1/accounts",
            request={"account_number": "acc-3", "currency": "BHD"},
            status=201,
            headers={"Idempotency-Key": "open-3"},
        ),
    )
    assert isinstance(opened, OpenAccount)
    assert (opened.account.id, opened.account.currency.exponent) == ("acc-3", 3)
    refund = translate(
        table,
        Exchange(
            "POST",
            "/v1/payments/p-9/refund",
            request={"original_idempotency_key": "k 1"},
            status=200,
            headers={"Idempotency-Key": "r-1"},
        ),
    )
    assert isinstance(refund, Reversal)
    assert (refund.key, refund.reverses) == ("reversal:r-1", ledger_key("transfer", "k 1"))
    read = translate(
        table,
        Exchange(
            "GET",
            "/v1/accounts/acc-1/balance",
            answer={"available": {"value": "3.20", "currency": "EUR"}},
            status=200,
        ),
    )
    assert read == BalanceRead("acc-1", "EUR")


def test_the_legacy_answer_is_accepted_rejected_or_an_error(table: RouteTable) -> None:
    route = table.routes[1]
    assert legacy_side(route, payment()) == (SideStatus.ACCEPTED, None)
    refused = Exchange("POST", "/", answer={"error": {"code": "NSF"}}, status=402)
    assert legacy_side(route, refused) == (SideStatus.REJECTED, "NSF")
    assert rejection_outcome(route, "NSF") == "insufficient_funds"
    assert rejection_outcome(route, "SOMETHING_ELSE") is None
    assert legacy_side(route, Exchange("POST", "/", status=503))[0] is SideStatus.ERROR
    assert legacy_side(route, Exchange("POST", "/", status=None))[0] is SideStatus.ERROR


def test_distinct_legacy_keys_never_share_a_ledger_key() -> None:
    keys = ["pay-1", "pay-\u00e9", "pay-\u00e8", "x" * 200 + "a", "x" * 200 + "b", "a b", "a_b"]
    assert len({ledger_key("transfer", k) for k in keys}) == len(keys)
    assert ledger_key("transfer", "pay-1") == "transfer:pay-1"  # readable when it can be


def test_amounts_with_more_digits_than_a_decimal_holds_are_not_rounded(table: RouteTable) -> None:
    with pytest.raises(InvalidCommand, match="more than 2 decimal places"):
        translate(table, payment("10.50000000000000000000000000001"))


def test_a_payment_from_an_account_to_itself_is_not_a_ledger_command(table: RouteTable) -> None:
    exchange = payment(beneficiary={"account_number": "acc-1"})
    matched = table.match(exchange.method, exchange.path)
    assert matched is not None
    with pytest.raises(InvalidCommand, match="one account"):
        to_ledger(matched, exchange, table.currencies)
