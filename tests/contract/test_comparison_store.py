"""The comparisons store (PostgreSQL; the applier's only store of verdicts): a group's
comparisons and offsets commit together or not at all, a request is compared once, and the
record is append-only."""

from __future__ import annotations

import asyncpg
import pytest
from sidecar.db.comparison_store import BalanceReader, PostgresComparisonStore
from sidecar.db.mirror_store import fetch_offset
from sidecar.domain.comparison import Comparison, Outcome
from sidecar.domain.mirror import Checkpoint
from sidecar.domain.shadow import ComparisonRecord
from sidecar.errors import LedgerUnavailable

pytestmark = pytest.mark.postgres


def verdict(request_id: str, seq: int, outcome: Outcome = Outcome.MATCH) -> ComparisonRecord:
    return ComparisonRecord(
        request_id,
        seq,
        seq - 1,
        0,
        "payment",
        "transfer",
        Comparison(outcome),
        "A",
        accounts=("A", "B"),
    )


def finishing(records: list[ComparisonRecord]):  # type: ignore[no-untyped-def]
    async def finish(first_seq: int | None, reader: BalanceReader) -> list[ComparisonRecord]:
        return records

    return finish


async def test_a_group_stores_its_comparisons_and_offsets_together(pool: asyncpg.Pool) -> None:
    store = PostgresComparisonStore(pool)
    at = [Checkpoint("compare", 0, 7), Checkpoint("compare", 1, 7)]
    await store.apply_group(None, [], finishing([verdict("r1", 4), verdict("r2", 7)]), at)
    assert set(await store.by_request()) == {"r1", "r2"}
    async with pool.acquire() as conn:
        assert await fetch_offset(conn, "compare", 1) == 7


async def test_a_failing_group_stores_nothing_not_even_its_offsets(pool: asyncpg.Pool) -> None:
    store = PostgresComparisonStore(pool)

    async def broken(first_seq: int | None, reader: BalanceReader) -> list[ComparisonRecord]:
        raise LedgerUnavailable("the connection broke (injected)")

    with pytest.raises(LedgerUnavailable):
        await store.apply_group(None, [], broken, [Checkpoint("compare", 0, 9)])
    assert await store.by_request() == {}
    async with pool.acquire() as conn:
        assert await fetch_offset(conn, "compare", 0) == 0


async def test_a_request_compared_again_keeps_its_first_verdict(pool: asyncpg.Pool) -> None:
    store = PostgresComparisonStore(pool)
    at = [Checkpoint("compare", 0, 5)]
    await store.apply_group(None, [], finishing([verdict("r1", 5, Outcome.MATCH)]), at)
    await store.apply_group(None, [], finishing([verdict("r1", 5, Outcome.MISMATCH)]), at)
    assert (await store.by_request())["r1"]["outcome"] == "match"


async def test_divergences_are_listed_under_every_account_they_touched(pool: asyncpg.Pool) -> None:
    store = PostgresComparisonStore(pool)
    await store.apply_group(
        None, [], finishing([verdict("r1", 3, Outcome.MISMATCH)]), [Checkpoint("compare", 0, 3)]
    )
    assert [d["request_id"] for d in await store.divergences("B")] == ["r1"]
    assert await store.divergences("C") == []


async def test_the_comparisons_are_append_only(pool: asyncpg.Pool) -> None:
    store = PostgresComparisonStore(pool)
    await store.apply_group(None, [], finishing([verdict("r1", 3)]), [Checkpoint("compare", 0, 3)])
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.PostgresError):
            await conn.execute("UPDATE comparisons SET outcome = 'mismatch'")
        with pytest.raises(asyncpg.PostgresError):
            await conn.execute("DELETE FROM comparisons")
