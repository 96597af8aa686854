"""The bank checker: concurrent writers move money among accounts while concurrent readers
check that the total never changes. Four posting writers in two ledgers (as two processes
would) share every account, so stale plans and replans happen for real."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import asyncpg
from sidecar.config import DatabaseSettings, Settings
from sidecar.db.ledger_store import PostgresLedgerStore
from sidecar.posting import Ledger
from sidecar.verify import verify

from tests.ledger_builders import open_bank, pay

ACCOUNTS = 8
FUNDS = 100_000
TOTAL = ACCOUNTS * FUNDS
TRANSFERS_PER_CLIENT = 150


async def test_concurrent_writers_and_readers_never_see_money_appear_or_vanish(
    db: DatabaseSettings, pool: asyncpg.Pool, settings: Settings
) -> None:
    ledger_settings = replace(settings.ledger, partitions=2, stale_retries_max=200)
    ledgers = [Ledger(PostgresLedgerStore(pool), ledger_settings) for _ in range(2)]
    for one in ledgers:
        await one.start()
    ids = await open_bank(ledgers[0], customers=ACCOUNTS, funds=FUNDS)
    writing = True
    reads = {"statement": 0, "snapshot": 0}

    async def client(n: int) -> None:
        rng = random.Random(n)
        mine = ledgers[n % 2]
        for i in range(TRANSFERS_PER_CLIENT):
            payer, payee = rng.sample(ids, 2)
            await mine.transfer(pay(f"w{n}-{i}", payer, payee, rng.randint(1, 40_000)))

    async def reader(conn: asyncpg.Connection) -> None:
        while writing:
            total = await conn.fetchval(
                "SELECT sum(balance_minor) FROM accounts WHERE id = ANY($1)", ids
            )
            assert total == TOTAL
            reads["statement"] += 1
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                one_by_one = 0
                for account_id in ids:
                    one_by_one += await conn.fetchval(
                        "SELECT balance_minor FROM accounts WHERE id = $1", account_id
                    )
                halves = await conn.fetchval(
                    "SELECT count(*) FROM (SELECT seq FROM postings GROUP BY seq "
                    "HAVING sum(amount_minor) <> 0) AS unbalanced"
                )
            assert one_by_one == TOTAL and halves == 0
            reads["snapshot"] += 1

    readers = [
        await asyncpg.connect(db.url.reveal(), server_settings={"search_path": db.schema})
        for _ in range(2)
    ]
    try:
        reading = [asyncio.create_task(reader(c)) for c in readers]
        await asyncio.gather(*(client(n) for n in range(16)))
        writing = False
        await asyncio.gather(*reading)
    finally:
        for conn in readers:
            await conn.close()
        for one in ledgers:
            await one.stop()
    assert reads["statement"] > 0 and reads["snapshot"] > 0
    stats = [w.stats for one in ledgers for w in one.writers]
    assert sum(s.failed_batches for s in stats) == 0
    # the writers really did race: some plans were refused as stale and made again
    assert sum(s.replans for s in stats) > 0
    assert sum(s.commands for s in stats) >= 16 * TRANSFERS_PER_CLIENT
    report = await verify(db)
    assert report.ok, report.to_dict()
