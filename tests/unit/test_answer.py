"""The ledger's answer in the legacy API's shape (sidecar/domain/answer.py)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sidecar.domain.answer import LedgerAnswer, parse_answers, render
from sidecar.domain.mapping import AmountFormat, FieldSource, Operation, Origin
from sidecar.errors import MappingError

FIELDS = {"debit": FieldSource(Origin.PATH, "account")}
NSF = {"status": 402, "body": {"error": {"code": "NSF"}}}
REFUSED = {
    "insufficient_funds": NSF,
    "account_not_open": NSF,
    "unknown_account": NSF,
    "currency_mismatch": NSF,
}
PAYMENT = {
    "status": 201,
    "body": {
        "payment_id": "PAY-{new_id}",
        "amount": {"value": "{ledger:amount}", "currency": "{ledger:currency}"},
        "from": "{path:account}",
        "note": "{request:note}",
        "at": "{now}",
    },
    "refused": REFUSED,
}


def answer(decided: LedgerAnswer, amount_format: AmountFormat = AmountFormat.DECIMAL) -> Any:
    answers = parse_answers(PAYMENT, Operation.TRANSFER, FIELDS, "route[1].answer", "m.toml")
    return render(
        answers,
        decided,
        amount_format=amount_format,
        currencies={"EUR": 2, "BHD": 3},
        request={"note": "rent", "amount": Decimal("12.34")},
        path_params={"account": "CUST-1"},
        query={},
        headers={},
        now="2026-11-26T10:00:00Z",
        new_id="abc",
    )


def test_an_accepted_transfer_renders_exact_money_and_its_sources() -> None:
    status, body = answer(LedgerAnswer(None, {"amount": 1234, "currency": "EUR", "key": "k"}))
    assert status == 201
    assert body == {
        "payment_id": "PAY-abc",
        "amount": {"value": "12.34", "currency": "EUR"},
        "from": "CUST-1",
        "note": "rent",
        "at": "2026-11-26T10:00:00Z",
    }
    _, minor = answer(LedgerAnswer(None, {"amount": 1050, "currency": "BHD"}), AmountFormat.MINOR)
    assert minor["amount"]["value"] == 1050  # a whole placeholder keeps its type


def test_a_refusal_renders_its_own_answer() -> None:
    assert answer(LedgerAnswer("insufficient_funds", {})) == (402, {"error": {"code": "NSF"}})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"refused": {k: v for k, v in REFUSED.items() if k != "unknown_account"}},
            "refused.unknown_account",
        ),
        ({"refused": {**REFUSED, "exists": NSF}}, "transfer is never refused so"),
        ({"status": 99}, "an HTTP status"),
        ({"body": {"x": "{ledger:balance}"}}, "transfer gives only amount, currency, key"),
        ({"body": {"x": "{answer:id}"}}, "a ledger value, or request"),
        ({"body": {"x": "{today}"}}, "known are now, new_id"),
        ({"colour": "red"}, "unknown key"),
    ],
)
def test_a_bad_answer_section_is_refused_naming_the_key(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(MappingError, match=message):
        parse_answers(
            {**PAYMENT, **change}, Operation.TRANSFER, FIELDS, "route[1].answer", "m.toml"
        )
