"""Read-only queries that verification and rebuild need, against one ledger schema.

Nothing here trusts the rows it reads: ``sidecar.verify`` recomputes what they should be from
the event log and compares.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from sidecar.db.migrate import quote_ident

ACCOUNTS_IN = """
SELECT id, currency, currency_exponent, normal_side, status, overdraft_limit_minor, opened_seq
FROM accounts WHERE opened_seq BETWEEN $1 AND $2
"""
TRANSFERS_IN = """
SELECT key, fingerprint, status, rejection, reverses, metadata::text AS metadata, legs, seq
FROM transfers WHERE seq BETWEEN $1 AND $2
"""
POSTINGS_IN = """
SELECT seq, leg, transfer_key, account_id, currency, amount_minor, balance_after_minor
FROM postings WHERE seq BETWEEN $1 AND $2
"""
ROWS_BEYOND = """
SELECT min(s) FROM (
    SELECT min(opened_seq) AS s FROM accounts WHERE opened_seq > $1 OR opened_seq < 1
    UNION ALL SELECT min(seq) FROM transfers WHERE seq > $1 OR seq < 1
    UNION ALL SELECT min(seq) FROM postings WHERE seq > $1 OR seq < 1
) AS beyond
"""
TRIAL_BALANCE = """
SELECT currency, sum(amount_minor)::text AS total, count(*) AS postings
FROM postings GROUP BY currency ORDER BY currency
"""
CACHED_BALANCES = """
SELECT a.id, a.balance_minor,
       coalesce(sum(CASE a.normal_side WHEN 'debit' THEN p.amount_minor
                                       ELSE -p.amount_minor END), 0)::text AS from_postings
FROM accounts a LEFT JOIN postings p ON p.account_id = a.id
GROUP BY a.id, a.balance_minor
HAVING a.balance_minor::numeric
       <> coalesce(sum(CASE a.normal_side WHEN 'debit' THEN p.amount_minor
                                          ELSE -p.amount_minor END), 0)
ORDER BY a.id
LIMIT 20
"""
RUNNING_BALANCES = """
SELECT seq, leg, account_id, balance_after_minor, running::text AS running
FROM (
    SELECT p.seq, p.leg, p.account_id, p.balance_after_minor,
           sum(CASE a.normal_side WHEN 'debit' THEN p.amount_minor ELSE -p.amount_minor END)
               OVER (PARTITION BY p.account_id ORDER BY p.seq, p.leg) AS running
    FROM postings p JOIN accounts a ON a.id = p.account_id
) AS history
WHERE running <> balance_after_minor
ORDER BY seq, leg
LIMIT 20
"""
COUNT_ACCOUNTS = "SELECT count(*) FROM accounts"
ALL_BALANCES = "SELECT id, balance_minor FROM accounts ORDER BY id"
COMPARE_BALANCES = """
SELECT coalesce(l.id, r.id) AS id, l.balance_minor AS live, r.balance_minor AS rebuilt
FROM {live}.accounts l FULL JOIN {rebuilt}.accounts r ON r.id = l.id
WHERE l.balance_minor IS DISTINCT FROM r.balance_minor
ORDER BY 1 LIMIT 20
"""


class PostgresLedgerAudit:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def rows_between(
        self, first_seq: int, last_seq: int
    ) -> tuple[list[Any], list[Any], list[Any]]:
        accounts = await self._conn.fetch(ACCOUNTS_IN, first_seq, last_seq)
        transfers = await self._conn.fetch(TRANSFERS_IN, first_seq, last_seq)
        postings = await self._conn.fetch(POSTINGS_IN, first_seq, last_seq)
        return accounts, transfers, postings

    async def first_row_beyond(self, head_seq: int) -> int | None:
        value: int | None = await self._conn.fetchval(ROWS_BEYOND, head_seq)
        return value

    async def trial_balance(self) -> list[Any]:
        return list(await self._conn.fetch(TRIAL_BALANCE))

    async def cached_balance_mismatches(self) -> list[Any]:
        return list(await self._conn.fetch(CACHED_BALANCES))

    async def running_balance_mismatches(self) -> list[Any]:
        return list(await self._conn.fetch(RUNNING_BALANCES))

    async def account_count(self) -> int:
        value: int = await self._conn.fetchval(COUNT_ACCOUNTS)
        return value

    async def balances(self) -> dict[str, int]:
        return {r["id"]: r["balance_minor"] for r in await self._conn.fetch(ALL_BALANCES)}

    async def compare_balances(self, live: str, rebuilt: str) -> list[Any]:
        sql = COMPARE_BALANCES.format(live=quote_ident(live), rebuilt=quote_ident(rebuilt))
        return list(await self._conn.fetch(sql))


EVENTS_PAGE = "SELECT seq, content, hash FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"
HEAD = "SELECT seq, hash, batches FROM log_head"


async def events_page(conn: asyncpg.Connection, after_seq: int, limit: int) -> list[Any]:
    return list(await conn.fetch(EVENTS_PAGE, after_seq, limit))


async def log_head(conn: asyncpg.Connection) -> Any:
    return await conn.fetchrow(HEAD)


async def audit_trail_page(conn: asyncpg.Connection, after_seq: int, limit: int) -> list[Any]:
    """The admin audit log's rows after ``after_seq`` (migration 0008), in seq order."""
    return list(
        await conn.fetch(
            "SELECT seq, actor, action, allowed, content, hash FROM audit_log"
            " WHERE seq > $1 ORDER BY seq LIMIT $2",
            after_seq,
            limit,
        )
    )


async def audit_trail_head(conn: asyncpg.Connection) -> Any:
    """The audit log's sealed head, or None on a schema from before migration 0008."""
    present = await conn.fetchval("SELECT to_regclass('audit_head') IS NOT NULL")
    return await conn.fetchrow("SELECT seq, hash FROM audit_head") if present else None


# the trial balance from the accounts' balances (one row per account, not per posting, so it
# is cheap to sample often): each balance signed back by its account's normal side
TRIAL_BALANCE_OF_ACCOUNTS = """
SELECT currency,
       sum(CASE normal_side WHEN 'debit' THEN balance_minor ELSE -balance_minor END)::text AS total
FROM accounts GROUP BY currency ORDER BY currency
"""
HEADS = "SELECT (SELECT seq FROM log_head) AS ledger, (SELECT seq FROM mirror_head) AS mirror"


async def heads_and_trial_balance(
    conn: asyncpg.Connection,
) -> tuple[int, int, dict[str, int]]:
    """The ledger event log's head, the mirror stream's head, and the trial balance per
    currency (must be zero), in one snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        heads = await conn.fetchrow(HEADS)
        totals = await conn.fetch(TRIAL_BALANCE_OF_ACCOUNTS)
    return heads["ledger"], heads["mirror"], {r["currency"]: int(r["total"]) for r in totals}


async def database_clock(conn: asyncpg.Connection) -> float:
    """The database server's clock, in seconds since the epoch (``clock_timestamp()``)."""
    value: float = await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")
    return value
