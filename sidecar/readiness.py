"""The cutover readiness report for a scope (everyone, or one cohort of the flag): measure in
PostgreSQL (``sidecar.db.readiness_store``), verify the ledger and the audit log, and let
``sidecar.domain.readiness`` decide. Served by ``GET /admin/v1/readiness`` and printed by
``ledger-sidecar readiness`` (which asks the API)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from sidecar.config import Settings
from sidecar.db.admin_store import NotFound
from sidecar.db.readiness_store import account_ids, measure
from sidecar.db.slo_store import slo_sums
from sidecar.domain.flags import FlagRules
from sidecar.domain.mapping import RouteTable
from sidecar.domain.readiness import Facts, Report, Sweep, assess
from sidecar.domain.slo import SloFile
from sidecar.verify import verify


async def cohort_accounts(pool: asyncpg.Pool, rules: FlagRules, name: str) -> list[str]:
    """The accounts a cohort holds now (a percentage cohort's, among the ledger's accounts)."""
    cohort = rules.cohort(name)
    if cohort is None:
        raise NotFound(f"no cohort {name}")
    if cohort.accounts is not None:
        return sorted(cohort.accounts)
    return [a for a in await account_ids(pool) if rules.evaluate(a).cohort == name]


async def readiness(
    pool: asyncpg.Pool,
    settings: Settings,
    routes: RouteTable,
    slos: SloFile,
    rules: FlagRules,
    cohort: str | None = None,
) -> Report:
    limits = settings.readiness
    since = datetime.now(UTC) - timedelta(hours=limits.window_hours)
    accounts = await cohort_accounts(pool, rules, cohort) if cohort is not None else None
    measured = await measure(pool, since, accounts, settings.applier.in_doubt_after_s)
    exempt = set(limits.coverage_routes_exempt)
    expected = frozenset(
        (route.name, route.operation.value, currency)
        for route in routes.routes
        if route.name not in exempt
        for currency in measured.currencies
    )
    sums = await slo_sums(pool, datetime.now(UTC) - timedelta(days=slos.window_days))
    budgets = {a.slo.name: a.budget_left for a in slos.attainments(sums)}
    consistency = next((s for s in slos.slos if s.name == "shadow_consistency"), None)
    verified = await verify(settings.database)
    sweep = measured.sweep
    first = measured.first_comparison
    facts = Facts(
        scope=f"cohort {cohort}" if cohort else "everyone",
        unresolved_monetary=measured.unresolved_monetary,
        clean=measured.clean,
        expected=expected,
        capture_dropped=measured.capture_dropped,
        uncompared=measured.uncompared,
        consistency=measured.consistency,
        consistency_objective=consistency.objective if consistency else 0.999,
        budgets_left=budgets,
        sweep=(
            Sweep(
                float(sweep["age_hours"]), sweep["accounts"], sweep["drifted"], sweep["unreadable"]
            )
            if sweep is not None
            else None
        ),
        lag_p99_s=measured.lag_p99_s,
        in_doubt=measured.in_doubt,
        verification_failures=tuple(c.name for c in verified.checks if not c.ok),
        shadow_hours=(measured.now - first).total_seconds() / 3600 if first is not None else None,
    )
    return assess(facts, limits)


__all__ = ["cohort_accounts", "readiness"]
