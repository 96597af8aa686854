"""A short, self-checking tour of the ledger core on a fresh schema.

Opens accounts, funds them, drives concurrent transfers (a tenth of them through one hot
merchant account, some refused for insufficient funds), shows idempotent replay, a conflicting
key, a reversal (twice), a point-in-time balance, then runs ``verify`` and ``rebuild`` on what
it wrote. Exit status 0 only if both hold.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from dataclasses import replace
from typing import TextIO

from sidecar.config import Settings
from sidecar.db.connect import create_pool
from sidecar.db.ledger_store import PostgresLedgerStore
from sidecar.db.migrate import drop_schema, migrate
from sidecar.domain.ledger import Account, NormalSide, Reversal, Transfer
from sidecar.domain.money import Amount, Currency
from sidecar.errors import IdempotencyConflict
from sidecar.posting import Ledger
from sidecar.rebuild import rebuild
from sidecar.report import progress, table
from sidecar.verify import verify

EUR = Currency("EUR", 2)
CASH = "bank-cash-eur"
HOT = "merchant-hot"


def _money(minor: int | None) -> str:
    return "-" if minor is None else Amount(minor, EUR).format()


async def run_demo(
    settings: Settings, *, seconds: float = 5.0, customers: int = 200, out: TextIO | None = None
) -> int:
    out = out or sys.stdout
    db = settings.database

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    say(f"==> fresh ledger in schema {db.schema} at {db.url}")
    await drop_schema(db, db.schema)
    await migrate(db)
    pool = await create_pool(replace(db, pool_connections_max=max(4, db.pool_connections_max)))
    rng = random.Random(7)
    try:
        async with Ledger(PostgresLedgerStore(pool), settings.ledger) as ledger:
            ids = [f"customer-{i:04d}" for i in range(customers)]
            await ledger.open_account(Account(CASH, EUR, NormalSide.DEBIT, None))
            await ledger.open_account(Account(HOT, EUR, NormalSide.CREDIT, 0))
            await asyncio.gather(
                *(ledger.open_account(Account(i, EUR, NormalSide.CREDIT, 0)) for i in ids)
            )
            await asyncio.gather(
                *(
                    ledger.transfer(
                        Transfer.between(
                            f"fund-{i}",
                            debit=CASH,
                            credit=i,
                            amount_minor=rng.randint(10_000, 500_000),
                            currency="EUR",
                        )
                    )
                    for i in ids
                )
            )
            say(f"==> opened {customers + 2} accounts and funded {customers} customers")

            counts = {"posted": 0, "rejected": 0}
            deadline = time.monotonic() + seconds
            sequence = [0]

            async def ticker() -> None:
                while time.monotonic() < deadline:
                    await asyncio.sleep(1.0)
                    say(f"    {counts['posted']:,} posted, {counts['rejected']:,} rejected")

            async def client(worker: int) -> None:
                local = random.Random(worker)
                while time.monotonic() < deadline:
                    sequence[0] += 1
                    payer = local.choice(ids)
                    payee = HOT if local.random() < 0.1 else local.choice(ids)
                    if payee == payer:
                        continue
                    outcome = await ledger.transfer(
                        Transfer.between(
                            f"pay-{worker}-{sequence[0]}",
                            debit=payer,
                            credit=payee,
                            amount_minor=local.randint(100, 120_000),
                            currency="EUR",
                        )
                    )
                    counts[outcome.status.value] += 1

            say(f"==> {seconds:.0f} s of traffic from 64 concurrent clients")
            await asyncio.gather(ticker(), *(client(w) for w in range(64)))
            stats = ledger.stats
            say(
                table(
                    ["posted", "rejected", "batches", "mean batch", "largest batch", "replans"],
                    [
                        [
                            counts["posted"],
                            counts["rejected"],
                            stats.batches,
                            f"{stats.commands / max(stats.batches, 1):.1f}",
                            stats.largest_batch,
                            stats.replans,
                        ]
                    ],
                )
            )

            say("\n==> idempotency, conflicts and corrections")
            payer, payee = ids[0], ids[1]
            first = await ledger.transfer(
                Transfer.between(
                    "demo-1", debit=payer, credit=payee, amount_minor=1_00, currency="EUR"
                )
            )
            again = await ledger.transfer(
                Transfer.between(
                    "demo-1", debit=payer, credit=payee, amount_minor=1_00, currency="EUR"
                )
            )
            try:
                await ledger.transfer(
                    Transfer.between(
                        "demo-1", debit=payer, credit=payee, amount_minor=2_00, currency="EUR"
                    )
                )
                conflict = "accepted (wrong!)"
            except IdempotencyConflict as exc:
                conflict = f"refused: {exc.code}"
            reversal = await ledger.reverse(Reversal("demo-1-undo", "demo-1"))
            twice = await ledger.reverse(Reversal("demo-1-undo-again", "demo-1"))
            at_first = await ledger.balance(payee, first.seq)
            say(
                table(
                    ["action", "result", "seq"],
                    [
                        ["transfer demo-1 (1.00 EUR)", first.status.value, first.seq],
                        ["same key, same payload", f"replayed={again.replayed}", again.seq],
                        ["same key, 2.00 EUR", conflict, "-"],
                        ["reverse demo-1", reversal.status.value, reversal.seq],
                        ["reverse demo-1 again", f"returns {twice.key}", twice.seq],
                        [f"{payee} balance at seq {first.seq}", _money(at_first), first.seq],
                        [f"{payee} balance now", _money(await ledger.balance(payee)), "-"],
                    ],
                )
            )
            balances = sorted(
                [(i, await ledger.balance(i) or 0) for i in [HOT, *ids[:200]]],
                key=lambda x: -x[1],
            )[:5]
            say("\n==> largest balances")
            say(table(["account", "balance EUR"], [[a, _money(b)] for a, b in balances]))
    finally:
        await pool.close()

    say("\n==> ledger verify")
    checked = await verify(db, progress("    events checked", out))
    say(table(["check", "ok", "detail"], [[c.name, c.ok, c.detail] for c in checked.checks]))
    say("\n==> ledger rebuild (replay the event log into a fresh schema)")
    rebuilt = await rebuild(db, progress=progress("    events replayed", out))
    say(
        table(
            ["events", "accounts", "events/s", "same balances", "same chain head"],
            [
                [
                    rebuilt.events,
                    rebuilt.accounts,
                    f"{rebuilt.events_per_s:,.0f}",
                    not rebuilt.balance_differences,
                    rebuilt.live_head == rebuilt.rebuilt_head,
                ]
            ],
        )
    )
    ok = checked.ok and rebuilt.identical
    say(f"\n{'OK' if ok else 'FAILED'}: the demo ledger is left in schema {db.schema}")
    return 0 if ok else 1
