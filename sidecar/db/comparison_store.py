"""PostgreSQL store of the shadow comparisons (migrations/0004_comparisons.sql).

``record`` is one statement, ``SELECT record_comparisons(...)``: a group of comparisons and the
comparing consumer's offsets commit together, or not at all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from sidecar.db.connect import DRIVER_ERRORS, pooled, translate
from sidecar.db.ledger_store import balance_at, post_batch
from sidecar.db.mirror_store import fetch_offset
from sidecar.domain.ledger import BatchPlan
from sidecar.domain.mirror import Checkpoint
from sidecar.domain.shadow import ComparisonRecord

RECORD = "SELECT record_comparisons($1::jsonb, $2::text[], $3::integer[], $4::bigint[])"
DIVERGENCES = """
SELECT request_id, seq, intent_seq, partition, route, operation, outcome, kinds, monetary,
       account_id, accounts, differences::text AS differences, at_risk::text AS at_risk,
       ledger_seq, trace_id, detail, compared_at
FROM comparisons
WHERE outcome = 'mismatch' AND ($1::text IS NULL OR account_id = $1 OR accounts @> ARRAY[$1])
  AND seq > $2
ORDER BY seq LIMIT $3
"""
ALL_AFTER = """
SELECT request_id, seq, intent_seq, partition, route, operation, outcome, kinds, monetary,
       account_id, accounts, differences::text AS differences, at_risk::text AS at_risk,
       ledger_seq, trace_id, detail, compared_at
FROM comparisons WHERE seq > $1 ORDER BY seq
"""
COUNTS = """
SELECT outcome, kinds, monetary, count(*) AS n FROM comparisons GROUP BY 1, 2, 3
"""
BOOTSTRAP_PLAN = """
SELECT request_id FROM comparisons
WHERE operation = 'bootstrap_plan' AND outcome = 'match' ORDER BY seq DESC LIMIT 1
"""
BOOTSTRAP_SNAPSHOT = """
SELECT EXISTS (SELECT 1 FROM comparisons
               WHERE operation = 'bootstrap_snapshot' AND outcome = 'match')
"""
VERDICTS = """
SELECT request_id, outcome, detail FROM comparisons WHERE request_id = ANY($1::text[])
"""


@dataclass(frozen=True)
class BootstrapState:
    plan_request_id: str | None
    snapshot: bool


class BalanceReader:
    """Balances read inside the group's transaction (its own writes included)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def balance(self, account_id: str, at_seq: int) -> int | None:
        return await balance_at(self._conn, account_id, at_seq)


Finish = Callable[[int | None, BalanceReader], Awaitable[list[ComparisonRecord]]]


@dataclass
class ComparisonCounts:
    total: int = 0
    by_outcome: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    monetary: int = 0


def divergence_from_row(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["differences"] = orjson.loads(row["differences"])
    out["at_risk"] = orjson.loads(row["at_risk"])
    out["kinds"] = list(row["kinds"])
    out["accounts"] = list(row["accounts"])
    out["compared_at"] = row["compared_at"].isoformat()
    return out


class PostgresComparisonStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def apply_group(
        self,
        plan: BatchPlan | None,
        ledger_checkpoints: Sequence[Checkpoint],
        finish: Finish,
        compare_checkpoints: Sequence[Checkpoint],
    ) -> list[ComparisonRecord]:
        """One transaction: ``plan`` written with ``ledger_checkpoints`` (post_batch), then
        ``finish(first_seq, reader)`` compares (reading balances in this transaction), then its
        records stored with ``compare_checkpoints``. Raises, having written nothing, if any
        step fails."""
        async with pooled(self._pool) as conn:
            try:
                async with conn.transaction():
                    first_seq: int | None = None
                    if plan is not None:
                        ids = list(plan.balances)
                        first_seq = await post_batch(
                            conn,
                            list(plan.events),
                            ids,
                            [plan.balances[i].before_minor for i in ids],
                            [plan.balances[i].after_minor for i in ids],
                            ledger_checkpoints,
                        )
                    records = await finish(first_seq, BalanceReader(conn))
                    await conn.fetchval(
                        RECORD,
                        orjson.dumps([r.document() for r in records]).decode(),
                        [c.consumer for c in compare_checkpoints],
                        [c.partition for c in compare_checkpoints],
                        [c.seq for c in compare_checkpoints],
                    )
            except DRIVER_ERRORS as exc:
                raise translate(exc) from exc
        return records

    async def divergences(
        self, account_id: str | None = None, after_seq: int = 0, limit: int = 1000
    ) -> list[dict[str, Any]]:
        async with pooled(self._pool) as conn:
            rows = await conn.fetch(DIVERGENCES, account_id, after_seq, limit)
        return [divergence_from_row(r) for r in rows]

    async def bootstrap_state(self) -> BootstrapState:
        """The last bootstrap plan recorded, and whether a snapshot was applied."""
        async with pooled(self._pool) as conn:
            plan = await conn.fetchval(BOOTSTRAP_PLAN)
            snapshot = await conn.fetchval(BOOTSTRAP_SNAPSHOT)
        return BootstrapState(plan, bool(snapshot))

    async def offset(self, consumer: str, partition: int) -> int:
        """A consumer's committed offset, in this store's schema (0 if none)."""
        async with pooled(self._pool) as conn:
            return await fetch_offset(conn, consumer, partition)

    async def by_request(self, after_seq: int = 0) -> dict[str, dict[str, Any]]:
        """Every comparison after ``after_seq``, by request id (what a replay holds up)."""
        async with pooled(self._pool) as conn:
            rows = await conn.fetch(ALL_AFTER, after_seq)
        return {r["request_id"]: divergence_from_row(r) for r in rows}

    async def verdicts(self, request_ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """Outcome and detail of each of these requests' comparisons, if recorded yet."""
        async with pooled(self._pool) as conn:
            rows = await conn.fetch(VERDICTS, list(request_ids))
        return {r["request_id"]: (r["outcome"], r["detail"]) for r in rows}

    async def counts(self) -> ComparisonCounts:
        counts = ComparisonCounts()
        async with pooled(self._pool) as conn:
            for row in await conn.fetch(COUNTS):
                n = row["n"]
                counts.total += n
                counts.by_outcome[row["outcome"]] += n
                for kind in row["kinds"]:
                    counts.by_kind[kind] += n
                if row["monetary"]:
                    counts.monetary += n
        return counts
