"""Opening a live legacy system's accounts in the ledger: a snapshot in, ledger commands out.

A bootstrap snapshot lists every legacy account with its currency, balance and overdraft
limit, taken at one instant (the demo legacy service's ``GET /v1/accounts``, or a file export
in the same shape). ``opening_commands`` turns it into ``OpenAccount`` commands and one opening
transfer per account with money, against a migration account per currency, so that the
ledger holds what the legacy service held at that instant. No I/O.

Snapshot shape (JSON)::

    {"accounts": [{"account_number": "CUST-1", "currency": "EUR", "balance": "10.50",
                   "overdraft_limit": "0.00"}]}     # overdraft_limit null: no floor

Guarantees (tests/unit/test_bootstrap.py):
- Balances are exact: a value with more decimals than its currency has is refused, never
  rounded; the opening entries sum to zero per currency with the migration account.
- Commands are idempotent: the opening transfer's key is the account's, so a bootstrap
  redone after a crash replays instead of opening money twice.
- A malformed snapshot raises ``InvalidCommand`` naming the account and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from sidecar.domain.comparison import legacy_decimal
from sidecar.domain.ledger import Account, Command, NormalSide, OpenAccount, Transfer
from sidecar.domain.mapping import AmountFormat
from sidecar.domain.money import Currency
from sidecar.errors import InvalidAmount, InvalidCommand

#: the stream route name of a bootstrap snapshot (no legacy route has a name with brackets)
BOOTSTRAP_ROUTE = "[bootstrap]"
MIGRATION_PREFIX = "MIGRATION-"


def migration_account(currency: Currency) -> Account:
    """Where opening balances come from: debit-normal, no floor (it holds minus the total)."""
    return Account(MIGRATION_PREFIX + currency.code, currency, NormalSide.DEBIT, None)


def snapshot_accounts(document: Any) -> list[Mapping[str, Any]]:
    if not isinstance(document, Mapping) or not isinstance(document.get("accounts"), list):
        raise InvalidCommand('a bootstrap snapshot is {"accounts": [...]}')
    rows: list[Mapping[str, Any]] = document["accounts"]
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InvalidCommand(f"bootstrap snapshot: accounts[{i}] is not an object")
    return rows


def opening_commands(document: Any, currencies: Mapping[str, int]) -> list[Command]:
    """The commands that open every account of the snapshot with its balance."""
    commands: list[Command] = []
    migrations: set[str] = set()
    for i, row in enumerate(snapshot_accounts(document)):
        account = _account(row, i, "snapshot", currencies)
        balance = _minor(
            row.get("balance"), account.currency, f"{_where(row, i, 'snapshot')}: balance"
        )
        if account.currency.code not in migrations:
            commands.append(OpenAccount(migration_account(account.currency)))
            migrations.add(account.currency.code)
        commands += opening_for(account, balance)
    return commands


def _where(row: Mapping[str, Any], i: int, what: str) -> str:
    return f"bootstrap {what}: accounts[{i}] ({row.get('account_number')!r})"


def _account(row: Mapping[str, Any], i: int, what: str, currencies: Mapping[str, int]) -> Account:
    """One listed account: its number, currency and overdraft limit (a customer account)."""
    where = _where(row, i, what)
    number, code = row.get("account_number"), row.get("currency")
    if not isinstance(number, str) or not number:
        raise InvalidCommand(f"{where}: account_number is missing")
    if code not in currencies:
        raise InvalidCommand(f"{where}: currency {code!r} is not in the mapping")
    currency = Currency(str(code), currencies[str(code)])
    limit_raw = row.get("overdraft_limit")
    limit = None if limit_raw is None else _minor(limit_raw, currency, f"{where}: limit")
    if limit is not None and limit < 0:
        raise InvalidCommand(f"{where}: overdraft_limit is negative")
    return Account(number, currency, NormalSide.CREDIT, limit)


def _minor(value: Any, currency: Currency, where: str) -> int:
    """Minor units of a balance in major units: "10.50", 10.5 parsed as Decimal, or 10."""
    try:
        exact = legacy_decimal(value, AmountFormat.DECIMAL, currency.exponent)
    except InvalidAmount as exc:
        raise InvalidCommand(f"{where}: {exc.message}") from None
    minor = exact.scaleb(currency.exponent)
    if minor != minor.to_integral_value():
        raise InvalidCommand(f"{where}: {value!r} has more decimals than {currency.code} has")
    return int(minor)


# --- per-account bootstrap, under live traffic ---------------------------------------------
#
# A plan names the accounts to bootstrap (no balances). Each account is then opened at the
# place in the stream of its own balance read, if no money movement on it overlapped that
# read: everything answered before the read is in its balance, everything asked after it is
# not. Until then the account is "pending": a movement on it is applied with the migration
# account standing in for it (the legacy balance the account will be opened with already holds
# that movement), so the other side of the movement is still right.


def plan_accounts(document: Any, currencies: Mapping[str, int]) -> dict[str, Account]:
    """The accounts a bootstrap plan names, with their currency and overdraft limit."""
    accounts = (
        _account(row, i, "plan", currencies) for i, row in enumerate(snapshot_accounts(document))
    )
    return {account.id: account for account in accounts}


def opening_for(account: Account, balance_minor: int) -> list[Command]:
    """Open ``account`` holding ``balance_minor``, against its currency's migration account."""
    commands: list[Command] = [OpenAccount(account)]
    if balance_minor:
        migration = MIGRATION_PREFIX + account.currency.code
        debit, credit = (migration, account.id) if balance_minor > 0 else (account.id, migration)
        commands.append(
            Transfer.between(
                f"bootstrap:{account.id}"[:128],
                debit=debit,
                credit=credit,
                amount_minor=abs(balance_minor),
                currency=account.currency.code,
                metadata={"route": BOOTSTRAP_ROUTE},
            )
        )
    return commands


def stand_in(transfer: Transfer, pending: Mapping[str, Account]) -> Transfer | None:
    """``transfer`` with the migration account standing in for each pending account; None
    when nothing would be left to move (every leg stood in for)."""
    if not any(leg.account_id in pending for leg in transfer.legs):
        return transfer
    legs = tuple(
        replace(leg, account_id=MIGRATION_PREFIX + leg.currency)
        if leg.account_id in pending
        else leg
        for leg in transfer.legs
    )
    if all(leg.account_id.startswith(MIGRATION_PREFIX) for leg in legs):
        return None
    metadata = {**transfer.metadata, "bootstrap": "stand-in"}
    return Transfer(transfer.key, legs, metadata)
