"""Rebuilding from the event log reproduces the ledger exactly, every time."""

from __future__ import annotations

import asyncpg
from sidecar.config import DatabaseSettings
from sidecar.domain.ledger import Reversal
from sidecar.posting import Ledger
from sidecar.rebuild import rebuild

from tests.ledger_builders import open_bank, pay


async def test_rebuild_gives_identical_balances_and_chain_head_twice_in_a_row(
    db: DatabaseSettings, ledger: Ledger
) -> None:
    ids = await open_bank(ledger, customers=6)
    for i in range(60):
        await ledger.transfer(pay(f"t{i}", ids[i % 6], ids[(i * 7 + 1) % 6], 50 + i * 31))
    await ledger.reverse(Reversal("undo", "t3"))
    first = await rebuild(db)
    second = await rebuild(db)
    for report in (first, second):
        assert report.identical, report.to_dict()
        assert report.events == report.live_head[0] > 70
        assert report.rebuilt_head == report.live_head
    assert first.rebuilt_head == second.rebuilt_head


async def test_rebuild_keeps_the_schema_only_when_asked(
    db: DatabaseSettings, ledger: Ledger, conn: asyncpg.Connection
) -> None:
    await open_bank(ledger)
    await rebuild(db, f"{db.schema}_kept", keep=True)
    await rebuild(db, f"{db.schema}_gone")
    schemas = {r[0] for r in await conn.fetch("SELECT nspname FROM pg_namespace")}
    assert f"{db.schema}_kept" in schemas and f"{db.schema}_gone" not in schemas
    await conn.execute(f'DROP SCHEMA "{db.schema}_kept" CASCADE')


async def test_a_log_that_does_not_replay_fails_the_rebuild_at_its_seq(
    db: DatabaseSettings, ledger: Ledger, conn: asyncpg.Connection
) -> None:
    await open_bank(ledger)
    seq = (await ledger.transfer(pay("t1", "c0", "c1", 100))).seq
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            "UPDATE events SET content = replace(content, '\"balance_after_minor\":9900', "
            "'\"balance_after_minor\":9901') WHERE seq = $1",
            seq,
        )
    report = await rebuild(db)
    assert not report.identical
    assert report.fold_error is not None and f"event {seq}" in report.fold_error
