"""PostgreSQL adapter of the LedgerStore port.

A commit is one statement, ``SELECT post_batch(...)``, run in autocommit: one round trip, one
transaction, one fsync for the whole batch. Everything it guarantees is kept inside the database
(see migrations/0001_ledger.sql); this module only carries plans there and rows back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any

import asyncpg

from sidecar.db.connect import DRIVER_ERRORS, pooled, translate
from sidecar.db.mirror_store import fetch_offset
from sidecar.domain.ledger import (
    Account,
    AccountState,
    AccountStatus,
    BatchPlan,
    LedgerView,
    NormalSide,
    TransferRecord,
)
from sidecar.domain.mirror import Checkpoint
from sidecar.domain.money import Currency
from sidecar.domain.outcome import PostedLeg, Rejection, TransferStatus
from sidecar.ports import LogHead, StoredEvent

# Every transfers lookup below is a probe by key (or by the reversal index) per asked key,
# the first one (asked) included:
# asyncpg prepares statements once per connection, and a generic plan made while transfers
# was empty (a fresh ledger) hash-joined a sequential scan of the whole table, kept as the
# table grew (2.2 ms a call at 6,000 transfers, 0.3 ms probing). The correlated subqueries
# and OFFSET 0 keep the probes whatever the statistics said at prepare time.
LOAD_TRANSFERS = """
WITH asked AS (
    SELECT t.key FROM unnest($1::text[]) AS a (key)
    CROSS JOIN LATERAL (SELECT key FROM transfers t WHERE t.key = a.key OFFSET 0) t
), wanted AS (
    SELECT key FROM asked
    UNION
    SELECT (SELECT r.key FROM transfers r
             WHERE r.reverses = a.key AND r.status = 'posted') FROM asked a
)
SELECT t.key, t.fingerprint, t.status, t.rejection, t.reverses, t.seq,
       (SELECT r.key FROM transfers r
         WHERE r.reverses = t.key AND r.status = 'posted') AS reversed_by,
       p.accounts, p.currencies, p.amounts, p.balances
FROM wanted w
CROSS JOIN LATERAL (SELECT * FROM transfers t WHERE t.key = w.key OFFSET 0) t
LEFT JOIN LATERAL (
    SELECT array_agg(account_id ORDER BY leg) AS accounts,
           array_agg(currency ORDER BY leg) AS currencies,
           array_agg(amount_minor ORDER BY leg) AS amounts,
           array_agg(balance_after_minor ORDER BY leg) AS balances
    FROM postings WHERE seq = t.seq
) p ON true
"""

LOAD_ACCOUNTS = """
SELECT id, currency, currency_exponent, normal_side, status, overdraft_limit_minor, balance_minor
FROM accounts WHERE id = ANY ($1::text[])
"""

COMMIT = "SELECT post_batch($1::text[], $2::text[], $3::bigint[], $4::bigint[])"
COMMIT_AT = (
    "SELECT post_batch_at($1::text[], $2::text[], $3::bigint[], $4::bigint[], "
    "$5::text[], $6::integer[], $7::bigint[])"
)

BALANCE_NOW = "SELECT balance_minor FROM accounts WHERE id = $1"

BALANCE_AT = """
SELECT a.opened_seq,
       (SELECT p.balance_after_minor FROM postings p
         WHERE p.account_id = a.id AND p.seq <= $2
         ORDER BY p.seq DESC, p.leg DESC LIMIT 1) AS balance
FROM accounts a WHERE a.id = $1
"""

HEAD = "SELECT seq, hash, batches FROM log_head"

EVENTS = "SELECT seq, content, hash FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"


def account_from_row(row: Any) -> AccountState:
    account = Account(
        id=row["id"],
        currency=Currency(row["currency"], row["currency_exponent"]),
        normal_side=NormalSide(row["normal_side"]),
        overdraft_limit_minor=row["overdraft_limit_minor"],
        status=AccountStatus(row["status"]),
    )
    return AccountState(account, row["balance_minor"])


def transfer_from_row(row: Any) -> TransferRecord:
    postings: tuple[PostedLeg, ...] = ()
    if row["accounts"] is not None:
        postings = tuple(
            PostedLeg(a, c, m, b)
            for a, c, m, b in zip(
                row["accounts"], row["currencies"], row["amounts"], row["balances"], strict=True
            )
        )
    return TransferRecord(
        key=row["key"],
        fingerprint=bytes(row["fingerprint"]),
        status=TransferStatus(row["status"]),
        rejection=Rejection(row["rejection"]) if row["rejection"] else None,
        postings=postings,
        reverses=row["reverses"],
        reversed_by=row["reversed_by"],
        seq=row["seq"],
    )


async def post_batch(
    conn: asyncpg.Connection,
    events: list[str],
    account_ids: list[str],
    before: list[int],
    after: list[int],
    checkpoints: Sequence[Checkpoint] = (),
) -> int:
    """Write and seal one batch in one statement, moving ``checkpoints`` with it; returns the
    first event's seq."""
    try:
        if not checkpoints:
            first: int = await conn.fetchval(COMMIT, events, account_ids, before, after)
        else:
            first = await conn.fetchval(
                COMMIT_AT,
                events,
                account_ids,
                before,
                after,
                [c.consumer for c in checkpoints],
                [c.partition for c in checkpoints],
                [c.seq for c in checkpoints],
            )
    except DRIVER_ERRORS as exc:
        raise translate(exc) from exc
    return first


async def balance_at(conn: asyncpg.Connection, account_id: str, at_seq: int) -> int | None:
    """An account's balance after the last posting at or before ``at_seq`` (None if it did
    not exist then)."""
    row = await conn.fetchrow(BALANCE_AT, account_id, at_seq)
    if row is None or row["opened_seq"] > at_seq:
        return None
    balance: int = row["balance"] if row["balance"] is not None else 0
    return balance


async def load_view(
    conn: asyncpg.Connection, account_ids: Collection[str], keys: Collection[str]
) -> LedgerView:
    """The accounts and transfers a plan needs (the accounts of those transfers too)."""
    transfers: dict[str, TransferRecord] = {}
    if keys:
        for row in await conn.fetch(LOAD_TRANSFERS, list(keys)):
            record = transfer_from_row(row)
            transfers[record.key] = record
    wanted = set(account_ids)
    for record in transfers.values():
        wanted.update(p.account_id for p in record.postings)
    accounts: dict[str, AccountState] = {}
    if wanted:
        for row in await conn.fetch(LOAD_ACCOUNTS, list(wanted)):
            accounts[row["id"]] = account_from_row(row)
    return LedgerView(accounts=accounts, transfers=transfers)


class PostgresLedgerStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def load(self, account_ids: Collection[str], keys: Collection[str]) -> LedgerView:
        async with pooled(self._pool) as conn:
            return await load_view(conn, account_ids, keys)

    async def commit(self, plan: BatchPlan, checkpoints: Sequence[Checkpoint] = ()) -> int:
        ids = list(plan.balances)
        before = [plan.balances[i].before_minor for i in ids]
        after = [plan.balances[i].after_minor for i in ids]
        async with pooled(self._pool) as conn:
            return await post_batch(conn, list(plan.events), ids, before, after, checkpoints)

    async def offset(self, consumer: str, partition: int) -> int:
        async with pooled(self._pool) as conn:
            return await fetch_offset(conn, consumer, partition)

    async def balance(self, account_id: str, at_seq: int | None = None) -> int | None:
        async with pooled(self._pool) as conn:
            if at_seq is None:
                value: int | None = await conn.fetchval(BALANCE_NOW, account_id)
                return value
            return await balance_at(conn, account_id, at_seq)

    async def head(self) -> LogHead:
        async with pooled(self._pool) as conn:
            row = await conn.fetchrow(HEAD)
        return LogHead(row["seq"], bytes(row["hash"]), row["batches"])

    async def events(self, after_seq: int = 0, chunk: int = 5000) -> AsyncIterator[StoredEvent]:
        if chunk < 1:
            raise ValueError("chunk must be at least 1")
        last = after_seq
        while True:
            async with pooled(self._pool) as conn:
                rows = await conn.fetch(EVENTS, last, chunk)
            for row in rows:
                yield StoredEvent(row["seq"], row["content"], bytes(row["hash"]))
            if len(rows) < chunk:
                return
            last = rows[-1]["seq"]
