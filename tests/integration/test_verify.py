"""Tampering as a superuser, with the append-only triggers switched off, is found by verify
at the sequence number where it happened."""

from __future__ import annotations

import asyncpg
import pytest
from sidecar.config import DatabaseSettings
from sidecar.posting import Ledger
from sidecar.verify import verify

from tests.ledger_builders import open_bank, pay


async def tamper(conn: asyncpg.Connection, *statements: str) -> None:
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        for statement in statements:
            await conn.execute(statement)


@pytest.fixture
async def seqs(ledger: Ledger) -> list[int]:
    """Seven events of set-up, then five transfers at seqs 8..12."""
    await open_bank(ledger)
    return [(await ledger.transfer(pay(f"t{i}", "c0", "c1", 10 + i))).seq for i in range(5)]


async def test_an_untouched_ledger_verifies(db: DatabaseSettings, seqs: list[int]) -> None:
    report = await verify(db)
    assert report.ok, report.to_dict()
    assert {c.name for c in report.checks} == {
        "hash_chain",
        "audit_chain",
        "rows_match_log",
        "log_replays",
        "trial_balance",
        "cached_balances",
    }
    assert report.head_seq == seqs[-1] == 12


TAMPERING = [
    (
        "posting amount changed",
        ["UPDATE postings SET amount_minor = amount_minor + 1 WHERE seq = 9 AND leg = 0"],
        "rows_match_log",
        9,
    ),
    ("posting deleted", ["DELETE FROM postings WHERE seq = 9 AND leg = 1"], "rows_match_log", 9),
    (
        "posting inserted",
        ["INSERT INTO postings VALUES ('t1', 2, 'c2', 'EUR', 5, 10005, 9)"],
        "rows_match_log",
        9,
    ),
    (
        "balance-after rewritten",
        ["UPDATE postings SET balance_after_minor = 1 WHERE seq = 10 AND leg = 1"],
        "rows_match_log",
        10,
    ),
    (
        "transfer legs changed",
        ["UPDATE transfers SET legs = 3 WHERE seq = 11"],
        "rows_match_log",
        11,
    ),
    (
        "transfer status flipped",
        [
            "UPDATE transfers SET status = 'rejected', "
            "rejection = 'insufficient_funds', legs = 0 WHERE seq = 10"
        ],
        "rows_match_log",
        10,
    ),
    (
        "account opened out of thin air",
        ["INSERT INTO accounts VALUES ('ghost', 'EUR', 2, 'credit', 'open', 0, 0, 11)"],
        "rows_match_log",
        11,
    ),
    (
        "event content changed",
        [
            "UPDATE events SET content = replace(content, '\"amount_minor\":11', "
            "'\"amount_minor\":12') WHERE seq = 9"
        ],
        "hash_chain",
        9,
    ),
    ("event deleted", ["DELETE FROM events WHERE seq = 9"], "hash_chain", 9),
    (
        "event appended",
        [
            "INSERT INTO events (seq, batch, type, content, hash) "
            "SELECT 13, 99, type, content, hash FROM events WHERE seq = 12"
        ],
        "hash_chain",
        13,
    ),
    (
        "rows beyond the head",
        [
            "INSERT INTO transfers VALUES ('late', '\\x00', 'rejected', "
            "'insufficient_funds', NULL, '{}', 0, 40)"
        ],
        "rows_match_log",
        40,
    ),
]


@pytest.mark.parametrize(
    ("what", "statements", "check", "seq"), TAMPERING, ids=[t[0] for t in TAMPERING]
)
async def test_tampering_is_reported_at_the_right_seq(
    db: DatabaseSettings,
    conn: asyncpg.Connection,
    seqs: list[int],
    what: str,
    statements: list[str],
    check: str,
    seq: int,
) -> None:
    await tamper(conn, *statements)
    report = await verify(db)
    assert not report.ok
    failed = report.check(check)
    assert not failed.ok, report.to_dict()
    assert f"seq {seq}" in failed.detail, failed.detail


async def test_a_cached_balance_that_disagrees_with_its_postings_is_reported(
    db: DatabaseSettings, conn: asyncpg.Connection, seqs: list[int]
) -> None:
    await tamper(conn, "UPDATE accounts SET balance_minor = balance_minor + 100 WHERE id = 'c1'")
    report = await verify(db)
    assert not report.check("cached_balances").ok
    assert "c1" in report.check("cached_balances").detail
    assert report.check("hash_chain").ok


async def test_a_trial_balance_off_zero_is_reported(
    db: DatabaseSettings, conn: asyncpg.Connection, seqs: list[int]
) -> None:
    await tamper(
        conn, "UPDATE postings SET amount_minor = amount_minor + 7 WHERE seq = 8 AND leg = 0"
    )
    report = await verify(db)
    assert not report.check("trial_balance").ok
    assert "EUR 7" in report.check("trial_balance").detail
