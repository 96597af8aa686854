"""The planner's rules, decided in memory with no database, by the thousand."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sidecar.domain.ledger import (
    Account,
    AccountState,
    Command,
    LedgerView,
    Leg,
    NormalSide,
    OpenAccount,
    Reversal,
    Side,
    Transfer,
    plan_batch,
)
from sidecar.domain.money import MINOR_MAX, Currency
from sidecar.domain.outcome import Rejection, TransferOutcome, TransferStatus
from sidecar.domain.replay import Fold
from sidecar.errors import (
    CurrencyMismatch,
    IdempotencyConflict,
    InvalidAccountId,
    InvalidAmount,
    InvalidCommand,
    InvalidIdempotencyKey,
    UnbalancedTransfer,
    UnknownAccount,
)

EUR = Currency("EUR", 2)
USD = Currency("USD", 2)
EMPTY = LedgerView(accounts={}, transfers={})

ACCOUNTS = [
    Account("cash-eur", EUR, NormalSide.DEBIT, None),
    Account("cash-usd", USD, NormalSide.DEBIT, None),
    Account("a", EUR, NormalSide.CREDIT, 0),
    Account("b", EUR, NormalSide.CREDIT, 0),
    Account("c", EUR, NormalSide.CREDIT, 5_000),
    Account("u", USD, NormalSide.CREDIT, 0),
]
BY_ID = {a.id: a for a in ACCOUNTS}
OPEN_ALL: list[Command] = [OpenAccount(a) for a in ACCOUNTS]


def pay(key: str, debit: str, credit: str, amount: int) -> Transfer:
    currency = BY_ID[debit].currency.code
    return Transfer.between(key, debit=debit, credit=credit, amount_minor=amount, currency=currency)


eur_ids = st.sampled_from(["cash-eur", "a", "b", "c"])
keys = st.sampled_from([f"k{i}" for i in range(12)])


@st.composite
def commands(draw: st.DrawFn) -> Command:
    kind = draw(st.sampled_from(["pay", "pay", "pay", "fx", "reverse"]))
    key = draw(keys)
    if kind == "reverse":
        return Reversal(key, draw(keys.filter(lambda k: k != key)))
    if kind == "fx":  # a four-leg, two-currency entry
        amount_eur = draw(st.integers(1, 30_000))
        amount_usd = draw(st.integers(1, 30_000))
        return Transfer(
            key,
            (
                Leg(draw(eur_ids), Side.DEBIT, amount_eur, "EUR"),
                Leg("cash-eur", Side.CREDIT, amount_eur, "EUR"),
                Leg("cash-usd", Side.DEBIT, amount_usd, "USD"),
                Leg("u", Side.CREDIT, amount_usd, "USD"),
            ),
        )
    debit, credit = draw(eur_ids), draw(eur_ids)
    return pay(key, debit, credit, draw(st.integers(1, 30_000)))


@settings(max_examples=300)
@given(st.lists(commands(), max_size=40))
def test_plans_keep_floors_balance_entries_and_agree_with_a_replay(cmds: list[Command]) -> None:
    plan = plan_batch(EMPTY, [*OPEN_ALL, *cmds])
    fold = Fold()
    for offset, content in enumerate(plan.events, start=1):
        fold.apply(offset, content)  # raises if any event contradicts the ones before it
    for account_id, change in plan.balances.items():
        assert fold.accounts[account_id].balance_minor == change.after_minor
        assert BY_ID[account_id].allows(change.after_minor)
    assert all(total == 0 for total in fold.trial_balance().values())
    for result in plan.results:
        if isinstance(result, TransferOutcome) and result.posted:
            totals: dict[str, int] = {}
            final: dict[str, int] = {}
            for p in result.postings:
                totals[p.currency] = totals.get(p.currency, 0) + p.amount_minor
                final[p.account_id] = p.balance_after_minor
            assert set(totals.values()) == {0}
            # an entry is atomic: the floor holds for where it leaves each account
            assert all(BY_ID[a].allows(balance) for a, balance in final.items())


def test_a_transfer_past_the_floor_is_rejected_and_moves_nothing() -> None:
    plan = plan_batch(EMPTY, [*OPEN_ALL, pay("t1", "a", "b", 1)])
    outcome = plan.results[-1]
    assert isinstance(outcome, TransferOutcome)
    assert outcome.rejection is Rejection.INSUFFICIENT_FUNDS
    assert plan.balances["a"].after_minor == 0 and plan.balances["b"].after_minor == 0


def test_an_overdraft_limit_allows_exactly_that_much() -> None:
    plan = plan_batch(EMPTY, [*OPEN_ALL, pay("t1", "c", "a", 5_000), pay("t2", "c", "a", 1)])
    first, second = plan.results[-2:]
    assert isinstance(first, TransferOutcome) and first.posted
    assert isinstance(second, TransferOutcome) and second.status is TransferStatus.REJECTED
    assert plan.balances["c"].after_minor == -5_000


def test_replayed_key_with_same_payload_returns_the_first_outcome() -> None:
    fund = pay("f", "cash-eur", "a", 100)
    plan = plan_batch(EMPTY, [*OPEN_ALL, fund, fund])
    first, again = plan.results[-2:]
    assert isinstance(first, TransferOutcome) and isinstance(again, TransferOutcome)
    assert again.replayed and not first.replayed and again.postings == first.postings
    assert plan.balances["a"].after_minor == 100
    numbered = plan.with_first_seq(1)
    assert numbered[-1].seq == numbered[-2].seq  # type: ignore[union-attr]


def test_replayed_key_with_other_amount_is_a_conflict() -> None:
    plan = plan_batch(
        EMPTY, [*OPEN_ALL, pay("f", "cash-eur", "a", 100), pay("f", "cash-eur", "a", 101)]
    )
    assert isinstance(plan.results[-1], IdempotencyConflict)
    assert plan.balances["a"].after_minor == 100


def test_a_rejection_stays_a_rejection_after_funds_arrive() -> None:
    plan = plan_batch(
        EMPTY,
        [*OPEN_ALL, pay("t", "a", "b", 50), pay("f", "cash-eur", "a", 100), pay("t", "a", "b", 50)],
    )
    first, _, again = plan.results[-3:]
    assert isinstance(first, TransferOutcome) and first.rejection is Rejection.INSUFFICIENT_FUNDS
    assert isinstance(again, TransferOutcome) and again.replayed
    assert again.rejection is Rejection.INSUFFICIENT_FUNDS
    assert plan.balances["b"].after_minor == 0


def test_reversing_twice_returns_the_first_reversal_and_moves_nothing() -> None:
    plan = plan_batch(
        EMPTY,
        [*OPEN_ALL, pay("f", "cash-eur", "a", 100), Reversal("r1", "f"), Reversal("r2", "f")],
    )
    first, second = plan.results[-2:]
    assert isinstance(first, TransferOutcome) and isinstance(second, TransferOutcome)
    assert second.key == "r1" and second.replayed and first.reverses == "f"
    assert plan.balances["a"].after_minor == 0
    assert sum(1 for e in plan.events if '"reverses":"f"' in e) == 1


def test_a_bad_command_does_not_abort_its_batch() -> None:
    plan = plan_batch(
        EMPTY,
        [
            *OPEN_ALL,
            pay("x", "cash-eur", "a", 10),
            pay("x", "cash-eur", "a", 11),
            pay("y", "cash-eur", "b", 10),
        ],
    )
    ok1, conflict, ok2 = plan.results[-3:]
    assert isinstance(conflict, IdempotencyConflict)
    assert isinstance(ok1, TransferOutcome) and isinstance(ok2, TransferOutcome)
    assert ok1.posted and ok2.posted


def test_unknown_accounts_and_currency_mismatches_are_errors_that_record_nothing() -> None:
    view = LedgerView({a.id: AccountState(a, 0) for a in ACCOUNTS}, {})
    mismatch = Transfer.between("m", debit="u", credit="a", amount_minor=1, currency="USD")
    unknown = Transfer.between(
        "n", debit="cash-eur", credit="ghost", amount_minor=1, currency="EUR"
    )
    plan = plan_batch(view, [mismatch, unknown])
    assert isinstance(plan.results[0], CurrencyMismatch)
    assert isinstance(plan.results[1], UnknownAccount)
    assert plan.is_empty


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: pay("z", "cash-eur", "a", 0), InvalidAmount),
        (lambda: pay("z", "cash-eur", "a", -5), InvalidAmount),
        (lambda: pay("z", "cash-eur", "a", MINOR_MAX + 1), InvalidAmount),
        (lambda: pay("has space", "cash-eur", "a", 5), InvalidIdempotencyKey),
        (lambda: pay("", "cash-eur", "a", 5), InvalidIdempotencyKey),
        (lambda: pay("k" * 129, "cash-eur", "a", 5), InvalidIdempotencyKey),
        (
            lambda: Transfer.between(
                "z", debit="bad id", credit="a", amount_minor=1, currency="EUR"
            ),
            InvalidAccountId,
        ),
        (
            lambda: Transfer(
                "z", (Leg("a", Side.DEBIT, 5, "EUR"), Leg("b", Side.CREDIT, 4, "EUR"))
            ),
            UnbalancedTransfer,
        ),
        (lambda: Transfer("z", (Leg("a", Side.DEBIT, 5, "EUR"),)), InvalidCommand),
        (
            lambda: Transfer(
                "z", (Leg("a", Side.DEBIT, 5, "EUR"), Leg("u", Side.CREDIT, 5, "USD"))
            ),
            UnbalancedTransfer,
        ),
        (lambda: Reversal("same", "same"), InvalidCommand),
    ],
)
def test_malformed_commands_are_refused_before_they_reach_a_plan(build, error) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error):
        build()


def test_reopening_an_account_with_other_attributes_is_a_conflict() -> None:
    view = LedgerView({"a": AccountState(BY_ID["a"], 0)}, {})
    plan = plan_batch(
        view, [OpenAccount(Account("a", EUR, NormalSide.DEBIT, 0)), OpenAccount(BY_ID["a"])]
    )
    assert isinstance(plan.results[0], IdempotencyConflict)
    assert not plan.results[1].created  # type: ignore[union-attr]
    assert plan.is_empty
