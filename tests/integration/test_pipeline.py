"""The pipelined posting writer against real PostgreSQL: with ``pipeline_depth`` 2 a batch is
planned on the balances the batch in flight leaves, yet keys, reversal targets and newly opened
accounts are still decided in order, and stale plans are replanned, never committed."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import replace

import asyncpg
import pytest
from sidecar.config import DatabaseSettings, LedgerSettings, Settings
from sidecar.db.connect import create_pool
from sidecar.db.ledger_store import PostgresLedgerStore
from sidecar.domain.ledger import (
    Account,
    BatchPlan,
    Command,
    NormalSide,
    OpenAccount,
    Reversal,
    Transfer,
)
from sidecar.domain.mirror import Checkpoint
from sidecar.domain.outcome import AccountOutcome, Rejection, TransferOutcome
from sidecar.errors import AccountsTaken, KeysTaken, LedgerUnavailable, PlanStale
from sidecar.posting import Ledger
from sidecar.verify import verify

from tests.ledger_builders import EUR, open_bank, pay

DEPTHS = pytest.mark.parametrize("depth", [1, 2])


class Overlap(PostgresLedgerStore):
    """The real store, counting commits that were in the database at the same time."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.active = 0
        self.started = 0
        self.most = 0
        self.refused = 0
        self.refused_overlapping = 0  # refused while another commit of this store was running

    async def commit(self, plan: BatchPlan, checkpoints: Sequence[Checkpoint] = ()) -> int:
        others, mark = self.active, self.started
        self.active += 1
        self.started += 1
        self.most = max(self.most, self.active)
        try:
            return await super().commit(plan, checkpoints)
        except (PlanStale, KeysTaken, AccountsTaken):
            self.refused += 1
            self.refused_overlapping += bool(others or self.started > mark + 1)
            raise
        finally:
            self.active -= 1


def tight(settings: Settings, depth: int = 2, batch: int = 50) -> LedgerSettings:
    return replace(
        settings.ledger,
        pipeline_depth=depth,
        batch_commands_max=batch,
        batch_linger_ms=1.0,
        stale_retries_max=200,
    )


async def outcomes(
    ledger: Ledger, commands: Sequence[Transfer | Reversal]
) -> list[TransferOutcome]:
    results = await asyncio.gather(*(ledger.submit(c) for c in commands))
    assert all(isinstance(r, TransferOutcome) for r in results)
    return [r for r in results if isinstance(r, TransferOutcome)]


async def balances(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT id, balance_minor FROM accounts")
    return {r["id"]: r["balance_minor"] for r in rows}


@DEPTHS
async def test_a_key_resubmitted_while_its_batch_is_in_flight_is_decided_once(
    pool: asyncpg.Pool, settings: Settings, conn: asyncpg.Connection, depth: int
) -> None:
    store = Overlap(pool)
    async with Ledger(store, tight(settings, depth)) as ledger:
        await open_bank(ledger, funds=1_000_000)
        commands: list[Transfer | Reversal] = []
        dup_of: dict[int, int] = {}  # position of a duplicate -> position of its original
        for i in range(600):
            commands.append(pay(f"t{i}", f"c{i % 3}", f"c{(i + 1) % 3}", 1 + i % 7))
            if i % 50 == 49 and i < 500:  # the next batch opens with a key of this one
                dup_of[len(commands)] = len(commands) - 21
                commands.append(commands[-21])
        results = await outcomes(ledger, commands)
    assert store.most == depth  # depth 2 really had two batches in the database at once
    for dup, original in dup_of.items():
        first, again = results[original], results[dup]
        assert (first.replayed, again.replayed) == (False, True), first.key
        assert (again.key, again.seq, again.postings) == (first.key, first.seq, first.postings)
    dup_keys = [results[d].key for d in dup_of]
    counted = await conn.fetchval("SELECT count(*) FROM transfers WHERE key = ANY($1)", dup_keys)
    assert counted == len(dup_keys) == 10
    assert await conn.fetchval("SELECT count(*) FROM transfers WHERE key LIKE 't%'") == 600
    seqs = {r["key"]: r["seq"] for r in await conn.fetch("SELECT key, seq FROM transfers")}
    assert all(seqs[r.key] == r.seq for r in results)


@DEPTHS
async def test_a_reversal_sent_while_its_transfer_is_in_flight_is_decided_after_it(
    pool: asyncpg.Pool, settings: Settings, conn: asyncpg.Connection, depth: int
) -> None:
    store = Overlap(pool)
    # an odd batch size puts transfer and reversal of a pair in different batches now and then
    async with Ledger(store, tight(settings, depth, batch=49)) as ledger:
        await open_bank(ledger, customers=4)
        start = await balances(conn)
        commands: list[Transfer | Reversal] = []
        for i in range(150):
            commands += [pay(f"t{i}", f"c{i % 4}", f"c{(i + 1) % 4}", 1 + i % 5)]
            commands += [Reversal(f"r{i}", f"t{i}")]
        results = await outcomes(ledger, commands)
    assert store.most <= depth
    for transfer, reversal in zip(results[::2], results[1::2], strict=True):
        assert transfer.posted and reversal.posted and not reversal.replayed
        assert reversal.reverses == transfer.key
        assert reversal.seq is not None and transfer.seq is not None
        assert reversal.seq > transfer.seq
    rows = await conn.fetch("SELECT key, reverses FROM transfers WHERE key LIKE 'r%'")
    assert sorted((r["key"], r["reverses"]) for r in rows) == sorted(
        (f"r{i}", f"t{i}") for i in range(150)
    )
    assert await balances(conn) == start


@DEPTHS
async def test_a_transfer_to_an_account_opened_in_flight_waits_and_posts(
    pool: asyncpg.Pool, settings: Settings, conn: asyncpg.Connection, depth: int
) -> None:
    async with Ledger(Overlap(pool), tight(settings, depth, batch=49)) as ledger:
        await open_bank(ledger, customers=1, funds=0)
        commands: list[OpenAccount | Transfer] = []
        for i in range(150):
            commands.append(OpenAccount(Account(f"n{i}", EUR, NormalSide.CREDIT, 0)))
            commands.append(pay(f"in{i}", "cash", f"n{i}", 100 + i))
        results = await asyncio.gather(*(ledger.submit(c) for c in commands))
    opened, paid = results[::2], results[1::2]
    assert all(isinstance(r, AccountOutcome) and r.created for r in opened), opened
    assert all(isinstance(r, TransferOutcome) and r.posted for r in paid), paid
    found = await balances(conn)
    assert {f"n{i}": found.get(f"n{i}") for i in range(150)} == {
        f"n{i}": 100 + i for i in range(150)
    }
    assert await conn.fetchval("SELECT count(*) FROM transfers WHERE key LIKE 'in%'") == 150


async def test_two_pipelined_writers_on_shared_accounts_stay_whole(
    db: DatabaseSettings, pool: asyncpg.Pool, settings: Settings, conn: asyncpg.Connection
) -> None:
    other_pool = await create_pool(replace(db, pool_connections_max=6))
    one = Ledger(PostgresLedgerStore(pool), tight(settings))
    two = Ledger(PostgresLedgerStore(other_pool), tight(settings))
    try:
        await one.start()
        await two.start()
        ids = await open_bank(one, customers=6, funds=100_000)
        # each writer has cached c0 and c1; the second moves them, so the first is stale
        await one.transfer(pay("warm-1", "c0", "c1", 5))
        await two.transfer(pay("warm-2", "c1", "c0", 3))
        total = await conn.fetchval("SELECT sum(balance_minor) FROM accounts")
        rng = random.Random(20240601)
        sent: list[tuple[Ledger, Transfer]] = []
        for i in range(800):
            payer, payee = rng.sample(ids, 2)
            transfer = pay(f"h{i}", payer, payee, rng.randint(1, 500))
            sent.append((one if i % 2 else two, transfer))
            if i % 4 == 0:  # the same key through both writers at once
                sent.append((two if i % 2 else one, transfer))
        rng.shuffle(sent)
        results = await asyncio.gather(
            *(ledger.transfer(t) for ledger, t in sent), return_exceptions=True
        )
        replans = one.stats.replans + two.stats.replans
    finally:
        await asyncio.gather(one.stop(), two.stop())
        await other_pool.close()
    assert [r for r in results if not isinstance(r, TransferOutcome)] == []
    answers = [r for r in results if isinstance(r, TransferOutcome)]
    assert replans > 0
    rows = await conn.fetch("SELECT key, status, seq FROM transfers WHERE key LIKE 'h%'")
    stored = {r["key"]: (r["status"], r["seq"]) for r in rows}
    assert len(rows) == len(stored) == 800
    assert all(stored[a.key] == (a.status.value, a.seq) for a in answers)
    decided = [a.key for a in answers if not a.replayed]
    assert sorted(decided) == sorted(stored)  # each key decided once, whichever writer it was
    assert await conn.fetchval("SELECT sum(balance_minor) FROM accounts") == total
    report = await verify(db)
    assert report.ok, report.to_dict()


@DEPTHS
async def test_a_plan_refused_as_stale_with_a_batch_in_flight_is_replanned_and_posts(
    db: DatabaseSettings, pool: asyncpg.Pool, settings: Settings, depth: int
) -> None:
    store = Overlap(pool)
    async with Ledger(store, tight(settings, depth)) as ledger:
        await open_bank(ledger)  # the writer now caches c0 and c1 at 10_000
        async with Ledger(PostgresLedgerStore(pool), tight(settings)) as other:
            await other.transfer(pay("behind-its-back", "c0", "c1", 7))
        results = await outcomes(ledger, [pay(f"s{i}", "c0", "c1", 1) for i in range(120)])
        replans = ledger.stats.replans
        assert await ledger.balance("c0") == 10_000 - 7 - 120
        assert await ledger.balance("c1") == 10_000 + 7 + 120
    assert all(r.posted and not r.replayed for r in results)
    assert store.most == depth and store.refused >= 1 and replans >= 1
    assert store.refused_overlapping >= depth - 1  # depth 2: refused with the next batch sent
    report = await verify(db)
    assert report.ok, report.to_dict()


@DEPTHS
async def test_a_command_held_back_by_an_open_in_flight_keeps_its_place_in_line(
    pool: asyncpg.Pool, settings: Settings, depth: int
) -> None:
    async with Ledger(PostgresLedgerStore(pool), tight(settings, depth)) as ledger:
        await open_bank(ledger, customers=2, funds=100)
        commands: list[Command] = [pay(f"f{i}", "cash", "c1", 1) for i in range(49)]
        commands.append(OpenAccount(Account("x", EUR, NormalSide.CREDIT, 0)))  # ends batch 1
        commands += [pay("k1", "c0", "x", 100), pay("k2", "c0", "c1", 100), Reversal("r1", "k1")]
        commands += [pay(f"g{i}", "cash", "c1", 1) for i in range(47)]  # fills batch 2: no linger
        results = await asyncio.gather(
            *(ledger.submit(c) for c in commands), return_exceptions=True
        )
    # k1 must wait for x's batch; k2 and r1, sent after it, must not overtake it
    k1, k2, r1 = results[50:53]
    assert isinstance(k1, TransferOutcome) and k1.posted  # submitted first: it gets c0's 100
    assert isinstance(k2, TransferOutcome) and k2.rejection is Rejection.INSUFFICIENT_FUNDS
    assert isinstance(r1, TransferOutcome) and r1.posted and r1.reverses == "k1"
    assert (await ledger.balance("c0"), await ledger.balance("x")) == (100, 0)


class SlowCommit(PostgresLedgerStore):
    """The real store; the commit of the batch holding ``key`` reaches the server late."""

    def __init__(self, pool: asyncpg.Pool, key: str, delay_s: float) -> None:
        super().__init__(pool)
        self.marker = f'"key":"{key}"'
        self.delay_s = delay_s
        self.delayed = False

    async def commit(self, plan: BatchPlan, checkpoints: Sequence[Checkpoint] = ()) -> int:
        if not self.delayed and any(self.marker in e for e in plan.events):
            self.delayed = True
            await asyncio.sleep(self.delay_s)
        return await super().commit(plan, checkpoints)


async def test_a_batch_that_reaches_the_database_first_does_not_overtake_the_one_before(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    """N+1 gets to the log head before N, is refused as stale, and waits for N to decide again."""
    async with Ledger(SlowCommit(pool, "dep", 0.3), tight(settings)) as ledger:
        await ledger.open_account(Account("cash", EUR, NormalSide.DEBIT, None))
        await ledger.open_account(Account("c0", EUR, NormalSide.CREDIT, 0))
        await ledger.open_account(Account("c1", EUR, NormalSide.CREDIT, 0))
        deposit = asyncio.ensure_future(ledger.transfer(pay("dep", "cash", "c0", 100)))
        await asyncio.sleep(0.05)  # the deposit's batch is in flight
        withdrawal = await ledger.transfer(pay("wd", "c0", "c1", 100))
        first = await deposit
        assert ledger.stats.replans >= 1  # the withdrawal's batch really came first
    assert first.posted and withdrawal.posted, withdrawal.rejection
    assert first.seq is not None and withdrawal.seq is not None
    assert first.seq < withdrawal.seq


async def test_stopping_mid_commit_still_answers_every_caller(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    ledger = Ledger(SlowCommit(pool, "slow", 5.0), tight(settings))
    await ledger.start()
    try:
        await open_bank(ledger)
        slow = asyncio.ensure_future(ledger.transfer(pay("slow", "c0", "c1", 1)))
        await asyncio.sleep(0.05)
    finally:
        await ledger.stop(timeout_s=0.2)
    with pytest.raises(LedgerUnavailable, match="outcome is unknown"):
        await asyncio.wait_for(slow, 1.0)


async def test_checkpoints_ride_with_the_batches_that_commit_their_commands(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    store = PostgresLedgerStore(pool)
    async with Ledger(store, tight(settings)) as ledger:
        await open_bank(ledger, funds=1_000_000)
        submitted = [
            ledger.submit(pay(f"s{seq}", "c0", "c1", 1), Checkpoint("applier", seq % 3, seq))
            for seq in range(1, 301)
        ]
        results = await asyncio.gather(*submitted)
        assert all(isinstance(r, TransferOutcome) and r.posted for r in results)
        assert [await store.offset("applier", p) for p in range(3)] == [300, 298, 299]
        # a batch that writes nothing (a replay) has no commit to carry a checkpoint
        again = await ledger.submit(pay("s1", "c0", "c1", 1), Checkpoint("applier", 1, 9_999))
        assert isinstance(again, TransferOutcome) and again.replayed
        assert await store.offset("applier", 1) == 298
