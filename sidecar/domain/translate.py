"""A mirrored legacy request, through its route's mapping, into a ledger command or read.

``to_ledger(matched, exchange, currencies)`` reads the route's fields out of the request and the
legacy answer and builds the ``OpenAccount``, ``Transfer``, ``Reversal`` or ``BalanceRead`` the
ledger would have done; ``legacy_side(route, status, answer)`` says whether the legacy service
accepted, rejected or failed. No I/O.

Guarantees (tests/unit/test_translate.py):
- A field the route needs but the request lacks, an amount that is not exact money in its
  currency's exponent, or a currency the mapping does not know raises ``InvalidCommand`` naming
  the route, the field and its source; nothing is guessed or rounded.
- Amounts are positive integers in minor units: "10.50" EUR becomes 1050, "1.050" BHD 1050.
- The ledger idempotency key is the legacy one, prefixed by the route's operation, so one
  legacy key reused across operations cannot collide in the ledger.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import localcontext
from typing import Any

from sidecar.domain.comparison import EXACT, SideStatus, legacy_decimal
from sidecar.domain.ledger import (
    Account,
    NormalSide,
    OpenAccount,
    Reversal,
    Transfer,
)
from sidecar.domain.mapping import MISSING, MatchedRoute, Operation, Route, extract
from sidecar.domain.money import Currency
from sidecar.errors import InvalidAmount, InvalidCommand

_UNSAFE_KEY = re.compile(r"[^\x21-\x7e]")


@dataclass(frozen=True, slots=True)
class Exchange:
    """One legacy request and its answer, as captured."""

    method: str
    path: str
    request: Any = MISSING  # the JSON body, numbers parsed as Decimal
    answer: Any = MISSING
    status: int | None = None  # the legacy answer's HTTP status; None if it never answered
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BalanceRead:
    account_id: str
    currency: str


LedgerRequest = OpenAccount | Transfer | Reversal | BalanceRead


def legacy_side(route: Route, exchange: Exchange) -> tuple[SideStatus, str | None]:
    """Accepted, rejected (with the legacy code, if the route says where it is) or error."""
    status = exchange.status
    if status is None:
        return SideStatus.ERROR, "the legacy service did not answer"
    if status in route.outcome.accepted_statuses:
        return SideStatus.ACCEPTED, None
    if status in route.outcome.rejected_statuses:
        code = None
        if route.outcome.rejection_code is not None:
            value = exchange_value(route.outcome.rejection_code, exchange)
            code = None if value is MISSING else str(value)
        return SideStatus.REJECTED, code
    return SideStatus.ERROR, f"legacy status {status} is neither accepted nor rejected"


def rejection_outcome(route: Route, legacy_code: str | None) -> str | None:
    """The ledger's name for the legacy rejection code (``insufficient_funds``...), if mapped."""
    if legacy_code is None:
        return None
    for outcome, codes in route.outcome.rejection_codes.items():
        if legacy_code in codes:
            return outcome
    return None


def to_ledger(
    matched: MatchedRoute,
    exchange: Exchange,
    currencies: Mapping[str, int],
    computed: Mapping[str, Any] | None = None,
) -> LedgerRequest:
    """The ledger command (or read) for one exchange. ``computed`` holds field values the
    route's hook worked out (what the mapping file cannot say); they win over the file's."""
    route = matched.route
    computed = computed or {}

    def need(name: str) -> Any:
        if name in computed:
            value = computed[name]
            if value is MISSING or value is None or value == "":
                raise InvalidCommand(f"route {route.name!r}: {name} is missing (hook)")
            return value
        source = route.fields[name]
        value = exchange_value(source, exchange, matched.path_params)
        if value is MISSING or value is None or value == "":
            raise InvalidCommand(f"route {route.name!r}: {name} is missing at {source}")
        return value

    def text(name: str) -> str:
        return str(need(name)).strip()

    def currency() -> Currency:
        code = text("currency")
        if code not in currencies:
            raise InvalidCommand(
                f"route {route.name!r}: currency {code!r} is not in the mapping's [currencies]"
            )
        return Currency(code, currencies[code])

    def key() -> str:
        return ledger_key(route.operation.value, text("key"))

    def metadata() -> dict[str, str]:
        out: dict[str, str] = {"route": route.name}
        if "reference" in route.fields:
            value = exchange_value(route.fields["reference"], exchange, matched.path_params)
            if value is not MISSING and value is not None:
                out["reference"] = str(value)[:1024]
        return out

    if route.operation is Operation.OPEN_ACCOUNT:
        side = NormalSide(text("normal_side")) if "normal_side" in route.fields else None
        limit = (
            _minor(route, "overdraft_limit", need, currency())
            if "overdraft_limit" in route.fields
            else 0
        )
        return OpenAccount(Account(text("account"), currency(), side or NormalSide.CREDIT, limit))
    if route.operation is Operation.TRANSFER:
        money = currency()
        amount = _minor(route, "amount", need, money)
        if amount <= 0:
            raise InvalidCommand(f"route {route.name!r}: amount must be positive, got {amount}")
        debit, credit = text("debit"), text("credit")
        if debit == credit:
            # moves nothing; a legacy service may refuse it (on the amount) or take it
            raise InvalidCommand(f"route {route.name!r}: debit and credit are one account")
        return Transfer.between(
            key(),
            debit=debit,
            credit=credit,
            amount_minor=amount,
            currency=money.code,
            metadata=metadata(),
        )
    if route.operation is Operation.REVERSAL:
        target = ledger_key(Operation.TRANSFER.value, text("reverses"))
        return Reversal(key(), target, metadata())
    return BalanceRead(text("account"), currency().code)


def ledger_key(operation: str, legacy_key: str) -> str:
    """The ledger's idempotency key for a legacy one: ``operation:key`` when that is a valid
    key, else ``operation:sha256:<digest>`` (never two legacy keys onto one ledger key)."""
    plain = f"{operation}:{legacy_key}"
    if len(plain) <= 128 and not _UNSAFE_KEY.search(plain):
        return plain
    return f"{operation}:sha256:{hashlib.sha256(legacy_key.encode()).hexdigest()}"


def exchange_value(
    source: Any, exchange: Exchange, path_params: Mapping[str, str] | None = None
) -> Any:
    """The value ``source`` points at in the exchange (its request, answer, query, headers,
    and the matched path's parameters), or ``MISSING``."""
    return extract(
        source,
        request=exchange.request,
        answer=exchange.answer,
        path_params=path_params,
        query=exchange.query,
        headers=exchange.headers,
    )


def _minor(route: Route, name: str, need: Any, currency: Currency) -> int:
    value = need(name)
    try:
        exact = legacy_decimal(value, route.amount_format, currency.exponent)
    except InvalidAmount as exc:
        raise InvalidCommand(f"route {route.name!r}: {name}: {exc.message}") from None
    with localcontext(EXACT):
        minor = exact.scaleb(currency.exponent)
        whole = minor == minor.to_integral_value()
    if not whole:
        raise InvalidCommand(
            f"route {route.name!r}: {name} {value!r} has more than {currency.exponent} "
            f"decimal places for {currency.code}"
        )
    return int(minor)
