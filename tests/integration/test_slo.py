"""SLO counts are durable and exact: a shadowed run with faults leaves in slo_minutes exactly
what its comparisons and its customer requests say, the worker's gauges and
``ledger-sidecar slo --json`` read them back."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import aiohttp
from sidecar.config import DatabaseSettings, Settings
from sidecar.db.connect import connection
from sidecar.demo.legacy import FaultRates
from sidecar.demo.shadow_demo import ShadowStack

from tests.integration.test_shadow import shadow_settings, traffic

EXACT = """
SELECT
  count(*) FILTER (WHERE outcome IN ('match', 'mismatch', 'ledger_error')) AS consistency_total,
  count(*) FILTER (WHERE outcome IN ('match', 'mismatch') AND NOT monetary) AS consistency_good,
  count(*) AS freshness_total
FROM comparisons
"""


async def test_a_run_leaves_exact_slo_counts_that_the_gauges_and_the_cli_read(
    settings: Settings, db: DatabaseSettings
) -> None:
    async with ShadowStack(shadow_settings(settings, db), customers=20) as stack:
        await stack.bootstrap()
        await stack.set_faults(FaultRates(rounding=0.05, server_error=0.05))
        await traffic(stack, 2.0)
        await stack.set_faults(FaultRates())
        await stack.settle()
        worker = stack.sidecar.worker
        assert worker is not None and worker.sampler is not None
        served = stack.sidecar.proxy.stats if stack.sidecar.proxy else None
        assert served is not None
    # the stack is stopped: the last counts were saved on the way out
    async with connection(db) as conn:
        exact = await conn.fetchrow(EXACT)
        rows = await conn.fetch(
            "SELECT slo, sum(good)::bigint AS good, sum(total)::bigint AS total "
            "FROM slo_minutes GROUP BY slo"
        )
    sums = {r["slo"]: (r["good"], r["total"]) for r in rows}
    assert sums["shadow_consistency"] == (exact["consistency_good"], exact["consistency_total"])
    assert exact["consistency_good"] < exact["consistency_total"]  # the rounding faults
    assert sums["shadow_freshness"] == (exact["freshness_total"], exact["freshness_total"])
    assert sums["availability"] == (served.requests - served.errors, served.requests)
    assert served.errors > 0  # the 5xx faults
    assert sums["latency"] == (served.requests - served.slow, served.requests)
    assert sums["shadow_completeness"] == (served.mapped, served.mapped)  # nothing dropped

    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar.cli",
        "--schema",
        db.schema,
        "slo",
        "--json",
        env={**os.environ, "DATABASE_URL": db.url.reveal()},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await cli.communicate()
    assert cli.returncode == 0, err.decode()[-2000:]
    report = {r["slo"]: r for r in json.loads(out)}
    consistency = report["shadow_consistency"]
    assert (consistency["good"], consistency["total"]) == sums["shadow_consistency"]
    assert consistency["attainment"] == exact["consistency_good"] / exact["consistency_total"]
    assert consistency["met"] is False and consistency["error_budget_remaining"] < 0


async def test_the_worker_publishes_attainment_and_budget_left(
    settings: Settings, db: DatabaseSettings
) -> None:
    async with ShadowStack(shadow_settings(settings, db), customers=10) as stack:
        await stack.bootstrap()
        await traffic(stack, 1.0)
        await stack.settle()
        worker = stack.sidecar.worker
        assert worker is not None and worker.sampler is not None
        await worker.sampler.sample_slos(worker.sampler.slos)
        async with (
            aiohttp.ClientSession() as session,
            session.get(stack.sidecar_url + "/metrics") as answer,
        ):
            text = await answer.text()
    line = next(
        x
        for x in text.splitlines()
        if x.startswith('ledger_sidecar_slo_error_budget_remaining_ratio{slo="shadow_consistency"}')
    )
    assert float(line.rsplit(" ", 1)[1]) == 1.0  # a clean run spends nothing
    assert 'ledger_sidecar_slo_attainment_ratio{slo="shadow_freshness"} 1.0' in text
