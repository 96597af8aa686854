"""The reconciliation sweep on a shadowed demo legacy service (real HTTP, real PostgreSQL)."""

from __future__ import annotations

import aiohttp
import asyncpg
from sidecar.config import DatabaseSettings, Settings
from sidecar.db.connect import create_pool
from sidecar.demo.legacy import FaultRates
from sidecar.demo.shadow_demo import ShadowStack
from sidecar.reconcile import reconcile

from tests.integration.test_shadow import CUSTOMERS, shadow_settings, traffic


async def sweep(stack: ShadowStack, pool: asyncpg.Pool) -> dict[str, object]:
    applier = stack.sidecar.applier
    assert applier is not None
    report = await reconcile(
        pool,
        applier.routes,
        stack.legacy_url,
        stack.legacy_url + "/v1/accounts",
        partitions=applier.partitions,
        concurrency=8,
    )
    return report.to_dict()


async def test_a_clean_run_reconciles_and_a_dropped_posting_is_named_with_its_split(
    settings: Settings, db: DatabaseSettings
) -> None:
    async with ShadowStack(shadow_settings(settings, db), customers=CUSTOMERS) as stack:
        await stack.bootstrap()
        await traffic(stack, 2.0, seed=31)
        await stack.settle()
        pool = await create_pool(db)
        try:
            clean = await sweep(stack, pool)
            # one payment the legacy service answers as done but never posts
            await stack.set_faults(FaultRates(dropped=1.0))
            async with aiohttp.ClientSession() as client:
                async with client.post(
                    stack.sidecar_url + "/v1/accounts/CUST-00003/payments",
                    json={
                        "beneficiary": {"account_number": "CUST-00004"},
                        "amount": {"value": "12.34", "currency": "EUR"},
                    },
                    headers={"Idempotency-Key": "reconcile-dropped"},
                ) as answer:
                    assert answer.status == 201
                await stack.set_faults(FaultRates())
                async with client.get(
                    stack.sidecar_url + "/v1/accounts/CUST-00003/balance"
                ) as answer:
                    assert answer.status == 200
            await stack.settle()
            drifted = await sweep(stack, pool)
            split = await stack.comparisons().divergences("CUST-00003")
        finally:
            await pool.close()
    assert clean["clean"] is True, clean
    assert clean["accounts"] >= CUSTOMERS
    by_account = {d["account_id"]: d for d in drifted["drifted"]}  # type: ignore[union-attr]
    assert set(by_account) == {"CUST-00003", "CUST-00004"}
    assert by_account["CUST-00003"]["difference_minor"] == -1234  # the ledger posted it
    assert by_account["CUST-00004"]["difference_minor"] == 1234
    assert by_account["CUST-00003"]["first_split_offset"] == split[0]["seq"]
