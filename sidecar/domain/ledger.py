"""The double-entry ledger's rules, with no I/O: accounts, commands, and batch planning.

``plan_batch(view, commands)`` takes what the store knows (accounts with their balances, and the
transfers already decided under the batch's keys) and decides every command in order, in
memory. Its ``BatchPlan`` holds each command's result, the events to append, and for every
account it consulted the balance it assumed before and the balance after. The store commits
the plan in one transaction and refuses it if any assumed balance is stale.

Guarantees (tests/unit/test_ledger_plan.py unless named):
- Per currency, the debits of a transfer equal its credits; a command that breaks this never
  reaches a plan (UnbalancedTransfer). The database refuses it too (tests/integration).
- A floor (overdraft limit 0) or an explicit overdraft limit is never crossed by a planned
  posting; the transfer is rejected with ``insufficient_funds`` instead.
- The same key with the same payload returns the first outcome and moves nothing; with another
  payload it is an IdempotencyConflict; a rejection stays a rejection.
- Reversing twice returns the first reversal and moves nothing.
- Each posting's ``balance_after_minor`` is the account's balance after that posting, and the
  plan's ``balances`` after equal before plus the netted postings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from sidecar.domain.chain import canonical, fingerprint
from sidecar.domain.money import MINOR_MAX, MINOR_MIN, Currency, check_currency_code, check_minor
from sidecar.domain.outcome import (
    AccountOutcome,
    PostedLeg,
    Rejection,
    TransferOutcome,
    TransferStatus,
)
from sidecar.errors import (
    CurrencyMismatch,
    IdempotencyConflict,
    InvalidAccountId,
    InvalidAmount,
    InvalidCommand,
    InvalidIdempotencyKey,
    SidecarError,
    UnbalancedTransfer,
    UnknownAccount,
    UnknownTransfer,
)

ACCOUNT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")
METADATA_ENTRIES_MAX = 32
METADATA_KEY_CHARS_MAX = 64
METADATA_VALUE_CHARS_MAX = 1024
LEGS_MAX = 64


class NormalSide(StrEnum):
    """The side that increases an account: assets are debit-normal, customer money credit-normal."""

    DEBIT = "debit"
    CREDIT = "credit"


class Side(StrEnum):
    DEBIT = "debit"
    CREDIT = "credit"


class AccountStatus(StrEnum):
    OPEN = "open"
    FROZEN = "frozen"
    CLOSED = "closed"


def check_account_id(value: object) -> str:
    if not isinstance(value, str) or not ACCOUNT_ID.match(value):
        raise InvalidAccountId(
            f"account id must be 1-128 characters of letters, digits and ._:@- "
            f"starting with a letter or digit, got {value!r}"
        )
    return value


def check_key(value: object, what: str = "idempotency key") -> str:
    if not isinstance(value, str) or not IDEMPOTENCY_KEY.match(value):
        raise InvalidIdempotencyKey(
            f"{what} must be 1-128 printable ASCII characters without spaces, got {value!r}"
        )
    return value


def check_metadata(value: Mapping[str, str]) -> dict[str, str]:
    if value.__class__ is dict and not value:  # the common case, without the ABC check
        return {}
    if not isinstance(value, Mapping):
        raise InvalidCommand("metadata must be a mapping of strings to strings")
    if len(value) > METADATA_ENTRIES_MAX:
        raise InvalidCommand(f"metadata has {len(value)} entries, at most {METADATA_ENTRIES_MAX}")
    clean: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidCommand(f"metadata {k!r}: keys and values must be strings")
        if not 0 < len(k) <= METADATA_KEY_CHARS_MAX or len(v) > METADATA_VALUE_CHARS_MAX:
            raise InvalidCommand(f"metadata {k!r}: key or value too long")
        clean[k] = v
    return clean


@dataclass(frozen=True, slots=True)
class Account:
    """An account's fixed attributes.

    ``overdraft_limit_minor``: ``None`` means no floor at all, ``0`` is the floor (the balance
    may not go below zero), ``n > 0`` lets the balance go down to ``-n``.
    """

    id: str
    currency: Currency
    normal_side: NormalSide
    overdraft_limit_minor: int | None = 0
    status: AccountStatus = AccountStatus.OPEN

    def __post_init__(self) -> None:
        check_account_id(self.id)
        if not isinstance(self.currency, Currency):
            raise InvalidCommand("currency must be a Currency")
        object.__setattr__(self, "normal_side", NormalSide(self.normal_side))
        object.__setattr__(self, "status", AccountStatus(self.status))
        if self.overdraft_limit_minor is not None:
            check_minor(self.overdraft_limit_minor, "overdraft_limit_minor")
            if self.overdraft_limit_minor < 0:
                raise InvalidAmount("overdraft_limit_minor must be 0 (a floor) or positive")

    @property
    def has_floor(self) -> bool:
        return self.overdraft_limit_minor is not None

    def allows(self, balance_minor: int) -> bool:
        return self.overdraft_limit_minor is None or balance_minor >= -self.overdraft_limit_minor

    def delta(self, signed_amount_minor: int) -> int:
        """Change of the normal-side balance for a signed posting (debit > 0, credit < 0)."""
        return signed_amount_minor if self.normal_side is NormalSide.DEBIT else -signed_amount_minor

    def document(self) -> dict[str, Any]:
        return {
            "type": "account_opened",
            "account": self.id,
            "currency": self.currency.code,
            "exponent": self.currency.exponent,
            "normal_side": self.normal_side.value,
            "overdraft_limit_minor": self.overdraft_limit_minor,
            "status": self.status.value,
        }


@dataclass(frozen=True, slots=True)
class Leg:
    """One side of a transfer as asked: a positive amount debited or credited to an account."""

    account_id: str
    side: Side
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        check_account_id(self.account_id)
        if self.side.__class__ is not Side:
            object.__setattr__(self, "side", Side(self.side))
        check_minor(self.amount_minor)
        if self.amount_minor <= 0:
            raise InvalidAmount(f"leg amounts must be positive, got {self.amount_minor}")
        check_currency_code(self.currency)

    @property
    def signed_minor(self) -> int:
        return self.amount_minor if self.side is Side.DEBIT else -self.amount_minor


@dataclass(frozen=True, slots=True)
class OpenAccount:
    account: Account


@dataclass(frozen=True, slots=True)
class Transfer:
    """A journal entry as asked: two or more legs, balanced per currency, under one key."""

    key: str
    legs: tuple[Leg, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_key(self.key)
        object.__setattr__(self, "legs", tuple(self.legs))
        object.__setattr__(self, "metadata", check_metadata(self.metadata))
        if not 2 <= len(self.legs) <= LEGS_MAX:
            raise InvalidCommand(f"a transfer has 2 to {LEGS_MAX} legs, got {len(self.legs)}")
        totals: dict[str, int] = {}
        for leg in self.legs:
            if not isinstance(leg, Leg):
                raise InvalidCommand("legs must be Leg values")
            totals[leg.currency] = totals.get(leg.currency, 0) + leg.signed_minor
        for code, total in sorted(totals.items()):
            if total != 0:
                raise UnbalancedTransfer(
                    f"transfer {self.key}: debits and credits in {code} differ by {total}"
                )

    @classmethod
    def between(
        cls,
        key: str,
        *,
        debit: str,
        credit: str,
        amount_minor: int,
        currency: str,
        metadata: Mapping[str, str] | None = None,
    ) -> Transfer:
        """The common two-leg case: debit one account, credit another with the same amount."""
        return cls(
            key,
            (
                Leg(debit, Side.DEBIT, amount_minor, currency),
                Leg(credit, Side.CREDIT, amount_minor, currency),
            ),
            metadata or {},
        )

    def document(self) -> dict[str, Any]:
        return {
            "kind": "transfer",
            "legs": [[x.account_id, x.side.value, x.amount_minor, x.currency] for x in self.legs],
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True, slots=True)
class Reversal:
    """A correction: a new entry with every posting of ``reverses`` turned around."""

    key: str
    reverses: str
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_key(self.key)
        check_key(self.reverses, "reversed key")
        object.__setattr__(self, "metadata", check_metadata(self.metadata))
        if self.key == self.reverses:
            raise InvalidCommand("a reversal needs a key of its own")

    def document(self) -> dict[str, Any]:
        return {"kind": "reversal", "reverses": self.reverses, "metadata": dict(self.metadata)}


Command = OpenAccount | Transfer | Reversal
Result = AccountOutcome | TransferOutcome | SidecarError


class AccountState(NamedTuple):
    """An account and its balance as some reader saw it (a tuple: the writer's cache makes
    one per account per batch)."""

    account: Account
    balance_minor: int


class TransferRecord(NamedTuple):
    """A decided transfer as stored: enough to answer a replay and to reverse it."""

    key: str
    fingerprint: bytes
    status: TransferStatus
    rejection: Rejection | None
    postings: tuple[PostedLeg, ...]
    reverses: str | None
    reversed_by: str | None
    seq: int

    def outcome(self, *, replayed: bool) -> TransferOutcome:
        return TransferOutcome(
            self.key, self.status, self.rejection, self.postings, self.reverses, replayed, self.seq
        )


@dataclass(frozen=True, slots=True)
class LedgerView:
    """What the planner may consult: accounts by id, decided transfers by key.

    A missing account is unknown; a missing key is new. The store must include every account and
    key the commands name, the accounts of transfers being reversed, and the reversal (if any)
    of every transfer being reversed.
    """

    accounts: Mapping[str, AccountState]
    transfers: Mapping[str, TransferRecord]


class BalanceChange(NamedTuple):
    """An account's balance as a plan assumed it and as the plan leaves it (a tuple: the
    planner makes one per account per batch, so it must be cheap to build)."""

    before_minor: int
    after_minor: int


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """What one commit must write, in order.

    ``events[i]`` is the canonical text of the i-th event; ``event_of[j]`` is the index of the
    event that decides command j (``None`` for replays and errors). ``balances`` holds every
    account the plan consulted, existing or opened in this batch, with before and after.
    """

    results: tuple[Result, ...]
    events: tuple[str, ...]
    event_of: tuple[int | None, ...]
    balances: Mapping[str, BalanceChange]
    opened: tuple[str, ...]

    @property
    def is_empty(self) -> bool:
        return not self.events

    def with_first_seq(self, first_seq: int) -> tuple[Result, ...]:
        """The results with their sequence numbers, once the commit assigned ``first_seq``."""
        out: list[Result] = []
        for result, index in zip(self.results, self.event_of, strict=True):
            if index is None:
                out.append(result)
            elif isinstance(result, TransferOutcome):
                out.append(
                    TransferOutcome(
                        result.key,
                        result.status,
                        result.rejection,
                        result.postings,
                        result.reverses,
                        result.replayed,
                        first_seq + index,
                    )
                )
            elif isinstance(result, AccountOutcome):
                out.append(AccountOutcome(result.account_id, result.created, first_seq + index))
            else:  # pragma: no cover - errors have no event
                out.append(result)
        return tuple(out)


def keys_needed(commands: Iterable[Command]) -> tuple[set[str], set[str]]:
    """Account ids and transfer keys a store must load before ``plan_batch`` can decide."""
    accounts: set[str] = set()
    keys: set[str] = set()
    for cmd in commands:
        if isinstance(cmd, OpenAccount):
            accounts.add(cmd.account.id)
        elif isinstance(cmd, Transfer):
            keys.add(cmd.key)
            accounts.update(leg.account_id for leg in cmd.legs)
        else:
            keys.add(cmd.key)
            keys.add(cmd.reverses)
    return accounts, keys


def plan_batch(view: LedgerView, commands: Sequence[Command]) -> BatchPlan:
    """Decide every command in order against ``view`` and what earlier commands did to it."""
    return _Planner(view).plan(commands)


class _Planner:
    def __init__(self, view: LedgerView) -> None:
        self.view = view
        self.balances: dict[str, int] = {}
        self.before: dict[str, int] = {}
        self.new_accounts: dict[str, Account] = {}
        self.new_transfers: dict[str, TransferRecord] = {}
        self.reversed_by: dict[str, str] = {}
        self.events: list[str] = []
        self.event_of_key: dict[str, int] = {}

    def plan(self, commands: Sequence[Command]) -> BatchPlan:
        results: list[Result] = []
        event_of: list[int | None] = []
        for cmd in commands:
            before = len(self.events)
            try:
                if isinstance(cmd, OpenAccount):
                    result: Result = self._open(cmd)
                elif isinstance(cmd, Transfer):
                    result = self._transfer(cmd)
                elif isinstance(cmd, Reversal):
                    result = self._reverse(cmd)
                else:  # pragma: no cover - the type says this cannot happen
                    raise InvalidCommand(f"unknown command {type(cmd).__name__}")
            except SidecarError as exc:
                result = exc
            results.append(result)
            if len(self.events) > before:
                event_of.append(before)
            elif isinstance(result, TransferOutcome):
                # a replay of a key decided earlier in this same batch shares its event
                event_of.append(self.event_of_key.get(result.key))
            else:
                event_of.append(None)
        return BatchPlan(
            results=tuple(results),
            events=tuple(self.events),
            event_of=tuple(event_of),
            balances={
                acc: BalanceChange(self.before[acc], self.balances[acc]) for acc in self.before
            },
            opened=tuple(self.new_accounts),
        )

    # --- state as seen by the batch so far -----------------------------------------------

    def _account(self, account_id: str) -> Account | None:
        state = self.view.accounts.get(account_id)
        if state is not None:
            return state.account
        return self.new_accounts.get(account_id)

    def _balance(self, account_id: str) -> int:
        if account_id not in self.balances:
            state = self.view.accounts.get(account_id)
            start = state.balance_minor if state is not None else 0
            self.before[account_id] = start
            self.balances[account_id] = start
        return self.balances[account_id]

    def _record(self, key: str) -> TransferRecord | None:
        return self.new_transfers.get(key) or self.view.transfers.get(key)

    def _reversal_of(self, key: str) -> str | None:
        if key in self.reversed_by:
            return self.reversed_by[key]
        record = self.view.transfers.get(key)
        return record.reversed_by if record is not None else None

    # --- commands --------------------------------------------------------------------------

    def _open(self, cmd: OpenAccount) -> AccountOutcome:
        account = cmd.account
        existing = self._account(account.id)
        if existing is not None:
            if existing != account:
                raise IdempotencyConflict(
                    f"account {account.id} already exists with other attributes"
                )
            return AccountOutcome(account.id, created=False)
        self.new_accounts[account.id] = account
        self._balance(account.id)
        self.events.append(canonical(account.document()))
        return AccountOutcome(account.id, created=True)

    def _replay(self, key: str, print_: bytes) -> TransferOutcome | None:
        record = self._record(key)
        if record is None:
            return None
        if record.fingerprint != print_:
            raise IdempotencyConflict(
                f"idempotency key {key} was used before with a different payload"
            )
        return record.outcome(replayed=True)

    def _transfer(self, cmd: Transfer) -> TransferOutcome:
        print_ = fingerprint(cmd.document())
        replayed = self._replay(cmd.key, print_)
        if replayed is not None:
            return replayed
        accounts: dict[str, Account] = {}
        for leg in cmd.legs:
            account = self._account(leg.account_id)
            if account is None:
                raise UnknownAccount(f"transfer {cmd.key}: account {leg.account_id} does not exist")
            if account.currency.code != leg.currency:
                raise CurrencyMismatch(
                    f"transfer {cmd.key}: account {leg.account_id} holds "
                    f"{account.currency.code}, the leg is in {leg.currency}"
                )
            accounts[leg.account_id] = account
        signed = [(leg.account_id, leg.currency, leg.signed_minor) for leg in cmd.legs]
        return self._decide(cmd.key, print_, signed, accounts, None, cmd.metadata)

    def _reverse(self, cmd: Reversal) -> TransferOutcome:
        print_ = fingerprint(cmd.document())
        replayed = self._replay(cmd.key, print_)
        if replayed is not None:
            return replayed
        target = self._record(cmd.reverses)
        if target is None:
            raise UnknownTransfer(f"reversal {cmd.key}: no transfer {cmd.reverses} to reverse")
        if target.status is not TransferStatus.POSTED:
            raise InvalidCommand(
                f"reversal {cmd.key}: transfer {cmd.reverses} was rejected, nothing to reverse"
            )
        if target.reverses is not None:
            raise InvalidCommand(
                f"reversal {cmd.key}: {cmd.reverses} is itself a reversal; post a new transfer"
            )
        first = self._reversal_of(cmd.reverses)
        if first is not None:
            record = self._record(first)
            if record is None:  # pragma: no cover - the store contract includes it
                raise UnknownTransfer(f"reversal {first} of {cmd.reverses} could not be loaded")
            return record.outcome(replayed=True)
        accounts: dict[str, Account] = {}
        for posting in target.postings:
            account = self._account(posting.account_id)
            if account is None:  # pragma: no cover - the store contract includes it
                raise UnknownAccount(f"account {posting.account_id} could not be loaded")
            accounts[posting.account_id] = account
        signed = [(p.account_id, p.currency, -p.amount_minor) for p in target.postings]
        return self._decide(cmd.key, print_, signed, accounts, cmd.reverses, cmd.metadata)

    def _decide(
        self,
        key: str,
        print_: bytes,
        signed: list[tuple[str, str, int]],
        accounts: Mapping[str, Account],
        reverses: str | None,
        metadata: Mapping[str, str],
    ) -> TransferOutcome:
        running = {acc: self._balance(acc) for acc in accounts}
        postings: list[PostedLeg] = []
        rejection: Rejection | None = None
        for account_id, currency, amount in signed:
            account = accounts[account_id]
            if account.status is not AccountStatus.OPEN:
                rejection = Rejection.ACCOUNT_NOT_OPEN
                break
            after = running[account_id] + account.delta(amount)
            if not MINOR_MIN <= after <= MINOR_MAX:
                rejection = Rejection.BALANCE_OUT_OF_RANGE
                break
            running[account_id] = after
            postings.append(PostedLeg(account_id, currency, amount, after))
        if rejection is None:
            for account_id, balance in running.items():
                if not accounts[account_id].allows(balance):
                    rejection = Rejection.INSUFFICIENT_FUNDS
                    break

        common: dict[str, Any] = {
            "key": key,
            "fingerprint": print_.hex(),
            "reverses": reverses,
            "metadata": dict(metadata),
        }
        if rejection is not None:
            record = TransferRecord(
                key, print_, TransferStatus.REJECTED, rejection, (), reverses, None, 0
            )
            self.events.append(
                canonical({"type": "transfer_rejected", "rejection": rejection.value, **common})
            )
        else:
            self.balances.update(running)
            record = TransferRecord(
                key, print_, TransferStatus.POSTED, None, tuple(postings), reverses, None, 0
            )
            if reverses is not None:
                self.reversed_by[reverses] = key
            self.events.append(
                canonical(
                    {
                        "type": "transfer_posted",
                        "postings": [
                            {
                                "account": p.account_id,
                                "currency": p.currency,
                                "amount_minor": p.amount_minor,
                                "balance_after_minor": p.balance_after_minor,
                            }
                            for p in postings
                        ],
                        **common,
                    }
                )
            )
        self.new_transfers[key] = record
        self.event_of_key[key] = len(self.events) - 1
        return record.outcome(replayed=False)
