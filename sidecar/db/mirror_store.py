"""PostgreSQL adapter of the MirrorLog port (migrations/0002_mirror.sql).

An append is one statement, ``SELECT append_mirror(...)``, in autocommit: one round trip and
one commit for a whole group of records, however many requests they came from.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import asyncpg
import orjson

from sidecar.db.connect import DRIVER_ERRORS, pooled, translate
from sidecar.db.slo_store import add_counts
from sidecar.domain.mirror import MirrorEvent, MirrorRecord, RecordKind, content_json
from sidecar.errors import LedgerUnavailable

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


def _closed(connection: asyncpg.Connection) -> bool:
    """Whether a held connection is gone: closed, or already taken back by its pool (asyncpg
    detaches a pooled connection the server ended, and then refuses to be asked)."""
    try:
        return bool(connection.is_closed())
    except asyncpg.InterfaceError:
        return True


class PostgresMirrorLog:
    """The mirror stream in PostgreSQL. With ``hold_connection`` (capture's writer, on the
    customer path, given a pool of its own) appends keep one connection instead of taking
    one from the pool per group: measured here, 76-130 us of client CPU an append against
    150-290 us through the pool's acquire and release (docs/benchmarks.md). A connection that
    fails is given back and the next append takes another; ``close()`` gives it back."""

    def __init__(self, pool: asyncpg.Pool, hold_connection: bool = False) -> None:
        self._pool = pool
        self._hold = hold_connection
        self._held: asyncpg.Connection | None = None
        self._held_lock = asyncio.Lock()

    async def append(self, records: Sequence[MirrorRecord]) -> list[int]:
        if not records:
            return []
        arguments = (
            [r.partition for r in records],
            [r.kind.value for r in records],
            [r.request_id for r in records],
            [r.route for r in records],
            [content_json(r) for r in records],
            [r.trace_id for r in records],
        )
        if self._hold:
            return await self._append_held(arguments)
        async with pooled(self._pool) as conn:
            seqs: list[int] = await conn.fetchval(APPEND, *arguments)
        return list(seqs)

    async def _append_held(self, arguments: tuple[list[Any], ...]) -> list[int]:
        async with self._held_lock:
            try:
                if self._held is not None and _closed(self._held):
                    await self._give_back(broken=True)  # ended while idle (say, a restart)
                if self._held is None:
                    self._held = await self._pool.acquire()
                seqs: list[int] = await self._held.fetchval(APPEND, *arguments)
            except (*DRIVER_ERRORS, asyncpg.InternalClientError) as exc:
                # a session the server ended while it sat idle can fail as a protocol state
                # error (InternalClientError) before asyncpg sees the socket closed
                await self._give_back(broken=True)
                if isinstance(exc, asyncpg.InternalClientError):
                    raise LedgerUnavailable(f"database connection failed: {exc}") from exc
                raise translate(exc) from exc
            except BaseException:  # cancelled mid-call: the connection's state is unknown
                await self._give_back(broken=True)
                raise
        return list(seqs)

    async def _give_back(self, broken: bool = False) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        # (a connection the pool saw closing is already back with it: both calls may refuse)
        with contextlib.suppress(*DRIVER_ERRORS, asyncpg.InternalClientError):
            if broken:
                held.terminate()  # the pool opens a fresh one in its place
            await self._pool.release(held)

    async def close(self) -> None:
        """Give the held connection back to the pool (before the pool closes)."""
        async with self._held_lock:
            await self._give_back()

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
