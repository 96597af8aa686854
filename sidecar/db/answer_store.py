"""The ledger's answers by legacy idempotency key (migration 0009), for ledger-primary."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from sidecar.db.connect import pooled

GET = "SELECT status, body::text AS body FROM ledger_answers WHERE route = $1 AND key = $2"
PUT = """
INSERT INTO ledger_answers (route, key, status, body) VALUES ($1, $2, $3, $4::jsonb)
ON CONFLICT (route, key) DO NOTHING
"""


class PostgresAnswerStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, route: str, key: str) -> tuple[int, Any] | None:
        async with pooled(self._pool) as conn:
            row = await conn.fetchrow(GET, route, key)
        return (row["status"], orjson.loads(row["body"])) if row is not None else None

    async def put(self, route: str, key: str, status: int, body: Any) -> tuple[int, Any]:
        """Keep this answer unless one is kept already; the one kept."""
        async with pooled(self._pool) as conn:
            await conn.execute(PUT, route, key, status, orjson.dumps(body, default=str).decode())
            row = await conn.fetchrow(GET, route, key)
        return row["status"], orjson.loads(row["body"])


__all__ = ["PostgresAnswerStore"]
