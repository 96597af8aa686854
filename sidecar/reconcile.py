"""``ledger-sidecar reconcile``: every account's balance in both systems, side by side.

The sweep lists the legacy accounts (the same listing a bootstrap reads), reads each one's
balance through the mapping's balance route straight from the legacy service (not through the
proxy: a sweep is not customer traffic), with bounded concurrency, and holds it against the
ledger's balance once the applier has caught up with the stream as it was when the legacy
answered. Each drifted account is named with the first stream offset where the two were seen
to split: its earliest divergence on record (balance read, payment or refund), if any.

Guarantees (tests/integration/test_reconcile.py):
- A clean shadowed run reconciles with no drift; a posting the legacy service dropped shows as
  drift on both of its accounts, with the offset of the first divergence that showed it.
- The live schema is only read; the legacy service only receives GETs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import orjson

from sidecar.applier import COMPARE_CONSUMER
from sidecar.db.connect import pooled
from sidecar.db.ledger_store import PostgresLedgerStore
from sidecar.db.mirror_store import PostgresMirrorLog, fetch_offset
from sidecar.domain.bootstrap import MIGRATION_PREFIX, snapshot_accounts
from sidecar.domain.comparison import legacy_decimal
from sidecar.domain.mapping import MISSING, Operation, Origin, RouteTable, extract
from sidecar.errors import InvalidAmount, SidecarError

SAVE_RUN = """
INSERT INTO reconcile_runs (accounts, matched, drifted, unreadable) VALUES ($1, $2, $3, $4)
"""
FIRST_SPLIT = """
SELECT min(seq) FROM comparisons
WHERE outcome = 'mismatch' AND (account_id = $1 OR accounts @> ARRAY[$1])
"""
LEDGER_ACCOUNTS = "SELECT id FROM accounts ORDER BY id"


class ReconcileFailed(SidecarError):
    code = "reconcile_failed"


@dataclass
class Drift:
    account_id: str
    currency: str | None
    legacy_minor: int | None  # None: the legacy service does not know the account
    ledger_minor: int | None  # None: the ledger does not
    first_split_offset: int | None

    @property
    def difference_minor(self) -> int | None:
        if self.legacy_minor is None or self.ledger_minor is None:
            return None
        return self.ledger_minor - self.legacy_minor


@dataclass
class ReconcileReport:
    accounts: int = 0
    matched: int = 0
    drifted: list[Drift] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.drifted and not self.unreadable

    def to_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "accounts": self.accounts,
            "matched": self.matched,
            "drifted": [
                {
                    "account_id": d.account_id,
                    "currency": d.currency,
                    "legacy_minor": d.legacy_minor,
                    "ledger_minor": d.ledger_minor,
                    "difference_minor": d.difference_minor,
                    "first_split_offset": d.first_split_offset,
                }
                for d in self.drifted
            ],
            "unreadable": self.unreadable,
        }


async def reconcile(
    pool: asyncpg.Pool,
    routes: RouteTable,
    legacy_url: str,
    listing_url: str,
    *,
    partitions: int,
    concurrency: int = 16,
    wait_s: float = 60.0,
    progress: Callable[[int, int], None] | None = None,
) -> ReconcileReport:
    route = next((r for r in routes.routes if r.operation is Operation.BALANCE), None)
    source = route.fields.get("account") if route else None
    if route is None or source is None or source.origin is not Origin.PATH:
        raise ReconcileFailed("the mapping has no balance route with the account in its path")
    stream = PostgresMirrorLog(pool)
    store = PostgresLedgerStore(pool)
    report = ReconcileReport()
    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.get(listing_url) as answer:
            if answer.status != 200:
                raise ReconcileFailed(f"{listing_url} answered {answer.status}")
            listed = snapshot_accounts(orjson.loads(await answer.read()))
        legacy_ids = [str(row.get("account_number")) for row in listed]
        async with pooled(pool) as conn:
            ledger_ids = [r["id"] for r in await conn.fetch(LEDGER_ACCOUNTS)]
        everyone = sorted(
            set(legacy_ids) | {a for a in ledger_ids if not a.startswith(MIGRATION_PREFIX)}
        )
        report.accounts = len(everyone)
        known = set(legacy_ids)
        done = 0

        async def one(account: str) -> None:
            nonlocal done
            async with semaphore:
                legacy: int | None = None
                currency: str | None = None
                if account in known:
                    path = route.path.replace("{" + source.locator + "}", account)
                    try:
                        async with session.get(legacy_url + path) as answer:
                            body = (
                                orjson.loads(await answer.read()) if answer.status == 200 else None
                            )
                    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
                        body = None
                    head = await stream.head()  # the legacy answer is at least this recent
                    legacy, currency = _balance(route, routes, body, account)
                    if body is None or legacy is None:
                        report.unreadable.append(account)
                        return
                    await _caught_up(pool, partitions, head, wait_s)
                ledger = await store.balance(account)
                if legacy == ledger:
                    report.matched += 1
                else:
                    async with pooled(pool) as conn:
                        first = await conn.fetchval(FIRST_SPLIT, account)
                    report.drifted.append(Drift(account, currency, legacy, ledger, first))
            done += 1
            if progress is not None:
                progress(done, len(everyone))

        await asyncio.gather(*(one(a) for a in everyone))
    report.drifted.sort(key=lambda d: d.account_id)
    async with pooled(pool) as conn:  # the readiness report's "last sweep" (migration 0008)
        await conn.execute(
            SAVE_RUN, report.accounts, report.matched, len(report.drifted), len(report.unreadable)
        )
    return report


def _balance(
    route: Any, routes: RouteTable, body: Any, account: str
) -> tuple[int | None, str | None]:
    if body is None:
        return None, None
    value = extract(route.fields["balance"], answer=body, path_params={"account": account})
    code = extract(route.fields["currency"], answer=body, path_params={"account": account})
    if value is MISSING or code is MISSING or str(code) not in routes.currencies:
        return None, None
    exponent = routes.currencies[str(code)]
    try:
        exact = legacy_decimal(value, route.amount_format, exponent).scaleb(exponent)
    except InvalidAmount:
        return None, str(code)
    if exact != exact.to_integral_value():
        return None, str(code)
    return int(Decimal(exact)), str(code)


async def _caught_up(pool: asyncpg.Pool, partitions: int, head: int, wait_s: float) -> None:
    """Wait until the applier has compared the stream up to ``head``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        async with pooled(pool) as conn:
            offsets = [await fetch_offset(conn, COMPARE_CONSUMER, p) for p in range(partitions)]
        if min(offsets, default=0) >= head:
            return
        if loop.time() > deadline:
            raise ReconcileFailed(
                f"the applier is at offset {min(offsets, default=0)}, behind {head}, after "
                f"{wait_s:.0f} s: is it running?"
            )
        await asyncio.sleep(0.1)
