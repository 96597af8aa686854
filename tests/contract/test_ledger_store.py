"""The LedgerStore contract: one suite, run against the in-memory store and PostgreSQL.

Each test states a rule of the port (sidecar/ports.py) that both adapters keep. Plans are made
the way the posting writer makes them: ``plan_batch(await store.load(...), commands)``, or from a
view that deliberately leaves out what another writer committed meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from sidecar.db.ledger_store import PostgresLedgerStore
from sidecar.domain.chain import GENESIS, fingerprint, link
from sidecar.domain.ledger import (
    Account,
    AccountState,
    BalanceChange,
    BatchPlan,
    Command,
    LedgerView,
    Leg,
    NormalSide,
    OpenAccount,
    Reversal,
    Side,
    Transfer,
    TransferRecord,
    keys_needed,
    plan_batch,
)
from sidecar.domain.mirror import Checkpoint
from sidecar.domain.money import Currency
from sidecar.domain.outcome import PostedLeg, Rejection, TransferOutcome, TransferStatus
from sidecar.errors import AccountsTaken, KeysTaken, LedgerIntegrityError, PlanStale
from sidecar.memory import InMemoryLedgerStore
from sidecar.ports import LedgerStore, LogHead, StoredEvent

EUR = Currency("EUR", 2)
EMPTY = LedgerView(accounts={}, transfers={})


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest) -> LedgerStore:
    if request.param == "memory":
        return InMemoryLedgerStore()
    # tests/conftest.py: a pool on a fresh, migrated schema, closed and dropped afterwards
    return PostgresLedgerStore(request.getfixturevalue("pool"))


# --- builders ------------------------------------------------------------------------------


def cash(account_id: str = "cash") -> OpenAccount:
    """Debit-normal, no floor: the source of money."""
    return OpenAccount(Account(account_id, EUR, NormalSide.DEBIT, None))


def customer(account_id: str) -> OpenAccount:
    """Credit-normal with a floor at 0."""
    return OpenAccount(Account(account_id, EUR, NormalSide.CREDIT, 0))


def pay(key: str, debit: str, credit: str, amount_minor: int) -> Transfer:
    return Transfer.between(
        key, debit=debit, credit=credit, amount_minor=amount_minor, currency="EUR"
    )


async def view_for(store: LedgerStore, commands: Sequence[Command]) -> LedgerView:
    account_ids, keys = keys_needed(commands)
    return await store.load(account_ids, keys)


async def plan(store: LedgerStore, *commands: Command) -> BatchPlan:
    return plan_batch(await view_for(store, commands), commands)


async def post(store: LedgerStore, *commands: Command) -> int:
    return await store.commit(await plan(store, *commands))


async def all_events(
    store: LedgerStore, after_seq: int = 0, chunk: int = 5000
) -> list[StoredEvent]:
    return [event async for event in store.events(after_seq, chunk)]


async def snapshot(store: LedgerStore, account_ids: Sequence[str], keys: Sequence[str]) -> object:
    """Everything a refused commit must leave as it was."""
    return (
        await store.head(),
        await all_events(store),
        await store.load(account_ids, keys),
        [await store.balance(a) for a in account_ids],
    )


async def bank(store: LedgerStore) -> None:
    """cash, alice and bob; alice holds 1000 (seqs 1-4)."""
    await post(store, cash(), customer("alice"), customer("bob"))
    await post(store, pay("fund-alice", "cash", "alice", 1000))


# --- the log: seqs, head, chain ------------------------------------------------------------


async def test_commit_returns_consecutive_seqs_across_commits(store: LedgerStore) -> None:
    assert await post(store, cash(), customer("alice")) == 1
    assert await post(store, pay("t1", "cash", "alice", 10)) == 3
    assert await post(store, pay("t2", "cash", "alice", 5), pay("t3", "cash", "alice", 5)) == 4
    assert await post(store, customer("bob")) == 6
    assert [e.seq for e in await all_events(store)] == [1, 2, 3, 4, 5, 6]


async def test_an_empty_store_has_the_genesis_head(store: LedgerStore) -> None:
    assert await store.head() == LogHead(0, GENESIS, 0)
    assert await all_events(store) == []


async def test_head_hash_is_the_chain_recomputed_over_the_events(store: LedgerStore) -> None:
    await bank(store)
    await post(store, pay("t1", "alice", "bob", 300), pay("t2", "alice", "bob", 100))
    events = await all_events(store)
    prev = GENESIS
    for event in events:
        prev = link(prev, event.seq, event.content)
        assert event.hash == prev, f"event {event.seq}"
    assert await store.head() == LogHead(len(events), prev, 3)


async def test_events_hold_the_plans_event_texts_in_order(store: LedgerStore) -> None:
    first = await plan(store, cash(), customer("alice"))
    await store.commit(first)
    second = await plan(store, pay("t1", "cash", "alice", 10))
    await store.commit(second)
    assert [e.content for e in await all_events(store)] == [*first.events, *second.events]


async def test_events_after_a_seq_start_at_the_next_one_whatever_the_chunk(
    store: LedgerStore,
) -> None:
    await bank(store)
    everything = await all_events(store)
    assert await all_events(store, after_seq=2) == everything[2:]
    assert await all_events(store, after_seq=1, chunk=1) == everything[1:]
    assert await all_events(store, after_seq=4) == []


# --- load ----------------------------------------------------------------------------------


async def test_load_returns_the_accounts_asked_with_their_balances(store: LedgerStore) -> None:
    await bank(store)
    view = await store.load(["alice", "cash", "nobody"], [])
    assert view.accounts == {
        "alice": AccountState(Account("alice", EUR, NormalSide.CREDIT, 0), 1000),
        "cash": AccountState(Account("cash", EUR, NormalSide.DEBIT, None), 1000),
    }
    assert view.transfers == {}


async def test_load_returns_a_transfer_with_its_postings_and_their_accounts(
    store: LedgerStore,
) -> None:
    await bank(store)
    t1 = pay("t1", "alice", "bob", 300)
    seq = await post(store, t1)
    view = await store.load([], ["t1", "unknown"])
    assert view.transfers == {
        "t1": TransferRecord(
            key="t1",
            fingerprint=fingerprint(t1.document()),
            status=TransferStatus.POSTED,
            rejection=None,
            postings=(PostedLeg("alice", "EUR", 300, 700), PostedLeg("bob", "EUR", -300, 300)),
            reverses=None,
            reversed_by=None,
            seq=seq,
        )
    }
    assert {a: s.balance_minor for a, s in view.accounts.items()} == {"alice": 700, "bob": 300}


async def test_load_returns_the_reversal_of_a_transfer_asked_for(store: LedgerStore) -> None:
    await bank(store)
    await post(store, pay("t1", "alice", "bob", 300))
    seq = await post(store, Reversal("r1", "t1"))
    view = await store.load([], ["t1"])
    assert set(view.transfers) == {"t1", "r1"}
    assert view.transfers["t1"].reversed_by == "r1"
    reversal = view.transfers["r1"]
    assert (reversal.reverses, reversal.reversed_by, reversal.seq) == ("t1", None, seq)
    assert reversal.postings == (
        PostedLeg("alice", "EUR", -300, 1000),
        PostedLeg("bob", "EUR", 300, 0),
    )


# --- refusals: nothing changes -------------------------------------------------------------


async def test_a_plan_from_stale_balances_is_refused_and_changes_nothing(
    store: LedgerStore,
) -> None:
    await bank(store)
    view = await store.load(["alice", "bob", "cash"], ["t1", "t2"])
    await store.commit(plan_batch(view, [pay("t1", "alice", "bob", 300)]))
    before = await snapshot(store, ["alice", "bob", "cash"], ["t1", "t2"])
    late = plan_batch(view, [pay("t2", "alice", "cash", 50)])
    with pytest.raises(PlanStale) as refused:
        await store.commit(late)
    assert refused.value.account_ids == frozenset({"alice"})
    assert await snapshot(store, ["alice", "bob", "cash"], ["t1", "t2"]) == before


async def test_a_key_decided_meanwhile_is_refused_and_changes_nothing(
    store: LedgerStore,
) -> None:
    await bank(store)
    await post(store, pay("t1", "alice", "bob", 300))
    before = await snapshot(store, ["alice", "bob", "carol"], ["t1"])
    # the writer assumes keys are new: accounts loaded, no transfers
    commands: list[Command] = [customer("carol"), pay("t1", "alice", "bob", 300)]
    accounts = (await store.load(["alice", "bob", "carol"], [])).accounts
    optimistic = plan_batch(LedgerView(accounts=accounts, transfers={}), commands)
    assert len(optimistic.events) == 2
    with pytest.raises(KeysTaken):
        await store.commit(optimistic)
    assert await snapshot(store, ["alice", "bob", "carol"], ["t1"]) == before
    assert await store.balance("carol") is None


async def test_a_second_reversal_decided_meanwhile_is_refused_and_changes_nothing(
    store: LedgerStore,
) -> None:
    await bank(store)
    await post(store, pay("t1", "alice", "bob", 300))
    view = await store.load([], ["t1", "r2"])
    await post(store, Reversal("r1", "t1"))
    # the same move again, so the balances r2 assumes are current once more
    await post(store, pay("t2", "alice", "bob", 300))
    before = await snapshot(store, ["alice", "bob"], ["t1", "r1", "r2"])
    second = plan_batch(view, [Reversal("r2", "t1")])
    assert len(second.events) == 1
    with pytest.raises(KeysTaken):
        await store.commit(second)
    assert await snapshot(store, ["alice", "bob"], ["t1", "r1", "r2"]) == before


async def test_opening_an_existing_account_from_an_empty_view_is_refused(
    store: LedgerStore,
) -> None:
    await post(store, customer("alice"))
    before = await snapshot(store, ["alice", "bob"], [])
    with pytest.raises(AccountsTaken):
        await store.commit(plan_batch(EMPTY, [customer("bob"), customer("alice")]))
    assert await snapshot(store, ["alice", "bob"], []) == before
    assert await store.balance("bob") is None


async def test_money_assumed_in_an_account_the_store_lacks_is_stale(
    store: LedgerStore,
) -> None:
    await bank(store)
    before = await snapshot(store, ["ghost", "cash"], ["t1"])
    ghost = AccountState(Account("ghost", EUR, NormalSide.CREDIT, 0), 500)
    cash_state = (await store.load(["cash"], [])).accounts["cash"]
    view = LedgerView(accounts={"ghost": ghost, "cash": cash_state}, transfers={})
    with pytest.raises(PlanStale) as refused:
        await store.commit(plan_batch(view, [pay("t1", "ghost", "cash", 100)]))
    assert refused.value.account_ids == frozenset({"ghost"})
    assert await snapshot(store, ["ghost", "cash"], ["t1"]) == before


async def test_opening_an_existing_account_that_holds_money_is_stale(
    store: LedgerStore,
) -> None:
    """post_batch checks assumed balances before it inserts: a plan that opens an account
    assumes its balance is 0, so an existing account holding money makes the plan stale."""
    await bank(store)
    before = await snapshot(store, ["alice"], [])
    with pytest.raises(PlanStale) as refused:
        await store.commit(plan_batch(EMPTY, [customer("alice")]))
    assert refused.value.account_ids == frozenset({"alice"})
    assert await snapshot(store, ["alice"], []) == before


async def test_a_plan_without_events_is_refused(store: LedgerStore) -> None:
    await bank(store)
    before = await snapshot(store, ["alice", "cash"], ["fund-alice"])
    replay = await plan(store, pay("fund-alice", "cash", "alice", 1000))
    assert replay.is_empty
    with pytest.raises(LedgerIntegrityError):
        await store.commit(replay)
    assert await snapshot(store, ["alice", "cash"], ["fund-alice"]) == before


async def test_a_plan_whose_balances_disagree_with_its_postings_is_refused(
    store: LedgerStore,
) -> None:
    await bank(store)
    before = await snapshot(store, ["alice", "bob"], ["t1"])
    honest = await plan(store, pay("t1", "alice", "bob", 300))
    forged = BatchPlan(
        results=honest.results,
        events=honest.events,
        event_of=honest.event_of,
        balances={**honest.balances, "bob": BalanceChange(0, 3000)},
        opened=honest.opened,
    )
    with pytest.raises(LedgerIntegrityError):
        await store.commit(forged)
    assert await snapshot(store, ["alice", "bob"], ["t1"]) == before


async def test_a_plan_that_ignores_a_floor_is_refused(store: LedgerStore) -> None:
    await bank(store)
    before = await snapshot(store, ["alice", "bob"], ["t1"])
    # a view that thinks alice has no floor, with her real balance
    no_floor = AccountState(Account("alice", EUR, NormalSide.CREDIT, None), 1000)
    bob = (await store.load(["bob"], [])).accounts["bob"]
    view = LedgerView(accounts={"alice": no_floor, "bob": bob}, transfers={})
    overdraw = plan_batch(view, [pay("t1", "alice", "bob", 1500)])
    assert overdraw.balances["alice"].after_minor == -500
    with pytest.raises(LedgerIntegrityError):
        await store.commit(overdraw)
    assert await snapshot(store, ["alice", "bob"], ["t1"]) == before


# --- point-in-time balances ----------------------------------------------------------------


async def test_balance_at_an_earlier_seq_is_the_balance_after_the_last_posting_then(
    store: LedgerStore,
) -> None:
    await bank(store)  # alice opened at 2, funded at 4
    await post(store, pay("t1", "alice", "bob", 300))  # 5
    await post(store, customer("carol"))  # 6
    await post(store, pay("t2", "alice", "bob", 200))  # 7
    assert [await store.balance("alice", seq) for seq in range(2, 9)] == [
        0,
        0,
        1000,
        700,
        700,
        500,
        500,
    ]
    assert await store.balance("alice") == 500
    assert await store.balance("bob", 5) == 300


async def test_balance_within_an_entry_is_the_one_after_its_last_leg(store: LedgerStore) -> None:
    await bank(store)
    split = Transfer(
        "split",
        (
            Leg("alice", Side.DEBIT, 100, "EUR"),
            Leg("alice", Side.DEBIT, 250, "EUR"),
            Leg("bob", Side.CREDIT, 350, "EUR"),
        ),
    )
    seq = await post(store, split)
    assert await store.balance("alice", seq) == 650
    assert await store.balance("alice", seq - 1) == 1000


async def test_balance_before_the_account_was_opened_is_none(store: LedgerStore) -> None:
    await bank(store)
    seq = await post(store, customer("carol"))
    assert await store.balance("carol", seq - 1) is None
    assert await store.balance("carol", 0) is None
    assert await store.balance("carol", seq) == 0
    assert await store.balance("carol") == 0


async def test_balance_of_an_unknown_account_is_none(store: LedgerStore) -> None:
    await bank(store)
    assert await store.balance("nobody") is None
    assert await store.balance("nobody", 4) is None


# --- what decisions look like once stored --------------------------------------------------


async def test_a_rejected_transfer_is_stored_as_rejected_without_postings(
    store: LedgerStore,
) -> None:
    await bank(store)
    seq = await post(store, pay("t1", "alice", "bob", 5000))
    record = (await store.load([], ["t1"])).transfers["t1"]
    assert (record.status, record.rejection, record.postings, record.seq) == (
        TransferStatus.REJECTED,
        Rejection.INSUFFICIENT_FUNDS,
        (),
        seq,
    )
    assert (await store.balance("alice"), await store.balance("bob")) == (1000, 0)
    assert await store.balance("alice", seq) == 1000


async def test_a_transfer_is_reversed_once(store: LedgerStore) -> None:
    await bank(store)
    await post(store, pay("t1", "alice", "bob", 300))
    r1 = await post(store, Reversal("r1", "t1"))
    again = await plan(store, Reversal("r2", "t1"))
    assert again.is_empty
    (outcome,) = again.results
    assert isinstance(outcome, TransferOutcome)
    assert (outcome.key, outcome.replayed, outcome.seq) == ("r1", True, r1)
    view = await store.load([], ["t1", "r2"])
    assert set(view.transfers) == {"t1", "r1"}
    assert (await store.balance("alice"), await store.balance("bob")) == (1000, 0)


# --- checkpoints: stream offsets committed with the batch ------------------------------------


async def test_a_commit_moves_its_checkpoints_in_the_same_transaction(store: LedgerStore) -> None:
    await bank(store)
    assert await store.offset("applier", 3) == 0
    plan_ = await plan(store, pay("t-ck", "alice", "bob", 100))
    await store.commit(
        plan_,
        [Checkpoint("applier", 3, 41), Checkpoint("applier", 3, 40), Checkpoint("applier", 5, 7)],
    )
    assert await store.offset("applier", 3) == 41
    assert await store.offset("applier", 5) == 7
    assert await store.offset("other", 3) == 0


async def test_a_refused_plan_moves_no_checkpoint(store: LedgerStore) -> None:
    await bank(store)
    stale = await plan(store, pay("t-a", "alice", "bob", 100))
    await store.commit(await plan(store, pay("t-b", "alice", "bob", 100)))
    with pytest.raises(PlanStale):
        await store.commit(stale, [Checkpoint("applier", 0, 9)])
    assert await store.offset("applier", 0) == 0


async def test_a_checkpoint_never_moves_an_offset_back(store: LedgerStore) -> None:
    await bank(store)
    await store.commit(await plan(store, pay("t-1", "alice", "bob", 1)), [Checkpoint("a", 0, 10)])
    await store.commit(await plan(store, pay("t-2", "alice", "bob", 1)), [Checkpoint("a", 0, 4)])
    assert await store.offset("a", 0) == 10
