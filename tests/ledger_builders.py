"""Small builders shared by the integration tests."""

from __future__ import annotations

from sidecar.domain.ledger import Account, NormalSide, Transfer
from sidecar.domain.money import Currency
from sidecar.posting import Ledger

EUR = Currency("EUR", 2)
USD = Currency("USD", 2)


def pay(key: str, debit: str, credit: str, amount: int, currency: str = "EUR") -> Transfer:
    return Transfer.between(key, debit=debit, credit=credit, amount_minor=amount, currency=currency)


async def open_bank(ledger: Ledger, customers: int = 3, funds: int = 10_000) -> list[str]:
    """A cash account without floor, and customers with floor 0 funded from it."""
    await ledger.open_account(Account("cash", EUR, NormalSide.DEBIT, None))
    ids = [f"c{i}" for i in range(customers)]
    for account_id in ids:
        await ledger.open_account(Account(account_id, EUR, NormalSide.CREDIT, 0))
        if funds:
            await ledger.transfer(pay(f"fund-{account_id}", "cash", account_id, funds))
    return ids
