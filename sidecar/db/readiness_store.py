"""What the readiness report measures, read from PostgreSQL for one scope (everyone, or a
cohort's accounts) over a window. The verdict itself is ``sidecar.domain.readiness``.

Guarantees (tests/integration/test_readiness.py): every figure is read from the tables that
hold the evidence (comparisons and their triage, the stream, capture counts, SLO minutes,
reconciliation sweeps); nothing is estimated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from sidecar.db.connect import pooled

#: a scope of accounts: None is everyone
Accounts = Sequence[str] | None

UNRESOLVED_MONETARY = """
SELECT c.seq FROM comparisons c LEFT JOIN divergence_triage t ON t.seq = c.seq
WHERE c.monetary AND c.compared_at >= $1
  AND (t.state IS NULL OR t.state = 'acknowledged')
  AND ($2::text[] IS NULL OR c.accounts && $2::text[] OR c.account_id = ANY($2::text[]))
ORDER BY c.seq LIMIT 1000
"""
CLEAN = """
SELECT c.route, c.operation, a.currency, count(*) AS n
FROM comparisons c JOIN accounts a ON a.id = c.account_id
WHERE c.outcome = 'match' AND c.compared_at >= $1 AND c.operation NOT LIKE 'bootstrap%'
  AND ($2::text[] IS NULL OR c.account_id = ANY($2::text[]))
GROUP BY 1, 2, 3
"""
# the currencies the scope's accounts hold: coverage asks for each route in each of them
CURRENCIES = """
SELECT DISTINCT currency FROM accounts
WHERE id NOT LIKE 'MIGRATION-%' AND ($1::text[] IS NULL OR id = ANY($1::text[]))
"""
DROPPED = """
SELECT coalesce(sum(v::bigint), 0) AS n
FROM capture_counts, jsonb_each_text(dropped) AS d(k, v) WHERE updated_at >= $1
"""
UNCOMPARED = """
SELECT count(*) FROM mirror_events o
WHERE o.kind = 'outcome' AND o.recorded_at >= $1
  AND o.seq <= coalesce((SELECT min(seq) FROM mirror_offsets WHERE consumer = 'compare'), 0)
  AND NOT EXISTS (SELECT 1 FROM comparisons c WHERE c.request_id = o.request_id)
"""
# the shadow_consistency SLO's rule (migration 0007), for the scope's comparisons
CONSISTENCY = """
SELECT count(*) FILTER (WHERE outcome <> 'ledger_error' AND NOT monetary) AS good, count(*) AS total
FROM comparisons
WHERE compared_at >= $1 AND outcome IN ('match', 'mismatch', 'ledger_error')
  AND ($2::text[] IS NULL OR account_id = ANY($2::text[]))
"""
LAG_P99 = """
SELECT percentile_cont(0.99) WITHIN GROUP (
           ORDER BY extract(epoch FROM c.compared_at - o.recorded_at)) AS p99
FROM comparisons c JOIN mirror_events o ON o.seq = c.seq
WHERE c.compared_at >= $1 AND c.operation NOT LIKE 'bootstrap%'
  AND ($2::text[] IS NULL OR c.account_id = ANY($2::text[]))
"""
IN_DOUBT = """
SELECT count(*) FROM mirror_events i
WHERE i.kind = 'intent' AND i.recorded_at < clock_timestamp() - make_interval(secs => $1)
  AND NOT EXISTS (SELECT 1 FROM mirror_events o
                  WHERE o.request_id = i.request_id AND o.kind = 'outcome')
"""
FIRST_COMPARISON = """
SELECT min(compared_at) FROM comparisons
WHERE operation NOT LIKE 'bootstrap%' AND ($1::text[] IS NULL OR account_id = ANY($1::text[]))
"""
LAST_SWEEP = """
SELECT extract(epoch FROM clock_timestamp() - finished_at) / 3600 AS age_hours,
       accounts, drifted, unreadable
FROM reconcile_runs ORDER BY id DESC LIMIT 1
"""
ACCOUNT_IDS = "SELECT id FROM accounts WHERE id NOT LIKE 'MIGRATION-%'"


@dataclass(frozen=True)
class Measured:
    unresolved_monetary: list[int]
    clean: dict[tuple[str, str, str], int]
    currencies: list[str]
    capture_dropped: int
    uncompared: int
    consistency: tuple[int, int]
    lag_p99_s: float | None
    in_doubt: int
    first_comparison: datetime | None
    sweep: Any  # the row, or None
    now: datetime


async def measure(
    pool: asyncpg.Pool, since: datetime, accounts: Accounts, in_doubt_after_s: float
) -> Measured:
    scope = list(accounts) if accounts is not None else None
    async with pooled(pool) as conn:
        monetary = [r["seq"] for r in await conn.fetch(UNRESOLVED_MONETARY, since, scope)]
        clean = {
            (r["route"], r["operation"], r["currency"]): r["n"]
            for r in await conn.fetch(CLEAN, since, scope)
        }
        currencies = [r["currency"] for r in await conn.fetch(CURRENCIES, scope)]
        dropped = await conn.fetchval(DROPPED, since)
        uncompared = await conn.fetchval(UNCOMPARED, since)
        consistency = await conn.fetchrow(CONSISTENCY, since, scope)
        lag = await conn.fetchval(LAG_P99, since, scope)
        in_doubt = await conn.fetchval(IN_DOUBT, in_doubt_after_s)
        first = await conn.fetchval(FIRST_COMPARISON, scope)
        sweep = await conn.fetchrow(LAST_SWEEP)
        now = await conn.fetchval("SELECT clock_timestamp()")
    return Measured(
        monetary,
        clean,
        sorted(currencies),
        int(dropped),
        int(uncompared),
        (int(consistency["good"]), int(consistency["total"])),
        float(lag) if lag is not None else None,
        int(in_doubt),
        first,
        sweep,
        now,
    )


async def account_ids(pool: asyncpg.Pool) -> list[str]:
    """Every account the ledger holds (a percentage cohort's members are found among them)."""
    async with pooled(pool) as conn:
        return [r["id"] for r in await conn.fetch(ACCOUNT_IDS)]


__all__ = ["Measured", "account_ids", "measure"]
