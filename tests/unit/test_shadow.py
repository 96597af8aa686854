"""Shadowing rules without I/O: decoding captured bodies, the two sides of a comparison, the
order concurrent exchanges are applied in, and which differences that order explains."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st
from sidecar.domain.comparison import (
    Comparison,
    Difference,
    DivergenceKind,
    Outcome,
    SideStatus,
)
from sidecar.domain.ledger import Account, NormalSide, OpenAccount, Reversal, Transfer
from sidecar.domain.mirror import MirrorRecord, RecordKind
from sidecar.domain.money import Currency
from sidecar.domain.outcome import AccountOutcome, PostedLeg, TransferOutcome, TransferStatus
from sidecar.domain.shadow import (
    Overlap,
    Pending,
    Span,
    body_of,
    exchange_of,
    explained_by_order,
    ledger_result,
    order_dependent,
    serialise,
)
from sidecar.domain.translate import BalanceRead
from sidecar.errors import UnknownAccount


def customer(account_id: str) -> Account:
    return Account(account_id, Currency("EUR", 2), NormalSide.CREDIT, 0)


def pay(key: str, debit: str, amount: int = 100) -> Transfer:
    return Transfer.between(key, debit=debit, credit="other", amount_minor=amount, currency="EUR")


def test_captured_bodies_parse_numbers_as_decimals_never_floats() -> None:
    assert body_of({"body": '{"amount": 10.10}'}) == {"amount": Decimal("10.10")}
    assert body_of({"body": "not json"}) is not None
    assert body_of({}) is body_of({"body": ""})  # both MISSING


def test_an_exchange_keeps_method_path_headers_and_status() -> None:
    intent = MirrorRecord(
        0,
        RecordKind.INTENT,
        "r1",
        {"method": "POST", "path": "/p", "headers": [["Idempotency-Key", "k"]], "body": "{}"},
    )
    outcome = MirrorRecord(0, RecordKind.OUTCOME, "r1", {"status": 201, "body": '{"a": 1}'})
    exchange = exchange_of(intent, outcome)
    assert (exchange.method, exchange.path, exchange.status) == ("POST", "/p", 201)
    assert exchange.headers == {"Idempotency-Key": "k"}
    assert exchange.answer == {"a": 1}


def test_an_account_the_ledger_holds_as_asked_agrees_with_created_or_exists() -> None:
    request = OpenAccount(customer("a"))
    existing = AccountOutcome("a", created=False)
    assert ledger_result(request, existing, SideStatus.ACCEPTED).status is SideStatus.ACCEPTED
    assert ledger_result(request, existing, SideStatus.REJECTED).status is SideStatus.REJECTED
    created = AccountOutcome("a", created=True)
    assert ledger_result(request, created, SideStatus.REJECTED).status is SideStatus.ACCEPTED


def test_a_ledger_refusal_is_a_rejection_with_its_code_not_an_error() -> None:
    side = ledger_result(pay("k", "a"), UnknownAccount("no a"), SideStatus.ACCEPTED)
    assert side.status is SideStatus.REJECTED
    assert side.fields == {"rejection": "unknown_account"}


def test_a_posted_transfer_reports_the_amount_it_moved() -> None:
    outcome = TransferOutcome(
        "k",
        TransferStatus.POSTED,
        postings=(PostedLeg("a", "EUR", 250, 0), PostedLeg("b", "EUR", -250, 250)),
    )
    side = ledger_result(pay("k", "a", 250), outcome, SideStatus.ACCEPTED)
    assert (side.status, side.currency, side.fields) == (
        SideStatus.ACCEPTED,
        "EUR",
        {"amount": 250},
    )


def test_a_second_refund_under_a_new_key_is_a_rejection() -> None:
    first = TransferOutcome("refund-1", TransferStatus.POSTED, replayed=True)
    side = ledger_result(Reversal("refund-2", "pay-1"), first, SideStatus.REJECTED)
    assert side.fields == {"rejection": "already_reversed"}


def test_a_balance_read_of_an_unknown_account_is_missing_unless_legacy_says_not_found() -> None:
    read = BalanceRead("a", "EUR")
    assert ledger_result(read, None, SideStatus.ACCEPTED).status is SideStatus.ABSENT
    assert ledger_result(read, None, SideStatus.REJECTED).status is SideStatus.REJECTED
    assert ledger_result(read, 5, SideStatus.ACCEPTED).fields == {"balance": 5}


def test_a_refused_payment_moves_after_an_overlapping_accepted_one_from_the_same_account() -> None:
    items = [
        Pending(Span(1, 4), SideStatus.REJECTED, pay("k1", "a")),
        Pending(Span(2, 5), SideStatus.ACCEPTED, pay("k2", "a")),
        Pending(Span(3, 6), SideStatus.ACCEPTED, pay("k3", "b")),
    ]
    assert serialise(items) == [1, 0, 2]


def test_money_coming_in_moves_before_an_overlapping_payment_out_of_that_account() -> None:
    incoming = Transfer.between("k2", debit="b", credit="a", amount_minor=100, currency="EUR")
    items = [
        Pending(Span(1, 4), SideStatus.ACCEPTED, pay("k1", "a")),
        Pending(Span(2, 5), SideStatus.ACCEPTED, incoming),
    ]
    assert serialise(items) == [1, 0]


def test_money_coming_in_stays_after_a_refusal_it_overlapped() -> None:
    incoming = Transfer.between("k3", debit="b", credit="a", amount_minor=100, currency="EUR")
    items = [
        Pending(Span(1, 5), SideStatus.ACCEPTED, pay("k1", "a")),
        Pending(Span(2, 6), SideStatus.REJECTED, pay("k2", "a")),
        Pending(Span(3, 7), SideStatus.ACCEPTED, incoming),
    ]
    assert serialise(items) == [0, 1, 2]


def test_exchanges_that_did_not_overlap_keep_their_order() -> None:
    items = [
        Pending(Span(1, 2), SideStatus.REJECTED, pay("k1", "a")),
        Pending(Span(3, 4), SideStatus.ACCEPTED, pay("k2", "a")),
    ]
    assert serialise(items) == [0, 1]


@given(
    st.lists(
        st.tuples(
            st.integers(1, 50),
            st.integers(1, 10),
            st.sampled_from([SideStatus.ACCEPTED, SideStatus.REJECTED]),
            st.sampled_from(["a", "b", "c"]),
        ),
        max_size=12,
    )
)
def test_serialise_is_a_permutation_moving_only_past_overlapping_exchanges(
    rows: list[tuple[int, int, SideStatus, str]],
) -> None:
    items = [
        Pending(Span(start, start + length), status, pay(f"k{i}", account))
        for i, (start, length, status, account) in enumerate(rows)
    ]
    order = serialise(items)
    assert sorted(order) == list(range(len(items)))
    position = {index: place for place, index in enumerate(order)}
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            if position[j] < position[i]:  # j overtook i: they overlapped in time
                assert items[i].span.overlaps(items[j].span)


def balance_gap(legacy: int, ledger: int) -> Comparison:
    difference = Difference(
        "balance",
        DivergenceKind.BALANCE,
        str(Decimal(legacy).scaleb(-2)),
        ledger,
        "EUR",
        abs(legacy - ledger),
        legacy,
    )
    return Comparison(Outcome.MISMATCH, (difference,), {"EUR": abs(legacy - ledger)})


def test_a_balance_off_by_an_overlapping_payment_is_order_dependent() -> None:
    # the ledger applied a -300 payment before the read; legacy answered the read first
    assert explained_by_order(balance_gap(1000, 700), before=[-300], after=[])
    # legacy had applied a +50 credit the ledger applies after the read
    assert explained_by_order(balance_gap(750, 700), before=[], after=[50])


def test_a_balance_no_order_explains_is_not_order_dependent() -> None:
    assert not explained_by_order(balance_gap(1001, 700), before=[-300], after=[])
    assert not explained_by_order(balance_gap(1000, 700), before=[], after=[])


def test_a_refusal_after_a_debit_both_sides_accepted_is_not_order_dependent() -> None:
    # legacy accepted both debits, the ledger refused the second: whichever went first,
    # legacy claims more money moved than the account had (a dropped posting hides so)
    status = Comparison(
        Outcome.MISMATCH,
        (Difference("status", DivergenceKind.STATUS, "accepted", "rejected", "EUR", 100),),
        {"EUR": 100},
    )
    both = Overlap(-500, legacy_accepted=True, alone=True)
    assert not explained_by_order(status, before=[both], after=[])
    # a credit in flight at the same time could have let legacy afford both: still explained
    crowded = Overlap(-500, legacy_accepted=True, alone=False)
    assert explained_by_order(status, before=[crowded], after=[])
    # a true swap: legacy refused the debit the ledger took first
    assert explained_by_order(status, before=[Overlap(-500, legacy_accepted=False)], after=[])
    # legacy accepted what the ledger refused after a credit legacy refused: no money came
    assert not explained_by_order(status, before=[], after=[Overlap(200, legacy_accepted=False)])
    refused = Comparison(
        Outcome.MISMATCH,
        (Difference("status", DivergenceKind.STATUS, "rejected", "accepted", "EUR", 100),),
        {"EUR": 100},
    )
    # legacy refused what the ledger accepted before a debit both accepted: not an order
    settled = Overlap(-500, legacy_accepted=True, alone=True)
    assert not explained_by_order(refused, before=[], after=[settled])
    # legacy took the debit first and a credit came between in the ledger's order (X, C, D
    # in the ledger, D, X, C in legacy): explained
    between = Overlap(-500, legacy_accepted=True, alone=False)
    assert explained_by_order(refused, before=[], after=[between])
    assert explained_by_order(refused, before=[], after=[Overlap(-500)])  # not answered yet
    assert explained_by_order(refused, before=[Overlap(300, legacy_accepted=True)], after=[])


def test_a_refusal_legacy_could_not_have_afforded_in_any_order_is_not_order_dependent() -> None:
    # what the demo met: legacy accepted payments A and B out of one account, each for all of
    # its money, and silently dropped A. The ledger posted A and refused B. Another debit
    # legacy accepted overlapped too, so A and B were not alone.
    refused = Comparison(
        Outcome.MISMATCH,
        (Difference("status", DivergenceKind.STATUS, "accepted", "rejected", "EUR", 500),),
        {"EUR": 500},
    )
    a = Overlap(-500, legacy_accepted=True, requested=-500, settled=True)
    other = Overlap(-100, legacy_accepted=True, requested=-100, settled=True)
    # all that is known (complete): by the time legacy answered B it had paid A, B and the
    # other out of what the ledger held before A: no order gives legacy the money
    assert not explained_by_order(refused, before=[a], after=[other], complete=True)
    assert not explained_by_order(refused, before=[a, other], after=[], complete=True)
    # a debit the ledger refused but legacy accepted leaves legacy with less, not more
    took = Overlap(0, legacy_accepted=True, requested=-200, settled=True)
    assert not explained_by_order(refused, before=[a, took], after=[], complete=True)
    # a credit legacy accepted (or has not answered yet) could have come first: explained
    credit = Overlap(800, legacy_accepted=True, requested=800)
    assert explained_by_order(refused, before=[a], after=[credit], complete=True)
    assert explained_by_order(refused, before=[a], after=[Overlap(800)], complete=True)
    # so could a debit the ledger took first and legacy refused (a true swap)
    swapped = Overlap(-500, legacy_accepted=False, requested=-500, settled=True)
    assert explained_by_order(refused, before=[swapped], after=[], complete=True)
    # or one the ledger took first that legacy answered only later: legacy may have made it
    # after B, paid for by money that came in after B was answered
    late = Overlap(-500, legacy_accepted=True, requested=-500, settled=False)
    assert explained_by_order(refused, before=[late], after=[], complete=True)
    # a debit legacy answered after B, beside a credit: the credit first, B, then the debit
    # once more money came in (nothing here says it did not)
    later = Overlap(-500, legacy_accepted=True, requested=-500, settled=False)
    assert explained_by_order(refused, before=[], after=[credit, later], complete=True)
    # a debit whose answer was learned late (in doubt): when legacy made it is not known
    doubted = Overlap(-500, legacy_accepted=True, requested=-500, settled=None)
    assert explained_by_order(refused, before=[doubted], after=[], complete=True)
    # with some movement unknown (a reversal in flight, say), the lenient rule stays
    assert explained_by_order(refused, before=[a], after=[other], complete=False)


def test_a_refusal_is_order_dependent_only_if_an_overlapping_movement_could_flip_it() -> None:
    status = Comparison(
        Outcome.MISMATCH,
        (Difference("status", DivergenceKind.STATUS, "accepted", "rejected", "EUR", 100),),
        {"EUR": 100},
    )
    assert explained_by_order(status, before=[-500], after=[])  # a debit the ledger took first
    assert explained_by_order(status, before=[], after=[200])  # a credit the ledger took later
    assert not explained_by_order(status, before=[200], after=[-500])


def test_order_dependent_is_named_noise_with_no_money_at_risk() -> None:
    renamed = order_dependent(balance_gap(1000, 700))
    assert renamed.kinds == {DivergenceKind.ORDER_DEPENDENT}
    assert renamed.at_risk_minor == {}
