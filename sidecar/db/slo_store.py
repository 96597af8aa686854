"""Durable SLO counts: ``slo_minutes`` (migrations/0007_slo_minutes.sql)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import asyncpg

from sidecar.db.connect import pooled

ADD = """
INSERT INTO slo_minutes AS m (slo, minute, good, total)
SELECT s, date_trunc('minute', clock_timestamp()), g, t
FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u (s, g, t)
WHERE t > 0
ON CONFLICT (slo, minute) DO UPDATE
    SET good = m.good + EXCLUDED.good, total = m.total + EXCLUDED.total
"""
SUMS = """
SELECT slo, sum(good)::bigint AS good, sum(total)::bigint AS total
FROM slo_minutes WHERE minute >= date_trunc('minute', $1::timestamptz) GROUP BY slo
"""
THRESHOLDS = """
INSERT INTO slo_thresholds (slo, seconds) SELECT * FROM unnest($1::text[], $2::float8[])
ON CONFLICT (slo) DO UPDATE SET seconds = EXCLUDED.seconds
"""


async def add_counts(conn: asyncpg.Connection, counts: Mapping[str, tuple[int, int]]) -> None:
    """Add (good, total) events per SLO to the current minute."""
    names = list(counts)
    await conn.execute(ADD, names, [counts[n][0] for n in names], [counts[n][1] for n in names])


async def slo_sums(pool: asyncpg.Pool, since: datetime) -> dict[str, tuple[int, int]]:
    """(good, total) per SLO from the minute of ``since`` on."""
    async with pooled(pool) as conn:
        rows = await conn.fetch(SUMS, since)
    return {r["slo"]: (r["good"], r["total"]) for r in rows}


async def save_thresholds(pool: asyncpg.Pool, thresholds: Mapping[str, float]) -> None:
    async with pooled(pool) as conn:
        await conn.execute(THRESHOLDS, list(thresholds), list(thresholds.values()))
