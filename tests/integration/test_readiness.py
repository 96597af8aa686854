"""The readiness report and the gated flip on real data: the demo legacy service, the sidecar
in shadow mode, real traffic, PostgreSQL (sidecar/readiness.py, sidecar/admin/api.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from sidecar.admin.api import AdminApi
from sidecar.config import DatabaseSettings, Settings
from sidecar.db.admin_store import PostgresAdminStore
from sidecar.db.comparison_store import PostgresComparisonStore
from sidecar.demo.legacy import FaultRates
from sidecar.demo.shadow_demo import ShadowStack
from sidecar.domain.audit import AuditRecord, Role
from sidecar.domain.flags import Mode, parse_cohort
from sidecar.domain.readiness import Report, Status, Thresholds, Verdict
from sidecar.flag_watch import FlagWatcher
from sidecar.readiness import readiness
from sidecar.reconcile import reconcile
from sidecar.slo_file import load_slo_file

from tests.integration.test_shadow import CUSTOMERS, shadow_settings, traffic

LIMITS = Thresholds(
    clean_comparisons_min=2,
    shadow_hours_min=0.0,
    budget_left_min=0.0,
    # the demo's traffic never opens accounts: that route is not asked for
    coverage_routes_exempt=("open account",),
)
#: the demo's customers (all in EUR; its BHD and JPY house accounts see no payments)
CUSTOMER_IDS = [f"CUST-{n:05d}" for n in range(CUSTOMERS)]


@pytest.fixture
async def stack(settings: Settings, db: DatabaseSettings) -> AsyncIterator[ShadowStack]:
    configured = replace(shadow_settings(settings, db), readiness=LIMITS)
    async with ShadowStack(configured, customers=CUSTOMERS) as running:
        await running.bootstrap()
        await traffic(running, 2.0)
        await running.read_every_balance()
        await running.settle()
        yield running


async def report_of(stack: ShadowStack, pool: asyncpg.Pool, cohort: str | None = None) -> Report:
    applier = stack.sidecar.applier
    assert applier is not None and stack.sidecar.flags is not None
    rules = await stack.sidecar.flags.refresh()
    slos = load_slo_file(None)
    return await readiness(pool, stack.sidecar.settings, applier.routes, slos, rules, cohort)


async def sweep(stack: ShadowStack, pool: asyncpg.Pool) -> None:
    applier = stack.sidecar.applier
    assert applier is not None
    await reconcile(
        pool,
        applier.routes,
        stack.legacy_url,
        stack.legacy_url + "/v1/accounts",
        partitions=applier.partitions,
        concurrency=8,
    )


async def customers_cohort(pool: asyncpg.Pool) -> None:
    store = PostgresAdminStore(pool, Mode.SHADOW)
    cohort = parse_cohort({"name": "customers", "mode": "shadow", "accounts": CUSTOMER_IDS})
    record = AuditRecord("rm", "release_manager", "flag.set_cohort", True, reason="customers")
    await store.change_flag(lambda r: r.with_cohort(cohort), record)


async def test_a_clean_shadowed_run_is_go_once_reconciled(
    stack: ShadowStack, pool: asyncpg.Pool
) -> None:
    everyone = await report_of(stack, pool)
    assert everyone.check("reconciliation").status is Status.INCONCLUSIVE
    # no payment ever moved BHD or JPY (only house accounts hold them): coverage says so
    assert "payment transfer BHD: 0" in everyone.check("coverage").detail
    assert everyone.verdict is Verdict.INCONCLUSIVE
    await sweep(stack, pool)
    await customers_cohort(pool)
    after = await report_of(stack, pool, "customers")
    passed = {c.name for c in after.checks if c.ok}
    assert {
        "monetary_divergences",
        "coverage",
        "capture_completeness",
        "consistency",
        "reconciliation",
        "shadow_lag",
        "in_doubt",
        "verification",
        "time_in_shadow",
    } <= passed, after.document()
    # the latency budget depends on this machine's load; everything else must hold
    if after.check("error_budgets").ok:
        assert after.verdict is Verdict.GO, after.document()
    else:
        assert after.reason == "failed: error_budgets"
    coverage = after.check("coverage")
    assert coverage.value >= 2 and coverage.threshold == 2


async def test_one_monetary_divergence_is_no_go_until_it_is_resolved(
    stack: ShadowStack, pool: asyncpg.Pool
) -> None:
    stack.legacy.rates = FaultRates(rounding=0.2)
    await traffic(stack, 1.0, seed=5)
    stack.legacy.rates = FaultRates()
    await stack.settle()
    report = await report_of(stack, pool)
    monetary = report.check("monetary_divergences")
    assert report.verdict is Verdict.NO_GO and monetary.status is Status.FAIL
    assert report.reason.startswith(f"{monetary.value} unresolved")
    store = PostgresAdminStore(pool, Mode.SHADOW)
    offsets = await pool.fetch("SELECT seq FROM comparisons WHERE monetary ORDER BY seq")
    for row in offsets:
        record = AuditRecord("ops", "operator", "divergence.triage", True, reason="known")
        await store.triage(row["seq"], "resolved", "legacy rounding, refunded", record)
    assert (await report_of(stack, pool)).check("monetary_divergences").ok


async def test_a_cohort_is_judged_on_its_own_accounts(
    stack: ShadowStack, pool: asyncpg.Pool
) -> None:
    store = PostgresAdminStore(pool, Mode.SHADOW)
    pilot = parse_cohort({"name": "pilot", "mode": "shadow", "accounts": ["CUST-00001"]})
    record = AuditRecord("rm", "release_manager", "flag.set_cohort", True, reason="pilot")
    await store.change_flag(lambda r: r.with_cohort(pilot), record)
    everyone = await report_of(stack, pool)
    one = await report_of(stack, pool, "pilot")
    assert one.scope == "cohort pilot"
    # its one EUR account: three routes in one currency to cover, not nine in three
    assert " of 9 " in everyone.check("coverage").detail or everyone.check("coverage").ok
    if not one.check("coverage").ok:
        assert " of 3 " in one.check("coverage").detail
    assert "BHD" not in one.check("coverage").detail


@pytest.fixture
async def admin(
    stack: ShadowStack, pool: asyncpg.Pool
) -> AsyncIterator[tuple[str, PostgresAdminStore]]:
    """An admin API that lets ledger-primary be chosen, so the gate can be exercised (the
    proxy cannot serve that mode yet; nothing here sends it customers)."""
    store = PostgresAdminStore(pool, Mode.SHADOW)
    flags = FlagWatcher(store, 0.2)
    await flags.start()
    applier = stack.sidecar.applier
    assert applier is not None
    slos = load_slo_file(None)

    async def report(cohort: str | None) -> Report:
        settings = stack.sidecar.settings
        return await readiness(pool, settings, applier.routes, slos, flags.rules, cohort)

    api = AdminApi(
        store,
        PostgresComparisonStore(pool),
        flags,
        frozenset(Mode),
        readiness=report,
    )
    runner = web.AppRunner(api.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/admin/v1", store
    await runner.cleanup()
    await flags.stop()


async def post(url: str, token: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as answer,
    ):
        return answer.status, await answer.json()


async def test_a_forward_flip_needs_go_or_an_admins_force_and_back_is_always_allowed(
    admin: tuple[str, PostgresAdminStore], pool: asyncpg.Pool
) -> None:
    url, store = admin
    bootstrap = AuditRecord("bootstrap", None, "token.create", True, reason="set-up")
    _, release = await store.create_token("rm", Role.RELEASE_MANAGER, bootstrap)
    _, root = await store.create_token("root", Role.ADMIN, bootstrap)
    # no reconciliation sweep yet: not GO
    status, dry = await post(
        url + "/flip", release, {"to": "ledger-primary", "reason": "try", "dry_run": True}
    )
    assert (status, dry["outcome"], dry["gated"]) == (200, "would be refused", True)
    assert dry["readiness"]["verdict"] != "GO"
    version = (await store.flag_rules()).version
    status, refused = await post(
        url + "/flip", release, {"to": "ledger-primary", "reason": "go live"}
    )
    assert (status, refused["error"]["code"]) == (409, "not_ready")
    assert refused["readiness"]["checks"]
    status, _ = await post(
        url + "/flip", release, {"to": "ledger-primary", "reason": "go live", "force": True}
    )
    assert status == 403  # a release manager cannot force
    assert (await store.flag_rules()).version == version  # nothing changed so far
    status, forced = await post(
        url + "/flip", root, {"to": "ledger-primary", "reason": "accepted risk", "force": True}
    )
    assert (status, forced["forced"]) == (200, True)
    assert "reconciliation" in forced["failing_checks"]
    status, back = await post(url + "/flip", release, {"to": "shadow", "reason": "roll back"})
    assert (status, back["forward"], back["gated"]) == (200, False, False)
    records = await store.audit_log(limit=1000, action="flag.flip")
    assert [(r["allowed"], r["actor"]) for r in records] == [
        (False, "rm"),  # not ready
        (False, "rm"),  # may not force
        (True, "root"),
        (True, "rm"),
    ]
    assert records[0]["evidence"]["verdict"] != "GO"  # the refusal keeps the evidence
    assert records[2]["evidence"]["checks"] and records[2]["produced"]["forced"] is True
    assert records[3]["evidence"] is None  # a step back needs none
