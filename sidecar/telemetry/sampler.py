"""The shadow worker's gauges that only the database knows: heads, backlog, trial balance, and
the counts its parts keep (applier groups and retries, requests in doubt), for /metrics.

``HealthSampler`` reads the database every ``every_s`` seconds, never at scrape time, so a
scrape never waits on PostgreSQL and a slow database shows as stale gauges, not as a failed
scrape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from math import nan

import asyncpg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from sidecar.applier import Applier
from sidecar.db.connect import pooled
from sidecar.db.ledger_audit import database_clock, heads_and_trial_balance
from sidecar.db.slo_store import slo_sums
from sidecar.domain.slo import SloFile
from sidecar.errors import SidecarError
from sidecar.in_doubt import InDoubtResolver
from sidecar.owned import OwnedTask
from sidecar.telemetry.metrics import IN_DOUBT_RESOLUTIONS, PREFIX, ShadowMetrics

log = logging.getLogger(__name__)


class HealthSampler:
    """Owner of the task that samples the database for the shadow worker's gauges."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        metrics: ShadowMetrics,
        applier: Applier,
        slos: SloFile | None = None,
        every_s: float = 5.0,
        slo_every_s: float = 30.0,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._applier = applier
        self.slos = slos
        self._every_s = every_s
        self._slo_every_s = slo_every_s
        self._slo_sampled_at = float("-inf")
        self._currencies: set[str] = set()
        self._owned = OwnedTask("health-sampler")
        for slo in slos.slos if slos is not None else ():  # no verdict yet, but the series
            metrics.slo_attainment.labels(slo.name).set(nan)
            metrics.slo_budget_left.labels(slo.name).set(nan)

    def start(self) -> None:
        self._owned.start(self._run)

    async def stop(self) -> None:
        await self._owned.stop()

    async def sample(self) -> None:
        async with pooled(self._pool) as conn:
            ledger_head, stream_head, totals = await heads_and_trial_balance(conn)
            # the stream's times are the database's: the lag is measured on its clock
            before = time.time()
            server = await database_clock(conn)
            self._applier.clock_offset_s = server - (before + time.time()) / 2
        m = self._metrics
        m.event_log_head.set(ledger_head)
        m.stream_head.set(stream_head)
        m.backlog.set(max(0, stream_head - self._applier.cursor))
        # a currency seen once keeps its series (at zero if its accounts are gone)
        self._currencies |= totals.keys()
        for currency in self._currencies:
            m.trial_balance.labels(currency).set(totals.get(currency, 0))
        now = asyncio.get_running_loop().time()
        if self.slos is not None and now - self._slo_sampled_at >= self._slo_every_s:
            await self.sample_slos(self.slos)
            self._slo_sampled_at = now

    async def sample_slos(self, slos: SloFile | None) -> None:
        """Attainment and budget left over the SLO window, from the durable counts."""
        if slos is None:
            return
        since = datetime.now(UTC) - timedelta(days=slos.window_days)
        for attained in slos.attainments(await slo_sums(self._pool, since)):
            name = attained.slo.name
            ratio, left = attained.ratio, attained.budget_left
            self._metrics.slo_attainment.labels(name).set(nan if ratio is None else ratio)
            self._metrics.slo_budget_left.labels(name).set(nan if left is None else left)

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except SidecarError as exc:  # the database is down: the gauges go stale, not away
                log.warning("health not sampled", extra={"event": "sampler", "code": exc.code})
            await asyncio.sleep(self._every_s)


def worker_families(applier: Applier, resolver: InDoubtResolver | None) -> Iterator[Metric]:
    """The counts the applier and the in-doubt resolver keep, as metric families."""
    groups = CounterMetricFamily(
        PREFIX + "applier_groups", "Stream groups applied and compared (one transaction each)."
    )
    groups.add_metric([], applier.stats.groups)
    yield groups
    retries = CounterMetricFamily(
        PREFIX + "applier_retries",
        "Groups the applier read again after a failure (nothing of them had been written).",
    )
    retries.add_metric([], applier.stats.retries)
    yield retries
    totals = resolver.totals if resolver is not None else None
    in_doubt = GaugeMetricFamily(
        PREFIX + "in_doubt_requests",
        "Requests in doubt (an intent, no outcome, older than applier.in_doubt_after_s) the "
        "resolver's last pass could not resolve yet.",
    )
    in_doubt.add_metric([], len(totals.unresolved) if totals is not None else 0)
    yield in_doubt
    resolved = CounterMetricFamily(
        PREFIX + "in_doubt_resolved",
        "Requests in doubt closed, by how: looked_up at the legacy service, not_processed by "
        "it, read (a balance read: moved nothing), unresolvable (no lookup route).",
        labels=["resolution"],
    )
    done = totals.resolved if totals is not None else {}
    for how in sorted({*IN_DOUBT_RESOLUTIONS, *done}):
        resolved.add_metric([how], done.get(how, 0))
    yield resolved
