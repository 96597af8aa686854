"""PostgreSQL adapter of the MirrorLog port (migrations/0002_mirror.sql).

An append is one statement, ``SELECT append_mirror(...)``, in autocommit: one round trip and
one commit for a whole group of records, however many requests they came from.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import asyncpg
import orjson

from sidecar.db.connect import pooled
from sidecar.db.slo_store import add_counts
from sidecar.domain.mirror import MirrorEvent, MirrorRecord, RecordKind, content_json

APPEND = (
    "SELECT append_mirror($1::integer[], $2::text[], $3::text[], $4::text[], $5::jsonb[], "
    "$6::text[])"
)
READ = """
SELECT seq, partition, kind, request_id, route, content::text AS content, trace_id,
       extract(epoch FROM recorded_at)::float8 AS recorded_at
FROM mirror_events WHERE seq > $1 ORDER BY seq LIMIT $2
"""
READ_PARTITION = """
SELECT seq, partition, kind, request_id, route, content::text AS content, trace_id,
       extract(epoch FROM recorded_at)::float8 AS recorded_at
FROM mirror_events WHERE partition = $3 AND seq > $1 ORDER BY seq LIMIT $2
"""
HEAD = "SELECT seq FROM mirror_head"
IN_DOUBT = """
SELECT i.seq, i.partition, i.kind, i.request_id, i.route, i.content::text AS content, i.trace_id,
       extract(epoch FROM i.recorded_at)::float8 AS recorded_at
FROM mirror_events i
WHERE i.kind = 'intent' AND i.seq <= $1 AND i.seq > $2
  AND NOT EXISTS (SELECT 1 FROM mirror_events o
                  WHERE o.request_id = i.request_id AND o.kind = 'outcome')
ORDER BY i.seq
"""
FIND = """
SELECT seq, partition, kind, request_id, route, content::text AS content, trace_id,
       extract(epoch FROM recorded_at)::float8 AS recorded_at
FROM mirror_events WHERE kind = $2 AND request_id = ANY($1::text[])
"""
OFFSET = "SELECT seq FROM mirror_offsets WHERE consumer = $1 AND partition = $2"
COMMIT_OFFSET = """
INSERT INTO mirror_offsets (consumer, partition, seq) VALUES ($1, $2, $3)
ON CONFLICT (consumer, partition) DO UPDATE SET seq = EXCLUDED.seq
"""


SAVE_COUNTS = """
INSERT INTO capture_counts (instance, started_at, served, mapped, recorded, committed, late,
                            dropped)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)
ON CONFLICT (instance) DO UPDATE SET
    updated_at = clock_timestamp(), served = EXCLUDED.served, mapped = EXCLUDED.mapped,
    recorded = EXCLUDED.recorded, committed = EXCLUDED.committed, late = EXCLUDED.late,
    dropped = EXCLUDED.dropped
"""


async def save_capture_counts(
    pool: asyncpg.Pool,
    instance: str,
    started_at: Any,
    counts: dict[str, Any],
    slo_deltas: Mapping[str, tuple[int, int]] | None = None,
) -> None:
    """One instance's running totals (``capture_counts``, migration 0005) and, in the same
    transaction, the SLO events since the last save (``slo_minutes``, migration 0007)."""
    async with pooled(pool) as conn, conn.transaction():
        if slo_deltas:
            await add_counts(conn, slo_deltas)
        await conn.execute(
            SAVE_COUNTS,
            instance,
            started_at,
            counts["served"],
            counts["mapped"],
            counts["recorded"],
            counts["committed"],
            counts["late"],
            orjson.dumps(counts["dropped"]).decode(),
        )


def event_from_row(row: Any) -> MirrorEvent:
    return MirrorEvent(
        row["seq"],
        MirrorRecord(
            partition=row["partition"],
            kind=RecordKind(row["kind"]),
            request_id=row["request_id"],
            content=orjson.loads(row["content"]),
            route=row["route"],
            trace_id=row["trace_id"],
        ),
        row["recorded_at"],
    )


async def fetch_offset(conn: asyncpg.Connection, consumer: str, partition: int) -> int:
    """A consumer's committed offset on a partition (0 if none); both stores read it here."""
    seq: int | None = await conn.fetchval(OFFSET, consumer, partition)
    return seq or 0


class PostgresMirrorLog:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def append(self, records: Sequence[MirrorRecord]) -> list[int]:
        if not records:
            return []
        contents = [content_json(r) for r in records]
        async with pooled(self._pool) as conn:
            seqs: list[int] = await conn.fetchval(
                APPEND,
                [r.partition for r in records],
                [r.kind.value for r in records],
                [r.request_id for r in records],
                [r.route for r in records],
                contents,
                [r.trace_id for r in records],
            )
        return list(seqs)

    async def read(
        self, after_seq: int = 0, limit: int = 1000, partition: int | None = None
    ) -> list[MirrorEvent]:
        async with pooled(self._pool) as conn:
            if partition is None:
                rows = await conn.fetch(READ, after_seq, limit)
            else:
                rows = await conn.fetch(READ_PARTITION, after_seq, limit, partition)
        return [event_from_row(r) for r in rows]

    async def head(self) -> int:
        async with pooled(self._pool) as conn:
            seq: int = await conn.fetchval(HEAD)
        return seq

    async def in_doubt(self, up_to_seq: int, after_seq: int = 0) -> list[MirrorEvent]:
        async with pooled(self._pool) as conn:
            rows = await conn.fetch(IN_DOUBT, up_to_seq, after_seq)
        return [event_from_row(r) for r in rows]

    async def intents(self, request_ids: Collection[str]) -> dict[str, MirrorEvent]:
        return await self._find(request_ids, RecordKind.INTENT)

    async def outcomes(self, request_ids: Collection[str]) -> dict[str, MirrorEvent]:
        return await self._find(request_ids, RecordKind.OUTCOME)

    async def _find(self, request_ids: Collection[str], kind: RecordKind) -> dict[str, MirrorEvent]:
        if not request_ids:
            return {}
        async with pooled(self._pool) as conn:
            rows = await conn.fetch(FIND, list(request_ids), kind.value)
        return {r["request_id"]: event_from_row(r) for r in rows}

    async def offset(self, consumer: str, partition: int) -> int:
        async with pooled(self._pool) as conn:
            return await fetch_offset(conn, consumer, partition)

    async def commit_offset(self, consumer: str, partition: int, seq: int) -> None:
        async with pooled(self._pool) as conn:
            await conn.execute(COMMIT_OFFSET, consumer, partition, seq)
