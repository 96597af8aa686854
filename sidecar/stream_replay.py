"""``ledger-sidecar replay``: rebuild a fresh ledger from the mirror stream and compare again.

The recorded stream (requests and legacy answers, in-doubt resolutions and bootstrap reads
included) is applied from its start into a fresh schema with the mapping as it is now, by the
same applier the sidecar runs. The comparisons after ``--from`` (or ``--since``) are then held
up against the ones recorded live: the way an operator proves that a mapping fix makes a class
of divergences go away, and that nothing else changed.

Guarantees (tests/integration/test_stream_replay.py):
- Determinism (A/A): replaying one stream into two fresh ledgers gives the same comparisons,
  field by field, and the same balances.
- The live schema is only read.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sidecar.applier import Applier
from sidecar.config import Settings
from sidecar.db.comparison_store import PostgresComparisonStore
from sidecar.db.connect import create_pool, pooled
from sidecar.db.ledger_store import PostgresLedgerStore
from sidecar.db.migrate import drop_schema, migrate
from sidecar.db.mirror_store import PostgresMirrorLog
from sidecar.domain.mapping import RouteTable
from sidecar.errors import SidecarError

FIRST_SEQ_SINCE = (
    "SELECT coalesce(min(seq), (SELECT seq FROM mirror_head) + 1) - 1 "
    "FROM mirror_events WHERE recorded_at >= $1"
)


class ReplayStopped(SidecarError):
    code = "replay_stopped"


@dataclass
class ReplayReport:
    live_schema: str
    replay_schema: str
    from_seq: int
    head: int
    seconds: float = 0.0
    before: Counter[str] = field(default_factory=Counter)  # divergence kinds, live
    after: Counter[str] = field(default_factory=Counter)  # divergence kinds, replayed
    changed: list[dict[str, Any]] = field(default_factory=list)  # requests whose result moved

    def to_dict(self) -> dict[str, Any]:
        return {
            "live_schema": self.live_schema,
            "replay_schema": self.replay_schema,
            "from_seq": self.from_seq,
            "head": self.head,
            "seconds": round(self.seconds, 3),
            "divergences_before": dict(self.before),
            "divergences_after": dict(self.after),
            "changed": len(self.changed),
            "changed_examples": self.changed[:20],
        }


async def first_seq_since(settings: Settings, since: datetime) -> int:
    pool = await create_pool(settings.database)
    try:
        async with pooled(pool) as conn:
            seq: int = await conn.fetchval(FIRST_SEQ_SINCE, since)
    finally:
        await pool.close()
    return seq


async def replay(
    settings: Settings,
    routes: RouteTable,
    *,
    from_seq: int = 0,
    into: str | None = None,
    keep: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayReport:
    """Apply the live schema's stream into ``into`` (fresh) and compare after ``from_seq``."""
    live = settings.database
    target = replace(live, schema=into or f"{live.schema}_replay")
    if target.schema == live.schema:
        raise ValueError("a replay goes into another schema than the live one")
    await drop_schema(target, target.schema)
    await migrate(target)
    live_pool = await create_pool(live)
    target_pool = await create_pool(target)
    started = time.monotonic()
    try:
        stream = PostgresMirrorLog(live_pool)
        head = await stream.head()
        comparisons = PostgresComparisonStore(target_pool)
        applier = Applier(
            stream,
            PostgresLedgerStore(target_pool),
            comparisons,
            routes,
            settings.applier,
            settings.proxy.partitions,
        )
        applier.replaying_to = head
        applier.never_answered = frozenset(e.record.request_id for e in await stream.in_doubt(head))
        await applier._resume()
        while applier.cursor < head:
            if await applier.apply_once() == 0:
                break
            if progress is not None:
                progress(applier.cursor, head)
        if applier.cursor < head:
            raise ReplayStopped(f"the replay stopped at offset {applier.cursor} of {head}")
        report = ReplayReport(live.schema, target.schema, from_seq, head)
        was = await PostgresComparisonStore(live_pool).by_request(from_seq)
        now = await comparisons.by_request(from_seq)
        was = {k: v for k, v in was.items() if v["seq"] <= head}
        now = {k: v for k, v in now.items() if v["seq"] <= head}
    finally:
        await live_pool.close()
        await target_pool.close()
        if not keep:
            await drop_schema(target, target.schema)
    report.seconds = time.monotonic() - started
    for record in was.values():
        if record["outcome"] == "mismatch":
            report.before.update(record["kinds"])
    for record in now.values():
        if record["outcome"] == "mismatch":
            report.after.update(record["kinds"])
    for request_id, record in now.items():
        old = was.get(request_id)
        if old is None or _verdict(old) != _verdict(record):
            report.changed.append(
                {
                    "request_id": request_id,
                    "seq": record["seq"],
                    "route": record["route"],
                    "before": _verdict(old) if old else None,
                    "after": _verdict(record),
                }
            )
    return report


def _verdict(record: dict[str, Any]) -> dict[str, Any]:
    return {"outcome": record["outcome"], "kinds": record["kinds"]}
