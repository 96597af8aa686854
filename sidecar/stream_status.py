"""``ledger-sidecar stream status``: capture completeness, measured from the stream itself.

Counts what the sidecar instances served and handed to capture (saved by each instance every
second, drops by reason), what was captured (intents, outcomes), compared (by outcome) and
applied to the ledger;
each consumer's offset and how far it is behind the head; and the gaps, by stream offset:
intents older than the in-doubt age with no outcome, and outcomes the comparing consumer has
passed without a comparison (which should never happen: each one is a bug to report).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from sidecar.db.connect import pooled

COUNTS = """
SELECT
  (SELECT seq FROM mirror_head) AS head,
  (SELECT count(*) FROM mirror_events WHERE kind = 'intent') AS intents,
  (SELECT count(*) FROM mirror_events WHERE kind = 'outcome') AS outcomes,
  (SELECT count(*) FROM comparisons) AS compared,
  (SELECT count(*) FROM comparisons WHERE ledger_seq IS NOT NULL
      OR outcome IN ('match', 'mismatch') AND operation <> 'balance') AS applied
"""
SERVED = """
SELECT coalesce(sum(served), 0)::bigint AS served, coalesce(sum(mapped), 0)::bigint AS mapped,
       coalesce(sum(recorded), 0)::bigint AS recorded,
       coalesce(sum(committed), 0)::bigint AS committed,
       coalesce(sum(late), 0)::bigint AS late, count(*) AS instances
FROM capture_counts
"""
DROPPED = """
SELECT d.key AS reason, sum(d.value::bigint)::bigint AS n
FROM capture_counts, jsonb_each_text(dropped) AS d GROUP BY 1 ORDER BY 1
"""
RESOLVED = """
SELECT content->>'in_doubt' AS how, count(*) AS n FROM mirror_events
WHERE kind = 'outcome' AND content ? 'in_doubt' GROUP BY 1 ORDER BY 1
"""
BY_OUTCOME = "SELECT outcome, count(*) AS n FROM comparisons GROUP BY 1 ORDER BY 1"
CONSUMERS = """
SELECT consumer, min(seq) AS seq FROM mirror_offsets GROUP BY consumer ORDER BY consumer
"""
IN_DOUBT = """
SELECT i.seq, i.request_id, i.route FROM mirror_events i
WHERE i.kind = 'intent' AND i.recorded_at < clock_timestamp() - make_interval(secs => $1)
  AND NOT EXISTS (SELECT 1 FROM mirror_events o
                  WHERE o.request_id = i.request_id AND o.kind = 'outcome')
ORDER BY i.seq LIMIT 1000
"""
UNCOMPARED = """
SELECT o.seq, o.request_id, o.route FROM mirror_events o
WHERE o.kind = 'outcome' AND o.seq <= $1
  AND NOT EXISTS (SELECT 1 FROM comparisons c WHERE c.request_id = o.request_id)
ORDER BY o.seq LIMIT 1000
"""


async def stream_status(
    pool: asyncpg.Pool, partitions: int, in_doubt_after_s: float = 60.0
) -> dict[str, Any]:
    async with pooled(pool) as conn:
        counts = dict(await conn.fetchrow(COUNTS))
        served = dict(await conn.fetchrow(SERVED))
        dropped = {r["reason"]: r["n"] for r in await conn.fetch(DROPPED)}
        resolved = {r["how"]: r["n"] for r in await conn.fetch(RESOLVED)}
        by_outcome = {r["outcome"]: r["n"] for r in await conn.fetch(BY_OUTCOME)}
        consumers = [(r["consumer"], r["seq"]) for r in await conn.fetch(CONSUMERS)]
        compared_to = dict(consumers).get("compare", 0)
        in_doubt = [dict(r) for r in await conn.fetch(IN_DOUBT, in_doubt_after_s)]
        uncompared = [dict(r) for r in await conn.fetch(UNCOMPARED, compared_to)]
    head = counts.pop("head")
    out_counts = {
        "served (all instances)": served["served"],
        "served on mapped routes": served["mapped"],
        "records handed to capture": served["recorded"],
        "records committed": served["committed"],
        "records committed late": served["late"],
        **{f"records dropped: {reason}": n for reason, n in dropped.items()},
        "stream head": head,
        "captured intents": counts["intents"],
        "captured outcomes": counts["outcomes"],
        "compared": counts["compared"],
        "applied to the ledger": counts["applied"],
    }
    out_counts.update({f"compared: {k}": v for k, v in by_outcome.items()})
    out_counts.update({f"in doubt, resolved: {k}": v for k, v in resolved.items()})
    return {
        "head": head,
        "partitions": partitions,
        "counts": out_counts,
        "consumers": [[name, seq, head - seq] for name, seq in consumers],
        "gaps": [{"reason": "in_doubt", **g} for g in in_doubt]
        + [{"reason": "not_compared", **g} for g in uncompared],
    }
